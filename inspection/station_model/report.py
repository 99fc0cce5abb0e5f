"""What commissioning learned, shown: commission_report.json, one contact sheet and a summary for the terminal.

A commissioning engineer signs the model off by looking at it: the station's learned light as a face at the
tray centre would see it over the normals it can have (seen from above: the zenith in the middle, horizontal
normals at the rim) with the strongest lamps marked, so that it can be held against the lamps actually mounted;
per camera how far intact parts left out of the fit were from its prediction, and the empty tray it will be
compared with.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import cv2
import numpy as np
import open3d as o3d
from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.common.durable import replace_durably
from amflow_edge.inspection.learned_light import LearnedLight
from amflow_edge.inspection.overlay import write_png
from amflow_edge.inspection.station_model.model import HISTOGRAM_EDGES, StationModel

REPORT_FILE = "commission_report.json"
SHEET_FILE = "commission_report.png"
TILE = 256
LABEL_PX = 28
HEADER_PX = 44
COLUMNS = 3
STRONGEST = 5
"""Lamps named in the summary and marked on the picture: a station has a handful of real lamps, and the fit
spreads each over a few neighbouring candidates."""
_WHITE = (255, 255, 255)
_MARK = (40, 60, 255)


class LampSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    azimuth_deg: float = Field(description="Direction from the tray centre, degrees from the tray's +x towards +y.")
    elevation_deg: float = Field(description="Degrees above the tray's plane (negative: below, light the tray throws).")
    distance_mm: float = Field(ge=0, description="Distance from the tray centre, mm.")
    share: float = Field(ge=0, le=1, description="Share of the lamps' total weight.")


class CameraSummary(BaseModel):
    model_config = ConfigDict(extra="forbid")

    camera: str = Field(description="Station camera name.")
    held_out_samples: int = Field(ge=0, description="Samples of left-out scans the figures below were measured on.")
    spread: float = Field(ge=0, description="Robust scale of the held-out relative residual (0.05 = 5 %).")
    explained: float = Field(le=1, description="Share of the held-out shading the light explains.")
    tray_grey: float = Field(ge=0, le=255, description="Median grey level of the empty tray.")
    tray_contrast: float = Field(ge=0, description="Texture contrast of the empty tray (local std ÷ local mean).")
    outline_iou: float = Field(
        ge=0,
        le=1,
        description="Median silhouette IoU of intact parts' segmentations and designs: how well its "
        "photos show where parts end.",
    )


class CommissionReport(BaseModel):
    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="Version of the station model shown.")
    created: datetime = Field(description="When the model was learned (UTC).")
    calibration_digest: str = Field(description="sha256 of the calibration files it was learned through.")
    scans: list[str] = Field(description="Scans learned from, with design and gain.")
    lamps: list[LampSummary] = Field(description="The learned light's lamps, strongest first.")
    constant: float = Field(description="Grey levels per unit gain no lamp accounts for.")
    spread: float = Field(ge=0, description="Held-out spread of the light over all cameras (0.05 = 5 %).")
    samples: int = Field(ge=0, description="Surface samples the light was fitted to.")
    cameras: list[CameraSummary] = Field(description="Per camera, how well the light predicts it, and its tray.")
    notes: list[str] = Field(description="The model's notes.")
    pictures: list[str] = Field(description="Picture files written beside this report.")


def commission_report(model: StationModel, pictures: list[str] | None = None) -> CommissionReport:
    light = model.learned_light()
    return CommissionReport(
        version=model.version,
        created=model.created,
        calibration_digest=model.calibration_digest,
        scans=[f"{scan.source} ({scan.design}, gain {scan.gain:.3f})" for scan in model.scans],
        lamps=[] if light is None else lamp_summaries(light),
        constant=0.0 if model.light is None else round(model.light.constant, 3),
        spread=0.0 if model.light is None else round(model.light.spread, 5),
        samples=0 if model.light is None else model.light.samples,
        cameras=[_camera_summary(model, camera) for camera in sorted(model.cameras)],
        notes=list(model.notes),
        pictures=pictures or [],
    )


def lamp_summaries(light: LearnedLight) -> list[LampSummary]:
    """Every lamp's direction and share, strongest first."""
    total = max(float(light.weights.sum()), 1e-12)
    found = []
    for index in np.argsort(-light.weights):
        x, y, z = (float(v) for v in light.lamps[index])
        distance = math.sqrt(x * x + y * y + z * z)
        found.append(
            LampSummary(
                azimuth_deg=round(math.degrees(math.atan2(y, x)) % 360.0, 1),
                elevation_deg=round(math.degrees(math.asin(max(-1.0, min(1.0, z / max(distance, 1e-9))))), 1),
                distance_mm=round(distance, 1),
                share=round(float(light.weights[index]) / total, 4),
            )
        )
    return found


def _camera_summary(model: StationModel, camera: str) -> CameraSummary:
    light = model.camera_light(camera)
    tray = model.tray(camera)
    return CameraSummary(
        camera=camera,
        held_out_samples=light.held_out_samples,
        spread=round(light.spread, 5),
        explained=round(min(light.explained, 1.0), 5),
        tray_grey=round(tray.grey, 2),
        tray_contrast=round(tray.contrast, 5),
        outline_iou=model.cameras[camera].outline_iou,
    )


def summary(model: StationModel) -> str:
    """A few lines for the terminal."""
    report = commission_report(model)
    lines = [
        f"station model v{report.version}, learned {report.created:%Y-%m-%d %H:%M} UTC from {len(report.scans)} scans:",
        *(f"  {scan}" for scan in report.scans),
        f"light: {len(report.lamps)} lamps, held-out spread {100 * report.spread:.1f} %, constant "
        f"{report.constant:.1f}, fitted to {report.samples} samples; strongest:",
        "  azimuth  elevation  distance  share",
        *(
            f"  {lamp.azimuth_deg:6.0f}°  {lamp.elevation_deg:8.0f}°  {lamp.distance_mm:5.0f} mm  {100 * lamp.share:4.0f} %"
            for lamp in report.lamps[:STRONGEST]
        ),
        "camera  held-out  spread  explained  tray grey  tray contrast  outline IoU",
    ]
    for c in report.cameras:
        lines.append(
            f"{c.camera:<7} {c.held_out_samples:>8}  {100 * c.spread:5.1f}%  {c.explained:9.3f}  "
            f"{c.tray_grey:9.1f}  {c.tray_contrast:13.4f}  {c.outline_iou:11.3f}"
        )
    lines.extend(f"note: {note}" for note in report.notes)
    return "\n".join(lines)


def write_commission_report(model: StationModel, out_dir: Path | str) -> CommissionReport:
    """commission_report.json and commission_report.png in `out_dir` (created if missing)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_png(out / SHEET_FILE, contact_sheet(model))
    report = commission_report(model, [SHEET_FILE])
    replace_durably(out / REPORT_FILE, (report.model_dump_json(indent=2) + "\n").encode())
    return report


def contact_sheet(model: StationModel) -> np.ndarray:
    """A station row (the light from above with its strongest lamps, the lamps listed, the residuals of all
    cameras), then one row per camera (its held-out residuals, its empty tray)."""
    cameras = sorted(model.cameras)
    light = model.learned_light()
    row_px = TILE + LABEL_PX
    sheet = np.zeros((HEADER_PX + (1 + len(cameras)) * row_px, COLUMNS * TILE, 3), dtype=np.uint8)
    title = f"station model v{model.version}  {model.created:%Y-%m-%d %H:%M} UTC  {len(model.scans)} scans"
    cv2.putText(sheet, title, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.7, _WHITE, 2, cv2.LINE_AA)
    every = np.sum([model.camera_light(camera).residual_histogram for camera in cameras], axis=0)
    rows: list[tuple[str, list[np.ndarray]]] = [
        ("no light learned: too few intact parts could be aligned", [_histogram_tile(np.asarray(every))])
    ]
    if light is not None and model.light is not None:
        lamps = lamp_summaries(light)
        rows = [
            (
                f"light: {len(lamps)} lamps, held-out spread {100 * model.light.spread:.1f} % (all cameras)",
                [light_tile(light), _lamps_tile(lamps), _histogram_tile(np.asarray(every))],
            )
        ]
    for camera in cameras:
        figures = model.camera_light(camera)
        tray = model.tray(camera)
        rows.append(
            (
                f"{camera}: spread {100 * figures.spread:.1f} %, explained {figures.explained:.2f}, "
                f"tray grey {tray.grey:.0f}, contrast {tray.contrast:.3f}",
                [_histogram_tile(np.asarray(figures.residual_histogram)), _tray_tile(tray.thumbnail)],
            )
        )
    for row, (label, tiles) in enumerate(rows):
        y = HEADER_PX + row * row_px
        cv2.putText(sheet, label, (8, y + 20), cv2.FONT_HERSHEY_SIMPLEX, 0.55, _WHITE, 1, cv2.LINE_AA)
        for column, tile in enumerate(tiles):
            sheet[y + LABEL_PX : y + row_px, column * TILE : (column + 1) * TILE] = tile
            cv2.rectangle(sheet, (column * TILE, y + LABEL_PX), ((column + 1) * TILE - 1, y + row_px - 1), (60, 60, 60))
    return sheet


def hemisphere(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Tray-frame normals of the upper hemisphere seen from above, one per pixel of a size × size tile (x to the
    right, y up), and which pixels lie on it."""
    centre = (size - 1) / 2
    v, u = np.mgrid[0:size, 0:size].astype(np.float64)
    x, y = (u - centre) / centre, (centre - v) / centre
    inside = x * x + y * y <= 1.0
    z = np.sqrt(np.clip(1.0 - x * x - y * y, 0.0, 1.0))
    return np.column_stack([x.ravel(), y.ravel(), z.ravel()]).astype(np.float32), inside


def light_tile(light: LearnedLight, size: int = TILE) -> np.ndarray:
    """The light's brightness for a face at the tray centre over its normal (no shadows: no part there), the
    brightest pixel white, and the STRONGEST lamps' directions marked (a ring where a lamp is below the tray)."""
    normals, inside = hemisphere(size)
    points = np.zeros_like(normals)
    brightness = light.expected(o3d.t.geometry.RaycastingScene(), points, normals, shadows=False)
    top = max(float(brightness[inside.ravel()].max()), 1e-6)
    grey = np.clip(brightness / top * 255.0, 0, 255).reshape(size, size)
    tile = np.repeat(grey[:, :, None], 3, axis=2).astype(np.uint8)
    tile[~inside] = 0
    centre = (size - 1) / 2
    total = max(float(light.weights.sum()), 1e-12)
    for rank, index in enumerate(np.argsort(-light.weights)[:STRONGEST]):
        direction = light.lamps[index] / max(float(np.linalg.norm(light.lamps[index])), 1e-9)
        x, y, z = (float(v) for v in direction)
        if z < 0:
            rim = max(math.hypot(x, y), 1e-9)
            x, y = x / rim, y / rim
        at = (int(round(centre + x * centre)), int(round(centre - y * centre)))
        radius = 3 + int(round(10 * math.sqrt(float(light.weights[index]) / total)))
        cv2.circle(tile, at, radius, _MARK, -1 if z >= 0 else 2, cv2.LINE_AA)
        cv2.putText(tile, str(rank + 1), (at[0] + radius + 2, at[1] + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _MARK, 1)
    return tile


def _lamps_tile(lamps: list[LampSummary]) -> np.ndarray:
    tile = np.zeros((TILE, TILE, 3), dtype=np.uint8)
    lines = [
        "#  azimuth  elev.  share",
        *(
            f"{rank + 1}  {lamp.azimuth_deg:5.0f}  {lamp.elevation_deg:5.0f}  {100 * lamp.share:4.0f}%"
            for rank, lamp in enumerate(lamps[:STRONGEST])
        ),
    ]
    if len(lamps) > STRONGEST:
        lines.append(f"+ {len(lamps) - STRONGEST} weaker lamps")
    for row, line in enumerate(lines):
        cv2.putText(tile, line, (8, 24 + 22 * row), cv2.FONT_HERSHEY_SIMPLEX, 0.45, _WHITE, 1, cv2.LINE_AA)
    return tile


def _histogram_tile(histogram: np.ndarray) -> np.ndarray:
    tile = np.zeros((TILE, TILE, 3), dtype=np.uint8)
    bins = len(histogram)
    top = max(int(histogram.max()), 1)
    width = TILE / bins
    base = TILE - 20
    for index, count in enumerate(histogram):
        height = int(round((base - 10) * count / top))
        x0, x1 = int(index * width), max(int(index * width) + 1, int((index + 1) * width) - 1)
        cv2.rectangle(tile, (x0, base - height), (x1, base), (255, 190, 80), -1)
    middle = int(TILE * (0 - HISTOGRAM_EDGES[0]) / (HISTOGRAM_EDGES[-1] - HISTOGRAM_EDGES[0]))
    cv2.line(tile, (middle, 0), (middle, base), (200, 200, 200), 1)
    for value in (HISTOGRAM_EDGES[0], 0.0, HISTOGRAM_EDGES[-1]):
        x = int(TILE * (value - HISTOGRAM_EDGES[0]) / (HISTOGRAM_EDGES[-1] - HISTOGRAM_EDGES[0]))
        text = f"{100 * value:+.0f}%"
        cv2.putText(tile, text, (min(max(x - 16, 0), TILE - 44), TILE - 5), cv2.FONT_HERSHEY_SIMPLEX, 0.4, _WHITE, 1)
    return tile


def _tray_tile(thumbnail: np.ndarray) -> np.ndarray:
    height, width = thumbnail.shape[:2]
    factor = min(TILE / width, TILE / height)
    size = (max(1, int(width * factor)), max(1, int(height * factor)))
    small = cv2.resize(thumbnail, size, interpolation=cv2.INTER_AREA)
    tile = np.zeros((TILE, TILE, 3), dtype=np.uint8)
    tile[: size[1], : size[0]] = cv2.cvtColor(small, cv2.COLOR_GRAY2BGR)
    return tile
