"""The consumer's three tables, as DDL an integrator can read (`amflow-edge consume --print-schema`).

Names come from a validated prefix (lower-case letters, digits, underscores), so they need no quoting and
the DDL prints without a database driver.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PREFIX = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Tables:
    """Table names, checked to be plain identifiers: they go into SQL text as they are."""

    scans: str
    events: str
    rejects: str
    streams: str

    def __post_init__(self) -> None:
        for name in (self.scans, self.events, self.rejects, self.streams):
            if not _NAME.fullmatch(name):
                raise ValueError(f"table name {name!r}: expected lower-case letters, digits and _")

    @classmethod
    def named(cls, prefix: str) -> Tables:
        if not _PREFIX.fullmatch(prefix):
            raise ValueError(f"table prefix {prefix!r}: expected lower-case letters, digits and _, at most 32")
        return cls(
            scans=f"{prefix}_scans",
            events=f"{prefix}_scan_events",
            rejects=f"{prefix}_rejected_messages",
            streams=f"{prefix}_station_streams",
        )


def schema_statements(tables: Tables) -> list[str]:
    """Idempotent (IF NOT EXISTS): every consumer runs them at start, under an advisory lock."""
    return [
        f"""CREATE TABLE IF NOT EXISTS {tables.scans} (
    uuid          uuid PRIMARY KEY,          -- the scan's uuid (data.uuid)
    station       text NOT NULL,             -- from the topic <prefix>/<station>/event/<event>
    modified      timestamptz NOT NULL,      -- data.modified of the state kept: the latest
    last_event    text NOT NULL,             -- hook.event that brought it
    last_event_id uuid NOT NULL,             -- its event_id
    payload       jsonb NOT NULL,            -- the Scan (data), as received
    updated_at    timestamptz NOT NULL DEFAULT now()
)""",
        f"""CREATE TABLE IF NOT EXISTS {tables.events} (
    event_id    uuid PRIMARY KEY,            -- MQTT v5 user property event_id: a redelivery is not a new row
    scan_uuid   uuid NOT NULL,
    station     text NOT NULL,
    event       text NOT NULL,               -- hook.event
    modified    timestamptz NOT NULL,        -- data.modified
    received_at timestamptz NOT NULL DEFAULT now(),
    consumer    text NOT NULL,               -- the client id of the consumer that stored it
    payload     jsonb NOT NULL,              -- the whole envelope {"hook", "data"}
    stream      text,                        -- user properties stream and seq: the station's outbox position
    seq         bigint
)""",
        # Tables made by a consumer before events carried their outbox position.
        f"ALTER TABLE {tables.events} ADD COLUMN IF NOT EXISTS stream text, ADD COLUMN IF NOT EXISTS seq bigint",
        f"CREATE INDEX IF NOT EXISTS {tables.events}_seq_idx ON {tables.events} (station, stream, seq) "
        "WHERE seq IS NOT NULL",
        f"CREATE INDEX IF NOT EXISTS {tables.events}_scan_idx ON {tables.events} (scan_uuid, modified)",
        f"""CREATE TABLE IF NOT EXISTS {tables.streams} (
    station     text NOT NULL,
    stream      text NOT NULL,               -- the station's outbox (state: outbox.stream)
    acknowledged_through_seq bigint NOT NULL, -- every event up to here reached the broker (state topic)
    reported_at timestamptz NOT NULL DEFAULT now(),
    complete_through_seq bigint,             -- every event from the group's first up to here is stored
    stuck_seq   bigint,                      -- the first missing seq, while asked for in vain,
    stuck_asks  integer NOT NULL DEFAULT 0,  -- and how often: given up after a few (pruned, rebuilt)
    PRIMARY KEY (station, stream)
)""",
        f"""CREATE TABLE IF NOT EXISTS {tables.rejects} (
    id          bigserial PRIMARY KEY,
    received_at timestamptz NOT NULL DEFAULT now(),
    consumer    text NOT NULL,
    topic       text NOT NULL,
    event_id    text,                        -- as sent, when there was one
    reason      text NOT NULL,               -- why it was not stored as an event
    payload     bytea NOT NULL,              -- the message's bytes, whatever they were
    stream      text,                        -- the outbox position, when the message had one
    seq         bigint
)""",
        f"ALTER TABLE {tables.rejects} ADD COLUMN IF NOT EXISTS stream text, ADD COLUMN IF NOT EXISTS seq bigint",
    ]


def schema_text(tables: Tables) -> str:
    return "".join(f"{statement};\n\n" for statement in schema_statements(tables)).rstrip("\n") + "\n"
