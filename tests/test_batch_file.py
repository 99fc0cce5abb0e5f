"""Batch files: the model a session request uses, read from JSON or TOML, every problem named with its fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amflow_edge.common.shipped import CONFIG_DIR
from amflow_edge.config.batch_file import BatchFileError, load_batch_file
from amflow_edge.inspection.designs import DesignLibrary
from amflow_edge.station.designs import BatchDesignError, DesignCatalogue

DEMO_BATCH = CONFIG_DIR / "designs" / "demo_batch.toml"
GLASSES = "a" * 40


def _part(part_id: str, **extra: object) -> dict[str, object]:
    return {
        "part_id": part_id,
        "part_title": f"part {part_id}",
        "design_material": f"{GLASSES}_SLS_PA12_GREEN",
        "copies": 2,
        "mesh": "glasses.stl",
        **extra,
    }


def test_the_shipped_demo_batch_loads_and_its_meshes_match_their_ids() -> None:
    batch = load_batch_file(DEMO_BATCH)
    assert batch.batch.id == "DEMO_BATCH_001"
    assert len({p.part_id for p in batch.parts}) == len(batch.parts) == 6
    library = DesignLibrary.load(DEMO_BATCH.parent / "designs.toml")
    catalogue = DesignCatalogue(library, DEMO_BATCH.parent)
    designs = catalogue.resolve([], batch.parts, DEMO_BATCH.parent)
    assert {d.design_material for d in designs} == {p.design_material for p in batch.parts}


def test_json_and_toml_give_the_same_batch(tmp_path: Path) -> None:
    body = {
        "batch": {"id": "B1", "title": "glasses"},
        "parts": [
            _part("1", output={"id": 2}),
            _part("2", design_material=f"{GLASSES}_SLS_PA12_BLACK"),
            _part("3", design_material=f"{GLASSES}_MJF_PA12_PLAIN", units="inch"),
        ],
    }
    (tmp_path / "b.json").write_text(json.dumps(body))
    toml = ['[batch]\nid = "B1"\ntitle = "glasses"\n']
    for part in body["parts"]:
        assert isinstance(part, dict)
        toml.append("[[parts]]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in part.items()))
    (tmp_path / "b.toml").write_text("\n".join(toml))
    assert load_batch_file(tmp_path / "b.json") == load_batch_file(tmp_path / "b.toml")


def _toml(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"batch": {"id": "B", "title": "t"}, "parts": []}, "parts"),
        ({"batch": {"id": "B", "title": "t"}, "parts": [_part("1"), _part("1")]}, "listed twice"),
        ({"batch": {"id": "B", "title": "t"}, "parts": [_part("1", copies=0)]}, "parts[0].copies"),
        ({"batch": {"id": "B", "title": "t"}, "parts": [_part("1", copies="2")]}, "parts[0].copies"),
        ({"batch": {"id": "B", "title": "t"}, "parts": [_part("1", design_material="glasses")]}, "design_material"),
        ({"batch": {"id": "B", "title": "t"}, "parts": [_part("1", colour="RED")]}, "parts[0].colour"),
        ({"batch": {"id": "B"}, "parts": [_part("1")]}, "batch.title"),
    ],
)
def test_a_bad_batch_file_names_the_problem(tmp_path: Path, body: dict[str, object], named: str) -> None:
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(body))
    with pytest.raises(BatchFileError) as caught:
        load_batch_file(path)
    assert named in str(caught.value) and str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("name", "text", "named"),
    [
        ("batch.yaml", "batch: {}", ".json or .toml"),
        ("batch.json", "{", "not valid JSON"),
        ("batch.toml", "[batch", "not valid TOML"),
        ("missing.json", None, "no such batch file"),
    ],
)
def test_an_unreadable_batch_file_says_why(tmp_path: Path, name: str, text: str | None, named: str) -> None:
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(BatchFileError, match=named):
        load_batch_file(path)


def test_a_part_whose_mesh_is_not_the_file_its_id_names_is_refused(tmp_path: Path) -> None:
    mesh = tmp_path / "cube.stl"
    mesh.write_bytes((CONFIG_DIR / "designs" / "montageblok_mb80.stl").read_bytes())
    cfg_library = DesignLibrary.load(CONFIG_DIR / "designs" / "designs.toml")
    catalogue = DesignCatalogue(cfg_library, tmp_path)
    body = {"batch": {"id": "B", "title": "t"}, "parts": [_part("1", mesh="cube.stl")]}
    (tmp_path / "b.json").write_text(json.dumps(body))
    batch = load_batch_file(tmp_path / "b.json")
    with pytest.raises(BatchDesignError, match="does not match mesh"):
        catalogue.resolve([], batch.parts, tmp_path)


def test_two_parts_of_one_design_must_name_the_same_mesh(tmp_path: Path) -> None:
    body = {"batch": {"id": "B", "title": "t"}, "parts": [_part("1"), _part("2", mesh="other.stl")]}
    path = tmp_path / "batch.json"
    path.write_text(json.dumps(body))
    with pytest.raises(BatchFileError, match="share design_material .* but name different meshes"):
        load_batch_file(path)
    body["parts"] = [_part("1"), _part("2", copies=5)]  # the same design as two order lines is fine
    path.write_text(json.dumps(body))
    assert [p.copies for p in load_batch_file(path).parts] == [2, 5]
