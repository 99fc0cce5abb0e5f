"""A bumped camera is caught at session start: named in the state and the log, its scans sent to review."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from amflow_edge.config.loading import load_config
from amflow_edge.drivers.simulator.knocked_camera import knocked
from amflow_edge.drivers.simulator.render import Renderer
from amflow_edge.inspection.calibration.drift import DriftError, measure_drift
from amflow_edge.inspection.geometry.camera import CameraCalibration, load_calibration, load_rig, save_calibration
from amflow_edge.station.build import build_station
from amflow_edge.station.calibration_drift import BASELINE_DIR, DRIFT_FILE, read_drift_record
from amflow_edge.station.capture import Trigger
from amflow_edge.station.inspector import _cameras as worker_cameras
from amflow_edge.station.station import RunOptions
from tests.mqtt_helpers import Broker, Subscriber
from tests.station_files import write_station

REPO = Path(__file__).resolve().parent.parent
PREFIX = "amflow/test-station/event"
ONE_SESSION = {"session": {"scan_session": "5d0e8f3a-6b2c-4e1d-9a7f-3c8b1e2d4f60"}}  # the same one after a restart


def empty_tray(cameras: list[CameraCalibration], seed: int) -> dict[str, np.ndarray]:
    renderer = Renderer(cameras)
    try:
        return renderer.render(None, None, seed)
    finally:
        renderer.close()


def test_a_camera_turned_by_two_pixels_is_measured_and_an_untouched_one_is_not() -> None:
    """At full resolution: the picture of the bumped camera comes from a turned camera, not a shifted image."""
    rig = {c.name: c for c in load_rig(REPO / "config" / "calibration" / "demo")}
    before = empty_tray([rig["cam01"], rig["cam03"]], seed=11)
    after = empty_tray([rig["cam01"], knocked(rig["cam03"], 2.0)], seed=12)
    untouched = measure_drift(before["cam01"], after["cam01"])
    moved = measure_drift(before["cam03"], after["cam03"])
    assert untouched.shift_px < 0.1
    assert 1.8 < moved.shift_px < 2.4 and abs(moved.dx_px) > 1.8
    darker = measure_drift(before["cam01"], (after["cam01"] * 0.7).astype(np.uint8))  # less light, same place
    assert darker.shift_px < 0.1


def test_pictures_of_different_sizes_or_of_another_scene_are_named() -> None:
    tray = np.random.default_rng(0).integers(0, 255, (256, 320), dtype=np.uint8)
    with pytest.raises(DriftError, match="recalibrate the camera at its current resolution"):
        measure_drift(tray, tray[:200])
    other = np.random.default_rng(1).integers(0, 255, (256, 320), dtype=np.uint8)
    with pytest.raises(DriftError, match="does not look like|correlation"):
        measure_drift(tray, other)


def _commissioning(root: Path, bump_px: dict[str, float], seed: int = 5) -> None:
    """references/camNN.png beside the test station's calibration, as `calibrate solve` leaves them."""
    cameras = [load_calibration(root / "calibration" / f"cam{i:02d}.yaml") for i in range(1, 6)]
    cameras = [knocked(c, bump_px[c.name]) if c.name in bump_px else c for c in cameras]
    folder = root / "calibration" / "references"
    folder.mkdir(exist_ok=True)
    for name, image in empty_tray(cameras, seed).items():
        assert cv2.imwrite(str(folder / f"{name}.png"), image)


def test_a_moved_camera_sends_scans_to_review_until_it_is_recalibrated(tmp_path: Path, broker: Broker) -> None:
    config = write_station(
        tmp_path, broker.port, {**ONE_SESSION, "mock": {"scene_pool": 1}, "inspection": {"enabled": True}}
    )
    scaled = load_calibration(tmp_path / "calibration" / "cam03.yaml")
    assert scaled.image_width < 1000  # the test station's quarter-resolution rig: 2 px there is 8 px at full size
    _commissioning(tmp_path, {"cam03": 2.0})
    cfg = load_config(config)
    subscriber = Subscriber(broker, [f"{PREFIX}/scan.quality_control", "amflow/test-station/state"])
    station = build_station(cfg)
    try:
        station.start(RunOptions())
        state = station.state()
        session = station.scan_session
        assert state.calibration_drift is not None and state.calibration_drift.moved() == ["cam03"]
        result = station.loop.capture(Trigger(source="test"))
        assert result.ok
        quality = json.loads(subscriber.next(topic=f"{PREFIX}/scan.quality_control", timeout_s=60).payload)["data"]
        published = json.loads(subscriber.next(topic="amflow/test-station/state", timeout_s=30).payload)
        assert station.drift is not None
        assert station.drift.refusal("another-session-checked-before-the-bump") is None
    finally:
        station.shutdown()
        subscriber.close()
    assert quality["uuid"] == result.uuid
    assert quality["qc_needs_review"] is True and quality["qc_reasons"] == ["insufficient_evidence"]
    assert quality["inspectionreport"] is None
    moved = [c["camera"] for c in published["calibration_drift"]["cameras"] if c["moved"]]
    assert moved == ["cam03"]
    kept = read_drift_record(cfg.station.state_dir)
    assert kept is not None and kept.latest.moved() == ["cam03"] and "cam03 moved by" in kept.refused_sessions[session]
    cam03 = next(c for c in kept.latest.cameras if c.camera == "cam03")
    assert cam03.drift is not None and 1.6 < cam03.drift.shift_px < 2.6

    _commissioning(tmp_path, {}, seed=6)  # recalibrated: the commissioning pictures are the camera's new view
    station = build_station(load_config(config))
    try:
        station.start(RunOptions())
        report = station.state().calibration_drift
        refusal = station.drift.refusal(session) if station.drift is not None else "no drift check"
    finally:
        station.shutdown()
    assert report is not None and report.moved() == [] and report.unconfirmed() == [] and refusal is None
    assert all(c.drift is not None and c.drift.shift_px < 0.2 for c in report.cameras)


def test_a_camera_bumped_while_the_station_was_off_is_caught_at_the_next_start(tmp_path: Path, broker: Broker) -> None:
    """The session's references predate the bump; the check at start takes a fresh picture."""
    config = write_station(
        tmp_path, broker.port, {**ONE_SESSION, "mock": {"scene_pool": 1}, "inspection": {"enabled": True}}
    )
    _commissioning(tmp_path, {})
    station = build_station(load_config(config))
    try:
        station.start(RunOptions())
        session = station.scan_session
        assert station.drift is not None and station.drift.refusal(session) is None
    finally:
        station.shutdown()
    # Knocked while off: the mock renders each camera where its calibration file puts it.
    path = tmp_path / "calibration" / "cam05.yaml"
    save_calibration(knocked(load_calibration(path), 3.0), path)
    station = build_station(load_config(config))
    try:
        station.start(RunOptions())
        assert station.scan_session == session
        refusal = station.drift.refusal(session) if station.drift is not None else None
    finally:
        station.shutdown()
    assert refusal is not None and "cam05 moved by 3" in refusal and "recalibrate" in refusal


def test_a_view_that_no_longer_resembles_its_commissioning_picture_is_not_trusted(
    tmp_path: Path, broker: Broker
) -> None:
    """Knocked so far that nothing lines up (or the tray was swapped): not a pass."""
    config = write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}, "inspection": {"enabled": True}})
    _commissioning(tmp_path, {})
    picture = tmp_path / "calibration" / "references" / "cam04.png"
    shape = np.asarray(cv2.imread(str(picture), cv2.IMREAD_GRAYSCALE)).shape
    noise: np.ndarray = np.random.default_rng(3).integers(0, 255, shape, dtype=np.uint8)
    assert cv2.imwrite(str(picture), noise)
    station = build_station(load_config(config))
    try:
        station.start(RunOptions())
        report = station.state().calibration_drift
        refusal = station.drift.refusal(station.scan_session) if station.drift is not None else None
    finally:
        station.shutdown()
    assert report is not None and report.unconfirmed() == ["cam04"] and report.moved() == []
    assert refusal is not None and "cam04 cannot be compared with its commissioning picture" in refusal


def test_without_commissioning_pictures_the_first_session_is_the_baseline(tmp_path: Path, broker: Broker) -> None:
    config = write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}, "inspection": {"enabled": True}})
    cfg = load_config(config)
    station = build_station(cfg)
    try:
        station.start(RunOptions())
        report = station.state().calibration_drift
    finally:
        station.shutdown()
    baselines = sorted(p.name.split("-")[0] for p in (cfg.station.state_dir / BASELINE_DIR).glob("*.png"))
    assert baselines == [f"cam{i:02d}" for i in range(1, 6)]
    assert report is not None and report.moved() == [] and report.unconfirmed() == []
    assert all(BASELINE_DIR in c.commissioning for c in report.cameras)
    # A baseline that shows the camera elsewhere (as if it was bumped after the first session) is caught.
    cam02 = load_calibration(tmp_path / "calibration" / "cam02.yaml")
    baseline = next((cfg.station.state_dir / BASELINE_DIR).glob("cam02-*.png"))
    assert cv2.imwrite(str(baseline), empty_tray([knocked(cam02, -3.0)], seed=9)["cam02"])
    station = build_station(cfg)
    try:
        station.start(RunOptions())
        assert station.drift is not None and station.drift.report is not None
        assert station.drift.report.moved() == ["cam02"]
    finally:
        station.shutdown()
    assert json.loads((cfg.station.state_dir / DRIFT_FILE).read_text())["latest"]["max_drift_px"] == 1.0


def test_the_check_can_be_turned_off(tmp_path: Path, broker: Broker) -> None:
    config = write_station(
        tmp_path,
        broker.port,
        {"mock": {"scene_pool": 1}, "inspection": {"enabled": True}, "calibration": {"check_drift": False}},
    )
    _commissioning(tmp_path, {"cam01": 5.0})
    station = build_station(load_config(config))
    try:
        station.start(RunOptions())
        assert station.drift is None and station.state().calibration_drift is None
    finally:
        station.shutdown()


def test_a_recalibrated_file_is_read_again_by_the_inspection_worker(tmp_path: Path) -> None:
    """`calibrate solve` rewrites camNN.yaml in place; a worker must not keep inspecting with the old one."""
    path = tmp_path / "cam01.yaml"
    demo = load_calibration(REPO / "config" / "calibration" / "demo" / "cam01.yaml")
    save_calibration(demo, path)
    assert np.allclose(worker_cameras((("cam01", str(path)),))[0].R, demo.R)
    save_calibration(knocked(demo, 5.0), path)
    assert not np.allclose(worker_cameras((("cam01", str(path)),))[0].R, demo.R)
