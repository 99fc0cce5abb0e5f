"""Small builders for records and images the tests store."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import numpy as np

from amflow_edge.messaging.payload import new_scan
from amflow_edge.storage.record import CameraShotRecord, ScanRecord, StationMetadata

CAMERAS = ("cam01", "cam02", "cam03", "cam04", "cam05")


def make_record(scan_uuid: str | None = None) -> ScanRecord:
    scan_uuid = scan_uuid or str(uuid.uuid1())
    now = datetime.now(UTC)
    cameras = {
        name: CameraShotRecord(
            file=f"scan_{name}.png",
            serial=f"4001230{i}",
            timestamp=now.isoformat(),
            exposure_us=8000.0,
            gain_db=0.0,
            width=64,
            height=48,
            calibration=f"{name}.yaml",
        )
        for i, name in enumerate(CAMERAS, start=1)
    }
    return ScanRecord(
        scan=new_scan(scan_uuid, now, str(uuid.uuid4()), len(CAMERAS)),
        station=StationMetadata(
            station_id="test",
            software_version="0",
            driver="test",
            trigger_source="test",
            triggered_at=now.isoformat(),
            cameras=cameras,
        ),
    )


def make_images(height: int = 48, width: int = 64, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {name: rng.integers(0, 256, (height, width), dtype=np.uint8) for name in CAMERAS}
