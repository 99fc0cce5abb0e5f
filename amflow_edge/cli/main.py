"""The `amflow-edge` command: the daemon and the tools integrators use around it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from amflow_edge import __version__
from amflow_edge.cli import (
    calibrate,
    cameras,
    commission,
    consume,
    doctor,
    identify,
    inspect,
    openapi,
    outbox,
    render,
    station,
)
from amflow_edge.messaging.asyncapi import dump_asyncapi
from amflow_edge.messaging.payload import Envelope
from amflow_edge.ops.log import configure_logging


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(Envelope.model_json_schema(), indent=2))
    return 0


def cmd_asyncapi(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_asyncapi())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="amflow-edge", description="Edge daemon of an AM part-scanning station.")
    parser.add_argument("--version", action="version", version=f"amflow-edge {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument(
        "--log-json",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="JSON log lines (default: when stderr is not a terminal)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    station.add_parsers(sub)
    cameras.add_parser(sub)
    doctor.add_parser(sub)
    render.add_parser(sub)
    inspect.add_parser(sub)
    identify.add_parser(sub)
    calibrate.add_parser(sub)
    commission.add_parser(sub)
    outbox.add_parser(sub)
    openapi.add_parser(sub)
    consume.add_parser(sub)

    schema = sub.add_parser("schema", help="print the JSON Schema of the published event envelope")
    schema.set_defaults(func=cmd_schema)

    asyncapi = sub.add_parser("asyncapi", help="print the AsyncAPI 3.0 document of the station's MQTT API")
    asyncapi.set_defaults(func=cmd_asyncapi)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_json)
    return int(args.func(args))
