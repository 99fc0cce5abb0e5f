"""qc_pass follows the AM-Vision 3.7 rules in every combination (PAYLOAD.md, 'Final decision')."""

from __future__ import annotations

import itertools

import pytest

from amflow_edge.qc.rules import final_decision, with_machine_verdict, with_operator_decision
from tests.factories import make_record

NOW = "2026-03-11T16:36:57.581719+01:00"
LATER = "2026-03-11T16:40:00.000000+01:00"


@pytest.mark.parametrize(
    ("machine", "review", "operator", "expected"),
    [
        (m, r, o, o if o is not None else (None if r else m))
        for m, r, o in itertools.product([True, False, None], [True, False], [True, False, None])
    ],
)
def test_final_decision_table(machine: bool | None, review: bool, operator: bool | None, expected: bool | None) -> None:
    assert final_decision(machine, review, operator) is expected


def test_machine_pass_fail_and_review() -> None:
    scan = make_record().scan
    passed = with_machine_verdict(scan, NOW, "c4266de0-c541-49d9-807d-9061139a8917", True, False, [])
    assert (passed.qc_machine, passed.qc_needs_review, passed.qc_pass, passed.modified) == (True, False, True, NOW)
    failed = with_machine_verdict(scan, NOW, None, False, False, ["missing_material"])
    assert (failed.qc_pass, failed.qc_reasons) == (False, ["missing_material"])
    review = with_machine_verdict(scan, NOW, None, True, True, [])
    assert review.qc_needs_review and review.qc_pass is None


def test_operator_decides_and_clears_review() -> None:
    scan = with_machine_verdict(make_record().scan, NOW, None, False, True, ["warp"])
    approved = with_operator_decision(scan, LATER, True, comment="warp within tolerance for this customer")
    assert (approved.qc_operator, approved.qc_needs_review, approved.qc_pass) == (True, False, True)
    assert approved.qc_machine is False and approved.qc_comment == "warp within tolerance for this customer"
    rejected = with_operator_decision(scan, LATER, False, reasons=["warp"])
    assert (rejected.qc_pass, rejected.qc_reasons) == (False, ["warp"])


@pytest.mark.parametrize("operator", [True, False])
@pytest.mark.parametrize(("machine", "review"), [(True, False), (False, False), (True, True), (False, True)])
def test_reevaluation_never_overrides_the_operator(operator: bool, machine: bool, review: bool) -> None:
    decided = with_operator_decision(
        with_machine_verdict(make_record().scan, NOW, None, not machine, False, []), NOW, operator
    )
    again = with_machine_verdict(decided, LATER, "c4266de0-c541-49d9-807d-9061139a8917", machine, review, ["x"])
    assert again.qc_machine is machine
    assert again.qc_operator is operator and again.qc_pass is operator and again.qc_needs_review is False
