"""Scan changes become outbox rows in the same transaction, so a scan and its events never disagree.

Every event is built by payload.envelope from the scan as stored; the relay publishes it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path

import structlog
from pydantic import ValidationError

from amflow_edge.config.station import StationConfig
from amflow_edge.messaging.outbox import Outbox
from amflow_edge.messaging.payload import EventName, envelope, to_wire
from amflow_edge.messaging.topics import event_topic, hook_target
from amflow_edge.storage.db import StationDb
from amflow_edge.storage.record import ScanRecord
from amflow_edge.storage.store import StoreError

log = structlog.get_logger(__name__)


def _readable(stored: str | bytes) -> ScanRecord | None:
    """A stored record, or None for one the models no longer accept (a value beyond a bound added since it was
    stored): that scan is left out, said once in the log, rather than keeping the station from starting."""
    try:
        return ScanRecord.model_validate_json(stored)
    except ValidationError as exc:
        scan = _uuid_of(stored)
        if scan not in _unreadable:
            _unreadable.add(scan)
            log.error("a stored scan record no longer validates; the scan is left out", scan=scan, error=str(exc))
        return None


def _uuid_of(stored: str | bytes) -> str:
    try:
        return str(json.loads(stored)["scan"]["uuid"])
    except (ValueError, KeyError, TypeError):
        return "?"


_unreadable: set[str] = set()


class Events:
    def __init__(
        self,
        cfg: StationConfig,
        db: StationDb,
        wake_relay: Callable[[], None] = lambda: None,
        mirror: Callable[[ScanRecord], None] | None = None,
    ) -> None:
        self._cfg = cfg
        self._db = db
        self._wake_relay = wake_relay
        self._mirror = mirror
        self._update_lock = threading.RLock()
        self._listeners: list[Callable[[EventName, ScanRecord], None]] = []

    def listen(self, listener: Callable[[EventName, ScanRecord], None]) -> None:
        """Called after every queued event with the scan as stored (the operator panel follows scans this way)."""
        self._listeners.append(listener)

    def _notify(self, event: EventName, record: ScanRecord) -> None:
        for listener in self._listeners:
            try:
                listener(event, record)
            except Exception:  # the event is committed; a listener's bug must not look like a failed update
                log.exception("scan listener failed", scan=record.scan.uuid, name=event)

    def _message(self, event: EventName, record: ScanRecord) -> tuple[str, bytes]:
        topic = event_topic(self._cfg, event)
        return topic, to_wire(envelope(event, record.scan, self._cfg.mqtt.hook.id, hook_target(self._cfg, topic)))

    def scan_stored(self, record: ScanRecord) -> str:
        """The scan exists on disk: record it and owe the plant its scan.capture."""
        topic, payload = self._message("scan.capture", record)
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO scans (uuid, created, modified, record) VALUES (?, ?, ?, ?)",
                (record.scan.uuid, record.scan.created, record.scan.modified, record.model_dump_json()),
            )
            event_id = Outbox.add(conn, "scan.capture", record.scan.uuid, topic, payload)
        log.info("event queued", name="scan.capture", scan=record.scan.uuid, event_id=event_id)
        self._wake_relay()
        self._notify("scan.capture", record)
        return event_id

    def update_scan(self, scan_uuid: str, event: EventName, change: Callable[[ScanRecord], ScanRecord]) -> ScanRecord:
        """Read, change and store a scan with the event that announces it, as one transaction.

        Updates are serialised so that scan.json, rewritten after the commit, always ends as the last state.
        """
        with self._update_lock:
            with self._db.transaction() as conn:
                row = conn.execute("SELECT record FROM scans WHERE uuid = ?", (scan_uuid,)).fetchone()
                if row is None:
                    raise KeyError(f"scan {scan_uuid} is not known to this station")
                record = change(ScanRecord.model_validate_json(row[0]))
                topic, payload = self._message(event, record)
                conn.execute(
                    "UPDATE scans SET modified = ?, record = ? WHERE uuid = ?",
                    (record.scan.modified, record.model_dump_json(), scan_uuid),
                )
                event_id = Outbox.add(conn, event, scan_uuid, topic, payload)
            if self._mirror is not None:
                try:
                    self._mirror(record)
                except (StoreError, OSError) as exc:  # the database and the event already hold the change
                    log.error("scan.json not updated; the event is sent all the same", scan=scan_uuid, error=str(exc))
        log.info("event queued", name=event, scan=scan_uuid, event_id=event_id)
        self._wake_relay()
        self._notify(event, record)
        return record

    def holding(self) -> threading.RLock:
        """While held, no scan changes: the backup mover holds it from its last look at a scan to the deletion."""
        return self._update_lock

    def annotate(self, scan_uuid: str, change: Callable[[ScanRecord], ScanRecord]) -> ScanRecord:
        """A change to what the station knows about a scan that is not in the 3.7 payload: stored, not announced."""
        with self._update_lock, self._db.transaction() as conn:
            row = conn.execute("SELECT record FROM scans WHERE uuid = ?", (scan_uuid,)).fetchone()
            if row is None:
                raise KeyError(f"scan {scan_uuid} is not known to this station")
            record = change(ScanRecord.model_validate_json(row[0]))
            conn.execute("UPDATE scans SET record = ? WHERE uuid = ?", (record.model_dump_json(), scan_uuid))
        return record

    def record(self, scan_uuid: str) -> ScanRecord | None:
        row = self._db.connection().execute("SELECT record FROM scans WHERE uuid = ?", (scan_uuid,)).fetchone()
        return None if row is None else _readable(row[0])

    def recent_records(self, limit: int) -> list[ScanRecord]:
        rows = self._db.connection().execute("SELECT record FROM scans ORDER BY rowid DESC LIMIT ?", (limit,))
        return [record for row in rows if (record := _readable(row[0])) is not None][::-1]

    def known_scans(self) -> set[str]:
        return {row[0] for row in self._db.connection().execute("SELECT uuid FROM scans")}

    def announce_unrecorded(self, scans_dir: Path, read_record: Callable[[str], ScanRecord]) -> list[str]:
        """Scans a crash left on disk between the rename and the database commit are announced now."""
        known = self.known_scans()
        records = []
        for path in scans_dir.iterdir():
            if path.name.startswith(".") or path.name in known or not path.is_dir():
                continue
            try:
                records.append(read_record(path.name))
            except (OSError, ValueError) as exc:
                log.error("scan directory without a readable scan.json; left as it is", scan=path.name, error=str(exc))
        for record in sorted(records, key=lambda r: r.scan.created):
            log.warning("scan stored before a crash was never announced; announcing it now", scan=record.scan.uuid)
            self.scan_stored(record)
        return [r.scan.uuid for r in records]
