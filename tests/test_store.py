"""A scan directory appears whole or not at all, and nothing stored before is ever touched."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from amflow_edge.common.scan_layout import INCOMING_DIR, RECORD_FILE
from amflow_edge.storage.record import ScanRecord
from amflow_edge.storage.store import ScanStore, StoreError
from tests.factories import CAMERAS, make_images, make_record
from tests.mounts import tmpfs

REPO = Path(__file__).resolve().parent.parent


def test_scan_is_stored_with_five_readable_pngs_and_its_record(tmp_path: Path) -> None:
    store = ScanStore(tmp_path)
    store.prepare()
    record, images = make_record(), make_images()
    path = store.write_scan(record, images)
    assert path == tmp_path / "scans" / record.scan.uuid
    assert sorted(p.name for p in path.iterdir()) == sorted([f"scan_{c}.png" for c in CAMERAS] + [RECORD_FILE])
    for name, image in images.items():
        np.testing.assert_array_equal(cv2.imread(str(path / f"scan_{name}.png"), cv2.IMREAD_UNCHANGED), image)
    assert ScanRecord.model_validate_json((path / RECORD_FILE).read_bytes()) == record
    assert list((tmp_path / "scans" / INCOMING_DIR).iterdir()) == []


def test_existing_scan_is_never_overwritten(tmp_path: Path) -> None:
    store = ScanStore(tmp_path)
    store.prepare()
    record = make_record()
    store.write_scan(record, make_images(seed=1))
    before = (store.scan_dir(record.scan.uuid) / "scan_cam01.png").read_bytes()
    with pytest.raises(StoreError, match="already exists"):
        store.write_scan(record, make_images(seed=2))
    assert (store.scan_dir(record.scan.uuid) / "scan_cam01.png").read_bytes() == before


def test_writer_killed_before_the_rename_leaves_no_scan_and_start_cleans_up(tmp_path: Path) -> None:
    scan_uuid = str(uuid.uuid1())
    script = textwrap.dedent(
        f"""
        import os, signal
        from amflow_edge.storage.store import ScanStore
        from tests.factories import make_images, make_record
        store = ScanStore({str(tmp_path)!r})
        store.prepare()
        store.write_scan(make_record({scan_uuid!r}), make_images(),
                         before_publish=lambda: os.kill(os.getpid(), signal.SIGKILL))
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    assert not (tmp_path / "scans" / scan_uuid).exists()
    assert (tmp_path / "scans" / INCOMING_DIR / scan_uuid).is_dir()  # the half scan is there, hidden from readers
    removed = ScanStore(tmp_path).prepare()
    assert removed == [scan_uuid]
    assert list((tmp_path / "scans").iterdir()) == [tmp_path / "scans" / INCOMING_DIR]


def test_record_update_is_atomic_and_keeps_images(tmp_path: Path) -> None:
    store = ScanStore(tmp_path)
    store.prepare()
    record = make_record()
    store.write_scan(record, make_images())
    changed = record.model_copy(update={"scan": record.scan.model_copy(update={"qc_comment": "looked at"})})
    store.update_record(changed)
    assert store.read_record(record.scan.uuid).scan.qc_comment == "looked at"
    names = sorted(p.name for p in store.scan_dir(record.scan.uuid).iterdir())
    assert names == sorted([f"scan_{c}.png" for c in CAMERAS] + [RECORD_FILE])  # no temp file left behind


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with tmpfs(tmp_path / "small", "400k") as mount_point:
        yield mount_point


def test_full_disk_gives_a_clear_error_and_keeps_stored_scans(small_disk: Path) -> None:
    store = ScanStore(small_disk)
    store.prepare()
    first = make_record()
    store.write_scan(first, make_images())
    stored = {p.name: p.read_bytes() for p in store.scan_dir(first.scan.uuid).iterdir()}
    big = make_images(height=300, width=400, seed=3)  # noise does not compress: ~600 kB, more than is free
    second = make_record()
    with pytest.raises(StoreError, match="disk full"):
        store.write_scan(second, big)
    assert not store.scan_dir(second.scan.uuid).exists()
    assert list(store.incoming_dir.iterdir()) == []
    assert {p.name: p.read_bytes() for p in store.scan_dir(first.scan.uuid).iterdir()} == stored
    assert os.statvfs(small_disk).f_bfree > 0  # the failed scan's space was given back
