"""systemd watchdog pings that mean "the station works", not merely "the process exists".

A thread that pings unconditionally keeps a station alive whose capture loop is stuck in a
camera driver call: the plant sees 'running' and no scan is ever taken. So the Watchdog pings
WATCHDOG=1 only while every registered liveness check passes. When one fails it stops
pinging, logs the reason once and puts it in STATUS=; systemd then kills the station after
WatchdogSec= and restarts it (Restart=on-failure), which reopens the cameras.

A check is a cheap callable returning None when healthy or the reason it is not. It must
not block: it is asked every few seconds from the watchdog thread. A Heartbeat is the usual
check for a loop: the loop calls beat() every iteration, the check fails once it has been
silent for too long.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from amflow_edge.ops import sdnotify

log = structlog.get_logger(__name__)

Check = Callable[[], str | None]

IDLE_PERIOD_S = 10.0  # without a systemd watchdog the checks still run, so the log shows a hang


class Heartbeat:
    """Liveness of one loop: beat() from the loop, the Heartbeat itself is the check.

    The clock starts at construction, so a loop that never iterates at all is caught too.
    retire() when the loop ends on purpose (the station stops), so the seconds spent draining
    the outbox are not logged as a hang.
    """

    def __init__(
        self, name: str = "capture loop", stale_after_s: float = 120.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if stale_after_s <= 0:
            raise ValueError(f"stale_after_s must be positive (found {stale_after_s})")
        self.name = name
        self.stale_after_s = stale_after_s
        self._clock = clock
        self._last = clock()
        self._retired = False

    def beat(self) -> None:
        self._last = self._clock()

    def retire(self) -> None:
        self._retired = True

    def age_s(self) -> float:
        return self._clock() - self._last

    def __call__(self) -> str | None:
        if self._retired:
            return None
        age = self.age_s()
        if age > self.stale_after_s:
            return f"{self.name} silent for {age:.0f} s (limit {self.stale_after_s:.0f} s)"
        return None


class Watchdog:
    def __init__(self, interval_s: float | None = None) -> None:
        """interval_s: WatchdogSec= in seconds; default from $WATCHDOG_USEC (None: not run under a watchdog)."""
        self.interval_s = interval_s if interval_s is not None else sdnotify.watchdog_interval_s()
        self._checks: dict[str, Check] = {}
        self._lock = threading.Lock()
        self._failing: dict[str, str] = {}
        self._status: str | None = None
        self.pings = 0

    @property
    def period_s(self) -> float:
        """Half the interval, as sd_watchdog_enabled(3) advises: one late ping does not kill the station."""
        return self.interval_s / 2 if self.interval_s else IDLE_PERIOD_S

    def add_check(self, name: str, check: Check) -> None:
        with self._lock:
            if name in self._checks:
                raise ValueError(f"a liveness check named {name!r} is already registered")
            self._checks[name] = check

    def failures(self) -> dict[str, str]:
        """Every failing check's reason, by name; a check that raises counts as failing."""
        with self._lock:
            checks = list(self._checks.items())
        failing: dict[str, str] = {}
        for name, check in checks:
            try:
                reason = check()
            except Exception as exc:  # noqa: BLE001 - a broken check must not look healthy
                reason = f"liveness check raised {type(exc).__name__}: {exc}"
            if reason is not None:
                failing[name] = reason
        return failing

    def status(self, text: str) -> None:
        """The station's normal STATUS= line; held back while a check fails, so the reason stays visible."""
        if text == self._status:
            return
        self._status = text
        if not self._failing:
            sdnotify.status(text)

    def tick(self) -> bool:
        """One round: evaluate every check, ping if all pass; returns whether it pinged."""
        failing = self.failures()
        for name, reason in failing.items():
            if name not in self._failing:
                log.error(
                    "liveness check failed; watchdog pings stopped, systemd restarts the station after WatchdogSec",
                    check=name,
                    reason=reason,
                    watchdog_s=self.interval_s,
                )
        recovered = [name for name in self._failing if name not in failing]
        for name in recovered:
            log.warning("liveness check passes again; watchdog pings resumed", check=name)
        changed = set(failing) != set(self._failing)
        self._failing = failing
        if failing:
            if changed:
                sdnotify.status("unhealthy: " + "; ".join(f"{name}: {reason}" for name, reason in failing.items()))
            return False
        if changed and self._status is not None:
            sdnotify.status(self._status)
        sdnotify.watchdog()
        self.pings += 1
        return True

    def run(self, stop: threading.Event) -> None:
        """The watchdog thread, until stop is set. systemd enforces WatchdogSec= only while the unit is running:
        once it is stopping (SIGTERM from systemctl, or our STOPPING=1) missing pings no longer matter."""
        if self.interval_s is None:
            log.info("no systemd watchdog for this process; liveness checks are only logged", period_s=self.period_s)
        while True:
            try:
                self.tick()
            except Exception:
                log.exception("watchdog round failed; no ping this round")
            if stop.wait(self.period_s):
                return
