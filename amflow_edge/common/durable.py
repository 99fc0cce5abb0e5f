"""Writing files so that a power cut leaves either the old content or the new, never half of either.

Scans, their records, the session, calibrations, reports, overlays and the design cache all go
through here: write a temporary file beside the target, fsync it, rename it into place, then fsync
the directory so the rename itself survives.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def write_durably(path: Path, data: bytes | memoryview) -> None:
    """A new file (never an existing one), fully written and fsynced before it is closed."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path, *, shared: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` for a writer that wants a file name (OpenCV, numpy); when the block
    ends without an exception, the file there replaces `path` durably.

    The temporary name keeps the suffix, which those writers read the format from. It is one name per
    target, so a copy a crash left behind is replaced by the next write rather than piling up in a scan
    directory; `shared=True`, for a file several processes may write at once (the design cache, a report
    a re-evaluation rewrites), gives each process and thread a name of its own instead."""
    path = Path(path)
    unique = f".{os.getpid()}-{threading.get_ident()}" if shared else ""
    temporary = path.with_name(f".{path.stem}{unique}.tmp{path.suffix}")
    try:
        temporary.unlink(missing_ok=True)
        yield temporary
        _fsync_file(temporary)
        os.replace(temporary, path)
        fsync_dir(path.parent)
    finally:
        temporary.unlink(missing_ok=True)


def replace_durably(path: Path, data: bytes, *, shared: bool = False) -> None:
    """Atomically replace `path` with `data` (one fsync of the data, one of the directory)."""
    with replacing(path, shared=shared) as temporary:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)


def remove_durably(path: Path) -> None:
    path.unlink(missing_ok=True)
    fsync_dir(path.parent)
