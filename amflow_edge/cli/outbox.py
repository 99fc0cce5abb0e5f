"""`amflow-edge outbox …`: see and replay what the station owes its subscribers, with or without the daemon."""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.cli.common import EXIT_CONFIG, load_or_report
from amflow_edge.config.webhooks import WebhookTarget
from amflow_edge.messaging.outbox import Outbox, OutboxStats
from amflow_edge.messaging.webhook_ledger import WebhookLedger, WebhookStatus
from amflow_edge.storage.db import DB_FILE, StationDb


@dataclass(frozen=True)
class _Opened:
    outbox: Outbox
    ledger: WebhookLedger
    targets: list[WebhookTarget]


class OutboxReport(BaseModel):
    """What `outbox status` prints: the MQTT sink's backlog and each webhook target's."""

    model_config = ConfigDict(extra="forbid")

    mqtt: OutboxStats = Field(description="Events not yet acknowledged by the broker.")
    webhooks: list[WebhookStatus] = Field(description="Each configured webhook target.")


@contextmanager
def _outbox(config: Path) -> Iterator[_Opened | None]:
    cfg = load_or_report(config)
    if cfg is None:
        yield None
        return
    db = StationDb(cfg.station.state_dir / DB_FILE)
    try:
        # Never registers targets: only the daemon knows its credentials, and so their fingerprints.
        yield _Opened(Outbox(db), WebhookLedger(db), cfg.webhooks)
    finally:
        db.close()


def _target(opened: _Opened, hook_id: int | None) -> WebhookTarget | None:
    """The configured target of --target, or None after saying which ones there are."""
    for target in opened.targets:
        if target.hook_id == hook_id:
            if not opened.ledger.registered(target.hook_id):
                print(
                    f"webhook {hook_id} is not registered yet: the station registers it at its next start, "
                    "from the outbox's end",
                    file=sys.stderr,
                )
                return None
            return target
    known = ", ".join(str(t.hook_id) for t in opened.targets) or "none are configured"
    print(f"--target {hook_id}: no [[webhooks]] target has that hook_id ({known})", file=sys.stderr)
    return None


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
    with _outbox(args.config) as opened:
        if opened is None:
            return EXIT_CONFIG
        targets = opened.targets
        if args.target is not None:
            target = _target(opened, args.target)
            if target is None:
                return EXIT_CONFIG
            targets = [target]
        statuses = [opened.ledger.status(t.hook_id, t.events) for t in targets]
        report = OutboxReport(mqtt=opened.outbox.stats(), webhooks=[s for s in statuses if s is not None])
        print(report.model_dump_json(indent=2))
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    since = None
    if args.since is not None:
        since = parse_since(args.since)
        if since is None:
            print(
                f"--since {args.since!r}: expected an ISO 8601 time (2026-03-11T16:00:00+01:00) "
                "or a duration back from now (90s, 30m, 12h, 2d)",
                file=sys.stderr,
            )
            return EXIT_CONFIG
    elif not args.dead_letters:
        print("say what to send again: --since TIME, or --dead-letters with --target", file=sys.stderr)
        return EXIT_CONFIG
    if args.dead_letters and args.target is None:
        print("--dead-letters belongs to one webhook target: add --target HOOK_ID", file=sys.stderr)
        return EXIT_CONFIG
    with _outbox(args.config) as opened:
        if opened is None:
            return EXIT_CONFIG
        if args.target is None:
            assert since is not None
            count = opened.outbox.replay(since)
            print(
                f"{count} event(s) queued to be sent again over MQTT; a running station sends them now, "
                "a stopped one at start"
            )
            return 0
        target = _target(opened, args.target)
        if target is None:
            return EXIT_CONFIG
        count = opened.ledger.requeue_dead_letters(target.hook_id) if args.dead_letters else 0
        if since is not None:
            count += opened.ledger.replay(target.hook_id, since, target.events)
    print(
        f"{count} event(s) queued to be posted again to webhook {target.hook_id} ({target.display_url}); "
        "a running station posts them within seconds, a stopped one at start"
    )
    return 0


@contextmanager
def _one_target(args: argparse.Namespace) -> Iterator[tuple[_Opened, WebhookTarget] | None]:
    """The outbox and the target of --target, or None once the problem is told."""
    with _outbox(args.config) as opened:
        target = _target(opened, args.target) if opened is not None else None
        yield (opened, target) if opened is not None and target is not None else None


def cmd_dead_letters(args: argparse.Namespace) -> int:
    with _one_target(args) as found:
        if found is None:
            return EXIT_CONFIG
        opened, target = found
        letters = opened.ledger.dead_letters(target.hook_id)
    print(json.dumps([letter.model_dump() for letter in letters], indent=2))
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    with _one_target(args) as found:
        if found is None:
            return EXIT_CONFIG
        opened, target = found
        if not opened.ledger.resume(target.hook_id):
            print(f"webhook {target.hook_id} ({target.display_url}) is not parked; nothing to do")
            return 0
    print(
        f"webhook {target.hook_id} ({target.display_url}) resumed: a running station retries it within seconds, "
        "from the event it refused"
    )
    return 0


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    outbox = subparsers.add_parser("outbox", help="inspect and replay the event outbox (MQTT and webhook targets)")
    commands = outbox.add_subparsers(dest="outbox_command", required=True)
    status = commands.add_parser(
        "status", help="backlog, oldest unsent event, acknowledged events kept; each webhook target's position"
    )
    status.add_argument("--config", type=Path, required=True, help="station TOML")
    status.add_argument("--target", type=int, help="only this webhook target (its hook_id)")
    status.set_defaults(func=cmd_status)
    replay = commands.add_parser("replay", help="send again the events created since a moment")
    replay.add_argument("--config", type=Path, required=True, help="station TOML")
    replay.add_argument("--since", help="ISO 8601 time with offset, or a duration such as 2h or 3d")
    replay.add_argument("--target", type=int, help="post again to this webhook target (its hook_id), not over MQTT")
    replay.add_argument(
        "--dead-letters", action="store_true", help="also post again the target's dead letters (with --target)"
    )
    replay.set_defaults(func=cmd_replay)
    dead = commands.add_parser(
        "dead-letters", help="the events a webhook target gave up on, with why (replay them with --dead-letters)"
    )
    dead.add_argument("--config", type=Path, required=True, help="station TOML")
    dead.add_argument("--target", type=int, required=True, help="the target's hook_id")
    dead.set_defaults(func=cmd_dead_letters)
    resume = commands.add_parser(
        "resume", help="retry a parked webhook target (it refused an event; its receiver has been fixed)"
    )
    resume.add_argument("--config", type=Path, required=True, help="station TOML")
    resume.add_argument("--target", type=int, required=True, help="the target's hook_id")
    resume.set_defaults(func=cmd_resume)
