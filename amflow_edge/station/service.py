"""The station as a systemd service: readiness, liveness, disk space, backup and retention.

Kept apart from the scan path so its wiring stays readable: the station tells this object when
it is ready or stopping, and lets it run the watchdog, backup and retention threads.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

import structlog

from amflow_edge.config.station import StationConfig
from amflow_edge.messaging.outbox import Outbox
from amflow_edge.ops import sdnotify
from amflow_edge.ops.watchdog import Heartbeat, Watchdog
from amflow_edge.station.pause import PauseGuard
from amflow_edge.station.scan_files import ScanFiles
from amflow_edge.storage.backup import BackupMover
from amflow_edge.storage.disk import Retention, format_bytes

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


def mqtt_thread_check(mqtt: NetworkThread) -> Callable[[], str | None]:
    """paho's network thread is revived by the supervisor; still dead at the next look means it cannot be."""
    return lambda: None if mqtt.network_thread_alive() else "the MQTT network thread is not running"


class StationService:
    def __init__(
        self,
        cfg: StationConfig,
        *,
        outbox: Outbox,
        pause: PauseGuard,
        counts: ScanCounts,
        watchdog: Watchdog,
        capture_heartbeat: Heartbeat,
        supervisor_heartbeat: Heartbeat,
        files: ScanFiles,
        backup: BackupMover | None,
        retention: Retention | None,
    ) -> None:
        self._cfg = cfg
        self._outbox = outbox
        self._pause = pause
        self._counts = counts
        self._files = files
        self.watchdog = watchdog
        self.capture_heartbeat = capture_heartbeat
        self.supervisor_heartbeat = supervisor_heartbeat
        self.backup = backup
        self.retention = retention

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
                    self._files.mark_deleted(scan_uuid)
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
            f"outbox {stats.backlog}; {format_bytes(self._pause.disk.free_bytes())} free"
        )

    def supervise(self) -> None:
        self.supervisor_heartbeat.beat()
        self.watchdog.status(self.status_line())

    def stopping(self) -> None:
        self.capture_heartbeat.retire()
        self.supervisor_heartbeat.retire()
        sdnotify.stopping("stopping: finishing the scan in progress and draining the outbox")
