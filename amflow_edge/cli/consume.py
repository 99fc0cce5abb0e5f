"""`amflow-edge consume`: the reference plant consumer (amflow_edge.plant), events into PostgreSQL.

Runs on a plant server. The database driver is the `plant` extra, loaded only when this command runs, so a
station never needs it.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import structlog

from amflow_edge.cli.common import EXIT_CONFIG, EXIT_FAILED, EXIT_OK
from amflow_edge.plant.schema import Tables, schema_text
from amflow_edge.plant.settings import PlantConsumerSettings, SettingsError, load_settings

log = structlog.get_logger(__name__)

_BROKER = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]+))(?::(?P<port>\d{1,5}))?$")


def parse_broker(text: str) -> tuple[str, int | None] | None:
    """HOST, HOST:PORT or [IPv6]:PORT."""
    match = _BROKER.fullmatch(text.strip())
    if match is None:
        return None
    port = match.group("port")
    return match.group("v6") or match.group("host"), int(port) if port else None


def _overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]] | str:
    broker: dict[str, Any] = {}
    if args.broker is not None:
        parsed = parse_broker(args.broker)
        if parsed is None:
            return f"--broker {args.broker!r}: expected HOST:PORT (broker.example:1883, [::1]:1883) or HOST"
        broker["host"] = parsed[0]
        if parsed[1] is not None:
            broker["port"] = parsed[1]
    subscription = {
        key: value
        for key, value in (
            ("group", args.group),
            ("client_id", args.client_id),
            ("topic_prefix", args.prefix),
            ("stations", args.stations),
        )
        if value is not None
    }
    postgres = {
        key: value for key, value in (("dsn", args.dsn), ("table_prefix", args.table_prefix)) if value is not None
    }
    return {"broker": broker, "subscription": subscription, "postgres": postgres}


def _settings(args: argparse.Namespace) -> PlantConsumerSettings | None:
    overrides = _overrides(args)
    if isinstance(overrides, str):
        print(overrides, file=sys.stderr)
        return None
    try:
        return load_settings(args.config, overrides)
    except SettingsError as exc:
        print("the consumer's settings are not usable:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def cmd_consume(args: argparse.Namespace) -> int:
    if args.print_schema:
        try:
            print(schema_text(Tables.named(args.table_prefix or "amflow")), end="")
        except ValueError as exc:
            print(f"--table-prefix: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        return EXIT_OK
    settings = _settings(args)
    if settings is None:
        return EXIT_CONFIG
    try:
        from amflow_edge.plant.consumer import Consumer, ConsumerStartError
        from amflow_edge.plant.scan_table import dsn_problem
    except ImportError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_CONFIG
    problem = dsn_problem(settings.postgres.dsn.get_secret_value())
    if problem is not None:
        print(f"postgres.dsn (--dsn): {problem}", file=sys.stderr)
        return EXIT_CONFIG

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        consumer = Consumer(settings)
        consumer.start(stop)
    except ConsumerStartError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG if exc.config else EXIT_FAILED
    try:
        consumer.run(stop)
    finally:
        consumer.close()
        log.info("consumer stopped", client_id=settings.subscription.client_id, **dict(consumer.counts))
    return EXIT_OK


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    consume = subparsers.add_parser(
        "consume",
        help="the reference plant consumer: scan events from MQTT into PostgreSQL (needs the 'plant' extra)",
        description="Subscribe as one member of a shared-subscription group and store every scan event in "
        "PostgreSQL: an event log keyed by event_id and each scan's latest state. Options override --config.",
    )
    consume.add_argument("--config", type=Path, help="consumer TOML (see config/plant_consumer.example.toml)")
    consume.add_argument("--broker", help="HOST:PORT of the plant broker (default 127.0.0.1:1883)")
    consume.add_argument("--dsn", help="PostgreSQL connection string, e.g. postgresql://amflow@db.plant/amflow")
    consume.add_argument("--group", help="shared-subscription group: the consumers of one group split the events")
    consume.add_argument("--client-id", help="MQTT client id, stable for this consumer process and unique")
    consume.add_argument("--prefix", help="the stations' topic prefix (default amflow)")
    consume.add_argument("--stations", help="+ for every station (default), or one station id")
    consume.add_argument("--print-schema", action="store_true", help="print the tables' DDL and exit")
    consume.add_argument("--table-prefix", help="the tables are <prefix>_scans, … (default amflow)")
    consume.set_defaults(func=cmd_consume)
