"""The running station: start and stop order, the state it reports, and what follows each scan.

Its parts are built and wired by `build_station`; here they are only used.
Start: store (clean crash leftovers) → database (announce scans a crash left unannounced)
→ cameras → MQTT and relay → HTTP API → capture loop → triggers.
Stop: triggers → capture loop (the scan in progress finishes or leaves nothing) → outbox
drained as far as the broker allows → 'stopped' → HTTP API → 'offline' → cameras closed.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Protocol
from zoneinfo import ZoneInfo

import structlog

from amflow_edge import __version__
from amflow_edge.common.backoff import Backoff
from amflow_edge.config.station import StationConfig
from amflow_edge.drivers.base import CameraDriver, CameraHealth, DriverError, Reconnecting, ReferenceSource
from amflow_edge.inspection.designs import Design, DesignLibrary
from amflow_edge.messaging.events import Events
from amflow_edge.messaging.mqtt import StationMqtt
from amflow_edge.messaging.outbox import Outbox
from amflow_edge.messaging.payload import timestamp
from amflow_edge.messaging.relay import Relay
from amflow_edge.messaging.webhooks import WebhookSenders
from amflow_edge.panel.base import ButtonSource
from amflow_edge.panel.operator import OperatorPanel
from amflow_edge.qc.decisions import Decisions
from amflow_edge.station.calibration_drift import CalibrationDrift
from amflow_edge.station.capture import CaptureLoop, QueuedOnce, Trigger
from amflow_edge.station.design_processing import DesignProcessing
from amflow_edge.station.designs import DesignCatalogue
from amflow_edge.station.identification import Identifications
from amflow_edge.station.inspection_jobs import InspectionJobs
from amflow_edge.station.inspector import Inspector
from amflow_edge.station.pause import PauseGuard
from amflow_edge.station.service import StationService
from amflow_edge.station.session import ScanningSession, SessionKeeper
from amflow_edge.station.state import HttpStatus, Mode, StationState
from amflow_edge.storage.db import StationDb
from amflow_edge.storage.record import ScanRecord
from amflow_edge.storage.store import ScanStore, StoreError

log = structlog.get_logger(__name__)


@dataclass
class RunOptions:
    max_scans: int | None = None
    state_interval_s: float = 30.0
    supervise_interval_s: float = 2.0
    timer: bool = True
    http: bool = True
    """Serve the HTTP API (when configured); a one-shot `capture` has no screen to serve."""


class Served(Protocol):
    """A server the station starts and stops with itself (the HTTP API, amflow_edge.web.server)."""

    addresses: list[str]
    """Where it listens once started (http://host:port, the real port when 0 asked for a free one)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


@dataclass(eq=False)
class Station:
    """Identity, not value: two stations with the same parts are still two stations."""

    cfg: StationConfig
    sessions: SessionKeeper
    store: ScanStore
    db: StationDb
    outbox: Outbox
    mqtt: StationMqtt
    relay: Relay
    events: Events
    catalogue: DesignCatalogue
    driver: CameraDriver
    inspector: Inspector | None
    jobs: InspectionJobs
    decisions: Decisions
    panel: OperatorPanel
    buttons: list[ButtonSource]
    pause: PauseGuard
    loop: CaptureLoop
    service: StationService
    processing: DesignProcessing
    identifications: Identifications
    over_counted: Callable[[], list[str]] = field(default=list)
    copies_assigned: Callable[[], dict[str, int]] = field(default=dict)
    drift: CalibrationDrift | None = None
    webhooks: WebhookSenders | None = None
    http: Served | None = None
    stop_event: threading.Event = field(default_factory=threading.Event, init=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False)
    _reconnect_task: QueuedOnce = field(init=False)
    _references_task: QueuedOnce = field(init=False)
    _reference_retries: Backoff = field(default_factory=lambda: Backoff(5.0, 300.0), init=False)
    _next_reference_try: float = field(default=0.0, init=False)
    _last_health: list[CameraHealth] = field(default_factory=list, init=False)
    _max_scans: int | None = field(default=None, init=False)
    _enough: bool = field(default=False, init=False)
    _timer_pending: threading.Event = field(default_factory=threading.Event, init=False)
    _mode: Mode = field(default="starting", init=False)
    _last_state: float = field(default=0.0, init=False)
    _state_interval_s: float = field(default=30.0, init=False)
    _state_listeners: list[Callable[[StationState], None]] = field(default_factory=list, init=False)
    _http_started: bool = field(default=False, init=False)
    _http_error: str | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._reconnect_task = QueuedOnce("reconnect", self._reconnect)
        self._references_task = QueuedOnce("references", self._retake_references)

    def state(self) -> StationState:
        outbox = self.outbox.stats()
        paused = self.pause.reason(outbox)
        mode: Mode = "paused" if paused and self._mode == "running" else self._mode
        session = self.sessions.current
        return StationState(
            station=self.cfg.station.id,
            at=timestamp(datetime.now(ZoneInfo(self.cfg.station.timezone))),
            version=__version__,
            mode=mode,
            paused_reason=paused,
            broker_connected=self.mqtt.connected.is_set(),
            outbox=outbox,
            webhooks=self.webhooks.statuses() if self.webhooks is not None else [],
            disk_free_bytes=self.pause.disk.free_bytes(),
            driver=self.cfg.rig.driver,
            scan_session=session.scan_session,
            batch=session.batch,
            output=session.output,
            operator=self.panel.view(),
            design_processing=self.processing.progress(),
            awaiting_identification=self.identifications.awaiting(),
            copies_assigned=self.copies_assigned(),
            over_counted=self.over_counted(),
            cameras=self.driver.health(),
            calibration_drift=self.drift.report if self.drift is not None else None,
            scans_stored=self.loop.scans_stored,
            scans_failed=self.loop.scans_failed,
            last_scan=self.loop.last_scan,
            http=self.http_status(),
        )

    def designs(self) -> DesignLibrary:
        """The design library plus the active session's designs."""
        return self.catalogue.current()

    @property
    def scan_session(self) -> str:
        return self.sessions.current.scan_session

    def listen_state(self, listener: Callable[[StationState], None]) -> None:
        """Called with every state the station publishes, connected to the broker or not (the screen's stream)."""
        self._state_listeners.append(listener)

    def publish_state(self) -> None:
        self._last_state = time.monotonic()
        connected = self.mqtt.connected.is_set()
        if not connected and not self._state_listeners:
            return
        state = self.state()
        if connected:
            self.mqtt.publish(self.mqtt.state_topic, state.model_dump_json().encode(), retain=True)
        for listener in self._state_listeners:
            try:
                listener(state)
            except Exception:  # a listener's bug must not keep the state from the broker next time
                log.exception("state listener failed")

    def capture_reference(self, scan_session: str | None = None) -> None:
        """The session's empty-tray images, which inspection compares every scan with."""
        if not isinstance(self.driver, ReferenceSource):
            log.warning("this camera driver cannot take empty-tray references; scans are not inspected")
            return
        scan_session = scan_session or self.scan_session
        shot = self.driver.grab_reference(self.cfg.rig.grab_timeout_s)
        images = {n: f.image for n, f in shot.frames.items()}
        path = self.store.write_reference(scan_session, images)
        log.info("empty-tray references stored", path=str(path))
        if self.drift is not None:  # the pictures in hand, not read back from the files just written
            self.drift.check_images(images, scan_session)

    def _check_drift(self, reference_dir: Path, scan_session: str) -> None:
        """Before the session's first scan is inspected: a camera that moved must not give it a verdict."""
        if self.drift is not None and reference_dir.is_dir():
            self.drift.check(reference_dir, scan_session)

    def _check_drift_at_start(self) -> None:
        """A camera bumped while the station was off shows in a fresh picture, not in the session's references;
        with no fresh picture to be had, the references are checked instead."""
        if self.drift is None:
            return
        if isinstance(self.driver, ReferenceSource):
            try:
                shot = self.driver.grab_reference(self.cfg.rig.grab_timeout_s)
            except DriverError as exc:
                log.warning(
                    "no fresh picture for the drift check; the session's references are checked", error=str(exc)
                )
            else:
                self.drift.check_images({n: f.image for n, f in shot.frames.items()}, self.scan_session)
                return
        self._check_drift(self.store.reference_dir(self.scan_session), self.scan_session)

    def _has_references(self) -> bool:
        return self.store.reference_dir(self.scan_session).is_dir()

    def _references_at_start(self) -> bool:
        """A station short of disk space still starts. A new session whose references cannot be written uses
        the previous session's (a link); with none to use, capture waits, paused and saying why, until the
        supervisor has taken them once there is room. True when the references are from before this start (and
        were not checked for drift with it)."""
        if self._has_references():
            return True
        why = self.pause.disk.reason()
        if why is None:
            try:
                self.capture_reference()
                return False
            except StoreError as exc:
                why = str(exc)
        previous = self.store.latest_references(besides=self.scan_session)
        if previous is not None:
            try:
                self.store.adopt_references(self.scan_session, previous)
            except OSError as exc:
                log.error("the previous session's references could not be linked", error=str(exc))
            else:
                log.warning(
                    "empty-tray references not taken; this session uses the previous session's",
                    reason=why,
                    references=str(previous),
                )
                return True
        log.warning("empty-tray references not taken; capture waits until they are", reason=why)
        return True

    def _retake_references(self) -> None:
        try:
            if not self._has_references():
                self.capture_reference()
                self._reference_retries.reset()
        except StoreError as exc:
            log.error("empty-tray references not stored; they are taken again when there is room", error=str(exc))

    def _references_due(self) -> bool:
        """Missing references are retaken when the disk has room, at most at the backoff's pace: a retake
        renders or grabs five full frames, and a disk that refuses them keeps refusing for a while."""
        if self.inspector is None or self._references_task.queued or self._has_references():
            return False
        if self.pause.disk.reason() is not None or time.monotonic() < self._next_reference_try:
            return False
        self._next_reference_try = time.monotonic() + self._reference_retries.next_delay()
        return True

    def switch_session(self, session: ScanningSession, designs: list[Design]) -> None:
        """On the capture thread: references for the new session first, so a failure leaves the old one running."""
        if self.inspector is not None:
            self.capture_reference(session.scan_session)
        self.sessions.replace(session)
        self.catalogue.use(designs)
        self.identifications.forget_session()
        self.processing.start(self.jobs.session_designs(session))
        log.info(
            "scanning session changed",
            scan_session=session.scan_session,
            batch=session.batch.id if session.batch else None,
            designs=len(designs),
        )
        self.publish_state()

    def supervise(self) -> None:
        """Periodic: keep paho's network thread alive, get lost cameras back, tell the plant how the station is."""
        self.service.supervise()
        self.mqtt.revive()
        if self.inspector is not None:
            self.inspector.check_deadline()
        health = self.driver.health()
        if isinstance(self.driver, Reconnecting) and self.driver.needs_reconnect():
            self._reconnect_task.submit_to(self.loop)
        if self._references_due():
            self._references_task.submit_to(self.loop)
        if health != self._last_health or time.monotonic() - self._last_state >= self._state_interval_s:
            self._last_health = health
            self.publish_state()

    def _reconnect(self) -> None:
        assert isinstance(self.driver, Reconnecting)
        self.driver.reconnect()

    def _resume_session_designs(self) -> None:
        """A session resumed after a restart needs its batch's meshes again; a mesh gone since is reported, not fatal."""
        session = self.sessions.current
        try:
            self.catalogue.use(self.catalogue.resolve(session.designs, session.parts, session.mesh_folder))
        except Exception as exc:  # noqa: BLE001 - an unreadable mesh must not keep the station from starting
            log.error("a design of the resumed session cannot be loaded; its scans are not inspected", error=str(exc))
        self.processing.start(self.jobs.session_designs(session))

    def resume_inspections(self, limit: int = 1000) -> int:
        """Scans a stop or crash left uninspected get their verdict now, so no scan.quality_control is lost."""
        if self.inspector is None:
            return 0
        # A scan without a design that was identified already is one an operator unassigned or rejected since:
        # identifying it again would undo their word.
        pending = [
            r
            for r in self.events.recent_records(limit)
            if r.scan.inspectionreport is None
            and r.scan.qc_machine is None
            and not r.scan.qc_needs_review
            and r.scan.qc_operator is None
            and (r.scan.design_material is not None or r.station.identification is None)
        ]
        gone = [r.scan.uuid for r in pending if not self.store.directory_of(r).is_dir()]
        if gone:
            log.error(
                "uninspected scans whose directories are gone (moved or deleted by hand); not inspected",
                count=len(gone),
                scans=gone[:10],
            )
            pending = [r for r in pending if r.scan.uuid not in gone]
        for record in pending:
            self.inspect(record)
        if pending:
            log.info("inspecting scans left uninspected by the last stop", count=len(pending))
        return len(pending)

    def inspect(self, record: ScanRecord) -> None:
        """capture → inspect → verdict: the worker's result becomes the scan's qc_* and scan.quality_control."""
        if self.inspector is None:
            return
        try:
            job = self.jobs.for_scan(record)
        except LookupError as exc:
            log.warning(
                "scan cannot be inspected; it needs an operator's review", scan=record.scan.uuid, reason=str(exc)
            )
            self.inspector.apply_failure(record.scan.uuid)
            return
        if job.design_material is None and not self.processing.ready():
            log.info(
                "scan waits for the batch's designs to be processed before it is identified", scan=record.scan.uuid
            )
            self.processing.when_ready(lambda: self._inspect_again(record.scan.uuid))
            return
        self.inspector.submit(job)

    def _inspect_again(self, scan_uuid: str) -> None:
        """A scan that waited for the batch's processing, unless an operator gave it a design (and with it an
        inspection) or a verdict meanwhile."""
        record = self.events.record(scan_uuid)
        if record is not None and record.scan.design_material is None and record.scan.inspectionreport is None:
            self.inspect(record)

    def after_scan(self, record: ScanRecord) -> None:
        """The state topic already went out: the operator panel publishes it when a new part is on the tray."""
        self.inspect(record)
        if self._max_scans is not None and self.loop.scans_stored >= self._max_scans:
            log.info("captured the requested number of scans; stopping once they are inspected", scans=self._max_scans)
            self._max_scans = None
            self._enough = True
            self._spawn("stop-when-inspected", self._stop_when_inspected)

    def _timer_trigger(self) -> None:
        """At most one timer trigger waits at a time: a timer faster than a capture must not pile up triggers
        (with `run --scans N`, one queued behind the N-th would be an N+1-th scan)."""
        if self._enough or self._timer_pending.is_set():
            return
        self._timer_pending.set()
        self.loop.submit(Trigger(source="timer", done=lambda _: self._timer_pending.clear()))

    def _stop_when_inspected(self) -> None:
        """`run --scans N` ends with every event of its N scans out: identification waits for the batch's
        processing and inspection for the worker, each at most its deadline."""
        if self.inspector is not None:
            deadline = time.monotonic() + self.inspector.deadline_s
            while not self.stop_event.wait(0.2) and time.monotonic() < deadline:
                if self.processing.settled() and self.inspector.idle():
                    break
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
            if self._references_at_start():
                self._check_drift_at_start()
            self.resume_inspections()
        self.relay.start()
        if self.webhooks is not None:
            self.webhooks.start()
        self.mqtt.start()
        if options.http and self.http is not None:
            self._start_http(self.http)
        self._mode = "running"
        self.publish_state()  # the broker may have connected (and been told "starting") while the HTTP API started
        self._spawn("capture", self.loop.run, self.stop_event)
        self._spawn("supervisor", self._every, options.supervise_interval_s, self.supervise)
        for index, source in enumerate(self.buttons):
            self._spawn(f"button-{index}", source.run, self.panel.press, self.stop_event)
        if options.timer and self.cfg.capture.timer_interval_s is not None:
            self._spawn(
                "timer",
                self._every,
                self.cfg.capture.timer_interval_s,
                self._timer_trigger,
            )
        log.info(
            "station running",
            station=self.cfg.station.id,
            scan_session=self.scan_session,
            data_root=str(self.cfg.station.data_root),
            driver=self.cfg.rig.driver,
            outbox_backlog=self.outbox.stats().backlog,
        )
        self.service.start(self._spawn, self.stop_event)

    def _start_http(self, http: Served) -> None:
        """A screen is not worth the capture: an HTTP API that cannot start (a taken port, an address no longer
        on this machine) is logged and named in the state, and the station scans on without it. Restarting the
        station for it would only loop (the port stays taken) and stop the scans too."""
        try:
            http.start()
        except Exception as exc:  # noqa: BLE001 - HttpServerError (web.bind) or whatever uvicorn failed with
            self._http_error = str(exc) or repr(exc)
            log.error(
                "the HTTP API and the operator's screen are not served; the station scans on without them",
                error=self._http_error,
            )
            return
        self._http_started = True
        self._http_error = None

    def http_status(self) -> HttpStatus | None:
        if self.http is None:
            return None
        listening = list(self.http.addresses) if self._http_started else []
        return HttpStatus(listening=listening, error=self._http_error)

    def wait(self) -> None:
        while not self.stop_event.wait(0.5):
            pass

    def shutdown(self, flush_timeout_s: float = 10.0) -> None:
        """Ends with a retained state 'stopped', then 'offline': a subscriber sees a clean stop as one."""
        self.service.stopping()
        self._mode = "stopping"
        self.publish_state()
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.processing.close()
        if self.inspector is not None:
            self.inspector.close()  # inspections under way finish and queue their events
        if self.mqtt.connected.is_set() and not self.relay.drain(flush_timeout_s):
            log.warning(
                "events still queued at stop; they are sent at the next start", backlog=self.outbox.stats().backlog
            )
        self._mode = "stopped"
        self.publish_state()
        if self._http_started and self.http is not None:
            self.http.stop()  # after the last state, which the screens see; before the database closes
            self._http_started = False
        self.relay.stop()
        if self.webhooks is not None:
            self.webhooks.stop()
        self.mqtt.stop()
        self.panel.close()
        self.driver.close()
        self.store.close()
        self.db.close()
        log.info("station stopped", scans_stored=self.loop.scans_stored, scans_failed=self.loop.scans_failed)
