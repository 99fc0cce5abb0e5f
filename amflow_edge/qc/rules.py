"""The AM-Vision 3.7 quality-control rules, in one place for machine verdicts, operators and re-evaluations.

PAYLOAD.md, "Final decision": qc_pass = qc_operator when the operator has decided;
otherwise null while qc_needs_review; otherwise qc_machine. An operator decision clears
qc_needs_review; a re-evaluation changes qc_machine but never overrides an operator.
"""

from __future__ import annotations

from amflow_edge.messaging.payload import Scan


def final_decision(qc_machine: bool | None, qc_needs_review: bool, qc_operator: bool | None) -> bool | None:
    if qc_operator is not None:
        return qc_operator
    if qc_needs_review:
        return None
    return qc_machine


def with_machine_verdict(
    scan: Scan,
    modified: str,
    inspectionreport: str | None,
    qc_machine: bool | None,
    qc_needs_review: bool,
    qc_reasons: list[str],
) -> Scan:
    """A (re-)inspection result; an operator's earlier decision stands and keeps review cleared."""
    needs_review = False if scan.qc_operator is not None else qc_needs_review
    reasons = scan.qc_reasons if scan.qc_operator is not None else qc_reasons
    return scan.model_copy(
        update={
            "modified": modified,
            "inspectionreport": inspectionreport,
            "qc_machine": qc_machine,
            "qc_needs_review": needs_review,
            "qc_reasons": list(reasons),
            "qc_pass": final_decision(qc_machine, needs_review, scan.qc_operator),
        }
    )


def with_operator_decision(
    scan: Scan, modified: str, passed: bool, comment: str | None = None, reasons: list[str] | None = None
) -> Scan:
    return scan.model_copy(
        update={
            "modified": modified,
            "qc_operator": passed,
            "qc_needs_review": False,
            "qc_pass": passed,
            "qc_comment": comment if comment is not None else scan.qc_comment,
            "qc_reasons": list(reasons) if reasons is not None else scan.qc_reasons,
        }
    )
