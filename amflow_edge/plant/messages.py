"""What a scan event must be to be stored, checked before the database is touched.

A message that fails is not retried (it would fail again, and hold up every message behind it): it is
kept as a reject, with the reason, and acknowledged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

from pydantic import ValidationError

from amflow_edge.messaging.payload import Envelope


@dataclass(frozen=True)
class ScanEvent:
    event_id: UUID
    station: str
    event: str
    scan_uuid: UUID
    modified: datetime
    envelope_json: str
    """The envelope as received; stored as jsonb."""
    stream: str | None = None
    seq: int | None = None
    """The station's outbox position (user properties stream, seq); None from a station that sends none."""


@dataclass(frozen=True)
class StationPosition:
    """From a station's retained state: up to which seq of which stream the broker acknowledged everything."""

    station: str
    stream: str
    acknowledged_through_seq: int


@dataclass(frozen=True)
class Rejected:
    event_id: str | None
    reason: str


def _event_id(user_properties: list[tuple[str, str]]) -> str | Rejected:
    values = [value for key, value in user_properties if key == "event_id"]
    if len(values) != 1:
        found = "none" if not values else f"{len(values)}"
        return Rejected(None, f"expected one MQTT v5 user property event_id (found {found})")
    try:
        return str(UUID(values[0]))
    except ValueError:
        return Rejected(values[0][:200], f"event_id is not a UUID (found {values[0][:60]!r})")


def _validation_summary(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    shown = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'payload'}: {e['msg']}" for e in errors[:5])
    more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
    return f"not an AM-Vision 3.7 envelope: {shown}{more}"


def parse(topic: str, payload: bytes, user_properties: list[tuple[str, str]], prefix: str) -> ScanEvent | Rejected:
    """The station comes from the topic, <prefix>/<station>/event/<event>, which must agree with hook.event."""
    event_id = _event_id(user_properties)
    if isinstance(event_id, Rejected):
        return event_id
    root = prefix.rstrip("/") + "/"
    levels = topic[len(root) :].split("/") if topic.startswith(root) else []
    if len(levels) != 3 or levels[1] != "event" or not levels[0]:
        return Rejected(event_id, f"topic is not {root}<station>/event/<event>")
    station, _, topic_event = levels
    try:
        message = Envelope.model_validate_json(payload)
    except ValidationError as exc:
        return Rejected(event_id, _validation_summary(exc))
    if message.hook.event != topic_event:
        return Rejected(event_id, f"hook.event {message.hook.event!r} does not match the topic's {topic_event!r}")
    try:
        modified = datetime.fromisoformat(message.data.modified)
    except ValueError as exc:
        return Rejected(event_id, f"data.modified is no time: {exc}")
    stream, seq = outbox_position(user_properties)
    return ScanEvent(
        stream=stream,
        seq=seq,
        event_id=UUID(event_id),
        station=station,
        event=message.hook.event,
        scan_uuid=UUID(message.data.uuid),
        modified=modified,
        envelope_json=payload.decode("utf-8"),
    )


def outbox_position(user_properties: list[tuple[str, str]]) -> tuple[str | None, int | None]:
    """(stream, seq) as the station sent them; None for what is missing or malformed."""
    properties = dict(user_properties)
    stream = properties.get("stream", "")[:64] or None
    seq_text = properties.get("seq", "")
    seq = int(seq_text) if seq_text.isascii() and seq_text.isdigit() and len(seq_text) < 19 else None
    return stream, seq


def parse_state(topic: str, payload: bytes, prefix: str) -> StationPosition | None:
    """None for a state without an outbox position (an older station) or that is no state at all: nothing to
    repair from, and nothing to reject either (the state topic is not the consumer's to judge)."""
    root = prefix.rstrip("/") + "/"
    levels = topic[len(root) :].split("/") if topic.startswith(root) else []
    if len(levels) != 2 or levels[1] != "state" or not levels[0]:
        return None
    try:
        outbox = json.loads(payload)["outbox"]
        stream, through = outbox["stream"], outbox["acknowledged_through_seq"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(stream, str) or not stream or not isinstance(through, int) or isinstance(through, bool):
        return None
    return StationPosition(levels[0], stream[:64], through)
