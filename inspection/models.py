"""What an inspection finds, as plain data: the metrics a profile judges and the regions behind them.

Apart from the computations (which need OpenCV, open3d and trimesh), so that the profiles, the QC
reasons and everything that reads a report import no geometry library.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

CONFIRM_MM = 2.0
"""How near another camera's bite or patch must lie to confirm a region, mm on the design."""
SINGLE_CAMERA_MM2 = 4.0
"""Area from which a missing-material region no second camera confirms still counts (metrics._confirm_missing)."""


class Region(BaseModel):
    """A connected patch where the photo and the model disagree."""

    model_config = ConfigDict(extra="forbid")

    camera: str = Field(description="Camera that saw it.")
    area_mm2: float = Field(description="Area in mm² at the part's depth in that camera.")
    depth_mm: float = Field(description="How far the region reaches past the other outline, mm at the part's depth.")
    centre_part_mm: list[float] = Field(
        description="Region centre in the part's design frame (mm): where the camera's ray through it meets the "
        "design for missing material, at the part's depth for extra material (the design is not there)."
    )
    confirmed: bool | None = Field(
        default=None,
        description=f"Missing material: whether another camera sees a bite or a shading patch within {CONFIRM_MM:g} mm of it; an "
        f"unconfirmed region counts towards missing_material_mm2 only from {SINGLE_CAMERA_MM2:g} mm². None for extra material.",
    )


class SurfaceRegion(BaseModel):
    """A patch of the part whose brightness one camera sees differ from the design's by more than TOLERANCE."""

    model_config = ConfigDict(extra="forbid")

    camera: str = Field(description="Camera that saw it.")
    area_mm2: float = Field(description="Area in mm² at the surface's depth in that camera.")
    contrast: float = Field(description="Largest relative brightness difference inside it (0.3: 30 % off the design).")
    centre_part_mm: list[float] = Field(description="Region centre on the design's surface, design frame (mm).")
    confirmed: bool = Field(
        default=True,
        description="Whether another camera sees a patch, or a bite out of the outline, within 2 mm of it; an "
        "unconfirmed patch is reported only from a contrast of 1.0.",
    )


class CameraMetrics(BaseModel):
    model_config = ConfigDict(extra="forbid")

    camera: str = Field(description="Camera name.")
    silhouette_iou: float = Field(
        description="Intersection over union of the segmented part and the model at the found pose."
    )
    contour_p95_mm: float = Field(description="95th percentile of |outline deviation| in mm.")
    contour_p99_mm: float = Field(description="99th percentile of |outline deviation| in mm.")
    contour_max_mm: float = Field(description="Largest |outline deviation| in mm.")
    missing_mm2: float = Field(
        description="Largest missing-material region this camera saw, mm², confirmed by another camera or not."
    )
    extra_mm2: float = Field(description="Largest extra-material region in mm².")
    visible_fraction: float = Field(description="Fraction of the model's outline inside the image.")
    mm_per_px: float = Field(description="Scale at the part's depth.")


class InspectionMetrics(BaseModel):
    """Overall figures (what profiles judge) and the per-camera detail behind them."""

    model_config = ConfigDict(extra="forbid")

    silhouette_iou_min: float = Field(description="Worst camera's silhouette IoU.")
    silhouette_iou_mean: float = Field(description="Mean silhouette IoU over cameras that see the part.")
    contour_p95_mm: float = Field(description="95th percentile of |outline deviation| over all cameras, mm.")
    contour_p99_mm: float = Field(description="99th percentile of |outline deviation| over all cameras, mm.")
    contour_max_mm: float = Field(description="Largest |outline deviation|, mm.")
    missing_material_mm2: float = Field(
        description="Largest missing-material region, mm²: its pixels reaching at least 0.3 mm past the outline where the "
        f"photo clearly shows tray; a region no second camera confirms counts from {SINGLE_CAMERA_MM2:g} mm²."
    )
    missing_material_depth_mm: float = Field(
        description="Depth of the deepest missing-material region (its 6th deepest pixel), confirmed or not, mm."
    )
    extra_material_mm2: float = Field(
        description="Largest extra-material region, mm²: its pixels reaching at least 0.3 mm past the outline where the photo clearly shows part, consistent across cameras."
    )
    extra_material_depth_mm: float = Field(description="Depth of the deepest extra-material region, mm.")
    surface_defect_mm2: float = Field(
        default=0.0,
        description="Largest patch of the part that a camera sees brighter or darker than the design predicts by more than 15 % and another camera confirms within 2 mm (or, unconfirmed, by 100 % or more), mm² (inspection.shading).",
    )
    surface_defect_contrast: float = Field(
        default=0.0, description="Largest relative brightness difference from the design in such a patch (0.3: 30 %)."
    )
    missing_material_contrast: float = Field(
        default=0.0,
        description="Largest relative brightness difference from the design of a surface patch that another camera's "
        f"missing-material region lies within {CONFIRM_MM:g} mm of, 0 for none: a chip seen face-on by one camera and "
        "edge-on by another.",
    )
    scale_x_pct: float = Field(description="Scale deviation along the design's x axis, %.")
    scale_y_pct: float = Field(description="Scale deviation along the design's y axis, %.")
    scale_z_pct: float = Field(description="Scale deviation along the design's z axis, %.")
    scale_max_abs_pct: float = Field(description="Largest |scale deviation| of the three axes, %.")
    tilt_deg: float = Field(description="Angle between the found pose and the nearest stable resting pose, degrees.")
    warp_deg: float = Field(
        default=0.0, description="Bend along the long axis, angle between the end tangents, degrees (inspection.warp)."
    )
    lift_mm: float = Field(description="Height of the part's lowest point above the tray (negative: below), mm.")
    alignment_residual_mm: float = Field(description="Median |outline residual| of the fit, mm.")
    alignment_inlier_fraction: float = Field(
        description="Fraction of outline points within 2 px of the photographed outline."
    )
    visible_fraction: float = Field(description="Smallest fraction of the model's outline inside a camera's image.")
    cameras_seeing_part: int = Field(description="Cameras in which a part was segmented.")
    shading_spread: float = Field(
        default=0.0,
        ge=0.0,
        description="How well the station's learned light explains this part's surface: robust spread (1.4826 × MAD) "
        "of photo ÷ prediction − 1 over the compared cells; intact parts under the commissioned light read about the "
        "spread learned at commissioning, a part lit otherwise (a lamp failed) far more.",
    )
    abstained: dict[str, str] = Field(
        default_factory=dict,
        description="Metrics whose evidence was too weak on this scan to judge, each with why: their criteria abstain, "
        "and the scan goes to review with insufficient_evidence instead of to a fail.",
    )
    missing_regions: list[Region] = Field(default_factory=list, description="Missing-material regions, deepest first.")
    extra_regions: list[Region] = Field(default_factory=list, description="Extra-material regions, deepest first.")
    surface_regions: list[SurfaceRegion] = Field(
        default_factory=list, description="Surface patches whose shading departs from the design's, strongest first."
    )
    per_camera: list[CameraMetrics] = Field(default_factory=list, description="The same figures per camera.")
