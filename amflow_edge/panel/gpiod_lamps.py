"""Station lamps on GPIO output lines: the machine's verdict on the scan awaiting the operator.

show() is called from the decision logic, so it never raises and never blocks on hardware
trouble: a missing lamp chip is logged once per cause and retried on the next change.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from dataclasses import dataclass
from typing import Literal

import gpiod
import structlog
from gpiod.line import Direction, Value

from amflow_edge.config.qc import GpiodLamps, LineId
from amflow_edge.panel.base import LampSignal
from amflow_edge.panel.errors import Trouble, unexpected

log = structlog.get_logger(__name__)

Lamp = Literal["green", "red", "amber"]

CONSUMER = "amflow-edge"
BLINK_HALF_PERIOD_S = 0.5
NO_LAMPS: frozenset[Lamp] = frozenset()
VERDICT_LAMP: dict[LampSignal, Lamp] = {"pass": "green", "fail": "red", "review": "amber"}


@dataclass(frozen=True)
class LampPattern:
    steady: frozenset[Lamp] = NO_LAMPS
    blinking: frozenset[Lamp] = NO_LAMPS


def lamp_pattern(signal: LampSignal, fitted: frozenset[Lamp]) -> LampPattern:
    """Which of the fitted lamps light for `signal`; a signal whose lamp is not fitted lights nothing."""
    if signal == "inspecting":
        return LampPattern(blinking=fitted & {"amber"})
    lamp = VERDICT_LAMP.get(signal)
    return LampPattern(steady=fitted & {lamp} if lamp else NO_LAMPS)


def fitted_lines(settings: GpiodLamps) -> dict[Lamp, LineId]:
    lines: dict[Lamp, LineId | None] = {
        "green": settings.green_line,
        "red": settings.red_line,
        "amber": settings.amber_line,
    }
    return {lamp: line for lamp, line in lines.items() if line is not None}


def request_outputs(settings: GpiodLamps) -> tuple[gpiod.LineRequest, dict[Lamp, int]]:
    """Request every lamp line as an output, all off."""
    with gpiod.Chip(str(settings.chip)) as chip:
        offsets = {lamp: chip.line_offset_from_id(line) for lamp, line in fitted_lines(settings).items()}
        output = gpiod.LineSettings(
            direction=Direction.OUTPUT, active_low=settings.active_low, output_value=Value.INACTIVE
        )
        request = chip.request_lines(config={tuple(offsets.values()): output}, consumer=CONSUMER)
    return request, offsets


def describe(exc: BaseException, chip: str) -> Trouble:
    detail = str(exc)
    code = exc.errno if isinstance(exc, OSError) else None
    if isinstance(exc, FileNotFoundError):
        return Trouble(
            "not found", "`gpiodetect` lists the GPIO chips; set lamps.chip to one of /dev/gpiochipN", detail
        )
    if isinstance(exc, PermissionError):
        return Trouble(
            "permission denied",
            "the service user needs access to the chip (the 'gpio' group or a "
            "udev rule), and under systemd DeviceAllow=char-gpiochip rw",
            detail,
            "error",
        )
    if isinstance(exc, ValueError) or code == errno.ENOENT:
        return Trouble(
            "unknown line",
            f"`gpioinfo {chip}` lists the chip's line names and offsets; fix the lamp lines",
            detail,
            "error",
        )
    if code == errno.EBUSY:
        return Trouble("line busy", f"`gpioinfo {chip}` shows which consumer holds the line; free it", detail, "error")
    if code in (errno.ENODEV, errno.ENOTTY, errno.ENXIO):
        return Trouble("not a GPIO chip", "`gpiodetect` lists the GPIO chips; set lamps.chip to one", detail, "error")
    if isinstance(exc, OSError):
        return Trouble(errno.errorcode.get(code or 0, "OSError"), f"check the chip with `gpioinfo {chip}`", detail)
    return unexpected(exc)


class GpiodLampPanel:
    def __init__(self, settings: GpiodLamps) -> None:
        self._settings = settings
        self._chip = str(settings.chip)
        self._fitted: frozenset[Lamp] = frozenset(fitted_lines(settings))
        self._lock = threading.Lock()
        self._request: gpiod.LineRequest | None = None
        self._offsets: dict[Lamp, int] = {}
        self._cause: str | None = None
        self._pattern = LampPattern()
        self._blink_stop: threading.Event | None = None
        self._blinker: threading.Thread | None = None
        self._closed = False
        with self._lock:
            self._write(NO_LAMPS)

    def show(self, signal: LampSignal) -> None:
        try:
            self._show(signal)
        except Exception as exc:  # noqa: BLE001 - lamps are a courtesy; the decision must go on without them
            with self._lock:
                self._failed(exc)

    def _show(self, signal: LampSignal) -> None:
        pattern = lamp_pattern(signal, self._fitted)
        with self._lock:
            if self._closed or (pattern == self._pattern and self._request is not None):
                return
            self._pattern = pattern
            self._write(pattern.steady | pattern.blinking)
            if pattern.blinking and self._blink_stop is None:
                self._blink_stop = threading.Event()
                self._blinker = threading.Thread(
                    target=self._blink, args=(self._blink_stop,), name="amflow-lamps-blink", daemon=True
                )
                self._blinker.start()
            elif not pattern.blinking and self._blink_stop is not None:
                self._blink_stop.set()
                self._blink_stop = None

    def _blink(self, stop: threading.Event) -> None:
        """Toggle the blinking lamps ~1 Hz; checks `stop` under the lock so it never undoes a later show()."""
        lit = True
        while not stop.wait(BLINK_HALF_PERIOD_S):
            with self._lock:
                if stop.is_set():
                    return
                lit = not lit
                self._write(self._pattern.steady | (self._pattern.blinking if lit else NO_LAMPS))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._blink_stop is not None:
                self._blink_stop.set()
                self._blink_stop = None
            if self._request is not None:
                self._write(NO_LAMPS)
                self._release()
            blinker, self._blinker = self._blinker, None
        if blinker is not None:
            blinker.join(timeout=2 * BLINK_HALF_PERIOD_S)

    def _write(self, lit: frozenset[Lamp]) -> None:
        """Set every fitted lamp; on failure log once per cause and re-request on the next write. Holds the lock."""
        try:
            if self._request is None:
                self._request, self._offsets = request_outputs(self._settings)
            self._request.set_values(
                {offset: Value.ACTIVE if lamp in lit else Value.INACTIVE for lamp, offset in self._offsets.items()}
            )
        except Exception as exc:  # noqa: BLE001 - see show()
            self._release()
            self._failed(exc)
            return
        if self._cause is not None:
            log.info("lamps working again", chip=self._chip)
            self._cause = None

    def _failed(self, exc: BaseException) -> None:
        trouble = describe(exc, self._chip)
        if trouble.cause == self._cause:
            return
        self._cause = trouble.cause
        emit = log.error if trouble.level == "error" else log.warning
        emit(
            "lamps unavailable; the station runs without them",
            chip=self._chip,
            cause=trouble.cause,
            fix=trouble.fix,
            error=trouble.detail,
        )

    def _release(self) -> None:
        request, self._request = self._request, None
        if request is not None:
            with contextlib.suppress(Exception):  # releasing a dead request is best effort
                request.release()
