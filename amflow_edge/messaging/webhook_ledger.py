"""Where each webhook target stands in the outbox: delivered up to which event, parked or not, what it gave up on.

The outbox is shared by every sink; a target only keeps a position in it (`delivered_seq`: every
event up to there was delivered or is not for this target). So a target that is down for a day
costs no copies of events, and when it comes back it resumes where it stopped, in order. Once a
target has been failing for `dead_letter_after_s`, what it could not take by then is copied to its
dead letters and the target moves on; the copy survives the outbox's pruning until it is sent again.

The sender thread and the CLI (`outbox replay`, `resume`) write the same rows from two processes.
Every change of position other than a delivery bumps `generation`, and a delivery only moves the
position of the generation it was read in: a replay is never undone by a post that was in flight.
Only the daemon registers targets (the CLI may lack the daemon's credentials, and so its fingerprints).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.config.webhooks import WebhookTarget
from amflow_edge.storage.db import StationDb


@dataclass(frozen=True)
class PendingEvent:
    seq: int
    event_id: str
    event: str
    scan_uuid: str | None
    payload: bytes
    created: float
    dead_letter: bool
    """A requeued dead letter: delivering it does not move the target's position."""
    generation: int
    """The target's generation when this was read: a replay or a give-up since then voids the sender's batch."""


class WebhookStatus(BaseModel):
    """One webhook target as the state topic and `outbox status` show it."""

    model_config = ConfigDict(extra="forbid")

    hook_id: int = Field(description="hook.id of the target.")
    url: str = Field(description="Where it posts, without credentials or query.")
    backlog: int = Field(description="Events for this target not yet delivered.")
    oldest_pending_age_s: float | None = Field(description="Age of the oldest undelivered event, seconds.")
    last_delivered_at: float | None = Field(description="Unix time of the last delivery.")
    failures: int = Field(description="Failed attempts at the event now at the head; 0 while delivering.")
    last_error: str | None = Field(description="Why the last attempt failed; null after a success.")
    parked: bool = Field(
        description="The target refused an event (4xx other than 408/429) and is not retried until the config or "
        "`amflow-edge outbox resume --target` changes that."
    )
    parked_reason: str | None = Field(description="What the target answered, and what to fix.")
    dead_letters: int = Field(
        description="Events given up on after dead_letter_after_s; replay them with --dead-letters."
    )


_EVENT_COLUMNS = "seq, event_id, event, scan_uuid, payload, created"
"""What a posted or dead-lettered event is read as: the outbox's and the dead letters' shared columns, in _pending's
order."""


def _pending(row: tuple[int, str, str, str | None, bytes, float], dead_letter: bool, generation: int) -> PendingEvent:
    seq, event_id, event, scan_uuid, payload, created = row
    return PendingEvent(seq, event_id, event, scan_uuid, payload, created, dead_letter, generation)


def _placeholders(events: Sequence[str]) -> str:
    return ",".join("?" * len(events))


class DeadLetter(BaseModel):
    """An event a webhook target gave up on, as `outbox dead-letters` lists it."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(description="The event's id (webhook-id, MQTT event_id).")
    event: str = Field(description="The event name.")
    scan: str | None = Field(description="UUID of the scan it is about.")
    created: float = Field(description="Unix time the event was queued.")
    reason: str = Field(description="Why the target did not take it (its last answer, or parked).")
    given_up_at: float = Field(description="Unix time it was moved to the dead letters.")
    requeued: bool = Field(description="Queued to be posted again (outbox replay --dead-letters).")


class WebhookLedger:
    """Each target's row in webhook_targets and its dead letters; every method is one transaction."""

    def __init__(self, db: StationDb) -> None:
        self._db = db

    def register(self, targets: Sequence[WebhookTarget]) -> None:
        """Make the ledger match the daemon's config: a new target starts at the outbox's end (it was not
        subscribed to the past: `outbox replay --target` sends it), a changed endpoint or secret is retried even
        if parked, and a target no longer configured stops holding back the outbox's pruning."""
        with self._db.transaction() as conn:
            end = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
            conn.execute("UPDATE webhook_targets SET active = 0")
            for target in targets:
                row = conn.execute(
                    "SELECT fingerprint FROM webhook_targets WHERE hook_id = ?", (target.hook_id,)
                ).fetchone()
                if row is None:
                    conn.execute(
                        "INSERT INTO webhook_targets (hook_id, url, fingerprint, delivered_seq) VALUES (?, ?, ?, ?)",
                        (target.hook_id, target.display_url, target.fingerprint(), end),
                    )
                    continue
                changed = row[0] != target.fingerprint()
                # A failure before this start is not counted: the receiver may have been fixed meanwhile.
                conn.execute(
                    "UPDATE webhook_targets SET active = 1, url = ?, fingerprint = ?, failing_since = NULL, "
                    "parked_reason = CASE WHEN ? THEN NULL ELSE parked_reason END, "
                    "parked_at = CASE WHEN ? THEN NULL ELSE parked_at END WHERE hook_id = ?",
                    (target.display_url, target.fingerprint(), changed, changed, target.hook_id),
                )

    def registered(self, hook_id: int) -> bool:
        query = "SELECT 1 FROM webhook_targets WHERE hook_id = ?"
        return self._db.connection().execute(query, (hook_id,)).fetchone() is not None

    def pending(self, hook_id: int, events: Sequence[str], limit: int) -> list[PendingEvent]:
        """The next events to post: requeued dead letters first (they are the oldest), then the outbox in order,
        read in one snapshot with the generation they belong to. Reads take no write lock (capture commits
        meanwhile); only moving past events not for this target writes, and only if nothing moved meanwhile."""
        conn = self._db.connection()
        conn.execute("BEGIN")
        try:
            position, generation = conn.execute(
                "SELECT delivered_seq, generation FROM webhook_targets WHERE hook_id = ?", (hook_id,)
            ).fetchone()
            dead = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM webhook_dead_letters "
                "WHERE hook_id = ? AND requeued = 1 ORDER BY seq LIMIT ?",
                (hook_id, limit),
            ).fetchall()
            rows = (
                []
                if dead
                else conn.execute(
                    f"SELECT {_EVENT_COLUMNS} FROM outbox "
                    f"WHERE seq > ? AND event IN ({_placeholders(events)}) ORDER BY seq LIMIT ?",
                    (position, *events, limit),
                ).fetchall()
            )
            end = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0]
        finally:
            conn.execute("COMMIT")
        if dead:
            return [_pending(row, True, generation) for row in dead]
        if not rows and end > position:
            # Nothing for this target up to `end` (same snapshot): move past it, so pruning is not held back.
            with self._db.transaction() as write:
                write.execute(
                    "UPDATE webhook_targets SET delivered_seq = ? WHERE hook_id = ? AND delivered_seq = ? "
                    "AND generation = ?",
                    (end, hook_id, position, generation),
                )
        return [_pending(row, False, generation) for row in rows]

    def delivered(self, hook_id: int, event: PendingEvent) -> bool:
        """Record a 2xx; False when the target's position was changed meanwhile (a replay, a give-up): the
        sender then drops the rest of its batch and reads again."""
        with self._db.transaction() as conn:
            if event.dead_letter:
                conn.execute("DELETE FROM webhook_dead_letters WHERE hook_id = ? AND seq = ?", (hook_id, event.seq))
                moved = True
            else:
                moved = (
                    conn.execute(
                        "UPDATE webhook_targets SET delivered_seq = ? "
                        "WHERE hook_id = ? AND generation = ? AND delivered_seq < ?",
                        (event.seq, hook_id, event.generation, event.seq),
                    ).rowcount
                    > 0
                )
            conn.execute(
                "UPDATE webhook_targets SET last_delivered_at = ?, last_error = NULL, failures = 0, "
                "failing_since = NULL WHERE hook_id = ?",
                (time.time(), hook_id),
            )
            return moved

    def failed(self, hook_id: int, error: str) -> int:
        """Count a failed attempt at the head event; returns how many in a row."""
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE webhook_targets SET failures = failures + 1, last_error = ?, "
                "failing_since = COALESCE(failing_since, ?) WHERE hook_id = ?",
                (error, time.time(), hook_id),
            )
            return int(conn.execute("SELECT failures FROM webhook_targets WHERE hook_id = ?", (hook_id,)).fetchone()[0])

    def park(self, hook_id: int, reason: str) -> None:
        with self._db.transaction() as conn:
            now = time.time()
            conn.execute(
                "UPDATE webhook_targets SET parked_reason = ?, parked_at = ?, last_error = ?, "
                "failing_since = COALESCE(failing_since, ?) WHERE hook_id = ?",
                (reason, now, reason, now, hook_id),
            )

    def parked_reason(self, hook_id: int) -> str | None:
        row = (
            self._db.connection()
            .execute("SELECT parked_reason FROM webhook_targets WHERE hook_id = ?", (hook_id,))
            .fetchone()
        )
        return None if row is None else row[0]

    def resume(self, hook_id: int) -> bool:
        """Unpark a target (its receiver was fixed); False when it was not parked. Its time of failing starts
        again: the operator just said it should work."""
        with self._db.transaction() as conn:
            return (
                conn.execute(
                    "UPDATE webhook_targets SET parked_reason = NULL, parked_at = NULL, failures = 0, "
                    "failing_since = NULL WHERE hook_id = ? AND parked_reason IS NOT NULL",
                    (hook_id,),
                ).rowcount
                > 0
            )

    def give_up_if_failing_too_long(self, hook_id: int, events: Sequence[str], age_s: float) -> int:
        """Once the target has been failing (or parked) for age_s, move what it could not take by then, the
        events created age_s ago or earlier, to its dead letters; returns how many. Judged by how long the target
        has failed, not by the events' age: after a long shutdown, or a replay of old events, a single refusal
        must not throw everything away. The next give-up waits another age_s."""
        now = time.time()
        cutoff = now - age_s
        with self._db.transaction() as conn:
            position, failing_since, said = conn.execute(
                "SELECT delivered_seq, failing_since, COALESCE(parked_reason, last_error) "
                "FROM webhook_targets WHERE hook_id = ?",
                (hook_id,),
            ).fetchone()
            if failing_since is None or failing_since > cutoff:
                return 0
            (last,) = conn.execute(
                f"SELECT MAX(seq) FROM outbox WHERE seq > ? AND created <= ? AND event IN ({_placeholders(events)})",
                (position, cutoff, *events),
            ).fetchone()
            if last is None:
                return 0
            rows = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM outbox "
                f"WHERE seq > ? AND seq <= ? AND event IN ({_placeholders(events)}) ORDER BY seq",
                (position, last, *events),
            ).fetchall()
            reason = f"{said or 'not delivered'}; given up after {age_s:.0f} s of failing"
            conn.executemany(
                "INSERT OR IGNORE INTO webhook_dead_letters "
                "(hook_id, seq, event_id, event, scan_uuid, payload, created, reason, at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(hook_id, *row, reason, now) for row in rows],
            )
            conn.execute(
                "UPDATE webhook_targets SET delivered_seq = ?, generation = generation + 1, failing_since = ? "
                "WHERE hook_id = ?",
                (last, now, hook_id),
            )
            return len(rows)

    def replay(self, hook_id: int, since: float, events: Sequence[str]) -> int:
        """Post again to this target its events created since a moment that the outbox still keeps; returns
        how many."""
        with self._db.transaction() as conn:
            (position,) = conn.execute(
                "SELECT delivered_seq FROM webhook_targets WHERE hook_id = ?", (hook_id,)
            ).fetchone()
            first = conn.execute(
                f"SELECT MIN(seq) FROM outbox WHERE created >= ? AND event IN ({_placeholders(events)})",
                (since, *events),
            ).fetchone()[0]
            if first is None or first > position:
                return 0
            conn.execute(
                "UPDATE webhook_targets SET delivered_seq = ?, generation = generation + 1 WHERE hook_id = ?",
                (first - 1, hook_id),
            )
            return int(
                conn.execute(
                    f"SELECT COUNT(*) FROM outbox WHERE seq BETWEEN ? AND ? AND event IN ({_placeholders(events)})",
                    (first, position, *events),
                ).fetchone()[0]
            )

    def requeue_dead_letters(self, hook_id: int) -> int:
        """Queue the target's dead letters to be posted again, before its next outbox events."""
        with self._db.transaction() as conn:
            return conn.execute(
                "UPDATE webhook_dead_letters SET requeued = 1 WHERE hook_id = ? AND requeued = 0", (hook_id,)
            ).rowcount

    def dead_letters(self, hook_id: int) -> list[DeadLetter]:
        rows = self._db.connection().execute(
            "SELECT event_id, event, scan_uuid, created, reason, at, requeued FROM webhook_dead_letters "
            "WHERE hook_id = ? ORDER BY seq",
            (hook_id,),
        )
        return [
            DeadLetter(event_id=e, event=n, scan=s, created=c, reason=r, given_up_at=a, requeued=bool(q))
            for e, n, s, c, r, a, q in rows
        ]

    def known(self) -> list[int]:
        return [row[0] for row in self._db.connection().execute("SELECT hook_id FROM webhook_targets ORDER BY hook_id")]

    def status(self, hook_id: int, events: Sequence[str] | None = None) -> WebhookStatus | None:
        conn = self._db.connection()
        row = conn.execute(
            "SELECT url, delivered_seq, last_delivered_at, failures, last_error, parked_reason "
            "FROM webhook_targets WHERE hook_id = ?",
            (hook_id,),
        ).fetchone()
        if row is None:
            return None
        url, position, last_delivered_at, failures, last_error, parked_reason = row
        event_filter = f"AND event IN ({_placeholders(events)})" if events else ""
        backlog, oldest = conn.execute(
            f"SELECT COUNT(*), MIN(created) FROM outbox WHERE seq > ? {event_filter}", (position, *(events or ()))
        ).fetchone()
        dead, requeued, oldest_requeued = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(requeued), 0), MIN(CASE WHEN requeued = 1 THEN created END) "
            "FROM webhook_dead_letters WHERE hook_id = ?",
            (hook_id,),
        ).fetchone()
        oldest = min((t for t in (oldest, oldest_requeued) if t is not None), default=None)
        return WebhookStatus(
            hook_id=hook_id,
            url=url,
            backlog=backlog + requeued,
            oldest_pending_age_s=None if oldest is None else max(0.0, time.time() - oldest),
            last_delivered_at=last_delivered_at,
            failures=failures,
            last_error=last_error,
            parked=parked_reason is not None,
            parked_reason=parked_reason,
            dead_letters=dead - requeued,
        )
