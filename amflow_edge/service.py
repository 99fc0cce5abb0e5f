"""The station as a systemd service: readiness, liveness, disk space, backup and retention.

Kept out of daemon.py so the wiring of scans and events stays readable; the Station asks
this object whether capture must wait for disk space, tells it when it is ready or
stopping, and lets it run the watchdog, backup and retention threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import structlog

from amflow_edge import sdnotify
from amflow_edge.backup import BackupMover
from amflow_edge.disk import DiskGuard, Retention, format_bytes
from amflow_edge.payload import timestamp
from amflow_edge.record import ScanRecord
from amflow_edge.watchdog import Heartbeat, Watchdog

if TYPE_CHECKING:
    from amflow_edge.daemon import Station

log = structlog.get_logger(__name__)

Spawn = Callable[..., None]
SUPERVISOR_SILENT_S = 60.0


class StationService:
    def __init__(self, station: Station) -> None:
        cfg = station.cfg
        self._station = station
        self.disk = DiskGuard(cfg.station.data_root, cfg.disk.min_free_bytes, cfg.disk.resume_free_bytes)
        self.capture_heartbeat = Heartbeat("capture loop", cfg.watchdog.capture_silent_s)
        self.supervisor_heartbeat = Heartbeat("supervisor", SUPERVISOR_SILENT_S)
        self.watchdog = Watchdog()
        self.watchdog.add_check("capture", self.capture_heartbeat)
        self.watchdog.add_check("supervisor", self.supervisor_heartbeat)
        self.watchdog.add_check("mqtt", self._mqtt_thread)
        self.backup: BackupMover | None = None
        if cfg.backup.path is not None:
            self.backup = BackupMover(
                station.store.scans_dir, cfg.backup.path, cfg.backup.after_s, self._eligible, self._mark_backed_up,
                hold=lambda _uuid: station.events.holding(),
            )
        self.retention: Retention | None = None
        if cfg.backup.path is not None and cfg.disk.retention_days is not None:
            self.retention = Retention(cfg.backup.path, cfg.disk.retention_days, backed_up=self._moved_here)

    def _mqtt_thread(self) -> str | None:
        """paho's network thread is revived by the supervisor; still dead at the next look means it cannot be."""
        return None if self._station.mqtt.network_thread_alive() else "the MQTT network thread is not running"

    def _eligible(self, scan_uuid: str) -> bool:
        """Done with: inspected (or flagged, or never to be inspected) and not the part on the tray."""
        record = self._station.events.record(scan_uuid)
        if record is None or scan_uuid == self._station.panel.view().latest_scan:
            return False
        scan = record.scan
        inspected = self._station.inspector is None or scan.qc_machine is not None or scan.qc_needs_review
        return inspected or scan.qc_operator is not None

    def _moved_here(self, scan_uuid: str) -> bool:
        """Retention deletes only what this station moved to the backup disk, never a stranger's files there."""
        record = self._station.events.record(scan_uuid)
        return record is not None and record.station.is_backed_up and record.station.deleted_at is None

    def _note(self, scan_uuid: str, **facts: object) -> None:
        """Station facts about a scan's files (AM-Vision's is_backed_up among them): stored, not in the webhook payload."""
        def change(record: ScanRecord) -> ScanRecord:
            return record.model_copy(update={"station": record.station.model_copy(update=facts)})

        self._station.events.annotate(scan_uuid, change)

    def _now(self) -> str:
        return timestamp(datetime.now(ZoneInfo(self._station.cfg.station.timezone)))

    def _mark_deleted(self, scan_uuid: str) -> None:
        self._note(scan_uuid, deleted_at=self._now())

    def _mark_backed_up(self, scan_uuid: str, path: Path) -> None:
        self._note(scan_uuid, is_backed_up=True, backup_path=str(path), backed_up_at=self._now())

    def start(self, spawn: Spawn) -> None:
        """After the station runs: threads for the watchdog, the backup mover and retention; then READY=1."""
        stop = self._station.stop_event
        if self.backup is not None:
            spawn("backup", self.backup.run, stop, self._station.cfg.backup.interval_s)
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
            if stop.wait(self._station.cfg.backup.interval_s):
                return

    def status_line(self) -> str:
        station = self._station
        stats = station.outbox.stats()
        paused = station.paused_reason(stats)
        head = f"paused: {paused}" if paused else "running"
        return (f"{head}; {station.loop.scans_stored} scans, {station.loop.scans_failed} failed; "
                f"outbox {stats.backlog}; {format_bytes(self.disk.free_bytes())} free")

    def supervise(self) -> None:
        self.supervisor_heartbeat.beat()
        self.watchdog.status(self.status_line())

    def stopping(self) -> None:
        self.capture_heartbeat.retire()
        self.supervisor_heartbeat.retire()
        sdnotify.stopping("stopping: finishing the scan in progress and draining the outbox")
