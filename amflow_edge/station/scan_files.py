"""What the backup mover and retention may do with a scan's files, and what they note in its record."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from amflow_edge.messaging.events import Events
from amflow_edge.messaging.payload import timestamp
from amflow_edge.storage.record import ScanRecord


class ScanFiles:
    def __init__(self, events: Events, latest_scan: Callable[[], str | None], inspects: bool, timezone: str) -> None:
        self._events = events
        self._latest_scan = latest_scan
        self._inspects = inspects
        self._tz = ZoneInfo(timezone)

    def done_with(self, scan_uuid: str) -> bool:
        """Inspected (or flagged, or never to be inspected) and not the part on the tray: it may be moved."""
        record = self._events.record(scan_uuid)
        if record is None or scan_uuid == self._latest_scan():
            return False
        scan = record.scan
        inspected = not self._inspects or scan.qc_machine is not None or scan.qc_needs_review
        return inspected or scan.qc_operator is not None

    def moved_here(self, scan_uuid: str) -> bool:
        """Retention deletes only what this station moved to the backup disk, never a stranger's files there."""
        record = self._events.record(scan_uuid)
        return record is not None and record.station.is_backed_up and record.station.deleted_at is None

    def mark_backed_up(self, scan_uuid: str, path: Path) -> None:
        self._note(scan_uuid, is_backed_up=True, backup_path=str(path), backed_up_at=self._now())

    def mark_deleted(self, scan_uuid: str) -> None:
        self._note(scan_uuid, deleted_at=self._now())

    def _note(self, scan_uuid: str, **facts: object) -> None:
        """Station facts about a scan's files (AM-Vision's is_backed_up among them): stored, not in the webhook payload."""

        def change(record: ScanRecord) -> ScanRecord:
            return record.model_copy(update={"station": record.station.model_copy(update=facts)})

        self._events.annotate(scan_uuid, change)

    def _now(self) -> str:
        return timestamp(datetime.now(self._tz))
