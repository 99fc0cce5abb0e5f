"""The `amflow-edge` command: the daemon and the tools integrators use around it."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import structlog

from amflow_edge import __version__
from amflow_edge.config import ConfigError, StationConfig, load_config
from amflow_edge.log import configure_logging

if TYPE_CHECKING:
    from amflow_edge.daemon import Station

EXIT_CONFIG = 2
EXIT_FAILED = 1

log = structlog.get_logger(__name__)


def load_or_report(path: Path) -> StationConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = load_or_report(args.config)
    if cfg is None:
        return EXIT_CONFIG
    print(f"{args.config}: OK (station {cfg.station.id}, driver {cfg.rig.driver}, data root {cfg.station.data_root})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from amflow_edge.payload import Envelope

    print(json.dumps(Envelope.model_json_schema(), indent=2))
    return 0


def _startup_errors() -> tuple[type[Exception], ...]:
    from amflow_edge.db import DatabaseError
    from amflow_edge.mqtt import MqttSetupError
    from amflow_edge.panel.errors import PanelConfigError
    from amflow_edge.qc_reasons import ReasonCatalogueError
    from amflow_edge.store import StoreError
    from drivers.base import DriverError
    from inspection.designs import DesignError

    return (DriverError, DatabaseError, MqttSetupError, StoreError, DesignError, PanelConfigError, ReasonCatalogueError)


def _station(cfg: StationConfig) -> Station | None:
    from amflow_edge.daemon import Station

    try:
        return Station(cfg)
    except _startup_errors() as exc:
        log.error("the station cannot start", error=str(exc))
        return None


def cmd_run(args: argparse.Namespace) -> int:
    from amflow_edge.daemon import RunOptions

    cfg = load_or_report(args.config)
    if cfg is None:
        return EXIT_CONFIG
    if args.interval is not None:
        cfg = cfg.model_copy(update={"capture": cfg.capture.model_copy(update={"timer_interval_s": args.interval})})
    station = _station(cfg)
    if station is None:
        return EXIT_FAILED

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        station.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        station.start(RunOptions(max_scans=args.scans))
        station.wait()
    except _startup_errors() as exc:
        log.error("the station cannot run", error=str(exc))
        return EXIT_FAILED
    finally:
        station.shutdown()
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    """One scan without the daemon, for commissioning a station (the daemon must not hold the cameras)."""
    import threading

    from amflow_edge.capture import CaptureResult, Trigger
    from amflow_edge.daemon import RunOptions

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
        station.start(RunOptions(timer=False))
        station.loop.submit(Trigger(source="cli", design_material=args.design_material, done=done))
        finished.wait()
        station.mqtt.connected.wait(args.flush_timeout)
    except _startup_errors() as exc:
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
    from amflow_edge.inspector import run_job
    from inspection.inspect import InspectionInputError
    from inspection.profiles import ProfileError, load_profile

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
            job = station.inspection_job(record, profile=args.profile)
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
    print("scan.quality_control queued: a running station sends it within a second, a stopped one at start",
          file=sys.stderr)
    return 0


def cmd_asyncapi(args: argparse.Namespace) -> int:
    from amflow_edge.asyncapi import dump_asyncapi

    sys.stdout.write(dump_asyncapi())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amflow-edge", description="Edge daemon of an AM part-scanning station.")
    parser.add_argument("--version", action="version", version=f"amflow-edge {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--log-json", action=argparse.BooleanOptionalAction, default=None,
                        help="JSON log lines (default: when stderr is not a terminal)")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the station daemon")
    run.add_argument("--config", type=Path, required=True, help="station TOML")
    run.add_argument("--scans", type=int, default=None, help="stop after this many stored scans (demos, tests)")
    run.add_argument("--interval", type=float, default=None, help="capture every N seconds (overrides the config)")
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

    from amflow_edge import cli_cameras, cli_doctor, cli_inspect, cli_outbox, cli_render

    cli_cameras.add_parser(sub)
    cli_doctor.add_parser(sub)
    cli_render.add_parser(sub)
    cli_inspect.add_parser(sub)
    cli_outbox.add_parser(sub)

    schema = sub.add_parser("schema", help="print the JSON Schema of the published event envelope")
    schema.set_defaults(func=cmd_schema)

    asyncapi = sub.add_parser("asyncapi", help="print the AsyncAPI 3.0 document of the station's MQTT API")
    asyncapi.set_defaults(func=cmd_asyncapi)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_json)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
