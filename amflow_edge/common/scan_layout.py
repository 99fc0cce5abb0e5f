"""The names of a data root's files: every reader and writer of scans, references and records uses these.

Its own light module so that modules which may not import the store (it loads OpenCV; drivers must not
import storage at all) still name the same files, instead of keeping copies that could drift apart.
"""

from __future__ import annotations

SCANS_DIR = "scans"
"""<data_root>/scans/<uuid>/: one directory per scan."""
REFERENCES_DIR = "references"
"""<data_root>/references/<scan_session>/: the session's empty-tray images."""
INCOMING_DIR = ".incoming"
"""Below the scans directory: where a scan is written before it is renamed into place."""
RECORD_FILE = "scan.json"
CONTACT_SHEET = "inspection_overlays.png"
"""The inspection's five overlays on one sheet, beside the scan's images."""


def scan_image(camera: str) -> str:
    return f"scan_{camera}.png"


def reference_image(camera: str) -> str:
    return f"empty_{camera}.png"
