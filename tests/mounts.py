"""A real full disk for tests: a size-limited tmpfs, mounted for one test (the suite runs as root in CI)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def mount_tmpfs(directory: Path, size: str) -> None:
    """Mount a tmpfs of `size` on directory, or skip the test saying why it cannot run here."""
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root; the threshold tests below still run")
    directory.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")


@contextmanager
def tmpfs(directory: Path, size: str) -> Iterator[Path]:
    mount_tmpfs(directory, size)
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)
