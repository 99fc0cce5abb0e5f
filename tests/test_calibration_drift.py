"""A bumped camera is caught at session start: named in the state and the log, its scans sent to review."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from amflow_edge.config.loading import load_config
from amflow_edge.drivers.simulator.render import Renderer
from amflow_edge.inspection.calibration.drift import DriftError, measure_drift
from amflow_edge.inspection.geometry.camera import CameraCalibration, load_calibration, load_rig
from amflow_edge.station.build import build_station
from amflow_edge.station.calibration_drift import BASELINE_DIR, DRIFT_FILE, read_drift_report
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions
from tests.mqtt_helpers import Broker, Subscriber
from tests.station_files import write_station

REPO = Path(__file__).resolve().parent.parent
PREFIX = "amflow/test-station/event"


def bumped(calib: CameraCalibration, pixels: float) -> CameraCalibration:
    """The camera turned about its own vertical axis (a knocked bracket) so the view moves by `pixels` at its centre;
    its centre of projection stays where it was."""
    angle = math.atan(pixels / calib.K[0, 0])
    turn = cv2.Rodrigues(np.array([0.0, angle, 0.0]))[0]
    return CameraCalibration.model_validate(
        calib.model_dump() | {"rotation": (turn @ calib.R).tolist(), "translation": (turn @ calib.t).tolist()}
    )


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
    after = empty_tray([rig["cam01"], bumped(rig["cam03"], 2.0)], seed=12)
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
    cameras = [bumped(c, bump_px[c.name]) if c.name in bump_px else c for c in cameras]
    folder = root / "calibration" / "references"
    folder.mkdir(exist_ok=True)
    for name, image in empty_tray(cameras, seed).items():
        assert cv2.imwrite(str(folder / f"{name}.png"), image)


def test_a_moved_camera_sends_scans_to_review_until_it_is_recalibrated(tmp_path: Path, broker: Broker) -> None:
    config = write_station(tmp_path, broker.port, {"mock": {"scene_pool": 1}, "inspection": {"enabled": True}})
    scaled = load_calibration(tmp_path / "calibration" / "cam03.yaml")
    assert scaled.image_width < 1000  # the test station's quarter-resolution rig: 2 px there is 8 px at full size
    _commissioning(tmp_path, {"cam03": 2.0})
    cfg = load_config(config)
    subscriber = Subscriber(broker, [f"{PREFIX}/scan.quality_control", "amflow/test-station/state"])
    station = build_station(cfg)
    try:
        station.start(RunOptions())
        state = station.state()
        assert state.calibration_drift is not None and state.calibration_drift.moved() == ["cam03"]
        result = station.loop.capture(Trigger(source="test"))
        assert result.ok
        quality = json.loads(subscriber.next(topic=f"{PREFIX}/scan.quality_control", timeout_s=60).payload)["data"]
        published = json.loads(subscriber.next(topic="amflow/test-station/state", timeout_s=30).payload)
    finally:
        station.shutdown()
        subscriber.close()
    assert quality["uuid"] == result.uuid
    assert quality["qc_needs_review"] is True and quality["qc_reasons"] == ["insufficient_evidence"]
    assert quality["inspectionreport"] is None
    moved = [c["camera"] for c in published["calibration_drift"]["cameras"] if c["moved"]]
    assert moved == ["cam03"]
    kept = read_drift_report(cfg.station.state_dir)
    assert kept is not None and kept.moved() == ["cam03"]
    cam03 = next(c for c in kept.cameras if c.camera == "cam03")
    assert cam03.drift is not None and 1.6 < cam03.drift.shift_px < 2.6

    _commissioning(tmp_path, {}, seed=6)  # recalibrated: the commissioning pictures are the camera's new view
    station = build_station(load_config(config))
    try:
        station.start(RunOptions())
        report = station.state().calibration_drift
        refusal = station.drift.refusal() if station.drift is not None else "no drift check"
    finally:
        station.shutdown()
    assert report is not None and report.moved() == [] and refusal is None
    assert all(c.drift is not None and c.drift.shift_px < 0.2 for c in report.cameras)


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
    assert report is not None and report.moved() == []
    assert all(BASELINE_DIR in c.commissioning for c in report.cameras)
    # A baseline that shows the camera elsewhere (as if it was bumped after the first session) is caught.
    cam02 = load_calibration(tmp_path / "calibration" / "cam02.yaml")
    baseline = next((cfg.station.state_dir / BASELINE_DIR).glob("cam02-*.png"))
    assert cv2.imwrite(str(baseline), empty_tray([bumped(cam02, -3.0)], seed=9)["cam02"])
    station = build_station(cfg)
    try:
        station.start(RunOptions())
        assert station.drift is not None and station.drift.moved() == ["cam02"]
    finally:
        station.shutdown()
    assert json.loads((cfg.station.state_dir / DRIFT_FILE).read_text())["max_drift_px"] == 1.0


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
