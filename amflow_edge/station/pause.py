"""Why capture must wait: the events owed to the plant, the disk, or the empty-tray references a scan is
inspected against. Each resumes by itself."""

from __future__ import annotations

from collections.abc import Callable

from amflow_edge.messaging.backlog import BacklogGuard
from amflow_edge.messaging.outbox import OutboxStats
from amflow_edge.station.session import SessionKeeper
from amflow_edge.storage.disk import DiskGuard
from amflow_edge.storage.store import ScanStore

Reason = Callable[[], str | None]


def missing_references(store: ScanStore, sessions: SessionKeeper) -> Reason:
    """A scan taken before its session's references exist could never be inspected."""

    def reason() -> str | None:
        if store.reference_dir(sessions.current.scan_session).is_dir():
            return None
        return (
            "no empty-tray references for this session yet; they are taken as soon as the disk has room "
            "(keep the tray empty until capture resumes)"
        )

    return reason


class PauseGuard:
    def __init__(self, backlog: BacklogGuard, disk: DiskGuard, references: Reason = lambda: None) -> None:
        self.backlog = backlog
        self.disk = disk
        self._references = references

    def reason(self, outbox: OutboxStats | None = None) -> str | None:
        """None while capture may go on; `outbox`, when the caller has it already, saves a query."""
        return self.backlog.reason(outbox) or self.disk.reason() or self._references()
