"""Two push buttons on GPIO input lines, read through libgpiod 2.x.

The kernel debounces the lines, inverts active-low ones and timestamps edges with the
realtime clock, so a press here is just a logical rising edge with the time it happened.
"""

from __future__ import annotations

import errno
import threading
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta

import gpiod
import structlog
from gpiod.line import Bias, Clock, Direction, Edge

from amflow_edge.config.qc import GpiodButtons, LineId
from amflow_edge.panel.base import Binding, ButtonPress, OnPress, deliver
from amflow_edge.panel.errors import Reopener, Trouble, keep_open, unexpected

log = structlog.get_logger(__name__)

CONSUMER = "amflow-edge"
POLL = timedelta(seconds=0.2)
BIASES = {"as-is": Bias.AS_IS, "pull-up": Bias.PULL_UP, "pull-down": Bias.PULL_DOWN, "disabled": Bias.DISABLED}


class UnknownLineError(LookupError):
    """A configured line the chip does not have; kept apart from OSError so it is not mistaken for a missing chip."""


def bind_lines(settings: GpiodButtons, approve_offset: int, reject_offset: int) -> dict[int, Binding]:
    chip = str(settings.chip)
    return {
        approve_offset: Binding("approve", f"gpiod:{chip}:{settings.approve_line}"),
        reject_offset: Binding("reject", f"gpiod:{chip}:{settings.reject_line}"),
    }


def edge_to_press(event: gpiod.EdgeEvent, bindings: Mapping[int, Binding]) -> ButtonPress | None:
    """The press one edge makes, if any: a configured line becoming logically active."""
    if event.event_type != gpiod.EdgeEvent.Type.RISING_EDGE:
        return None
    binding = bindings.get(event.line_offset)
    if binding is None:
        return None
    seconds, nanoseconds = divmod(event.timestamp_ns, 1_000_000_000)
    at = datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=nanoseconds // 1000)
    return ButtonPress(action=binding.action, source=binding.source, at=at)


def line_settings(settings: GpiodButtons) -> gpiod.LineSettings:
    return gpiod.LineSettings(
        direction=Direction.INPUT,
        edge_detection=Edge.RISING,
        bias=BIASES[settings.bias],
        active_low=settings.active_low,
        debounce_period=timedelta(milliseconds=settings.debounce_ms),
        event_clock=Clock.REALTIME,
    )


def line_offset(chip: gpiod.Chip, line: LineId, field: str) -> int:
    try:
        return chip.line_offset_from_id(line)
    except ValueError as exc:
        raise UnknownLineError(f"{field} {line!r}: {exc}") from exc
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise UnknownLineError(f"{field} {line!r}: no line of that name") from exc
        raise


def describe(exc: BaseException, chip: str) -> Trouble:
    detail = str(exc)
    code = exc.errno if isinstance(exc, OSError) else None
    if isinstance(exc, UnknownLineError):
        return Trouble(
            "unknown line",
            f"`gpioinfo {chip}` lists the chip's line names and offsets; fix the setting",
            detail,
            "error",
        )
    if isinstance(exc, FileNotFoundError):
        return Trouble("not found", "`gpiodetect` lists the GPIO chips; set chip to one of /dev/gpiochipN", detail)
    if isinstance(exc, PermissionError):
        return Trouble(
            "permission denied",
            "the service user needs access to the chip (the 'gpio' group or a "
            "udev rule), and under systemd DeviceAllow=char-gpiochip rw",
            detail,
            "error",
        )
    if code in (errno.ENODEV, errno.ENOTTY, errno.ENXIO):
        return Trouble("not a GPIO chip", "`gpiodetect` lists the GPIO chips; set chip to one of them", detail, "error")
    if code == errno.EBUSY:
        return Trouble(
            "line busy",
            f"`gpioinfo {chip}` shows which consumer holds the line (a driver, a sysfs export, gpiomon); free it",
            detail,
            "error",
        )
    if code in (errno.EINVAL, errno.EOPNOTSUPP):
        return Trouble(
            "line settings refused",
            "the chip refused bias, debounce or the realtime event clock "
            "(kernel >= 5.11); try bias = 'as-is' or debounce_ms = 0",
            detail,
            "error",
        )
    if isinstance(exc, OSError):
        return Trouble(errno.errorcode.get(code or 0, "OSError"), f"check the chip with `gpioinfo {chip}`", detail)
    return unexpected(exc)


class GpiodButtonSource:
    def __init__(self, settings: GpiodButtons) -> None:
        self._settings = settings
        self._chip = str(settings.chip)
        self.name = f"gpiod:{self._chip}"

    def run(self, on_press: OnPress, stop: threading.Event) -> None:
        """Wait for edges until `stop`, re-requesting the lines with backoff whenever that fails."""
        keep_open(
            self._chip,
            self._settings.reopen_max_backoff_s,
            lambda reopen: self._session(on_press, stop, reopen),
            lambda exc: describe(exc, self._chip),
            stop,
        )

    def _session(self, on_press: OnPress, stop: threading.Event, reopen: Reopener) -> None:
        settings = self._settings
        with gpiod.Chip(self._chip) as chip:
            approve = line_offset(chip, settings.approve_line, "approve_line")
            reject = line_offset(chip, settings.reject_line, "reject_line")
            if approve == reject:
                raise UnknownLineError(f"approve_line and reject_line are both offset {approve}")
            request = chip.request_lines(config={(approve, reject): line_settings(settings)}, consumer=CONSUMER)
        bindings = bind_lines(settings, approve, reject)
        with request:
            reopen.opened()
            while not stop.is_set():
                if not request.wait_edge_events(POLL):
                    continue
                for event in request.read_edge_events():
                    press = edge_to_press(event, bindings)
                    if press is not None:
                        deliver(on_press, press)
