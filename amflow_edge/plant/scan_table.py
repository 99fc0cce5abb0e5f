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

import structlog

from amflow_edge.plant.messages import Rejected, ScanEvent, StationPosition
from amflow_edge.plant.schema import Tables, schema_statements

try:
    import psycopg
except ImportError as exc:  # the plant extra is not installed
    raise ImportError(
        f"the reference consumer needs psycopg 3 ({exc}); pip install 'amflow-edge[plant]'", name=exc.name
    ) from exc

log = structlog.get_logger(__name__)

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
            # Stored before by a consumer that did not keep positions: the copy (a resend) brings it.
            if event.seq is not None:
                conn.execute(
                    f"UPDATE {tables.events} SET stream = %(stream)s, seq = %(seq)s "
                    "WHERE event_id = %(event_id)s AND seq IS NULL",
                    params,
                )
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
    position: tuple[str | None, int | None] = (None, None),
) -> int:
    """The reject's row id. Its outbox position (stream, seq) counts as received: asking for it again would
    only bring the same message to the same refusal."""
    with conn.transaction():
        row = conn.execute(
            f"INSERT INTO {tables.rejects} (consumer, topic, event_id, reason, payload, stream, seq) "
            "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id",
            (consumer, topic, rejected.event_id, rejected.reason, payload, *position),
        ).fetchone()
    assert row is not None and isinstance(row[0], int)
    return row[0]


def store_position(conn: psycopg.Connection[tuple[object, ...]], tables: Tables, position: StationPosition) -> bool:
    """Keep the furthest position each stream reported; a late retained state never moves it back. A stream seen
    for the first time before any of its events is complete up to where it stands (a new station, or a consumer
    that joins late: what came before is not the group's to ask for). True: done."""
    with conn.transaction():
        conn.execute(
            f"INSERT INTO {tables.streams} AS s (station, stream, acknowledged_through_seq, complete_through_seq) "
            "VALUES (%(station)s, %(stream)s, %(through)s, "
            f"  CASE WHEN EXISTS (SELECT 1 FROM {tables.events} e WHERE e.station = %(station)s "
            "    AND e.stream = %(stream)s AND e.seq IS NOT NULL) THEN NULL ELSE %(through)s END) "
            "ON CONFLICT (station, stream) DO UPDATE SET acknowledged_through_seq = EXCLUDED.acknowledged_through_seq, "
            "reported_at = now() WHERE s.acknowledged_through_seq < EXCLUDED.acknowledged_through_seq",
            {"station": position.station, "stream": position.stream, "through": position.acknowledged_through_seq},
        )
    return True


REPAIR_LOCK = "amflow-edge plant consumer repair"
LOOK_AHEAD = 10_000
"""Seqs past each stream's watermark looked at in one pass: a pass costs at most this much per stream."""
MAX_ASKS = 5
"""Asks for the first missing seq of a stream before it is given up on (pruned at the station, or another stream)."""


def lost_ranges(
    conn: psycopg.Connection[tuple[object, ...]], tables: Tables, grace_s: float
) -> list[tuple[str, str, int, int]] | None:
    """(station, stream, first seq, last seq) of events no consumer of the group stored (or rejected) and that are
    lost, not late: a later event of the stream was stored more than `grace_s` ago, or the station reported
    them acknowledged more than `grace_s` ago and nothing of the stream arrived since. Looked for past each
    stream's watermark of what is complete, at most LOOK_AHEAD seqs per stream and pass. A first missing seq
    asked for MAX_ASKS times in vain is given up on, once, in the log. None when another consumer of the group
    is looking now."""
    events, rejects, streams = tables.events, tables.rejects, tables.streams
    same_stream = "e.station = p.station AND e.stream = p.stream"
    received = (
        f"(EXISTS (SELECT 1 FROM {events} e WHERE {same_stream} AND e.seq = g.seq) "
        f"OR EXISTS (SELECT 1 FROM {rejects} e WHERE e.stream = p.stream AND e.seq = g.seq))"
    )
    with conn.transaction():
        row = conn.execute("SELECT pg_try_advisory_xact_lock(hashtext(%s))", (f"{REPAIR_LOCK} {events}",)).fetchone()
        if row is None or not row[0]:
            return None
        conn.execute(
            f"UPDATE {streams} p SET complete_through_seq = w.through FROM ("
            f"  SELECT p.station, p.stream, COALESCE(("
            "    SELECT min(g.seq) - 1 FROM generate_series(COALESCE(p.complete_through_seq + 1, f.first), "
            "      LEAST(f.last, COALESCE(p.complete_through_seq, f.first) + %(ahead)s)) g(seq)"
            f"    WHERE NOT {received}"
            "  ), LEAST(f.last, COALESCE(p.complete_through_seq, f.first) + %(ahead)s)) AS through"
            f"  FROM {streams} p CROSS JOIN LATERAL ("
            f"    SELECT min(e.seq) AS first, max(e.seq) AS last FROM {events} e"
            f"    WHERE {same_stream} AND e.seq > COALESCE(p.complete_through_seq, 0)) f"
            "  WHERE f.last IS NOT NULL"
            ") w WHERE p.station = w.station AND p.stream = w.stream "
            "AND p.complete_through_seq IS DISTINCT FROM w.through",
            {"ahead": LOOK_AHEAD},
        )
        missing = conn.execute(
            f"SELECT p.station, p.stream, g.seq FROM {streams} p "
            f"CROSS JOIN LATERAL (SELECT max(e.seq) AS last, max(e.received_at) AS latest FROM {events} e "
            f"  WHERE {same_stream} AND e.seq > p.complete_through_seq) f "
            "CROSS JOIN LATERAL generate_series(p.complete_through_seq + 1, LEAST("
            "  GREATEST(f.last, p.acknowledged_through_seq), p.complete_through_seq + %(ahead)s)) AS g(seq) "
            f"WHERE p.complete_through_seq IS NOT NULL AND NOT {received} "
            "AND ((g.seq <= p.acknowledged_through_seq AND p.reported_at < now() - make_interval(secs => %(grace)s) "
            "      AND (f.latest IS NULL OR f.latest < now() - make_interval(secs => %(grace)s))) "
            f"  OR EXISTS (SELECT 1 FROM {events} e WHERE {same_stream} AND e.seq > g.seq "
            "    AND e.received_at < now() - make_interval(secs => %(grace)s))) "
            "ORDER BY 1, 2, 3",
            {"grace": grace_s, "ahead": LOOK_AHEAD},
        ).fetchall()
        ranges: list[tuple[str, str, int, int]] = []
        for station, stream, seq in missing:
            assert isinstance(station, str) and isinstance(stream, str) and isinstance(seq, int)
            if ranges and ranges[-1][:2] == (station, stream) and ranges[-1][3] == seq - 1:
                ranges[-1] = (station, stream, ranges[-1][2], seq)
            else:
                ranges.append((station, stream, seq, seq))
        return [r for r in ranges if not _given_up(conn, streams, r)]


def _given_up(conn: psycopg.Connection[tuple[object, ...]], streams: str, lost: tuple[str, str, int, int]) -> bool:
    """Count an ask for a range that starts right after the watermark; past MAX_ASKS, move the watermark past
    it instead: the station no longer has it (pruned after its retention, or its database was rebuilt)."""
    station, stream, first, last = lost
    row = conn.execute(
        f"UPDATE {streams} SET stuck_asks = CASE WHEN stuck_seq = %(first)s THEN stuck_asks + 1 ELSE 1 END, "
        "stuck_seq = %(first)s WHERE station = %(station)s AND stream = %(stream)s "
        "AND complete_through_seq = %(first)s - 1 RETURNING stuck_asks",
        {"station": station, "stream": stream, "first": first},
    ).fetchone()
    if row is None or not isinstance(row[0], int) or row[0] <= MAX_ASKS:
        return False
    conn.execute(
        f"UPDATE {streams} SET complete_through_seq = %(last)s, stuck_seq = NULL, stuck_asks = 0 "
        "WHERE station = %(station)s AND stream = %(stream)s",
        {"station": station, "stream": stream, "last": last},
    )
    log.error(
        "events lost for good: the station could not send them again (pruned after its retention, or its "
        "database was rebuilt); take those scans' state from the station",
        station=station,
        stream=stream,
        first_seq=first,
        last_seq=last,
    )
    return True
