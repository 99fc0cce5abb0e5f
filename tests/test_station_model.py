"""Commissioning learns the station's light and tray (issue #21): the lamp light on synthetic scenes with known
answers (shadows included), the tray comparison, the versioned file, the shipped demo model, and `amflow-edge
commission` on rendered intact parts."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
import pytest
import trimesh

from amflow_edge.cli.main import main
from amflow_edge.common.scan_layout import reference_image, scan_image
from amflow_edge.inspection.geometry.camera import RIG_CAMERAS
from amflow_edge.inspection.geometry.raycast import triangle_scene
from amflow_edge.inspection.learned_light import (
    FitSamples,
    LearnedLight,
    candidate_lamps,
    fit_light,
    highlight_basis,
    irradiance_basis,
    learn_light_held_out,
    unblocked,
)
from amflow_edge.inspection.station_model.learn import (
    CommissioningError,
    LearnedScanSamples,
    learn_station_model,
)
from amflow_edge.inspection.station_model.model import (
    STATION_MODEL_FILE,
    UNREADABLE_FILE,
    StationModel,
    StationModelError,
    archived_versions,
    calibration_digest,
    load_station_model,
    save_station_model,
)
from amflow_edge.inspection.station_model.report import (
    REPORT_FILE,
    SHEET_FILE,
    hemisphere,
    light_tile,
    summary,
    write_commission_report,
)
from amflow_edge.inspection.station_model.tray_appearance import TrayAppearance
from amflow_edge.inspection.surface_samples import SurfaceSamples
from tests.inspection_scenes import light_of, light_record_of

REPO = Path(__file__).resolve().parent.parent
DEMO_CALIBRATION = REPO / "config" / "calibration" / "demo"

RADIUS = 600.0
OBLIQUE = RADIUS / math.sqrt(2.0)
CENTRES = np.array(
    [[0, 0, RADIUS], [OBLIQUE, 0, OBLIQUE], [-OBLIQUE, 0, OBLIQUE], [0, OBLIQUE, OBLIQUE], [0, -OBLIQUE, OBLIQUE]],
    dtype=np.float32,
)
"""Five 'cameras' 600 mm from the tray centre; their centres are candidate lamps, so the true light is one the fit
can represent exactly."""
TRUTH = LearnedLight(CENTRES.copy(), np.array([100.0, 80.0, 30.0, 25.0, 20.0], dtype=np.float32), 8.0)
"""Ring lights on every camera, unequal, the one on the +x oblique strong: the bracket's wall hides it from most of
its floor."""
SCAN_GAINS = (1.0, 0.8, 1.25, 0.9, 1.1)
CAMERA_GAINS = {"camA": 1.0, "camB": 0.85}
NOISE = 0.03


def part() -> list[trimesh.Trimesh]:
    """A bracket: a floor plate with, on its +x end, a wall 36 mm high, which shadows the floor from lamps on the +x
    side."""
    plate = trimesh.creation.box(bounds=[[-30.0, -20.0, 0.0], [30.0, 20.0, 4.0]])
    wall = trimesh.creation.box(bounds=[[14.0, -20.0, 4.0], [20.0, 20.0, 40.0]])
    return [plate, wall]


def part_surface(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Points and outward normals on the part's visible surface (not its underside, not where wall meets plate)."""
    points, normals = [], []
    for body in part():
        found, faces = trimesh.sample.sample_surface(body, count, seed=int(rng.integers(1 << 31)))
        points.append(np.asarray(found))
        normals.append(np.asarray(body.face_normals[faces]))
    p, n = np.concatenate(points), np.concatenate(normals)
    hidden = (n[:, 2] < -0.5) | ((np.abs(p[:, 2] - 4.0) < 1e-6) & (p[:, 0] > 14.0 - 1e-6) & (p[:, 0] < 20.0 + 1e-6))
    return p[~hidden], n[~hidden]


def pose_of(scan: int) -> np.ndarray:
    """Each scan elsewhere on the tray and turned otherwise, so that its faces see other lamps and its shadows fall
    from others."""
    yaw = math.radians(10.0 + 75.0 * scan)
    pose = np.eye(4)
    pose[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    pose[:2, 3] = [(-60.0, 40.0, 70.0, -20.0, 30.0, 0.0)[scan % 6], (30.0, -50.0, 10.0, 60.0, -30.0, 0.0)[scan % 6]]
    return pose


@dataclass(frozen=True)
class SyntheticScan:
    scene: o3d.t.geometry.RaycastingScene
    points: np.ndarray
    normals: np.ndarray
    truth: np.ndarray
    """Noise-free brightness per unit gain."""


def synthetic_scan(scan: int, count: int = 1800) -> SyntheticScan:
    rng = np.random.default_rng(100 + scan)
    pose = pose_of(scan)
    posed = trimesh.util.concatenate(part()).apply_transform(pose)
    scene = triangle_scene(np.asarray(posed.vertices), np.asarray(posed.faces))
    local_points, local_normals = part_surface(rng, count)
    points = (local_points @ pose[:3, :3].T + pose[:3, 3]).astype(np.float32)
    normals = (local_normals @ pose[:3, :3].T).astype(np.float32)
    return SyntheticScan(scene, points, normals, TRUTH.expected(scene, points, normals))


def fit_samples(
    scan: int, gains: dict[str, float] | None = None, outliers: float = 0.0, noise: float = NOISE
) -> list[FitSamples]:
    """One scan seen by two 'cameras' (alternate samples), each with its own gain, noise and some outliers."""
    synthetic = synthetic_scan(scan)
    rng = np.random.default_rng(200 + scan)
    found = []
    for index, camera in enumerate(CAMERA_GAINS):
        mine = slice(index, None, len(CAMERA_GAINS))
        truth = synthetic.truth[mine]
        gain = SCAN_GAINS[scan % len(SCAN_GAINS)] * CAMERA_GAINS[camera]
        photo = gain * truth * (1 + noise * rng.standard_normal(len(truth)))
        bad = rng.random(len(photo)) < outliers
        photo[bad] *= rng.uniform(0.2, 0.5, int(bad.sum()))
        key = f"scan{scan}/{camera}"
        if gains is not None:
            gains[key] = gain
        found.append(
            FitSamples(key, synthetic.points[mine], synthetic.normals[mine], photo.astype(np.float32), synthetic.scene)
        )
    return found


@pytest.fixture(scope="module")
def fitted() -> tuple[LearnedLight, dict[str, float], dict[str, float]]:
    """The light fitted on scans 0–3 (scan 4 is left for the tests), its gains and the true ones."""
    true_gains: dict[str, float] = {}
    samples = [s for scan in range(4) for s in fit_samples(scan, true_gains)]
    light, gains = fit_light(samples, candidate_lamps(CENTRES))
    return light, gains, true_gains


def test_the_scene_has_shadows_to_predict() -> None:
    """Guards the tests below: the wall hides the +x lamp from much of the floor, which is then far darker."""
    scan = synthetic_scan(4)
    facing = (scan.normals[:, 2] > 0.9) & (scan.points[:, 2] < 5.0)
    hidden = unblocked(scan.scene, scan.points, scan.normals, CENTRES[[1]])[:, 0] == 0
    assert (facing & hidden).sum() > 100 and (facing & ~hidden).sum() > 50
    assert np.median(scan.truth[facing & hidden]) < 0.85 * np.median(scan.truth[facing & ~hidden])


def test_the_lamp_light_predicts_a_scan_it_never_saw_shadows_included(
    fitted: tuple[LearnedLight, dict[str, float], dict[str, float]],
) -> None:
    light, _, _ = fitted
    scan = synthetic_scan(4)
    predicted = light.expected(scan.scene, scan.points, scan.normals)
    ratio = predicted / scan.truth
    error = np.abs(ratio / np.median(ratio) - 1)
    assert np.median(error) < 0.01 and np.percentile(error, 90) < 0.04
    hidden = (unblocked(scan.scene, scan.points, scan.normals, CENTRES[[1]])[:, 0] == 0) & (scan.normals[:, 2] > 0.9)
    assert np.median(error[hidden]) < 0.03
    unshadowed = light.expected(scan.scene, scan.points, scan.normals, shadows=False) / np.median(ratio)
    assert np.median(unshadowed[hidden] / scan.truth[hidden]) > 1.3, "the fit must have put light where the wall is"


def test_the_gains_come_out_in_the_ratios_they_went_in(
    fitted: tuple[LearnedLight, dict[str, float], dict[str, float]],
) -> None:
    _, gains, true_gains = fitted
    assert sorted(gains) == sorted(true_gains)
    assert np.median(list(gains.values())) == pytest.approx(1.0)
    reference = "scan0/camA"
    for key, gain in gains.items():
        assert gain / gains[reference] == pytest.approx(true_gains[key] / true_gains[reference], rel=0.01), key


def test_the_strongest_light_comes_from_where_the_lamps_are(
    fitted: tuple[LearnedLight, dict[str, float], dict[str, float]],
) -> None:
    light, _, _ = fitted
    directions = light.lamps / np.linalg.norm(light.lamps, axis=1, keepdims=True)
    share = light.weights / light.weights.sum()
    for lamp, weight in zip(TRUTH.lamps, TRUTH.weights, strict=True):
        near = directions @ (lamp / np.linalg.norm(lamp)) > math.cos(math.radians(20))
        assert share[near].sum() == pytest.approx(weight / TRUTH.weights.sum(), abs=0.1)


@pytest.fixture(scope="module")
def spreads() -> dict[str, float]:
    """The held-out spread of noise-free scans, of scans with NOISE, and of those with 10 % outliers besides."""
    found = {}
    for name, noise, outliers in (("clean", 0.0, 0.0), ("noisy", NOISE, 0.0), ("soiled", NOISE, 0.1)):
        scans = [fit_samples(scan, noise=noise, outliers=outliers) for scan in range(4)]
        learning = learn_light_held_out(scans, CENTRES)
        assert sorted(h.key for h in learning.held_out) == sorted(s.key for scan in scans for s in scan)
        assert learning.samples == sum(len(s.photo) for scan in scans for s in scan)
        found[name] = learning.light.spread
    return found


def test_the_held_out_spread_is_the_noise_and_what_the_light_misses(spreads: dict[str, float]) -> None:
    """Each fold's light is fitted on half the scans and predicts the other half from its own lamps and shadows
    (a shadow's edge only roughly): noise-free scans still show a few per cent. Noise adds in quadrature."""
    assert spreads["clean"] < 0.035
    assert math.sqrt(spreads["noisy"] ** 2 - spreads["clean"] ** 2) == pytest.approx(NOISE, rel=0.4)


def test_outliers_do_not_move_the_light(
    fitted: tuple[LearnedLight, dict[str, float], dict[str, float]], spreads: dict[str, float]
) -> None:
    clean, gains, _ = fitted
    soiled = [s for scan in range(4) for s in fit_samples(scan, outliers=0.1)]
    light, soiled_gains = fit_light(soiled, candidate_lamps(CENTRES))
    scan = synthetic_scan(4)
    ratio = light.expected(scan.scene, scan.points, scan.normals) / clean.expected(
        scan.scene, scan.points, scan.normals
    )
    assert np.percentile(np.abs(ratio / np.median(ratio) - 1), 95) < 0.03
    assert [soiled_gains[key] for key in gains] == pytest.approx(list(gains.values()), rel=0.01)
    assert spreads["soiled"] < 1.2 * spreads["noisy"]


def test_the_bases_are_the_vector_formulas_also_for_a_lamp_facing_the_camera_across_the_part() -> None:
    """irradiance_basis and highlight_basis avoid (N, K, 3) arrays for speed; they must still be the formulas,
    also where the half vector between a lamp and the camera nearly vanishes."""
    rng = np.random.default_rng(5)
    points = rng.uniform(-60.0, 60.0, (400, 3))
    points[:, 2] = np.abs(points[:, 2])
    normals = rng.normal(size=(400, 3))
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    eye = CENTRES[1]
    lamps = np.vstack([candidate_lamps(CENTRES)[::20], -eye * np.array([1.0, 1.0, -0.2])])
    to_lamp = lamps[None, :, :] - points[:, None, :]
    d2 = np.einsum("nkc,nkc->nk", to_lamp, to_lamp)
    towards = to_lamp / np.sqrt(d2)[:, :, None]
    reach = np.einsum("kc,kc->k", lamps, lamps)[None, :] / d2
    lit = np.einsum("nkc,nc->nk", towards, normals)
    assert np.allclose(irradiance_basis(points, normals, lamps), np.maximum(lit, 0.0) * reach, atol=1e-5)
    to_eye = (eye - points) / np.linalg.norm(eye - points, axis=1, keepdims=True)
    half = towards + to_eye[:, None, :]
    half /= np.linalg.norm(half, axis=2, keepdims=True)
    for shininess in (8.0, 32.0):
        glint = np.where(lit > 0, np.maximum(np.einsum("nkc,nc->nk", half, normals), 0.0) ** shininess, 0.0) * reach
        assert np.allclose(highlight_basis(points, normals, lamps, eye, shininess), glint, atol=1e-5)


def test_the_light_seen_from_above_is_brightest_towards_its_lamp() -> None:
    """One lamp 45° up in the +x direction: the brightest normal points at it, right of the centre."""
    light = LearnedLight(np.array([[OBLIQUE, 0.0, OBLIQUE]], dtype=np.float32), np.array([1.0], dtype=np.float32), 0.0)
    normals, inside = hemisphere(65)
    brightness = light.expected(o3d.t.geometry.RaycastingScene(), np.zeros_like(normals), normals, shadows=False)
    brightest = normals[int(np.argmax(np.where(inside.ravel(), brightness, -1)))]
    assert brightest == pytest.approx([math.sqrt(0.5), 0.0, math.sqrt(0.5)], abs=0.05)
    tile = light_tile(light, 65)
    assert tile.shape == (65, 65, 3) and tile[0, 0].tolist() == [0, 0, 0]


def tray(texture_seed: int, noise_seed: int, brightness: float = 1.0) -> np.ndarray:
    """A synthetic empty tray: a light falling off to the sides, a mottled texture, sensor noise."""
    size = (512, 640)
    noise = np.random.default_rng(texture_seed).normal(size=size).astype(np.float32)
    texture = np.asarray(cv2.GaussianBlur(noise, (0, 0), 6), dtype=np.float32)
    texture /= texture.std()
    y, x = np.mgrid[0 : size[0], 0 : size[1]]
    light = 1.0 - 0.3 * (((x - 320) / 320) ** 2 + ((y - 256) / 256) ** 2)
    image = brightness * 110 * light * (1 + 0.08 * texture)
    image += np.random.default_rng(noise_seed).normal(0, 2.0, size)
    return np.clip(image, 0, 255).astype(np.uint8)


def test_a_tray_with_new_sensor_noise_has_not_changed() -> None:
    change = TrayAppearance.of("cam02", tray(1, 1)).compare(tray(1, 2))
    assert not change.changed and change.why == ""
    assert change.brightness_ratio == pytest.approx(1.0, abs=0.03) and change.correlation > 0.9


def test_a_darker_tray_is_a_change_that_asks_after_the_lamps() -> None:
    change = TrayAppearance.of("cam03", tray(1, 1)).compare(tray(1, 2, brightness=0.65))
    assert change.changed and change.brightness_ratio == pytest.approx(0.65, abs=0.03)
    assert change.why.startswith("cam03: tray 3") and "darker" in change.why and "lamp" in change.why


def test_another_tray_texture_is_a_change() -> None:
    change = TrayAppearance.of("cam01", tray(1, 1)).compare(tray(2, 2))
    assert change.changed and change.correlation < 0.3
    assert "texture differs" in change.why


def station_scans(count: int, samples: int = 2500) -> list[LearnedScanSamples]:
    """Synthetic scans of the bracket as the five rig cameras would give them (samples dealt out in turn)."""
    found = []
    for scan in range(count):
        synthetic = synthetic_scan(scan, samples)
        rng = np.random.default_rng(300 + scan)
        photo = SCAN_GAINS[scan] * synthetic.truth * (1 + NOISE * rng.standard_normal(len(synthetic.truth)))
        views = [
            SurfaceSamples(
                camera=camera,
                normals=synthetic.normals[index :: len(RIG_CAMERAS)],
                photo=photo[index :: len(RIG_CAMERAS)].astype(np.float32),
                world=synthetic.points[index :: len(RIG_CAMERAS)],
            )
            for index, camera in enumerate(RIG_CAMERAS)
        ]
        found.append(LearnedScanSamples(f"scan{scan}", "bracket.stl", views, synthetic.scene, {}))
    return found


@pytest.fixture
def calibration(tmp_path: Path) -> Path:
    """A copy of the demo calibration without its shipped station model."""
    directory = Path(shutil.copytree(DEMO_CALIBRATION, tmp_path / "calibration"))
    (directory / STATION_MODEL_FILE).unlink(missing_ok=True)
    return directory


@pytest.fixture(scope="module")
def synthetic_model(tmp_path_factory: pytest.TempPathFactory) -> StationModel:
    directory = Path(shutil.copytree(DEMO_CALIBRATION, tmp_path_factory.mktemp("rig") / "calibration"))
    (directory / STATION_MODEL_FILE).unlink(missing_ok=True)
    references: dict[str, np.ndarray] = {camera: tray(1, index) for index, camera in enumerate(RIG_CAMERAS)}
    return learn_station_model(station_scans(3), references, directory)


def test_save_keeps_every_earlier_model_and_numbers_the_new_one(
    synthetic_model: StationModel, calibration: Path
) -> None:
    assert load_station_model(calibration) is None
    first = save_station_model(synthetic_model, calibration)
    second = save_station_model(synthetic_model.model_copy(update={"notes": ["second"]}), calibration)
    third = save_station_model(synthetic_model.model_copy(update={"notes": ["third"]}), calibration)
    assert (first.version, second.version, third.version) == (1, 2, 3)
    current = load_station_model(calibration)
    assert current is not None and current.version == 3 and current.notes == ["third"]
    assert [version for version, _ in archived_versions(calibration)] == [1, 2]
    assert json.loads((calibration / "station_model.v2.json").read_text())["notes"] == ["second"]


def test_a_loaded_model_predicts_and_compares_as_the_learned_one(
    synthetic_model: StationModel, calibration: Path
) -> None:
    save_station_model(synthetic_model, calibration)
    loaded = load_station_model(calibration)
    assert loaded is not None
    scan = synthetic_scan(4)
    before = light_of(synthetic_model).expected(scan.scene, scan.points, scan.normals)
    after = light_of(loaded).expected(scan.scene, scan.points, scan.normals)
    assert after == pytest.approx(before, rel=1e-4)
    assert light_of(loaded).spread == pytest.approx(light_record_of(synthetic_model).spread)
    assert NOISE < light_record_of(loaded).spread < 2 * NOISE
    assert all(NOISE < loaded.camera_light(camera).spread < 2 * NOISE for camera in RIG_CAMERAS)
    assert not loaded.tray("cam04").compare(tray(1, 77)).changed
    assert [scan.gain for scan in loaded.scans] == pytest.approx(
        np.array(SCAN_GAINS[:3]) / np.median(SCAN_GAINS[:3]), rel=0.03
    )


@pytest.mark.parametrize(
    ("content", "said"),
    [
        ('{"format": 2, "version": ', "not a readable station model"),
        ('{"profile": "default"}', "not a station model of format 2"),
        ('{"format": 2, "version": 0}', "damaged station model"),
        ('{"format": 1, "version": 1, "cameras": {}}', "format 1, learned by an earlier version"),
    ],
)
def test_a_broken_old_or_foreign_file_names_itself_and_the_fix(calibration: Path, content: str, said: str) -> None:
    (calibration / STATION_MODEL_FILE).write_text(content)
    with pytest.raises(StationModelError) as caught:
        load_station_model(calibration)
    assert str(calibration / STATION_MODEL_FILE) in str(caught.value) and said in str(caught.value)
    assert "re-run `amflow-edge commission learn" in str(caught.value)


def test_learning_again_over_a_broken_file_keeps_it_aside(synthetic_model: StationModel, calibration: Path) -> None:
    (calibration / STATION_MODEL_FILE).write_text("{broken")
    saved = save_station_model(synthetic_model, calibration)
    assert saved.version == 1 and load_station_model(calibration) == saved
    assert (calibration / UNREADABLE_FILE).read_text() == "{broken"


def test_one_scan_or_too_few_samples_are_refused(calibration: Path) -> None:
    references: dict[str, np.ndarray] = {camera: tray(1, 1) for camera in RIG_CAMERAS}
    with pytest.raises(CommissioningError, match="at least 2 scans"):
        learn_station_model(station_scans(1), references, calibration)
    with pytest.raises(CommissioningError, match="cam01: only .* surface samples over 2 scans"):
        learn_station_model(station_scans(2, samples=400), references, calibration)


def test_the_report_shows_the_lamps_and_every_camera(synthetic_model: StationModel, tmp_path: Path) -> None:
    report = write_commission_report(synthetic_model, tmp_path / "report")
    sheet = cv2.imread(str(tmp_path / "report" / SHEET_FILE))
    assert sheet is not None and sheet.shape[0] > 6 * 256
    written = json.loads((tmp_path / "report" / REPORT_FILE).read_text())
    assert [c["camera"] for c in written["cameras"]] == list(RIG_CAMERAS) == [c.camera for c in report.cameras]
    assert report.lamps[0].share >= report.lamps[-1].share and sum(lamp.share for lamp in report.lamps) == (
        pytest.approx(1.0, abs=0.01)
    )
    top = [lamp for lamp in report.lamps if lamp.elevation_deg > 70]
    assert sum(lamp.share for lamp in top) == pytest.approx(100 / 255, abs=0.1)
    text = summary(synthetic_model)
    assert f"{len(report.lamps)} lamps" in text and "held-out spread" in text and "cam05" in text


def test_the_demo_rig_ships_commissioned_for_its_calibration() -> None:
    """scripts/commission-demo-rig wrote it; re-run the script when the demo calibration changes."""
    model = load_station_model(DEMO_CALIBRATION)
    assert model is not None, "run scripts/commission-demo-rig"
    assert model.calibration_digest == calibration_digest(DEMO_CALIBRATION), "run scripts/commission-demo-rig"
    assert sorted(model.cameras) == list(RIG_CAMERAS)
    assert 0 < light_record_of(model).spread < 0.05 and len(light_of(model).lamps) >= 1
    assert model.intact["silhouette_iou_min"].min > 0.9 and model.intact["surface_defect_contrast"].scans >= 2
    assert not list(DEMO_CALIBRATION.glob("station_model.v*.json"))


@dataclass(frozen=True)
class Rendered:
    scans: list[tuple[Path, Path]]
    """(scan directory, mesh file) of each intact part."""


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """Three intact demo parts on the demo rig, each scan with its own empty tray, written as `render` does."""
    from amflow_edge.drivers.simulator.render import Renderer
    from amflow_edge.inspection.designs import load_mesh_mm
    from amflow_edge.inspection.geometry.camera import load_rig
    from amflow_edge.inspection.geometry.placement import place_on_tray

    root = tmp_path_factory.mktemp("scans")
    renderer = Renderer(load_rig(DEMO_CALIBRATION))
    scans = []
    try:
        for seed, name in ((11, "flanged_bushing_fb20"), (12, "angle_bracket_ab60"), (13, "cross_knob_ck40")):
            mesh_file = REPO / "config" / "designs" / f"{name}.stl"
            mesh = load_mesh_mm(mesh_file, "mm")
            pose = place_on_tray(mesh, np.random.default_rng(seed), tray_size_mm=(300.0, 240.0))
            directory = root / name
            directory.mkdir()
            for camera, image in renderer.render(mesh, pose, seed).items():
                cv2.imwrite(str(directory / scan_image(camera)), image)
            for camera, image in renderer.render(None, None, seed + 500_000).items():
                cv2.imwrite(str(directory / reference_image(camera)), image)
            scans.append((directory, mesh_file))
    finally:
        renderer.close()
    return Rendered(scans)


def test_commission_learns_the_demo_look_and_shows_it(
    rendered: Rendered, calibration: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["commission", "show", "--calibration", str(calibration)]) == 2
    assert "commission learn" in capsys.readouterr().err

    args = [arg for directory, mesh in rendered.scans for arg in ("--scan", f"{directory}={mesh}")]
    report = tmp_path / "report"
    assert main(["commission", "learn", "--calibration", str(calibration), *args, "--report", str(report)]) == 0
    learned = capsys.readouterr().out
    assert "station model v1" in learned and "cam05" in learned

    model = load_station_model(calibration)
    assert model is not None and model.version == 1 and len(model.scans) == 3
    assert 0.0 < light_record_of(model).spread < 0.05
    # cam01 looks straight down: it sees nearly only upward faces, whose shading hardly varies, so there is
    # little for a light to explain; the side cameras see the part's shading.
    for camera in ("cam02", "cam03", "cam04", "cam05"):
        assert model.camera_light(camera).explained > 0.9, camera
    assert all(0.0 < model.camera_light(camera).spread < 0.06 for camera in RIG_CAMERAS)
    assert (report / SHEET_FILE).is_file() and (report / REPORT_FILE).is_file()

    other_empty = cv2.imread(str(rendered.scans[1][0] / reference_image("cam03")), cv2.IMREAD_UNCHANGED)
    assert other_empty is not None
    assert not model.tray("cam03").compare(other_empty).changed

    assert main(["commission", "show", "--calibration", str(calibration)]) == 0
    shown = capsys.readouterr().out
    assert "station model v1" in shown and "v1" in shown.split("versions:")[1]
    assert (
        f"{len(light_record_of(model).lamps)} lamps, held-out spread {100 * light_record_of(model).spread:.1f} %"
        in shown
    )


def test_commission_learn_refuses_bad_input_with_exit_2(
    rendered: Rendered, calibration: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (directory, mesh), (other, _) = rendered.scans[:2]
    one = ["commission", "learn", "--calibration", str(calibration), "--scan", f"{directory}={mesh}"]
    assert main(one) == 2
    assert "at least 2 scans" in capsys.readouterr().err
    assert main([*one, "--scan", f"{tmp_path / 'nowhere'}={mesh}"]) == 2
    assert "no such scan directory" in capsys.readouterr().err
    broken = tmp_path / "broken.stl"
    broken.write_text("solid nothing\nendsolid nothing\n")
    assert main([*one, "--scan", f"{other}={broken}"]) == 2
    assert str(broken) in capsys.readouterr().err
    assert not (calibration / STATION_MODEL_FILE).exists()


@pytest.mark.parametrize("thumbnail", ["abc", "!!!!", ""])
def test_a_damaged_tray_thumbnail_is_a_named_error_not_a_crash(thumbnail: str, tmp_path: Path) -> None:
    import json
    import shutil

    shutil.copy(REPO / "config" / "calibration" / "demo" / "station_model.json", tmp_path / "station_model.json")
    data = json.loads((tmp_path / "station_model.json").read_text())
    data["cameras"]["cam02"]["tray"]["thumbnail_png"] = thumbnail
    (tmp_path / "station_model.json").write_text(json.dumps(data))
    with pytest.raises(StationModelError, match="commission learn"):
        _tray_of_a_loaded_model(tmp_path, "cam02")


def _tray_of_a_loaded_model(directory: Path, camera: str) -> TrayAppearance:
    station = load_station_model(directory)
    assert station is not None
    return station.tray(camera)
