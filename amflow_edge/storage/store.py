"""Atomic scan directories: a reader sees a whole scan in <data_root>/scans/<uuid>/ or nothing.

Files are written into <scans>/.incoming/<uuid>/ on the same filesystem, fsynced, then the
directory is renamed into place and its parent fsynced: rename is the one atomic step a
POSIX filesystem offers, and the fsyncs make the result survive a power cut. Anything left
in .incoming by a crash is half a scan and is removed at start.
"""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import structlog

from amflow_edge.common.durable import fsync_dir, replace_durably, write_durably
from amflow_edge.common.scan_layout import (
    INCOMING_DIR,
    RECORD_FILE,
    REFERENCES_DIR,
    SCANS_DIR,
    reference_image,
    scan_image,
)
from amflow_edge.config.station import CaptureSettings
from amflow_edge.storage.disk import mount_point
from amflow_edge.storage.record import ScanRecord

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
_R = TypeVar("_R")


PNG_STRATEGIES = {
    "default": cv2.IMWRITE_PNG_STRATEGY_DEFAULT,
    "filtered": cv2.IMWRITE_PNG_STRATEGY_FILTERED,
    "huffman_only": cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
    "rle": cv2.IMWRITE_PNG_STRATEGY_RLE,
    "fixed": cv2.IMWRITE_PNG_STRATEGY_FIXED,
}
PNG_FILTERS = {
    "none": cv2.IMWRITE_PNG_FILTER_NONE,
    "sub": cv2.IMWRITE_PNG_FILTER_SUB,
    "up": cv2.IMWRITE_PNG_FILTER_UP,
    "avg": cv2.IMWRITE_PNG_FILTER_AVG,
    "paeth": cv2.IMWRITE_PNG_FILTER_PAETH,
    "fast": cv2.IMWRITE_PNG_FAST_FILTERS,
    "all": cv2.IMWRITE_PNG_ALL_FILTERS,
}


class StoreError(RuntimeError):
    """A scan could not be stored; nothing was left behind and nothing stored before was touched."""


def _explain(exc: OSError, where: Path) -> str:
    if exc.errno == errno.ENOSPC:
        return f"disk full while writing {where}: free space on {mount_point(where)} or move old scans to backup"
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"no permission to write {where}: give the station user write access to the data root"
    return f"cannot write {where}: {exc.strerror}"


class ScanStore:
    def __init__(
        self,
        data_root: Path,
        compression: int = 1,
        strategy: str = "huffman_only",
        png_filter: str = "sub",
        encode_threads: int = 5,
    ) -> None:
        self.scans_dir = Path(data_root) / SCANS_DIR
        self.incoming_dir = self.scans_dir / INCOMING_DIR
        self._png_params = [
            cv2.IMWRITE_PNG_COMPRESSION,
            compression,
            cv2.IMWRITE_PNG_STRATEGY,
            PNG_STRATEGIES[strategy],
            cv2.IMWRITE_PNG_FILTER,
            PNG_FILTERS[png_filter],
        ]
        self._pool = ThreadPoolExecutor(max_workers=encode_threads, thread_name_prefix="png")

    @classmethod
    def from_settings(cls, data_root: Path, capture: CaptureSettings) -> ScanStore:
        return cls(data_root, capture.png_compression, capture.png_strategy, capture.png_filter, capture.encode_threads)

    def prepare(self) -> list[str]:
        """Create the directories and remove half-written scans a crash left; returns what was removed."""
        try:
            self.incoming_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(_explain(exc, self.incoming_dir)) from exc
        removed = []
        for leftover in sorted(self.incoming_dir.iterdir()):
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
            removed.append(leftover.name)
        if removed:
            log.warning("removed half-written scans left by a crash", count=len(removed), uuids=removed)
        return removed

    def scan_dir(self, uuid: str) -> Path:
        return self.scans_dir / uuid

    def _encode(self, image: np.ndarray) -> np.ndarray:
        ok, buffer = cv2.imencode(".png", image, self._png_params)
        if not ok:
            raise StoreError("PNG encoding failed")
        return buffer

    def write_scan(
        self,
        record: ScanRecord,
        images: Mapping[str, np.ndarray],
        before_publish: Callable[[], None] | None = None,
    ) -> Path:
        """Store the images and scan.json of one scan atomically; returns the final directory."""
        uuid = record.scan.uuid
        files: dict[str, np.ndarray | bytes] = {scan_image(name): image for name, image in images.items()}
        files[RECORD_FILE] = record.model_dump_json(indent=2).encode("utf-8")
        return self._publish(self.incoming_dir / uuid, self.scan_dir(uuid), files, before_publish)

    def reference_dir(self, scan_session: str) -> Path:
        return self.scans_dir.parent / REFERENCES_DIR / scan_session

    def latest_references(self, besides: str) -> Path | None:
        """The most recent other session's empty-tray references, if any are stored."""
        parent = self.reference_dir(besides).parent
        others = [p for p in parent.glob("*") if p.name != besides and p.is_dir() and not p.name.startswith(".")]
        return max(others, key=lambda p: p.stat().st_mtime, default=None)

    def adopt_references(self, scan_session: str, source: Path) -> None:
        """The session uses `source`'s references: a link, which fits on a disk too full for five images."""
        link = self.reference_dir(scan_session)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(source.resolve(), target_is_directory=True)
        fsync_dir(link.parent)

    def write_reference(self, scan_session: str, images: Mapping[str, np.ndarray]) -> Path:
        """The empty-tray images of a session, which inspection compares every scan of the session with."""
        final = self.reference_dir(scan_session)
        if final.is_symlink():
            final.unlink()
        elif final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        files = {reference_image(name): image for name, image in images.items()}
        return self._publish(self.incoming_dir / f"reference-{scan_session}", final, files, None)

    def _each(self, work: Callable[[_T], _R], items: list[_T]) -> list[_R]:
        """`work` on every item in the encoding pool; all have finished, failed or not, before the first
        failure is raised, so no thread is still writing into a staging directory that is being removed."""
        futures = [self._pool.submit(work, item) for item in items]
        wait(futures)
        return [future.result() for future in futures]

    def _publish(
        self,
        staging: Path,
        final: Path,
        files: Mapping[str, np.ndarray | bytes],
        before_publish: Callable[[], None] | None,
    ) -> Path:
        if final.exists():
            raise StoreError(f"{final} already exists; refusing to overwrite a stored scan")
        images = {name: data for name, data in files.items() if isinstance(data, np.ndarray)}
        try:
            staging.mkdir()
            buffers = self._each(self._encode, list(images.values()))
            encoded: dict[str, bytes | memoryview] = {
                name: buffer.data for name, buffer in zip(images, buffers, strict=True)
            }
            encoded.update({name: data for name, data in files.items() if isinstance(data, bytes)})
            self._each(lambda item: write_durably(staging / item[0], item[1]), list(encoded.items()))
            fsync_dir(staging)
            if before_publish is not None:
                before_publish()
            os.rename(staging, final)
            fsync_dir(final.parent)
        except OSError as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise StoreError(_explain(exc, staging)) from exc
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    def read_record(self, uuid: str) -> ScanRecord:
        return ScanRecord.model_validate_json((self.scan_dir(uuid) / RECORD_FILE).read_bytes())

    def directory_of(self, record: ScanRecord) -> Path:
        """Where the scan's files are now: the data root, or the backup disk once moved."""
        moved = record.station.backup_path
        return Path(moved) if record.station.is_backed_up and moved else self.scan_dir(record.scan.uuid)

    def update_record(self, record: ScanRecord) -> None:
        """Rewrite scan.json atomically so a reader never sees half a record, wherever the scan is now."""
        path = self.directory_of(record) / RECORD_FILE
        try:
            replace_durably(path, record.model_dump_json(indent=2).encode("utf-8"))
        except OSError as exc:
            raise StoreError(_explain(exc, path)) from exc

    def close(self) -> None:
        self._pool.shutdown(wait=True)
