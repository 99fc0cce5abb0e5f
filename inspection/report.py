"""The inspection report: what was found, how it was judged, and why; the one artefact an operator reads.

It is a pydantic model so the daemon can ship it across a process boundary and publish it as
JSON without knowing its insides.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.common.durable import replace_durably
from amflow_edge.inspection.models import InspectionMetrics
from amflow_edge.inspection.profiles import (
    Criterion,
    InspectionProfile,
    Reason,
    Verdict,
)

REPORT_NAME = "inspection_report.json"


class CriterionResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description="Metric judged.")
    comparator: str = Field(description="'<=' or '>='.")
    threshold: float = Field(description="Limit of the profile.")
    review_band: float = Field(description="Review band of the profile.")
    value: float | None = Field(description="Measured value; null when it could not be measured.")
    verdict: Verdict = Field(
        description="pass, review (passes but close to the limit), fail, or abstain (the evidence was too weak on "
        "this scan to judge: the scan goes to review with insufficient_evidence)."
    )
    reason: Reason = Field(description="Reason reported when it fails.")


class InspectionReport(BaseModel):
    """One inspection of one scan against one design with one profile."""

    model_config = ConfigDict(extra="forbid")

    id: uuid.UUID = Field(default_factory=uuid.uuid4, description="This report's own id (UUID4).")
    scan: uuid.UUID | None = Field(default=None, description="The scan inspected, when known.")
    design_material: str = Field(description="Design the scan was compared against.")
    profile: str = Field(description="Inspection profile name.")
    created: datetime = Field(default_factory=lambda: datetime.now(UTC), description="When the inspection ran (UTC).")
    pose: list[list[float]] | None = Field(
        description="Part→tray 4×4 pose (mm) found by the fit; null when no part could be aligned."
    )
    rest_pose_index: int | None = Field(default=None, description="Stable resting pose the search started from.")
    metrics: InspectionMetrics | None = Field(description="Measurements; null when no part could be aligned.")
    criteria: list[CriterionResult] = Field(description="Every criterion of the profile with its value and verdict.")
    qc_machine: bool = Field(
        description="True when no criterion fails (criteria that abstained for want of evidence do not fail)."
    )
    qc_needs_review: bool = Field(
        description="True when a value is in a review band, the alignment is uncertain, no part could be aligned, "
        "or (with no failure) a criterion abstained."
    )
    qc_reasons: list[Reason] = Field(
        description="Reasons of the failed criteria, each once, in profile order; when none failed but a review is "
        "needed, the reasons of the criteria that asked for it (misalignment for an uncertain pose)."
    )
    notes: list[str] = Field(
        default_factory=list, description="Plain-language remarks (why evidence is insufficient, ...)."
    )
    timings_s: dict[str, float] = Field(default_factory=dict, description="Seconds per stage.")
    overlays: list[str] = Field(default_factory=list, description="Overlay image files written next to the report.")


def judge(
    profile: InspectionProfile,
    metrics: InspectionMetrics | None,
    intact: Mapping[str, tuple[float, float]] | None = None,
) -> tuple[list[CriterionResult], bool, bool, list[Reason]]:
    """Each criterion's verdict, and the scan's. `intact` (per metric, the (min, max) intact parts of this station
    read at commissioning) makes a criterion abstain rather than fail or send to review where intact parts here
    already read beyond its limit: at this station it cannot tell a defect from an intact part."""
    results: list[CriterionResult] = []
    for criterion in profile.criteria:
        value = None if metrics is None else float(getattr(metrics, criterion.metric))
        verdict: Verdict = "fail" if value is None else criterion.judge(value)
        if (
            metrics is not None
            and criterion.metric in metrics.abstained
            or value is not None
            and verdict != "pass"
            and _crossed_by_intact(criterion, intact)
        ):
            verdict = "abstain"
        results.append(_result(criterion, value, verdict))
    reasons: list[Reason] = []
    for result in results if metrics is not None else []:
        if result.verdict == "fail" and result.reason not in reasons:
            reasons.append(result.reason)
    if metrics is None and "insufficient_evidence" not in reasons:
        reasons.insert(0, "insufficient_evidence")
    machine = not reasons
    uncertain_pose = metrics is not None and metrics.alignment_inlier_fraction < profile.min_alignment_inlier_fraction
    abstained = any(r.verdict == "abstain" for r in results) and not reasons
    review = any(r.verdict == "review" for r in results) or uncertain_pose or abstained or metrics is None
    if review and not reasons:  # a failed part's reasons stay its failures: MES sorting reads them as such
        reasons = _review_reasons(results, uncertain_pose)
    return results, machine, review, reasons


def _crossed_by_intact(criterion: Criterion, intact: Mapping[str, tuple[float, float]] | None) -> bool:
    reading = None if intact is None else intact.get(criterion.metric)
    if reading is None:
        return False
    low, high = reading
    return high > criterion.threshold if criterion.comparator == "<=" else low < criterion.threshold


def _review_reasons(results: list[CriterionResult], uncertain_pose: bool) -> list[Reason]:
    """An operator asked to review a part the machine passed is told why: the reasons of the criteria whose
    values lie in their review band, and misalignment when the pose itself is uncertain."""
    reasons: list[Reason] = []
    for result in results:
        reason: Reason = "insufficient_evidence" if result.verdict == "abstain" else result.reason
        if result.verdict in ("review", "abstain") and reason not in reasons:
            reasons.append(reason)
    if uncertain_pose and "misalignment" not in reasons:
        reasons.append("misalignment")
    return reasons


def _result(criterion: Criterion, value: float | None, verdict: Verdict) -> CriterionResult:
    return CriterionResult(
        metric=criterion.metric,
        comparator=criterion.comparator,
        threshold=criterion.threshold,
        review_band=criterion.review_band,
        value=value,
        verdict=verdict,
        reason=criterion.reason,
    )


def write_report(report: InspectionReport, directory: Path | str) -> Path:
    """Write atomically, so a reader (the daemon, an operator's viewer) never sees half a report."""
    path = Path(directory) / REPORT_NAME
    replace_durably(path, (json.dumps(report.model_dump(mode="json"), indent=2) + "\n").encode(), shared=True)
    return path
