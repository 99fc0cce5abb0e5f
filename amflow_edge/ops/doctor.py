"""`amflow-edge doctor`: one table that says whether this station can work, and what to fix if not.

The integrator commissioning a station, and the plant's support desk years later, ask the
same questions: is the config right, are the calibrations and designs there, does the broker
take us, are events leaving, is the disk filling, is the clock right, are the cameras there.
Each question is one row; every failing row says what to do. A check never raises: a crash
in one becomes that row's failure, so the table is always complete.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import ssl
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.config.files import file_problems
from amflow_edge.config.loading import ConfigError, read_toml, validate_config
from amflow_edge.config.secrets import DEFAULT_CREDENTIALS_DIR, read_credential
from amflow_edge.config.station import StationConfig
from amflow_edge.drivers.gige_budget import (
    APPLIED_STREAMS_FILE,
    AppliedStreams,
    StreamSettings,
    check_streams,
    plan_link,
    transfer_s,
)
from amflow_edge.inspection.designs import DesignError, DesignLibrary
from amflow_edge.messaging.mqtt import MqttSetupError, diagnose_connection, tls_context
from amflow_edge.messaging.outbox import Outbox
from amflow_edge.ops.calibration_health import calibration_health
from amflow_edge.storage.db import DB_FILE, StationDb
from amflow_edge.storage.disk import DiskGuard, format_bytes, where_on_disk

TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")
SYSTEMD_RUNNING = Path("/run/systemd/system")
STALE_EVENT_S = 300.0


class CheckResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The area checked: config, calibration, designs, broker, outbox, disk, …")
    ok: bool = Field(description="False: the station cannot work as configured (doctor exits non-zero).")
    detail: str = Field(description="What was found, in one or more lines.")
    fix: str | None = Field(default=None, description="What to do about it, when something is wrong or unknown.")
    warning: bool = Field(
        default=False, description="Worth a look but not a failure: could not be verified here, or nearly at a limit."
    )


CameraCheck = Callable[[StationConfig], CheckResult]
StreamReader = Callable[[StationConfig], tuple[dict[str, StreamSettings], dict[str, str]]]
"""What the connected cameras stream with (packet size, delays) per camera name, and why some could not be read."""


def _fail(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name=name, ok=False, detail=detail, fix=fix)


def _warn(name: str, detail: str, fix: str) -> CheckResult:
    return CheckResult(name=name, ok=True, warning=True, detail=detail, fix=fix)


def _ok(name: str, detail: str) -> CheckResult:
    return CheckResult(name=name, ok=True, detail=detail)


# --- config, calibration, designs -------------------------------------------------------


def _file_problems(cfg: StationConfig) -> dict[str, list[str]]:
    """file_problems() by area, so the calibration and designs rows each show their own."""
    areas: dict[str, list[str]] = {"config": [], "calibration": [], "designs": []}
    for problem in file_problems(cfg):
        areas[problem.area].append(problem.text)
    return areas


def check_config(cfg: StationConfig, problems: list[str]) -> CheckResult:
    if problems:
        return _fail(
            "config", "\n".join(problems), "edit the station TOML; `amflow-edge check-config FILE` lists the same"
        )
    return _ok("config", f"station {cfg.station.id}, driver {cfg.rig.driver}, data root {cfg.station.data_root}")


def check_calibration(cfg: StationConfig, problems: list[str]) -> CheckResult:
    if problems:
        return _fail(
            "calibration",
            "\n".join(problems),
            "copy each camera's calibration YAML to the path in [[cameras]] (or recalibrate)",
        )
    health = calibration_health(cfg)
    detail = "\n".join([f"{len(cfg.cameras)} calibrations match their cameras' image size", *health.lines])
    if health.problems:
        return _fail(
            "calibration",
            "\n".join([detail, *health.problems]),
            "recalibrate the cameras named (amflow-edge calibrate capture, then calibrate solve)",
        )
    if health.warnings:
        return _warn(
            "calibration",
            "\n".join([detail, *health.warnings]),
            "calibrate with amflow-edge calibrate to get a commissioning record and drift reference",
        )
    return _ok("calibration", detail)


def check_designs(cfg: StationConfig, problems: list[str]) -> CheckResult:
    if problems:
        return _fail(
            "designs", "\n".join(problems), f"fix {cfg.designs.library} or designs.library in the station TOML"
        )
    try:
        library = DesignLibrary.load(cfg.designs.library)
        library.check_meshes()
    except DesignError as exc:
        return _fail("designs", str(exc), f"replace or remove the listed meshes in {cfg.designs.library}")
    return _ok("designs", f"{len(library)} designs in {cfg.designs.library}, every mesh loads")


# --- broker -------------------------------------------------------------------------------


class NoMqttAnswerError(Exception):
    """The connection (and TLS) worked, but what answered did not speak MQTT v5 to us."""


def mqtt_connect_probe(cfg: StationConfig, timeout_s: float) -> tuple[int, str]:
    """One MQTT v5 CONNECT as the station's user, through paho; returns the CONNACK reason code and its name.

    Its own client id and a clean start, so the probe never takes over or disturbs the
    running station's session. Connection and TLS errors propagate as OSError/SSLError;
    a peer that then does not answer like an MQTT v5 broker raises NoMqttAnswerError.
    """
    import paho.mqtt.client as mqtt

    answer: list[tuple[int, str]] = []
    done = threading.Event()
    client = mqtt.Client(
        callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"{cfg.client_id}-doctor-{os.getpid()}",
        protocol=mqtt.MQTTv5,
    )
    if cfg.mqtt.username is not None:
        password = cfg.mqtt.password.get_secret_value() if cfg.mqtt.password is not None else None
        client.username_pw_set(cfg.mqtt.username, password)
    if cfg.mqtt.tls is not None:
        client.tls_set_context(tls_context(cfg))

    def on_connect(c: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        answer.append((int(reason.value), str(reason)))  # type: ignore[attr-defined]
        done.set()

    client.on_connect = on_connect
    client.on_disconnect = lambda *args: done.set()
    client.connect(cfg.mqtt.host, cfg.mqtt.port, keepalive=10, clean_start=True)
    client.loop_start()
    try:
        if not done.wait(timeout_s) or not answer:
            raise NoMqttAnswerError("no CONNACK came back")
        return answer[0]
    finally:
        client.disconnect()
        client.loop_stop()


def check_broker(cfg: StationConfig, timeout_s: float = 3.0) -> CheckResult:
    where = f"{cfg.mqtt.host}:{cfg.mqtt.port}"
    try:
        code, reason = mqtt_connect_probe(cfg, timeout_s)
    except MqttSetupError as exc:
        return _fail("broker", str(exc), "fix mqtt.tls in the station TOML")
    except NoMqttAnswerError as exc:
        return _fail(
            "broker",
            f"{where}: the connection works but no MQTT v5 broker answered CONNECT ({exc})",
            "check mqtt.port is the broker's MQTT listener (1883, or 8883 with TLS) and the broker speaks v5",
        )
    except (OSError, ssl.SSLError):
        return _fail(
            "broker",
            f"{where}: {diagnose_connection(cfg, timeout_s)}",
            "check mqtt.host, mqtt.port and mqtt.tls, the network path and that the broker runs",
        )
    via = " over TLS (certificate verified)" if cfg.mqtt.tls is not None else ""
    user = f" as user {cfg.mqtt.username!r}" if cfg.mqtt.username is not None else " anonymously"
    if code == 0:
        return _ok("broker", f"{where}: MQTT v5 CONNECT accepted{via}{user}")
    fix = "check the broker's log for why it refused the station"
    if code in (0x86, 0x87, 0x8C):
        empty = cfg.mqtt.password is not None and not cfg.mqtt.password.get_secret_value()
        fix = (
            f"check mqtt.username and the '{cfg.mqtt.password_credential}' credential "
            f"({DEFAULT_CREDENTIALS_DIR / cfg.mqtt.password_credential}"
            f"{', which is empty' if empty else ''}), and the broker's ACL for this user"
        )
    return _fail("broker", f"{where}: the broker refused CONNECT{user}{via}: {reason}", fix)


# --- outbox, disk, backup -----------------------------------------------------------------


class _ReadOnlyDb:
    """Just enough of StationDb for Outbox.stats(): one read-only connection that never creates or migrates.

    Even a read-only SQLite connection to a WAL database creates the -wal and -shm files when
    they are missing, and cannot remove them again. Left by a doctor run as root they would
    stop the station (its user could not write them). So: with a -wal file present (the
    station runs, or crashed) read through it; without one everything is in the main file,
    which is then opened immutable, creating nothing.
    """

    def __init__(self, path: Path) -> None:
        wal = path.with_name(path.name + "-wal")
        options = "mode=ro" if wal.exists() else "mode=ro&immutable=1"
        self._conn = sqlite3.connect(f"{path.resolve().as_uri()}?{options}", uri=True, timeout=5.0)

    def connection(self) -> sqlite3.Connection:
        return self._conn

    def stream(self) -> str:
        """A database the station has not opened since it numbered its events has no stream yet."""
        try:
            row = self._conn.execute("SELECT value FROM station_meta WHERE key = 'stream'").fetchone()
        except sqlite3.OperationalError:
            row = None
        return str(row[0]) if row is not None else "none yet"

    def close(self) -> None:
        self._conn.close()


def check_outbox(cfg: StationConfig) -> CheckResult:

    path = cfg.station.state_dir / DB_FILE
    if not path.is_file():
        return _ok("outbox", f"no database at {path} yet: the station has not run")
    try:
        db = _ReadOnlyDb(path)
        try:
            stats = Outbox(cast("StationDb", db)).stats()
        finally:
            db.close()
    except sqlite3.Error as exc:
        return _fail(
            "outbox",
            f"cannot read {path}: {exc}",
            "run the doctor as root or as amflow-edge; a corrupt file can be moved aside (it is rebuilt "
            "from the scans)",
        )
    age = stats.oldest_unsent_age_s or 0.0
    detail = (
        f"{stats.backlog} unsent (oldest {age:.0f} s), {stats.failed_attempts} refused by the broker at least "
        f"once, {stats.sent} acknowledged kept"
    )
    bounds = cfg.outbox
    if stats.backlog >= bounds.max_backlog_events or age >= bounds.max_backlog_age_s:
        return _fail(
            "outbox",
            detail + f"; at the bound ({bounds.max_backlog_events} events or "
            f"{bounds.max_backlog_age_s:.0f} s): capture is paused",
            "get the station's events to the broker (see the broker row); capture resumes by itself",
        )
    if stats.backlog and age >= STALE_EVENT_S:
        return _warn(
            "outbox",
            detail + "; events are not leaving the station",
            "check the broker row and `journalctl -u amflow-edge` for the relay's errors",
        )
    return _ok("outbox", detail)


def check_disk(cfg: StationConfig) -> CheckResult:
    disk = cfg.disk
    root = cfg.station.data_root
    if not root.is_dir():
        return _fail(
            "disk",
            f"data root {root} does not exist",
            "create it (systemd-tmpfiles --create /etc/tmpfiles.d/amflow-edge.conf) or fix station.data_root",
        )
    guard = DiskGuard(root, disk.min_free_bytes, disk.resume_free_bytes)
    reason = guard.reason()
    if reason is not None:
        return _fail("disk", reason, "free space on the data root; capture resumes by itself")
    free = guard.free_bytes()
    st = os.statvfs(root)
    detail = f"{format_bytes(free)} free of {format_bytes(st.f_blocks * st.f_frsize)} on {where_on_disk(root)}"
    if free < disk.resume_free_bytes:
        return _warn(
            "disk",
            detail + f", under the resume mark ({format_bytes(disk.resume_free_bytes)})",
            "move or expire old scans before capture pauses",
        )
    return _ok("disk", detail + f" (capture pauses below {format_bytes(disk.min_free_bytes)})")


def check_backup(cfg: StationConfig) -> CheckResult:
    backup = cfg.backup
    if backup.path is None:
        return _warn(
            "backup",
            "not configured: scans stay on the data root until it is full",
            "mount a backup disk and set backup.path (or let the plant collect scans)",
        )
    if not backup.path.is_dir():
        return _fail(
            "backup",
            f"{backup.path} does not exist (is the backup disk mounted?)",
            f"mount the disk and create the directory: install -d -o amflow-edge -g amflow-edge {backup.path}",
        )
    free = DiskGuard(backup.path, 0, 0).free_bytes()
    detail = f"{backup.path}: {format_bytes(free)} free; scans older than {backup.after_s:.0f} s are moved there"
    root = cfg.station.data_root
    if root.exists() and os.stat(root).st_dev == os.stat(backup.path).st_dev:
        return _warn(
            "backup",
            detail + f"; it is on the same file system as {root}",
            "a copy on the same disk is no backup: point backup.path at another disk",
        )
    return _ok("backup", detail)


# --- clock, cameras -----------------------------------------------------------------------


def clock_synchronised() -> bool | None:
    """True/False when the system can tell (timesyncd's flag, timedatectl), None when it cannot here."""
    if TIMESYNC_FLAG.exists():
        return True
    if SYSTEMD_RUNNING.is_dir() and shutil.which("timedatectl"):
        try:
            out = subprocess.run(
                ["timedatectl", "show", "--property=NTPSynchronized", "--value"],
                capture_output=True,
                text=True,
                timeout=5.0,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        answer = out.stdout.strip()
        if out.returncode == 0 and answer in ("yes", "no"):
            return answer == "yes"
    return None


def check_clock(cfg: StationConfig, synchronised: bool | None) -> CheckResult:
    try:
        zone = ZoneInfo(cfg.station.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        return _fail(
            "clock",
            f"time zone {cfg.station.timezone!r} is not in this system's time zone database",
            "install tzdata (apt-get install tzdata) or fix station.timezone",
        )
    now = datetime.now(zone)
    where = f"{cfg.station.timezone} (now {now.isoformat(timespec='seconds')})"
    if synchronised is None:
        return _warn(
            "clock",
            f"{where}; synchronisation unknown (no systemd-timesyncd or timedatectl here)",
            "make sure NTP runs (chrony or systemd-timesyncd): scan timestamps go to the MES",
        )
    if not synchronised:
        return _fail(
            "clock",
            f"{where}; the system clock is NOT synchronised",
            "enable NTP (timedatectl set-ntp true, or chrony) and check the NTP server is reachable",
        )
    return _ok("clock", f"{where}; system clock synchronised")


def check_cameras(cfg: StationConfig, camera_check: CameraCheck | None) -> CheckResult:
    if cfg.rig.driver == "mock":
        return _ok("cameras", "mock driver")
    if cfg.rig.driver == "replay":
        source = cfg.replay.source if cfg.replay is not None else "(no [replay] section)"
        return _ok("cameras", f"replay driver: stored scans from {source}")
    if camera_check is None:
        return _warn(
            "cameras",
            f"not checked: no camera enumeration for driver {cfg.rig.driver!r} in this build",
            "start the station and look for the cameras' serials in its log",
        )
    return camera_check(cfg)


def read_pylon_streams(cfg: StationConfig) -> tuple[dict[str, StreamSettings], dict[str, str]]:
    from amflow_edge.drivers.pylon import read_stream_settings

    return read_stream_settings(cfg.cameras)


ETHERNET_LINE_RATES_MB_S = (125.0, 312.5, 625.0, 1250.0)
"""1, 2.5, 5 and 10 GbE: what a GigE camera's link runs at."""


def _applied_by_station(path: Path, names: list[str]) -> tuple[dict[str, StreamSettings], list[str]]:
    """The stream settings the running station recorded when it opened the cameras named, with a line saying when;
    the lines say why there are none where the record is missing or unreadable."""
    try:
        record = AppliedStreams.read(path)
    except FileNotFoundError:
        return {}, [f"no record of the station's settings at {path} (the station writes it when it opens the cameras)"]
    except (OSError, ValueError) as exc:
        return {}, [f"cannot read {path}: {exc}"]
    streams: dict[str, StreamSettings] = {}
    lines: list[str] = []
    for name in names:
        applied = record.cameras.get(name)
        if applied is None:
            continue
        streams[name] = applied.settings()
        when = applied.applied_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines.append(f"{name}: as the station applied them at {when} (serial {applied.serial}, from {path})")
    return streams, lines


def check_link(cfg: StationConfig, read_streams: StreamReader | None, applied_path: Path | None = None) -> CheckResult:
    """The GigE link budget: planned from [pylon.gige], and what the cameras stream with now against the NIC.

    While the station runs it holds the cameras and they cannot be opened here; their settings
    then come from what the station recorded when it applied them (`applied_path`, by default
    <state_dir>/camera_streams.json), with the time it did.
    """
    if cfg.rig.driver != "pylon":
        return _ok("link", f"{cfg.rig.driver} driver: no camera network")
    gige = cfg.pylon.gige
    nic, link = gige.nic_mb_s * 1e6, cfg.pylon.link_mb_s * 1e6
    plan = plan_link(cfg.pylon, len(cfg.cameras))
    last = plan.streams[-1]
    largest = max(c.width * c.height for c in cfg.cameras)
    together = transfer_s(largest, last, link) + last.frame_delay_ticks / last.tick_hz
    lines = [
        f"budget: {plan.sharing} cameras share {gige.nic_mb_s:.0f} MB/s less {gige.headroom:.0%}: "
        f"{plan.share_bytes_s / 1e6:.1f} MB/s each (links of {cfg.pylon.link_mb_s:g} MB/s), up to "
        f"{plan.packet_size}-byte packets (MTU {gige.mtu}); one trigger's frames take {together:.2f} s to arrive"
        + ("" if gige.apply else "; pylon.gige.apply = false: the feature files' values are used")
    ]
    odd_link = cfg.pylon.link_mb_s not in ETHERNET_LINE_RATES_MB_S
    if odd_link:
        lines.append(
            f"pylon.link_mb_s = {cfg.pylon.link_mb_s:g} is no Ethernet line rate: the budget takes a packet's wire "
            "time from it, so a value below the real rate (100, the old example's, on 1 GbE) gives too short "
            "inter-packet delays and the cameras eat into the headroom"
        )
    if together >= cfg.rig.grab_timeout_s:
        return _fail(
            "link",
            "\n".join(lines) + f", not within rig.grab_timeout_s ({cfg.rig.grab_timeout_s:.1f} s)",
            "raise rig.grab_timeout_s, or give the cameras more bandwidth (a second NIC, 10 GbE: pylon.gige)",
        )
    if read_streams is None:
        return _warn("link", "\n".join([*lines, "the cameras' values not read"]), "run the doctor on the station")
    streams, problems = read_streams(cfg)
    lines += [f"{name}: {why}" for name, why in problems.items()]
    if problems:
        recorded, notes = _applied_by_station(
            applied_path or cfg.station.state_dir / APPLIED_STREAMS_FILE, [n for n in problems if n not in streams]
        )
        streams.update(recorded)
        lines += notes
    if not streams:
        return _warn(
            "link",
            "\n".join([*lines, "no camera's packet size and delay could be read"]),
            "run the doctor with the station stopped (the station holds the cameras), or read the "
            "'stream link budget' lines of its log; `amflow-edge cameras check-triggers` tests the link",
        )
    found = check_streams(streams, nic, link, gige.headroom)
    oversized = [f"{name} ({s.packet_size} bytes)" for name, s in streams.items() if s.packet_size > gige.mtu]
    lines.append("cameras now: " + found.detail)
    if oversized:
        lines.append(f"packets larger than the MTU of {gige.mtu}: {', '.join(oversized)}")
    if found.ok and not oversized and odd_link:
        return _warn(
            "link",
            "\n".join(lines),
            "set pylon.link_mb_s to the cameras' line rate: 125 for 1 GbE, 312.5, 625 or 1250 for 2.5, 5, 10 GbE",
        )
    if found.ok and not oversized:
        return _ok("link", "\n".join(lines))
    if gige.apply:
        return _warn(
            "link",
            "\n".join(lines),
            "the station sets the budget when it opens the cameras: (re)start it and run the doctor again; "
            "`amflow-edge cameras check-triggers` (station stopped) shows whether frames still get lost",
        )
    return _fail(
        "link",
        "\n".join(lines),
        "set pylon.gige.apply = true (the driver then sets packet size and delays from the budget), or raise "
        "GevSCPD in the feature files and set the NIC's MTU (pylon.gige.mtu) to the packet size",
    )


# --- all together -------------------------------------------------------------------------


def _guarded(name: str, check: Callable[[], CheckResult]) -> CheckResult:
    try:
        return check()
    except Exception as exc:  # noqa: BLE001 - a check that crashes is that row's failure; the table stays whole
        return _fail(
            name,
            f"the check itself failed: {type(exc).__name__}: {exc}",
            "report this with the output of `amflow-edge doctor`",
        )


def run_checks(
    cfg: StationConfig,
    camera_check: CameraCheck | None = None,
    *,
    synchronised: Callable[[], bool | None] = clock_synchronised,
    broker_timeout_s: float = 3.0,
    read_streams: StreamReader | None = read_pylon_streams,
) -> list[CheckResult]:
    """Every check, in the order a person fixes things: config first, then what it points at."""
    areas: dict[str, list[str]] | None = None

    def problems(area: str) -> list[str]:
        nonlocal areas
        if areas is None:
            areas = _file_problems(cfg)
        return areas[area]

    return [
        _guarded("config", lambda: check_config(cfg, problems("config"))),
        _guarded("calibration", lambda: check_calibration(cfg, problems("calibration"))),
        _guarded("designs", lambda: check_designs(cfg, problems("designs"))),
        _guarded("broker", lambda: check_broker(cfg, broker_timeout_s)),
        _guarded("outbox", lambda: check_outbox(cfg)),
        _guarded("disk", lambda: check_disk(cfg)),
        _guarded("backup", lambda: check_backup(cfg)),
        _guarded("clock", lambda: check_clock(cfg, synchronised())),
        _guarded("cameras", lambda: check_cameras(cfg, camera_check)),
        _guarded("link", lambda: check_link(cfg, read_streams)),
    ]


def run_checks_for_file(
    path: Path,
    camera_check: CameraCheck | None = None,
    credentials_dir: Path | None = DEFAULT_CREDENTIALS_DIR,
    *,
    synchronised: Callable[[], bool | None] = clock_synchronised,
    broker_timeout_s: float = 3.0,
    read_streams: StreamReader | None = read_pylon_streams,
) -> list[CheckResult]:
    """The doctor from a config file, even one with problems: a config that load_config() refuses for a missing
    calibration still gets every other row. Outside systemd there is no $CREDENTIALS_DIRECTORY, so the broker
    password is read from credentials_dir (where the unit's LoadCredential= reads it), when readable."""
    path = Path(path)
    try:
        raw = read_toml(path)
    except ConfigError as exc:
        return [_fail("config", "\n".join(exc.problems), "fix the station TOML")]
    try:
        cfg = validate_config(raw, path)
    except ConfigError as exc:
        return [_fail("config", "\n".join(exc.problems), "edit the station TOML; see config/station.example.toml")]
    if cfg.mqtt.password is None and credentials_dir is not None:
        try:
            password = read_credential(cfg.mqtt.password_credential, credentials_dir)
        except OSError:
            password = None  # not readable by whoever runs the doctor; the broker row says what that costs
        if password is not None:
            cfg = cfg.model_copy(update={"mqtt": cfg.mqtt.model_copy(update={"password": password})})
    return run_checks(
        cfg, camera_check, synchronised=synchronised, broker_timeout_s=broker_timeout_s, read_streams=read_streams
    )


def render_table(results: list[CheckResult]) -> str:
    """Plain aligned text (no terminal codes), so it reads the same in a terminal, a ticket and the journal."""
    labels = {r.name: "FAIL" if not r.ok else "WARN" if r.warning else "ok" for r in results}
    name_width = max([len("CHECK")] + [len(r.name) for r in results])
    status_width = 7
    indent = " " * (name_width + 2 + status_width)
    lines = [f"{'CHECK':<{name_width}}  {'RESULT':<{status_width}}DETAIL"]
    for r in results:
        detail_lines = r.detail.splitlines() or [""]
        lines.append(f"{r.name:<{name_width}}  {labels[r.name]:<{status_width}}{detail_lines[0]}")
        lines.extend(indent + line for line in detail_lines[1:])
        if r.fix and (not r.ok or r.warning):
            lines.append(f"{indent}fix: {r.fix}")
    failed = sum(not r.ok for r in results)
    warned = sum(r.ok and r.warning for r in results)
    lines.append("")
    lines.append(f"{failed} failed, {warned} warning(s), {len(results) - failed - warned} ok")
    return "\n".join(lines)


def exit_code(results: list[CheckResult]) -> int:
    """0 when nothing failed (warnings included), 1 otherwise: usable in scripts and monitoring."""
    return 1 if any(not r.ok for r in results) else 0
