"""Identification's entry points: which of a batch's designs lies on the tray, and that design inspected.

One scan is segmented once and the chosen design fitted once: the identification's fit is the inspection's
alignment (inspect_scan's `views` and `alignment`), so identify-then-inspect costs the identification plus the
inspection's measuring, not two alignments.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import trimesh

from amflow_edge.common.durable import replace_durably
from amflow_edge.common.shipped import DEMO_CALIBRATION
from amflow_edge.inspection.align import Alignment, View, refit
from amflow_edge.inspection.design_cache import design_model
from amflow_edge.inspection.designs import mesh_processing
from amflow_edge.inspection.geometry.camera import CameraCalibration
from amflow_edge.inspection.identification import appearance as looks
from amflow_edge.inspection.identification.descriptors import (
    Descriptors,
    Units,
    design_descriptors,
    design_mesh,
    full_model,
)
from amflow_edge.inspection.identification.models import (
    APPEARANCE_MEASURE,
    IDENTIFICATION_NAME,
    CandidateDesign,
    CandidateScore,
    Identification,
    Outcome,
)
from amflow_edge.inspection.identification.ranking import (
    SILHOUETTE_DESIGNS,
    SILHOUETTE_MAX,
    SILHOUETTE_NEAR,
    VERIFIED_HYPOTHESES,
    VERIFIED_SHARE,
    Hypothesis,
    footprint_hypotheses,
    silhouette_scores,
)
from amflow_edge.inspection.identification.scene import TopOutline, examine, top_outline
from amflow_edge.inspection.identification.verify import (
    Fit,
    OutlineEvidence,
    fit_design,
    fits_well,
    gap_cost,
    leaves_an_image,
    outline_evidence,
    robust_cost,
    separated,
    tie_break,
)
from amflow_edge.inspection.inspect import InspectionInputError, inspect_scan, read_scan_directory
from amflow_edge.inspection.learned_light import LearnedLight
from amflow_edge.inspection.mesh_repair import MeshProcessing
from amflow_edge.inspection.metrics import model_masks
from amflow_edge.inspection.profiles import InspectionProfile
from amflow_edge.inspection.report import InspectionReport
from amflow_edge.inspection.segment import SegmentationError, check_pair, segment_scan
from amflow_edge.inspection.timing import Stopwatch, blas
from amflow_edge.inspection.tray_views import without_shadows

VERIFY_NEAR = 0.1
"""Designs whose silhouette IoU is within this of the best are fitted too: on 20 scenes mirror images, a/b and
2-/3-hole variants came within 0.05 of the true design, and the closest different designs (two PSU brackets)
within 0.06; the fit, not the silhouette, must tell those apart."""
VERIFY_MAX = 3
TWIN_EXTENTS = 0.02
"""Designs whose principal extents all agree within this share of the largest, and whose largest footprints
within TWIN_AREA, are twins (mirror images, a/b variants): a twin of the best fit is fitted too, wherever the
silhouettes ranked it. A side skirt standing on its edge ranked its own design fourth by silhouette (IoU 0.56, the
first three within 0.1 of each other) behind its mirror image, which was fitted and refused (cost 2.2), and the
scan was left unassigned."""
TWIN_AREA = 0.08
"""Of the 117 Voron parts, 32 pairs have the same extents; the footprint area keeps 24, the mirror images and a/b
variants (within 1 %) and the 3/4 mm deck supports (4 %), and leaves out 8: 350 side skirts beside power inlet
covers (both 119 × 67 × 20 mm, footprints 3300 and 5000 mm²), a fan grill beside its open variant, and one mirror
pair whose open meshes rest differently (an x-carriage frame, 15 %), which stays to the silhouettes."""


@dataclass(frozen=True)
class _Geometry:
    """Candidates sharing one mesh file (and units): one geometry, one or more materials."""

    mesh_path: Path
    units: str
    members: list[CandidateDesign]
    descriptors: Descriptors


@dataclass
class _Result:
    """An identification and what an inspection of the chosen design can reuse."""

    identification: Identification
    views: list[View] | None = None
    alignment: Alignment | None = None
    mesh: trimesh.Trimesh | None = None
    timings: dict[str, float] = field(default_factory=dict)


def prepare_design(mesh_path: Path, units: str, cache_dir: Path | None) -> MeshProcessing | None:
    """Everything identification and inspection need of a design that depends on its mesh alone, stored in
    cache_dir: the station calls it per design at session start, so the first scan does not wait for it. Returns
    what had to be done to the mesh as sent (the design's processing report)."""
    mesh = design_mesh(Path(mesh_path), _units(units))
    design_descriptors(Path(mesh_path), _units(units), cache_dir, design_model(mesh, cache_dir))
    return mesh_processing(mesh)


def _units(units: str) -> Units:
    if units not in ("mm", "inch", "m"):
        raise InspectionInputError(f"unknown units {units!r}; use mm, inch or m")
    return cast(Units, units)


def identify_scan(
    images: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    cameras: Sequence[CameraCalibration],
    candidates: Sequence[CandidateDesign],
    cache_dir: Path | None,
) -> Identification:
    """Which of `candidates` lies on the tray, or why none can be named."""
    return _identify(images, references, cameras, candidates, cache_dir).identification


def identify_directory(
    directory: Path | str,
    candidates: Sequence[CandidateDesign],
    calibration: Path | str = DEMO_CALIBRATION,
    cache_dir: Path | None = None,
) -> Identification:
    """identify_scan for a scan directory as `amflow-edge render` writes it (scan_camNN.png, empty_camNN.png)."""
    cameras, images, references = read_scan_directory(Path(directory), calibration)
    return identify_scan(images, references, cameras, candidates, cache_dir)


def identify_and_inspect(
    images: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    cameras: Sequence[CameraCalibration],
    candidates: Sequence[CandidateDesign],
    profile: InspectionProfile,
    cache_dir: Path | None,
    out_dir: Path | None,
    scan: uuid.UUID | None,
    light: LearnedLight | None = None,
    light_doubt: str | None = None,
    outline_doubt: str | None = None,
    intact: Mapping[str, tuple[float, float]] | None = None,
) -> tuple[Identification, InspectionReport | None]:
    """Identify, write identification.json into out_dir, and inspect the chosen design at the identification's
    pose (no second segmentation or alignment); no inspection when no design was chosen."""
    result = _identify(images, references, cameras, candidates, cache_dir)
    identification = result.identification
    if out_dir is not None:
        write_identification(identification, Path(out_dir))
    if identification.outcome != "identified" or result.alignment is None or result.mesh is None:
        return identification, None
    assert identification.design_material is not None
    report = inspect_scan(
        images,
        references,
        cameras,
        result.mesh,
        identification.design_material,
        profile,
        cache_dir=cache_dir,
        out_dir=out_dir,
        scan=scan,
        views=result.views,
        alignment=result.alignment,
        light=light,
        light_doubt=light_doubt,
        outline_doubt=outline_doubt,
        intact=intact,
    )
    return identification, report


def write_identification(identification: Identification, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / IDENTIFICATION_NAME
    replace_durably(path, identification.model_dump_json(indent=2).encode())
    return path


def _identify(
    images: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    cameras: Sequence[CameraCalibration],
    candidates: Sequence[CandidateDesign],
    cache_dir: Path | None,
) -> _Result:
    watch = Stopwatch()
    with blas().limit(limits=1, user_api="blas"):
        result = _run(images, references, cameras, candidates, cache_dir, watch)
    result.identification.timings_s = watch.rounded()
    return result


def _answer(
    outcome: Outcome,
    reason: str,
    scores: list[CandidateScore] | None = None,
    design_material: str | None = None,
    fit: Fit | None = None,
    appearance: float | None = None,
) -> Identification:
    alignment = fit.alignment if fit is not None else None
    return Identification(
        outcome=outcome,
        design_material=design_material,
        candidates=scores or [],
        reason=reason,
        pose=None if alignment is None else [[round(float(v), 6) for v in row] for row in alignment.pose],
        rest_pose_index=None if alignment is None else alignment.rest_index,
        appearance=None if appearance is None else round(appearance, 4),
        appearance_measure=None if appearance is None else APPEARANCE_MEASURE,
        timings_s={},
    )


def _run(
    images: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    cameras: Sequence[CameraCalibration],
    candidates: Sequence[CandidateDesign],
    cache_dir: Path | None,
    watch: Stopwatch,
) -> _Result:
    _check_inputs(images, references, cameras)
    with watch.stage("designs"):
        geometries, failed = _geometries(candidates, cache_dir)
    if not geometries:
        why = (
            "no candidate designs were given"
            if not candidates
            else "no candidate design could be loaded: " + "; ".join(failed)
        )
        return _Result(_answer("no_candidates", why))
    with watch.stage("segment"):
        views = _segment(images, references, cameras)
    smallest = min(float(g.descriptors.areas.min()) for g in geometries)
    verdict, keep = examine(views, smallest)
    appearance = looks.measure(views, images, references)
    if verdict is not None:
        return _Result(_answer(verdict.outcome, verdict.reason, appearance=appearance), views)
    with watch.stage("rank"):
        outline = top_outline(views, keep)
        ranked = _rank(geometries, views, outline)
    if not ranked:
        return _Result(
            _answer("not_in_batch", "no design of the batch has a footprint like the part's", appearance=appearance),
            views,
        )
    with watch.stage("verify"):
        fits = _verify(geometries, ranked, views, outline, cache_dir)
    if not fits:
        return _Result(
            _answer("not_in_batch", "no design of the batch has a footprint like the part's", appearance=appearance),
            views,
        )
    scores = _scores(geometries, ranked, fits)
    best = fits[0]
    name = _label(geometries[best.group])
    evidence = _evidence(geometries[best.group], best, views, cache_dir)
    if not fits_well(evidence):
        cleared = _without_shadows(geometries, fits, views, images, references, cache_dir)
        if cleared is not None:
            views, fits = cleared
            scores = _scores(geometries, ranked, fits)
            best = fits[0]
            name = _label(geometries[best.group])
            evidence = _evidence(geometries[best.group], best, views, cache_dir)
    if not fits_well(evidence):
        return _Result(
            _answer(
                "not_in_batch",
                f"no design of the batch fits the part: the closest, {name}, {_misfit(evidence)}",
                scores,
                fit=best,
                appearance=appearance,
            ),
            views,
        )
    outside = leaves_an_image(full_model(*_model_key(geometries[best.group]), cache_dir), views, best.alignment.pose)
    if outside is not None:
        return _Result(
            _answer(
                "out_of_view",
                f"the part, fitted as {name}, reaches out of {outside}'s image; put it in the middle of the tray",
                scores,
                fit=best,
                appearance=appearance,
            ),
            views,
        )
    close = [f for f in fits[1:] if not separated(best, f)]
    interior = detail = ""
    if close:
        tied = [best, *close]
        winner, detail = tie_break(tied, [full_model(*_model_key(geometries[f.group]), cache_dir) for f in tied], views)
        rest = [f for f in fits if all(f is not t for t in tied)]
        if (
            winner is not None
            and fits_well(_evidence(geometries[winner.group], winner, views, cache_dir))
            and all(separated(winner, f) for f in rest)
        ):
            members = {m.design_material for m in geometries[winner.group].members}
            scores = [c for c in scores if c.design_material in members] + [
                c for c in scores if c.design_material not in members
            ]
            interior = (
                f"; its outline fits as well as {', '.join(_label(geometries[f.group]) for f in tied if f is not winner)}'s "
                f"but its holes match the photos (photo agreeing where the designs differ inside the outline: {detail} px)"
            )
            best, close = winner, []
            name = _label(geometries[best.group])
    if close:
        others = ", ".join(f"{_label(geometries[f.group])} (outline cost {f.cost:.2f})" for f in close)
        return _Result(
            _answer(
                "ambiguous",
                f"the part fits {name} (outline cost {best.cost:.2f}) about as well as {others}; "
                f"the photos cannot tell them apart, the operator must (photo agreeing where the designs differ inside the outline: {detail} px)",
                scores,
                fit=best,
                appearance=appearance,
            ),
            views,
        )
    geometry = geometries[best.group]
    chosen, why = looks.choose_material(geometry.members, appearance)
    if chosen is None:
        return _Result(_answer("material_ambiguous", why, scores, fit=best, appearance=appearance), views)
    second = [f for f in fits if f is not best][:1]
    runner = f"; the next best, {_label(geometries[second[0].group])}, costs {second[0].cost:.2f}" if second else ""
    reason = f"{chosen.design_material} fits the part best (outline cost {best.cost:.2f}){runner}{interior}"
    if why:
        reason += f"; {why}"
    mesh = design_mesh(*_model_key(geometry))
    return _Result(
        _answer("identified", reason, scores, chosen.design_material, best, appearance),
        views,
        best.alignment,
        mesh,
    )


def _evidence(geometry: _Geometry, fit: Fit, views: Sequence[View], cache_dir: Path | None) -> OutlineEvidence:
    model = full_model(*_model_key(geometry), cache_dir)
    return outline_evidence(model, views, fit.alignment.pose)


def _without_shadows(
    geometries: Sequence[_Geometry],
    fits: Sequence[Fit],
    views: Sequence[View],
    images: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    cache_dir: Path | None,
) -> tuple[list[View], list[Fit]] | None:
    """The views less the shadows the other cameras explain beside the best fit (tray_views), and every fit
    fitted again on them; None when no shadow was explained.

    A shadow taken for part moves the photographed outline off the design's all round a small flat part: a
    30 mm knob's 1.5 mm shadow cost its own design's fit 2.5, and the scan was refused as not in the batch. Only
    a refused best fit pays for this: the inspection explains the shadows of every identified part anyway.
    """
    best = fits[0]
    model = full_model(*_model_key(geometries[best.group]), cache_dir)
    masks = model_masks(model, views, best.alignment.pose)
    refined, _, _ = without_shadows(model, views, best.alignment, images, references, masks)
    if all(new is old for new, old in zip(refined, views, strict=True)):
        return None
    again = []
    for fit in fits:
        other = full_model(*_model_key(geometries[fit.group]), cache_dir)
        alignment = refit(other, refined, fit.alignment, fit.alignment.pose)
        again.append(Fit(fit.group, alignment, robust_cost(alignment.residuals_px) + gap_cost(other, alignment.pose)))
    return refined, sorted(again, key=lambda f: f.cost)


def _misfit(evidence: OutlineEvidence) -> str:
    """What in the closest design's fit says the part is not that design, for the reason."""
    return (
        f"leaves {100 * (1 - evidence.inliers):.0f} % of its clearly seen outline off the photos' and "
        f"{100 * evidence.on_tray:.0f} % of it on tray the photos show bare (outline cost {evidence.cost:.2f}, "
        f"median residual {evidence.median_px:.2f} px; {100 * evidence.set_aside:.0f} % set aside where a face "
        "too dark to segment may lie)"
    )


def _check_inputs(
    images: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray], cameras: Sequence[CameraCalibration]
) -> None:
    if not cameras:
        raise InspectionInputError("no camera calibrations given; load the rig with geometry.camera.load_rig(dir)")
    for calib in cameras:
        for what, source in (("scan image", images), ("empty-tray reference image", references)):
            if calib.name not in source:
                raise InspectionInputError(f"{calib.name}: no {what}; give one per calibrated camera")
        try:
            check_pair(calib.name, images[calib.name], references[calib.name], (calib.image_width, calib.image_height))
        except SegmentationError as exc:
            raise InspectionInputError(str(exc)) from None


def _segment(
    images: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray], cameras: Sequence[CameraCalibration]
) -> list[View]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        found = list(pool.map(lambda c: segment_scan(c.name, images[c.name], references[c.name]), cameras))
    return [View(calib, seg.mask, seg.clear_tray, seg.clear_part) for calib, seg in zip(cameras, found, strict=True)]


def _geometries(candidates: Sequence[CandidateDesign], cache_dir: Path | None) -> tuple[list[_Geometry], list[str]]:
    """Candidates grouped by geometry: by mesh file and units, and files whose meshes are the same merged."""
    by_file: dict[tuple[str, str], _Geometry] = {}
    failed = []
    for candidate in candidates:
        try:
            descriptors = design_descriptors(candidate.mesh_path, candidate.units, cache_dir)
        except (OSError, ValueError) as exc:
            failed.append(f"{candidate.design_material}: {exc}")
            continue
        key = (descriptors.geometry_sha1, candidate.units)
        if key in by_file:
            by_file[key].members.append(candidate)
        else:
            by_file[key] = _Geometry(candidate.mesh_path, candidate.units, [candidate], descriptors)
    return list(by_file.values()), failed


def _model_key(geometry: _Geometry) -> tuple[Path, Units]:
    return geometry.mesh_path, _units(geometry.units)


def _label(geometry: _Geometry) -> str:
    if len(geometry.members) == 1:
        return geometry.members[0].design_material
    return f"{geometry.mesh_path.name} ({', '.join(m.design_material for m in geometry.members)})"


def _rank(geometries: Sequence[_Geometry], views: Sequence[View], outline: TopOutline) -> list[Hypothesis]:
    """Hypotheses of the designs worth drawing in all cameras, scored there, best first."""
    per_design: dict[int, list[Hypothesis]] = {}
    for group, geometry in enumerate(geometries):
        found = footprint_hypotheses(outline, geometry.descriptors, group).hypotheses
        if found:
            per_design[group] = found
    if not per_design:
        return []
    order = sorted(per_design, key=lambda g: -per_design[g][0].footprint_iou)
    best = per_design[order[0]][0].footprint_iou
    chosen = [
        g
        for i, g in enumerate(order)
        if i < SILHOUETTE_DESIGNS or per_design[g][0].footprint_iou >= best - SILHOUETTE_NEAR
    ]
    hypotheses = [h for g in chosen[:SILHOUETTE_MAX] for h in per_design[g]]
    silhouette_scores(hypotheses, [g.descriptors for g in geometries], views, outline)
    hypotheses.sort(key=lambda h: -h.silhouette_iou)
    return hypotheses


def _verify(
    geometries: Sequence[_Geometry],
    ranked: Sequence[Hypothesis],
    views: Sequence[View],
    outline: TopOutline,
    cache_dir: Path | None,
) -> list[Fit]:
    """Finished fits of the best design and of those whose silhouettes came near it, best fit first; each from
    more of its poses than the ranking drew (ranking.VERIFIED_HYPOTHESES)."""
    best_iou = ranked[0].silhouette_iou
    groups: list[int] = []
    for hypothesis in ranked:
        if hypothesis.group not in groups and hypothesis.silhouette_iou >= best_iou - VERIFY_NEAR:
            groups.append(hypothesis.group)
    fits = [_fit_group(geometries, group, ranked, views, outline, cache_dir) for group in groups[:VERIFY_MAX]]
    found = sorted((f for f in fits if f is not None), key=lambda f: f.cost)
    if not found:
        return []
    twins = [g for g in _twins(geometries, found[0].group) if g not in groups[:VERIFY_MAX]]
    more = [_fit_group(geometries, group, ranked, views, outline, cache_dir) for group in twins]
    return sorted([*found, *(f for f in more if f is not None)], key=lambda f: f.cost)


def _twins(geometries: Sequence[_Geometry], group: int) -> list[int]:
    """The other geometries whose principal extents and largest footprint match this one's (TWIN_EXTENTS)."""
    own, area = _extents(geometries[group].descriptors), float(geometries[group].descriptors.areas.max())
    return [
        other
        for other, geometry in enumerate(geometries)
        if other != group
        and np.all(np.abs(_extents(geometry.descriptors) - own) <= TWIN_EXTENTS * own.max())
        and abs(float(geometry.descriptors.areas.max()) - area) <= TWIN_AREA * area
    ]


def _extents(descriptors: Descriptors) -> np.ndarray:
    """The coarse mesh's extents along its principal axes, largest first: a mirror image's are its twin's."""
    points = descriptors.coarse_vertices - descriptors.coarse_vertices.mean(axis=0)
    _, _, axes = np.linalg.svd(points, full_matrices=False)
    along = points @ axes.T
    return np.sort(along.max(axis=0) - along.min(axis=0))[::-1]


def _fit_group(
    geometries: Sequence[_Geometry],
    group: int,
    ranked: Sequence[Hypothesis],
    views: Sequence[View],
    outline: TopOutline,
    cache_dir: Path | None,
) -> Fit | None:
    """One design's finished fit, from its ranked hypotheses and more of its footprint's (VERIFIED_SHARE); None
    when no rest pose of it matches the part's footprint."""
    descriptors = [g.descriptors for g in geometries]
    model = full_model(*_model_key(geometries[group]), cache_dir)
    own = [h for h in ranked if h.group == group]
    known = {(h.rest, round(h.yaw, 2)) for h in own}
    more = [
        h
        for h in footprint_hypotheses(
            outline, geometries[group].descriptors, group, VERIFIED_SHARE, VERIFIED_HYPOTHESES
        ).hypotheses
        if (h.rest, round(h.yaw, 2)) not in known
    ]
    silhouette_scores(more, descriptors, views, outline)
    hypotheses = sorted([*own, *more], key=lambda h: -h.silhouette_iou)
    poses = [(h.pose, h.rest, h.silhouette_iou) for h in hypotheses if h.pose is not None]
    return fit_design(group, model, views, poses) if poses else None


def _scores(geometries: Sequence[_Geometry], ranked: Sequence[Hypothesis], fits: Sequence[Fit]) -> list[CandidateScore]:
    """Every scored candidate, best first: fitted designs by their fit (scores 0.5-1), the others by silhouette
    IoU (scores below 0.5), so that the order of the list is the order of the evidence."""
    scores: list[CandidateScore] = []
    done = set()
    for fit in fits:
        done.add(fit.group)
        for member in geometries[fit.group].members:
            scores.append(
                CandidateScore(
                    design_material=member.design_material,
                    score=round(0.5 + 0.5 * math.exp(-fit.cost), 4),
                    detail=f"fitted: outline cost {fit.cost:.3f}, {100 * fit.alignment.inlier_fraction:.0f} % of the "
                    f"outline within 2 px, median {fit.alignment.median_residual_px:.2f} px",
                )
            )
    for hypothesis in ranked:
        if hypothesis.group in done:
            continue
        done.add(hypothesis.group)
        for member in geometries[hypothesis.group].members:
            scores.append(
                CandidateScore(
                    design_material=member.design_material,
                    score=round(0.5 * hypothesis.silhouette_iou, 4),
                    detail=f"silhouettes: IoU {hypothesis.silhouette_iou:.3f} in the cameras that see the part, "
                    f"footprint IoU {hypothesis.footprint_iou:.3f}",
                )
            )
    return scores[:12]
