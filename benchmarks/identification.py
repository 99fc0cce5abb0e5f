"""Identification benchmark: which of a batch's designs lies on the tray, on batches of Voron 2 printed parts.

    .venv/bin/python benchmarks/identification.py            # batches of 20, 50 and 100 designs (about 20 min)
    .venv/bin/python benchmarks/identification.py --quick    # batches of 20 and 50, fewer scenes (about 5 min)
    .venv/bin/python benchmarks/identification.py --seed 1000  # the seeds the thresholds were tuned on
    .venv/bin/python benchmarks/identification.py --colours grey  # every part GREY: geometry apart from material

With --verbose every scene's outcome is printed, and for a part of the batch that was not named the rank of its
true design among the scored candidates (beyond 12: not shortlisted), to tell a ranking miss from a refusal.

Batches are drawn by look-alike family (left/right mirror images, a/b variants, 250/300/350 sizes, 2-hole/3-hole,
3 mm/4 mm), whole families at a time, so every batch holds the hard cases. Some designs come in two materials of
clearly different reflectance (same mesh, another colour token), rendered with that colour's albedo; their looks
are learned first from a few scenes of other seeds, as a station learns them from confirmed scans. Every batch
also sees parts not in it and empty trays, which must never be assigned. Scenes are rendered once at full
resolution and kept in --scenes (a directory; reruns are cheaper); designs are prepared into a fresh cache, timed.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amflow_edge.drivers.simulator.materials import albedo_for  # noqa: E402
from amflow_edge.drivers.simulator.render import Renderer  # noqa: E402
from amflow_edge.inspection.designs import load_mesh_mm  # noqa: E402
from amflow_edge.inspection.geometry.camera import CameraCalibration, load_rig  # noqa: E402
from amflow_edge.inspection.geometry.placement import place_on_tray  # noqa: E402
from amflow_edge.inspection.identification.appearance import measure  # noqa: E402
from amflow_edge.inspection.identification.descriptors import file_sha1  # noqa: E402
from amflow_edge.inspection.identification.models import (  # noqa: E402
    CandidateDesign,
    Identification,
    MaterialLook,
)
from amflow_edge.inspection.identification.pipeline import (  # noqa: E402
    _segment,
    identify_and_inspect,
    prepare_design,
)
from amflow_edge.inspection.profiles import load_profile  # noqa: E402

VORON = REPO.parent / "shared" / "meshes" / "voron2"
"""The whole corpus, beside the checkout (the tests use a copy of a few parts in tests/data)."""
TWO_MATERIALS = 0.2
"""Share of designs that come in a second material."""
SECOND_COLOUR = {"GREY": "WHITE", "GREEN": "GREY"}
REFERENCE_OFFSET = 500_000


@dataclass(frozen=True)
class Design:
    name: str
    path: Path
    mesh: trimesh.Trimesh
    sha1: str
    family: str


@dataclass(frozen=True)
class Scene:
    kind: str
    """'part' (a design of the pool), or 'empty'."""
    design: str | None
    colour: str
    seed: int


def family(stem: str) -> str:
    """The look-alike family of a Voron part: its name with the left/right, a/b, size, hole and thickness marks
    taken out."""
    key = re.sub(r"_x\d+$", "", stem)
    key = re.sub(r"(left|right)", "#", key)
    key = re.sub(r"(?<=_)[ab](?=_|$)", "#", key)
    key = re.sub(r"(250|300|350)", "#", key)
    key = re.sub(r"[23]hole", "#", key)
    key = re.sub(r"[34]mm", "#", key)
    key = re.sub(r"(MGN9|MGN12)", "#", key)
    key = re.sub(r"(6mm|9mm)", "#", key)
    return key


def load_designs() -> list[Design]:
    designs = []
    for path in sorted(VORON.glob("*.stl")):
        try:
            mesh = load_mesh_mm(path, "mm")
        except ValueError as exc:
            print(f"  skip {path.stem}: {str(exc)[:120]}")
            continue
        designs.append(Design(path.stem, path, mesh, file_sha1(path), family(path.stem)))
    return designs


def draw_batch(designs: list[Design], size: int, rng: np.random.Generator) -> list[Design]:
    """`size` designs: about half of them whole look-alike families (mirror images, variants), the rest drawn at
    random. A batch of look-alikes only would measure nothing but the look-alikes; one drawn at random would
    rarely hold a mirror pair."""
    families: dict[str, list[Design]] = {}
    for design in designs:
        families.setdefault(design.family, []).append(design)
    alike = [k for k in families if len(families[k]) >= 2]
    rng.shuffle(alike)
    batch: list[Design] = []
    for key in alike:
        if len(batch) + len(families[key]) <= max(size // 2, 2):
            batch += families[key]
    rest = [d for d in designs if d not in batch]
    order = rng.permutation(len(rest))
    batch += [rest[int(i)] for i in order[: size - len(batch)]]
    return batch


class SceneStore:
    """Rendered scenes kept on disk as the crops that differ from the empty tray of the same seed."""

    def __init__(self, directory: Path, cameras: list[CameraCalibration]) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.cameras = cameras
        self._renderer: Renderer | None = None
        self._empty: dict[int, dict[str, np.ndarray]] = {}

    @property
    def renderer(self) -> Renderer:
        if self._renderer is None:
            self._renderer = Renderer(self.cameras)
        return self._renderer

    def empty(self, seed: int) -> dict[str, np.ndarray]:
        if seed not in self._empty:
            if len(self._empty) > 4:
                self._empty.clear()
            self._empty[seed] = self.renderer.render(None, None, seed)
        return self._empty[seed]

    def images(self, scene: Scene, mesh: trimesh.Trimesh | None) -> dict[str, np.ndarray]:
        if mesh is None:
            return self.renderer.render(None, None, scene.seed)
        key = hashlib.sha1(f"{scene.design}|{scene.seed}|{scene.colour}".encode()).hexdigest()
        path = self.directory / f"{key}.npz"
        base = self.empty(scene.seed)
        if path.is_file():
            with np.load(path) as data:
                out = {}
                for name, image in base.items():
                    full = image.copy()
                    x0, y0 = data[f"{name}_at"]
                    crop = data[name]
                    full[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
                    out[name] = full
                return out
        pose = place_on_tray(mesh, np.random.default_rng(scene.seed))
        images = self.renderer.render(mesh, pose, scene.seed, albedo=albedo_for(f"x_x_x_{scene.colour}"))
        arrays = {}
        for name, image in images.items():
            changed = np.argwhere(image != base[name])
            (y0, x0), (y1, x1) = (changed.min(0), changed.max(0) + 1) if len(changed) else ((0, 0), (1, 1))
            arrays[name] = image[y0:y1, x0:x1]
            arrays[f"{name}_at"] = np.array([x0, y0])
        np.savez_compressed(path, allow_pickle=False, **arrays)
        return images


def design_material(design: Design, colour: str) -> str:
    return f"{design.sha1}_SLS_PA12_{colour}"


def learn_looks(store: SceneStore, designs: list[Design], colours: list[str], seed: int) -> dict[str, MaterialLook]:
    """Each colour's look from four scenes of other designs and seeds than the benchmark's, as confirmed scans."""
    rng = np.random.default_rng(seed)
    looks: dict[str, MaterialLook] = {}
    for colour in colours:
        values = []
        for k in range(4):
            design = designs[int(rng.integers(len(designs)))]
            scene = Scene("part", design.name, colour, seed + 100 * len(looks) + k)
            images = store.images(scene, design.mesh)
            reference = store.empty(scene.seed + REFERENCE_OFFSET)
            value = measure(_segment(images, reference, store.cameras), images, reference)
            if value is not None:
                values.append(value)
        looks[colour] = MaterialLook(mean=float(np.mean(values)), spread=float(np.std(values)), samples=len(values))
        print(f"  look of {colour}: {looks[colour].mean:.3f} ± {looks[colour].spread:.3f} ({len(values)} scenes)")
    return looks


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="batches of 20 and 50, fewer scenes")
    parser.add_argument("--seed", type=int, default=7000, help="scene seed; 1000 is what the thresholds were tuned on")
    parser.add_argument("--sizes", default=None, help="comma-separated batch sizes (default 20,50,100; quick 20,50)")
    parser.add_argument("--scenes", type=Path, default=Path(tempfile.gettempdir()) / "amflow-ident-bench-scenes")
    parser.add_argument("--per-batch", type=int, default=None, help="scenes of batch designs per batch")
    parser.add_argument("--outsiders", type=int, default=None, help="scenes of designs not in the batch, per batch")
    parser.add_argument("--no-inspect", action="store_true", help="identification only")
    parser.add_argument("--verbose", action="store_true", help="print every scene's outcome")
    parser.add_argument(
        "--colours",
        choices=("mixed", "grey"),
        default="mixed",
        help="mixed: GREY, GREEN and second materials as drawn; grey: every part GREY, one material per design, "
        "to tell what geometry costs from what material and segmentation cost",
    )
    parser.add_argument(
        "--cache", type=Path, default=None, help="design cache to reuse (default: a fresh one, prepared and timed)"
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # a TextIOWrapper when run as a script
    sizes = [int(s) for s in (args.sizes or ("20,50" if args.quick else "20,50,100")).split(",")]
    per_batch = args.per_batch or (24 if args.quick else 60)
    outsiders, empties = (5, 2) if args.quick else (10, 3)
    outsiders = outsiders if args.outsiders is None else args.outsiders
    cameras = load_rig(REPO / "config" / "calibration" / "demo")
    profile = load_profile("default")
    store = SceneStore(args.scenes, cameras)
    print(f"seed {args.seed}, colours {args.colours}; scenes kept in {args.scenes}")
    designs = load_designs()
    by_name = {d.name: d for d in designs}
    rng = np.random.default_rng(args.seed)
    two = {d.name for d in designs if rng.random() < TWO_MATERIALS}
    first_colour = {d.name: ("GREEN" if rng.random() < 0.3 else "GREY") for d in designs}
    if args.colours == "grey":
        two, first_colour = set(), dict.fromkeys(first_colour, "GREY")
    looks = learn_looks(store, designs, ["GREY", "WHITE", "GREEN"], args.seed + 90_000)
    cache = args.cache or Path(tempfile.mkdtemp(prefix="amflow-ident-bench-cache-"))
    prepare_s: dict[str, float] = {}
    for design in designs:
        started = time.perf_counter()
        prepare_design(design.path, "mm", cache)
        prepare_s[design.name] = time.perf_counter() - started
    print(
        f"{len(designs)} designs prepared in {sum(prepare_s.values()):.1f} s "
        f"(median {np.median(list(prepare_s.values())):.2f} s, max {max(prepare_s.values()):.2f} s per design)"
    )
    print(f"{len(two)} designs in two materials; batch sizes {sizes}, {per_batch} scenes of batch designs per batch")
    for size in sizes:
        run_batch(
            size,
            designs,
            by_name,
            two,
            first_colour,
            looks,
            store,
            cache,
            profile,
            args,
            per_batch,
            outsiders,
            empties,
            prepare_s,
        )
    return 0


def run_batch(
    size: int,
    designs: list[Design],
    by_name: dict[str, Design],
    two: set[str],
    first_colour: dict[str, str],
    looks: dict[str, MaterialLook],
    store: SceneStore,
    cache: Path,
    profile: object,
    args: argparse.Namespace,
    per_batch: int,
    outsiders: int,
    empties: int,
    prepare_s: dict[str, float],
) -> None:
    from amflow_edge.inspection.profiles import InspectionProfile

    assert isinstance(profile, InspectionProfile)
    rng = np.random.default_rng(args.seed + size)
    batch = draw_batch(designs, min(size, len(designs)), rng)
    names = {d.name for d in batch}
    candidates = []
    for design in batch:
        colours = [first_colour[design.name]] + (
            [SECOND_COLOUR[first_colour[design.name]]] if design.name in two else []
        )
        for colour in colours:
            candidates.append(
                CandidateDesign(
                    design_material=design_material(design, colour),
                    mesh_path=design.path,
                    units="mm",
                    look=looks[colour] if design.name in two else None,
                )
            )
    scenes: list[Scene] = []
    chosen = rng.choice(len(batch), per_batch, replace=per_batch > len(batch))
    for k, index in enumerate(chosen):
        design = batch[int(index)]
        colours = [first_colour[design.name]] + (
            [SECOND_COLOUR[first_colour[design.name]]] if design.name in two else []
        )
        scenes.append(Scene("part", design.name, colours[int(rng.integers(len(colours)))], args.seed + 1000 * size + k))
    others = [d for d in designs if d.name not in names]
    for k in range(min(outsiders, len(others))):
        design = others[int(rng.integers(len(others)))]
        scenes.append(Scene("outsider", design.name, first_colour[design.name], args.seed + 1000 * size + 500 + k))
    for k in range(empties):
        scenes.append(Scene("empty", None, "", args.seed + 1000 * size + 900 + k))
    families = len({d.family for d in batch})
    print(
        f"\nbatch of {len(batch)} designs ({families} families, {len(candidates)} design_materials), {len(scenes)} scenes"
    )
    correct = wrong = unassigned = 0
    positives = 0
    outcomes: dict[str, int] = {}
    wrong_lines: list[str] = []
    ident_s: list[float] = []
    stages: dict[str, list[float]] = {}
    total_s: list[float] = []
    inspected_s: list[float] = []
    for scene in scenes:
        shown = by_name[scene.design] if scene.design else None
        images = store.images(scene, shown.mesh if shown else None)
        reference = store.empty(scene.seed + REFERENCE_OFFSET)
        started = time.perf_counter()
        if args.no_inspect:
            from amflow_edge.inspection.identification.pipeline import identify_scan

            identification, report = identify_scan(images, reference, cameras_of(store), candidates, cache), None
        else:
            identification, report = identify_and_inspect(
                images, reference, cameras_of(store), candidates, profile, cache, None, None
            )
        total_s.append(time.perf_counter() - started)
        if report is not None:
            inspected_s.append(total_s[-1])
        ident_s.append(identification.timings_s.get("total", total_s[-1]))
        for stage, seconds in identification.timings_s.items():
            stages.setdefault(stage, []).append(seconds)
        truth = design_material(shown, scene.colour) if shown is not None and scene.kind == "part" else None
        outcomes[f"{scene.kind}:{identification.outcome}"] = (
            outcomes.get(f"{scene.kind}:{identification.outcome}", 0) + 1
        )
        chosen_id = identification.design_material
        if scene.kind == "part":
            positives += 1
            if chosen_id == truth:
                correct += 1
            elif chosen_id is None:
                unassigned += 1
            else:
                wrong += 1
        elif chosen_id is not None:
            wrong += 1
        if chosen_id is not None and chosen_id != truth:
            wrong_lines.append(
                f"{scene.kind} {scene.design} {scene.colour} seed {scene.seed} → {chosen_id[:12]}… ({identification.reason})"
            )
        if args.verbose:
            print(
                f"  {scene.kind:8s} {(scene.design or '-')[-40:]:40s} {scene.colour:5s} seed {scene.seed}: "
                f"{identification.outcome:18s} {'OK' if chosen_id == truth else ('WRONG' if chosen_id else '')} "
                f"{total_s[-1]:.2f} s  {identification.reason[: 150 if chosen_id else 420]}"
                + (f" [{identification.candidates[0].detail}]" if identification.candidates else "")
                + (f" {truth_rank(identification, truth)}" if truth is not None and chosen_id != truth else ""),
                flush=True,
            )
    scans = len(scenes)
    prepare = sum(prepare_s[d.name] for d in batch)
    print(f"  top-1 accuracy (parts of the batch): {correct}/{positives} = {100 * correct / max(positives, 1):.1f} %")
    print(
        f"  left unassigned (parts of the batch): {unassigned}/{positives} = {100 * unassigned / max(positives, 1):.1f} %"
    )
    print(f"  wrong assignments (all scans): {wrong}/{scans} = {100 * wrong / max(scans, 1):.2f} %")
    print(f"  outcomes: {dict(sorted(outcomes.items()))}")
    print(f"  identification per scan [s]: median {np.median(ident_s):.2f}, p95 {np.percentile(ident_s, 95):.2f}")
    print("  identification stages, median [s]: " + ", ".join(f"{k} {np.median(v):.2f}" for k, v in stages.items()))
    if not args.no_inspect:
        print(
            f"  identification + inspection per scan [s]: median {np.median(total_s):.2f}, p95 {np.percentile(total_s, 95):.2f}; "
            f"of the {len(inspected_s)} scans inspected: median {np.median(inspected_s) if inspected_s else float('nan'):.2f}, "
            f"p95 {np.percentile(inspected_s, 95) if inspected_s else float('nan'):.2f}"
        )
    print(f"  preparing the batch's designs: {prepare:.1f} s")
    for line in wrong_lines:
        print(f"    WRONG: {line}")


def truth_rank(identification: Identification, truth: str) -> str:
    """Where the true design stands among the scored candidates: a part left unnamed because its design was
    never shortlisted is the ranking's failure, one fitted and refused the verification's."""
    for rank, score in enumerate(identification.candidates, start=1):
        if score.design_material == truth:
            return f"<truth rank {rank}: {score.detail}>"
    return f"<truth not among the {len(identification.candidates)} scored>"


def cameras_of(store: SceneStore) -> list[CameraCalibration]:
    return store.cameras


if __name__ == "__main__":
    raise SystemExit(main())
