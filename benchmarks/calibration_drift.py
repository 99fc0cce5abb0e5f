"""The drift check's figure: a camera turned so its view moves N px is measured at N px, the others at ~0.

    .venv/bin/python benchmarks/calibration_drift.py [--px 2.0] [--camera cam03]

The demo rig at full resolution renders the empty tray twice (different sensor noise): once as commissioned, once
with one camera turned about its own vertical axis (a knocked bracket) so that its view moves --px pixels at the
image centre. Prints, per camera, the shift the check measures (at the worst image corner), whether it counts as
moved at [calibration] max_drift_px, and the time per camera. Exits 1 if the turned camera is not caught or an
untouched one is.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amflow_edge.config.station import CalibrationSettings  # noqa: E402
from amflow_edge.drivers.simulator.knocked_camera import knocked  # noqa: E402
from amflow_edge.drivers.simulator.render import Renderer  # noqa: E402
from amflow_edge.inspection.calibration.drift import measure_drift  # noqa: E402
from amflow_edge.inspection.geometry.camera import load_rig  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--px", type=float, default=2.0, help="how far the turned camera's view moves (pixels)")
    parser.add_argument("--camera", default="cam03", help="the camera that is turned")
    args = parser.parse_args()
    threshold = CalibrationSettings().max_drift_px
    rig = load_rig(REPO / "config" / "calibration" / "demo")
    before = Renderer(rig).render(None, None, 11)
    after = Renderer([knocked(c, args.px) if c.name == args.camera else c for c in rig]).render(None, None, 12)
    print(f"{args.camera} turned by {args.px} px at the image centre; full resolution; max_drift_px {threshold}")
    wrong = 0
    for calib in rig:
        start = time.perf_counter()
        drift = measure_drift(before[calib.name], after[calib.name])
        took_ms = (time.perf_counter() - start) * 1000
        moved = drift.shift_px > threshold
        wrong += moved != (calib.name == args.camera)
        print(
            f"{calib.name}: {drift.shift_px:.3f} px (rotation {drift.rotation_deg:+.4f}°, correlation "
            f"{drift.correlation:.3f}) {'MOVED' if moved else 'in place'}, {took_ms:.0f} ms"
        )
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
