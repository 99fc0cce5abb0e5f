"""Five GigE cameras on one PC: the link budget, what a frame records, confirmed action commands, the trigger check.

The budget is arithmetic and is tested as such; the driver applies it to pypylon's emulated cameras, which
have the GigE stream nodes (GevSCPSPacketSize, GevSCPD, GevSCFTD) but neither chunks nor a clock. The action
command's transport is the one thing this machine lacks (no GigE camera answers here): its confirmation is
tested against a fake transport, and pylon's own call in test_pylon against a fake camera on a veth pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from amflow_edge.cli.main import main
from amflow_edge.config.loading import load_config
from amflow_edge.config.station import StationConfig
from amflow_edge.drivers.base import Frame, GrabError
from amflow_edge.drivers.gige_budget import (
    APPLIED_STREAMS_FILE,
    AppliedStreams,
    PacketLimits,
    StreamSettings,
    check_streams,
    image_rate_bytes_s,
    packet_size_for,
    plan_link,
    plan_streams,
    transfer_s,
)
from amflow_edge.drivers.pylon import (
    ActionNotConfirmedError,
    PylonDriver,
    frame_facts,
    issue_action_command,
    tick_rate,
)
from amflow_edge.drivers.pylon_settings import ActionCommand, GigeLink, PylonSettings
from amflow_edge.drivers.trigger_check import run_trigger_check
from amflow_edge.ops.doctor import CheckResult, StreamReader, check_link
from tests.pylon_rig import EMULATED, emulated
from tests.station_files import write_station

__all__ = ["emulated"]

GBE = 125e6


def station(tmp_path: Path, **sections: dict[str, Any]) -> StationConfig:
    rig = {"driver": "pylon", "grab_timeout_s": 5.0}
    return load_config(write_station(tmp_path, 1883, {"rig": rig, **sections}, serials=list(reversed(EMULATED))))


def test_five_cameras_are_throttled_to_fit_one_gigabit_nic_together() -> None:
    streams = plan_streams(5, 1500, 125e6, GBE, GBE, headroom=0.1)
    assert len({s.delay_ticks for s in streams}) == 1 and streams[0].delay_ticks > 0
    assert [s.frame_delay_ticks for s in streams] == [i * streams[1].frame_delay_ticks for i in range(5)]
    fits = check_streams({f"cam0{i + 1}": s for i, s in enumerate(streams)}, GBE, GBE, 0.1)
    assert fits.ok and 0.99 * fits.capacity_bytes_s <= fits.total_bytes_s <= fits.capacity_bytes_s
    unthrottled = {f"cam0{i}": StreamSettings(1500, 0, 0, 125e6) for i in range(1, 6)}
    over = check_streams(unthrottled, GBE, GBE, 0.1)
    assert not over.ok and "EXCEEDS" in over.detail and over.total_bytes_s > 4 * GBE
    # a 5 MP frame at a fifth of the NIC: about five times as long as alone on the link
    alone = transfer_s(2448 * 2048, StreamSettings(1500, 0, 0, 125e6), GBE)
    shared = transfer_s(2448 * 2048, streams[0], GBE)
    assert 4.5 * alone < shared < 6 * alone
    assert image_rate_bytes_s(streams[0], GBE) < 0.9 * GBE / 5


def test_the_packet_size_is_the_largest_the_camera_takes_up_to_the_mtu_and_a_fast_nic_needs_no_delay() -> None:
    # GevSCPSPacketSize is the IP packet, its headers included: it may be the MTU itself, at every MTU
    assert packet_size_for(1500) == 1500 and packet_size_for(9000) == 9000 and packet_size_for(4000) == 4000
    assert packet_size_for(3000, PacketLimits(220, 9014, 8)) == 2996  # GenICam's steps count from the minimum
    assert packet_size_for(9000, PacketLimits(220, 8192, 4)) == 8192  # the camera's maximum
    with pytest.raises(ValueError, match="below the camera's smallest packet size"):
        packet_size_for(200)
    ten_gbe = plan_streams(5, 8192, 1e9, 1250e6, GBE, headroom=0.1, stagger=False)
    assert {(s.delay_ticks, s.frame_delay_ticks) for s in ten_gbe} == {(0, 0)}


def test_the_driver_applies_the_budget_and_frames_record_what_the_camera_did(
    emulated: list[str], tmp_path: Path
) -> None:
    cfg = station(tmp_path, **{"pylon.gige": {"mtu": 9000}})
    cameras = [c.model_copy(update={"exposure_us": 1234.567, "gain_db": 3.33}) for c in cfg.cameras]
    applied = tmp_path / "state" / APPLIED_STREAMS_FILE
    applied.parent.mkdir(exist_ok=True)
    driver = PylonDriver(cameras, cfg.pylon, applied_streams_path=applied)
    with capture_logs() as logs:
        driver.open()
    try:
        plan = plan_streams(5, 9000, 1e9, GBE, GBE, 0.1)  # the emulation takes any size from 220 to 9014
        assert plan_link(cfg.pylon, 5, 1e9, PacketLimits(220, 9014, 1)).streams == tuple(plan)
        for index, camera in enumerate(cameras):
            pylon_camera = driver.camera(camera.name)
            assert pylon_camera.GevSCPSPacketSize.Value == 9000
            assert pylon_camera.GevSCPD.Value == plan[index].delay_ticks
            assert pylon_camera.GevSCFTD.Value == plan[index].frame_delay_ticks
            assert pylon_camera.ChunkModeActive.Value is False  # the emulation has no chunks: grabbing must still work
        assert driver.stream_settings()["cam05"] == plan[4]
        budgeted = transfer_s(cameras[0].width * cameras[0].height, plan[4], GBE)
        assert driver.frame_deadline_s() >= 1234.567e-6 + budgeted + plan[4].frame_delay_ticks / 1e9
        driver.trigger()
        shot = driver.grab(5.0)
    finally:
        driver.close()
    # the emulation states SFNC 2.5 and no GevTimestampTickFrequency: nanoseconds, recorded as such
    opened = [e for e in logs if e["event"] == "camera open"]
    assert len(opened) == 5 and {(e["tick_hz"], e["tick_source"]) for e in opened} == {(1e9, "sfnc2_ns")}
    assert not [e for e in logs if e["log_level"] == "warning" and "clock rate" in e["event"]]
    frame = shot.frames["cam02"]
    assert frame.exposure_us == 1235.0  # the emulated camera rounds to whole microseconds
    assert frame.gain_db == pytest.approx(3.33, abs=1e-4) and frame.gain_db != 3.33
    assert frame.extra["exposure_source"] == "camera" and frame.extra["gain_source"] == "camera"
    assert frame.extra["configured_exposure_us"] == 1234.567 and frame.extra["configured_gain_db"] == 3.33
    assert frame.camera_timestamp_ticks is None and frame.extra["camera_timestamp_source"] is None  # no clock

    # what the station applied, recorded for the doctor, which cannot open the cameras while the station runs
    record = AppliedStreams.read(applied)
    assert {name: a.settings() for name, a in record.cameras.items()} == {
        c.name: plan[i] for i, c in enumerate(cameras)
    }
    assert all(a.tick_source == "sfnc2_ns" and a.budget_applied for a in record.cameras.values())
    held: dict[str, str] = {c.name: "cannot open (in use by the running station?): already open" for c in cameras}
    busy = check_link(cfg, streams_reader({}, held), applied)
    assert busy.ok and not busy.warning, busy.detail
    assert "cam03: as the station applied them at 20" in busy.detail and "cameras now: 5 cameras" in busy.detail
    assert check_link(cfg, streams_reader({}, held)).detail == busy.detail  # <state_dir>/camera_streams.json
    never = check_link(cfg, streams_reader({}, held), tmp_path / "elsewhere.json")
    assert never.warning and "no record of the station's settings at" in never.detail
    applied.write_text("{}")
    assert "is not a record of applied stream settings" in check_link(cfg, streams_reader({}, held), applied).detail


def test_with_apply_false_the_cameras_keep_their_own_stream_settings(emulated: list[str], tmp_path: Path) -> None:
    cfg = station(tmp_path, **{"pylon.gige": {"apply": False}})
    driver = PylonDriver(cfg.cameras, cfg.pylon)
    driver.open()
    try:
        assert driver.camera("cam01").GevSCPD.Value == 0  # apply = false: the camera's (feature file's) values
        assert driver.stream_settings()["cam01"].delay_ticks == 0
    finally:
        driver.close()


class FakeTransport:
    """The GigE transport layer's answer to one action command, as pylon reports it: (ok, ((address, status), …))."""

    def __init__(self, ok: bool, results: Sequence[tuple[str, int]]) -> None:
        self.ok, self.results = ok, results
        self.calls: list[tuple[ActionCommand, int, int]] = []

    def issue(self, action: ActionCommand, timeout_ms: int, expected: int) -> tuple[bool, Sequence[tuple[str, int]]]:
        self.calls.append((action, timeout_ms, expected))
        return self.ok, self.results


ACTION = ActionCommand(device_key=1, group_key=2, broadcast_address="192.168.10.255")
RIG = {f"192.168.10.{10 + i}": f"cam0{i}" for i in range(1, 6)}


def test_an_action_command_is_confirmed_by_every_camera() -> None:
    from pypylon import pylon

    everyone = FakeTransport(True, [(address, pylon.GigEActionCommandStatus_Ok) for address in RIG])
    issue_action_command(ACTION, RIG, 150, everyone)
    assert everyone.calls == [(ACTION, 150, 5)]

    silent_and_late = FakeTransport(
        False,
        [
            ("192.168.10.11", pylon.GigEActionCommandStatus_Ok),
            ("192.168.10.12", pylon.GigEActionCommandStatus_NoRefTime),
            ("192.168.10.14", pylon.GigEActionCommandStatus_Ok),
            ("192.168.10.15", pylon.GigEActionCommandStatus_Ok),
            ("0.0.0.0", 0),  # pylon's empty slot for an answer that never came
        ],
    )
    with pytest.raises(ActionNotConfirmedError) as caught:
        issue_action_command(ACTION, RIG, 150, silent_and_late)
    assert caught.value.missing == {"cam02": "no reference time (PTP not synchronised)", "cam03": "no answer"}
    assert "ActionDeviceKey" in str(caught.value) and "broadcast_address" in str(caught.value)


def test_check_triggers_counts_every_cameras_frames(
    emulated: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = station(tmp_path)
    assert main(["cameras", "check-triggers", "--config", str(tmp_path / "station.toml"), "--count", "3"]) == 0
    out = capsys.readouterr().out
    assert "cam03: packet 1500 bytes, inter-packet delay" in out
    assert out.count("  3         0        0") == 5, out
    assert "over 3 complete triggers: median" in out and "3 triggers: all frames complete" in out

    driver = PylonDriver(cfg.cameras, cfg.pylon)
    driver.open()
    try:
        cam03 = driver.camera("cam03")
        cam03.ForceFailedBufferCount.Value = 1
        cam03.ForceFailedBuffer.Execute()
        report = run_trigger_check(driver, [c.name for c in cfg.cameras], 3, 5.0)
        driver.camera("cam02").AcquisitionStop.Execute()  # gone silent: the cameras after it are not triggered
        silent = run_trigger_check(driver, [c.name for c in cfg.cameras], 1, 5.0)
    finally:
        driver.close()
    assert [silent.cameras[f"cam0{i}"].dropped for i in range(1, 6)] == [0, 1, 1, 1, 1]
    assert silent.cameras["cam02"].first_problem.startswith("not ready for a trigger within 1000 ms")
    assert silent.cameras["cam04"].first_problem.startswith("not triggered: cam02: not ready")
    assert not report.ok
    assert report.cameras["cam03"].incomplete == 1 and report.cameras["cam03"].received == 2
    assert report.cameras["cam03"].first_problem.startswith("failed buffer")
    assert all(t.received == 3 for name, t in report.cameras.items() if name != "cam03")
    assert len(report.spreads_s) == 2 and report.clock == "host"
    assert "3 triggers: 1 frames dropped or incomplete" in report.render()


def test_check_triggers_fails_when_a_camera_is_missing(
    emulated: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    station(tmp_path)
    monkeypatch.setenv("PYLON_CAMEMU", "4")
    assert main(["cameras", "check-triggers", "--config", str(tmp_path / "station.toml"), "--count", "2"]) == 1
    assert "check stopped: camera cam01 (serial 0815-0004) not found" in capsys.readouterr().err


def still(name: str, ticks: int | None = None, tick_hz: float | None = None) -> Frame:
    return Frame(
        name, np.zeros((1, 1), np.uint8), datetime.now(UTC), "s", 1.0, 0.0,
        camera_timestamp_ticks=ticks, camera_tick_hz=tick_hz,
    )  # fmt: skip


class Dropping:
    """A rig whose cam02 misses every other trigger and whose cameras' clocks are offset from each other."""

    def __init__(self) -> None:
        self.index = 0

    def trigger(self) -> None:
        self.index += 1

    def grab_each(self, timeout_s: float) -> dict[str, Frame | GrabError]:
        outcomes: dict[str, Frame | GrabError] = {}
        for offset, name in enumerate(("cam01", "cam02", "cam03")):
            if name == "cam02" and self.index % 2 == 0:
                outcomes[name] = GrabError(name, "no frame within 100 ms of the trigger")
                continue
            ticks = offset * 10**9 + self.index * 10**8 + (self.index % 3) * 1000 * offset  # jitter: µs
            outcomes[name] = still(name, ticks, 1e9)
        return outcomes


def test_dropped_frames_are_counted_per_camera_and_only_complete_triggers_give_a_spread() -> None:
    report = run_trigger_check(Dropping(), ["cam01", "cam02", "cam03"], 6, 1.0)
    assert (report.cameras["cam02"].received, report.cameras["cam02"].dropped) == (3, 3)
    assert report.clock == "camera" and report.reference == "cam01" and len(report.spreads_s) == 3
    assert max(report.spreads_s) < 2e-6  # the clocks' offsets of whole seconds are gone, the µs jitter stays
    two = run_trigger_check(Dropping(), ["cam01", "cam02", "cam03"], 3, 1.0)  # complete: triggers 1 and 3
    assert len(two.spreads_s) == 2 and not two.rate_ppm and "too few complete triggers" in two.spread_summary()


PATTERN = (1, -1, -1, 1)
"""Exposure jitter with no offset and no trend over each four triggers: a clock fit cannot absorb any of it."""


class Drifting:
    """Three cameras exposing within microseconds of each trigger, counted by clocks of their own: different tick
    rates, offsets of hours, and crystals +40 and -25 ppm off cam01's. Triggers every 0.5 s."""

    CLOCKS = {"cam01": (125e6, 3600.0, 0.0), "cam02": (1e9, 86_400.0, 40e-6), "cam03": (125e6, 7.0, -25e-6)}
    JITTER = {"cam01": 0.0, "cam02": 2e-6, "cam03": -1e-6}

    def __init__(self) -> None:
        self.index = -1

    def trigger(self) -> None:
        self.index += 1

    def true_lag_s(self, name: str) -> float:
        """When the camera exposed, after the trigger: trigger 40 to 43 with three times the usual jitter."""
        scale = 3.0 if self.index // 4 == 10 else 1.0
        return self.JITTER[name] * scale * PATTERN[self.index % 4]

    def grab_each(self, timeout_s: float) -> dict[str, Frame | GrabError]:
        frames: dict[str, Frame | GrabError] = {}
        for name, (tick_hz, offset_s, rate) in self.CLOCKS.items():
            exposed = 0.5 * self.index + self.true_lag_s(name)
            frames[name] = still(name, round((offset_s + exposed * (1 + rate)) * tick_hz), tick_hz)
        return frames


def test_the_spread_is_the_cameras_exposure_spread_not_their_clocks_drift() -> None:
    report = run_trigger_check(Drifting(), ["cam01", "cam02", "cam03"], 100, 1.0)
    # per trigger the cameras exposed 3 µs apart (9 µs in triggers 40-43); over 50 s the clocks drift by ms
    assert report.spreads_s == pytest.approx([9e-6 if k // 4 == 10 else 3e-6 for k in range(100)], abs=2e-8)
    assert report.rate_ppm == pytest.approx({"cam02": 40.0, "cam03": -25.0}, abs=0.01)
    summary = report.spread_summary()
    assert "median 3.0 µs, p95 3.0 µs, max 9.0 µs" in summary, summary
    assert "fitted to cam01's" in summary and "cam02 +40.0 ppm, cam03 -25.0 ppm" in summary


class Unacknowledged:
    """An action-triggered rig whose cam02 does not acknowledge triggers 2 and 3; its frame of trigger 3 comes anyway
    (only the acknowledgement was lost)."""

    def __init__(self) -> None:
        self.index = 0

    def trigger(self) -> None:
        self.index += 1
        if self.index in (2, 3):
            raise ActionNotConfirmedError({"cam02": "no answer"})

    def grab_each(self, timeout_s: float) -> dict[str, Frame | GrabError]:
        frames: dict[str, Frame | GrabError] = {name: still(name) for name in ("cam01", "cam02", "cam03")}
        if self.index == 2:
            frames["cam02"] = GrabError("cam02", "no frame within 100 ms of the trigger")
        return frames


def test_an_unacknowledged_action_command_counts_the_silent_camera_as_dropped_and_the_check_goes_on() -> None:
    rig = Unacknowledged()
    report = run_trigger_check(rig, ["cam01", "cam02", "cam03"], 4, 1.0)
    assert rig.index == 4 and not report.ok
    cam02 = report.cameras["cam02"]
    assert (cam02.received, cam02.dropped, cam02.unconfirmed, cam02.incomplete) == (2, 2, 2, 0)
    assert cam02.first_problem == "action command not acknowledged: no answer"
    assert all(report.cameras[name].received == 4 for name in ("cam01", "cam03"))
    assert len(report.spreads_s) == 2 and report.clock == "host"  # triggers 1 and 4
    assert "action command not acknowledged (counted as dropped): cam02 2×" in report.render()


def test_the_clock_rate_comes_from_the_camera_or_its_sfnc_and_an_assumption_is_said_out_loud() -> None:
    assert tick_rate("cam01", 125e6, 2, True) == (125e6, "GevTimestampTickFrequency")  # ace classic GigE
    assert tick_rate("cam01", None, 2, False) == (1e9, "sfnc2_ns")  # ace 2: SFNC 2.x counts nanoseconds
    assert tick_rate("cam01", None, None, True) == (1e9, "sfnc2_ns")  # TimestampLatch: SFNC 2 as well
    with capture_logs() as logs:
        assert tick_rate("cam04", None, 1, False) == (1e9, "assumed")
    assert [(e["log_level"], e["camera"], e["assumed_tick_hz"]) for e in logs] == [("warning", "cam04", 1e9)]


def test_each_chunk_value_is_used_on_its_own_and_raw_gain_stays_raw() -> None:
    # ace classic: exposure in µs and a raw GainAll; the timestamp of a camera up for months stays exact
    classic = frame_facts(
        {"ChunkTimestamp": 2**60 + 1, "ChunkExposureTime": 7990.0, "ChunkGainAll": 36}, 999, 8000.0, 1.5
    )
    assert (classic.ticks, classic.timestamp_source) == (2**60 + 1, "chunk")
    assert (classic.exposure_us, classic.exposure_source) == (7990.0, "chunk")
    assert (classic.gain_db, classic.gain_source, classic.gain_raw) == (1.5, "camera", 36)
    sfnc2 = frame_facts({"ChunkGain": 2.0}, 5, 8000.0, 1.5)  # gain in dB, but no exposure chunk
    assert (sfnc2.ticks, sfnc2.timestamp_source, sfnc2.exposure_source) == (5, "grab_result", "camera")
    assert (sfnc2.gain_db, sfnc2.gain_source, sfnc2.gain_raw) == (2.0, "chunk", None)
    assert frame_facts({}, 0, 8000.0, 1.5).ticks is None


def test_the_per_camera_link_rate_is_one_setting(tmp_path: Path) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"pylon.link_mb_s \(100\) and pylon.gige.camera_link_mb_s \(125\)"):
        PylonSettings(link_mb_s=100, gige={"camera_link_mb_s": 125})
    old = PylonSettings(gige={"camera_link_mb_s": 1250})  # a config of the old name alone still means it
    assert old.link_mb_s == 1250 and plan_link(old, 5).link_bytes_s == 1250e6
    assert PylonSettings(link_mb_s=400, gige={"camera_link_mb_s": 400}).link_mb_s == 400
    cameras = station(tmp_path).cameras
    assert PylonDriver(cameras, old).frame_deadline_s() < PylonDriver(cameras, PylonSettings()).frame_deadline_s()


def streams_reader(streams: dict[str, StreamSettings], problems: dict[str, str] | None = None) -> StreamReader:
    return lambda cfg: (streams, problems or {})


def test_the_doctor_checks_the_link_budget(emulated: list[str], tmp_path: Path) -> None:
    cfg = station(tmp_path)
    planned = plan_streams(5, 1500, 125e6, GBE, GBE, 0.1)
    good = check_link(cfg, streams_reader({f"cam0{i + 1}": s for i, s in enumerate(planned)}))
    assert good.ok and not good.warning and "fits the NIC's 125 MB/s" in good.detail
    assert "22.5 MB/s each (links of 125 MB/s), up to 1500-byte packets (MTU 1500)" in good.detail
    mtu_4000 = cfg.model_copy(update={"pylon": PylonSettings(gige=GigeLink(mtu=4000))})
    assert "up to 4000-byte packets (MTU 4000)" in check_link(mtu_4000, streams_reader({})).detail
    old_example = cfg.model_copy(update={"pylon": PylonSettings(link_mb_s=100)})  # the old example config's line
    planned_100 = dict(enumerate(plan_link(old_example.pylon, 5).streams))
    odd = check_link(old_example, streams_reader({f"cam0{i + 1}": s for i, s in planned_100.items()}))
    assert odd.warning and "pylon.link_mb_s = 100 is no Ethernet line rate" in odd.detail
    assert "125 for 1 GbE" in (odd.fix or "")

    flat = {f"cam0{i}": StreamSettings(1500, 0, 0, 125e6) for i in range(1, 6)}
    pending = check_link(cfg, streams_reader(flat))
    assert pending.ok and pending.warning and "EXCEEDS" in pending.detail and "(re)start" in (pending.fix or "")
    manual = cfg.model_copy(update={"pylon": cfg.pylon.model_copy(update={"gige": GigeLink(apply=False)})})
    failed = check_link(manual, streams_reader(flat))
    assert not failed.ok and "pylon.gige.apply = true" in (failed.fix or "")
    jumbo_on_small_mtu = {"cam01": StreamSettings(8192, 10**6, 0, 125e6)}
    assert (
        "packets larger than the MTU of 1500: cam01 (8192 bytes)"
        in check_link(manual, streams_reader(jumbo_on_small_mtu)).detail
    )

    busy = check_link(cfg, streams_reader({}, {"cam01": "cannot open (in use by the running station?)"}))
    assert busy.ok and busy.warning and "cam01: cannot open" in busy.detail

    slow = cfg.model_copy(update={"rig": cfg.rig.model_copy(update={"grab_timeout_s": 0.01})})
    assert not check_link(slow, streams_reader({})).ok

    # pylon's emulated cameras, as the doctor reads them: reopened, they stream with their defaults (no delay)
    from amflow_edge.ops.doctor import read_pylon_streams

    live: CheckResult = check_link(cfg, read_pylon_streams)
    assert (
        live.warning
        and "EXCEEDS" in live.detail
        and "  cam05: 125.0 MB/s (packet 1500 bytes, delay 0 ticks" in live.detail
    )
