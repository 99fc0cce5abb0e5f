"""The station database: scans' changing state and the outbox, in one SQLite file.

One file so that a scan's state change and the event announcing it commit in one
transaction: after any crash they agree. WAL lets the relay read while the capture loop
writes; synchronous=FULL makes a committed scan survive a power cut.
Copies are counted per part from the scans themselves (station/assignments.py), so the
assignment UUID and the session are indexed; scan_rejections keeps which scans an operator
rejected from the batch, a state the 3.7 payload has no field for. Each webhook target keeps its own
position in the outbox (webhook_targets.delivered_seq) and the events it gave up on (webhook_dead_letters),
so a slow target neither holds back MQTT nor loses its place.
Each thread gets its own connection (sqlite3 connections are not shared across threads).
"""

from __future__ import annotations

import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

SCHEMA_VERSION = 1
DB_FILE = "station.db"  # in station.state_dir

_SCHEMA = """
CREATE TABLE IF NOT EXISTS scans (
    uuid      TEXT PRIMARY KEY,
    created   TEXT NOT NULL,
    modified  TEXT NOT NULL,
    record    TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL UNIQUE,
    event      TEXT NOT NULL,
    scan_uuid  TEXT,
    topic      TEXT NOT NULL,
    payload    BLOB NOT NULL,
    created    REAL NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    sent       REAL,
    last_error TEXT
);
CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (seq) WHERE sent IS NULL;
CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (sent) WHERE sent IS NOT NULL;
CREATE INDEX IF NOT EXISTS scans_assignment ON scans (json_extract(record, '$.scan.assignment.assignment'));
CREATE INDEX IF NOT EXISTS scans_session ON scans (json_extract(record, '$.scan.scan_session'));
CREATE TABLE IF NOT EXISTS station_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_targets (
    hook_id           INTEGER PRIMARY KEY,
    url               TEXT NOT NULL,
    fingerprint       TEXT NOT NULL,
    delivered_seq     INTEGER NOT NULL,
    active            INTEGER NOT NULL DEFAULT 1,
    parked_reason     TEXT,
    parked_at         REAL,
    last_delivered_at REAL,
    last_error        TEXT,
    failures          INTEGER NOT NULL DEFAULT 0,
    failing_since     REAL,
    generation        INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS webhook_dead_letters (
    hook_id   INTEGER NOT NULL REFERENCES webhook_targets (hook_id),
    seq       INTEGER NOT NULL,
    event_id  TEXT NOT NULL,
    event     TEXT NOT NULL,
    scan_uuid TEXT,
    payload   BLOB NOT NULL,
    created   REAL NOT NULL,
    reason    TEXT NOT NULL,
    at        REAL NOT NULL,
    requeued  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (hook_id, seq)
);
CREATE TABLE IF NOT EXISTS scan_rejections (
    uuid    TEXT PRIMARY KEY REFERENCES scans (uuid),
    at      TEXT NOT NULL,
    comment TEXT NOT NULL
);
"""


_ADDED_COLUMNS = {"webhook_targets": {"failing_since": "REAL", "generation": "INTEGER NOT NULL DEFAULT 0"}}
"""Columns added to a table after it first shipped: CREATE TABLE IF NOT EXISTS leaves an older table as it was."""


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    for table, columns in _ADDED_COLUMNS.items():
        present = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns.items():
            if name not in present:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


class DatabaseError(RuntimeError):
    """The station database cannot be opened or written; the message names the file and the fix."""


class ThreadConnections:
    """One SQLite connection per thread, made on first use by `connect`, all closed by close(): sqlite3
    connections must not be shared by threads at once, and each thread keeps its own (no pool to wait on)."""

    def __init__(self, connect: Callable[[], sqlite3.Connection]) -> None:
        self._connect = connect
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def get(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._all.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                with suppress(sqlite3.ProgrammingError):
                    conn.close()
            self._all.clear()
        self._local = threading.local()


class StationDb:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._connections = ThreadConnections(self._connect)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.transaction() as conn:
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version > SCHEMA_VERSION:
                    raise DatabaseError(
                        f"{self.path} was written by a newer amflow-edge (schema {version} > {SCHEMA_VERSION}); "
                        "upgrade amflow-edge or restore the database that belongs to this version"
                    )
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                conn.execute(
                    "INSERT OR IGNORE INTO station_meta (key, value) VALUES ('stream', ?)", (str(uuid.uuid4()),)
                )
                _add_missing_columns(conn)
        except sqlite3.DatabaseError as exc:
            raise DatabaseError(
                f"cannot use the station database {self.path}: {exc}; check station.state_dir is writable "
                "and the file is an amflow-edge database (move a corrupt one aside: it is rebuilt from the scans)"
            ) from exc
        except OSError as exc:
            raise DatabaseError(f"cannot create {self.path.parent}: {exc.strerror}; check station.state_dir") from exc

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        return conn

    def connection(self) -> sqlite3.Connection:
        return self._connections.get()

    def stream(self) -> str:
        """This database's own id: outbox seqs count within it, and start again in a database rebuilt from the
        scans, so a subscriber tracking seqs must know which count it is in."""
        return str(self.connection().execute("SELECT value FROM station_meta WHERE key = 'stream'").fetchone()[0])

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE…COMMIT: writers queue for the lock up front instead of failing half-way."""
        conn = self.connection()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def close(self) -> None:
        self._connections.close()
