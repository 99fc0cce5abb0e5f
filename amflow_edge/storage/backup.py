"""Moving scans to a backup disk so that, whatever happens, each scan exists whole somewhere.

A move is copy, verify, publish, record, and only then delete, because the backup disk is
often another file system (a USB disk, a NAS mount) where rename cannot be used:

1. copy <scans>/<uuid>/ into <backup>/.incoming/<uuid>/, hashing what is read (SHA-256);
   fsync every file and directory;
2. read the copy back from the disk (its pages dropped from the cache first) and compare
   every file's hash with the original's;
3. rename it to <backup>/<uuid> (atomic: same file system) and fsync <backup>;
4. mark_backed_up(uuid, path): the station records where the scan now is;
5. delete the original: rename it into <scans>/.incoming/deleted-<uuid> (it disappears from
   the scans directory in one step), then remove it.

A crash (SIGKILL, power cut) at any point leaves one of: a half copy in <backup>/.incoming
(removed by recover(), the original intact), the scan in both places (recover() verifies the
copy again: identical → record and delete the original; different → remove the copy), or an
original in <scans>/.incoming/deleted-… that is already backed up and recorded (removed).
No state leaves a scan only half-present in both places.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import threading
import time
import uuid as uuidlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import structlog

from amflow_edge.common.durable import fsync_dir
from amflow_edge.common.scan_layout import INCOMING_DIR, RECORD_FILE

log = structlog.get_logger(__name__)

DISCARD_PREFIX = "deleted-"
CHUNK_BYTES = 1 << 20

Step = Callable[[str, str], None]


class BackupError(RuntimeError):
    """A scan could not be moved; the message names the path and the fix. The original is untouched."""


def is_scan_name(name: str) -> bool:
    """Only canonical UUID directories are scans; anything else (lost+found, .incoming) is never touched."""
    try:
        return str(uuidlib.UUID(name)) == name
    except ValueError:
        return False


def scan_created(directory: Path) -> datetime:
    """The scan's 'created' time from its scan.json (ISO 8601 with offset); ValueError says what is wrong."""
    path = directory / RECORD_FILE
    try:
        created = json.loads(path.read_bytes())["scan"]["created"]
        moment = datetime.fromisoformat(created)
    except FileNotFoundError:
        raise ValueError(f"{path} is missing") from None
    except OSError as exc:
        raise ValueError(f"{path} cannot be read: {exc.strerror}") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path} has no scan.created ({type(exc).__name__}: {exc})") from None
    except ValueError as exc:
        raise ValueError(f"{path}: scan.created is not ISO 8601 ({exc})") from None
    if moment.tzinfo is None:
        raise ValueError(f"{path}: scan.created {created!r} has no UTC offset")
    return moment


def discard_scan(scans_dir: Path, name: str, before_delete: Callable[[], None] | None = None) -> None:
    """Remove a scan directory so that no reader ever sees part of it: one rename out of sight, then delete.

    The rename target is inside <scans>/.incoming, which ScanStore.prepare() and recover()
    empty at start, so a crash during the delete leaves nothing a reader would take for a scan.
    """
    incoming = scans_dir / INCOMING_DIR
    incoming.mkdir(exist_ok=True)
    trash = incoming / f"{DISCARD_PREFIX}{name}"
    if trash.exists():
        shutil.rmtree(trash)
    os.rename(scans_dir / name, trash)
    fsync_dir(scans_dir)
    if before_delete is not None:
        before_delete()
    shutil.rmtree(trash)


def _files(root: Path) -> Iterator[str]:
    """Relative paths of every regular file below root, sorted, so two trees compare name by name."""
    found = []
    for directory, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            found.append(os.path.relpath(os.path.join(directory, name), root))
    return iter(sorted(found))


def hash_file(path: Path, drop_cache: bool = False) -> str:
    """SHA-256 of a file; drop_cache reads it from the disk rather than from pages we just wrote."""
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        if drop_cache:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        while chunk := os.read(fd, CHUNK_BYTES):
            digest.update(chunk)
    finally:
        os.close(fd)
    return digest.hexdigest()


def hash_tree(root: Path, drop_cache: bool = False) -> dict[str, str]:
    return {rel: hash_file(root / rel, drop_cache) for rel in _files(root)}


def _snapshot(root: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime, inode) of every file: cheap proof that nothing changed since the copy started."""
    out = {}
    for rel in _files(root):
        st = os.stat(root / rel)
        out[rel] = (st.st_size, st.st_mtime_ns, st.st_ino)
    return out


@dataclass
class Recovery:
    """What recover() found and did after a crash."""

    removed_partial_copies: list[str] = field(default_factory=list)
    removed_discarded_originals: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    removed_bad_copies: list[str] = field(default_factory=list)


class BackupMover:
    def __init__(
        self,
        scans_dir: Path,
        backup_dir: Path,
        min_age_s: float,
        eligible: Callable[[str], bool],
        mark_backed_up: Callable[[str, Path], None],
        *,
        hold: Callable[[str], AbstractContextManager[object]] | None = None,
        on_step: Step | None = None,
    ) -> None:
        """eligible(uuid): the station is done with the scan (inspected, decided). mark_backed_up(uuid, path):
        record the new place; called before the original is deleted and again after a crash, so it must be
        idempotent. hold(uuid): a context in which the station does not change the scan (its scan.json lock),
        held from the last change check to the deletion. on_step(step, what): test hook for crash tests."""
        self.scans_dir = Path(scans_dir)
        self.backup_dir = Path(backup_dir)
        self.min_age_s = min_age_s
        self._eligible = eligible
        self._mark = mark_backed_up
        self._hold = hold if hold is not None else (lambda _uuid: contextlib.nullcontext())
        self._on_step = on_step
        self._undated: set[str] = set()

    @property
    def staging_dir(self) -> Path:
        return self.backup_dir / INCOMING_DIR

    def _step(self, step: str, what: str) -> None:
        if self._on_step is not None:
            self._on_step(step, what)

    def _check_backup_dir(self) -> None:
        if not self.backup_dir.is_dir():
            raise BackupError(
                f"backup directory {self.backup_dir} does not exist: mount the backup disk and create it "
                f"(install -d -o amflow-edge -g amflow-edge {self.backup_dir}), or unset backup.path; "
                "scans stay on the data root meanwhile"
            )

    # --- after a crash ------------------------------------------------------------------

    def recover(self) -> Recovery:
        """Finish or undo what a crash interrupted; run before the first run_once()."""
        self._check_backup_dir()
        report = Recovery()
        if self.staging_dir.is_dir():
            for leftover in sorted(self.staging_dir.iterdir()):
                _remove(leftover)
                report.removed_partial_copies.append(leftover.name)
        scans_incoming = self.scans_dir / INCOMING_DIR
        if scans_incoming.is_dir():
            for leftover in sorted(scans_incoming.iterdir()):
                if leftover.name.startswith(DISCARD_PREFIX):
                    _remove(leftover)
                    report.removed_discarded_originals.append(leftover.name.removeprefix(DISCARD_PREFIX))
        for name in sorted(self._scan_names(self.scans_dir) & self._scan_names(self.backup_dir)):
            if self._settle(name):
                report.completed.append(name)
            else:
                report.removed_bad_copies.append(name)
        if any(vars(report).values()):
            log.warning("backup: finished or undid moves a crash interrupted", **vars(report))
        return report

    def _settle(self, name: str) -> bool:
        """A scan in both places: keep the copy and delete the original only if they are identical."""
        original, copy = self.scans_dir / name, self.backup_dir / name
        with self._hold(name):
            if hash_tree(original) == hash_tree(copy, drop_cache=True):
                self._mark(name, copy)
                self._step("marked", name)
                discard_scan(self.scans_dir, name, lambda: self._step("discarding", name))
                return True
        log.error(
            "backup copy differs from the original; removing the copy, the original is kept", scan=name, copy=str(copy)
        )
        self.staging_dir.mkdir(exist_ok=True)
        bad = self.staging_dir / name
        _remove(bad)
        os.rename(copy, bad)
        fsync_dir(self.backup_dir)
        _remove(bad)
        return False

    # --- normal operation ---------------------------------------------------------------

    @staticmethod
    def _scan_names(directory: Path) -> set[str]:
        try:
            return {p.name for p in directory.iterdir() if is_scan_name(p.name) and p.is_dir()}
        except FileNotFoundError:
            return set()

    def candidates(self, now: datetime | None = None) -> list[str]:
        """Scans old enough and eligible, oldest first."""
        now = now or datetime.now(UTC)
        dated: list[tuple[datetime, str]] = []
        for name in self._scan_names(self.scans_dir):
            try:
                created = scan_created(self.scans_dir / name)
            except ValueError as exc:
                if name not in self._undated:
                    self._undated.add(name)
                    log.warning("scan not backed up: its age is unknown", scan=name, reason=str(exc))
                continue
            if (now - created).total_seconds() >= self.min_age_s:
                dated.append((created, name))
        return [name for _, name in sorted(dated) if self._eligible(name)]

    def run_once(self, now: datetime | None = None, stop: threading.Event | None = None) -> list[str]:
        """Move every candidate; returns the uuids moved. Raises BackupError when the backup disk cannot take them."""
        self._check_backup_dir()
        moved = []
        for name in self.candidates(now):
            if stop is not None and stop.is_set():
                break
            if (self.backup_dir / name).exists():
                if self._settle(name):
                    moved.append(name)
                continue
            if self.move(name) is not None:
                moved.append(name)
        return moved

    def move(self, name: str) -> Path | None:
        """Move one scan; returns its new path, or None when it changed during the copy (tried again next round)."""
        original, staging, final = self.scans_dir / name, self.staging_dir / name, self.backup_dir / name
        started = time.monotonic()
        try:
            self.staging_dir.mkdir(exist_ok=True)
            _remove(staging)
            before = _snapshot(original)
            self._check_room(name, original, before)
            hashes = self._copy_tree(original, staging, name)
            self._step("copied", name)
            copied = hash_tree(staging, drop_cache=True)
        except OSError as exc:
            _remove(staging)
            if exc.filename is not None and str(exc.filename).startswith(str(original)):
                log.warning("scan could not be read for backup; tried again next round", scan=name, error=str(exc))
                return None
            raise BackupError(self._explain(exc, name)) from exc
        except BaseException:
            _remove(staging)
            raise
        if copied != hashes:
            _remove(staging)
            differing = sorted(rel for rel in set(hashes) | set(copied) if hashes.get(rel) != copied.get(rel))
            raise BackupError(
                f"the copy of scan {name} in {staging} does not match the original ({', '.join(differing[:5])}): "
                f"the backup disk may be failing; check it (dmesg, smartctl). The scan stays in {self.scans_dir}"
            )
        self._step("verified", name)
        with self._hold(name):
            if _snapshot(original) != before:
                _remove(staging)
                log.info("scan changed while it was copied; it is moved next round", scan=name)
                return None
            try:
                os.rename(staging, final)
                fsync_dir(self.backup_dir)
            except OSError as exc:
                _remove(staging)
                raise BackupError(self._explain(exc, name)) from exc
            self._step("renamed", name)
            self._mark(name, final)
            self._step("marked", name)
            discard_scan(self.scans_dir, name, lambda: self._step("discarding", name))
        log.info(
            "scan moved to backup",
            scan=name,
            path=str(final),
            files=len(hashes),
            bytes=sum(size for size, _, _ in before.values()),
            seconds=round(time.monotonic() - started, 2),
        )
        return final

    def _check_room(self, name: str, original: Path, snapshot: dict[str, tuple[int, int, int]]) -> None:
        needed = sum(size for size, _, _ in snapshot.values())
        st = os.statvfs(self.backup_dir)
        free = st.f_bavail * st.f_frsize
        if needed > free:
            raise BackupError(
                f"backup disk full: {self.backup_dir} has {free} bytes free, scan {name} needs {needed}; "
                f"free space there or give backup.path a bigger disk. The scan stays in {self.scans_dir}"
            )

    def _copy_tree(self, source: Path, target: Path, name: str) -> dict[str, str]:
        """Copy every file durably; returns the SHA-256 of each file as read from the source."""
        hashes: dict[str, str] = {}
        target.mkdir()
        made = {target}
        for rel in _files(source):
            destination = target / rel
            if destination.parent not in made:
                destination.parent.mkdir(parents=True, exist_ok=True)
                made.add(destination.parent)
            hashes[rel] = _copy_file(source / rel, destination)
            self._step("file_copied", f"{name}/{rel}")
        for directory in sorted(made, key=lambda p: len(p.parts), reverse=True):
            fsync_dir(directory)
        fsync_dir(self.staging_dir)
        return hashes

    def _explain(self, exc: OSError, name: str) -> str:
        where = exc.filename or self.backup_dir
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return (
                f"backup disk full while copying scan {name} to {where}: free space in {self.backup_dir} "
                f"or give backup.path a bigger disk. The scan stays in {self.scans_dir}"
            )
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            return (
                f"no permission to write {where}: make {self.backup_dir} writable by the service user "
                "(and listed in ReadWritePaths= of the unit). The scan stays in the data root"
            )
        return f"cannot write {where}: {exc.strerror or exc}; check the backup disk. The scan stays in the data root"

    def run(self, stop: threading.Event, interval_s: float) -> None:
        """The backup thread: recover once, then a round every interval_s; errors are logged once per cause."""
        recovered = False
        last_error: str | None = None
        while True:
            try:
                if not recovered:
                    self.recover()
                    recovered = True
                self.run_once(stop=stop)
                if last_error is not None:
                    log.info("backup works again", backup_dir=str(self.backup_dir))
                    last_error = None
            except BackupError as exc:
                if str(exc) != last_error:
                    log.error("backup failed; scans stay on the data root", error=str(exc))
                    last_error = str(exc)
            except Exception:
                log.exception("backup round failed; tried again next round")
            if stop.wait(interval_s):
                return


def _copy_file(source: Path, destination: Path) -> str:
    digest = hashlib.sha256()
    src = os.open(source, os.O_RDONLY)
    try:
        dst = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            while chunk := os.read(src, CHUNK_BYTES):
                digest.update(chunk)
                view = memoryview(chunk)
                while view:
                    view = view[os.write(dst, view) :]
            os.fsync(dst)
        finally:
            os.close(dst)
        st = os.fstat(src)
    finally:
        os.close(src)
    os.utime(destination, ns=(st.st_atime_ns, st.st_mtime_ns))
    return digest.hexdigest()


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()
