"""The `amflow-edge` command: the daemon and the tools integrators use around it."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

import structlog

from amflow_edge import __version__
from amflow_edge.config import ConfigError, StationConfig, load_config
from amflow_edge.log import configure_logging

EXIT_CONFIG = 2
EXIT_FAILED = 1

log = structlog.get_logger(__name__)


def _load(path: Path) -> StationConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    print(f"{args.config}: OK (station {cfg.station.id}, driver {cfg.rig.driver}, data root {cfg.station.data_root})")
    return 0


def cmd_schema(args: argparse.Namespace) -> int:
    from amflow_edge.payload import Envelope

    print(json.dumps(Envelope.model_json_schema(), indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from amflow_edge.daemon import RunOptions, Station
    from drivers.base import DriverError

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    if args.interval is not None:
        cfg = cfg.model_copy(update={"capture": cfg.capture.model_copy(update={"timer_interval_s": args.interval})})
    try:
        station = Station(cfg)
    except DriverError as exc:
        log.error("cannot start the camera driver", error=str(exc))
        return EXIT_FAILED

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stop requested", signal=signal.Signals(signum).name)
        station.stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        station.start(RunOptions(max_scans=args.scans))
        station.wait()
    except DriverError as exc:
        log.error("camera problem; the station cannot run", error=str(exc))
        return EXIT_FAILED
    finally:
        station.shutdown()
    return 0


def cmd_capture(args: argparse.Namespace) -> int:
    """One scan without the daemon, for commissioning a station (the daemon must not hold the cameras)."""
    from amflow_edge.capture import Trigger
    from amflow_edge.daemon import Station
    from drivers.base import DriverError

    cfg = _load(args.config)
    if cfg is None:
        return EXIT_CONFIG
    try:
        station = Station(cfg)
    except DriverError as exc:
        log.error("cannot start the camera driver", error=str(exc))
        return EXIT_FAILED
    try:
        station.store.prepare()
        station.driver.open()
        station.mqtt.start()
        result = station.loop.capture(Trigger(source="cli", design_material=args.design_material))
    except DriverError as exc:
        log.error("camera problem", error=str(exc))
        return EXIT_FAILED
    finally:
        station.shutdown(flush_timeout_s=args.flush_timeout)
    if not result.ok:
        return EXIT_FAILED
    print(station.store.scan_dir(result.uuid or ""))
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

    schema = sub.add_parser("schema", help="print the JSON Schema of the published event envelope")
    schema.set_defaults(func=cmd_schema)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_json)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
