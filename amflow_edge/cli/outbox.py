"""`amflow-edge outbox …`: see and replay what the station owes its subscribers, with or without the daemon."""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from amflow_edge.cli.common import EXIT_CONFIG, load_or_report
from amflow_edge.messaging.outbox import Outbox
from amflow_edge.storage.db import DB_FILE, StationDb


@contextmanager
def _outbox(config: Path) -> Iterator[Outbox | None]:
    cfg = load_or_report(config)
    if cfg is None:
        yield None
        return
    db = StationDb(cfg.station.state_dir / DB_FILE)
    try:
        yield Outbox(db)
    finally:
        db.close()


def parse_since(text: str) -> float | None:
    """A moment as Unix time: ISO 8601 with an offset, or a duration back from now (90s, 30m, 12h, 2d)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if match:
        return time.time() - float(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment.timestamp() if moment.tzinfo is not None else None


def cmd_status(args: argparse.Namespace) -> int:
    with _outbox(args.config) as outbox:
        if outbox is None:
            return EXIT_CONFIG
        print(outbox.stats().model_dump_json(indent=2))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    since = parse_since(args.since)
    if since is None:
        print(
            f"--since {args.since!r}: expected an ISO 8601 time (2026-03-11T16:00:00+01:00) "
            "or a duration back from now (90s, 30m, 12h, 2d)",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    with _outbox(args.config) as outbox:
        if outbox is None:
            return EXIT_CONFIG
        count = outbox.replay(since)
    print(f"{count} event(s) queued to be sent again; a running station sends them now, a stopped one at start")
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    outbox = subparsers.add_parser("outbox", help="inspect and replay the event outbox")
    commands = outbox.add_subparsers(dest="outbox_command", required=True)
    status = commands.add_parser("status", help="backlog, oldest unsent event, acknowledged events kept")
    status.add_argument("--config", type=Path, required=True, help="station TOML")
    status.set_defaults(func=cmd_status)
    replay = commands.add_parser("replay", help="send again the events created since a moment")
    replay.add_argument("--config", type=Path, required=True, help="station TOML")
    replay.add_argument("--since", required=True, help="ISO 8601 time with offset, or a duration such as 2h or 3d")
    replay.set_defaults(func=cmd_replay)
