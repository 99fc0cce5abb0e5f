"""Where the files the project ships live: inspection profiles, the reason catalogue, the demo rig and designs.

One place for it, so that moving these files into the package (and finding them with
importlib.resources) is a change here and nowhere else.
"""

from __future__ import annotations

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parents[2] / "config"
DEMO_CALIBRATION = CONFIG_DIR / "calibration" / "demo"
DEMO_DESIGNS = CONFIG_DIR / "designs"
INSPECTION_PROFILES = CONFIG_DIR / "inspection_profiles"
QC_REASONS = CONFIG_DIR / "qc_reasons.toml"
