"""Write the demo rig's calibrations (config/calibration/demo/cam01.yaml … cam05.yaml).

The demo rig is what the mock driver renders from, so it should look like a real station:
a top camera and four 45° obliques, real lens focal lengths, small barrel distortion, and the
few-pixel / sub-degree mounting imperfections no real rig is free of.

    python scripts/make_demo_rig.py [output_dir]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from amflow_edge.inspection.geometry.camera import (
    BASLER_ACA2440_PIXEL_PITCH_MM,
    CameraCalibration,
    CameraName,
    look_at,
    save_calibration,
)

TOP_HEIGHT_MM = 600.0
TOP_LENS_MM = 12.0
OBLIQUE_DISTANCE_MM = 760.0
OBLIQUE_LENS_MM = 16.0
TRAY_CORNERS = np.array([[x, y, 0.0] for x in (-150.0, 150.0) for y in (-120.0, 120.0)])

# name, serial, azimuth°, elevation°, roll°, focal-length error (fraction), principal offset px, (k1, k2, p1, p2, k3)
OBLIQUES: list[tuple[CameraName, str, float, float, float, float, tuple[float, float], tuple[float, ...]]] = [
    ("cam02", "40012302", 0.0, 45.0, 0.8, 0.004, (6.0, -4.5), (-0.071, 0.052, 0.00021, -0.00014, 0.0)),
    ("cam03", "40012303", 90.0, 44.6, -1.1, -0.003, (-8.2, 3.1), (-0.083, 0.071, -0.00009, 0.00025, 0.0)),
    ("cam04", "40012304", 180.0, 45.3, 0.5, 0.002, (3.7, 7.9), (-0.066, 0.041, 0.00017, 0.00011, 0.0)),
    ("cam05", "40012305", 270.0, 45.1, -0.7, -0.005, (-5.1, -6.4), (-0.078, 0.060, -0.00023, -0.00006, 0.0)),
]


def demo_rig() -> list[CameraCalibration]:
    top = look_at(
        "cam01",
        "40012301",
        eye=(0.0, 0.0, TOP_HEIGHT_MM),
        target=(0.0, 0.0, 0.0),
        focal_length_mm=TOP_LENS_MM * 1.003,
        up=(0.0, 1.0, 0.0),
        roll_deg=0.4,
        principal_offset_px=(4.2, -6.8),
        dist_coeffs=(-0.092, 0.083, 0.00012, -0.00018, 0.0),
    )
    rig = [top]
    for name, serial, azimuth, elevation, roll, focal_error, offset, dist in OBLIQUES:
        az, el = math.radians(azimuth), math.radians(elevation)
        eye = OBLIQUE_DISTANCE_MM * np.array([math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)])
        rig.append(
            look_at(
                name,
                serial,
                eye=eye,
                target=(0.0, 0.0, 0.0),
                focal_length_mm=OBLIQUE_LENS_MM * (1 + focal_error),
                roll_deg=roll,
                principal_offset_px=offset,
                dist_coeffs=dist,
            )
        )
    return rig


def describe(calib: CameraCalibration) -> str:
    distance = float(np.linalg.norm(calib.centre))
    mm_per_px = distance / calib.K[0, 0]
    pixels = calib.project(TRAY_CORNERS)
    margin = min(
        pixels[:, 0].min(),
        pixels[:, 1].min(),
        calib.image_width - 1 - pixels[:, 0].max(),
        calib.image_height - 1 - pixels[:, 1].max(),
    )
    lens = calib.K[0, 0] * BASLER_ACA2440_PIXEL_PITCH_MM
    eye = ", ".join(f"{v:.0f}" for v in calib.centre)
    return (
        f"{calib.name}: eye ({eye}) mm, {distance:.0f} mm to tray centre, f = {lens:.2f} mm, "
        f"{mm_per_px:.3f} mm/px at the tray centre, tray corners ≥ {margin:.0f} px inside the image"
    )


def main(argv: list[str]) -> int:
    out = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parents[1] / "config" / "calibration" / "demo"
    out.mkdir(parents=True, exist_ok=True)
    for calib in demo_rig():
        if not calib.visible(TRAY_CORNERS, margin_px=20).all():
            raise SystemExit(f"{calib.name} does not see the whole tray; adjust the demo rig geometry")
        save_calibration(calib, out / f"{calib.name}.yaml")
        print(describe(calib))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
