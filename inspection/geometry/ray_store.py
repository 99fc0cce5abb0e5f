"""Every pixel's ray of a calibration, kept on disk between processes.

Undistorting a 5 MP camera's every pixel takes most of a second (3 s for the demo rig), and every process that
renders the mock's scenes (a daemon started on the mock, each test's or benchmark's renderer) needs them for every
camera. Stored as .npy and read memory-mapped, the rays cost a few milliseconds and one copy in the page cache for
all the processes that read them.

The store is a cache, never a source of truth: a file is named by the hash of everything the rays depend on, written
whole or not at all, and any error reading or writing it (no home directory under systemd's DynamicUser, a full
disk) only means the rays are computed as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

FORMAT = 1
"""Part of every file's name: raise it when the rays are computed differently."""
MIN_PIXELS = 1_000_000
"""Smaller images are undistorted in a few tens of milliseconds: not worth a file."""
KEEP_FILES = 16
"""Files kept, the least recently written dropped first: about 1 GB at 5 MP (a rig, a few recalibrations)."""
CACHE_ENV = "AMFLOW_EDGE_CACHE_DIR"


def store_dir() -> Path:
    """$AMFLOW_EDGE_CACHE_DIR, else $XDG_CACHE_HOME/amflow-edge, else ~/.cache/amflow-edge; rays in pixel-rays/."""
    base = os.environ.get(CACHE_ENV) or os.environ.get("XDG_CACHE_HOME")
    root = Path(base) if base else Path.home() / ".cache"
    return (root if os.environ.get(CACHE_ENV) else root / "amflow-edge") / "pixel-rays"


def stored_rays(key: tuple[object, ...], shape: tuple[int, int], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """The rays for `key` (everything they depend on) of an image `shape` (height, width): read from the store,
    or computed by `compute` and stored. Read-only either way."""
    if shape[0] * shape[1] < MIN_PIXELS:
        return compute()
    try:
        path = store_dir() / f"{_digest(key)}.npy"
    except RuntimeError:  # no home directory to keep them in
        return compute()
    try:
        stored = np.load(path, mmap_mode="r")
        if stored.shape == (*shape, 3) and stored.dtype == np.float32:
            return stored
    except (OSError, ValueError):
        pass
    rays = compute()
    with contextlib.suppress(OSError):
        _write(path, rays)
    return rays


def _digest(key: tuple[object, ...]) -> str:
    return hashlib.sha256(repr((FORMAT, key)).encode()).hexdigest()[:32]


def _write(path: Path, rays: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".writing-", suffix=".npy")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, rays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    kept = sorted(path.parent.glob("*.npy"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in kept[KEEP_FILES:]:
        old.unlink(missing_ok=True)
