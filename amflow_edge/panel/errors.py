"""What goes wrong with panel hardware, and how a source lives through it.

A wrong key name is the integrator's to fix before the station starts, so it raises. A
missing, unplugged or forbidden device is not: the station keeps scanning and the source
keeps trying, logging once per cause so a pedal left unplugged all night costs one line,
not thousands.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import structlog

from amflow_edge.common.backoff import Backoff

log = structlog.get_logger(__name__)

FIRST_RETRY_S = 0.25


class PanelConfigError(ValueError):
    """A button or lamp setting the hardware layer cannot use (the message names the setting and the fix)."""


@dataclass(frozen=True)
class Trouble:
    """Why a device cannot be used now, in words an integrator can act on."""

    cause: str
    """Short and stable ('not found', 'permission denied'): a change of cause is what gets logged again."""
    fix: str
    detail: str
    level: Literal["warning", "error"] = "warning"


class Reopener:
    """Paces the reopening of one device and keeps its log quiet: one line per new cause, one when it is back."""

    def __init__(self, device: str, max_backoff_s: float) -> None:
        self._device = device
        self._backoff = Backoff(FIRST_RETRY_S, max_backoff_s)
        self._cause: str | None = None
        self._was_open = False

    def opened(self) -> None:
        if self._cause is not None:
            log.info("panel device reconnected", device=self._device)
        elif not self._was_open:
            log.info("panel device opened", device=self._device)
        self._cause = None
        self._was_open = True
        self._backoff.reset()

    def failed(self, trouble: Trouble, stop: threading.Event) -> None:
        """Log `trouble` if its cause is new, then wait the backoff (or until `stop`)."""
        if trouble.cause != self._cause:
            emit = log.error if trouble.level == "error" else log.warning
            emit(
                "panel device unavailable; retrying",
                device=self._device,
                cause=trouble.cause,
                fix=trouble.fix,
                error=trouble.detail,
                retry_max_s=self._backoff.max_s,
            )
            self._cause = trouble.cause
        stop.wait(self._backoff.next_delay())


def keep_open(
    device: str,
    max_backoff_s: float,
    session: Callable[[Reopener], None],
    describe: Callable[[BaseException], Trouble],
    stop: threading.Event,
) -> None:
    """Run `session` (open the device, read until stop) again and again, with backoff, until `stop`."""
    reopen = Reopener(device, max_backoff_s)
    while not stop.is_set():
        try:
            session(reopen)
        except Exception as exc:  # noqa: BLE001 - a button thread must outlive any device failure
            reopen.failed(describe(exc), stop)


def unexpected(exc: BaseException) -> Trouble:
    """A failure no driver anticipated: still retried, because an unplugged pedal must not stop the station."""
    return Trouble(
        cause=f"unexpected {type(exc).__name__}",
        fix="this is a bug in amflow-edge; report it with this line",
        detail=repr(exc),
        level="error",
    )
