"""Learning the station model from its own images: the empty-tray references and a few scans of intact parts.

Each scan is segmented and the design aligned exactly as an inspection does it, so the samples the light is
learned from are the ones the shading criterion will later compare; then the station's one light is fitted to
every camera's samples of all scans together (learned_light: lamps, with the part's shadows cast against the
design at its found pose), and each camera's empty tray described (tray_appearance).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import open3d as o3d
import trimesh

from amflow_edge.inspection.align import AlignmentError, View, align, transform
from amflow_edge.inspection.design_cache import design_model
from amflow_edge.inspection.geometry.camera import CameraCalibration, load_rig
from amflow_edge.inspection.geometry.raycast import triangle_scene
from amflow_edge.inspection.inspect import InspectionInputError, inspect_scan, read_scan_directory
from amflow_edge.inspection.learned_light import FitSamples, HeldOut, LearnedLight, LightLearning, learn_light_held_out
from amflow_edge.inspection.metrics import model_masks
from amflow_edge.inspection.models import InspectionMetrics
from amflow_edge.inspection.profiles import NUMERIC_METRICS, load_profile
from amflow_edge.inspection.segment import SegmentationError, segment_scan
from amflow_edge.inspection.station_model.model import (
    HISTOGRAM_EDGES,
    CameraLightData,
    IntactRange,
    LearnedScan,
    StationModel,
    calibration_digest,
    camera_look,
)
from amflow_edge.inspection.station_model.tray_appearance import TrayAppearance
from amflow_edge.inspection.surface_samples import SurfaceSamples, surface_samples
from amflow_edge.inspection.tray_views import without_shadows

MIN_SCANS = 2
"""The light's quality is measured on scans left out of its fit: with one scan there is nothing to leave out."""
MIN_CAMERA_SAMPLES = 1000
"""Samples every camera needs over all scans: its gains and held-out figures need them, and the light's few dozen
lamps are pinned by the faces all cameras see (one 40 mm part gives a camera some 3 000 to 15 000)."""
MIN_KEY_SAMPLES = 50
"""A camera that saw less than this of one scan is left out of that scan's fit: its gain would be a guess."""
MIN_INLIER_FRACTION = 0.6
"""Share of the design's outline that must meet the photos' for the fit to count as aligned: an intact part of
the right design meets above 0.9; below this the mesh, its units or the part is wrong."""


class CommissioningError(ValueError):
    """Scans the station cannot be commissioned from; the message says which and what to do."""


@dataclass(frozen=True)
class LearnedScanSamples:
    """One confirmed intact part's samples, per camera."""

    source: str
    """Its scan directory or id."""
    design: str
    """Its mesh file or design id."""
    samples: Sequence[SurfaceSamples]
    scene: o3d.t.geometry.RaycastingScene
    """The design at its found pose, in the tray frame: what casts the part's shadows on itself."""
    outline_iou: Mapping[str, float]
    """Per camera that saw the part, the silhouette IoU of its segmentation and the design at the found pose: how
    well this station's photos show where an intact part ends (0 in every camera when no part could be aligned)."""
    refused: str | None = None
    """Why the scan teaches the light nothing (its part could not be aligned); its outlines still count."""
    measure: Callable[[LearnedLight], InspectionMetrics | None] | None = None
    """The scan inspected against its design at its found pose with a light: what its intact part reads here."""


def samples_of_scan_directory(
    directory: Path | str,
    mesh_mm: trimesh.Trimesh,
    design: str,
    calibration_dir: Path | str,
    cache_dir: Path | str | None = None,
) -> LearnedScanSamples:
    """The surface samples of a scan directory (scan_camNN.png, empty_camNN.png) of an intact `mesh_mm` part, with
    the design at the pose it was found at."""
    directory = Path(directory)
    try:
        cameras, images, references = read_scan_directory(directory, calibration_dir)
    except InspectionInputError as exc:
        raise CommissioningError(str(exc)) from None
    return samples_of_scan(str(directory), images, references, cameras, mesh_mm, design, cache_dir)


def samples_of_scan(
    source: str,
    images: Mapping[str, np.ndarray],
    references: Mapping[str, np.ndarray],
    cameras: Sequence[CameraCalibration],
    mesh_mm: trimesh.Trimesh,
    design: str,
    cache_dir: Path | str | None = None,
) -> LearnedScanSamples:
    """The surface samples of one scan of an intact `mesh_mm` part, segmented and aligned as an inspection does it."""
    try:
        views = []
        for calib in cameras:
            seg = segment_scan(calib.name, images[calib.name], references[calib.name])
            views.append(View(calib, seg.mask, seg.clear_tray, seg.clear_part))
        model = design_model(mesh_mm, cache_dir)
    except SegmentationError as exc:
        raise CommissioningError(f"{source}: {exc}") from None
    except ValueError as exc:
        raise CommissioningError(f"{source}: the design cannot be used: {exc}") from None
    try:
        alignment = align(model, views)
    except AlignmentError as exc:
        refused = f"{source}: the part could not be aligned ({exc}); give a scan of an intact part of this design"
        return LearnedScanSamples(source, design, [], _empty_scene(), dict.fromkeys(cameras_of(views), 0.0), refused)
    views, alignment, masks = without_shadows(
        model, views, alignment, images, references, model_masks(model, views, alignment.pose)
    )
    scene = triangle_scene(transform(alignment.pose, model.vertices), model.faces)
    ious: dict[str, float] = {
        view.calib.name: _iou(view, masks[view.calib.name]) for view in views if view.calib.name in masks
    }
    if alignment.inlier_fraction < MIN_INLIER_FRACTION:
        refused = (
            f"{source}: the part could not be aligned: only {100 * alignment.inlier_fraction:.0f} % of the design's "
            "outline meets the photos; is it this design, in these units, and intact? If it is, the station's light "
            "and tray do not show where parts end (a white part on a white tray, hard shadows): change them"
        )
        return LearnedScanSamples(source, design, [], scene, ious, refused)
    samples = surface_samples(model, views, alignment.pose, images, masks)

    def measure(light: LearnedLight) -> InspectionMetrics | None:
        return inspect_scan(
            images,
            references,
            cameras,
            mesh_mm,
            design,
            load_profile("default"),
            cache_dir=cache_dir,
            views=views,
            alignment=alignment,
            light=light,
        ).metrics

    return LearnedScanSamples(source, design, samples, scene, ious, measure=measure)


def cameras_of(views: Sequence[View]) -> list[str]:
    return [view.calib.name for view in views]


def _empty_scene() -> o3d.t.geometry.RaycastingScene:
    return o3d.t.geometry.RaycastingScene()


def _iou(view: View, model_mask: np.ndarray) -> float:
    observed = view.sdf_window.crop(view.mask)
    union = np.count_nonzero(observed | model_mask)
    return float(np.count_nonzero(observed & model_mask) / union) if union else 0.0


def learn_station_model(
    scans: Sequence[LearnedScanSamples],
    references: Mapping[str, np.ndarray],
    calibration_dir: Path | str,
    notes: Sequence[str] = (),
) -> StationModel:
    """The station model learned from `scans` of intact parts and each camera's empty-tray reference; version 1
    until save_station_model numbers it.

    Every scan's outlines count towards how well the station's photos show where parts end, those whose part
    could not be aligned included (a station lit so that parts cannot be found must say so, not hide it); only
    aligned scans, of which at least MIN_SCANS, teach the light.
    """
    rig = load_rig(calibration_dir)
    cameras = [calib.name for calib in rig]
    for camera in cameras:
        if camera not in references:
            raise CommissioningError(f"{camera}: no empty-tray reference; give one per calibrated camera")
    eyes = {calib.name: calib.centre.astype(np.float32) for calib in rig}
    usable: list[LearnedScanSamples] = []
    fit_scans: list[list[FitSamples]] = []
    left_out = [scan.refused for scan in scans if scan.refused is not None]
    for scan in scans:
        if scan.refused is not None:
            continue
        fit = [
            FitSamples(_key(len(usable), s.camera), s.world, s.normals, s.photo, scan.scene, eyes[s.camera])
            for s in scan.samples
            if s.camera in eyes and len(s.photo) >= MIN_KEY_SAMPLES
        ]
        if not fit:
            left_out.append(f"{scan.source}: no camera saw at least {MIN_KEY_SAMPLES} samples of the part")
            continue
        usable.append(scan)
        fit_scans.append(fit)
    if len(scans) < MIN_SCANS:
        raise CommissioningError(
            f"{len(scans)} scan(s) given; commissioning needs at least {MIN_SCANS} scans of intact parts (better 8 of "
            "different designs), since the light is checked on scans left out of its fit"
        )
    if len(usable) < MIN_SCANS:
        # The station's photos do not show where its parts end: that is what it learns, and says.
        return _model(rig, references, scans, calibration_dir, None, [], [*notes, *_left_out(left_out)])
    counts = {
        camera: sum(len(s.photo) for fit in fit_scans for s in fit if s.key.endswith(f"/{camera}"))
        for camera in cameras
    }
    for camera in cameras:
        if counts[camera] < MIN_CAMERA_SAMPLES:
            raise CommissioningError(
                f"{camera}: only {counts[camera]} surface samples over {len(usable)} scans, at least "
                f"{MIN_CAMERA_SAMPLES} are needed; add scans of larger parts, or of parts placed where this camera "
                "sees them well"
            )
    try:
        learning = learn_light_held_out(fit_scans, np.array([c.centre for c in rig]))
    except ValueError as exc:
        raise CommissioningError(str(exc)) from None
    intact = _intact_ranges([scan.measure(learning.light) for scan in usable if scan.measure is not None])
    learned = [
        LearnedScan(source=scan.source, design=scan.design, gain=_scan_gain(learning.gains, index))
        for index, scan in enumerate(usable)
    ]
    model = _model(rig, references, scans, calibration_dir, learning, learned, [*notes, *_left_out(left_out)])
    return model.model_copy(update={"intact": intact})


def _intact_ranges(readings: Sequence[InspectionMetrics | None]) -> dict[str, IntactRange]:
    """Per numeric metric, the range the intact parts read."""
    found = [metrics for metrics in readings if metrics is not None]
    ranges = {}
    for metric in NUMERIC_METRICS:
        values = [float(getattr(metrics, metric)) for metrics in found]
        values = [v for v in values if math.isfinite(v)]
        if values:
            ranges[metric] = IntactRange(min=round(min(values), 4), max=round(max(values), 4), scans=len(values))
    return ranges


def _left_out(reasons: Sequence[str]) -> list[str]:
    return [f"left out of the light: {reason}" for reason in reasons]


def _model(
    rig: Sequence[CameraCalibration],
    references: Mapping[str, np.ndarray],
    scans: Sequence[LearnedScanSamples],
    calibration_dir: Path | str,
    learning: LightLearning | None,
    learned: list[LearnedScan],
    notes: list[str],
) -> StationModel:
    held_out = [] if learning is None else learning.held_out
    return StationModel(
        version=1,
        created=datetime.now(UTC),
        calibration_digest=calibration_digest(calibration_dir),
        light=None if learning is None else learning.light.record(learning.samples),
        cameras={
            calib.name: camera_look(
                camera_light([h for h in held_out if h.key.endswith(f"/{calib.name}")]),
                TrayAppearance.of(calib.name, references[calib.name]),
                _median([scan.outline_iou[calib.name] for scan in scans if calib.name in scan.outline_iou]),
            )
            for calib in rig
        },
        scans=learned,
        notes=notes,
    )


def _median(values: Sequence[float]) -> float:
    return round(float(np.median(values)), 4) if values else 0.0


def _key(scan: int, camera: str) -> str:
    return f"scan{scan}/{camera}"


def _scan_gain(gains: Mapping[str, float], scan: int) -> float:
    mine = [gain for key, gain in gains.items() if key.startswith(_key(scan, ""))]
    return round(float(np.median(mine)), 5) if mine else 1.0


def camera_light(held_out: Sequence[HeldOut]) -> CameraLightData:
    """One camera's held-out figures, from its keys' residuals on the folds that left their scans out."""
    if not held_out:
        return CameraLightData(
            spread=0.0, explained=0.0, held_out_samples=0, residual_histogram=[0] * (len(HISTOGRAM_EDGES) - 1)
        )
    residual = np.concatenate([h.residual for h in held_out]).astype(np.float64)
    prediction = np.concatenate([h.prediction for h in held_out]).astype(np.float64)
    # photo ÷ gain with the fitted highlights taken off: (1 + residual) × prediction.
    normalised = (1.0 + residual) * prediction
    total = float(np.sum((normalised - normalised.mean()) ** 2))
    unexplained = float(np.sum((normalised - prediction) ** 2))
    histogram, _ = np.histogram(np.clip(residual, HISTOGRAM_EDGES[0], HISTOGRAM_EDGES[-1]), HISTOGRAM_EDGES)
    return CameraLightData(
        spread=round(1.4826 * float(np.median(np.abs(residual))), 5),
        explained=round(min(1.0, 1.0 - unexplained / max(total, 1e-9)), 5),
        held_out_samples=len(residual),
        residual_histogram=[int(v) for v in histogram],
    )
