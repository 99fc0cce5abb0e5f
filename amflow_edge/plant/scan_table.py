"""The idempotent write: one transaction per message, safe to repeat and safe in any order.

The event log, keyed by event_id, is what makes a redelivery harmless: a second copy inserts nothing and
changes nothing else. The scan row keeps the greatest `modified`, compared as instants (an event stamped
+01:00 and one stamped +02:00 across a DST change compare right), so an older event arriving after a newer
one (another consumer of the group was quicker, or a station sent its backlog again) leaves it as it is.

Equal `modified` with a different content only happens when a station's clock was stepped back (every
change is stamped anew), and then the row keeps the greater of (payload, event, event_id) as PostgreSQL
orders them: arbitrary, but the same whatever order the events came in and whichever consumer stored them,
so two consumers, or a replay, always end on the same row.
"""

from __future__ import annotations

from enum import Enum

from amflow_edge.plant.messages import Rejected, ScanEvent
from amflow_edge.plant.schema import Tables, schema_statements

try:
    import psycopg
except ImportError as exc:  # the plant extra is not installed
    raise ImportError(
        f"the reference consumer needs psycopg 3 ({exc}); pip install 'amflow-edge[plant]'", name=exc.name
    ) from exc

SCHEMA_LOCK = "amflow-edge plant consumer schema"
"""Advisory-lock key: two consumers starting together must not race CREATE TABLE IF NOT EXISTS (which can fail
on a unique violation in pg_type when run concurrently)."""


class Outcome(Enum):
    STORED = "stored"
    """A new event; the scan row now holds its state."""
    STALE = "stale"
    """A new event, logged, but the scan row already held a later state."""
    DUPLICATE = "duplicate"
    """This event_id was stored before: nothing changed."""


def dsn_problem(dsn: str) -> str | None:
    """What libpq finds wrong with the connection string itself, before any connection is tried."""
    try:
        psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        return f"not a PostgreSQL connection string: {str(exc).strip()}"
    return None


def connect(dsn: str, application_name: str, connect_timeout_s: int) -> psycopg.Connection[tuple[object, ...]]:
    """Autocommit, so every write below is exactly the transaction it opens."""
    return psycopg.connect(
        dsn, autocommit=True, connect_timeout=connect_timeout_s, application_name=application_name[:63]
    )


def ensure_schema(conn: psycopg.Connection[tuple[object, ...]], tables: Tables) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"{SCHEMA_LOCK} {tables.scans}",))
        for statement in schema_statements(tables):
            conn.execute(statement)


def store_event(
    conn: psycopg.Connection[tuple[object, ...]], tables: Tables, event: ScanEvent, consumer: str
) -> Outcome:
    params = {
        "event_id": event.event_id,
        "scan_uuid": event.scan_uuid,
        "station": event.station,
        "event": event.event,
        "modified": event.modified,
        "consumer": consumer,
        "envelope": event.envelope_json,
    }
    with conn.transaction():
        logged = conn.execute(
            f"INSERT INTO {tables.events} (event_id, scan_uuid, station, event, modified, consumer, payload) "
            "VALUES (%(event_id)s, %(scan_uuid)s, %(station)s, %(event)s, %(modified)s, %(consumer)s, "
            "%(envelope)s::jsonb) ON CONFLICT (event_id) DO NOTHING RETURNING 1",
            params,
        ).fetchone()
        if logged is None:
            return Outcome.DUPLICATE
        written = conn.execute(
            f"INSERT INTO {tables.scans} AS s (uuid, station, modified, last_event, last_event_id, payload) "
            "VALUES (%(scan_uuid)s, %(station)s, %(modified)s, %(event)s, %(event_id)s, "
            "(%(envelope)s::jsonb) -> 'data') "
            "ON CONFLICT (uuid) DO UPDATE SET station = EXCLUDED.station, modified = EXCLUDED.modified, "
            "last_event = EXCLUDED.last_event, last_event_id = EXCLUDED.last_event_id, payload = EXCLUDED.payload, "
            "updated_at = now() "
            "WHERE (s.modified, s.payload, s.last_event, s.last_event_id) "
            "< (EXCLUDED.modified, EXCLUDED.payload, EXCLUDED.last_event, EXCLUDED.last_event_id) "
            "RETURNING 1",
            params,
        ).fetchone()
    return Outcome.STORED if written is not None else Outcome.STALE


def store_reject(
    conn: psycopg.Connection[tuple[object, ...]],
    tables: Tables,
    topic: str,
    payload: bytes,
    rejected: Rejected,
    consumer: str,
) -> int:
    """The reject's row id."""
    with conn.transaction():
        row = conn.execute(
            f"INSERT INTO {tables.rejects} (consumer, topic, event_id, reason, payload) "
            "VALUES (%s, %s, %s, %s, %s) RETURNING id",
            (consumer, topic, rejected.event_id, rejected.reason, payload),
        ).fetchone()
    assert row is not None and isinstance(row[0], int)
    return row[0]
