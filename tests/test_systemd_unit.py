"""The unit, sysusers and tmpfiles files: what they promise, and systemd's own tools' verdict on them.

systemd does not run in CI containers, but its offline tools do: `systemd-analyze verify`
and `security --offline` read unit files, `systemd-sysusers --root` and `systemd-tmpfiles
--root` apply their configs to a directory. A check that cannot run here is skipped with the
reason, never passed silently. MemoryDenyWriteExecute= and SystemCallFilter= are checked by
running the station's native stack under the seccomp filters systemd installs for them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "amflow-edge.service"
SYSUSERS = REPO / "systemd" / "amflow-edge.sysusers.conf"
TMPFILES = REPO / "systemd" / "amflow-edge.tmpfiles.conf"
EXEC = "/opt/amflow-edge/venv/bin/amflow-edge"

# What `systemd-analyze security` still counts against the unit, and why it stays (README).
ACCEPTED_EXPOSURES = {
    "PrivateNetwork=": "the station talks MQTT to the plant broker and GigE Vision to cameras",
    "RestrictAddressFamilies=~AF_(INET|INET6)": "MQTT over TCP, GigE Vision over UDP",
    "RestrictAddressFamilies=~AF_UNIX": "sd_notify and the journal are Unix sockets",
    "RestrictAddressFamilies=~AF_NETLINK": "libusb hot-plug events and network interface enumeration for GigE",
    "PrivateDevices=": "cameras (USB), button boxes (input) and GPIO chips are devices; DevicePolicy=closed limits them",
    "DeviceAllow=": "exactly usb_device rw, input r, gpiochip rw (and rtc r, added by ProtectClock=)",
    "IPAddressDeny=": "the broker's address is site-specific: add IPAddressAllow= in a drop-in per plant",
    "PrivateUsers=": "device access goes through the input and gpio groups of the host's user database",
    "ProcSubset=": "numpy, OpenBLAS and OpenMP read /proc/cpuinfo and /proc/meminfo",
    "RootDirectory=/RootImage=": "the venv lives in /opt and uses the host's Python and libraries",
    "UMask=": "0027: scans are group-readable for the plant's collection tools (group amflow-edge)",
}
EXPOSURE_LIMIT = 1.5  # the score measured when the unit was written; less is welcome, more is a regression


def unit_settings(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment; keys may repeat, as in systemd."""
    settings = []
    section = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        settings.append((section, key.strip(), value.strip()))
    return settings


def values(key: str, section: str = "Service") -> list[str]:
    return [v for s, k, v in unit_settings(UNIT.read_text()) if s == section and k == key]


def value(key: str, section: str = "Service") -> str:
    found = values(key, section)
    assert len(found) == 1, f"{key}= in [{section}]: expected exactly one, found {found}"
    return found[0]


def test_service_lifecycle_settings() -> None:
    assert value("Type") == "notify" and value("NotifyAccess") == "main"
    assert value("ExecStart") == f"{EXEC} run --config /etc/amflow-edge/station.toml"
    assert value("WatchdogSec") == "30s"
    assert value("Restart") == "on-failure"
    assert value("RestartPreventExitStatus") == "2"  # EXIT_CONFIG in amflow_edge/cli/common.py
    assert value("StartLimitIntervalSec", "Unit") and value("StartLimitBurst", "Unit")
    assert value("TimeoutStartSec") == "120s" and value("TimeoutStopSec") == "60s"
    assert value("KillMode") == "mixed"
    assert value("User") == "amflow-edge" and value("Group") == "amflow-edge"
    assert value("StateDirectory") == "amflow-edge"
    assert values("LoadCredential") == [
        "mqtt_password:/etc/amflow-edge/mqtt_password",
        "http_pin:/etc/amflow-edge/http_pin",
    ]
    assert value("WantedBy", "Install") == "multi-user.target"


def test_exit_code_for_config_errors_matches_the_cli() -> None:
    from amflow_edge.cli.common import EXIT_CONFIG

    assert value("RestartPreventExitStatus") == str(EXIT_CONFIG)


def test_sandbox_settings() -> None:
    expected = {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "ProtectClock": "yes",
        "ProtectHostname": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "RestrictSUIDSGID": "yes",
        "LockPersonality": "yes",
        "MemoryDenyWriteExecute": "yes",
        "SystemCallArchitectures": "native",
        "CapabilityBoundingSet": "",
        "AmbientCapabilities": "",
        "DevicePolicy": "closed",
        "UMask": "0027",
        "SystemCallErrorNumber": "EPERM",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6 AF_NETLINK",
    }
    assert {key: value(key) for key in expected} == expected
    assert values("ReadWritePaths") == ["/data", "-/backup"]
    assert values("SystemCallFilter") == ["@system-service", "~@privileged @resources"]
    assert values("DeviceAllow") == ["char-usb_device rw", "char-input r", "char-gpiochip rw"]
    assert values("PrivateDevices") == []  # it would hide the cameras


def test_paths_agree_with_the_other_files() -> None:
    tmpfiles = TMPFILES.read_text()
    assert re.search(r"^d /data/scans\s+0750 amflow-edge amflow-edge", tmpfiles, re.M)
    assert re.search(r"^d /data/references\s+0750 amflow-edge amflow-edge", tmpfiles, re.M)
    assert re.search(r"^d /var/lib/amflow-edge\s+0750 amflow-edge amflow-edge", tmpfiles, re.M)
    assert not re.search(r"^[^#].*/backup", tmpfiles, re.M), "tmpfiles must not create the backup mount point"
    assert "/data /var/lib/amflow-edge" in value("RequiresMountsFor", "Unit")
    example = (REPO / "config" / "station.example.toml").read_text()
    assert 'data_root = "/data"' in example and 'state_dir = "/var/lib/amflow-edge"' in example
    assert 'password_credential = "mqtt_password"' in example


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed here (apt-get install systemd); the unit files were not checked by it")
    return path


def staged_root(tmp_path: Path, unit_text: str) -> Path:
    """A file-system root with the unit installed, its ExecStart present, and the system's units for dependencies."""
    root = tmp_path / "root"
    system_units = Path("/usr/lib/systemd/system")
    if not system_units.is_dir():
        pytest.skip(f"{system_units} is missing: systemd-analyze verify needs the system's targets")
    shutil.copytree(system_units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "lib").symlink_to("usr/lib")
    binary = root / EXEC.lstrip("/")
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "etc/systemd/system/amflow-edge.service").write_text(unit_text)
    return root


def verify(tmp_path: Path, unit_text: str) -> str:
    analyze = _tool("systemd-analyze")
    root = staged_root(tmp_path, unit_text)
    result = subprocess.run(
        [analyze, "verify", f"--root={root}", "amflow-edge.service"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (result.stdout + result.stderr).strip() + ("" if result.returncode == 0 else f"\n(exit {result.returncode})")


def test_systemd_analyze_verify_finds_nothing(tmp_path: Path) -> None:
    assert verify(tmp_path, UNIT.read_text()) == ""


def test_systemd_analyze_verify_would_catch_a_mistake(tmp_path: Path) -> None:
    """verify exits 0 even for unknown keys; the test above relies on its output, so prove the output appears."""
    broken = UNIT.read_text().replace("ProtectSystem=strict", "ProtectSystem=stricter\nProtectSytem=strict")
    output = verify(tmp_path, broken)
    assert "stricter" in output and "ProtectSytem" in output


def security_report(unit_path: Path) -> tuple[float, set[str]]:
    analyze = _tool("systemd-analyze")
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(unit_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SYSTEMD_COLORS": "0"},
    )
    if "--offline" in result.stderr and result.returncode != 0:
        pytest.skip(f"this systemd-analyze cannot review offline: {result.stderr.strip()}")
    match = re.search(r"Overall exposure level for amflow-edge\.service: (\d+\.\d)", result.stdout)
    assert match, f"no exposure score in: {result.stdout}\n{result.stderr}"
    failing = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("✗")}
    return float(match.group(1)), failing


def test_security_exposure(tmp_path: Path) -> None:
    unit = tmp_path / "amflow-edge.service"
    shutil.copy(UNIT, unit)
    score, failing = security_report(unit)
    print(f"systemd-analyze security --offline=true: exposure {score}; remaining: {sorted(failing)}")
    assert failing <= set(ACCEPTED_EXPOSURES), (
        f"new exposures, document or fix them: {failing - set(ACCEPTED_EXPOSURES)}"
    )
    assert score <= EXPOSURE_LIMIT


def test_security_review_notices_a_weaker_unit(tmp_path: Path) -> None:
    unit = tmp_path / "amflow-edge.service"
    unit.write_text(UNIT.read_text().replace("ProtectSystem=strict\n", "").replace("NoNewPrivileges=yes\n", ""))
    score, failing = security_report(unit)
    assert score > EXPOSURE_LIMIT and "NoNewPrivileges=" in failing


def test_sysusers_creates_the_user_and_its_device_groups(tmp_path: Path) -> None:
    sysusers = _tool("systemd-sysusers")
    (tmp_path / "etc").mkdir()
    result = subprocess.run(
        [sysusers, f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    passwd = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines()}
    user = passwd["amflow-edge"]
    assert int(user[2]) < 1000 and user[5] == "/var/lib/amflow-edge" and user[6].endswith("nologin")
    # input and gpio did not exist in this empty root: "m" lines create them rather than fail.
    assert groups["input"][3] == "amflow-edge" and groups["gpio"][3] == "amflow-edge"
    assert "amflow-edge" in groups


def test_tmpfiles_creates_the_directories_with_owner_and_mode(tmp_path: Path) -> None:
    sysusers, tmpfiles = _tool("systemd-sysusers"), _tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --root needs root to hand directories to amflow-edge")
    (tmp_path / "etc").mkdir()
    subprocess.run([sysusers, f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, check=True, timeout=60)
    result = subprocess.run(
        [tmpfiles, f"--root={tmp_path}", "--create", str(TMPFILES)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    uid = int(
        next(
            line for line in (tmp_path / "etc/passwd").read_text().splitlines() if line.startswith("amflow-edge:")
        ).split(":")[2]
    )
    expected = {
        "data/scans": (uid, 0o750),
        "data/references": (uid, 0o750),
        "var/lib/amflow-edge": (uid, 0o750),
        "data": (0, 0o755),
        "etc/amflow-edge": (0, 0o750),
    }
    for rel, (owner, mode) in expected.items():
        st = (tmp_path / rel).stat()
        assert (st.st_uid, st.st_mode & 0o7777) == (owner, mode), rel
    assert not (tmp_path / "backup").exists()


# --- MemoryDenyWriteExecute= and SystemCallFilter= -----------------------------------------

SANDBOX_CHILD = r"""
import ctypes, ctypes.util, errno, mmap, sys
import concurrent.futures, math, multiprocessing

lib = ctypes.CDLL(ctypes.util.find_library("seccomp") or "libseccomp.so.2", use_errno=True)
lib.seccomp_init.restype = ctypes.c_void_p
lib.seccomp_init.argtypes = [ctypes.c_uint32]
lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
lib.seccomp_load.argtypes = [ctypes.c_void_p]
ALLOW, EPERM = 0x7FFF0000, 0x00050000 | errno.EPERM


class Cmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("a", ctypes.c_uint64), ("b", ctypes.c_uint64)]


def memory_deny_write_execute():
    # systemd 252 (src/shared/seccomp-util.c): EPERM for mmap with PROT_WRITE|PROT_EXEC, for
    # mprotect/pkey_mprotect asking for PROT_EXEC, for shmat with SHM_EXEC.
    masked_eq, prot_write, prot_exec, shm_exec = 7, 0x2, 0x4, 0o100000
    ctx = lib.seccomp_init(ALLOW)
    for name, mask in [("mmap", prot_write | prot_exec), ("mprotect", prot_exec), ("pkey_mprotect", prot_exec),
                       ("shmat", shm_exec)]:
        cmp = Cmp(2, masked_eq, mask, mask)
        assert lib.seccomp_rule_add_array(ctx, EPERM, lib.seccomp_syscall_resolve_name(name.encode()), 1,
                                          ctypes.byref(cmp)) == 0, name
    assert lib.seccomp_load(ctx) == 0


def system_call_filter(allowed):
    # SystemCallFilter= allow list with SystemCallErrorNumber=EPERM: everything else fails with EPERM.
    ctx = lib.seccomp_init(EPERM)
    for name in allowed:
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number >= 0:  # names of other architectures resolve to nothing
            assert lib.seccomp_rule_add_array(ctx, ALLOW, number, 0, None) == 0, name
    assert lib.seccomp_load(ctx) == 0


def run():
    out, calibration, mesh, allowed_file = sys.argv[1:5]
    memory_deny_write_execute()
    system_call_filter(open(allowed_file).read().split())
    try:
        mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
        sys.exit("the filter is not active: a writable+executable mapping was allowed")
    except PermissionError:
        pass
    import os
    try:
        os.chroot("/")  # in @privileged: must be refused with EPERM, not kill the process
        sys.exit("the system call filter is not active: chroot was allowed")
    except PermissionError:
        pass

    import numpy, cv2, open3d, trimesh, manifold3d, scipy, paho.mqtt.client, evdev, gpiod, sqlite3
    import pypylon.pylon as pylon
    factory = pylon.TlFactory.GetInstance()  # PYLON_CAMEMU=1: pylon's emulated camera, its real grab engine
    camera = pylon.InstantCamera(factory.CreateDevice(factory.EnumerateDevices()[0]))
    camera.Open()
    camera.StartGrabbingMax(3)
    grabbed = 0
    while camera.IsGrabbing():
        result = camera.RetrieveResult(5000, pylon.TimeoutHandling_ThrowException)
        grabbed += result.GrabSucceeded()
        result.Release()
    camera.Close()
    assert grabbed == 3, grabbed
    callback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p)  # libffi closures
    values = (ctypes.c_int * 3)(3, 1, 2)
    as_int = lambda p: ctypes.cast(p, ctypes.POINTER(ctypes.c_int))[0]
    ctypes.CDLL(None).qsort(values, 3, 4, callback(lambda a, b: as_int(a) - as_int(b)))
    assert list(values) == [1, 2, 3]
    db = sqlite3.connect(out + ".db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (x)")
    db.commit()

    from amflow_edge.cli.main import main
    with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(math.sqrt, 16.0).result() == 4.0  # the inspection worker's way of starting
    assert main(["render", mesh, "--out", out, "--calibration", calibration]) == 0
    assert main(["inspect", out, "--design", mesh, "--calibration", calibration]) == 0
    print("STACK OK")


if __name__ == "__main__":  # the spawned worker imports this file again; it inherits the filters
    run()
"""


def syscall_group(analyze: str, group: str, seen: set[str] | None = None) -> set[str]:
    """A systemd syscall group, nested groups expanded, as this systemd defines it."""
    seen = seen if seen is not None else set()
    seen.add(group)
    result = subprocess.run([analyze, "syscall-filter", group], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    names: set[str] = set()
    for line in result.stdout.splitlines()[1:]:
        item = line.strip()
        if not item or item.startswith("#"):
            continue
        if item.startswith("@"):
            if item not in seen:
                names |= syscall_group(analyze, item, seen)
        else:
            names.add(item)
    return names


def unit_syscall_allow_list(analyze: str) -> set[str]:
    """The allow list the unit's SystemCallFilter= lines produce: the first allows, a '~' line removes."""
    allowed: set[str] = set()
    for index, line in enumerate(values("SystemCallFilter")):
        deny = line.startswith("~")
        groups = set()
        for item in line.removeprefix("~").split():
            groups |= syscall_group(analyze, item) if item.startswith("@") else {item}
        assert not (index == 0 and deny), "the first SystemCallFilter= line is expected to be an allow list"
        allowed = allowed - groups if deny else allowed | groups
    return allowed


def test_the_stack_runs_in_the_units_seccomp_sandbox(tmp_path: Path) -> None:
    """MemoryDenyWriteExecute= and SystemCallFilter= as systemd applies them, around: numpy, OpenCV, open3d
    (Embree), trimesh, SQLite in WAL mode, pylon grabbing from its emulated camera, ctypes callbacks, a spawned
    worker process, and the mock render and the inspection end to end."""
    from ctypes.util import find_library

    from tests.station_files import scaled_rig

    if find_library("seccomp") is None:
        pytest.skip("libseccomp is not installed here; MemoryDenyWriteExecute= and SystemCallFilter= were not tried")
    analyze = _tool("systemd-analyze")
    assert value("MemoryDenyWriteExecute") == "yes" and value("SystemCallErrorNumber") == "EPERM"
    allowed = unit_syscall_allow_list(analyze)
    assert "openat" in allowed and "chroot" not in allowed and "sched_setaffinity" not in allowed
    (tmp_path / "allowed.txt").write_text("\n".join(sorted(allowed)))
    scaled_rig(tmp_path / "calibration")
    mesh = REPO / "config" / "designs" / "pipe_clip_pc16.stl"
    script = tmp_path / "sandbox_child.py"
    script.write_text(SANDBOX_CHILD)
    result = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "scene"),
            str(tmp_path / "calibration"),
            str(mesh),
            str(tmp_path / "allowed.txt"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO), "PYLON_CAMEMU": "1"},
    )
    assert result.returncode == 0 and "STACK OK" in result.stdout, result.stderr[-4000:]
    assert (tmp_path / "scene" / "inspection_report.json").is_file()
