"""Why capture must wait: the events owed to the plant, or the disk. Both resume by themselves."""

from __future__ import annotations

from amflow_edge.messaging.backlog import BacklogGuard
from amflow_edge.messaging.outbox import OutboxStats
from amflow_edge.storage.disk import DiskGuard


class PauseGuard:
    def __init__(self, backlog: BacklogGuard, disk: DiskGuard) -> None:
        self.backlog = backlog
        self.disk = disk

    def reason(self, outbox: OutboxStats | None = None) -> str | None:
        """None while capture may go on; `outbox`, when the caller has it already, saves a query."""
        return self.backlog.reason(outbox) or self.disk.reason()
