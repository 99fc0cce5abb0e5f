"""A USB HID button box or foot pedal, read as key events through evdev.

Presses are key-down events only: holding a pedal auto-repeats in the kernel, and an
operator resting a foot on it must not decide the next scan too.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import select
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import evdev
import structlog
from evdev import ecodes

from amflow_edge.config.qc import EvdevButtons
from amflow_edge.panel.base import Binding, ButtonAction, ButtonPress, OnPress, deliver
from amflow_edge.panel.errors import (
    PanelConfigError,
    Reopener,
    Trouble,
    keep_open,
    unexpected,
)

log = structlog.get_logger(__name__)

POLL_S = 0.2
KEY_DOWN = 1


def resolve_keys(settings: EvdevButtons) -> dict[int, Binding]:
    """Key code → what it means; raises PanelConfigError at start rather than ignore a mistyped key forever."""
    device = str(settings.device)
    bindings: dict[int, Binding] = {}
    names: dict[int, str] = {}
    groups: tuple[tuple[str, ButtonAction, list[str]], ...] = (
        ("approve_keys", "approve", settings.approve_keys),
        ("reject_keys", "reject", settings.reject_keys),
    )
    for field, action, keys in groups:
        for name in keys:
            code = _key_code(name, field)
            if code in names and names[code] != name:
                raise PanelConfigError(
                    f"evdev buttons {device}: {names[code]} and {name} are the same key (code {code}); "
                    f"list it once, in approve_keys or reject_keys"
                )
            names[code] = name
            bindings[code] = Binding(action, f"evdev:{device}:{name}")
    return bindings


def _key_code(name: str, field: str) -> int:
    code = ecodes.ecodes.get(name)
    if code is None or code not in ecodes.keys:
        known = [n for n in ecodes.ecodes if n.startswith(("KEY_", "BTN_"))]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise PanelConfigError(
            f"evdev buttons {field}: unknown key {name}{hint}; use a name from evdev's ecodes such as KEY_F13 "
            f"or BTN_0 — `python -m evdev.evtest` shows the names the pedal sends"
        )
    return code


def event_to_press(event: evdev.InputEvent, bindings: Mapping[int, Binding]) -> ButtonPress | None:
    """The press one kernel event makes, if any: a configured key going down (not its repeat or release)."""
    if event.type != ecodes.EV_KEY or event.value != KEY_DOWN:
        return None
    binding = bindings.get(event.code)
    if binding is None:
        return None
    at = datetime.fromtimestamp(event.sec, UTC) + timedelta(microseconds=event.usec)
    return ButtonPress(action=binding.action, source=binding.source, at=at)


def describe(exc: BaseException) -> Trouble:
    detail = str(exc)
    code = exc.errno if isinstance(exc, OSError) else None
    if isinstance(exc, FileNotFoundError):
        return Trouble(
            "not found",
            "is the pedal plugged in? `ls -l /dev/input/by-id` lists stable device paths; "
            "set the buttons' device to the one ending in -event-kbd",
            detail,
        )
    if isinstance(exc, PermissionError):
        return Trouble(
            "permission denied",
            "the service user needs the 'input' group (usermod -aG input USER), "
            "and under systemd DeviceAllow=char-input r",
            detail,
            "error",
        )
    if code in (errno.ENODEV, errno.ENXIO):
        return Trouble("unplugged", "plug the device back in; it is reopened automatically", detail)
    if code == errno.EBUSY:
        return Trouble(
            "grabbed by another program",
            "another process holds the device (another amflow-edge, evtest --grab); stop it, or set grab = false",
            detail,
            "error",
        )
    if code in (errno.ENOTTY, errno.EINVAL):
        return Trouble(
            "not an input event device",
            "point the device at /dev/input/by-id/…-event-kbd (not a hidraw, mouse or js node)",
            detail,
            "error",
        )
    if isinstance(exc, OSError):
        return Trouble(errno.errorcode.get(code or 0, "OSError"), "check the device with `evtest <device>`", detail)
    return unexpected(exc)


class EvdevButtonSource:
    def __init__(self, settings: EvdevButtons) -> None:
        self._settings = settings
        self._device = str(settings.device)
        self._bindings = resolve_keys(settings)
        self.name = f"evdev:{self._device}"

    def run(self, on_press: OnPress, stop: threading.Event) -> None:
        """Read until `stop`, reopening the device with backoff whenever it is missing or fails."""
        keep_open(
            self._device,
            self._settings.reopen_max_backoff_s,
            lambda reopen: self._session(on_press, stop, reopen),
            describe,
            stop,
        )

    def _session(self, on_press: OnPress, stop: threading.Event, reopen: Reopener) -> None:
        device = evdev.InputDevice(self._device)
        grabbed = False
        try:
            if self._settings.grab:
                device.grab()
                grabbed = True
            reopen.opened()
            while not stop.is_set():
                readable, _, _ = select.select([device.fd], [], [], POLL_S)
                if not readable:
                    continue
                try:
                    events = list(device.read())
                except BlockingIOError:
                    continue
                for event in events:
                    press = event_to_press(event, self._bindings)
                    if press is not None:
                        deliver(on_press, press)
        finally:
            _release(device, grabbed)


def _release(device: evdev.InputDevice, grabbed: bool) -> None:
    if grabbed:
        with contextlib.suppress(OSError):
            device.ungrab()
    with contextlib.suppress(OSError):
        device.close()
