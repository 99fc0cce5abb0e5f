"""`amflow-edge identify DIR --batch FILE`: the station's identification on a scan directory, as an integrator runs it."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.station_files import DESIGN_CACHE, REPO

VORON = REPO / "tests" / "data" / "meshes" / "voron2"
PARTS = {
    "LATCH": "Panel_Mounting__Front_Doors__latch_x2.stl",
    "GUIDE": "Gantry__z_chain_guide.stl",
    "JIG": "Tools__pulley_jig.stl",
    "GUARD": "Skirts__[a]_belt_guard_a_x2.stl",
}


def cli(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "amflow_edge.cli", *map(str, argv)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)


def write_batch(folder: Path, design_material: dict[str, str] | None = None) -> Path:
    parts: list[dict[str, Any]] = []
    for part_id, name in PARTS.items():
        shutil.copyfile(VORON / name, folder / name)
        digest = hashlib.sha1((VORON / name).read_bytes()).hexdigest()
        ident = (design_material or {}).get(part_id, f"{digest}_SLS_PA12_GREY")
        parts.append({"part_id": part_id, "part_title": name, "design_material": ident, "copies": 2, "mesh": name})
    path = folder / "batch.json"
    path.write_text(json.dumps({"batch": {"id": "B-1", "title": "voron"}, "parts": parts}))
    return path


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("scan")
    rendered = cli("render", VORON / PARTS["LATCH"], "--out", out, "--seed", "5")
    assert rendered.returncode == 0, rendered.stderr
    return out


def test_the_part_in_the_directory_is_named_with_its_candidates(scan: Path, tmp_path: Path) -> None:
    found = cli("identify", scan, "--batch", write_batch(tmp_path), "--cache", DESIGN_CACHE)
    assert found.returncode == 0, found.stderr
    answer = json.loads(found.stdout)
    latch = hashlib.sha1((VORON / PARTS["LATCH"]).read_bytes()).hexdigest()
    assert answer["design_material"] == f"{latch}_SLS_PA12_GREY" and answer["part_id"] == "LATCH"
    assert answer["outcome"] == "identified" and answer["reason"]
    assert answer["candidates"][0]["design_material"] == answer["design_material"]
    assert answer["candidates"][0]["part_ids"] == ["LATCH"]
    scores = [c["score"] for c in answer["candidates"]]
    assert scores == sorted(scores, reverse=True) and len(scores) >= 2
    assert not (scan / "identification.json").exists()  # the command reads the directory, writes nothing


def test_a_batch_whose_id_does_not_match_its_mesh_is_refused_with_the_right_id(scan: Path, tmp_path: Path) -> None:
    wrong = f"{'0' * 40}_SLS_PA12_GREY"
    found = cli("identify", scan, "--batch", write_batch(tmp_path, {"JIG": wrong}))
    digest = hashlib.sha1((VORON / PARTS["JIG"]).read_bytes()).hexdigest()
    assert found.returncode == 2 and found.stdout == ""
    assert "part 'JIG'" in found.stderr and f"{digest}_SLS_PA12_GREY" in found.stderr


def test_a_directory_without_the_scan_images_is_refused(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    found = cli("identify", tmp_path / "empty", "--batch", write_batch(tmp_path))
    assert found.returncode == 2 and "scan_cam01.png" in found.stderr
