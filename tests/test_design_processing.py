"""Processing a batch's designs at session start: in the background, one design at a time, every outcome told.

Real meshes and the real preparation (the design cache the inspection workers read): a closed
solid, a mesh that needed repair, one used open, and one with no usable geometry.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

from amflow_edge.inspection.designs import Design
from amflow_edge.station.design_processing import DesignProcessing

MESHES = Path(__file__).resolve().parent / "data" / "meshes"


def _design(path: Path, colour: str = "GREY") -> Design:
    digest = hashlib.sha1(path.read_bytes()).hexdigest()
    return Design(f"{digest}_SLS_PA12_{colour}", path.stem, path, "mm", "SLS", "PA12", colour)


class Recorder:
    """The state-topic hook: what each progress report said, and when the batch was ready."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.ready = threading.Event()
        self.processing: DesignProcessing | None = None

    def __call__(self) -> None:
        assert self.processing is not None
        state = self.processing.progress().state
        self.states.append(state)
        if state == "ready":
            self.ready.set()


def _processing(tmp_path: Path) -> tuple[DesignProcessing, Recorder]:
    recorder = Recorder()
    recorder.processing = DesignProcessing(tmp_path / "cache", on_progress=recorder)
    return recorder.processing, recorder


def test_every_design_is_processed_and_each_outcome_is_told(tmp_path: Path) -> None:
    processing, recorder = _processing(tmp_path)
    cube = _design(MESHES / "20mm-xyz-cube.stl")
    black_cube = _design(MESHES / "20mm-xyz-cube.stl", colour="BLACK")  # one geometry, two materials: once
    bowtie = _design(MESHES / "broken" / "bowtie.stl")
    cup = _design(MESHES / "broken" / "open_cup.stl")
    flat = _design(MESHES / "broken" / "garbage.stl")
    waited: list[str] = []
    processing.start([])
    assert processing.ready()
    try:
        processing.start([cube, black_cube, bowtie, cup, flat])
        assert recorder.ready.wait(300)
        progress = processing.progress()
        processing.when_ready(lambda: waited.append("ran at once"))
    finally:
        processing.close()
    assert recorder.states[0] == "idle" and recorder.states[1] == "processing" and recorder.states[-1] == "ready"
    assert progress.done == progress.total == 5
    assert [f.design_material for f in progress.failed] == [flat.design_material]
    assert "no triangles could be read" in progress.failed[0].error and "Fix:" in progress.failed[0].error
    assert {r.design_material for r in progress.repaired} == {bowtie.design_material, cup.design_material}
    assert processing.failed() == {flat.design_material}
    assert waited == ["ran at once"]
    assert len(list((tmp_path / "cache").iterdir())) >= 3  # the designs' data is on disk for the workers


def test_scans_wait_for_the_batch_and_a_new_batch_replaces_the_old(tmp_path: Path) -> None:
    processing, recorder = _processing(tmp_path)
    first = [_design(MESHES / "idler_riser.STL"), _design(MESHES / "featuretype.STL")]
    released: list[str] = []
    try:
        processing.start(first)
        processing.when_ready(lambda: released.append("scan 1"))
        assert not processing.ready() or released == ["scan 1"]
        processing.start([_design(MESHES / "20mm-xyz-cube.stl")])
        assert recorder.ready.wait(300)
        progress = processing.progress()
    finally:
        processing.close()
    assert progress.total == progress.done == 1  # the second batch replaced the first
    assert released == ["scan 1"]  # a scan waiting for the old batch is still handed on
