"""One inspection: five photos and their empty-tray references, a design, a profile → a report.

The daemon will run this in a worker process, so the entry points take paths or small models
and return a pydantic report; nothing here knows about MQTT or the daemon.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import cv2
import numpy as np
import trimesh

from amflow_edge.common.scan_layout import CONTACT_SHEET, reference_image, scan_image
from amflow_edge.common.shipped import DEMO_CALIBRATION
from amflow_edge.inspection.align import Alignment, AlignmentError, View, align, fit_scale, refit
from amflow_edge.inspection.design_cache import DesignModel, design_model
from amflow_edge.inspection.designs import Units, load_mesh_mm
from amflow_edge.inspection.geometry.camera import (
    RIG_CAMERAS,
    CameraCalibration,
    load_rig,
)
from amflow_edge.inspection.learned_light import LearnedLight
from amflow_edge.inspection.metrics import compute_metrics, model_masks
from amflow_edge.inspection.models import InspectionMetrics
from amflow_edge.inspection.overlay import (
    contact_sheet,
    overlay,
    write_png,
)
from amflow_edge.inspection.profiles import NUMERIC_METRICS, InspectionProfile, load_profile
from amflow_edge.inspection.report import InspectionReport, judge, write_report
from amflow_edge.inspection.segment import SegmentationError, check_pair, segment_scan
from amflow_edge.inspection.shading import choose_symmetric, compare_shading
from amflow_edge.inspection.station_model.model import StationModel, calibration_digest, load_station_model
from amflow_edge.inspection.timing import Stopwatch, one_blas_thread
from amflow_edge.inspection.tray_views import without_shadows
from amflow_edge.inspection.warp import fit_bend

DEFAULT_CALIBRATION = DEMO_CALIBRATION
OUTLINE_IOU_MIN = 0.9
"""Intact parts' silhouettes match the design at IoU 0.95-0.98 on stations whose photos show the parts' outlines;
below this in two cameras a station's measurements would be of its shadows and its tray, not of its parts."""
EVIDENCE_COUNTS = frozenset({"cameras_seeing_part", "visible_fraction"})
"""Metrics that count what was seen rather than measure it: they stand whatever the photos' quality."""


class InspectionInputError(ValueError):
    """Inputs an inspection cannot start from; the message names what is missing or wrong and the fix."""


def _check_inputs(
    images: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray], cameras: Sequence[CameraCalibration]
) -> None:
    if not cameras:
        raise InspectionInputError(
            "no camera calibrations given; load the rig with amflow_edge.inspection.geometry.camera.load_rig(dir)"
        )
    for calib in cameras:
        for what, source in (("scan image", images), ("empty-tray reference image", references)):
            if calib.name not in source:
                raise InspectionInputError(
                    f"{calib.name}: no {what}; give one per calibrated camera (have: {', '.join(sorted(source)) or 'none'})"
                )
        try:
            check_pair(calib.name, images[calib.name], references[calib.name], (calib.image_width, calib.image_height))
        except SegmentationError as exc:
            raise InspectionInputError(str(exc)) from None


@one_blas_thread
def inspect_scan(
    images: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    cameras: Sequence[CameraCalibration],
    mesh_mm: trimesh.Trimesh,
    design_material: str,
    profile: InspectionProfile,
    cache_dir: Path | str | None = None,
    out_dir: Path | str | None = None,
    scan: uuid.UUID | None = None,
    views: Sequence[View] | None = None,
    alignment: Alignment | None = None,
    light: LearnedLight | None = None,
    light_doubt: str | None = None,
    outline_doubt: str | None = None,
    intact: Mapping[str, tuple[float, float]] | None = None,
) -> InspectionReport:
    """Align the design to the scan, measure, judge with `profile`; write report and overlays into out_dir if given.

    `views` (the segmented cameras, in `cameras` order) and `alignment` (the design's fit to them) are what an
    identification already made (inspection.identification): given, the scan is neither segmented nor aligned
    again, which would cost a second and could find another pose than the one the design was chosen by (only
    refined, where shadows the other cameras explain had pulled it: tray_views.without_shadows).

    `light` is the station's light as commissioning learned it (`station_light`); without it, or with a
    `light_doubt` (why the station no longer looks as it did then), the shading criteria abstain. With an
    `outline_doubt` (`outline_doubt`: this station's photos do not show where intact parts end) every criterion
    taken from the outlines or the pose abstains too, and the scan goes to review. `intact` (`intact_readings`:
    what intact parts of this station read at commissioning) makes a criterion they already cross abstain.
    """
    watch = Stopwatch()
    with watch.stage("design"):
        _check_inputs(images, references, cameras)
        model = _design(mesh_mm, cache_dir, design_material)
    if views is None:
        with watch.stage("segment"):
            views = segment_views(images, references, cameras)
    found = _fit_and_measure(model, views, images, references, watch, alignment, light, light_doubt)
    report = _report(_doubted(found, outline_doubt), profile, design_material, scan, intact)
    if out_dir is not None:
        with watch.stage("overlays"):
            report.overlays = _write_overlays(Path(out_dir), images, found.views or views, found.drawn, report)
    report.timings_s = watch.rounded()
    if out_dir is not None:
        write_report(report, out_dir)
    return report


@dataclass(frozen=True)
class _Found:
    """What fitting and measuring gave: nothing but notes when no part could be aligned."""

    alignment: Alignment | None
    metrics: InspectionMetrics | None
    drawn: dict[str, dict[str, np.ndarray]]
    """Per camera, the masks the overlays draw, in the windows of `views`."""
    notes: list[str]
    views: Sequence[View] = ()
    """The views measured: the segmentation's, less the shadows the other cameras explained (tray_views)."""


def _design(mesh_mm: trimesh.Trimesh, cache_dir: Path | str | None, design_material: str) -> DesignModel:
    try:
        return design_model(mesh_mm, cache_dir)
    except ValueError as exc:
        raise InspectionInputError(f"design {design_material}: {exc}") from None


def segment_views(
    images: Mapping[str, np.ndarray], references: Mapping[str, np.ndarray], cameras: Sequence[CameraCalibration]
) -> list[View]:
    with ThreadPoolExecutor(max_workers=2) as pool:
        segmentations = list(pool.map(lambda c: segment_scan(c.name, images[c.name], references[c.name]), cameras))
    return [
        View(calib, seg.mask, seg.clear_tray, seg.clear_part) for calib, seg in zip(cameras, segmentations, strict=True)
    ]


def _fit_and_measure(
    model: DesignModel,
    views: Sequence[View],
    images: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    watch: Stopwatch,
    given: Alignment | None = None,
    light: LearnedLight | None = None,
    light_doubt: str | None = None,
) -> _Found:
    with watch.stage("align"):
        try:
            alignment = align(model, views) if given is None else given
        except AlignmentError as exc:
            return _Found(None, None, {}, [f"no part could be aligned: {exc}"])
    # Without look-alikes to choose from, the model masks are timed with the metrics.
    trusted_light = None if light_doubt else light
    with watch.stage("look_alikes" if _has_look_alikes(model) else "metrics"):
        alignment, masks = _choose_look_alike(model, views, alignment, images, trusted_light)
    with watch.stage("shadows"):
        views, alignment, masks = without_shadows(model, views, alignment, images, references, masks, trusted_light)
    with watch.stage("metrics"):
        metrics, drawn = _measure(model, views, alignment, images, masks, light, light_doubt)
    return _Found(alignment, metrics, drawn, [], views)


def _has_look_alikes(model: DesignModel) -> bool:
    return len(model.symmetries) > 1 or bool(len(model.spin_axis))


def _choose_look_alike(
    model: DesignModel,
    views: Sequence[View],
    alignment: Alignment,
    images: Mapping[str, np.ndarray],
    light: LearnedLight | None = None,
) -> tuple[Alignment, dict[str, np.ndarray]]:
    """The alignment at the look-alike pose whose shading fits the photos best (the fit itself for a design
    without look-alikes), and its model masks."""
    masks = model_masks(model, views, alignment.pose)
    if _has_look_alikes(model):
        chosen = choose_symmetric(model, views, alignment.pose, images, masks, light)
        if not np.allclose(chosen, alignment.pose):
            alignment = refit(model, views, alignment, chosen)
            masks = model_masks(model, views, alignment.pose)
    return alignment, masks


def _measure(
    model: DesignModel,
    views: Sequence[View],
    alignment: Alignment,
    images: Mapping[str, np.ndarray],
    masks: Mapping[str, np.ndarray],
    light: LearnedLight | None = None,
    light_doubt: str | None = None,
) -> tuple[InspectionMetrics, dict[str, dict[str, np.ndarray]]]:
    # The shading comparison is mostly ray casting, the scale and bend fits mostly Python: side by side.
    with ThreadPoolExecutor(max_workers=1) as pool:
        surface = pool.submit(compare_shading, model, views, alignment.pose, images, masks, light, light_doubt)
        scale = fit_scale(model, views, alignment.pose)
        bend = fit_bend(model, views, alignment.pose)
        return compute_metrics(model, views, alignment, scale, bend, masks, surface.result())


def _report(
    found: _Found,
    profile: InspectionProfile,
    design_material: str,
    scan: uuid.UUID | None,
    intact: Mapping[str, tuple[float, float]] | None = None,
) -> InspectionReport:
    criteria, machine, review, reasons = judge(profile, found.metrics, intact)
    crossed = [
        f"not judged ({c.metric}): intact parts of this station read up to {intact[c.metric][1]:g} at commissioning"
        if c.comparator == "<="
        else f"not judged ({c.metric}): intact parts of this station read as low as {intact[c.metric][0]:g} "
        "at commissioning"
        for c in criteria
        if c.verdict == "abstain"
        and intact
        and c.metric in intact
        and found.metrics is not None
        and c.metric not in found.metrics.abstained
    ]
    alignment = found.alignment
    return InspectionReport(
        scan=scan,
        design_material=design_material,
        profile=profile.name,
        pose=None if alignment is None else [[round(float(v), 6) for v in row] for row in alignment.pose],
        rest_pose_index=None if alignment is None else alignment.rest_index,
        metrics=found.metrics,
        criteria=criteria,
        qc_machine=machine,
        qc_needs_review=review,
        qc_reasons=reasons,
        notes=found.notes + _abstentions(found.metrics) + crossed,
    )


def _doubted(found: _Found, outline_doubt: str | None) -> _Found:
    """`found` with every metric taken from the outlines or the pose abstaining for `outline_doubt`."""
    if outline_doubt is None or found.metrics is None:
        return found
    abstained = dict(found.metrics.abstained)
    for metric in NUMERIC_METRICS:
        if metric not in EVIDENCE_COUNTS:
            abstained.setdefault(metric, outline_doubt)
    metrics = found.metrics.model_copy(update={"abstained": abstained})
    return _Found(found.alignment, metrics, found.drawn, found.notes, found.views)


def intact_readings(station: StationModel | None) -> dict[str, tuple[float, float]] | None:
    """Per metric, the (min, max) the intact parts of this station read at commissioning; None without a model."""
    if station is None:
        return None
    return {metric: (reading.min, reading.max) for metric, reading in station.intact.items()}


def outline_doubt(station: StationModel | None) -> str | None:
    """Why this station's photos cannot be measured, if its commissioning found that they do not show where intact
    parts end (OUTLINE_IOU_MIN in two cameras or more); None where they do, or without a station model."""
    if station is None:
        return None
    weak = {
        name: look.outline_iou for name, look in sorted(station.cameras.items()) if look.outline_iou < OUTLINE_IOU_MIN
    }
    if len(weak) < 2:
        return None
    seen = ", ".join(f"{name} {iou:.2f}" for name, iou in weak.items())
    return (
        f"at commissioning the photos matched intact parts' outlines only to silhouette IoU {seen} (below "
        f"{OUTLINE_IOU_MIN}): this station's light and tray do not show where parts end, so no measurement is "
        "judged; give the tray more contrast with the parts or soften hard shadows, then commission again"
    )


def _abstentions(metrics: InspectionMetrics | None) -> list[str]:
    """Each reason a criterion abstained, once, naming the metrics it silenced."""
    by_why: dict[str, list[str]] = {}
    for metric, why in ({} if metrics is None else metrics.abstained).items():
        by_why.setdefault(why, []).append(metric)
    return [f"not judged ({', '.join(metrics_)}): {why}" for why, metrics_ in by_why.items()]


def _write_overlays(
    out: Path,
    images: Mapping[str, np.ndarray],
    views: Sequence[View],
    drawn: dict[str, dict[str, np.ndarray]],
    report: InspectionReport,
) -> list[str]:
    out.mkdir(parents=True, exist_ok=True)
    tiles, written = [], []
    for view in views:
        name = view.calib.name
        tile = overlay(images[name], view.sdf_window, drawn.get(name), name)
        path = out / f"overlay_{name}.png"
        write_png(path, tile)
        written.append(path.name)
        tiles.append(tile)
    verdict = "PASS" if report.qc_machine else "FAIL " + ", ".join(report.qc_reasons)
    if report.qc_needs_review:
        verdict += " (review)"
    write_png(out / CONTACT_SHEET, contact_sheet(tiles, f"{report.design_material[:48]}  {verdict}"))
    written.append(CONTACT_SHEET)
    return written


class Commissioned(TypedDict):
    """What inspect_scan takes from the station's commissioning, as its keyword arguments."""

    light: LearnedLight | None
    light_doubt: str | None
    outline_doubt: str | None
    intact: dict[str, tuple[float, float]] | None


def commissioned(
    station: StationModel | None, references: Mapping[str, np.ndarray], calibration_dir: Path | str | None = None
) -> Commissioned:
    """Everything the station model tells an inspection of a scan with these empty-tray references: the light and
    any doubt on it (station_light), whether the photos show outlines (outline_doubt), what intact parts read."""
    light, doubt = station_light(station, references, calibration_dir)
    return Commissioned(
        light=light, light_doubt=doubt, outline_doubt=outline_doubt(station), intact=intact_readings(station)
    )


def station_light(
    station: StationModel | None, references: Mapping[str, np.ndarray], calibration_dir: Path | str | None = None
) -> tuple[LearnedLight | None, str | None]:
    """The light the station learned at commissioning, and why it may no longer hold: an empty tray that now looks
    different from the one commissioned (a lamp failed, the tray was swapped) says the light has changed too, and
    so does a recalibration (the cameras it was learned through are not the cameras now)."""
    if station is None:
        return None, None
    if calibration_dir is not None and station.calibration_digest != _digest(calibration_dir):
        return station.learned_light(), (
            "the cameras were calibrated again since the station was commissioned: shading is not judged until "
            "it is commissioned again (amflow-edge commission learn)"
        )
    if station.light is None:
        return None, (
            "commissioning learned no light: too few intact parts could be aligned (amflow-edge commission show "
            "says why); shading is not judged until the station is commissioned again"
        )
    changes = [station.tray(name).compare(image) for name, image in references.items() if name in station.cameras]
    doubts = [change.why for change in changes if change.changed]
    if not doubts:
        return station.learned_light(), None
    return station.learned_light(), (
        "; ".join(doubts) + ". The station no longer looks as it did when it was commissioned: shading is not "
        "judged until it is commissioned again (amflow-edge commission learn)"
    )


def _digest(calibration_dir: Path | str) -> str | None:
    try:
        return calibration_digest(calibration_dir)
    except OSError:
        return None


def read_image(path: Path) -> np.ndarray:
    if not path.is_file():
        raise InspectionInputError(
            f"{path}: missing; the scan directory needs scan_camNN.png and empty_camNN.png per camera"
        )
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise InspectionInputError(f"{path}: not a readable image; store 8-bit grey PNGs")
    if image.ndim == 3:
        raise InspectionInputError(f"{path}: colour image; the station's cameras are Mono8, store 8-bit grey PNGs")
    if image.dtype != np.uint8:
        raise InspectionInputError(f"{path}: {image.dtype} pixels; store 8-bit grey PNGs")
    return image


def read_scan_directory(
    directory: Path, calibration: Path | str
) -> tuple[list[CameraCalibration], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """The rig's cameras, and a scan directory's photos and empty-tray references as `amflow-edge render` and the
    station write them (scan_camNN.png, empty_camNN.png)."""
    if not directory.is_dir():
        raise InspectionInputError(f"{directory}: no such scan directory")
    cameras = load_rig(calibration)
    images: dict[str, np.ndarray] = {name: read_image(directory / scan_image(name)) for name in RIG_CAMERAS}
    references: dict[str, np.ndarray] = {name: read_image(directory / reference_image(name)) for name in RIG_CAMERAS}
    return cameras, images, references


def inspect_directory(
    directory: Path | str,
    design: Path | str,
    units: Units = "mm",
    calibration: Path | str = DEFAULT_CALIBRATION,
    profile: str | Path = "default",
    design_material: str | None = None,
    cache_dir: Path | str | None = None,
    write: bool = True,
) -> InspectionReport:
    """Inspect a scan directory (scan_cam0N.png, empty_cam0N.png) against a design mesh file; paths in, report out."""
    directory = Path(directory)
    cameras, images, references = read_scan_directory(directory, calibration)
    station = load_station_model(calibration)
    known = commissioned(station, references, calibration)
    mesh = load_mesh_mm(design, units)
    scan = None
    with suppress(ValueError):
        scan = uuid.UUID(directory.name)
    return inspect_scan(
        images,
        references,
        cameras,
        mesh,
        design_material or Path(design).stem,
        load_profile(profile),
        cache_dir=cache_dir,
        out_dir=directory if write else None,
        scan=scan,
        **known,
    )
