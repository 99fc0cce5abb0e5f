"""Building a station from its config: every part made once, in the order its users need it.

This is the station's data path in one place:

    trigger ─▶ CaptureLoop ─▶ driver.grab ─▶ ScanStore (atomic directory)
            ─▶ Events.scan_stored (scan row + outbox event, one transaction) ─▶ Relay ─▶ MQTT
    CaptureLoop ─▶ Station.after_scan ─▶ Inspector (worker process) ─▶ verdict
            ─▶ Events.update_scan (qc_* + scan.quality_control) ─▶ Relay ─▶ MQTT
    button / MQTT request ─▶ Decisions ─▶ Events.update_scan ─▶ Relay ─▶ MQTT

Constructors only keep what they are given; the few parts that call back into the station (the
panel's state changes, the capture loop's after-scan step, the request handlers) are connected
here, after the station exists.
"""

from __future__ import annotations

from amflow_edge.config.station import StationConfig
from amflow_edge.drivers.base import CameraDriver
from amflow_edge.inspection.designs import DesignLibrary
from amflow_edge.messaging.backlog import BacklogGuard
from amflow_edge.messaging.commands import CommandHandler
from amflow_edge.messaging.events import Events
from amflow_edge.messaging.mqtt import StationMqtt
from amflow_edge.messaging.outbox import Outbox
from amflow_edge.messaging.relay import Relay
from amflow_edge.ops.watchdog import Heartbeat, Watchdog
from amflow_edge.panel.base import ButtonSource, Lamps
from amflow_edge.panel.factory import make_button_sources, make_lamps
from amflow_edge.panel.operator import OperatorPanel
from amflow_edge.qc.decisions import Decisions
from amflow_edge.qc.reasons import load_reasons
from amflow_edge.station.capture import CaptureLoop
from amflow_edge.station.commands import StationCommands
from amflow_edge.station.designs import DesignCatalogue
from amflow_edge.station.inspection_jobs import InspectionJobs
from amflow_edge.station.inspector import Inspector
from amflow_edge.station.pause import PauseGuard, missing_references
from amflow_edge.station.scan_files import ScanFiles
from amflow_edge.station.service import SUPERVISOR_SILENT_S, StationService, mqtt_thread_check
from amflow_edge.station.session import SessionKeeper, batch_mesh_dir
from amflow_edge.station.station import Station
from amflow_edge.storage.backup import BackupMover
from amflow_edge.storage.db import DB_FILE, StationDb
from amflow_edge.storage.disk import DiskGuard, Retention
from amflow_edge.storage.store import ScanStore


def make_driver(cfg: StationConfig, library: DesignLibrary) -> CameraDriver:
    """The configured rig. Each driver is imported only when chosen: the mock's renderer and the pylon SDK are
    large, and a station runs one of them."""
    if cfg.rig.driver == "mock":
        from amflow_edge.drivers.mock import MockDriver

        return MockDriver(cfg.cameras, cfg.mock, library)
    from amflow_edge.drivers.pylon import PylonDriver

    return PylonDriver(cfg.cameras, cfg.pylon)


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
    events = Events(cfg, db, relay.wake, mirror=store.update_record)
    library = DesignLibrary.load(cfg.designs.library)
    catalogue = DesignCatalogue(library, batch_mesh_dir(cfg))
    driver = driver if driver is not None else make_driver(cfg, library)
    inspector = Inspector(events, tz, deadline_s=cfg.inspection.deadline_s) if cfg.inspection.enabled else None
    jobs = InspectionJobs(
        store,
        catalogue,
        sessions,
        calibrations={c.name: c.calibration for c in cfg.cameras},
        profile=cfg.inspection.profile,
        cache_dir=cfg.station.state_dir / "design_cache",
    )
    decisions = Decisions(events, load_reasons(cfg.qc.reasons), tz)
    panel = OperatorPanel(
        decisions,
        lamps if lamps is not None else make_lamps(cfg.qc.lamps),
        cfg.qc.policy,
        cfg.qc.lockout_s,
        inspects=inspector is not None,
    )
    events.listen(panel.scan_event)
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
    )
    panel.listen(station.publish_state)
    loop.listen(station.after_scan)
    commands = StationCommands(
        loop=loop,
        catalogue=catalogue,
        decisions=decisions,
        events=events,
        inspector=inspector,
        jobs=jobs,
        sessions=sessions,
        switch_session=station.switch_session,
    )
    mqtt.set_request_handler(CommandHandler(commands.handlers(), mqtt.respond))
    mqtt.on_connected = station.publish_state
    return station
