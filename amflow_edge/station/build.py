"""Building a station from its config: every part made once, in the order its users need it.

This is the station's data path in one place:

    trigger ─▶ CaptureLoop ─▶ driver.grab ─▶ ScanStore (atomic directory)
            ─▶ Events.scan_stored (scan row + outbox event, one transaction) ─▶ Relay ─▶ MQTT
    CaptureLoop ─▶ Station.after_scan ─▶ Inspector (worker process) ─▶ verdict
            ─▶ Events.update_scan (qc_* + scan.quality_control) ─▶ Relay ─▶ MQTT
    button / MQTT request / HTTP API ─▶ Decisions ─▶ Events.update_scan ─▶ Relay ─▶ MQTT
    identification / button / MQTT or HTTP request ─▶ Assignments ─▶ Events.update_scan (scan.assign …) ─▶ Relay ─▶ MQTT
                                                          └▶ Station.inspect (a manual change of design)

Constructors only keep what they are given; the few parts that call back into the station (the
panel's state changes, the capture loop's after-scan step, the request handlers) are connected
here, after the station exists.
"""

from __future__ import annotations

from amflow_edge.config.station import StationConfig
from amflow_edge.drivers.base import CameraDriver, DriverError
from amflow_edge.inspection.designs import Design, DesignLibrary
from amflow_edge.messaging.backlog import BacklogGuard
from amflow_edge.messaging.commands import CommandHandler
from amflow_edge.messaging.events import Events
from amflow_edge.messaging.mqtt import StationMqtt
from amflow_edge.messaging.outbox import Outbox
from amflow_edge.messaging.relay import Relay
from amflow_edge.messaging.webhooks import WebhookSenders
from amflow_edge.ops.watchdog import Heartbeat, Watchdog
from amflow_edge.panel.base import ButtonSource, Lamps
from amflow_edge.panel.factory import make_button_sources, make_lamps
from amflow_edge.panel.operator import OperatorPanel
from amflow_edge.qc.decisions import Decisions
from amflow_edge.qc.reasons import load_reasons
from amflow_edge.station.assignments import Assignments
from amflow_edge.station.calibration_drift import CalibrationDrift
from amflow_edge.station.capture import CaptureLoop
from amflow_edge.station.commands import StationCommands
from amflow_edge.station.design_processing import DesignProcessing
from amflow_edge.station.designs import DesignCatalogue
from amflow_edge.station.identification import Identifications
from amflow_edge.station.inspection_jobs import InspectionJobs
from amflow_edge.station.inspector import Inspector
from amflow_edge.station.material_looks import MaterialLooks
from amflow_edge.station.pause import PauseGuard, missing_references
from amflow_edge.station.scan_files import ScanFiles
from amflow_edge.station.service import SUPERVISOR_SILENT_S, StationService, mqtt_thread_check
from amflow_edge.station.session import SessionKeeper, batch_mesh_dir
from amflow_edge.station.station import Station
from amflow_edge.storage.backup import BackupMover
from amflow_edge.storage.db import DB_FILE, StationDb
from amflow_edge.storage.disk import DiskGuard, Retention
from amflow_edge.storage.store import ScanStore


class SessionDesigns:
    """What the mock places on the tray: the active session's designs (its batch), or the library without one."""

    def __init__(self, catalogue: DesignCatalogue, jobs: InspectionJobs) -> None:
        self._catalogue = catalogue
        self._jobs = jobs

    @property
    def designs(self) -> list[Design]:
        """A session whose meshes could not be loaded (the log says which) leaves the library to place."""
        return self._jobs.session_designs() or self._catalogue.library.designs

    def get(self, design_material: str) -> Design:
        return self._catalogue.current().get(design_material)


ASSIGNMENT_EVENTS = frozenset({"scan.assign", "scan.reassign", "scan.unassign", "scan.reject"})


def make_driver(cfg: StationConfig, library: DesignLibrary | SessionDesigns) -> CameraDriver:
    """The configured rig. Each driver is imported only when chosen: the mock's renderer and the pylon SDK are
    large, and a station runs one of them."""
    if cfg.rig.driver == "mock":
        from amflow_edge.drivers.mock import MockDriver

        return MockDriver(cfg.cameras, cfg.mock, library)
    if cfg.rig.driver == "replay":
        from amflow_edge.drivers.replay import ReplayDriver

        if cfg.replay is None:  # the config's validator says so; a config built in code may still lack it
            raise DriverError("rig.driver = 'replay' needs a [replay] section naming the recording (replay.source)")
        # The station's own directories: the recording must lie apart from where the replayed scans go.
        return ReplayDriver(cfg.cameras, cfg.replay, cfg.station.data_root, cfg.backup.path)
    from amflow_edge.drivers.gige_budget import APPLIED_STREAMS_FILE
    from amflow_edge.drivers.pylon import PylonDriver

    # What the driver applied at open, for `doctor` while the station holds the cameras.
    return PylonDriver(cfg.cameras, cfg.pylon, applied_streams_path=cfg.station.state_dir / APPLIED_STREAMS_FILE)


def _service(
    cfg: StationConfig,
    store: ScanStore,
    events: Events,
    outbox: Outbox,
    mqtt: StationMqtt,
    pause: PauseGuard,
    loop: CaptureLoop,
    capture_heartbeat: Heartbeat,
    panel: OperatorPanel,
    inspector: Inspector | None,
) -> StationService:
    """The station as a systemd service: its watchdog's checks, and backup and retention when configured."""
    supervisor_heartbeat = Heartbeat("supervisor", SUPERVISOR_SILENT_S)
    watchdog = Watchdog()
    watchdog.add_check("capture", capture_heartbeat)
    watchdog.add_check("supervisor", supervisor_heartbeat)
    watchdog.add_check("mqtt", mqtt_thread_check(mqtt))
    if inspector is not None:
        watchdog.add_check("inspection", inspector.health)
    files = ScanFiles(events, lambda: panel.view().latest_scan, inspector is not None, cfg.station.timezone)
    backup = retention = None
    if cfg.backup.path is not None:
        backup = BackupMover(
            store.scans_dir,
            cfg.backup.path,
            cfg.backup.after_s,
            files.done_with,
            files.mark_backed_up,
            hold=lambda _uuid: events.holding(),
        )
        if cfg.disk.retention_days is not None:
            retention = Retention(cfg.backup.path, cfg.disk.retention_days, backed_up=files.moved_here)
    return StationService(
        cfg,
        outbox=outbox,
        pause=pause,
        counts=loop,
        watchdog=watchdog,
        capture_heartbeat=capture_heartbeat,
        supervisor_heartbeat=supervisor_heartbeat,
        files=files,
        backup=backup,
        retention=retention,
    )


def build_station(
    cfg: StationConfig,
    driver: CameraDriver | None = None,
    buttons: list[ButtonSource] | None = None,
    lamps: Lamps | None = None,
) -> Station:
    """The station of `cfg`; `driver`, `buttons` and `lamps` replace the configured ones (tests, benchmarks)."""
    tz = cfg.station.timezone
    sessions = SessionKeeper(cfg)
    store = ScanStore.from_settings(cfg.station.data_root, cfg.capture)
    db = StationDb(cfg.station.state_dir / DB_FILE)
    outbox = Outbox(db)
    mqtt = StationMqtt(cfg)
    relay = Relay(db, mqtt, cfg.mqtt.max_in_flight, cfg.outbox.retention_s)
    # Late-bound like the station below: a target that parks or fails publishes the station's state.
    webhooks = WebhookSenders(cfg.webhooks, db, cfg.station.id, on_change=lambda: station.publish_state())

    def wake_sinks() -> None:
        relay.wake()
        webhooks.wake()

    events = Events(cfg, db, wake_sinks, mirror=store.update_record)
    library = DesignLibrary.load(cfg.designs.library)
    catalogue = DesignCatalogue(library, batch_mesh_dir(cfg))
    inspector = Inspector(events, tz, deadline_s=cfg.inspection.deadline_s) if cfg.inspection.enabled else None
    looks = MaterialLooks(cfg.identification, cfg.station.state_dir)
    events.listen(looks.scan_event)
    design_cache = cfg.designs.cache_dir or cfg.station.state_dir / "design_cache"
    processing = DesignProcessing(design_cache, on_progress=lambda: station.publish_state())
    drift = (
        CalibrationDrift(cfg.cameras, cfg.calibration.max_drift_px, cfg.station.state_dir)
        if inspector is not None and cfg.calibration.check_drift
        else None
    )
    jobs = InspectionJobs(
        store,
        catalogue,
        sessions,
        calibrations={c.name: c.calibration for c in cfg.cameras},
        profile=cfg.inspection.profile,
        cache_dir=design_cache,
        identify=cfg.identification.enabled,
        look_of=looks.look,
        unusable=processing.failed,
        refusal=drift.refusal if drift is not None else lambda _: None,
    )
    driver = driver if driver is not None else make_driver(cfg, SessionDesigns(catalogue, jobs))
    reasons = load_reasons(cfg.qc.reasons)
    decisions = Decisions(events, reasons, tz)
    assignments = Assignments(
        events,
        db,
        sessions,
        tz,
        # Late-bound: the station is built below, and a manual change of design is inspected like a capture.
        design_changed=lambda record: station.inspect(record),
        manual_over_count=cfg.assignment.manual_over_count,
    )
    panel = OperatorPanel(
        decisions,
        lamps if lamps is not None else make_lamps(cfg.qc.lamps),
        cfg.qc.policy,
        cfg.qc.lockout_s,
        inspects=inspector is not None,
        assignments=assignments if cfg.assignment.button_confirms_identification else None,
    )
    identifications = Identifications(events, tz, assign=assignments.identified, rejected=assignments.is_rejected)
    # Before the panel's: the state the panel publishes must no longer list a scan that was just assigned as awaiting.
    events.listen(identifications.scan_event)
    events.listen(panel.scan_event)
    if inspector is not None:
        inspector.on_identified = identifications.apply
    pause = PauseGuard(
        BacklogGuard(outbox, cfg.outbox),
        DiskGuard(cfg.station.data_root, cfg.disk.min_free_bytes, cfg.disk.resume_free_bytes),
        missing_references(store, sessions) if inspector is not None else lambda: None,
    )
    capture_heartbeat = Heartbeat("capture loop", cfg.watchdog.capture_silent_s)
    loop = CaptureLoop(
        cfg, driver, store, announcer=events, sessions=sessions, pause=pause, heartbeat=capture_heartbeat
    )
    service = _service(cfg, store, events, outbox, mqtt, pause, loop, capture_heartbeat, panel, inspector)
    station = Station(
        cfg=cfg,
        sessions=sessions,
        store=store,
        db=db,
        outbox=outbox,
        mqtt=mqtt,
        relay=relay,
        events=events,
        catalogue=catalogue,
        driver=driver,
        inspector=inspector,
        jobs=jobs,
        decisions=decisions,
        panel=panel,
        buttons=buttons if buttons is not None else make_button_sources(cfg.qc.buttons),
        pause=pause,
        loop=loop,
        service=service,
        processing=processing,
        identifications=identifications,
        over_counted=assignments.over_counted,
        copies_assigned=assignments.copies_assigned,
        drift=drift,
        webhooks=webhooks if webhooks.senders else None,
    )
    panel.listen(station.publish_state)
    # The panel publishes when the scan on the tray changes; an assignment of an earlier scan changes the batch's
    # counts and the awaiting list all the same.
    events.listen(lambda event, _record: station.publish_state() if event in ASSIGNMENT_EVENTS else None)
    loop.listen(station.after_scan)
    commands = StationCommands(
        assignments=assignments,
        loop=loop,
        catalogue=catalogue,
        decisions=decisions,
        events=events,
        inspector=inspector,
        jobs=jobs,
        sessions=sessions,
        switch_session=station.switch_session,
        outbox=outbox,
        wake_relay=relay.wake,
    )
    mqtt.set_request_handler(CommandHandler(commands.handlers(), mqtt.respond))
    mqtt.on_connected = station.publish_state
    if cfg.http.enabled:
        from amflow_edge.web.setup import http_server  # FastAPI and uvicorn load only for a station that serves

        station.http, broadcaster = http_server(
            cfg,
            events=events,
            store=store,
            db=db,
            sessions=sessions,
            reasons=reasons,
            handlers=commands.handlers(source="http"),
            state=station.state,
            copies_assigned=assignments.copies_assigned,
            capturing=loop.capturing.is_set,
        )
        station.listen_state(broadcaster.state)
        station.service.watchdog.add_check("http", station.http.heartbeat)
    return station
