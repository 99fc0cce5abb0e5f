"""Station looks: the mock rig as many stations (lights, tray, camera) and parts in catalogue materials."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import trimesh
from pydantic import ValidationError
from scipy.ndimage import map_coordinates

from amflow_edge.cli.common import EXIT_BAD_INPUT
from amflow_edge.cli.render import RenderTruth
from amflow_edge.drivers.base import CameraSettings
from amflow_edge.drivers.mock import MockDriver
from amflow_edge.drivers.mock_settings import MockDriverSettings
from amflow_edge.drivers.simulator.look_lighting import LookLighting
from amflow_edge.drivers.simulator.looks import (
    KeyLight,
    LookError,
    Softbox,
    StationLook,
    known_looks,
    known_materials,
    load_look,
    load_material,
    load_materials,
)
from amflow_edge.drivers.simulator.materials import ALBEDO_BY_COLOUR, material_name_for
from amflow_edge.drivers.simulator.render import Renderer
from amflow_edge.inspection.geometry.camera import CameraCalibration, load_rig, save_calibration
from amflow_edge.inspection.geometry.raycast import mesh_data, place_part

REPO = Path(__file__).resolve().parent.parent
DEMO_RIG = REPO / "config" / "calibration" / "demo"
LOOKS = ("demo", "softbox_brushed", "dome_white", "key_black", "ring_anodised")
MATERIALS = (
    "pa12_white",
    "pa12_grey",
    "pa12_black",
    "pa12_green",
    "pa12_red",
    "mjf_grey",
    "fdm_orange_glossy",
    "fdm_black_glossy",
)
BOX_POSE = trimesh.transformations.concatenate_matrices(
    trimesh.transformations.translation_matrix((5.0, -8.0, 10.0)),
    trimesh.transformations.rotation_matrix(np.radians(20.0), (0, 0, 1)),
)
# sha256 of each camera's empty-tray image as the renderer drew it before station looks existed (seed 11, demo rig,
# full resolution): no ray is cast against a part, and it has hashed alike on every machine it ran on so far.
DEMO_EMPTY_HASHES = {
    "cam01": "7cb321bd99451b7cb976d744c1a6c2c11ef3509f11c8e58477d687f9d69ddd1a",
    "cam02": "e9df6eea9f5c09272f95242cb042e7800835018742f8b03099b76752dd1a6b91",
    "cam03": "224dd87d3bce887ac36b028587fe64c87c2495d7fa056d914e56dc83be3ec8c4",
    "cam04": "67df68581d94615f831699634db7c2332f2ed887c5c94167aff1a8da0baaba23",
    "cam05": "5b8b10377de556f3f695d21f8478bd2b5346535c3783cd15d3dd67ec81835270",
}
# What a part adds to those images, per camera: the sum of its change in DN and the pixels it changes. Drawing the
# part casts rays (open3d), whose last bits differ between processors (one machine's images hashed otherwise), so
# these are matched to DEMO_CHANGE_SHARE, far below what any change to the light, the tray or the part would move.
DEMO_CHANGES = {
    "box": {
        "cam01": (2224795, 326970),
        "cam02": (1108383, 261991),
        "cam03": (919372, 246973),
        "cam04": (1057195, 254961),
        "cam05": (997528, 259786),
    },
    "bracket_black": {
        "cam01": (-6885639, 631985),
        "cam02": (-7091492, 408075),
        "cam03": (-7225500, 553606),
        "cam04": (-7903172, 637563),
        "cam05": (-5905258, 444482),
    },
}
DEMO_CHANGE_SHARE = 0.001


@pytest.fixture(scope="module")
def small_rig() -> list[CameraCalibration]:
    """The demo rig at a quarter of the resolution: the same views, a sixteenth of the pixels."""
    rig = []
    for calib in load_rig(DEMO_RIG):
        k = np.array(calib.camera_matrix)
        k[:2, :2] *= 0.25
        k[:2, 2] = (k[:2, 2] + 0.5) * 0.25 - 0.5
        rig.append(calib.model_copy(update={"camera_matrix": k.tolist(), "image_width": 612, "image_height": 512}))
    return rig


@pytest.fixture(scope="module")
def box() -> trimesh.Trimesh:
    return trimesh.creation.box((50.0, 30.0, 20.0))


def test_every_shipped_look_and_material_loads() -> None:
    assert set(LOOKS) <= set(known_looks())
    for name in known_looks():
        look = load_look(name)
        assert look.lights
        text = (REPO / "config" / "looks" / f"{name}.toml").read_text(encoding="utf-8")
        assert text.startswith("# "), f"{name}.toml must start with a comment saying what station it stands for"
    assert load_look("demo") == StationLook(), "the demo look is the renderer's default physics"
    assert load_look(REPO / "config" / "looks" / "key_black.toml") == load_look("key_black")
    assert any(isinstance(light, Softbox) for light in load_look("softbox_brushed").lights)
    assert any(isinstance(light, KeyLight) for light in load_look("key_black").lights)
    assert set(MATERIALS) <= set(known_materials())
    for name in known_materials():
        material = load_material(name)
        assert material.description and 0 < material.albedo <= 1
    assert load_material("pa12_black").albedo < 0.1 < load_material("pa12_white").albedo - 0.5
    assert load_material("fdm_orange_glossy").shininess > load_material("pa12_grey").shininess


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ('exposure_dn = -5.0\n[[lights]]\nkind = "dome"\n', "exposure_dn", "greater than 0"),
        ('exposure = 300.0\n[[lights]]\nkind = "dome"\n', "exposure", "not a known field"),
        ('[[lights]]\nkind = "dome"\n[[lights]]\nkind = "laser"\n', r"[[lights]] #2", "unknown kind 'laser'"),
        (
            '[[lights]]\nkind = "softbox"\ncentre_mm = [0.0, 0.0, 300.0]\nsize_mm = [100.0, 100.0]\n'
            "aim_mm = [0.0, 0.0, 600.0]\nintensity = 0.5\n",
            r"[[lights]] #1",
            "turns its back on the tray",
        ),
        (
            '[[lights]]\nkind = "key"\nposition_mm = [0.0, 0.0, 300.0]\nintensity = 0.5\nradius_mm = 4.0\n',
            r"[[lights]] #1.radius_mm",
            "not a known field",
        ),
        ('[tray]\nkind = "wood"\n', "tray.kind", "machined_aluminium"),
        ('[[lights]]\nkind = "dome"\nshare = 0.0\n', "(file)", "every light is off"),
        ("lights = [", "", "not valid TOML"),
    ],
)
def test_a_bad_look_file_names_the_file_the_field_and_the_fix(tmp_path: Path, text: str, where: str, what: str) -> None:
    path = tmp_path / "station.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(LookError) as info:
        load_look(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert where in message and what in message, message


def test_unknown_names_list_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(LookError, match=r"no such station look; use one of .*key_black.*softbox_brushed"):
        load_look("studio_54")
    with pytest.raises(LookError, match=r"no material 'unobtainium'; use one of .*pa12_black.*pa12_white"):
        load_material("unobtainium")
    catalogue = tmp_path / "materials.toml"
    catalogue.write_text('[shiny]\ndescription = "x"\nalbedo = 1.5\n[dull]\nalbedo = 0.2\nglow = 1\n')
    with pytest.raises(LookError) as info:
        load_materials(catalogue)
    message = str(info.value)
    assert "[shiny].albedo" in message and "[dull].description" in message and "[dull].glow" in message, message
    with pytest.raises(ValidationError, match="no such station look"):
        MockDriverSettings(look="studio_54")
    with pytest.raises(ValidationError, match="no material 'unobtainium'"):
        MockDriverSettings(material="unobtainium")
    settings = MockDriverSettings(look="key_black", material="pa12_black")
    assert (settings.look, settings.material) == ("key_black", "pa12_black")
    assert MockDriverSettings().look == "demo" and MockDriverSettings().material is None


def test_colour_tokens_map_to_catalogue_materials_and_keep_the_demo_albedos() -> None:
    assert material_name_for("a" * 40 + "_SLS_PA12_BLACK") == "pa12_black"
    assert material_name_for("a" * 40 + "_SLS_PA12_WHITE") == "pa12_white"
    assert material_name_for("a" * 40 + "_SLS_PA12_PLAID") == "pa12_grey"
    assert ALBEDO_BY_COLOUR == {"BLACK": 0.08, "GREY": 0.46, "GRAY": 0.46, "WHITE": 0.8, "GREEN": 0.3, "NATURAL": 0.6}


def test_the_demo_look_renders_the_images_the_renderer_drew_before_looks_existed(box: trimesh.Trimesh) -> None:
    """Tests and tuned benchmarks depend on the demo station's images: the demo look draws them exactly as the
    renderer without a look does, its empty tray bit for bit as before looks existed, and its parts as before."""
    rig = load_rig(DEMO_RIG)
    bracket = trimesh.load(REPO / "config" / "designs" / "angle_bracket_ab60.stl")
    assert isinstance(bracket, trimesh.Trimesh)
    bracket_pose = trimesh.transformations.translation_matrix((-60.0, 40.0, -float(bracket.bounds[0][2])))
    default, demo = Renderer(rig), Renderer(rig, look=load_look("demo"))
    try:
        box_default = default.render(box, BOX_POSE, 11)
        box_demo = demo.render(box, BOX_POSE, 11)
        rendered = {"box": box_default, "bracket_black": demo.render(bracket, bracket_pose, 11, albedo=0.08)}
        empty = demo.render(None, None, 11)
    finally:
        default.close()
        demo.close()
    assert all(np.array_equal(box_default[name], box_demo[name]) for name in box_default)
    assert {name: hashlib.sha256(image.tobytes()).hexdigest() for name, image in empty.items()} == DEMO_EMPTY_HASHES
    for scene, images in rendered.items():
        for name, image in images.items():
            added = int(image.astype(np.int64).sum() - empty[name].astype(np.int64).sum())
            changed = int(np.count_nonzero(image != empty[name]))
            want_added, want_changed = DEMO_CHANGES[scene][name]
            assert abs(added - want_added) <= DEMO_CHANGE_SHARE * abs(want_added), (scene, name, added, want_added)
            assert abs(changed - want_changed) <= DEMO_CHANGE_SHARE * want_changed, (scene, name, changed, want_changed)


def _edge_width(grid_factor: np.ndarray, origin: np.ndarray, cell: float, start: np.ndarray, end: np.ndarray) -> float:
    """10-90 % width (mm) of the shadow edge met going from `start` (in the shadow) to `end` (lit), on the tray."""
    s = np.linspace(0.0, 1.0, 2001)
    points = start[None, :] + s[:, None] * (end - start)[None, :]
    rows = (points[:, 1] - origin[1]) / cell - 0.5
    cols = (points[:, 0] - origin[0]) / cell - 0.5
    profile = map_coordinates(grid_factor, [rows, cols], order=1, mode="nearest")
    low, high = float(profile[0]), float(profile[-1])
    assert high - low > 0.1, f"no shadow edge between {start} and {end}: {low:.3f} … {high:.3f}"
    level = (profile - low) / (high - low)
    length = float(np.linalg.norm(end - start))
    return (float(s[np.argmax(level >= 0.9)]) - float(s[np.argmax(level >= 0.1)])) * length


def test_soft_boxes_cast_wider_penumbrae_than_a_hard_key_light() -> None:
    """An 80×80×40 mm block: going away from the light, out of its shadow, the soft box's edge is several times wider."""
    rig = load_rig(DEMO_RIG)
    block = trimesh.creation.box((80.0, 80.0, 40.0))
    placed = place_part(block, mesh_data(block), trimesh.transformations.translation_matrix((0.0, 0.0, 20.0)))
    widths = {}
    for name in ("key_black", "softbox_brushed"):
        look = load_look(name)
        grid = LookLighting(rig, look).shadow_grid(placed.scene, placed.support_world)
        light = next(light for light in look.lights if isinstance(light, KeyLight | Softbox))
        source = np.array(light.position_mm if isinstance(light, KeyLight) else light.centre_mm)[:2]
        away = -source / np.linalg.norm(source)
        edge = 40.0 / np.max(np.abs(away))  # where the line leaves the block
        start, end = (edge + 10.0) * away, (edge + 130.0) * away
        widths[name] = _edge_width(grid.factor, grid.origin, grid.cell_mm, start, end)
    assert widths["key_black"] < 2.5, widths
    assert widths["softbox_brushed"] > 4.0 * widths["key_black"], widths


@pytest.mark.parametrize("look_name", LOOKS)
def test_the_empty_tray_matches_the_part_image_away_from_the_part_and_its_shadow(
    small_rig: list[CameraCalibration], box: trimesh.Trimesh, look_name: str
) -> None:
    renderer = Renderer(small_rig, look=load_look(look_name))
    try:
        part = renderer.render(box, BOX_POSE, seed=3, material=load_material("pa12_grey"))
        empty = renderer.render(None, None, seed=3)
    finally:
        renderer.close()
    for calib in small_rig:
        rays = calib.pixel_rays()
        t = -calib.centre[2] / np.minimum(rays[..., 2], -1e-6)
        x, y = calib.centre[0] + t * rays[..., 0], calib.centre[1] + t * rays[..., 1]
        far = np.hypot(x - BOX_POSE[0, 3], y - BOX_POSE[1, 3]) > 180.0  # a soft box's lowest edge casts long shadows
        changed = part[calib.name] != empty[calib.name]
        assert np.count_nonzero(far) > part[calib.name].size // 4, calib.name
        assert not np.any(changed & far), f"{look_name} {calib.name}: {np.count_nonzero(changed & far)} pixels"
        assert np.count_nonzero(changed & ~far) > 500, f"{look_name} {calib.name}: the part is not in the image"


def test_a_black_part_is_darker_than_the_tray_and_a_white_one_brighter_under_the_demo_look(
    small_rig: list[CameraCalibration], box: trimesh.Trimesh
) -> None:
    renderer = Renderer(small_rig, look=load_look("demo"))
    top = small_rig[0]
    try:
        empty = renderer.render(None, None, seed=4)[top.name]
        black = renderer.render(box, BOX_POSE, seed=4, material=load_material("pa12_black"))[top.name]
        white = renderer.render(box, BOX_POSE, seed=4, material=load_material("pa12_white"))[top.name]
    finally:
        renderer.close()
    u, v = np.round(top.project(BOX_POSE[:3, 3][None, :] + [0.0, 0.0, 10.0])[0]).astype(int)
    patch = (slice(v - 6, v + 7), slice(u - 6, u + 7))
    tray, dark, bright = (float(image[patch].mean()) for image in (empty, black, white))
    assert dark < tray - 30 and bright > tray + 60, (dark, tray, bright)


def test_render_cli_takes_a_look_and_a_material_and_records_them(
    tmp_path: Path, small_rig: list[CameraCalibration]
) -> None:
    rig = tmp_path / "rig"
    rig.mkdir()
    for calib in small_rig:
        save_calibration(calib, rig / f"{calib.name}.yaml")
    block = tmp_path / "block.stl"
    trimesh.creation.box((40.0, 25.0, 15.0)).export(block)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "amflow_edge.cli", "render", str(block), "--out", str(out)]
    command += ["--calibration", str(rig), "--seed", "3", "--look", "softbox_brushed", "--material", "pa12_black"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    truth = RenderTruth.model_validate_json((out / "truth.json").read_text())
    assert (truth.look, truth.material) == ("softbox_brushed", "pa12_black")
    assert len(list(out.glob("scan_cam0*.png"))) == 5 and len(list(out.glob("empty_cam0*.png"))) == 5
    assert json.loads((out / "truth.json").read_text())["look"] == "softbox_brushed"

    for flag, bad, known in (("--look", "studio_54", "key_black"), ("--material", "unobtainium", "pa12_black")):
        bad_out = tmp_path / f"bad{flag}"
        command = [sys.executable, "-m", "amflow_edge.cli", "render", str(block), "--out", str(bad_out)]
        done = subprocess.run(command + [flag, bad], capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == EXIT_BAD_INPUT, done.stderr
        assert bad in done.stderr and known in done.stderr, done.stderr
        assert not (bad_out / "truth.json").exists()


class _Block:
    design_material = "c" * 40 + "_SLS_PA12_BLACK"
    title = "Block"

    def mesh(self) -> trimesh.Trimesh:
        return trimesh.creation.box((40.0, 25.0, 15.0))


class _Library:
    designs = (_Block(),)

    def get(self, design_material: str) -> _Block:
        if design_material != _Block.design_material:
            raise KeyError(design_material)
        return _Block()


def test_the_mock_driver_renders_its_configured_look_and_material(
    tmp_path: Path, small_rig: list[CameraCalibration]
) -> None:
    cameras = []
    for calib in small_rig:
        path = tmp_path / f"{calib.name}.yaml"
        save_calibration(calib, path)
        cameras.append(CameraSettings(name=calib.name, serial=calib.serial, calibration=path, width=612, height=512))
    shots = {}
    variants: dict[str, dict[str, object]] = {
        "demo": {},
        "demo_by_colour": {"materials": True},
        "key_black_pa12_black": {"look": "key_black", "material": "pa12_black"},
    }
    for label, update in variants.items():
        settings = MockDriverSettings.model_validate({"seed": 2, "scene_pool": 1, **update})
        driver = MockDriver(cameras, settings, _Library())
        driver.open()
        try:
            driver.trigger()
            shots[label] = driver.grab(5.0)
        finally:
            driver.close()
    for name in ("cam01", "cam03"):
        demo, by_colour, other = (shots[label].frames[name].image for label in shots)
        part = demo != by_colour  # the same scene; only the part's albedo (BLACK: 0.08) differs
        assert np.count_nonzero(part) > 200
        assert float(by_colour[part].mean()) < float(demo[part].mean()) - 20
        assert float(np.abs(other.astype(np.int16) - demo).mean()) > 5.0, "another look must look different"
    assert shots["key_black_pa12_black"].metadata == shots["demo"].metadata
