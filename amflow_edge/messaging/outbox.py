"""The outbox: every event the station owes its subscribers, kept until the broker has acknowledged it.

Rows are added inside the caller's transaction (the scan change that caused the event), so
an event exists exactly when its cause does. The relay hands rows to MQTT in `seq` order
and marks them sent only on PUBACK; anything unsent after a crash is simply sent again.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.storage.db import StationDb


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    event_id: str
    event: str
    scan_uuid: str | None
    topic: str
    payload: bytes


class OutboxStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backlog: int = Field(description="Events not yet acknowledged by the broker.")
    oldest_unsent_age_s: float | None = Field(description="Age of the oldest unsent event, seconds.")
    sent: int = Field(description="Acknowledged events still kept (pruned after the retention period).")
    last_sent_at: float | None = Field(description="Unix time of the last acknowledgement.")
    failed_attempts: int = Field(description="Unsent events the broker refused at least once.")
    stream: str = Field(
        description="Id of this station's outbox: every event carries it and its seq as MQTT v5 user properties "
        "(stream, seq), so a subscriber finds a gap in what reached it and asks for it again (request/resend)."
    )
    acknowledged_through_seq: int = Field(
        description="Every event of the stream up to this seq was acknowledged by the broker: a subscriber missing "
        "one of them lost it behind the broker."
    )


class Outbox:
    def __init__(self, db: StationDb) -> None:
        self._db = db

    @staticmethod
    def add(conn: sqlite3.Connection, event: str, scan_uuid: str | None, topic: str, payload: bytes) -> str:
        """Queue an event inside the caller's open transaction; returns the event id subscribers de-duplicate by."""
        event_id = str(uuid.uuid4())
        conn.execute(
            "INSERT INTO outbox (event_id, event, scan_uuid, topic, payload, created) VALUES (?, ?, ?, ?, ?, ?)",
            (event_id, event, scan_uuid, topic, payload, time.time()),
        )
        return event_id

    def unsent(self, after_seq: int, limit: int) -> list[OutboxRow]:
        rows = self._db.connection().execute(
            "SELECT seq, event_id, event, scan_uuid, topic, payload FROM outbox "
            "WHERE sent IS NULL AND seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        )
        return [OutboxRow(*row) for row in rows]

    def mark_sent(self, seqs: Iterable[int]) -> None:
        now = time.time()
        with self._db.transaction() as conn:
            conn.executemany(
                "UPDATE outbox SET sent = ?, attempts = attempts + 1, last_error = NULL WHERE seq = ?",
                [(now, seq) for seq in seqs],
            )

    def mark_failed(self, seq: int, error: str) -> None:
        with self._db.transaction() as conn:
            conn.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE seq = ?", (error, seq))

    def stats(self) -> OutboxStats:
        conn = self._db.connection()
        # Age counts events never acknowledged; one sent again (a replay, a subscriber's resend) was delivered once
        # already, and answering for it must not pause capture.
        backlog, oldest, failed = conn.execute(
            "SELECT COUNT(*), MIN(CASE WHEN attempts = 0 OR last_error IS NOT NULL THEN created END), "
            "COUNT(last_error) FROM outbox WHERE sent IS NULL"
        ).fetchone()
        sent, last_sent = conn.execute("SELECT COUNT(*), MAX(sent) FROM outbox WHERE sent IS NOT NULL").fetchone()
        (through,) = conn.execute(
            "SELECT COALESCE((SELECT MIN(seq) - 1 FROM outbox WHERE sent IS NULL), "
            "(SELECT MAX(seq) FROM sqlite_sequence WHERE name = 'outbox'), 0)"
        ).fetchone()
        return OutboxStats(
            backlog=backlog,
            oldest_unsent_age_s=None if oldest is None else max(0.0, time.time() - oldest),
            sent=sent,
            last_sent_at=last_sent,
            failed_attempts=failed,
            stream=self._db.stream(),
            acknowledged_through_seq=through,
        )

    def prune(self, older_than_s: float) -> int:
        """Forget acknowledged events after the retention period; unsent ones, and those a webhook target has not
        yet delivered or given up on, are never pruned."""
        with self._db.transaction() as conn:
            return conn.execute(
                "DELETE FROM outbox WHERE sent IS NOT NULL AND sent < ? AND seq <= "
                "(SELECT COALESCE(MIN(delivered_seq), 9223372036854775807) FROM webhook_targets WHERE active = 1)",
                (time.time() - older_than_s,),
            ).rowcount

    def stream(self) -> str:
        return self._db.stream()

    def resend(self, first_seq: int, last_seq: int) -> int:
        """Send again the events first_seq..last_seq that the outbox still keeps (a subscriber lost them behind the
        broker); returns how many."""
        with self._db.transaction() as conn:
            return conn.execute(
                "UPDATE outbox SET sent = NULL WHERE sent IS NOT NULL AND seq BETWEEN ? AND ?", (first_seq, last_seq)
            ).rowcount

    def replay(self, since: float) -> int:
        """Send again every event created since a moment (a subscriber lost its data); returns how many."""
        with self._db.transaction() as conn:
            return conn.execute(
                "UPDATE outbox SET sent = NULL WHERE sent IS NOT NULL AND created >= ?", (since,)
            ).rowcount
