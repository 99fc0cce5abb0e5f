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

from amflow_edge.cli.main import main
from amflow_edge.config.loading import load_config
from amflow_edge.config.station import StationConfig
from amflow_edge.drivers.base import Frame, GrabError
from amflow_edge.drivers.gige_budget import (
    StreamSettings,
    check_streams,
    image_rate_bytes_s,
    packet_size_for,
    plan_streams,
    transfer_s,
)
from amflow_edge.drivers.pylon import ActionNotConfirmedError, PylonDriver, issue_action_command
from amflow_edge.drivers.pylon_settings import ActionCommand, GigeLink
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


def test_packet_size_follows_the_mtu_and_a_fast_nic_needs_no_delay() -> None:
    assert packet_size_for(1500) == 1500 and packet_size_for(9000) == 8192 and packet_size_for(8192) == 8192
    assert packet_size_for(9000, maximum=4002, increment=4) == 4000
    with pytest.raises(ValueError, match="below the camera's smallest packet size"):
        packet_size_for(200)
    ten_gbe = plan_streams(5, 8192, 1e9, 1250e6, GBE, headroom=0.1, stagger=False)
    assert {(s.delay_ticks, s.frame_delay_ticks) for s in ten_gbe} == {(0, 0)}


def test_the_driver_applies_the_budget_and_frames_record_what_the_camera_did(
    emulated: list[str], tmp_path: Path
) -> None:
    cfg = station(tmp_path, **{"pylon.gige": {"mtu": 9000}})
    cameras = [c.model_copy(update={"exposure_us": 1234.567, "gain_db": 3.33}) for c in cfg.cameras]
    driver = PylonDriver(cameras, cfg.pylon)
    driver.open()
    try:
        plan = plan_streams(5, 8192, 1e9, GBE, GBE, 0.1)
        for index, camera in enumerate(cameras):
            pylon_camera = driver.camera(camera.name)
            assert pylon_camera.GevSCPSPacketSize.Value == 8192
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
    frame = shot.frames["cam02"]
    assert frame.exposure_us == 1235.0  # the emulated camera rounds to whole microseconds
    assert frame.gain_db == pytest.approx(3.33, abs=1e-4) and frame.gain_db != 3.33
    assert frame.extra["exposure_gain_source"] == "camera"
    assert frame.extra["configured_exposure_us"] == 1234.567 and frame.extra["configured_gain_db"] == 3.33
    assert frame.camera_timestamp_ticks is None and frame.extra["camera_timestamp_source"] is None  # no clock


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
            outcomes[name] = Frame(
                name, np.zeros((1, 1), np.uint8), datetime.now(UTC), "s", 1.0, 0.0,
                camera_timestamp_ticks=ticks, camera_tick_hz=1e9,
            )  # fmt: skip
        return outcomes


def test_the_spread_is_taken_on_the_camera_clocks_aligned_at_the_first_trigger() -> None:
    report = run_trigger_check(Dropping(), ["cam01", "cam02", "cam03"], 6, 1.0)
    assert (report.cameras["cam02"].received, report.cameras["cam02"].dropped) == (3, 3)
    assert report.clock == "camera" and len(report.spreads_s) == 3
    # complete triggers 1, 3, 5: the clocks' offsets of whole seconds cancel, the jitter of up to 2 µs stays
    assert report.spreads_s == pytest.approx([0.0, 2e-6, 2e-6], abs=1e-9)
    assert "camera clocks" in report.spread_summary() and "max" in report.spread_summary()


def streams_reader(streams: dict[str, StreamSettings], problems: dict[str, str] | None = None) -> StreamReader:
    return lambda cfg: (streams, problems or {})


def test_the_doctor_checks_the_link_budget(emulated: list[str], tmp_path: Path) -> None:
    cfg = station(tmp_path)
    planned = plan_streams(5, 1500, 125e6, GBE, GBE, 0.1)
    good = check_link(cfg, streams_reader({f"cam0{i + 1}": s for i, s in enumerate(planned)}))
    assert good.ok and not good.warning and "fits the NIC's 125 MB/s" in good.detail

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
