"""Logging that a flood of events cannot turn into a flood of log lines.

The station answers every request and notes every refusal, however many arrive: a misconfigured
plant system retrying in a tight loop, or a hostile client, must not fill the journal or the disk
(10,000 malformed requests once wrote 2.1 MB of warnings). What the journal needs is the first
few in full, to see what is wrong, and then how many more there were, of which kind.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

Clock = Callable[[], float]
Schedule = Callable[[float, Callable[[], None]], None]
"""Run the callable after the given seconds; a test passes a fake so no thread or real time is involved."""
Emit = Callable[..., Any]
"""A log method, such as a structlog logger's `warning`: called with the event and its fields."""


def start_timer(delay_s: float, action: Callable[[], None]) -> None:
    """A daemon thread, so a pending summary never holds up the daemon's exit."""
    timer = threading.Timer(delay_s, action)
    timer.daemon = True
    timer.start()


class RateLimitedLog:
    """The first `burst` lines of each period in full; the rest counted by key and summarised in one line.

    A period starts with the first line after a quiet spell. The summary is written when the period
    ends (a timer), or before the next line if that comes first, so it is never lost and never late
    by more than the timer's slack; a period with nothing suppressed writes no summary.
    """

    def __init__(
        self,
        emit: Emit,
        summary: str,
        *,
        burst: int = 5,
        period_s: float = 60.0,
        clock: Clock = time.monotonic,
        schedule: Schedule = start_timer,
    ) -> None:
        self._emit = emit
        self._summary = summary
        self._burst = burst
        self._period_s = period_s
        self._clock = clock
        self._schedule = schedule
        self._lock = threading.Lock()
        self._period_end: float | None = None
        self._written = 0
        self._suppressed: Counter[str] = Counter()

    def __call__(self, event: str, key: str, **fields: Any) -> None:
        """`key` is what the summary counts by (a command name, say); it is not itself logged."""
        schedule_in: float | None = None
        with self._lock:
            now = self._clock()
            self._end_period_if_due(now)
            if self._period_end is None:
                self._period_end = now + self._period_s
                self._written = 0
            if self._written < self._burst:
                self._written += 1
                self._emit(event, **fields)  # under the lock, so a summary never overtakes the lines it follows
            else:
                if not self._suppressed:
                    schedule_in = self._period_end - now
                self._suppressed[key] += 1
        if schedule_in is not None:
            self._schedule(schedule_in, self.flush)

    def flush(self) -> None:
        """Write the summary if the period is over; called by the timer, and by anyone who wants it now."""
        schedule_in: float | None = None
        with self._lock:
            now = self._clock()
            self._end_period_if_due(now)
            if self._suppressed and self._period_end is not None:
                schedule_in = self._period_end - now  # a timer that woke early tries again when due
        if schedule_in is not None:
            self._schedule(schedule_in, self.flush)

    def _end_period_if_due(self, now: float) -> None:
        if self._period_end is None or now < self._period_end:
            return
        if self._suppressed:
            self._emit(
                self._summary,
                count=sum(self._suppressed.values()),
                by=dict(sorted(self._suppressed.items())),
                period_s=self._period_s,
            )
        self._period_end = None
        self._suppressed = Counter()


def rate_limited_warnings(logger: Any, summary: str, *, burst: int = 5, period_s: float = 60.0) -> RateLimitedLog:
    """Warnings of `logger`, the first `burst` a period in full and the rest counted in one `summary` line. The
    logger's method is looked up per line, so logging configured after this is made still applies."""
    return RateLimitedLog(
        lambda event, **fields: logger.warning(event, **fields), summary, burst=burst, period_s=period_s
    )


class FirstSeen:
    """True the first time a key is seen, for "say it once per topic" without remembering every topic forever.

    Only the `capacity` most recently seen keys are kept; a key forgotten and seen again counts as new,
    which at worst says something twice.
    """

    def __init__(self, capacity: int = 1024) -> None:
        self._capacity = capacity
        self._seen: OrderedDict[Hashable, None] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, key: Hashable) -> bool:
        with self._lock:
            if key in self._seen:
                self._seen.move_to_end(key)
                return False
            self._seen[key] = None
            if len(self._seen) > self._capacity:
                self._seen.popitem(last=False)
            return True
