"""A scan as the operator's screen shows it: the payload plus what the station's record knows beside it."""

from __future__ import annotations

from pathlib import Path

import structlog
from pydantic import ValidationError

from amflow_edge.inspection.report import REPORT_NAME, InspectionReport
from amflow_edge.station.session import ScanningSession, SessionPart
from amflow_edge.storage.record import ScanRecord
from amflow_edge.web.models import (
    CameraView,
    CandidateView,
    CriterionView,
    IdentificationView,
    InspectionSummary,
    ScanDetail,
    ScanStationView,
)

log = structlog.get_logger(__name__)


def inspection_summary(record: ScanRecord, directory: Path) -> InspectionSummary | None:
    """The report the scan's `inspectionreport` names; None before the inspection, or when the file on disk is
    another report (a re-evaluation under way) or unreadable (said in the log)."""
    if record.scan.inspectionreport is None:
        return None
    path = directory / REPORT_NAME
    try:
        report = InspectionReport.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as exc:
        log.warning("inspection report unreadable for the screen", scan=record.scan.uuid, error=str(exc)[:300])
        return None
    if str(report.id) != record.scan.inspectionreport:
        return None
    return InspectionSummary(
        report=str(report.id),
        design_material=report.design_material,
        profile=report.profile,
        created=report.created.isoformat(),
        qc_machine=report.qc_machine,
        qc_needs_review=report.qc_needs_review,
        qc_reasons=list(report.qc_reasons),
        criteria=[
            CriterionView(
                metric=c.metric,
                verdict=c.verdict,
                value=c.value,
                threshold=c.threshold,
                comparator=c.comparator,
                reason=c.reason,
            )
            for c in report.criteria
        ],
        notes=list(report.notes),
    )


def _candidate(design_material: str, score: float, part: SessionPart | None) -> CandidateView:
    return CandidateView(
        design_material=design_material,
        score=score,
        part_id=part.part_id if part is not None else None,
        part_title=part.part_title if part is not None else None,
    )


def scan_detail(record: ScanRecord, session: ScanningSession, directory: Path) -> ScanDetail:
    station = record.station
    parts: dict[str, SessionPart] = {}
    for part in session.parts:
        parts.setdefault(part.design_material, part)
    identification = None
    if station.identification is not None:
        found = station.identification
        identification = IdentificationView(
            outcome=found.outcome,
            design_material=found.design_material,
            reason=found.reason,
            at=found.at,
            candidates=[_candidate(c.design_material, c.score, parts.get(c.design_material)) for c in found.candidates],
        )
    inspection = inspection_summary(record, directory)
    cameras = [
        CameraView(
            camera=name,
            url=f"/api/scan/{record.scan.uuid}/full_image/{index}/",
            serial=shot.serial,
            timestamp=shot.timestamp,
            exposure_us=shot.exposure_us,
            gain_db=shot.gain_db,
            width=shot.width,
            height=shot.height,
        )
        for index, (name, shot) in enumerate(sorted(station.cameras.items()), start=1)
    ]
    return ScanDetail(
        scan=record.scan,
        station=ScanStationView(
            captured_at=record.scan.created,
            triggered_at=station.triggered_at,
            trigger_source=station.trigger_source,
            identification=identification,
            inspection=inspection,
            overlays=f"/api/scan/{record.scan.uuid}/overlays.png" if inspection is not None else None,
            cameras=cameras,
            decisions=station.decisions,
            is_backed_up=station.is_backed_up,
            images_deleted=station.deleted_at is not None,
        ),
    )
