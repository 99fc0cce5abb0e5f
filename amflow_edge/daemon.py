"""Wires the station together and owns start and stop order.

Start: store (clean crash leftovers) → database (announce scans a crash left unannounced)
→ cameras → MQTT and relay → capture loop → triggers.
Stop: triggers → capture loop (the scan in progress finishes or leaves nothing) → outbox
drained as far as the broker allows → 'offline' → cameras closed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from amflow_edge import __version__
from amflow_edge.backlog import BacklogGuard
from amflow_edge.capture import CameraTask, CaptureLoop, Trigger
from amflow_edge.commands import CommandHandler
from amflow_edge.config import StationConfig
from amflow_edge.db import DB_FILE, StationDb
from amflow_edge.decisions import Decisions
from amflow_edge.events import Events
from amflow_edge.inspector import InspectionJob, Inspector, design_of
from amflow_edge.mqtt import StationMqtt
from amflow_edge.outbox import Outbox, OutboxStats
from amflow_edge.panel.base import ButtonSource, Lamps
from amflow_edge.panel.operator import OperatorPanel
from amflow_edge.qc_reasons import load_reasons
from amflow_edge.record import ScanRecord
from amflow_edge.relay import Relay
from amflow_edge.service import StationService
from amflow_edge.session import ScanningSession, SessionKeeper, batch_mesh_dir
from amflow_edge.state import StationState
from amflow_edge.station_commands import StationCommands, resolve_designs
from amflow_edge.store import ScanStore
from drivers.base import CameraDriver, CameraHealth, ReferenceSource, Reconnecting
from inspection.designs import Design, DesignLibrary, UnknownDesignError

log = structlog.get_logger(__name__)

def make_driver(cfg: StationConfig, library: DesignLibrary) -> CameraDriver:
    if cfg.rig.driver == "mock":
        from drivers.mock import MockDriver

        return MockDriver(cfg.cameras, cfg.mock, library)
    from drivers.pylon import PylonDriver

    return PylonDriver(cfg.cameras, cfg.pylon)


@dataclass
class RunOptions:
    max_scans: int | None = None
    state_interval_s: float = 30.0
    supervise_interval_s: float = 2.0
    timer: bool = True


class Station:
    def __init__(
        self,
        cfg: StationConfig,
        driver: CameraDriver | None = None,
        buttons: list[ButtonSource] | None = None,
        lamps: Lamps | None = None,
    ) -> None:
        from amflow_edge.panel.factory import make_button_sources, make_lamps

        self.cfg = cfg
        self.stop_event = threading.Event()
        self.sessions = SessionKeeper(cfg)
        capture = cfg.capture
        self.store = ScanStore(
            cfg.station.data_root, capture.png_compression, capture.png_strategy, capture.png_filter, capture.encode_threads
        )
        self.db = StationDb(cfg.station.state_dir / DB_FILE)
        self.outbox = Outbox(self.db)
        self.mqtt = StationMqtt(cfg)
        self.relay = Relay(self.db, self.mqtt, cfg.mqtt.max_in_flight, cfg.outbox.retention_s)
        self.events = Events(cfg, self.db, self.relay.wake, mirror=self.store.update_record)
        self.guard = BacklogGuard(self.outbox, cfg.outbox)
        self.library = DesignLibrary.load(cfg.designs.library)
        self._designs = self.library
        self.driver = driver if driver is not None else make_driver(cfg, self.library)
        self.inspector = Inspector(self.events, cfg.station.timezone) if cfg.inspection.enabled else None
        self.decisions = Decisions(self.events, load_reasons(cfg.qc.reasons), cfg.station.timezone)
        self.panel = OperatorPanel(
            self.decisions,
            lamps if lamps is not None else make_lamps(cfg.qc.lamps),
            cfg.qc.policy,
            cfg.qc.lockout_s,
            on_change=self.publish_state,
            inspects=self.inspector is not None,
        )
        self.events.listen(self.panel.scan_event)
        self.buttons = buttons if buttons is not None else make_button_sources(cfg.qc.buttons)
        self.service = StationService(self)
        self.loop = CaptureLoop(
            cfg,
            self.driver,
            self.store,
            self.events.scan_stored,
            lambda: self.sessions.current,
            self._after_scan,
            self.paused_reason,
            heartbeat=self.service.capture_heartbeat.beat,
        )
        self.mqtt.set_request_handler(CommandHandler(StationCommands(self).handlers(), self.mqtt.respond))
        self.mqtt.on_connected = self.publish_state
        self._threads: list[threading.Thread] = []
        self._reconnect_queued = False
        self._last_health: list[CameraHealth] = []
        self._max_scans: int | None = None
        self._mode = "starting"
        self._last_state = 0.0
        self._state_interval_s = 30.0

    def paused_reason(self, outbox: OutboxStats | None = None) -> str | None:
        """Why capture must wait: the events owed to the plant, or the disk; both resume by themselves."""
        return self.guard.reason(outbox) or self.service.disk.reason()

    def state(self) -> StationState:
        outbox = self.outbox.stats()
        paused = self.paused_reason(outbox)
        mode = "paused" if paused and self._mode == "running" else self._mode
        session = self.sessions.current
        return StationState(
            station=self.cfg.station.id,
            version=__version__,
            mode=mode,  # type: ignore[arg-type]
            paused_reason=paused,
            broker_connected=self.mqtt.connected.is_set(),
            outbox=outbox,
            disk_free_bytes=self.service.disk.free_bytes(),
            driver=self.cfg.rig.driver,
            scan_session=session.scan_session,
            batch=session.batch,
            output=session.output,
            operator=self.panel.view(),
            cameras=self.driver.health(),
            scans_stored=self.loop.scans_stored,
            scans_failed=self.loop.scans_failed,
            last_scan=self.loop.last_scan,
        )

    @property
    def scan_session(self) -> str:
        return self.sessions.current.scan_session

    def publish_state(self) -> None:
        self._last_state = time.monotonic()
        if self.mqtt.connected.is_set():
            self.mqtt.publish(self.mqtt.state_topic, self.state().model_dump_json().encode(), retain=True)

    def designs(self) -> DesignLibrary:
        """The design library plus the active session's designs."""
        return self._designs

    def capture_reference(self, scan_session: str | None = None) -> None:
        """The session's empty-tray images, which inspection compares every scan with."""
        if not isinstance(self.driver, ReferenceSource):
            log.warning("this camera driver cannot take empty-tray references; scans are not inspected")
            return
        shot = self.driver.grab_reference(self.cfg.rig.grab_timeout_s)
        path = self.store.write_reference(scan_session or self.scan_session, {n: f.image for n, f in shot.frames.items()})
        log.info("empty-tray references stored", path=str(path))

    def switch_session(self, session: ScanningSession, designs: list[Design]) -> None:
        """On the capture thread: references for the new session first, so a failure leaves the old one running."""
        if self.inspector is not None:
            self.capture_reference(session.scan_session)
        self.sessions.replace(session)
        self._designs = self.library.with_designs(designs)
        log.info("scanning session changed", scan_session=session.scan_session,
                 batch=session.batch.id if session.batch else None, designs=len(designs))
        self.publish_state()

    def inspection_job(self, record: ScanRecord, profile: str | None = None) -> InspectionJob:
        """Raises LookupError (UnknownDesignError is one) saying why the scan cannot be inspected."""
        if record.station.deleted_at is not None:
            raise LookupError(f"its images were deleted by retention at {record.station.deleted_at}")
        design_material = design_of(record)
        reference_dir = self.store.reference_dir(record.scan.scan_session)
        if design_material is None:
            raise LookupError("the design is unknown (name it in the capture request)")
        try:
            design = self.designs().get(design_material)
        except UnknownDesignError:
            session = self.sessions.current
            if design_material in {d.design_material for d in session.designs}:
                raise LookupError(
                    f"design {design_material} of session {session.scan_session} could not be loaded at start (see the "
                    f"log); put its mesh back in {batch_mesh_dir(self.cfg)} and restart, or start the session again"
                ) from None
            raise
        if not reference_dir.is_dir():
            raise LookupError(f"no empty-tray references for session {record.scan.scan_session}")
        return InspectionJob(
            scan_uuid=record.scan.uuid,
            scan_dir=self.store.directory_of(record),
            reference_dir=reference_dir,
            calibrations={c.name: c.calibration for c in self.cfg.cameras},
            design_path=design.path,
            units=design.units,
            design_material=design.design_material,
            profile=profile or self.cfg.inspection.profile,
            cache_dir=self.cfg.station.state_dir / "design_cache",
        )

    def supervise(self) -> None:
        """Periodic: keep paho's network thread alive, get lost cameras back, tell the plant how the station is."""
        self.service.supervise()
        self.mqtt.revive()
        health = self.driver.health()
        if isinstance(self.driver, Reconnecting) and self.driver.needs_reconnect() and not self._reconnect_queued:
            self._reconnect_queued = self.loop.submit_task(CameraTask(name="reconnect", run=self._reconnect))
        if health != self._last_health or time.monotonic() - self._last_state >= self._state_interval_s:
            self._last_health = health
            self.publish_state()

    def _reconnect(self) -> None:
        self._reconnect_queued = False
        assert isinstance(self.driver, Reconnecting)
        self.driver.reconnect()

    def _resume_session_designs(self) -> None:
        """A session resumed after a restart needs its batch's meshes again; a mesh gone since is reported, not fatal."""
        try:
            self._designs = self.library.with_designs(resolve_designs(self, self.sessions.current.designs))
        except Exception as exc:
            log.error("a design of the resumed session cannot be loaded; its scans are not inspected", error=str(exc))

    def resume_inspections(self, limit: int = 1000) -> int:
        """Scans a stop or crash left uninspected get their verdict now, so no scan.quality_control is lost."""
        if self.inspector is None:
            return 0
        pending = [
            r for r in self.events.recent_records(limit)
            if r.scan.inspectionreport is None and r.scan.qc_machine is None and not r.scan.qc_needs_review
            and r.scan.qc_operator is None
        ]
        gone = [r.scan.uuid for r in pending if not self.store.directory_of(r).is_dir()]
        if gone:
            log.error("uninspected scans whose directories are gone (moved or deleted by hand); not inspected",
                      count=len(gone), scans=gone[:10])
            pending = [r for r in pending if r.scan.uuid not in gone]
        for record in pending:
            self._inspect(record)
        if pending:
            log.info("inspecting scans left uninspected by the last stop", count=len(pending))
        return len(pending)

    def _inspect(self, record: ScanRecord) -> None:
        if self.inspector is None:
            return
        try:
            job = self.inspection_job(record)
        except LookupError as exc:
            log.warning("scan cannot be inspected; it needs an operator's review", scan=record.scan.uuid,
                        reason=str(exc))
            self.inspector.apply_failure(record.scan.uuid)
            return
        self.inspector.submit(job)

    def _after_scan(self, record: ScanRecord) -> None:
        """The state topic already went out: the operator panel publishes it when a new part is on the tray."""
        self._inspect(record)
        if self._max_scans is not None and self.loop.scans_stored >= self._max_scans:
            log.info("captured the requested number of scans; stopping", scans=self.loop.scans_stored)
            self.stop_event.set()

    def _every(self, interval_s: float, action: Callable[[], object]) -> None:
        while not self.stop_event.wait(interval_s):
            try:
                action()
            except Exception:
                log.exception("periodic task failed", task=getattr(action, "__name__", str(action)))

    def _spawn(self, name: str, target: Callable[..., object], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def start(self, options: RunOptions | None = None) -> None:
        options = options or RunOptions()
        self._max_scans = options.max_scans
        self._state_interval_s = options.state_interval_s
        self.store.prepare()
        self.events.announce_unrecorded(self.store.scans_dir, self.store.read_record)
        self._resume_session_designs()
        latest = self.events.recent_records(1)
        self.panel.follow(latest[0] if latest else None)
        self.driver.open()
        if self.inspector is not None:
            if not self.store.reference_dir(self.scan_session).is_dir():
                self.capture_reference()
            self.resume_inspections()
        self.relay.start()
        self.mqtt.start()
        self._mode = "running"
        self._spawn("capture", self.loop.run, self.stop_event)
        self._spawn("supervisor", self._every, options.supervise_interval_s, self.supervise)
        for index, source in enumerate(self.buttons):
            self._spawn(f"button-{index}", source.run, self.panel.press, self.stop_event)
        if options.timer and self.cfg.capture.timer_interval_s is not None:
            self._spawn("timer", self._every, self.cfg.capture.timer_interval_s,
                        lambda: self.loop.submit(Trigger(source="timer")))
        log.info(
            "station running",
            station=self.cfg.station.id,
            scan_session=self.scan_session,
            data_root=str(self.cfg.station.data_root),
            driver=self.cfg.rig.driver,
            outbox_backlog=self.outbox.stats().backlog,
        )
        self.service.start(self._spawn)

    def wait(self) -> None:
        while not self.stop_event.wait(0.5):
            pass

    def shutdown(self, flush_timeout_s: float = 10.0) -> None:
        self.service.stopping()
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=30)
        if self.inspector is not None:
            self.inspector.close()  # inspections under way finish and queue their events
        if self.mqtt.connected.is_set() and not self.relay.drain(flush_timeout_s):
            log.warning("events still queued at stop; they are sent at the next start",
                        backlog=self.outbox.stats().backlog)
        self._mode = "stopping"
        self.publish_state()
        self.relay.stop()
        self.mqtt.stop()
        self.panel.close()
        self.driver.close()
        self.store.close()
        self.db.close()
        log.info("station stopped", scans_stored=self.loop.scans_stored, scans_failed=self.loop.scans_failed)
