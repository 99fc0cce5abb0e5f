"""The whole daemon through the pylon driver gives the same identification and inspection as through the mock.

The mock station renders a scene; five emulated Basler cameras are then fed its images
(empty tray first, for the session's references, then the part) through their feature
files, and a pylon station captures, stores, identifies, inspects and publishes them. Neither
station is told which design is on the tray: only the test reads the mock's truth.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import cv2

from amflow_edge.config.loading import load_config
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions, Station
from tests.mqtt_helpers import Broker, Subscriber
from tests.pylon_rig import EMULATED, emulated, point_at_image, save_features
from tests.station_files import write_station

__all__ = ["emulated"]

EVENTS = "amflow/test-station/event"


def run_until_inspected(station: Station, subscriber: Subscriber, trigger: Trigger) -> tuple[str, dict[str, Any]]:
    result = station.loop.capture(trigger)
    assert result.ok and result.uuid, result.error
    quality = json.loads(subscriber.next(topic=f"{EVENTS}/scan.quality_control", timeout_s=180).payload)["data"]
    assert quality["uuid"] == result.uuid
    return result.uuid, quality


def test_inspection_through_pylon_equals_the_mock_path(emulated: list[str], tmp_path: Path, broker: Broker) -> None:
    subscriber = Subscriber(broker, [f"{EVENTS}/#"])
    mock_cfg = load_config(
        write_station(tmp_path / "mock", broker.port, {"mock": {"scene_pool": 1}, "inspection": {"enabled": True}})
    )
    mock = build_station(mock_cfg)
    try:
        mock.start(RunOptions())
        mock_scan, mock_quality = run_until_inspected(mock, subscriber, Trigger(source="test"))
        mock_record = mock.events.record(mock_scan)
        references = mock.store.reference_dir(mock.scan_session)
    finally:
        mock.shutdown()
    assert mock_record is not None
    design = mock_record.station.rig["mock_scene"]["design_material"]
    assert mock_quality["design_material"] == design

    features = tmp_path / "features"
    config = write_station(
        tmp_path / "pylon",
        broker.port,
        {
            "rig": {"driver": "pylon"},
            "pylon": {"features_dir": str(features)},
            "inspection": {"enabled": True},
        },
        serials=EMULATED,
    )
    pylon_cfg = load_config(config)
    save_features(config, features)
    for camera in pylon_cfg.cameras:  # each camera sees the empty tray (the session's reference), then the part
        frames = tmp_path / "frames" / camera.serial
        frames.mkdir(parents=True)
        shutil.copyfile(references / f"empty_{camera.name}.png", frames / "1_empty.png")
        shutil.copyfile(mock.store.scan_dir(mock_scan) / f"scan_{camera.name}.png", frames / "2_part.png")
        point_at_image(features / f"{camera.serial}.pfs", frames)
    station = build_station(pylon_cfg)
    try:
        station.start(RunOptions())
        for camera in pylon_cfg.cameras:
            taken = cv2.imread(
                str(station.store.reference_dir(station.scan_session) / f"empty_{camera.name}.png"),
                cv2.IMREAD_UNCHANGED,
            )
            assert taken is not None
            assert (taken == cv2.imread(str(references / f"empty_{camera.name}.png"), cv2.IMREAD_UNCHANGED)).all()
        scan, quality = run_until_inspected(station, subscriber, Trigger(source="test"))
        report = json.loads((station.store.scan_dir(scan) / "inspection_report.json").read_text())
    finally:
        station.shutdown()
        subscriber.close()
    mock_report = json.loads((mock.store.scan_dir(mock_scan) / "inspection_report.json").read_text())
    for key in ("design_material", "qc_machine", "qc_needs_review", "qc_reasons"):
        assert quality[key] == mock_quality[key], key
    assert report["metrics"] == mock_report["metrics"]
    assert report["pose"] == mock_report["pose"]
    assert report["criteria"] == mock_report["criteria"]
