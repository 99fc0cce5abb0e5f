"""Inspection benchmark: pose accuracy, defect detection, false rejects and time per scan, per station look and material.

    .venv/bin/python benchmarks/inspection.py            # the demo look, demo parts (about 20 parts × placements × defects)
    .venv/bin/python benchmarks/inspection.py --quick    # a few minutes
    .venv/bin/python benchmarks/inspection.py --looks all --materials pa12_white,pa12_black --parts held-out \
        --commission 6 --defects missing_slab:1,missing_chunk:1,missing_slab:3,missing_chunk:3   # issue #21's figures

Scenes are rendered with amflow_edge.drivers.simulator.render at full 2448×2048 resolution; the design cache is warmed
before timing, since a station inspects known designs.

With `--commission K` every look is commissioned first, as a station is: K intact scans of the tuning parts (the six
demo designs and TUNING_VORON), in the materials given, teach the inspection the station's light and how well its
photos show parts' outlines (inspection.station_model); without it the demo look uses the demo rig's shipped
model (config/calibration/demo/station_model.json) and other looks have none (the shading criteria abstain).
`--parts held-out` inspects Voron parts that were never looked at while the inspection was tuned.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import trimesh

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amflow_edge.drivers.simulator.looks import PartMaterial  # noqa: E402
from amflow_edge.drivers.simulator.pose_error import largest_deviation, pose_error  # noqa: E402
from amflow_edge.drivers.simulator.render import Renderer  # noqa: E402
from amflow_edge.inspection.design_cache import design_model  # noqa: E402
from amflow_edge.inspection.designs import Units, load_mesh_mm  # noqa: E402
from amflow_edge.inspection.geometry.camera import CameraCalibration, load_rig  # noqa: E402
from amflow_edge.inspection.geometry.placement import place_on_tray  # noqa: E402
from amflow_edge.inspection.inspect import commissioned, inspect_scan  # noqa: E402
from amflow_edge.inspection.profiles import InspectionProfile, load_profile  # noqa: E402
from amflow_edge.inspection.report import InspectionReport  # noqa: E402
from amflow_edge.inspection.station_model.model import StationModel, load_station_model  # noqa: E402

REAL: list[tuple[str, Units]] = [
    ("20mm-xyz-cube.stl", "mm"),
    ("angle_block.STL", "inch"),
    ("featuretype.STL", "inch"),
    ("idler_riser.STL", "inch"),
]
VORON = REPO.parent / "shared" / "meshes" / "voron2"
TUNING_VORON = [
    "Electronics_Bay__pcb_din_clip_x3",
    "Gantry__AB_Drive_Units__a_drive_frame_upper",
    "Gantry__AB_Drive_Units__b_drive_frame_upper",
    "Gantry__Front_Idlers__[a]_tensioner_left",
    "Gantry__Front_Idlers__[a]_tensioner_right",
    "Gantry__z_chain_bottom_anchor",
]
"""Voron parts the learned light and the inspection were tuned on; never reported as held-out."""
MATERIAL_REASONS = {"missing_material", "extra_material", "surface_defect", "dimensional_deviation"}
"""A defect counts as caught when the scan fails, or goes to review, for one of these."""
LOOK_ALIKE_MM = 0.5
LIGHT_FORMAT = 4
"""Bump when inspection.learned_light learns differently, so cached lights are learned again."""
DEFECTS = ["missing_chunk:1.0", "missing_chunk:2.0", "missing_slab:1.0", "extra_blob:1.5", "scale:2.0", "warp:3"]


def voron_parts(which: str, count: int) -> dict[str, trimesh.Trimesh]:
    """The tuning Voron parts, or `count` held-out ones spread evenly over the corpus (sorted by name) that fit the
    tray; the corpus lies beside the checkout (../shared/meshes/voron2), with a copy of some parts in tests/data."""
    folder = VORON if VORON.is_dir() else REPO / "tests" / "data" / "meshes" / "voron2"
    files = sorted(folder.glob("*.stl"))
    if which == "tuning":
        chosen = [f for f in files if f.stem in TUNING_VORON]
    else:
        pool = [f for f in files if f.stem not in TUNING_VORON]
        step = max(len(pool) / max(count, 1), 1.0)
        chosen = [pool[int(i * step)] for i in range(min(count, len(pool)))]
    found = {}
    for path in chosen:
        mesh = load_mesh_mm(path, "mm")
        if max(mesh.extents[:2]) > 200.0:
            continue
        found[path.stem[:40]] = mesh
    return found


def parts(quick: bool) -> dict[str, trimesh.Trimesh]:
    found: dict[str, trimesh.Trimesh] = {}
    for path in sorted((REPO / "config" / "designs").glob("*.stl")):
        found[path.stem] = load_mesh_mm(path, "mm")
    for name, units in REAL:
        found[Path(name).stem] = load_mesh_mm(REPO / "tests" / "data" / "meshes" / name, units)
    if not quick:
        for stem in list(found)[:6]:
            for factor in (0.7, 1.3):
                variant = found[stem].copy()
                variant.apply_scale(factor)
                found[f"{stem}_x{factor:g}"] = variant
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer parts, placements and defects")
    parser.add_argument("--profile", default="default")
    parser.add_argument("--placements", type=int, default=None)
    parser.add_argument("--defects", default=None, help="comma-separated KIND:SIZE list; '' for intact parts only")
    parser.add_argument("--values", action="store_true", help="also print the criterion values of the defective scans")
    parser.add_argument("--looks", default="demo", help="station looks: names or paths, comma-separated, or 'all'")
    parser.add_argument(
        "--materials", default="", help="part materials (config/materials.toml), comma-separated; '' the look's grey"
    )
    parser.add_argument(
        "--parts",
        choices=["demo", "tuning", "held-out"],
        default="demo",
        help="demo: the demo designs and real meshes (with x0.7/x1.3 variants unless --quick); tuning: the Voron "
        "parts the inspection was tuned on; held-out: Voron parts it never was",
    )
    parser.add_argument("--count", type=int, default=12, help="held-out Voron parts to draw (--parts held-out)")
    parser.add_argument(
        "--commission",
        type=int,
        default=0,
        help="commission each look from this many intact scans of the tuning parts first (0: the demo rig's shipped "
        "model for the demo look, none for the others)",
    )
    parser.add_argument(
        "--jsonl",
        type=Path,
        default=None,
        help="also write one line per scan (scene, verdict, metrics, regions) to this file, replacing it",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=1000,
        help="first scene seed; another value gives unseen scenes to check a tuned profile on",
    )
    args = parser.parse_args()
    from amflow_edge.drivers.simulator.looks import known_looks, load_look, load_material

    placements = args.placements or (1 if args.quick else 2)
    defects = ["missing_chunk:1.0", "extra_blob:1.5"] if args.quick else DEFECTS
    if args.defects is not None:
        defects = [d for d in args.defects.split(",") if d.strip()]
    looks = known_looks() if args.looks == "all" else [x for x in args.looks.split(",") if x]
    materials: list[str | None] = [m for m in args.materials.split(",") if m] or [None]
    cameras = load_rig(REPO / "config" / "calibration" / "demo")
    profile = load_profile(args.profile)
    cache = Path(tempfile.mkdtemp(prefix="amflow-inspect-bench-"))
    if args.jsonl is not None:
        args.jsonl.write_text("")
    all_parts = parts(args.quick) if args.parts == "demo" else voron_parts(args.parts, args.count)
    print(
        f"{len(looks)} looks × {len(materials)} materials × {len(all_parts)} parts × {placements} placements × "
        f"(intact + {len(defects)} defects), profile {profile.name}, parts {args.parts}"
    )
    results: list[Tally] = []
    for look_name in looks:
        renderer = Renderer(cameras, look=load_look(look_name))
        # Without commissioning, the demo look is the demo rig, which ships commissioned.
        station = load_station_model(REPO / "config" / "calibration" / "demo") if look_name == "demo" else None
        if args.commission:
            started = time.perf_counter()
            station = commissioned_station(look_name, renderer, cameras, cache, args.commission, materials)
            print(f"[{look_name}] commissioned from {args.commission} scans in {time.perf_counter() - started:.1f} s")
        for material_name in materials:
            material = None if material_name is None else load_material(material_name)
            tally = Tally(look_name, material_name or "-", defects)
            seed = args.seed
            for name, mesh in all_parts.items():
                design_model(mesh, cache)
                for placement in range(placements):
                    seed += 1
                    inspect_placement(
                        renderer,
                        cameras,
                        cache,
                        profile,
                        station,
                        material,
                        tally,
                        name,
                        mesh,
                        placement,
                        seed,
                        defects,
                        args.jsonl,
                    )
            tally.print(args.values)
            results.append(tally)
        renderer.close()
    if len(results) > 1:
        summarise(results)
    return 0


def commissioned_station(
    look_name: str,
    renderer: Renderer,
    cameras: list[CameraCalibration],
    cache: Path,
    count: int,
    materials: list[str | None],
) -> StationModel | None:
    """`commission`, kept in the system's temp directory by the look's and materials' contents and the scan count:
    commissioning a look takes a minute or two, and reruns of the benchmark need the same model."""
    import hashlib

    from amflow_edge.drivers.simulator.looks import load_look

    key = hashlib.sha256(
        json.dumps([load_look(look_name).model_dump(mode="json"), materials, count, LIGHT_FORMAT]).encode()
    ).hexdigest()[:16]
    path = Path(tempfile.gettempdir()) / "amflow-bench-stations" / f"{key}.json"
    if path.is_file():
        text = path.read_text()
        return None if text == "null" else StationModel.model_validate_json(text)
    station = commission(renderer, cameras, cache, count, materials)
    path.parent.mkdir(exist_ok=True)
    path.write_text("null" if station is None else station.model_dump_json())
    return station


def commission(
    renderer: Renderer,
    cameras: list[CameraCalibration],
    cache: Path,
    count: int,
    materials: list[str | None],
) -> StationModel | None:
    """The look's station model learned from `count` intact scans of the tuning parts, as `amflow-edge commission
    learn` learns it; None (said why) when the look cannot be commissioned."""
    from amflow_edge.drivers.simulator.looks import load_material
    from amflow_edge.inspection.station_model.learn import (
        CommissioningError,
        learn_station_model,
        samples_of_scan,
    )

    tuning = {**parts(True), **voron_parts("tuning", 0)}
    names = list(tuning)
    scans = []
    references = None
    for k in range(count):
        name = names[k % len(names)]
        mesh = tuning[name]
        seed = 900_000 + k
        pose = place_on_tray(mesh, np.random.default_rng(seed))
        material_name = materials[k % len(materials)]
        material = None if material_name is None else load_material(material_name)
        images = renderer.render(mesh, pose, seed, material=material)
        empty = renderer.render(None, None, seed + 500_000)
        references = references or empty
        try:
            scans.append(samples_of_scan(f"{name}#{k}", images, empty, cameras, mesh, name, cache))
        except CommissioningError as exc:
            print(f"  commissioning scan {name}#{k} refused: {exc}")
    try:
        assert references is not None
        return learn_station_model(scans, references, REPO / "config" / "calibration" / "demo")
    except CommissioningError as exc:
        print(f"  the look cannot be commissioned: {exc}")
        return None


def inspect_placement(
    renderer: Renderer,
    cameras: list[CameraCalibration],
    cache: Path,
    profile: InspectionProfile,
    station: StationModel | None,
    material: PartMaterial | None,
    tally: Tally,
    name: str,
    mesh: trimesh.Trimesh,
    placement: int,
    seed: int,
    defects: list[str],
    jsonl: Path | None,
) -> None:
    from amflow_edge.drivers.simulator.defects import Defect, apply_defect, defect_rng, settle

    rng = np.random.default_rng(seed)
    pose = place_on_tray(mesh, rng)
    # The reference is another frame: its sensor noise must be independent of the scan's, as at the
    # station (the same render seed gives the same noise, and the part then matches its "reference").
    empty = renderer.render(None, None, seed + 500_000)
    known = commissioned(station, empty)
    for spec in [None, *defects]:
        shown, shown_pose = mesh, pose
        if spec is not None:
            try:
                shown, _ = apply_defect(mesh, Defect.parse(spec), defect_rng(seed), pose=pose)
            except ValueError as exc:
                print(f"  skip {name} {spec}: {exc}")
                continue
            shown_pose = settle(shown, pose)
        images = renderer.render(shown, shown_pose, seed, material=material)
        started = time.perf_counter()
        report = inspect_scan(
            images,
            empty,
            cameras,
            mesh,
            name,
            profile,
            cache_dir=cache,
            **known,
        )
        seconds = time.perf_counter() - started
        tally.add(name, placement, mesh, pose, spec, report, seconds)
        if jsonl is not None:
            _append_scan(jsonl, name, placement, seed, spec, report, seconds, tally.look, tally.material)
    print(
        f"  [{tally.look} {tally.material}] {name} placement {placement}: "
        f"last err {tally.errors[-1] if tally.errors else float('nan'):.3f} mm, median time {np.median(tally.times):.2f} s",
        flush=True,
    )


def _stats(values: list[float]) -> str:
    return f"median {np.median(values):.3f}, p95 {np.percentile(values, 95):.3f}" if values else "n/a"


@dataclass
class Tally:
    """What one look and material gave."""

    look: str
    material: str
    defects: list[str]
    times: list[float] = field(default_factory=list)
    stages: dict[str, list[float]] = field(default_factory=dict)
    errors: list[float] = field(default_factory=list)
    rotations: list[float] = field(default_factory=list)
    deviations: list[float] = field(default_factory=list)
    intact_total: int = 0
    intact_rejects: list[str] = field(default_factory=list)
    intact_reviews: list[str] = field(default_factory=list)
    failures_by_reason: dict[str, int] = field(default_factory=dict)
    intact_values: dict[str, list[float]] = field(default_factory=dict)
    detected: dict[str, list[bool]] = field(default_factory=dict)
    caught: dict[str, list[bool]] = field(default_factory=dict)
    passed: dict[str, list[str]] = field(default_factory=dict)
    defect_values: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def add(
        self,
        name: str,
        placement: int,
        mesh: trimesh.Trimesh,
        pose: np.ndarray,
        spec: str | None,
        report: InspectionReport,
        seconds: float,
    ) -> None:
        self.times.append(seconds)
        for stage, value in report.timings_s.items():
            self.stages.setdefault(stage, []).append(value)
        # A scan the inspection could not judge at all (no part aligned) goes to an operator: a review, not a reject.
        rejected = not report.qc_machine and report.qc_reasons != ["insufficient_evidence"]
        unjudged = not report.qc_machine and not rejected
        if spec is None:
            self.intact_total += 1
            if (report.qc_machine and report.qc_needs_review) or unjudged:
                self.intact_reviews.append(f"{name}#{placement}: {report.qc_reasons}")
            for result in report.criteria:
                if result.value is not None:
                    self.intact_values.setdefault(result.metric, []).append(result.value)
            if report.pose is not None:
                distance, angle = pose_error(mesh, pose, np.array(report.pose))
                self.errors.append(distance)
                self.rotations.append(angle)
                self.deviations.append(largest_deviation(mesh, pose, np.array(report.pose)))
            if rejected:
                self.intact_rejects.append(f"{name}#{placement}: {report.qc_reasons}")
                for reason in report.qc_reasons:
                    self.failures_by_reason[reason] = self.failures_by_reason.get(reason, 0) + 1
            return
        if not rejected:
            self.passed.setdefault(spec, []).append(
                f"{name}#{placement}" + (" (review)" if report.qc_needs_review else "")
            )
        self.detected.setdefault(spec, []).append(rejected)
        flagged = rejected or report.qc_needs_review
        self.caught.setdefault(spec, []).append(flagged and bool(MATERIAL_REASONS & set(report.qc_reasons)))
        for result in report.criteria:
            if result.value is not None:
                self.defect_values.setdefault(spec, {}).setdefault(result.metric, []).append(result.value)

    def print(self, values: bool) -> None:
        total = max(self.intact_total, 1)
        print()
        print(f"=== look {self.look}, material {self.material}: {len(self.times)} scans")
        print(f"time per scan [s]: {_stats(self.times)}")
        print(
            "    by stage: "
            + ", ".join(f"{k} {np.median(v):.2f}" for k, v in self.stages.items() if k not in ("total", "design"))
        )
        print(f"pose error, mean closest-surface distance [mm]: {_stats(self.errors)}")
        print(f"pose error, residual rotation (symmetry-aware) [deg]: {_stats(self.rotations)}")
        print(
            f"largest surface deviation from the true pose [mm]: {_stats(self.deviations)}; above {LOOK_ALIKE_MM} mm "
            f"(mostly a look-alike pose chosen): {sum(d > LOOK_ALIKE_MM for d in self.deviations)}/{len(self.deviations)}"
        )
        print(
            f"intact parts: pass {self.intact_total - len(self.intact_rejects) - len(self.intact_reviews)}, "
            f"review {len(self.intact_reviews)} ({100 * len(self.intact_reviews) / total:.1f} %), "
            f"fail {len(self.intact_rejects)} ({100 * len(self.intact_rejects) / total:.1f} %) of {self.intact_total}"
        )
        for line in self.intact_rejects:
            print(f"    fail {line}")
        for line in self.intact_reviews:
            print(f"    review {line}")
        print(f"    reasons: {self.failures_by_reason}")
        print("intact parts, criterion values (min / median / p95 / max):")
        _print_values(self.intact_values)
        for spec, hits in self.detected.items():
            caught = self.caught[spec]
            print(
                f"detection {spec}: rejected {sum(hits)}/{len(hits)} = {100 * sum(hits) / max(len(hits), 1):.1f} %, "
                f"caught (fail or review, material reason) {sum(caught)}/{len(caught)} = "
                f"{100 * sum(caught) / max(len(caught), 1):.1f} %"
            )
            if self.passed.get(spec):
                print(f"    passed: {', '.join(self.passed[spec])}")
        if values:
            for spec, by_metric in self.defect_values.items():
                print(f"{spec}, criterion values (min / median / p95 / max):")
                _print_values(by_metric)


def summarise(results: list[Tally]) -> None:
    """Issue #21's figures over every look and material together, and black against white."""
    intact = sum(t.intact_total for t in results)
    rejects = sum(len(t.intact_rejects) for t in results)
    reviews = sum(len(t.intact_reviews) for t in results)
    errors = [e for t in results for e in t.errors]
    times = [s for t in results for s in t.times]
    print()
    print("=== all looks and materials together")
    print(f"intact false rejects: {rejects}/{intact} = {100 * rejects / max(intact, 1):.1f} % (target ≤ 2 %)")
    print(f"intact reviews: {reviews}/{intact} = {100 * reviews / max(intact, 1):.1f} % (target ≤ 10 %)")
    for size, target in (("1", 90), ("3", 99)):
        caught = [c for t in results for spec, hits in t.caught.items() if _size(spec) == float(size) for c in hits]
        if caught:
            print(
                f"{size} mm missing slab or chip caught: {sum(caught)}/{len(caught)} = "
                f"{100 * sum(caught) / len(caught):.1f} % (target ≥ {target} %)"
            )
    if errors:
        print(
            f"pose error: median {np.median(errors):.3f} mm (target ≤ 0.15), p95 {np.percentile(errors, 95):.3f} mm "
            "(target ≤ 0.5)"
        )
    print(f"time per scan: median {np.median(times):.2f} s (target ≤ 1.5 s on 2 cores)")
    by_material: dict[str, list[Tally]] = {}
    for t in results:
        by_material.setdefault(t.material, []).append(t)
    for material, tallies in by_material.items():
        n = sum(t.intact_total for t in tallies)
        bad = sum(len(t.intact_rejects) + len(t.intact_reviews) for t in tallies)
        missed = [not c for t in tallies for hits in t.caught.values() for c in hits]
        print(
            f"  {material}: intact fail or review {bad}/{n}, defects missed {sum(missed)}/{len(missed)}, "
            f"pose median {np.median([e for t in tallies for e in t.errors]) if n else float('nan'):.3f} mm"
        )


def _size(spec: str) -> float:
    kind, _, size = spec.partition(":")
    return float(size) if kind in ("missing_slab", "missing_chunk") else -1.0


def _append_scan(
    path: Path,
    name: str,
    placement: int,
    seed: int,
    spec: str | None,
    report: InspectionReport,
    seconds: float,
    look: str = "demo",
    material: str = "-",
) -> None:
    """One scan per line, so a criterion can be re-judged over many scenes without inspecting them again.

    The metrics go through pydantic's JSON, which writes an infinite alignment residual as null
    (json.dumps would write Infinity, which is not JSON)."""
    metrics = None if report.metrics is None else json.loads(report.metrics.model_dump_json(exclude={"per_camera"}))
    line = {
        "look": look,
        "material": material,
        "part": name,
        "placement": placement,
        "seed": seed,
        "defect": spec,
        "profile": report.profile,
        "seconds": round(seconds, 3),
        "qc_machine": report.qc_machine,
        "qc_needs_review": report.qc_needs_review,
        "qc_reasons": report.qc_reasons,
        "metrics": metrics,
    }
    with path.open("a") as out:
        out.write(json.dumps(line) + "\n")


def _print_values(values_by_metric: dict[str, list[float]]) -> None:
    for metric, values in values_by_metric.items():
        if values:
            v = np.array(values)
            print(f"    {metric}: {v.min():.3f} / {np.median(v):.3f} / {np.percentile(v, 95):.3f} / {v.max():.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
