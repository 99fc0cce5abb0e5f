"""The Basler driver through pypylon's own camera emulation: mapping, features, failures, removal, shutdown."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from amflow_edge.cli.main import main
from amflow_edge.config.loading import load_config
from amflow_edge.config.station import StationConfig
from amflow_edge.drivers.base import DriverError
from amflow_edge.drivers.pylon import PylonDriver
from amflow_edge.drivers.pylon_settings import PylonSettings
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions, Station
from tests.mqtt_helpers import Broker, Subscriber
from tests.polling import wait_for
from tests.pylon_rig import EMULATED, emulated, point_at_image, save_features, write_images
from tests.station_files import REPO, write_station

__all__ = ["emulated"]

REVERSED = list(reversed(EMULATED))  # cam01 is the last serial: mapping must follow serials, not order


def pylon_station(tmp_path: Path, port: int = 1883, serials: list[str] = REVERSED, **pylon: object) -> Path:
    features = tmp_path / "features"
    return write_station(
        tmp_path,
        port,
        {
            "rig": {"driver": "pylon", "grab_timeout_s": 5.0},
            "pylon": {"features_dir": str(features), "grab_margin_s": 2.0, **pylon},
        },
        serials=serials,
    )


def fed_station(tmp_path: Path, port: int = 1883, **pylon: object) -> tuple[StationConfig, dict[str, np.ndarray]]:
    """A pylon station whose emulated cameras each deliver their own noise picture."""
    config = pylon_station(tmp_path, port, REVERSED, **pylon)
    cfg = load_config(config)
    assert cfg.pylon.features_dir is not None
    save_features(config, cfg.pylon.features_dir)
    images = write_images(tmp_path / "images", EMULATED, cfg.cameras[0].width, cfg.cameras[0].height)
    for serial in EMULATED:
        point_at_image(cfg.pylon.features_dir / f"{serial}.pfs", tmp_path / "images" / f"{serial}.png")
    return cfg, images


def test_cameras_are_mapped_by_serial_and_frames_are_the_cameras_pictures(emulated: list[str], tmp_path: Path) -> None:
    cfg, images = fed_station(tmp_path)
    driver = PylonDriver(cfg.cameras, cfg.pylon)
    driver.open()
    try:
        driver.trigger()
        shot = driver.grab(5.0)
    finally:
        driver.close()
    for camera in cfg.cameras:
        frame = shot.frames[camera.name]
        assert frame.serial == camera.serial
        assert (frame.image == images[camera.serial]).all(), f"{camera.name} shows another camera's picture"
        assert frame.extra["features_sha256"] is not None and frame.extra["image_number"] >= 1


def test_a_missing_camera_is_named_and_an_extra_one_ignored(
    emulated: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(pylon_station(tmp_path))
    monkeypatch.setenv("PYLON_CAMEMU", "4")
    with pytest.raises(DriverError, match=r"cam01 \(serial 0815-0004\) not found; connected: 0815-0000 \(Emulation\)"):
        PylonDriver(cfg.cameras, PylonSettings()).open()
    monkeypatch.setenv("PYLON_CAMEMU", "6")
    driver = PylonDriver(cfg.cameras, PylonSettings())
    driver.open()
    try:
        assert all(h.connected for h in driver.health())
    finally:
        driver.close()


def test_cameras_list_shows_which_camera_is_which_and_what_is_missing(
    emulated: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    config = pylon_station(tmp_path)
    monkeypatch.setenv("PYLON_CAMEMU", "4")
    assert main(["cameras", "list", "--config", str(config)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["MODEL", "SERIAL", "INTERFACE", "ADDRESS", "STATION", "CAMERA"]
    assert any(line.startswith("Emulation") and "0815-0003" in line and line.endswith("cam02") for line in out)
    assert any("0815-0004" in line and line.endswith("cam01 NOT CONNECTED") for line in out)


def test_a_feature_file_round_trips_and_a_bad_one_is_refused_at_open(emulated: list[str], tmp_path: Path) -> None:
    cfg, _ = fed_station(tmp_path)
    assert cfg.pylon.features_dir is not None
    pfs = cfg.pylon.features_dir / f"{cfg.cameras[0].serial}.pfs"
    pfs.write_text(pfs.read_text().replace("BlackLevel\t0.000", "BlackLevel\t12.000"))
    driver = PylonDriver(cfg.cameras, cfg.pylon)
    driver.open()
    try:
        assert driver.camera("cam01").BlackLevel.Value == pytest.approx(12.0)
        assert driver.camera("cam01").ExposureTime.Value == cfg.cameras[0].exposure_us  # the config wins
    finally:
        driver.close()
    pfs.write_text(pfs.read_text() + "NoSuchFeature\t1\n")
    with pytest.raises(DriverError, match=rf"cam01: feature file {pfs} does not fit the camera: .*NoSuchFeature"):
        PylonDriver(cfg.cameras, cfg.pylon).open()


def test_action_commands_on_cameras_without_them_are_refused_clearly(
    emulated: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from amflow_edge.config.loading import ConfigError
    from amflow_edge.drivers import pylon as driver_module

    with pytest.raises(ConfigError, match=r"pylon: trigger = 'action' needs an \[pylon.action\] table"):
        load_config(pylon_station(tmp_path, trigger="action"))
    cfg = load_config(pylon_station(tmp_path))
    settings = PylonSettings(trigger="action", action={"device_key": 1, "group_key": 1})
    # the emulated cameras have no IP address: not one acknowledgement could be told apart, so all are named
    names = ", ".join(f"{c.name} \\(serial {c.serial}\\)" for c in cfg.cameras)
    with pytest.raises(DriverError, match=rf"needs every camera's IP address.*; {names} have none"):
        PylonDriver(cfg.cameras, settings).open()
    addresses = {serial: f"192.168.10.{10 + i}" for i, serial in enumerate(EMULATED)}
    addresses[cfg.cameras[2].serial] = addresses[cfg.cameras[0].serial]
    monkeypatch.setattr(driver_module, "_ip_address", lambda info: addresses[info.GetSerialNumber()])
    with pytest.raises(DriverError, match=r"cameras share an IP address: cam01 and cam03 \(192.168.10.14\)"):
        PylonDriver(cfg.cameras, settings).open()
    addresses[cfg.cameras[2].serial] = "192.168.10.99"
    with pytest.raises(DriverError, match="has no action commands; use trigger = software or line1"):
        PylonDriver(cfg.cameras, settings).open()


@pytest.fixture
def running(emulated: list[str], tmp_path: Path, broker: Broker) -> Iterator[Station]:
    cfg, _ = fed_station(tmp_path, broker.port)
    station = build_station(cfg)
    station.start(RunOptions(supervise_interval_s=0.2))
    yield station
    station.shutdown()


def pylon_driver(station: Station) -> PylonDriver:
    assert isinstance(station.driver, PylonDriver)
    return station.driver


def scan_dirs(station: Station) -> list[str]:
    return sorted(p.name for p in station.store.scans_dir.iterdir() if not p.name.startswith("."))


def test_failed_buffers_and_timeouts_fail_the_scan_cleanly_and_the_station_carries_on(running: Station) -> None:
    first = running.loop.capture(Trigger(source="test"))
    assert first.ok
    cam03 = pylon_driver(running).camera("cam03")
    cam03.ForceFailedBufferCount.Value = 1
    cam03.ForceFailedBuffer.Execute()
    failed = running.loop.capture(Trigger(source="test"))
    assert not failed.ok and failed.error is not None and failed.error.startswith("cam03: failed buffer")
    pylon_driver(running).camera("cam02").AcquisitionStop.Execute()  # a camera gone silent
    timed_out = running.loop.capture(Trigger(source="test"))
    assert not timed_out.ok and timed_out.error == "cam02: not ready for a trigger within 1000 ms (serial 0815-0003)"
    pylon_driver(running).camera("cam02").AcquisitionStart.Execute()
    again = running.loop.capture(Trigger(source="test"))
    assert again.ok, again.error
    assert first.uuid is not None and again.uuid is not None
    assert scan_dirs(running) == sorted([first.uuid, again.uuid])
    record = json.loads((running.store.scan_dir(again.uuid) / "scan.json").read_text())
    cam = record["station"]["cameras"]["cam01"]
    assert cam["serial"] == "0815-0004" and len(cam["extra"]["features_sha256"]) == 64
    assert cam["exposure_us"] == pylon_driver(running).camera("cam01").ExposureTime.Value  # read back, not configured
    assert cam["extra"]["exposure_source"] == "camera" and cam["extra"]["configured_exposure_us"] == 8000.0
    assert cam["extra"]["gain_source"] == "camera" and cam["extra"]["chunk_gain_raw"] is None
    assert record["station"]["driver"] == "pylon"


def test_a_camera_closed_under_the_daemon_is_reported_and_recovered(running: Station, broker: Broker) -> None:
    states = Subscriber(broker, ["amflow/test-station/state"])
    assert running.loop.capture(Trigger(source="test")).ok
    pylon_driver(running).camera("cam04").Close()
    refused = running.loop.capture(Trigger(source="test"))
    assert not refused.ok and "incomplete rig" in (refused.error or "") and "cam04" in (refused.error or "")
    assert wait_for(lambda: all(h.connected for h in running.driver.health())), running.driver.health()
    recovered = running.loop.capture(Trigger(source="test"))
    assert recovered.ok, recovered.error
    assert len(scan_dirs(running)) == 2
    try:
        while True:  # the plant saw cam04 go, then come back
            cameras = json.loads(states.next(timeout_s=10).payload)["cameras"]
            if not cameras[3]["connected"]:
                assert cameras[3]["detail"] == "closed under the station" and cameras[3]["serial"] == "0815-0001"
                break
        while not json.loads(states.next(timeout_s=10).payload)["cameras"][3]["connected"]:
            pass
    finally:
        states.close()


def test_line1_trigger_stores_a_scan_when_the_frames_arrive(
    emulated: list[str], tmp_path: Path, broker: Broker
) -> None:
    cfg, images = fed_station(tmp_path, broker.port, trigger="line1")
    station = build_station(cfg.model_copy(update={"inspection": cfg.inspection.model_copy(update={"enabled": True})}))
    station.start(RunOptions())
    try:
        reference = cv2.imread(
            str(station.store.reference_dir(station.scan_session) / "empty_cam02.png"), cv2.IMREAD_UNCHANGED
        )  # taken by software trigger: no part pulses the sensor
        assert reference is not None
        assert (reference == images[cfg.cameras[1].serial]).all()
        refused = station.loop.capture(Trigger(source="mqtt"))
        assert not refused.ok and "triggered on Line1" in (refused.error or "")
        driver = pylon_driver(station)
        assert driver.camera("cam01").TriggerSource.Value == "Line1"
        for camera in cfg.cameras:  # play the part-present sensor: every camera fires once
            pylon_camera = driver.camera(camera.name)
            pylon_camera.TriggerSource.Value = "Software"
            pylon_camera.ExecuteSoftwareTrigger()
        assert wait_for(lambda: station.loop.scans_stored == 1)
        [scan] = scan_dirs(station)
        record = json.loads((station.store.scan_dir(scan) / "scan.json").read_text())
        assert record["station"]["trigger_source"] == "hardware"
        stored = cv2.imread(str(station.store.scan_dir(scan) / "scan_cam05.png"), cv2.IMREAD_UNCHANGED)
        assert stored is not None
        assert (stored == images[cfg.cameras[4].serial]).all()

        for camera in cfg.cameras[1:]:  # cam01 misses a pulse: no scan, and nothing of it left over
            driver.camera(camera.name).ExecuteSoftwareTrigger()
        assert wait_for(lambda: station.loop.scans_failed == 2)  # the refused mqtt capture, then this one
        for camera in cfg.cameras:
            driver.camera(camera.name).ExecuteSoftwareTrigger()
        assert wait_for(lambda: station.loop.scans_stored == 2)
        [second] = [s for s in scan_dirs(station) if s != scan]
        numbers = json.loads((station.store.scan_dir(second) / "scan.json").read_text())["station"]["cameras"]
        assert [numbers[c.name]["extra"]["image_number"] for c in cfg.cameras] == [2, 3, 3, 3, 3]
    finally:
        station.shutdown()


def test_clean_shutdown_leaves_the_cameras_free_for_the_next_process(emulated: list[str], tmp_path: Path) -> None:
    cfg, _ = fed_station(tmp_path)
    script = (
        "import sys; from amflow_edge.config.loading import load_config; from amflow_edge.drivers.pylon import PylonDriver\n"
        "from amflow_edge.ops.log import configure_logging; configure_logging('info', True)\n"
        "cfg = load_config(sys.argv[1]); d = PylonDriver(cfg.cameras, cfg.pylon); d.open(); d.trigger()\n"
        "print(sorted(d.grab(5.0).frames)); d.close()\n"
    )
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-c", script, str(tmp_path / "station.toml")],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]  # a segfault at exit would be -11
        assert proc.stdout.strip() == str([f"cam0{i}" for i in range(1, 6)])


ACTION_CAMERA = """
import socket, struct, threading
from amflow_edge.drivers.pylon import ActionCommand, ActionNotConfirmedError, issue_action_command
camera = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
camera.bind(("0.0.0.0", 3956))  # GVCP, where cameras listen
camera.settimeout(5)
received = []

def acknowledge():  # as a camera does: ACTION_ACK (0x0101), status ok, the request's id
    for _ in range(2):
        packet, sender = camera.recvfrom(64)
        received.append(packet)
        camera.sendto(struct.pack(">HHHH", 0, 0x0101, 0, struct.unpack(">H", packet[6:8])[0]), sender)

threading.Thread(target=acknowledge, daemon=True).start()
action = ActionCommand(device_key=0x11223344, group_key=0x55667788, group_mask=0xF0F0F0F0,
                       broadcast_address="10.77.0.255")
issue_action_command(action, {"10.77.0.1": "cam01"}, 1000)
try:
    issue_action_command(action, {"10.77.0.1": "cam01", "10.77.0.2": "cam02"}, 300)
except ActionNotConfirmedError as exc:
    print(exc.missing)
print(received[0].hex())
"""


def test_the_action_command_is_a_gvcp_broadcast_confirmed_by_each_cameras_acknowledgement(tmp_path: Path) -> None:
    """pylon's own IssueActionCommand in a network namespace of its own (a veth pair, nothing leaves it), with
    a socket playing the camera at 10.77.0.1: its acknowledgement confirms it, the silent 10.77.0.2 is named."""
    setup = (
        "ip link set lo up && ip link add v0 type veth peer name v1 && ip addr add 10.77.0.1/24 dev v0 "
        "&& ip link set v0 up && ip link set v1 up"
    )
    probe = subprocess.run(["unshare", "--net", "sh", "-c", setup], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no network namespace with a veth pair here ({probe.stderr.strip() or 'unshare failed'})")
    proc = subprocess.run(
        ["unshare", "--net", "sh", "-c", f'{setup} && "{sys.executable}" -c "$0"', ACTION_CAMERA],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    missing, sent = proc.stdout.strip().splitlines()[-2:]
    assert missing == "{'cam02': 'no answer'}"
    packet = bytes.fromhex(sent)
    assert packet[0] == 0x42 and packet[1] & 0x01 and packet[2:4] == b"\x01\x00"  # GVCP, ack wanted, ACTION_CMD
    assert packet[8:20] == bytes.fromhex("1122334455667788f0f0f0f0")


def test_each_camera_keeps_only_the_configured_few_frame_buffers(emulated: list[str], tmp_path: Path) -> None:
    """pylon's default of ten full frames per camera kept 250 MB of a 5 MP station resident (issue #22)."""
    cfg, _ = fed_station(tmp_path)
    driver = PylonDriver(cfg.cameras, cfg.pylon.model_copy(update={"grab_buffers": 2}))
    driver.open()
    try:
        driver.trigger()
        driver.grab(5.0)
        cameras = [entry.camera for entry in driver._cameras]  # the driver's own InstantCameras, read back
        assert [camera.MaxNumBuffer.Value for camera in cameras if camera is not None] == [2] * 5
    finally:
        driver.close()
