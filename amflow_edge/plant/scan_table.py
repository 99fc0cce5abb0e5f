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

from amflow_edge.plant.messages import Rejected, ScanEvent, StationPosition
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
        "stream": event.stream,
        "seq": event.seq,
    }
    with conn.transaction():
        logged = conn.execute(
            f"INSERT INTO {tables.events} "
            "(event_id, scan_uuid, station, event, modified, consumer, payload, stream, seq) "
            "VALUES (%(event_id)s, %(scan_uuid)s, %(station)s, %(event)s, %(modified)s, %(consumer)s, "
            "%(envelope)s::jsonb, %(stream)s, %(seq)s) ON CONFLICT (event_id) DO NOTHING RETURNING 1",
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


def store_position(conn: psycopg.Connection[tuple[object, ...]], tables: Tables, position: StationPosition) -> bool:
    """Keep the furthest position each stream reported; a late retained state never moves it back. True: done."""
    with conn.transaction():
        conn.execute(
            f"INSERT INTO {tables.streams} AS s (station, stream, acknowledged_through_seq) VALUES (%s, %s, %s) "
            "ON CONFLICT (station, stream) DO UPDATE SET acknowledged_through_seq = EXCLUDED.acknowledged_through_seq, "
            "reported_at = now() WHERE s.acknowledged_through_seq < EXCLUDED.acknowledged_through_seq",
            (position.station, position.stream, position.acknowledged_through_seq),
        )
    return True


REPAIR_LOCK = "amflow-edge plant consumer repair"


def lost_ranges(
    conn: psycopg.Connection[tuple[object, ...]], tables: Tables, grace_s: float, limit: int = 1000
) -> list[tuple[str, str, int, int]] | None:
    """(station, stream, first seq, last seq) of events no consumer of the group stored and that are lost, not
    late: a later event of the stream was stored more than `grace_s` ago, or the station reported more than
    `grace_s` ago that the broker had acknowledged them. Counted from the first seq the group stored of each
    stream (what came before the group existed is not the group's), and from each stream's watermark of what is
    complete, so a pass costs the recent events only. None when another consumer of the group is looking now."""
    events, streams = tables.events, tables.streams
    same_stream = "e.station = p.station AND e.stream = p.stream"
    with conn.transaction():
        row = conn.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", (f"{REPAIR_LOCK} {events}",)).fetchone()
        if row is None or not row[0]:
            return None
        conn.execute(
            f"UPDATE {streams} p SET complete_through_seq = w.through FROM ("
            f"  SELECT p.station, p.stream, COALESCE(("
            "    SELECT min(g.seq) - 1 FROM generate_series(COALESCE(p.complete_through_seq + 1, f.first), f.last) g(seq)"
            f"    WHERE NOT EXISTS (SELECT 1 FROM {events} e WHERE {same_stream} AND e.seq = g.seq)"
            "  ), f.last) AS through"
            f"  FROM {streams} p CROSS JOIN LATERAL ("
            f"    SELECT min(e.seq) AS first, max(e.seq) AS last FROM {events} e"
            f"    WHERE {same_stream} AND e.seq > COALESCE(p.complete_through_seq, 0)) f"
            "  WHERE f.last IS NOT NULL"
            ") w WHERE p.station = w.station AND p.stream = w.stream"
        )
        missing = conn.execute(
            f"SELECT p.station, p.stream, g.seq FROM {streams} p "
            f"CROSS JOIN LATERAL (SELECT max(e.seq) AS last FROM {events} e WHERE {same_stream}) f "
            "CROSS JOIN LATERAL generate_series(p.complete_through_seq + 1, "
            "  GREATEST(f.last, p.acknowledged_through_seq)) AS g(seq) "
            "WHERE p.complete_through_seq IS NOT NULL "
            f"AND NOT EXISTS (SELECT 1 FROM {events} e WHERE {same_stream} AND e.seq = g.seq) "
            "AND ((g.seq <= p.acknowledged_through_seq AND p.reported_at < now() - make_interval(secs => %(grace)s)) "
            f"  OR EXISTS (SELECT 1 FROM {events} e WHERE {same_stream} AND e.seq > g.seq "
            "    AND e.received_at < now() - make_interval(secs => %(grace)s))) "
            "ORDER BY 1, 2, 3 LIMIT %(limit)s",
            {"grace": grace_s, "limit": limit},
        ).fetchall()
    ranges: list[tuple[str, str, int, int]] = []
    for station, stream, seq in missing:
        assert isinstance(station, str) and isinstance(stream, str) and isinstance(seq, int)
        if ranges and ranges[-1][:2] == (station, stream) and ranges[-1][3] == seq - 1:
            ranges[-1] = (station, stream, ranges[-1][2], seq)
        else:
            ranges.append((station, stream, seq, seq))
    return ranges
