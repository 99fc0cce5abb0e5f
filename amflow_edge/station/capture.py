"""The capture loop: trigger → five frames → atomic scan directory → scan.capture.

One thread owns the cameras and takes triggers from a queue, so timer, MQTT requests,
buttons and the CLI can all ask for a scan without ever driving the cameras concurrently.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

import numpy as np
import structlog

from amflow_edge import __version__
from amflow_edge.common.scan_layout import scan_image
from amflow_edge.config.station import StationConfig
from amflow_edge.drivers.base import CameraDriver, DriverError, GrabError, HardwareTriggered, Shot
from amflow_edge.messaging.payload import Assignment, new_scan, timestamp
from amflow_edge.ops.log_limit import rate_limited_warnings
from amflow_edge.station.session import ScanningSession
from amflow_edge.storage.db import DatabaseError
from amflow_edge.storage.record import CameraShotRecord, ScanRecord, StationMetadata
from amflow_edge.storage.store import ScanStore, StoreError

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class CaptureResult:
    ok: bool
    uuid: str | None = None
    error: str | None = None


@dataclass
class Trigger:
    source: str
    at: datetime = field(default_factory=lambda: datetime.now(UTC))
    design_material: str | None = None
    assignment: Assignment | None = None
    done: Callable[[CaptureResult], None] | None = None


@dataclass
class CameraTask:
    """Work that needs the cameras to itself between scans (empty-tray references at a session change)."""

    name: str
    run: Callable[[], object]


class TaskQueue(Protocol):
    def submit_task(self, task: CameraTask) -> bool: ...


class QueuedOnce:
    """A camera task the supervisor may ask for on every tick, queued at most once at a time. The mark is set
    before the task is submitted and cleared when it has run, so a capture thread that runs it at once cannot
    leave the mark set for good (and the task never asked for again)."""

    def __init__(self, name: str, run: Callable[[], object]) -> None:
        self._name = name
        self._run = run
        self._lock = threading.Lock()
        self._queued = False

    @property
    def queued(self) -> bool:
        return self._queued

    def submit_to(self, loop: TaskQueue) -> None:
        with self._lock:
            if self._queued:
                return
            self._queued = True
        if not loop.submit_task(CameraTask(name=self._name, run=self._run_and_clear)):
            self._queued = False

    def _run_and_clear(self) -> None:
        try:
            self._run()
        finally:
            self._queued = False


class FrameError(DriverError):
    """The driver returned frames the station cannot store (wrong size, type, or a camera missing)."""


def check_shot(shot: Shot, cfg: StationConfig) -> None:
    problems = []
    for camera in cfg.cameras:
        frame = shot.frames.get(camera.name)
        if frame is None:
            problems.append(f"{camera.name}: no frame")
            continue
        image = frame.image
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 2:
            problems.append(
                f"{camera.name}: expected a 2-D uint8 Mono8 image, got {getattr(image, 'dtype', type(image))}"
            )
        elif image.shape != (camera.height, camera.width):
            problems.append(
                f"{camera.name}: expected {camera.width}×{camera.height}, got {image.shape[1]}×{image.shape[0]}"
            )
    unexpected = sorted(set(shot.frames) - {c.name for c in cfg.cameras})
    if unexpected:
        problems.append(f"frames from unconfigured cameras {', '.join(unexpected)}")
    if problems:
        raise FrameError("; ".join(problems))


class ScanAnnouncer(Protocol):
    def scan_stored(self, record: ScanRecord) -> object:
        """Record the stored scan and owe the plant its scan.capture."""
        ...


class CurrentSession(Protocol):
    @property
    def current(self) -> ScanningSession: ...


class Beat(Protocol):
    def beat(self) -> None:
        """The loop is alive (the watchdog's Heartbeat)."""
        ...


class Pause(Protocol):
    def reason(self) -> str | None:
        """Why capture must wait, or None."""
        ...


class CaptureLoop:
    def __init__(
        self,
        cfg: StationConfig,
        driver: CameraDriver,
        store: ScanStore,
        *,
        announcer: ScanAnnouncer,
        sessions: CurrentSession,
        pause: Pause,
        heartbeat: Beat,
    ) -> None:
        self._cfg = cfg
        self._driver = driver
        self._store = store
        self._announcer = announcer
        self._sessions = sessions
        self._pause = pause
        self._heartbeat = heartbeat
        self._tz = ZoneInfo(cfg.station.timezone)
        self._triggers: queue.Queue[Trigger | CameraTask] = queue.Queue(maxsize=8)
        self._listeners: list[Callable[[ScanRecord], None]] = []
        self._refusals = rate_limited_warnings(log, "more captures refused; not logged one by one")
        self.scans_stored = 0
        self.scans_failed = 0
        self.last_scan: str | None = None
        self.capturing = threading.Event()
        """Set from the trigger until the scan is announced: the HTTP API starts no image download meanwhile, so
        screens never compete with a capture for the cores (amflow_edge/web/files.py)."""

    def listen(self, listener: Callable[[ScanRecord], None]) -> None:
        """Called on the capture thread after each scan is stored and announced (the station inspects it)."""
        self._listeners.append(listener)

    def submit(self, trigger: Trigger) -> bool:
        """Queue a trigger; a full queue means the station is far behind, and the trigger is refused, not lost silently."""
        try:
            self._triggers.put_nowait(trigger)
            return True
        except queue.Full:
            self._refusals("trigger refused: captures are queued up", trigger.source, source=trigger.source)
            if trigger.done:
                trigger.done(CaptureResult(ok=False, error="station busy: too many captures queued"))
            return False

    def submit_task(self, task: CameraTask) -> bool:
        try:
            self._triggers.put_nowait(task)
            return True
        except queue.Full:
            log.warning("camera task refused: captures are queued up", task=task.name)
            return False

    def run(self, stop: threading.Event) -> None:
        hardware = isinstance(self._driver, HardwareTriggered) and self._driver.hardware_triggered
        while not stop.is_set():
            self._heartbeat.beat()
            try:
                trigger = self._triggers.get_nowait() if hardware else self._triggers.get(timeout=0.2)
            except queue.Empty:
                if hardware:
                    self._wait_for_pulse(stop)
                continue
            if isinstance(trigger, CameraTask):
                try:
                    trigger.run()
                except Exception:
                    log.exception("camera task failed", task=trigger.name)
                continue
            try:
                result = self.capture(trigger)
            except Exception as exc:  # a bug must cost one scan, never the capture thread
                log.exception("capture crashed; the station carries on", source=trigger.source)
                result = CaptureResult(ok=False, error=f"internal error: {exc}")
            if trigger.done:
                trigger.done(result)
        self._refuse_queued()

    def _refuse_queued(self) -> None:
        """Triggers still queued at the stop are answered now, so their requesters (an HTTP request, an MQTT
        client waiting on its response topic) hear 'stopping' at once instead of waiting for a timeout."""
        while True:
            try:
                trigger = self._triggers.get_nowait()
            except queue.Empty:
                return
            if isinstance(trigger, Trigger) and trigger.done:
                trigger.done(CaptureResult(ok=False, error="station stopping: the trigger was not carried out"))

    def _wait_for_pulse(self, stop: threading.Event) -> None:
        """Hardware trigger: the part-present sensor fires the cameras; a scan starts when their frames arrive."""
        assert isinstance(self._driver, HardwareTriggered)
        captured_at = datetime.now(UTC)
        try:
            shot = self._driver.wait_shot(0.2)
            if shot is not None:
                self.capture(Trigger(source="hardware", at=captured_at), shot)
        except GrabError as exc:
            self.scans_failed += 1
            log.error("capture failed; no scan stored", source="hardware", error=str(exc))
        except DriverError:
            stop.wait(1.0)  # a lost camera is logged by the driver; the supervisor reconnects it
        except Exception:  # as in run(): a bug must cost one scan, never the capture thread
            log.exception("hardware-triggered capture crashed; the station carries on")
            stop.wait(1.0)

    def capture(self, trigger: Trigger, shot: Shot | None = None) -> CaptureResult:
        """Trigger and grab (or take the frames a hardware pulse already delivered), then store and announce."""
        reason = self._pause.reason()
        if reason is not None:
            if trigger.source != "timer":  # the timer's ticks skip quietly; the pause itself is logged once
                self._refusals(
                    "capture refused: the station is paused", trigger.source, source=trigger.source, reason=reason
                )
            return CaptureResult(ok=False, error=f"station paused: {reason}")
        scan_uuid = str(uuid.uuid1())
        self.capturing.set()
        try:
            return self._capture(scan_uuid, trigger, shot)
        finally:
            self.capturing.clear()

    def _capture(self, scan_uuid: str, trigger: Trigger, shot: Shot | None) -> CaptureResult:
        with structlog.contextvars.bound_contextvars(scan=scan_uuid):
            try:
                captured_at = trigger.at if shot is not None else datetime.now(UTC)
                if shot is None:
                    self._driver.trigger()
                    shot = self._driver.grab(self._cfg.rig.grab_timeout_s)
                check_shot(shot, self._cfg)
                record = self._record(scan_uuid, trigger, shot, captured_at)
                path = self._store.write_scan(record, {n: f.image for n, f in shot.frames.items()})
            except (DriverError, StoreError) as exc:
                self.scans_failed += 1
                log.error("capture failed; no scan stored", source=trigger.source, error=str(exc))
                return CaptureResult(ok=False, error=str(exc))
            self.scans_stored += 1
            self.last_scan = scan_uuid
            log.info("scan stored", path=str(path), source=trigger.source)
            try:
                self._announcer.scan_stored(record)
            except (DatabaseError, sqlite3.Error) as exc:
                log.error("scan stored but not yet announced; it is announced at the next start", error=str(exc))
            for listener in self._listeners:
                try:
                    listener(record)
                except Exception:  # the scan is stored and announced whatever happens after
                    log.exception("post-capture step failed")
            return CaptureResult(ok=True, uuid=scan_uuid)

    def _record(self, scan_uuid: str, trigger: Trigger, shot: Shot, captured_at: datetime) -> ScanRecord:
        session = self._sessions.current
        scan = new_scan(
            uuid=scan_uuid,
            created=captured_at.astimezone(self._tz),
            scan_session=session.scan_session,
            camera_count=len(self._cfg.cameras),
            design_material=trigger.design_material,
            batch=session.batch,
            assignment=trigger.assignment,
            output=session.output,
        )
        cameras = {}
        for camera in self._cfg.cameras:
            frame = shot.frames[camera.name]
            cameras[camera.name] = CameraShotRecord(
                file=scan_image(camera.name),
                serial=frame.serial,
                timestamp=timestamp(frame.timestamp),
                exposure_us=frame.exposure_us,
                gain_db=frame.gain_db,
                width=frame.image.shape[1],
                height=frame.image.shape[0],
                calibration=str(camera.calibration),
                extra=dict(frame.extra),
            )
        station = StationMetadata(
            station_id=self._cfg.station.id,
            software_version=__version__,
            driver=self._cfg.rig.driver,
            trigger_source=trigger.source,
            triggered_at=timestamp(trigger.at.astimezone(self._tz)),
            cameras=cameras,
            rig=dict(shot.metadata),
        )
        return ScanRecord(scan=scan, station=station)
