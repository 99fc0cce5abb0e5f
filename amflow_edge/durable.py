"""Writing files so that a power cut leaves either the old content or the new, never half of either.

The scan store, the backup mover and the session file all depend on it: fsync the data,
rename into place, then fsync the directory so the rename itself survives.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durably(path: Path, data: bytes | memoryview) -> None:
    """A new file (never an existing one), fully written and fsynced before it is closed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(path: Path, data: bytes) -> None:
    """Atomically replace `path`: a temporary file beside it, fsync, rename, fsync of the directory."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.unlink(missing_ok=True)
        write_durably(temporary, data)
        os.replace(temporary, path)
        fsync_dir(path.parent)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def remove_durably(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
