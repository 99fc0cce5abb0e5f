"""`amflow-edge doctor`: the station's checks as one table, with the driver's own camera check plugged in."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from amflow_edge.ops.camera_inventory import camera_check
from amflow_edge.ops.doctor import exit_code, render_table, run_checks_for_file


def cmd_doctor(args: argparse.Namespace) -> int:
    results = run_checks_for_file(args.config, camera_check=camera_check)
    if args.json:
        print(json.dumps([r.model_dump() for r in results], indent=2))
    else:
        print(render_table(results))
    return exit_code(results)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    doctor = sub.add_parser("doctor", help="check config, cameras, calibration, designs, broker, outbox, disk, clock")
    doctor.add_argument("--config", type=Path, required=True, help="station TOML")
    doctor.add_argument("--json", action="store_true", help="print the checks as JSON")
    doctor.set_defaults(func=cmd_doctor)
