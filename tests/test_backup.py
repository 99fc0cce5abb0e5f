"""The backup mover: verified moves, a full backup disk, changes during a copy, and SIGKILL at every step."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from amflow_edge.common.scan_layout import INCOMING_DIR
from amflow_edge.storage.backup import BackupError, BackupMover, hash_tree
from tests.mounts import mount_tmpfs

REPO = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
AMSTERDAM = timezone(timedelta(hours=1))
WAIT_S = 30.0


def make_scan(scans: Path, age: timedelta, files: dict[str, bytes] | None = None) -> str:
    """A scan directory as the store writes it: images and scan.json with an ISO 8601 'created' with offset."""
    name = str(uuid.uuid1())
    directory = scans / name
    directory.mkdir(parents=True)
    created = (NOW - age).astimezone(AMSTERDAM).isoformat(timespec="microseconds")
    record = {"scan": {"uuid": name, "created": created}, "station": {"station_id": "test"}}
    contents = {"scan.json": json.dumps(record).encode()}
    contents.update(files if files is not None else {f"scan_cam0{i}.png": os.urandom(20_000 + i) for i in range(1, 6)})
    for rel, data in contents.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_bytes(data)
    return name


def digest(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


class Marks:
    """mark_backed_up as the station would implement it; also checks the original still exists when called."""

    def __init__(self, scans: Path) -> None:
        self.scans = scans
        self.calls: list[tuple[str, Path]] = []

    def __call__(self, name: str, path: Path) -> None:
        assert (self.scans / name).is_dir(), "mark_backed_up must come before the original is deleted"
        assert (path / "scan.json").is_file(), "mark_backed_up must come after the copy is in place"
        self.calls.append((name, path))


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    scans, backup = tmp_path / "data" / "scans", tmp_path / "backup"
    scans.mkdir(parents=True)
    backup.mkdir()
    return scans, backup


def leftovers(scans: Path, backup: Path) -> list[Path]:
    return [p for d in (scans / INCOMING_DIR, backup / INCOMING_DIR) if d.is_dir() for p in d.iterdir()]


def test_moves_old_eligible_scans_oldest_first_verified(dirs: tuple[Path, Path]) -> None:
    scans, backup = dirs
    newer = make_scan(scans, timedelta(days=2))
    older = make_scan(
        scans,
        timedelta(days=3),
        files={"scan_cam01.png": os.urandom(50_000), "overlays/overlay_cam01.png": os.urandom(7_000)},
    )
    not_eligible = make_scan(scans, timedelta(days=5))
    young = make_scan(scans, timedelta(hours=1))
    expected = {name: digest(scans / name) for name in (newer, older)}
    marks = Marks(scans)

    mover = BackupMover(scans, backup, min_age_s=86400, eligible=lambda n: n != not_eligible, mark_backed_up=marks)
    assert mover.run_once(NOW) == [older, newer]
    assert marks.calls == [(older, backup / older), (newer, backup / newer)]
    for name, files in expected.items():
        assert digest(backup / name) == files
        assert not (scans / name).exists()
    assert {p.name for p in scans.iterdir() if p.name != INCOMING_DIR} == {not_eligible, young}
    assert leftovers(scans, backup) == []
    assert mover.run_once(NOW) == []


def test_backup_on_another_file_system(tmp_path: Path) -> None:
    """The usual case: a USB disk or NAS, where rename cannot move a directory; here a tmpfs."""
    scans = tmp_path / "scans"
    scans.mkdir()
    backup = tmp_path / "usb"
    mount_tmpfs(backup, "8m")
    try:
        assert os.stat(scans).st_dev != os.stat(backup).st_dev
        name = make_scan(scans, timedelta(days=2))
        files = digest(scans / name)
        marks = Marks(scans)
        assert BackupMover(scans, backup, 86400, lambda n: True, marks).run_once(NOW) == [name]
        assert digest(backup / name) == files and not (scans / name).exists()
    finally:
        subprocess.run(["umount", "-l", str(backup)], check=False)


@pytest.mark.parametrize(
    "files",
    [
        pytest.param({"big.png": os.urandom(2 * 1024 * 1024)}, id="caught-before-copying"),
        # 300 files of 3000 bytes are 0.9 MB, under the 1 MiB free, but take 300 4-KiB pages: ENOSPC mid-copy.
        pytest.param({f"tile_{i:03d}.png": os.urandom(3000) for i in range(300)}, id="disk-fills-mid-copy"),
    ],
)
def test_a_full_backup_disk_is_a_clear_error_and_the_original_stays(tmp_path: Path, files: dict[str, bytes]) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    backup = tmp_path / "full"
    mount_tmpfs(backup, "1m")
    try:
        name = make_scan(scans, timedelta(days=2), files=files)
        before = digest(scans / name)
        marks = Marks(scans)
        mover = BackupMover(scans, backup, 86400, lambda n: True, marks)
        with pytest.raises(BackupError) as caught:
            mover.run_once(NOW)
        message = str(caught.value)
        assert "full" in message and str(backup) in message and name in message
        assert digest(scans / name) == before
        assert marks.calls == []
        assert not (backup / name).exists() and leftovers(scans, backup) == []
    finally:
        subprocess.run(["umount", "-l", str(backup)], check=False)


def test_a_missing_backup_directory_is_reported_not_created(dirs: tuple[Path, Path]) -> None:
    scans, backup = dirs
    make_scan(scans, timedelta(days=2))
    mover = BackupMover(scans, backup / "not-mounted", 0, lambda n: True, Marks(scans))
    with pytest.raises(BackupError, match="not-mounted does not exist: mount the backup disk"):
        mover.run_once(NOW)
    with pytest.raises(BackupError):
        mover.recover()
    assert not (backup / "not-mounted").exists()


def test_a_scan_changed_during_the_copy_is_left_for_the_next_round(dirs: tuple[Path, Path]) -> None:
    scans, backup = dirs
    name = make_scan(scans, timedelta(days=2))

    def operator_decides(step: str, what: str) -> None:
        if step == "copied":  # scan.json rewritten as ScanStore.update_record does: temp file + rename
            record = scans / name / "scan.json"
            temporary = record.with_name(".scan.tmp.json")
            temporary.write_bytes(record.read_bytes().replace(b'"test"', b'"test", "decided": true'))
            os.replace(temporary, record)

    marks = Marks(scans)
    mover = BackupMover(scans, backup, 86400, lambda n: True, marks, on_step=operator_decides)
    assert mover.run_once(NOW) == []
    assert (scans / name).is_dir() and not (backup / name).exists() and marks.calls == []
    assert leftovers(scans, backup) == []

    current = digest(scans / name)
    assert BackupMover(scans, backup, 86400, lambda n: True, marks).run_once(NOW) == [name]
    assert digest(backup / name) == current
    assert b"decided" in (backup / name / "scan.json").read_bytes()


def test_a_copy_that_does_not_verify_is_removed_and_the_original_kept(dirs: tuple[Path, Path]) -> None:
    scans, backup = dirs
    name = make_scan(scans, timedelta(days=2))
    before = digest(scans / name)

    def bit_rot(step: str, what: str) -> None:
        if step == "copied":
            victim = backup / INCOMING_DIR / name / "scan_cam03.png"
            data = bytearray(victim.read_bytes())
            data[100] ^= 0x01
            victim.write_bytes(bytes(data))

    marks = Marks(scans)
    with pytest.raises(BackupError, match=r"does not match the original \(scan_cam03.png\)"):
        BackupMover(scans, backup, 86400, lambda n: True, marks, on_step=bit_rot).run_once(NOW)
    assert digest(scans / name) == before and marks.calls == []
    assert not (backup / name).exists() and leftovers(scans, backup) == []


def test_scans_without_a_readable_age_are_not_moved(dirs: tuple[Path, Path]) -> None:
    scans, backup = dirs
    for record in (None, b"{}", b'{"scan": {"created": "2020-01-01T10:00:00"}}', b'{"scan": {"created": "soon"}}'):
        name = make_scan(scans, timedelta(days=400))
        if record is None:
            (scans / name / "scan.json").unlink()
        else:
            (scans / name / "scan.json").write_bytes(record)
    assert BackupMover(scans, backup, 0, lambda n: True, Marks(scans)).run_once(NOW) == []
    assert len([p for p in scans.iterdir() if p.name != INCOMING_DIR]) == 4


def test_recover_cleans_up_and_finishes_or_undoes_interrupted_moves(dirs: tuple[Path, Path]) -> None:
    scans, backup = dirs
    identical = make_scan(scans, timedelta(days=2))
    differing = make_scan(scans, timedelta(days=2))
    half = make_scan(scans, timedelta(days=2))
    originals = {name: digest(scans / name) for name in (identical, differing, half)}
    # The states a crash leaves: a finished copy with the original still there, a copy that
    # differs, a half copy in .incoming, an original already renamed away for deletion.
    subprocess.run(["cp", "-a", str(scans / identical), str(backup / identical)], check=True)
    subprocess.run(["cp", "-a", str(scans / differing), str(backup / differing)], check=True)
    (backup / differing / "scan_cam02.png").write_bytes(b"truncated")
    (backup / INCOMING_DIR / half).mkdir(parents=True)
    (backup / INCOMING_DIR / half / "scan_cam01.png").write_bytes(b"half")
    trashed = str(uuid.uuid1())
    (scans / INCOMING_DIR / f"deleted-{trashed}").mkdir(parents=True)
    being_written = scans / INCOMING_DIR / str(uuid.uuid1())  # ScanStore's, not the mover's: left alone
    being_written.mkdir()

    marks = Marks(scans)
    mover = BackupMover(scans, backup, 86400, lambda n: True, marks)
    report = mover.recover()
    assert report.completed == [identical]
    assert report.removed_bad_copies == [differing]
    assert report.removed_partial_copies == [half]
    assert report.removed_discarded_originals == [trashed]
    assert marks.calls == [(identical, backup / identical)]
    assert not (scans / identical).exists() and digest(backup / identical) == originals[identical]
    assert digest(scans / differing) == originals[differing] and not (backup / differing).exists()
    assert list((scans / INCOMING_DIR).iterdir()) == [being_written]
    assert list((backup / INCOMING_DIR).iterdir()) == []

    assert sorted(mover.run_once(NOW)) == sorted([differing, half])
    for name, files in originals.items():
        assert digest(backup / name) == files and not (scans / name).exists()


# --- killed mid-move ---------------------------------------------------------------------

CHILD = r"""
import os, signal, sys
from pathlib import Path
from amflow_edge.storage.backup import BackupMover

scans, backup, marks, kill_step, kill_at = sys.argv[1:6]
seen = 0

def on_step(step, what):
    global seen
    if step == kill_step:
        seen += 1
        if seen == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

def mark(name, path):
    with open(marks, "a") as fh:
        fh.write(f"{name}\t{path}\n")
        fh.flush()
        os.fsync(fh.fileno())

mover = BackupMover(Path(scans), Path(backup), 0, lambda name: True, mark, on_step=on_step)
mover.recover()
mover.run_once()
"""


def run_child(scans: Path, backup: Path, marks: Path, step: str = "-", at: int = 0) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, str(scans), str(backup), str(marks), step, str(at)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def assert_no_scan_lost(scans: Path, backup: Path, expected: dict[str, dict[str, str]]) -> None:
    """Right after the kill: every scan is whole in at least one of the two places readers look."""
    for name, files in expected.items():
        whole = [d for d in (scans / name, backup / name) if d.is_dir() and digest(d) == files]
        assert whole, f"scan {name} is whole in neither {scans} nor {backup}"


def finish_and_check(scans: Path, backup: Path, marks: Path, expected: dict[str, dict[str, str]]) -> None:
    recorded: list[tuple[str, Path]] = []

    def mark(name: str, path: Path) -> None:
        recorded.append((name, path))

    mover = BackupMover(scans, backup, 0, lambda name: True, mark)
    mover.recover()
    mover.run_once()
    for name, files in expected.items():
        assert digest(backup / name) == files, f"scan {name}: the backup copy is not the original"
        assert not (scans / name).exists(), f"scan {name} is in both places"
    assert leftovers(scans, backup) == []
    child_marks = [tuple(line.split("\t")) for line in marks.read_text().splitlines()] if marks.exists() else []
    marked = {name for name, _ in child_marks} | {name for name, _ in recorded}
    assert marked == set(expected), "every scan moved must be recorded where it went"
    assert all(Path(path) == backup / name for name, path in [*child_marks, *recorded])


@pytest.fixture
def two_scans(dirs: tuple[Path, Path]) -> tuple[Path, Path, dict[str, dict[str, str]]]:
    scans, backup = dirs
    names = [make_scan(scans, timedelta(days=3)), make_scan(scans, timedelta(days=2))]
    return scans, backup, {name: digest(scans / name) for name in names}


@pytest.mark.parametrize(
    ("step", "at"),
    [
        ("file_copied", 2),  # half of the first scan copied
        ("copied", 1),  # copied and fsynced, not verified
        ("verified", 1),
        ("renamed", 1),  # in both places, not recorded
        ("marked", 1),  # in both places, recorded
        ("discarding", 1),  # original renamed out of sight, not yet deleted
        ("file_copied", 8),  # the second scan, half copied, the first one done
        ("marked", 2),
    ],
)
def test_killed_mid_move_ends_with_one_verified_copy(
    two_scans: tuple[Path, Path, dict[str, dict[str, str]]], tmp_path: Path, step: str, at: int
) -> None:
    scans, backup, expected = two_scans
    marks = tmp_path / "marks.tsv"
    child = run_child(scans, backup, marks, step, at)
    _, stderr = child.communicate(timeout=WAIT_S)
    assert child.returncode == -signal.SIGKILL, f"the child was not killed at {step} #{at}: {stderr.decode()}"
    assert_no_scan_lost(scans, backup, expected)
    finish_and_check(scans, backup, marks, expected)


def test_killed_from_outside_during_a_large_file_copy(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    scans, backup = dirs
    name = make_scan(scans, timedelta(days=2), files={"big.png": os.urandom(64 * 1024 * 1024)})
    expected = {name: digest(scans / name)}
    marks = tmp_path / "marks.tsv"
    child = run_child(scans, backup, marks)
    target = backup / INCOMING_DIR / name / "big.png"
    deadline = time.monotonic() + WAIT_S
    copied = 0
    while child.poll() is None and time.monotonic() < deadline:  # busy: the copy takes a few ms
        copied = target.stat().st_size if target.exists() else 0
        if copied >= 1024 * 1024:
            break
    child.send_signal(signal.SIGKILL)
    child.communicate(timeout=WAIT_S)
    assert child.returncode == -signal.SIGKILL, "the child finished before it could be killed"
    assert_no_scan_lost(scans, backup, expected)
    finish_and_check(scans, backup, marks, expected)


def test_hash_tree_names_every_file(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_bytes(b"x")
    (tmp_path / "y").write_bytes(b"y")
    assert hash_tree(tmp_path) == {"a/x": hashlib.sha256(b"x").hexdigest(), "y": hashlib.sha256(b"y").hexdigest()}


def test_the_station_lock_is_held_from_the_last_check_to_the_deletion(dirs: tuple[Path, Path]) -> None:
    scans, backup = dirs
    name = make_scan(scans, timedelta(days=2))
    events: list[str] = []

    class Lock:
        def __init__(self, scan: str) -> None:
            assert scan == name

        def __enter__(self) -> None:
            events.append("locked")

        def __exit__(self, *exc: object) -> None:
            events.append("unlocked")

    def step(what: str, _scan: str) -> None:
        events.append(what)

    def mark(scan: str, path: Path) -> None:
        events.append("mark")

    BackupMover(scans, backup, 0, lambda n: True, mark, hold=Lock, on_step=step).run_once(NOW)
    copying = [e for e in events if e == "file_copied"]
    assert len(copying) == 6 and "locked" not in events[: events.index("verified")]  # the copy runs unlocked
    assert events[events.index("verified") + 1 :] == ["locked", "renamed", "mark", "marked", "discarding", "unlocked"]


def test_the_backup_thread_reports_a_missing_disk_once_and_carries_on(dirs: tuple[Path, Path]) -> None:
    import threading

    from structlog.testing import capture_logs

    scans, backup = dirs
    disk = backup / "usb"
    name = make_scan(scans, timedelta(days=2))
    marks = Marks(scans)
    mover = BackupMover(scans, disk, 0, lambda n: True, marks)
    stop = threading.Event()
    with capture_logs() as logs:
        thread = threading.Thread(target=mover.run, args=(stop, 0.05))
        thread.start()
        try:
            deadline = time.monotonic() + WAIT_S
            while sum(e["event"].startswith("backup failed") for e in logs) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.3)  # several more rounds fail the same way
            disk.mkdir()  # the disk is mounted
            while not (disk / name).is_dir() and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            stop.set()
            thread.join(WAIT_S)
    assert not thread.is_alive()
    failures = [e for e in logs if e["event"].startswith("backup failed")]
    assert len(failures) == 1 and str(disk) in failures[0]["error"]
    assert any(e["event"] == "backup works again" for e in logs)
    assert marks.calls == [(name, disk / name)] and not (scans / name).exists()
