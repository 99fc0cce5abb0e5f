"""Where the files the project ships live: inspection profiles, the reason catalogue, the demo rig and designs,
the mock's station looks and part materials.

They are the repository's config/ folder, installed inside the package as amflow_edge/files (a link in the
checkout), and found through importlib.resources, so an installed station finds them wherever pip put it.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

CONFIG_DIR = Path(str(resources.files("amflow_edge").joinpath("files")))
DEMO_CALIBRATION = CONFIG_DIR / "calibration" / "demo"
DEMO_DESIGNS = CONFIG_DIR / "designs"
INSPECTION_PROFILES = CONFIG_DIR / "inspection_profiles"
QC_REASONS = CONFIG_DIR / "qc_reasons.toml"
LOOKS = CONFIG_DIR / "looks"
MATERIALS = CONFIG_DIR / "materials.toml"
