"""The station as a systemd service: readiness, liveness, disk space, backup and retention.

Kept apart from the scan path so its wiring stays readable: the station tells this object when
it is ready or stopping, and lets it run the watchdog, backup and retention threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

import structlog

from amflow_edge.config.station import StationConfig
from amflow_edge.messaging.events import Events
from amflow_edge.messaging.outbox import Outbox
from amflow_edge.messaging.payload import timestamp
from amflow_edge.ops import sdnotify
from amflow_edge.ops.watchdog import Heartbeat, Watchdog
from amflow_edge.station.pause import PauseGuard
from amflow_edge.storage.backup import BackupMover
from amflow_edge.storage.disk import DiskGuard, Retention, format_bytes
from amflow_edge.storage.record import ScanRecord

log = structlog.get_logger(__name__)

Spawn = Callable[..., None]
SUPERVISOR_SILENT_S = 60.0


class ScanCounts(Protocol):
    """The capture loop's tally, for the status line."""

    @property
    def scans_stored(self) -> int: ...

    @property
    def scans_failed(self) -> int: ...


class NetworkThread(Protocol):
    def network_thread_alive(self) -> bool: ...


class StationService:
    def __init__(
        self,
        cfg: StationConfig,
        *,
        events: Events,
        outbox: Outbox,
        pause: PauseGuard,
        counts: ScanCounts,
        mqtt: NetworkThread,
        capture_heartbeat: Heartbeat,
        scans_dir: Path,
        latest_scan: Callable[[], str | None],
        inspects: bool,
    ) -> None:
        self._cfg = cfg
        self._events = events
        self._outbox = outbox
        self._pause = pause
        self._counts = counts
        self._mqtt = mqtt
        self._latest_scan = latest_scan
        self._inspects = inspects
        self._tz = ZoneInfo(cfg.station.timezone)
        self.disk: DiskGuard = pause.disk
        self.capture_heartbeat = capture_heartbeat
        self.supervisor_heartbeat = Heartbeat("supervisor", SUPERVISOR_SILENT_S)
        self.watchdog = Watchdog()
        self.watchdog.add_check("capture", self.capture_heartbeat)
        self.watchdog.add_check("supervisor", self.supervisor_heartbeat)
        self.watchdog.add_check("mqtt", self._mqtt_thread)
        self.backup: BackupMover | None = None
        self.retention: Retention | None = None
        if cfg.backup.path is not None:
            self.backup = BackupMover(
                scans_dir,
                cfg.backup.path,
                cfg.backup.after_s,
                self._eligible,
                self._mark_backed_up,
                hold=lambda _uuid: events.holding(),
            )
            if cfg.disk.retention_days is not None:
                self.retention = Retention(cfg.backup.path, cfg.disk.retention_days, backed_up=self._moved_here)

    def _mqtt_thread(self) -> str | None:
        """paho's network thread is revived by the supervisor; still dead at the next look means it cannot be."""
        return None if self._mqtt.network_thread_alive() else "the MQTT network thread is not running"

    def _eligible(self, scan_uuid: str) -> bool:
        """Done with: inspected (or flagged, or never to be inspected) and not the part on the tray."""
        record = self._events.record(scan_uuid)
        if record is None or scan_uuid == self._latest_scan():
            return False
        scan = record.scan
        inspected = not self._inspects or scan.qc_machine is not None or scan.qc_needs_review
        return inspected or scan.qc_operator is not None

    def _moved_here(self, scan_uuid: str) -> bool:
        """Retention deletes only what this station moved to the backup disk, never a stranger's files there."""
        record = self._events.record(scan_uuid)
        return record is not None and record.station.is_backed_up and record.station.deleted_at is None

    def _note(self, scan_uuid: str, **facts: object) -> None:
        """Station facts about a scan's files (AM-Vision's is_backed_up among them): stored, not in the webhook payload."""

        def change(record: ScanRecord) -> ScanRecord:
            return record.model_copy(update={"station": record.station.model_copy(update=facts)})

        self._events.annotate(scan_uuid, change)

    def _now(self) -> str:
        return timestamp(datetime.now(self._tz))

    def _mark_deleted(self, scan_uuid: str) -> None:
        self._note(scan_uuid, deleted_at=self._now())

    def _mark_backed_up(self, scan_uuid: str, path: Path) -> None:
        self._note(scan_uuid, is_backed_up=True, backup_path=str(path), backed_up_at=self._now())

    def start(self, spawn: Spawn, stop: threading.Event) -> None:
        """After the station runs: threads for the watchdog, the backup mover and retention; then READY=1."""
        if self.backup is not None:
            spawn("backup", self.backup.run, stop, self._cfg.backup.interval_s)
        if self.retention is not None:
            spawn("retention", self._expire, stop)
        spawn("watchdog", self.watchdog.run, stop)
        sdnotify.ready(self.status_line())

    def _expire(self, stop: threading.Event) -> None:
        assert self.retention is not None
        while True:
            try:
                deleted = self.retention.run_once()
                for scan_uuid in deleted:
                    self._mark_deleted(scan_uuid)
            except OSError as exc:
                log.error("retention round failed", error=str(exc))
            if stop.wait(self._cfg.backup.interval_s):
                return

    def status_line(self) -> str:
        stats = self._outbox.stats()
        paused = self._pause.reason(stats)
        head = f"paused: {paused}" if paused else "running"
        return (
            f"{head}; {self._counts.scans_stored} scans, {self._counts.scans_failed} failed; "
            f"outbox {stats.backlog}; {format_bytes(self.disk.free_bytes())} free"
        )

    def supervise(self) -> None:
        self.supervisor_heartbeat.beat()
        self.watchdog.status(self.status_line())

    def stopping(self) -> None:
        self.capture_heartbeat.retire()
        self.supervisor_heartbeat.retire()
        sdnotify.stopping("stopping: finishing the scan in progress and draining the outbox")
