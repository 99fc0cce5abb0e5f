"""What the rest of the station knows of buttons and lamps: presses in, a signal out.

Every kind of hardware (evdev button box, GPIO lines, a terminal for demos) hides behind
these two interfaces, so the decision logic is tested once with a fake source and each
driver only has to turn its device's events into `ButtonPress`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, NamedTuple, Protocol, runtime_checkable

import structlog

log = structlog.get_logger(__name__)

ButtonAction = Literal["approve", "reject"]

LampSignal = Literal["idle", "inspecting", "pass", "fail", "review"]
"""What the lamps show about the scan awaiting a decision: nothing awaiting, verdict pending, or the verdict."""


@dataclass(frozen=True)
class ButtonPress:
    action: ButtonAction
    source: str
    """Which device and input, e.g. 'evdev:/dev/input/by-id/usb-…:KEY_F13' or 'gpiod:/dev/gpiochip0:17'."""
    at: datetime
    """When the button went down (timezone-aware; the kernel's event time where the device gives one)."""


OnPress = Callable[[ButtonPress], None]


class Binding(NamedTuple):
    """What one key or line means: the action, and the source string its presses carry."""

    action: ButtonAction
    source: str


def deliver(on_press: OnPress, press: ButtonPress) -> None:
    """Hand a press over; a failing handler is logged and must never end the source's thread."""
    try:
        on_press(press)
    except Exception:
        log.exception("button press handler failed", source=press.source, action=press.action)


@runtime_checkable
class ButtonSource(Protocol):
    name: str

    def run(self, on_press: OnPress, stop: threading.Event) -> None:
        """Deliver one press per physical press until `stop` is set.

        Runs in its own thread. Never raises: a device that fails or disappears is logged
        and reopened with backoff, because an unplugged pedal must not stop the station.
        """
        ...


@runtime_checkable
class Lamps(Protocol):
    def show(self, signal: LampSignal) -> None:
        """Light the lamps for `signal`; idempotent, cheap, and never raises."""
        ...

    def close(self) -> None: ...


class NoLamps:
    """A station without lamps: the state topic alone tells the operator's screen what is awaited."""

    def show(self, signal: LampSignal) -> None:
        return None

    def close(self) -> None:
        return None
