"""`amflow-edge openapi`: the OpenAPI document of the station's HTTP API (docs/openapi.json is this output)."""

from __future__ import annotations

import argparse
import json
import sys


def dump_openapi() -> str:
    """From the routes and models the station serves with, so the document cannot drift from the API."""
    from amflow_edge.web.app import create_app  # FastAPI loads only for this command

    return json.dumps(create_app(None).openapi(), indent=2, ensure_ascii=False) + "\n"


def cmd_openapi(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_openapi())
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("openapi", help="print the OpenAPI document of the station's HTTP API")
    parser.set_defaults(func=cmd_openapi)
