"""The backlog bound: a station whose events cannot leave stops taking scans rather than lose any.

Pausing has hysteresis (resume below a share of the bound) so the station does not flap
between refusing and accepting scans around the limit.
"""

from __future__ import annotations

import threading

import structlog

from amflow_edge.config.station import OutboxSettings
from amflow_edge.messaging.outbox import Outbox, OutboxStats

log = structlog.get_logger(__name__)


class BacklogGuard:
    def __init__(self, outbox: Outbox, settings: OutboxSettings) -> None:
        self._outbox = outbox
        self._settings = settings
        self._lock = threading.Lock()
        self._reason: str | None = None

    def reason(self, stats: OutboxStats | None = None) -> str | None:
        """Why capture must wait now, or None; re-evaluated on every call, so capture resumes by itself."""
        stats = stats if stats is not None else self._outbox.stats()
        limit, max_age = self._settings.max_backlog_events, self._settings.max_backlog_age_s
        age = stats.oldest_unsent_age_s or 0.0
        with self._lock:
            if self._reason is None:
                if stats.backlog >= limit or age >= max_age:
                    self._reason = (
                        f"outbox backlog of {stats.backlog} events (oldest {age:.0f} s) reached the bound "
                        f"({limit} events or {max_age:.0f} s); check the broker connection"
                    )
                    log.error("capture paused: events are not leaving the station", reason=self._reason)
            else:
                share = self._settings.resume_fraction
                if stats.backlog < limit * share and age < max_age * share:
                    log.info("capture resumed: the outbox backlog drained", backlog=stats.backlog)
                    self._reason = None
            return self._reason
