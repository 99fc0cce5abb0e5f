"""Inspection profiles: which metrics decide pass or fail, at which thresholds, with which reason.

A profile is data, not code, so a plant can tighten a line's acceptance without a release.
Every criterion names a field of `InspectionMetrics`, so a typo is caught when the profile is
loaded, not when the first part is judged.
"""

from __future__ import annotations

import math
import os
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from amflow_edge.common.shipped import INSPECTION_PROFILES
from amflow_edge.inspection.models import InspectionMetrics

PROFILE_DIR = INSPECTION_PROFILES

Reason = Literal[
    "missing_material",
    "extra_material",
    "surface_defect",
    "dimensional_deviation",
    "warp",
    "misalignment",
    "wrong_part",
    "insufficient_evidence",
]
Verdict = Literal["pass", "review", "fail", "abstain"]
"""abstain: the evidence for this criterion was too weak on this scan to judge it (InspectionMetrics.abstained); the
scan goes to review with insufficient_evidence, never to a fail."""

NUMERIC_METRICS = sorted(
    name for name, info in InspectionMetrics.model_fields.items() if info.annotation in (float, int)
)


class ProfileError(ValueError):
    """A profile that cannot be used; the message names the file, the entry and the fix."""


class Criterion(BaseModel):
    """One acceptance rule: `metric comparator threshold`, with a review band on the passing side."""

    model_config = ConfigDict(extra="forbid")

    metric: str = Field(description=f"Name of an InspectionMetrics field: {', '.join(NUMERIC_METRICS)}.")
    comparator: Literal["<=", ">="] = Field(
        description="'<=': the value must not exceed the threshold; '>=': must reach it."
    )
    threshold: float = Field(description="Limit in the metric's unit.")
    review_band: float = Field(
        default=0.0,
        ge=0.0,
        description="Passing values within this distance of the threshold need an operator's review.",
    )
    reason: Reason = Field(description="QualityControlReason reported when the criterion fails.")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, value: str) -> str:
        if value not in NUMERIC_METRICS:
            raise ValueError(f"unknown metric {value!r}; use one of {', '.join(NUMERIC_METRICS)}")
        return value

    @field_validator("threshold")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("threshold must be a finite number")
        return value

    def judge(self, value: float) -> Verdict:
        if not math.isfinite(value):
            return "fail"
        margin = self.threshold - value if self.comparator == "<=" else value - self.threshold
        if margin < 0:
            return "fail"
        return "review" if margin < self.review_band else "pass"


class InspectionProfile(BaseModel):
    """A named list of criteria; a part passes when all of them pass."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, description="Profile name, reported with every inspection.")
    description: str = Field(default="", description="What the profile is for.")
    min_alignment_inlier_fraction: float = Field(
        default=0.6,
        ge=0.0,
        le=1.0,
        description="Below this fraction of outline inliers the pose itself is uncertain: needs review.",
    )
    criteria: list[Criterion] = Field(min_length=1, description="The acceptance rules.")


def profile_path(name_or_path: str | os.PathLike[str]) -> Path:
    text = str(name_or_path)
    if text.endswith(".toml") or os.sep in text:
        return Path(text)
    return PROFILE_DIR / f"{text}.toml"


def load_profile(name_or_path: str | os.PathLike[str]) -> InspectionProfile:
    """A profile by name (config/inspection_profiles/<name>.toml) or by path; every problem is listed."""
    path = profile_path(name_or_path)
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.toml"))) or "(none)"
        raise ProfileError(f"{path}: no such inspection profile; use one of {known} or give the path of a .toml file")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ProfileError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    if "criterion" in data:
        data["criteria"] = data.pop("criterion")
    try:
        return InspectionProfile.model_validate(data)
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            loc = error["loc"]
            where = ".".join(str(p) for p in loc)
            if loc and loc[0] == "criteria" and len(loc) > 1:
                where = f"[[criterion]] #{int(loc[1]) + 1}" + (
                    "." + ".".join(str(p) for p in loc[2:]) if len(loc) > 2 else ""
                )
            problems.append(f"{where or '(file)'}: {error['msg'].removeprefix('Value error, ')}")
        raise ProfileError(f"{path}: {len(problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in problems)) from None
