"""Inspection benchmark: pose accuracy, defect detection, false rejects and time per scan on the demo rig.

    .venv/bin/python benchmarks/inspection.py            # full run (about 20 parts × placements × defects)
    .venv/bin/python benchmarks/inspection.py --quick    # a few minutes

Scenes are rendered with amflow_edge.drivers.simulator.render at full 2448×2048 resolution; the design cache is warmed
before timing, since a station inspects known designs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import trimesh

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amflow_edge.drivers.simulator.pose_error import largest_deviation, pose_error  # noqa: E402
from amflow_edge.drivers.simulator.render import Renderer  # noqa: E402
from amflow_edge.inspection.design_cache import design_model  # noqa: E402
from amflow_edge.inspection.designs import Units, load_mesh_mm  # noqa: E402
from amflow_edge.inspection.geometry.camera import load_rig  # noqa: E402
from amflow_edge.inspection.geometry.placement import place_on_tray  # noqa: E402
from amflow_edge.inspection.inspect import inspect_scan  # noqa: E402
from amflow_edge.inspection.profiles import load_profile  # noqa: E402
from amflow_edge.inspection.report import InspectionReport  # noqa: E402

REAL: list[tuple[str, Units]] = [
    ("20mm-xyz-cube.stl", "mm"),
    ("angle_block.STL", "inch"),
    ("featuretype.STL", "inch"),
    ("idler_riser.STL", "inch"),
]
LOOK_ALIKE_MM = 0.5
DEFECTS = ["missing_chunk:1.0", "missing_chunk:2.0", "missing_slab:1.0", "extra_blob:1.5", "scale:2.0", "warp:3"]


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
    from amflow_edge.drivers.simulator.defects import Defect, apply_defect, defect_rng, settle

    placements = args.placements or (1 if args.quick else 2)
    defects = ["missing_chunk:1.0", "extra_blob:1.5"] if args.quick else DEFECTS
    if args.defects is not None:
        defects = [d for d in args.defects.split(",") if d.strip()]
    cameras = load_rig(REPO / "config" / "calibration" / "demo")
    renderer = Renderer(cameras)
    profile = load_profile(args.profile)
    cache = Path(tempfile.mkdtemp(prefix="amflow-inspect-bench-"))
    times: list[float] = []
    stages: dict[str, list[float]] = {}
    errors: list[float] = []
    rotations: list[float] = []
    deviations: list[float] = []
    intact_rejects: list[str] = []
    intact_total = 0
    intact_reviews = 0
    flagged: dict[str, list[bool]] = {d: [] for d in defects}
    intact_values: dict[str, list[float]] = {c.metric: [] for c in profile.criteria}
    detected: dict[str, list[bool]] = {d: [] for d in defects}
    passed: dict[str, list[str]] = {d: [] for d in defects}
    defect_values: dict[str, dict[str, list[float]]] = {d: {c.metric: [] for c in profile.criteria} for d in defects}
    failures_by_reason: dict[str, int] = {}
    if args.jsonl is not None:
        args.jsonl.write_text("")
    all_parts = parts(args.quick)
    print(
        f"{len(all_parts)} parts × {placements} placements × (intact + {len(defects)} defects), profile {profile.name}"
    )
    seed = args.seed
    for name, mesh in all_parts.items():
        design_model(mesh, cache)
        for placement in range(placements):
            seed += 1
            rng = np.random.default_rng(seed)
            pose = place_on_tray(mesh, rng)
            # The reference is another frame: its sensor noise must be independent of the scan's, as at the
            # station (the same render seed gives the same noise, and the part then matches its "reference").
            empty = renderer.render(None, None, seed + 500_000)
            for spec in [None, *defects]:
                shown, shown_pose = mesh, pose
                if spec is not None:
                    try:
                        shown, _ = apply_defect(mesh, Defect.parse(spec), defect_rng(seed), pose=pose)
                    except ValueError as exc:
                        print(f"  skip {name} {spec}: {exc}")
                        continue
                    shown_pose = settle(shown, pose)
                images = renderer.render(shown, shown_pose, seed)
                started = time.perf_counter()
                report = inspect_scan(images, empty, cameras, mesh, name, profile, cache_dir=cache)
                times.append(time.perf_counter() - started)
                for stage, seconds in report.timings_s.items():
                    stages.setdefault(stage, []).append(seconds)
                rejected = not report.qc_machine
                if args.jsonl is not None:
                    _append_scan(args.jsonl, name, placement, seed, spec, report, times[-1])
                if spec is None:
                    intact_time = times[-1]
                    intact_total += 1
                    intact_reviews += int(report.qc_machine and report.qc_needs_review)
                    for result in report.criteria:
                        if result.value is not None:
                            intact_values[result.metric].append(result.value)
                    if report.pose is not None:
                        distance, angle = pose_error(mesh, pose, np.array(report.pose))
                        errors.append(distance)
                        rotations.append(angle)
                        deviations.append(largest_deviation(mesh, pose, np.array(report.pose)))
                    if rejected:
                        intact_rejects.append(f"{name}#{placement}: {report.qc_reasons}")
                        for reason in report.qc_reasons:
                            failures_by_reason[reason] = failures_by_reason.get(reason, 0) + 1
                else:
                    if not rejected:
                        passed[spec].append(f"{name}#{placement}" + (" (review)" if report.qc_needs_review else ""))
                    detected[spec].append(rejected)
                    flagged[spec].append(rejected or report.qc_needs_review)
                    for result in report.criteria:
                        if result.value is not None:
                            defect_values[spec][result.metric].append(result.value)
            print(
                f"  {name} placement {placement}: last err {errors[-1] if errors else float('nan'):.3f} mm, "
                f"intact {intact_time:.2f} s, median time {np.median(times):.2f} s",
                flush=True,
            )

    def stats(values: list[float]) -> str:
        return f"median {np.median(values):.3f}, p95 {np.percentile(values, 95):.3f}" if values else "n/a"

    print()
    print(f"scans inspected: {len(times)}")
    print(f"time per scan [s]: {stats(times)}")
    print(
        "    by stage: "
        + ", ".join(f"{k} {np.median(v):.2f}" for k, v in stages.items() if k not in ("total", "design"))
    )
    print(f"pose error, mean closest-surface distance [mm]: {stats(errors)}")
    print(f"pose error, residual rotation (symmetry-aware) [deg]: {stats(rotations)}")
    print(
        f"largest surface deviation from the true pose [mm]: {stats(deviations)}; "
        f"above {LOOK_ALIKE_MM} mm (mostly a look-alike pose chosen): {sum(d > LOOK_ALIKE_MM for d in deviations)}/{len(deviations)}"
    )
    print(
        f"false rejects on intact parts: {len(intact_rejects)}/{intact_total} = {100 * len(intact_rejects) / max(intact_total, 1):.1f} %"
    )
    print(f"intact parts passed but sent to operator review: {intact_reviews}/{intact_total}")
    for line in intact_rejects:
        print(f"    {line}")
    print(f"    reasons: {failures_by_reason}")
    print("intact parts, criterion values (min / median / p95 / max):")
    _print_values(intact_values)
    for spec, hits in detected.items():
        rate = 100 * sum(hits) / max(len(hits), 1)
        print(
            f"detection rate {spec}: {sum(hits)}/{len(hits)} = {rate:.1f} %  (rejected or sent to review: {sum(flagged[spec])})"
        )
        if passed[spec]:
            print(f"    passed: {', '.join(passed[spec])}")
    if args.values:
        for spec, values in defect_values.items():
            print(f"{spec}, criterion values (min / median / p95 / max):")
            _print_values(values)
    return 0


def _append_scan(
    path: Path, name: str, placement: int, seed: int, spec: str | None, report: InspectionReport, seconds: float
) -> None:
    """One scan per line, so a criterion can be re-judged over many scenes without inspecting them again.

    The metrics go through pydantic's JSON, which writes an infinite alignment residual as null
    (json.dumps would write Infinity, which is not JSON)."""
    metrics = None if report.metrics is None else json.loads(report.metrics.model_dump_json(exclude={"per_camera"}))
    line = {
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
