"""`amflow-edge run | capture | check-config | reevaluate`: the station itself, from its config file.

The station and the inspection are imported by the commands that run them, so `--help` and
`check-config` start without loading the geometry libraries.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import structlog

from amflow_edge.cli.common import EXIT_BAD_INPUT, EXIT_CONFIG, EXIT_FAILED, load_or_report
from amflow_edge.config.batch_file import BatchFileError, load_batch_file
from amflow_edge.config.station import StationConfig
from amflow_edge.drivers.base import DriverError
from amflow_edge.inspection.designs import DesignError
from amflow_edge.inspection.profiles import ProfileError, load_profile
from amflow_edge.messaging.mqtt import MqttSetupError
from amflow_edge.panel.errors import PanelConfigError
from amflow_edge.qc.reasons import ReasonCatalogueError
from amflow_edge.station.designs import BatchDesignError
from amflow_edge.storage.db import DatabaseError
from amflow_edge.storage.store import StoreError
from amflow_edge.web.bind import HttpServerError

if TYPE_CHECKING:
    from amflow_edge.station.station import Station

log = structlog.get_logger(__name__)

STARTUP_ERRORS = (
    DriverError,
    DatabaseError,
    MqttSetupError,
    StoreError,
    DesignError,
    PanelConfigError,
    ReasonCatalogueError,
    HttpServerError,
)
"""What a station can fail with while it starts: reported in one line, exit 1, and systemd tries again."""


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_or_report(args.config)
    if cfg is None:
        return EXIT_CONFIG
    print(f"{args.config}: OK (station {cfg.station.id}, driver {cfg.rig.driver}, data root {cfg.station.data_root})")
    return 0


def _station(cfg: StationConfig) -> Station | None:
    from amflow_edge.station.build import build_station

    try:
        return build_station(cfg)
    except STARTUP_ERRORS as exc:
        log.error("the station cannot start", error=str(exc))
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from amflow_edge.station.station import RunOptions

    cfg = load_or_report(args.config)
    if cfg is None:
        return EXIT_CONFIG
    if args.interval is not None:
        cfg = cfg.model_copy(update={"capture": cfg.capture.model_copy(update={"timer_interval_s": args.interval})})
    station = _station(cfg)
    if station is None:
        return EXIT_FAILED
    if args.batch is not None:
        try:
            use_batch_file(station, args.batch)
        except (BatchFileError, BatchDesignError) as exc:
            log.error("the batch file cannot be used", error=str(exc))
            station.db.close()
            return EXIT_BAD_INPUT

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        station.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        station.start(RunOptions(max_scans=args.scans))
        station.wait()
    except STARTUP_ERRORS as exc:
        log.error("the station cannot run", error=str(exc))
        return EXIT_FAILED
    finally:
        station.shutdown()
    return 0


def use_batch_file(station: Station, path: Path) -> None:
    """The station scans this batch: a new session with its parts, or the running one when it is the same batch
    from the same file (a restart must keep the copies already counted)."""
    batch = load_batch_file(path)
    folder = path.resolve().parent
    current = station.sessions.current
    same = (
        current.requested
        and current.batch == batch.batch
        and current.mesh_folder == folder
        and [p.model_dump() for p in batch.parts] == [p.model_dump(exclude={"assignment"}) for p in current.parts]
    )
    if same:
        log.info("resuming the batch file's session", batch=batch.batch.id, scan_session=current.scan_session)
        return
    station.catalogue.resolve([], batch.parts, folder)  # every mesh checked before anything changes
    session = station.sessions.new(batch.batch, [], None, parts=batch.parts, mesh_folder=folder)
    station.sessions.replace(session)
    log.info("scanning session started from a batch file", batch=batch.batch.id, parts=len(batch.parts), file=str(path))


def cmd_capture(args: argparse.Namespace) -> int:
    """One scan without the daemon, for commissioning a station (the daemon must not hold the cameras)."""
    from amflow_edge.station.capture import CaptureResult, Trigger
    from amflow_edge.station.station import RunOptions

    cfg = load_or_report(args.config)
    if cfg is None:
        return EXIT_CONFIG
    station = _station(cfg)
    if station is None:
        return EXIT_FAILED
    finished = threading.Event()
    results: list[CaptureResult] = []

    def done(result: CaptureResult) -> None:
        results.append(result)
        finished.set()

    try:
        station.start(RunOptions(timer=False, http=False))
        station.loop.submit(Trigger(source="cli", design_material=args.design_material, done=done))
        finished.wait()
        station.mqtt.connected.wait(args.flush_timeout)
    except STARTUP_ERRORS as exc:
        log.error("the station cannot run", error=str(exc))
        return EXIT_FAILED
    finally:
        station.shutdown(flush_timeout_s=args.flush_timeout)
    if not results or not results[0].ok:
        return EXIT_FAILED
    print(station.store.scan_dir(results[0].uuid or ""))
    return 0


def cmd_reevaluate(args: argparse.Namespace) -> int:
    """A new verdict from the stored images with another profile; the operator's decision, if any, stands."""
    from amflow_edge.inspection.inspect import InspectionInputError
    from amflow_edge.station.inspector import run_job

    cfg = load_or_report(args.config)
    if cfg is None:
        return EXIT_CONFIG
    try:
        load_profile(args.profile)
    except ProfileError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    station = _station(cfg.model_copy(update={"inspection": cfg.inspection.model_copy(update={"enabled": True})}))
    if station is None or station.inspector is None:
        return EXIT_FAILED
    try:
        record = station.events.record(args.scan)
        if record is None:
            print(f"scan {args.scan!r} is not known to this station (see {station.store.scans_dir})", file=sys.stderr)
            return EXIT_FAILED
        try:
            job = station.jobs.for_scan(record, profile=args.profile)
        except LookupError as exc:
            print(f"scan {args.scan} cannot be inspected: {exc}", file=sys.stderr)
            return EXIT_FAILED
        try:
            updated = station.inspector.apply(args.scan, run_job(job.model_dump_json()))
        except (InspectionInputError, ValueError) as exc:
            print(f"inspection failed: {exc}", file=sys.stderr)
            return EXIT_FAILED
    finally:
        station.inspector.close()
        station.db.close()
    print(updated.scan.model_dump_json(indent=2))
    print(
        "scan.quality_control queued: a running station sends it within a second, a stopped one at start",
        file=sys.stderr,
    )
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    run = sub.add_parser("run", help="run the station daemon")
    run.add_argument("--config", type=Path, required=True, help="station TOML")
    run.add_argument("--scans", type=int, default=None, help="stop after this many stored scans (demos, tests)")
    run.add_argument("--interval", type=float, default=None, help="capture every N seconds (overrides the config)")
    run.add_argument(
        "--batch",
        type=Path,
        default=None,
        metavar="FILE",
        help="scan this batch (JSON or TOML batch file, mesh paths relative to it): its parts are identified and assigned",
    )
    run.set_defaults(func=cmd_run)

    capture = sub.add_parser("capture", help="take one scan now, without the daemon, and publish scan.capture")
    capture.add_argument("--config", type=Path, required=True, help="station TOML")
    capture.add_argument("--design-material", default=None, help="the design_material expected on the tray")
    capture.add_argument("--flush-timeout", type=float, default=10.0, help="seconds to wait for the broker's PUBACK")
    capture.set_defaults(func=cmd_capture)

    check = sub.add_parser("check-config", help="validate a station TOML and list every problem")
    check.add_argument("config", type=Path)
    check.set_defaults(func=cmd_check_config)

    reevaluate = sub.add_parser("reevaluate", help="inspect a stored scan again with another profile")
    reevaluate.add_argument("scan", help="scan uuid")
    reevaluate.add_argument("--config", type=Path, required=True, help="station TOML")
    reevaluate.add_argument("--profile", required=True, help="inspection profile name or .toml path")
    reevaluate.set_defaults(func=cmd_reevaluate)
