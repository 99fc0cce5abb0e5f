"""The mock rig: meets the driver contract, renders ahead of triggers, reproducible, fails on request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trimesh
from pydantic import ValidationError

from amflow_edge.drivers.base import CameraDriver, CameraSettings, DriverError, GrabError
from amflow_edge.drivers.mock import MockDriver, scene_seed
from amflow_edge.drivers.mock_settings import MockDriverSettings
from amflow_edge.inspection.geometry.camera import load_rig, save_calibration

REPO = Path(__file__).resolve().parent.parent
SCALE = 0.25
WIDTH, HEIGHT = 612, 512


@dataclass
class StandInDesign:
    design_material: str
    title: str
    extents: tuple[float, float, float]
    gate: threading.Event | None = None

    def mesh(self) -> trimesh.Trimesh:
        if self.gate is not None:
            self.gate.wait()
        return trimesh.creation.box(self.extents)


@dataclass
class StandInLibrary:
    """Duck-typed like inspection.designs.DesignLibrary: .designs and .get()."""

    items: list[StandInDesign] = field(default_factory=list)

    @property
    def designs(self) -> list[StandInDesign]:
        return list(self.items)

    def get(self, design_material: str) -> StandInDesign:
        for design in self.items:
            if design.design_material == design_material:
                return design
        raise KeyError(f"no design with design_material {design_material!r}")


def library(gate: threading.Event | None = None) -> StandInLibrary:
    return StandInLibrary(
        [
            StandInDesign("a" * 40 + "_SLS_PA12_GREY", "Block", (40.0, 25.0, 15.0), gate),
            StandInDesign("b" * 40 + "_SLS_PA12_GREY", "Plate", (60.0, 30.0, 5.0), gate),
        ]
    )


@pytest.fixture(scope="module")
def small_rig(tmp_path_factory: pytest.TempPathFactory) -> list[CameraSettings]:
    """The demo rig at a quarter of the resolution, so each open() costs a fraction of a second."""
    directory = tmp_path_factory.mktemp("rig")
    cameras = []
    for calib in load_rig(REPO / "config" / "calibration" / "demo"):
        k = np.array(calib.camera_matrix)
        k[0, 0] *= SCALE
        k[1, 1] *= SCALE
        k[:2, 2] = (k[:2, 2] + 0.5) * SCALE - 0.5
        small = calib.model_copy(update={"camera_matrix": k.tolist(), "image_width": WIDTH, "image_height": HEIGHT})
        path = directory / f"{calib.name}.yaml"
        save_calibration(small, path)
        cameras.append(
            CameraSettings(name=calib.name, serial=calib.serial, calibration=path, width=WIDTH, height=HEIGHT)
        )
    return cameras


@pytest.fixture
def driver(small_rig: list[CameraSettings]) -> Iterator[MockDriver]:
    instance = MockDriver(small_rig, MockDriverSettings(seed=5), library())
    instance.open()
    yield instance
    instance.close()


def wait_for_prerendered(driver: MockDriver, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while driver._ready.qsize() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)


def test_grab_returns_every_camera_and_the_scene(driver: MockDriver, small_rig: list[CameraSettings]) -> None:
    assert isinstance(driver, CameraDriver)
    before = datetime.now(UTC)
    driver.trigger()
    shot = driver.grab(timeout_s=30.0)
    assert sorted(shot.frames) == ["cam01", "cam02", "cam03", "cam04", "cam05"]
    for camera in small_rig:
        frame = shot.frames[camera.name]
        assert frame.camera == camera.name and frame.serial == camera.serial
        assert frame.image.shape == (HEIGHT, WIDTH) and frame.image.dtype == np.uint8
        assert frame.timestamp.tzinfo is not None and frame.timestamp.utcoffset().total_seconds() == 0  # type: ignore[union-attr]  # tzinfo is checked first
        assert before <= frame.timestamp <= datetime.now(UTC)
        assert frame.exposure_us == camera.exposure_us and frame.gain_db == camera.gain_db
    scene = shot.metadata["mock_scene"]
    assert scene["design_material"] in {d.design_material for d in library().designs}
    assert scene["seed"] == scene_seed(5, 0)
    pose = np.array(scene["pose"])
    assert pose.shape == (4, 4) and np.allclose(pose[3], [0, 0, 0, 1])
    extents = next(d.extents for d in library().designs if d.design_material == scene["design_material"])
    corners = trimesh.transform_points(trimesh.creation.box(extents).vertices, pose)
    assert abs(corners[:, 2].min()) < 1e-9 and np.all(np.abs(corners[:, :2]) <= [140.0, 110.0])


def test_prerendered_grabs_are_fast_and_scenes_follow_the_run_seed(driver: MockDriver) -> None:
    seeds = []
    for _ in range(3):
        wait_for_prerendered(driver)
        started = time.perf_counter()
        driver.trigger()
        shot = driver.grab(timeout_s=30.0)
        assert time.perf_counter() - started < 0.05, "grab must hand over a frame rendered ahead, not render it"
        seeds.append(shot.metadata["mock_scene"]["seed"])
    assert seeds == [scene_seed(5, i) for i in range(3)]


def test_runs_are_reproducible(small_rig: list[CameraSettings]) -> None:
    def first_shot(seed: int) -> tuple[dict[str, Any], np.ndarray]:
        instance = MockDriver(small_rig, MockDriverSettings(seed=seed, scene_pool=1), library())
        instance.open()
        try:
            instance.trigger()
            shot = instance.grab(timeout_s=30.0)
        finally:
            instance.close()
        return shot.metadata["mock_scene"], shot.frames["cam02"].image

    meta_a, image_a = first_shot(21)
    meta_b, image_b = first_shot(21)
    meta_c, image_c = first_shot(22)
    assert meta_a == meta_b and np.array_equal(image_a, image_b)
    assert meta_a["seed"] != meta_c["seed"] and meta_a["pose"] != meta_c["pose"]
    assert not np.array_equal(image_a, image_c)


def test_scene_pool_cycles_without_rendering_per_trigger(small_rig: list[CameraSettings]) -> None:
    instance = MockDriver(small_rig, MockDriverSettings(seed=1, scene_pool=2), library())
    instance.open()
    try:
        seeds = []
        for _ in range(3):
            instance.trigger()
            seeds.append(instance.grab(timeout_s=0.01).metadata["mock_scene"]["seed"])
    finally:
        instance.close()
    assert seeds == [scene_seed(1, 0), scene_seed(1, 1), scene_seed(1, 0)]


def test_fail_camera_fails_every_grab_naming_it(small_rig: list[CameraSettings]) -> None:
    instance = MockDriver(small_rig, MockDriverSettings(fail_camera="cam03", scene_pool=1), library())
    instance.open()
    try:
        for _ in range(2):
            instance.trigger()
            with pytest.raises(GrabError) as info:
                instance.grab(timeout_s=5.0)
            assert info.value.camera == "cam03" and str(info.value).startswith("cam03: ")
        health = {h.camera: h for h in instance.health()}
        assert not health["cam03"].connected and "fail_camera" in health["cam03"].detail
        assert health["cam01"].connected
    finally:
        instance.close()


def test_grab_gives_up_at_the_deadline_naming_the_camera(small_rig: list[CameraSettings]) -> None:
    gate = threading.Event()
    instance = MockDriver(small_rig, MockDriverSettings(), library(gate))
    instance.open()
    try:
        instance.trigger()
        started = time.perf_counter()
        with pytest.raises(GrabError, match=r"^cam01: no frame within 0\.3 s"):
            instance.grab(timeout_s=0.3)
        assert 0.25 < time.perf_counter() - started < 1.0
        with pytest.raises(GrabError, match="trigger"):
            instance.grab(timeout_s=0.1)
    finally:
        gate.set()
        instance.close()
    assert instance._thread is None
    assert all(not h.connected for h in instance.health())


def test_empty_tray_mode_renders_no_part(small_rig: list[CameraSettings]) -> None:
    instance = MockDriver(small_rig, MockDriverSettings(empty_tray=True, scene_pool=1), StandInLibrary())
    instance.open()
    try:
        instance.trigger()
        shot = instance.grab(timeout_s=1.0)
    finally:
        instance.close()
    assert shot.metadata["mock_scene"]["design_material"] is None and shot.metadata["mock_scene"]["pose"] is None
    assert len(shot.frames) == 5


def test_open_rejects_a_calibration_for_another_image_size(small_rig: list[CameraSettings]) -> None:
    cameras = [c.model_copy(update={"width": 2448, "height": 2048}) if c.name == "cam04" else c for c in small_rig]
    with pytest.raises(DriverError, match=r"cam04: calibration .*cam04\.yaml is for 612×512 images .* 2448×2048"):
        MockDriver(cameras, MockDriverSettings(), library()).open()


def test_open_rejects_another_cameras_calibration(small_rig: list[CameraSettings]) -> None:
    cameras = [c.model_copy(update={"serial": "99999999"}) if c.name == "cam05" else c for c in small_rig]
    with pytest.raises(DriverError, match=r"cam05: calibration .* serial 40012305, but cam05 is serial 99999999"):
        MockDriver(cameras, MockDriverSettings(), library()).open()


def test_open_names_a_missing_calibration_and_an_unknown_design(
    small_rig: list[CameraSettings], tmp_path: Path
) -> None:
    cameras = [
        c.model_copy(update={"calibration": tmp_path / "nope.yaml"}) if c.name == "cam02" else c for c in small_rig
    ]
    with pytest.raises(DriverError, match=r"cam02: .*nope\.yaml"):
        MockDriver(cameras, MockDriverSettings(), library()).open()
    with pytest.raises(DriverError, match="mock.designs: .*'not-a-design'"):
        MockDriver(small_rig, MockDriverSettings(designs=["not-a-design"]), library()).open()


def test_settings_are_strict() -> None:
    with pytest.raises(ValidationError):
        MockDriverSettings(sead=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="fail_camera"):
        MockDriverSettings(fail_camera="cam9")
    with pytest.raises(ValidationError):
        MockDriverSettings(prerender=0)
    for name, info in MockDriverSettings.model_fields.items():
        assert info.description, f"{name} needs a description"


def test_works_with_the_real_design_library(small_rig: list[CameraSettings]) -> None:
    designs = pytest.importorskip("amflow_edge.inspection.designs")
    real = designs.DesignLibrary.load(REPO / "config" / "designs" / "designs.toml")
    chosen = real.designs[0].design_material
    instance = MockDriver(small_rig, MockDriverSettings(designs=[chosen], scene_pool=1), real)
    instance.open()
    try:
        instance.trigger()
        assert instance.grab(timeout_s=1.0).metadata["mock_scene"]["design_material"] == chosen
    finally:
        instance.close()


def first_scenes(
    small_rig: list[CameraSettings], count: int = 1, **settings: object
) -> list[tuple[dict[str, Any], dict[str, np.ndarray]]]:
    instance = MockDriver(small_rig, MockDriverSettings(scene_pool=count, **settings), library())
    instance.open()
    try:
        shots = []
        for _ in range(count):
            instance.trigger()
            shots.append(instance.grab(timeout_s=1.0))
    finally:
        instance.close()
    return [(shot.metadata["mock_scene"], {n: f.image for n, f in shot.frames.items()}) for shot in shots]


def test_listed_defects_at_rate_zero_change_nothing(small_rig: list[CameraSettings]) -> None:
    [(clean_meta, clean_images)] = first_scenes(small_rig, seed=21)
    [(meta, images)] = first_scenes(small_rig, seed=21, defects=["missing_chunk:1.5"], defect_rate=0.0)
    assert clean_meta["defect"] is None and meta == clean_meta
    assert all(np.array_equal(images[name], clean_images[name]) for name in images)


def test_defective_scenes_show_the_defect_and_record_its_truth(small_rig: list[CameraSettings]) -> None:
    defects = ["missing_chunk:1.5", "extra_blob:2"]
    clean = first_scenes(small_rig, count=2, seed=4)
    defective = first_scenes(small_rig, count=2, seed=4, defects=defects, defect_rate=1.0)
    assert first_scenes(small_rig, count=2, seed=4, defects=defects, defect_rate=1.0)[1][0] == defective[1][0]
    for (clean_meta, clean_images), (meta, images) in zip(clean, defective, strict=True):
        truth = meta["defect"]
        assert isinstance(truth, dict) and truth["spec"] in defects
        assert (truth["volume_change_mm3"] < 0) == (truth["kind"] == "missing_chunk")
        assert len(truth["location"]) == 3 and set(truth["region"]) == {"min", "max"}
        assert meta["seed"] == clean_meta["seed"] and meta["design_material"] == clean_meta["design_material"]
        assert np.allclose(meta["pose"], clean_meta["pose"]), "a chip or blob up top leaves the part resting as it was"
        changed = [name for name in images if not np.array_equal(images[name], clean_images[name])]
        assert changed, "the defect must show in the pictures"


def test_which_scenes_are_defective_follows_the_seed(small_rig: list[CameraSettings]) -> None:
    from amflow_edge.drivers.simulator.defects import defect_rng

    scenes = first_scenes(small_rig, count=6, seed=3, defects=["scale:1"], defect_rate=0.5)
    got = [meta["defect"] is not None for meta, _ in scenes]
    expected = [defect_rng(scene_seed(3, i)).random() < 0.5 for i in range(6)]
    assert got == expected and any(got) and not all(got)


def test_defect_settings_are_checked_when_the_config_is() -> None:
    from amflow_edge.config.problems import describe_validation_error

    with pytest.raises(ValidationError) as info:
        MockDriverSettings(defects=["warp:2", "holes:1"])
    assert describe_validation_error(info.value)[0].startswith("defects[1]: unknown defect kind 'holes'")
    with pytest.raises(ValidationError, match="missing_chunk size 50 mm is outside the sensible range"):
        MockDriverSettings(defects=["missing_chunk:50"])
    with pytest.raises(ValidationError, match="defect_rate is 0.2 but no defects are listed"):
        MockDriverSettings(defect_rate=0.2)
    with pytest.raises(ValidationError):
        MockDriverSettings(defects=["warp:2"], defect_rate=1.5)
