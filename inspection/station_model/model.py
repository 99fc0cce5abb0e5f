"""station_model.json: what commissioning learned, beside the calibration it was learned through, versioned.

The file sits in the calibration directory because it is only valid for those cameras: a new calibration, a
moved lamp or another tray needs a new commissioning. Every earlier model is kept as station_model.v{N}.json so
a plant can see what changed and go back; the tray thumbnails are inline (PNG, base64) so that one file is one
version, written atomically.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from amflow_edge.common.durable import replace_durably
from amflow_edge.inspection.geometry.camera import RIG_CAMERAS
from amflow_edge.inspection.learned_light import LearnedLight, LearnedLightRecord
from amflow_edge.inspection.station_model.tray_appearance import TrayAppearance

FORMAT = 2
"""2: one station-wide light of lamps (learned_light); 1 was a spherical-harmonic light per camera, which
nothing reads any more."""
STATION_MODEL_FILE = "station_model.json"
UNREADABLE_FILE = "station_model.unreadable.json"
"""Where saving moves a current file it cannot read, rather than destroying what someone may want to look at."""
_ARCHIVED = re.compile(r"station_model\.v([0-9]+)\.json")
HOW_TO_FIX = "re-run `amflow-edge commission learn --calibration DIR --scan SCAN_DIR=MESH_FILE …` to learn it again"
HISTOGRAM_EDGES = np.linspace(-0.5, 0.5, 51)
"""Bins of the held-out relative residuals kept for the report (−50 % … +50 %, 2 % wide; beyond them counted
in the outer bins)."""


class StationModelError(ValueError):
    """A station model file that cannot be read; the message names the file and how to fix it."""


class CameraLightData(BaseModel):
    """How well the station's light predicts what one camera saw of intact parts left out of the fit: the light is
    one for the station, but a camera that sees the part's faces badly (grazing, out of focus) shows it here."""

    model_config = ConfigDict(extra="forbid")

    spread: float = Field(
        ge=0, description="Robust scale (1.4826 × MAD) of the held-out relative residual photo/(gain × prediction) − 1."
    )
    explained: float = Field(
        le=1,
        description="1 − Σ(photo/gain − prediction)² ÷ Σ(photo/gain − its mean)² on held-out samples: the share of "
        "the shading the light accounts for (low where the camera sees hardly any shading, e.g. straight down).",
    )
    held_out_samples: int = Field(ge=0, description="Samples of left-out scans spread and explained were measured on.")
    residual_histogram: list[int] = Field(
        min_length=len(HISTOGRAM_EDGES) - 1,
        max_length=len(HISTOGRAM_EDGES) - 1,
        description="Held-out relative residuals in 2 % bins from −50 % to +50 % (beyond counted in the outer bins).",
    )

    @field_validator("residual_histogram")
    @classmethod
    def _counts(cls, value: list[int]) -> list[int]:
        if any(count < 0 for count in value):
            raise ValueError("counts cannot be negative")
        return value


class TrayData(BaseModel):
    """One camera's empty tray at commissioning (tray_appearance.TrayAppearance) as stored."""

    model_config = ConfigDict(extra="forbid")

    grey: float = Field(ge=0, le=255, description="Median grey level of the central half of the reference.")
    contrast: float = Field(ge=0, description="Median local std ÷ local mean (Gaussian σ 2 px) on the central half.")
    thumbnail_png: str = Field(
        min_length=1, description="The reference at 1/8 size, as a base64-encoded 8-bit grey PNG."
    )


class CameraLook(BaseModel):
    model_config = ConfigDict(extra="forbid")

    light: CameraLightData = Field(description="How well the station's light predicts this camera's view.")
    tray: TrayData = Field(description="The camera's empty tray at commissioning.")
    outline_iou: float = Field(
        ge=0.0,
        le=1.0,
        description="Median silhouette IoU of the segmentation and the design at its found pose over the intact "
        "parts learned from: how well this camera's photos show where a part ends (about 0.95-0.98 where they do).",
    )


class IntactRange(BaseModel):
    """What one metric read over the intact parts commissioning inspected."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    min: float = Field(description="Smallest value read.")
    max: float = Field(description="Largest value read.")
    scans: int = Field(ge=1, description="Intact parts it was read on.")


class LearnedScan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(min_length=1, description="The scan it was learned from: its directory or id.")
    design: str = Field(min_length=1, description="The design the part was: its mesh file or design id.")
    gain: float = Field(
        gt=0,
        description="The scan's fitted gain (albedo × exposure; the median over its cameras' gains), about 1 for a "
        "typical scan: a scan far from 1 was of a darker or lighter material, or exposed otherwise.",
    )


class StationModel(BaseModel):
    """What commissioning learned of the station's light and tray."""

    model_config = ConfigDict(extra="forbid")

    format: Literal[2] = Field(default=2, description="File format; 2 (FORMAT).")
    version: int = Field(ge=1, description="1 for the first model learned beside this calibration, +1 each time.")
    created: datetime = Field(description="When it was learned (UTC).")
    calibration_digest: str = Field(
        pattern=r"^[0-9a-f]{64}$",
        description="sha256 over the camNN.yaml files (name and content, in camera order) it was learned through.",
    )
    light: LearnedLightRecord | None = Field(
        description="The station's light: lamps with weights, learned from every camera's view of intact parts; "
        "null when fewer than two of them could be aligned (the station's photos do not show where parts end)."
    )
    cameras: dict[str, CameraLook] = Field(min_length=1, description="Per camera name, what was learned.")
    scans: list[LearnedScan] = Field(description="The intact-part scans the light was learned from.")
    intact: dict[str, IntactRange] = Field(
        default_factory=dict,
        description="Per metric, what the intact parts learned from read when inspected with the learned light: a "
        "criterion whose limit intact parts of this station already cross cannot tell a defect here, and abstains.",
    )
    notes: list[str] = Field(default_factory=list, description="What anyone should know about how it was learned.")

    @field_validator("created")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        if value.tzinfo is None:
            raise ValueError("give a time zone (UTC)")
        return value.astimezone(UTC)

    def learned_light(self) -> LearnedLight | None:
        """The light as the shading comparison uses it; None where none could be learned."""
        return None if self.light is None else self.light.light()

    def camera_light(self, camera: str) -> CameraLightData:
        return self._look(camera).light

    def tray(self, camera: str) -> TrayAppearance:
        data = self._look(camera).tray
        return TrayAppearance(camera, data.grey, data.contrast, decode_png(data.thumbnail_png))

    def _look(self, camera: str) -> CameraLook:
        try:
            return self.cameras[camera]
        except KeyError:
            raise KeyError(
                f"{camera}: not in the station model (it has {', '.join(sorted(self.cameras))}); {HOW_TO_FIX}"
            ) from None


def camera_look(light: CameraLightData, tray: TrayAppearance, outline_iou: float) -> CameraLook:
    return CameraLook(
        light=light,
        tray=TrayData(grey=tray.grey, contrast=tray.contrast, thumbnail_png=encode_png(tray.thumbnail)),
        outline_iou=outline_iou,
    )


def calibration_digest(calibration_dir: Path | str) -> str:
    digest = hashlib.sha256()
    for name in RIG_CAMERAS:
        path = Path(calibration_dir) / f"{name}.yaml"
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def encode_png(image: np.ndarray) -> str:
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"OpenCV could not encode a {image.shape} {image.dtype} image as PNG")
    return base64.b64encode(encoded.tobytes()).decode("ascii")


def decode_png(text: str) -> np.ndarray:
    try:
        data = base64.b64decode(text, validate=True)
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED) if data else None
    except (binascii.Error, ValueError, cv2.error):
        image = None
    if image is None:
        raise StationModelError(f"a tray thumbnail is not a readable PNG; {HOW_TO_FIX}")
    return np.asarray(image, dtype=np.uint8)


def load_station_model(calibration_dir: Path | str) -> StationModel | None:
    """The current model beside the calibration; None when none was learned yet."""
    path = Path(calibration_dir) / STATION_MODEL_FILE
    if not path.exists():
        return None
    return read_station_model(path)


def read_station_model(path: Path) -> StationModel:
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StationModelError(f"{path}: not a readable station model ({exc}); {HOW_TO_FIX}") from None
    found = raw.get("format") if isinstance(raw, dict) else None
    if isinstance(found, int) and not isinstance(found, bool) and 1 <= found < FORMAT:
        raise StationModelError(
            f"{path}: a station model of format {found}, learned by an earlier version that described the light "
            f"otherwise; this version reads format {FORMAT}: {HOW_TO_FIX}"
        )
    if found != FORMAT:
        what = found if isinstance(raw, dict) else type(raw).__name__
        raise StationModelError(
            f"{path}: not a station model of format {FORMAT} (format: {what!r}); it may be another program's file; "
            f"move it away and {HOW_TO_FIX}"
        )
    try:
        model = StationModel.model_validate(raw)
        for camera in model.cameras:
            model.tray(camera)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:5])
        raise StationModelError(f"{path}: damaged station model ({problems}); {HOW_TO_FIX}") from None
    except StationModelError as exc:
        raise StationModelError(f"{path}: {exc}") from None
    return model


def save_station_model(model: StationModel, calibration_dir: Path | str) -> StationModel:
    """Write `model` as the current station_model.json with version = previous + 1 (1 for the first) and keep the
    previous one as station_model.v{N}.json; returns the model as saved."""
    directory = Path(calibration_dir)
    current = directory / STATION_MODEL_FILE
    previous = 0
    if current.exists():
        try:
            older = read_station_model(current)
        except StationModelError:
            replace_durably(directory / UNREADABLE_FILE, current.read_bytes())
        else:
            replace_durably(archived_path(directory, older.version), current.read_bytes())
            previous = older.version
    previous = max([previous, *(version for version, _ in archived_versions(directory))])
    saved = model.model_copy(update={"version": previous + 1})
    replace_durably(current, (saved.model_dump_json(indent=1) + "\n").encode())
    return saved


def archived_path(directory: Path, version: int) -> Path:
    return directory / f"station_model.v{version}.json"


def archived_versions(calibration_dir: Path | str) -> list[tuple[int, Path]]:
    """The earlier models kept beside the calibration, oldest first."""
    found = []
    for path in Path(calibration_dir).glob("station_model.v*.json"):
        match = _ARCHIVED.fullmatch(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)
