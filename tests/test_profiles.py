"""Inspection profiles: validated on load with errors that say what to fix; verdicts with review bands."""

from __future__ import annotations

from pathlib import Path

import pytest

from amflow_edge.inspection.models import InspectionMetrics
from amflow_edge.inspection.profiles import Criterion, ProfileError, load_profile
from amflow_edge.inspection.report import judge


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_the_shipped_profiles_load() -> None:
    for name in ("default", "strict"):
        profile = load_profile(name)
        assert profile.name == name and profile.criteria
        assert {c.reason for c in profile.criteria} >= {
            "missing_material",
            "extra_material",
            "wrong_part",
            "misalignment",
        }


def test_an_unknown_profile_lists_the_known_ones() -> None:
    with pytest.raises(ProfileError, match="no such inspection profile; use one of default, strict"):
        load_profile("lenient")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            'name = "x"\n[[criterion]]\nmetric = "missing_mm"\ncomparator = "<="\nthreshold = 1\nreason = "missing_material"',
            r"\[\[criterion\]\] #1.metric: unknown metric 'missing_mm'; use one of .*missing_material_mm2",
        ),
        (
            'name = "x"\n[[criterion]]\nmetric = "tilt_deg"\ncomparator = "<"\nthreshold = 1\nreason = "misalignment"',
            r"\[\[criterion\]\] #1.comparator: Input should be '<=' or '>='",
        ),
        (
            'name = "x"\n[[criterion]]\nmetric = "tilt_deg"\ncomparator = "<="\nthreshold = 1\nreason = "tilted"',
            r"#1.reason: Input should be 'missing_material'",
        ),
        (
            'name = "x"\n[[criterion]]\nmetric = "tilt_deg"\ncomparator = "<="\nthreshold = 1\nreason = "warp"\ncolour = 1',
            r"#1.colour: Extra inputs are not permitted",
        ),
        ('name = "x"', r"criteria: Field required"),
        ('name = "x"\n[[criterion]\n', r"not valid TOML .*fix the syntax"),
    ],
)
def test_broken_profiles_say_what_is_wrong(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        load_profile(_write(tmp_path, text))


def test_verdicts_with_a_review_band() -> None:
    at_most = Criterion(
        metric="missing_material_mm2", comparator="<=", threshold=2.0, review_band=0.5, reason="missing_material"
    )
    assert [at_most.judge(v) for v in (1.0, 1.7, 2.0, 2.1, float("nan"))] == [
        "pass",
        "review",
        "review",
        "fail",
        "fail",
    ]
    at_least = Criterion(
        metric="silhouette_iou_min", comparator=">=", threshold=0.8, review_band=0.05, reason="wrong_part"
    )
    assert [at_least.judge(v) for v in (0.9, 0.82, 0.79)] == ["pass", "review", "fail"]


def _metrics(**values: float) -> InspectionMetrics:
    required = {
        name: 1.0
        for name, field in InspectionMetrics.model_fields.items()
        if field.is_required() and name != "cameras_seeing_part"
    }
    return InspectionMetrics(**{**required, "cameras_seeing_part": 5, **values})


def test_a_review_always_says_why() -> None:
    profile = load_profile("default")
    warp = next(c for c in profile.criteria if c.metric == "warp_deg")
    in_band = warp.threshold - warp.review_band / 2
    assert warp.judge(in_band) == "review"
    passing = {
        c.metric: (c.threshold - 2 * c.review_band - 1 if c.comparator == "<=" else c.threshold + 2 * c.review_band + 1)
        for c in profile.criteria
    }
    _, machine, review, reasons = judge(profile, _metrics(**{**passing, "warp_deg": in_band}))
    assert (machine, review, reasons) == (True, True, ["warp"])
    _, machine, review, reasons = judge(profile, _metrics(**{**passing, "alignment_inlier_fraction": 0.1}))
    assert (machine, review, reasons) == (True, True, ["misalignment"])
    _, machine, review, reasons = judge(profile, _metrics(**passing))
    assert (machine, review, reasons) == (True, False, [])
