"""Look-alikes not in the batch: each Voron family member fitted as itself and as another member of its family.

    .venv/bin/python benchmarks/look_alikes.py              # every family member (about 10 min)
    .venv/bin/python benchmarks/look_alikes.py --limit 10   # the first ten members only

A part whose look-alike is in the batch but which is not must be refused (verify.fits_well). The identification
benchmark draws whole families into a batch and never samples this case, so it is measured here: per scene, the
part's own design and its twin are fitted alone, and the line says whether each fit would be taken. Prints how
many right designs were taken and how many twins were (the costly error), and the pairs taken for their twin.
Scenes are the identification benchmark's (same renderer, placement and store).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import identification as bench  # noqa: E402

from amflow_edge.inspection.identification import pipeline  # noqa: E402
from amflow_edge.inspection.identification.descriptors import full_model  # noqa: E402
from amflow_edge.inspection.identification.models import CandidateDesign  # noqa: E402
from amflow_edge.inspection.identification.scene import examine, top_outline  # noqa: E402
from amflow_edge.inspection.identification.verify import OutlineEvidence, fits_well, outline_evidence  # noqa: E402


def fitted(
    shown: bench.Design, design: bench.Design, colour: str, seed: int, store: bench.SceneStore, cache: Path
) -> OutlineEvidence | None:
    """The evidence of `design`'s best fit to a scene of `shown`; None when the ranking finds no pose for it."""
    images = store.images(bench.Scene("part", shown.name, colour, seed), shown.mesh)
    reference = store.empty(seed + bench.REFERENCE_OFFSET)
    candidate = CandidateDesign(
        design_material=bench.design_material(design, "GREY"), mesh_path=design.path, units="mm", look=None
    )
    geometries, _ = pipeline._geometries([candidate], cache)
    views = pipeline._segment(images, reference, store.cameras)
    verdict, keep = examine(views, float(geometries[0].descriptors.areas.min()))
    if verdict is not None:
        return None
    outline = top_outline(views, keep)
    ranked = pipeline._rank(geometries, views, outline)
    if not ranked:
        return None
    fit = pipeline._verify(geometries, ranked, views, outline, cache)[0]
    model = full_model(design.path, "mm", cache)
    return outline_evidence(model, views, fit.alignment.pose)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="fit only the first N family members")
    parser.add_argument("--seed", type=int, default=5, help="draws each member's twin, colour and scene seed")
    parser.add_argument("--scenes", type=Path, default=Path(tempfile.gettempdir()) / "amflow-ident-bench-scenes")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]  # a TextIOWrapper when run as a script
    store = bench.SceneStore(args.scenes, bench.load_rig(REPO / "config" / "calibration" / "demo"))
    cache = Path(tempfile.mkdtemp(prefix="amflow-look-alikes-cache-"))
    families: dict[str, list[bench.Design]] = {}
    for design in bench.load_designs():
        families.setdefault(design.family, []).append(design)
    rng = random.Random(args.seed)
    pairs = [
        (
            member,
            rng.choice([m for m in members if m is not member]),
            rng.choice(["GREY", "GREEN"]),
            rng.randrange(700_000, 800_000),
        )
        for members in families.values()
        if len(members) >= 2
        for member in members
    ][: args.limit]
    right = twins = scenes = 0
    taken: list[str] = []
    for shown, twin, colour, seed in pairs:
        own = fitted(shown, shown, colour, seed, store, cache)
        other = fitted(shown, twin, colour, seed, store, cache)
        if own is None or other is None:
            print(f"  {shown.name[-40:]:40s} {colour:5s} seed {seed}: no fit (empty, several parts or no pose)")
            continue
        scenes += 1
        right += fits_well(own)
        twins += fits_well(other)
        if fits_well(other):
            taken.append(f"{shown.name} taken for {twin.name}")
        print(
            f"  {shown.name[-40:]:40s} {colour:5s} seed {seed}: own {'taken' if fits_well(own) else 'refused'} "
            f"(cost {own.cost:.2f}, on tray {own.on_tray:.3f}); as {twin.name[-30:]} "
            f"{'TAKEN' if fits_well(other) else 'refused'} (cost {other.cost:.2f}, on tray {other.on_tray:.3f})"
        )
    print(f"right designs taken: {right}/{scenes}")
    print(f"look-alikes not in the batch taken for their twin: {twins}/{scenes}")
    for line in taken:
        print(f"    {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
