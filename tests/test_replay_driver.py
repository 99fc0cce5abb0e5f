"""The replay rig: a recording of stored scans played through the whole station as its five cameras.

The recording is made by a real mock station (quarter resolution) and played by a real station: its scans are
stored, announced and published to a real broker, and the recording is left byte for byte as it was.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from amflow_edge.config.loading import ConfigError, load_config
from amflow_edge.config.station import StationConfig
from amflow_edge.drivers.base import CameraDriver, CameraSettings, DriverError, ReferenceSource
from amflow_edge.drivers.replay import RecordingExhaustedError, ReplayDriver
from amflow_edge.drivers.replay_settings import ReplaySettings
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions, Station
from amflow_edge.storage.record import ScanRecord
from amflow_edge.storage.store import RECORD_FILE
from tests.mqtt_helpers import Broker, Subscriber
from tests.station_files import write_station

CAMERAS = ("cam01", "cam02", "cam03", "cam04", "cam05")
RECORDED = 3
REPLAY_SERIALS = [f"R-{index}" for index in range(1, 6)]


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert image is not None, path
    return image


def tree(root: Path) -> dict[str, str]:
    """Every file and directory under `root`, with each file's SHA-256: what 'unchanged' means."""
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        for path in sorted(root.rglob("*"))
    }


def records_in_order(data_root: Path) -> list[ScanRecord]:
    records = [
        ScanRecord.model_validate_json((d / RECORD_FILE).read_bytes())
        for d in (data_root / "scans").iterdir()
        if not d.name.startswith(".")
    ]
    return sorted(records, key=lambda r: (r.scan.created, r.scan.uuid))


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data root of a mock station that stored three scans and its session's empty-tray references."""
    root = tmp_path_factory.mktemp("recording")
    broker = Broker(root)
    broker.start()
    station = build_station(
        load_config(write_station(root, broker.port, {"mock": {"seed": 11, "scene_pool": 3}}, "recording-station"))
    )
    try:
        station.start(RunOptions(timer=False, http=False))
        for _ in range(RECORDED):
            assert station.loop.capture(Trigger(source="test")).ok
        station.capture_reference()
    finally:
        station.shutdown()
        broker.stop()
    return root / "data"


def replay_config(root: Path, port: int, source: Path, **replay: object) -> StationConfig:
    sections: dict[str, dict[str, object]] = {"rig": {"driver": "replay"}, "replay": {"source": str(source), **replay}}
    return load_config(write_station(root, port, sections, "replay-station", serials=REPLAY_SERIALS))


@pytest.fixture(scope="module")
def cameras(tmp_path_factory: pytest.TempPathFactory) -> list[CameraSettings]:
    """The recording's cameras (612×512) under the serials of another station."""
    root = tmp_path_factory.mktemp("cameras")
    config = write_station(root, 1883, serials=REPLAY_SERIALS)
    return load_config(config).cameras


@pytest.fixture
def copy(recording: Path, tmp_path: Path) -> Path:
    """A copy of the recording a test may damage."""
    return Path(shutil.copytree(recording, tmp_path / "copy", symlinks=True))


def opened(cameras: list[CameraSettings], source: Path, tmp_path: Path, **settings: object) -> ReplayDriver:
    driver = ReplayDriver(cameras, ReplaySettings(source=source, **settings), data_root=tmp_path / "station-data")
    driver.open()
    return driver


def shoot(driver: ReplayDriver) -> dict[str, np.ndarray]:
    driver.trigger()
    return {name: frame.image for name, frame in driver.grab(5.0).frames.items()}


@pytest.fixture
def replaying(recording: Path, tmp_path: Path, broker: Broker) -> Iterator[Station]:
    cfg = replay_config(tmp_path, broker.port, recording)
    cfg = cfg.model_copy(update={"cameras": [c.model_copy(update={"exposure_us": 1234.0}) for c in cfg.cameras]})
    station = build_station(cfg)
    station.start(RunOptions(timer=False, http=False))
    yield station
    station.shutdown()


def test_a_station_on_the_replay_rig_stores_and_publishes_the_recorded_scans_in_order_and_wraps(
    recording: Path, replaying: Station, broker: Broker
) -> None:
    before = tree(recording)
    recorded = records_in_order(recording)
    assert len(recorded) == RECORDED
    subscriber = Subscriber(broker, ["amflow/replay-station/event/scan.capture"])
    try:
        results = [replaying.loop.capture(Trigger(source="test")) for _ in range(RECORDED + 1)]
        assert all(r.ok for r in results), [r.error for r in results]
        published = [json.loads(subscriber.next().payload)["data"]["uuid"] for _ in results]
    finally:
        subscriber.close()
    assert published == [r.uuid for r in results]
    data_root = replaying.cfg.station.data_root
    played = [*recorded, recorded[0]]  # the last scan is followed by the first again
    for result, source, round_ in zip(results, played, [1, 1, 1, 2], strict=True):
        assert result.uuid is not None and result.uuid != source.scan.uuid
        new = ScanRecord.model_validate_json((data_root / "scans" / result.uuid / RECORD_FILE).read_bytes())
        assert new.station.driver == "replay"
        assert new.station.rig["replay"]["scan"] == source.scan.uuid
        assert new.station.rig["replay"]["station_id"] == "recording-station"
        assert new.station.rig["replay"]["round"] == round_
        for name, serial in zip(CAMERAS, REPLAY_SERIALS, strict=True):
            shot = new.station.cameras[name]
            assert shot.serial == serial and shot.extra["recorded_serial"] == source.station.cameras[name].serial
            assert shot.exposure_us == source.station.cameras[name].exposure_us != 1234.0
            image = read(data_root / "scans" / result.uuid / f"scan_{name}.png")
            assert np.array_equal(image, read(recording / "scans" / source.scan.uuid / f"scan_{name}.png"))
    assert tree(recording) == before


def test_with_loop_off_the_station_ends_the_recording_with_a_clear_error(
    recording: Path, tmp_path: Path, broker: Broker
) -> None:
    before = tree(recording)
    station = build_station(replay_config(tmp_path, broker.port, recording, loop=False))
    station.start(RunOptions(timer=False, http=False))
    try:
        played = [station.loop.capture(Trigger(source="test")) for _ in range(RECORDED)]
        after = station.loop.capture(Trigger(source="test"))
        health = station.driver.health()
    finally:
        station.shutdown()
    assert all(r.ok for r in played)
    assert not after.ok and after.error is not None
    assert "the recording is exhausted" in after.error and f"all {RECORDED} scans" in after.error, after.error
    assert "replay.loop = true" in after.error
    assert len([p for p in (tmp_path / "data" / "scans").iterdir() if not p.name.startswith(".")]) == RECORDED
    assert {h.connected for h in health} == {False} and "exhausted" in health[0].detail
    assert tree(recording) == before


def test_the_driver_meets_the_contract_and_grabs_the_recorded_references(
    recording: Path, cameras: list[CameraSettings], tmp_path: Path
) -> None:
    driver = opened(cameras, recording, tmp_path)
    try:
        assert isinstance(driver, CameraDriver) and isinstance(driver, ReferenceSource)
        shot = driver.grab_reference(5.0)
    finally:
        driver.close()
    [session] = {r.scan.scan_session for r in records_in_order(recording)}
    for name in CAMERAS:
        expected = read(recording / "references" / session / f"empty_{name}.png")
        assert np.array_equal(shot.frames[name].image, expected)


def test_a_data_root_its_scans_directory_and_one_scan_are_all_sources(
    recording: Path, cameras: list[CameraSettings], tmp_path: Path
) -> None:
    recorded = [r.scan.uuid for r in records_in_order(recording)]
    whole = opened(cameras, recording, tmp_path, preload=True)
    scans = opened(cameras, recording / "scans", tmp_path, order="name")
    one = opened(cameras, recording / "scans" / recorded[1], tmp_path)
    try:
        assert whole.scan_uuids == recorded
        assert scans.scan_uuids == sorted(recorded)
        assert one.scan_uuids == [recorded[1]]
        first = shoot(whole)  # decoded at open
        assert all(np.array_equal(first[n], read(recording / "scans" / recorded[0] / f"scan_{n}.png")) for n in CAMERAS)
        assert all(np.array_equal(a, b) for a, b in zip(shoot(one).values(), shoot(one).values(), strict=True))
    finally:
        for driver in (whole, scans, one):
            driver.close()


def test_with_loop_off_the_driver_raises_recording_exhausted(
    recording: Path, cameras: list[CameraSettings], tmp_path: Path
) -> None:
    driver = opened(cameras, recording / "scans" / records_in_order(recording)[0].scan.uuid, tmp_path, loop=False)
    try:
        shoot(driver)
        with pytest.raises(RecordingExhaustedError, match=r"the recording is exhausted: all 1 scans of .* were played"):
            shoot(driver)
    finally:
        driver.close()


def test_half_written_and_incomplete_scan_directories_are_skipped(
    copy: Path, cameras: list[CameraSettings], tmp_path: Path
) -> None:
    recorded = [r.scan.uuid for r in records_in_order(copy)]
    incoming = copy / "scans" / ".incoming" / "half-written"
    shutil.copytree(copy / "scans" / recorded[0], incoming)
    (copy / "scans" / recorded[2] / "scan_cam04.png").unlink()
    driver = opened(cameras, copy, tmp_path)
    try:
        assert driver.scan_uuids == recorded[:2]
    finally:
        driver.close()


def test_a_source_without_complete_scans_is_refused(copy: Path, cameras: list[CameraSettings], tmp_path: Path) -> None:
    for scan in (copy / "scans").iterdir():
        if not scan.name.startswith("."):
            (scan / RECORD_FILE).unlink()
    with pytest.raises(DriverError, match=r"no complete scans in .*copy.*looked at 4 directories"):
        opened(cameras, copy, tmp_path)


def test_a_missing_source_is_refused_at_check_config_and_at_open(tmp_path: Path, cameras: list[CameraSettings]) -> None:
    nowhere = tmp_path / "no-such-recording"
    with pytest.raises(ConfigError) as caught:
        replay_config(tmp_path / "station", 1883, nowhere)
    assert any(
        f"replay.source: expected a directory of stored scans (found nothing at {nowhere})" in p
        for p in caught.value.problems
    )
    with pytest.raises(DriverError, match="found nothing at"):
        opened(cameras, nowhere, tmp_path)


def test_images_of_another_size_are_refused_naming_camera_file_sizes_and_fix(
    recording: Path, cameras: list[CameraSettings], tmp_path: Path
) -> None:
    small = [c.model_copy(update={"width": 306, "height": 256}) for c in cameras]
    with pytest.raises(DriverError) as caught:
        opened(small, recording, tmp_path)
    message = str(caught.value)
    assert message.startswith("cam01: ") and "scan_cam01.png is 612×512" in message, message
    assert "configured for 306×256" in message and "set the [[cameras]] width/height of cam01" in message


@pytest.mark.parametrize(("damage", "preload"), [("header", False), ("data", True)])
def test_an_unreadable_png_is_named_with_its_camera_and_file(
    copy: Path, cameras: list[CameraSettings], tmp_path: Path, damage: str, preload: bool
) -> None:
    image = copy / "scans" / records_in_order(copy)[1].scan.uuid / "scan_cam03.png"
    data = image.read_bytes()
    image.write_bytes(b"not a png at all" if damage == "header" else data[: len(data) // 2])
    with pytest.raises(DriverError, match=rf"^cam03: {re.escape(str(image))}: not a readable PNG file"):
        opened(cameras, copy, tmp_path, preload=preload)


def test_the_station_refuses_to_replay_into_its_own_recording(
    recording: Path, cameras: list[CameraSettings], tmp_path: Path
) -> None:
    config = write_station(tmp_path, 1883, {"rig": {"driver": "replay"}, "replay": {"source": str(tmp_path / "data")}})
    shutil.copytree(recording, tmp_path / "data")
    with pytest.raises(ConfigError) as caught:
        load_config(config)
    assert any(
        "overlap: the station would store the scans it replays in the recording" in p for p in caught.value.problems
    )
    driver = ReplayDriver(cameras, ReplaySettings(source=tmp_path / "data"), data_root=tmp_path / "data" / "scans")
    with pytest.raises(DriverError, match="overlap"):
        driver.open()


def test_the_replay_driver_needs_its_section(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(write_station(tmp_path, 1883, {"rig": {"driver": "replay"}}))
    assert any(
        "rig.driver = 'replay' plays back stored scans: add a [replay] section" in p for p in caught.value.problems
    )
