"""The PostgreSQL the plant-side tests write to: a database of their own per test, dropped afterwards.

Where the server is comes from AMFLOW_TEST_POSTGRES, else from the role scripts/setup made when it had to install
a server itself (.venv/test-postgres-dsn), else the machine's trusted local superuser.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg

_MADE_BY_SETUP = Path(__file__).resolve().parent.parent / ".venv" / "test-postgres-dsn"


def admin_dsn() -> str:
    """A role allowed CREATE DATABASE."""
    if os.environ.get("AMFLOW_TEST_POSTGRES"):
        return os.environ["AMFLOW_TEST_POSTGRES"]
    if _MADE_BY_SETUP.is_file():
        return _MADE_BY_SETUP.read_text().strip()
    return "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@contextmanager
def fresh_database(prefix: str = "amflow_t") -> Iterator[str]:
    """A new empty database; tests running at once (pytest-xdist) never see each other's rows."""
    name = f"{prefix}_{uuid.uuid4().hex[:16]}"
    admin = admin_dsn()
    try:
        connection = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise RuntimeError(
            f"these tests need a PostgreSQL server ({admin}); run scripts/setup, or set AMFLOW_TEST_POSTGRES to a "
            f"role that may create databases: {exc}"
        ) from None
    with connection:
        connection.execute(f"CREATE DATABASE {name}")
    try:
        yield psycopg.conninfo.make_conninfo(admin, dbname=name)
    finally:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
