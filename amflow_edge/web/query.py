"""Listing scans for the screen: filters over the station database, newest first, one page at a time.

Its own read-only connections (one per thread, `mode=ro`): a listing can never write or hold the write lock
the capture loop and the relay need, and WAL lets it read while they commit. Keyset pagination on rowid (the
capture order): a page is found by an index seek however deep the operator scrolls, and scans stored meanwhile
never shift a page.
"""

from __future__ import annotations

import base64
import binascii
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from amflow_edge.messaging.payload import Scan
from amflow_edge.storage.db import ThreadConnections

QcFilter = Literal["passed", "failed", "review", "pending"]

_QC = {
    "passed": "json_extract(record, '$.scan.qc_pass') = 1",
    "failed": "json_extract(record, '$.scan.qc_pass') = 0",
    "review": "json_extract(record, '$.scan.qc_needs_review') = 1",
    "pending": "json_extract(record, '$.scan.qc_pass') IS NULL AND json_extract(record, '$.scan.qc_needs_review') = 0",
}
_SESSION = "json_extract(record, '$.scan.scan_session')"
"""Written exactly as in the index scans_session (storage/db.py), so SQLite can use it."""
_CREATED_UTC = "strftime('%Y-%m-%dT%H:%M:%S', substr(created, 1, 19) || substr(created, 27)) || substr(created, 20, 7)"
"""`created` as UTC, to the microsecond: it carries the station's UTC offset, which changes with daylight saving,
so strings are compared only once converted. The whole seconds are converted apart from the fraction because
SQLite's date functions round to milliseconds."""


def _utc(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


class CursorError(ValueError):
    """A cursor this API did not hand out; start again without one."""


def encode_cursor(rowid: int) -> str:
    return base64.urlsafe_b64encode(f"r{rowid}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode("ascii")
        if not text.startswith("r") or not text[1:].isdigit() or len(text) > 20:
            raise ValueError
        return int(text[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise CursorError(
            f"cursor {cursor[:40]!r} is not one this station handed out; use next_cursor of the previous page, "
            "or leave cursor out for the newest scans"
        ) from None


@dataclass(frozen=True)
class ScanFilter:
    batch: str | None = None
    session: str | None = None
    qc: QcFilter | None = None
    needs_review: bool | None = None
    unassigned: bool | None = None
    since: datetime | None = None
    until: datetime | None = None


class ScanQuery:
    def __init__(self, db_path: Path) -> None:
        self._path = db_path
        self._connections = ThreadConnections(self._connect)

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(
            f"{self._path.resolve().as_uri()}?mode=ro", uri=True, timeout=10.0, check_same_thread=False
        )

    def _connection(self) -> sqlite3.Connection:
        return self._connections.get()

    def page(self, where: ScanFilter, limit: int, cursor: str | None) -> tuple[list[Scan], str | None]:
        clauses: list[str] = []
        args: list[object] = []
        if cursor is not None:
            clauses.append("rowid < ?")
            args.append(decode_cursor(cursor))
        if where.batch is not None:
            clauses.append("json_extract(record, '$.scan.batch.id') = ?")
            args.append(where.batch)
        if where.session is not None:
            clauses.append(f"{_SESSION} = ?")
            args.append(where.session)
        if where.qc is not None:
            clauses.append(_QC[where.qc])
        if where.needs_review is not None:
            clauses.append("json_extract(record, '$.scan.qc_needs_review') = ?")
            args.append(1 if where.needs_review else 0)
        if where.unassigned is not None:
            clauses.append(f"json_extract(record, '$.scan.assignment') IS {'' if where.unassigned else 'NOT '}NULL")
        if where.since is not None:
            clauses.append(f"{_CREATED_UTC} >= ?")
            args.append(_utc(where.since))
        if where.until is not None:
            clauses.append(f"{_CREATED_UTC} < ?")
            args.append(_utc(where.until))
        sql = "SELECT rowid, json_extract(record, '$.scan') FROM scans"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY rowid DESC LIMIT ?"
        rows = self._connection().execute(sql, (*args, limit + 1)).fetchall()
        more = len(rows) > limit
        rows = rows[:limit]
        scans = [Scan.model_validate_json(text) for _, text in rows]
        return scans, encode_cursor(rows[-1][0]) if more and rows else None

    def close(self) -> None:
        self._connections.close()
