"""Assigning scans to a batch's parts: copies counted from the stored scans, what each change does to the payload,
what is refused (and that a refusal changes nothing), restarts, concurrency, and the operator's button.

Real database and events (no broker needed: events wait in the outbox, whose rows are what would be published).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from amflow_edge.config.loading import load_config
from amflow_edge.config.station import StationConfig
from amflow_edge.messaging.command_models import BatchPart
from amflow_edge.messaging.events import Events
from amflow_edge.messaging.payload import Batch, Output
from amflow_edge.panel.base import ButtonPress
from amflow_edge.panel.operator import OperatorPanel
from amflow_edge.qc.decisions import Decisions
from amflow_edge.qc.reasons import load_reasons
from amflow_edge.qc.rules import with_machine_verdict
from amflow_edge.station.assignments import AssignmentError, Assignments
from amflow_edge.station.session import SessionKeeper, SessionPart
from amflow_edge.storage.db import StationDb
from amflow_edge.storage.record import CandidateRecord, IdentificationRecord, ScanRecord
from tests.factories import make_record
from tests.station_files import write_station
from tests.test_operator_panel import PRESSED_AT, RecordingLamps

DESIGN_A = "a" * 40 + "_SLS_PA12_GREY"
DESIGN_B = "b" * 40 + "_SLS_PAGF_BLACK"
DESIGN_ONLY = "c" * 40 + "_MJF_PA12_GREY"
ASSIGNMENT_KEYS = ["assignment", "part_id", "part_title", "copies", "last_added_copies", "manual"]
INSPECTED = ("inspectionreport", "qc_machine", "qc_needs_review", "qc_reasons", "qc_pass")
REPORT = "c4266de0-c541-49d9-807d-9061139a8917"

PARTS = [
    BatchPart(part_id="P1", part_title="bracket", design_material=DESIGN_A, copies=2, output=Output(id=1)),
    BatchPart(part_id="P2", part_title="bracket, spare", design_material=DESIGN_A, copies=1, output=Output(id=2)),
    BatchPart(part_id="P3", part_title="clip", design_material=DESIGN_B, copies=1, output=None),
]


@dataclass
class Rig:
    cfg: StationConfig
    db: StationDb
    events: Events
    sessions: SessionKeeper
    assignments: Assignments
    inspected: list[str] = field(default_factory=list)

    def part(self, part_id: str) -> SessionPart:
        return next(p for p in self.sessions.current.parts if p.part_id == part_id)

    def stored(self, session: str | None = None) -> ScanRecord:
        record = make_record()
        scan = record.scan.model_copy(
            update={
                "scan_session": session or self.sessions.current.scan_session,
                "batch": self.sessions.current.batch,
                "output": self.sessions.current.output,
            }
        )
        record = record.model_copy(update={"scan": scan})
        self.events.scan_stored(record)
        return record

    def get(self, scan_uuid: str) -> ScanRecord:
        record = self.events.record(scan_uuid)
        assert record is not None
        return record

    def outbox(self, scan_uuid: str) -> list[tuple[str, dict[str, Any]]]:
        rows = self.db.connection().execute(
            "SELECT event, payload FROM outbox WHERE scan_uuid = ? ORDER BY seq", (scan_uuid,)
        )
        return [(event, json.loads(payload)) for event, payload in rows]

    def row(self, scan_uuid: str) -> tuple[Any, ...]:
        rows = self.db.connection().execute("SELECT * FROM scans WHERE uuid = ?", (scan_uuid,)).fetchall()
        outbox = self.db.connection().execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        rejections = self.db.connection().execute("SELECT * FROM scan_rejections ORDER BY uuid").fetchall()
        return (rows, outbox, rejections)

    def inspected_as(self, record: ScanRecord, design: str) -> ScanRecord:
        """As if the station inspected the scan against `design` and found it failed, needing review."""

        def change(r: ScanRecord) -> ScanRecord:
            scan = r.scan.model_copy(update={"design_material": design})
            return r.model_copy(
                update={"scan": with_machine_verdict(scan, scan.modified, REPORT, False, True, ["misalignment"])}
            )

        return self.events.update_scan(record.scan.uuid, "scan.quality_control", change)


def make_rig(cfg: StationConfig, manual_over_count: bool = False) -> Rig:
    db = StationDb(cfg.station.state_dir / "station.db")
    events = Events(cfg, db)
    sessions = SessionKeeper(cfg)
    rig = Rig(cfg, db, events, sessions, None)  # type: ignore[arg-type]
    rig.assignments = Assignments(
        events,
        db,
        sessions,
        cfg.station.timezone,
        design_changed=lambda record: rig.inspected.append(record.scan.uuid),
        manual_over_count=manual_over_count,
    )
    return rig


@pytest.fixture
def cfg(tmp_path: Path) -> StationConfig:
    return load_config(write_station(tmp_path, 1883))


@pytest.fixture
def rig(cfg: StationConfig) -> Iterator[Rig]:
    rig = make_rig(cfg)
    rig.sessions.replace(
        rig.sessions.new(Batch(id="B1", title="batch one"), [], Output(id=9), parts=[*PARTS], mesh_folder=None)
    )
    yield rig
    rig.db.close()


def assignment_of(rig: Rig, part_id: str, manual: bool) -> dict[str, Any]:
    part = rig.part(part_id)
    return {
        "assignment": part.assignment,
        "part_id": part.part_id,
        "part_title": part.part_title,
        "copies": part.copies,
        "last_added_copies": 1,
        "manual": manual,
    }


def published(rig: Rig, scan_uuid: str) -> tuple[str, dict[str, Any]]:
    """The last event queued for the scan; its data must be the scan as stored."""
    event, message = rig.outbox(scan_uuid)[-1]
    assert message["hook"]["event"] == event
    assert message["data"] == rig.get(scan_uuid).scan.model_dump(mode="json")
    if message["data"]["assignment"] is not None:
        assert list(message["data"]["assignment"]) == ASSIGNMENT_KEYS
    return event, message["data"]


# --- the automatic path: copies counted ---


def test_identified_scans_fill_the_parts_of_their_design_in_order_then_ask_for_review(rig: Rig) -> None:
    scans = [rig.stored() for _ in range(5)]
    for record in scans[:4]:
        rig.assignments.identified(record.scan.uuid, DESIGN_A)

    expected = [("P1", 1), ("P1", 1), ("P2", 2)]
    for record, (part_id, output) in zip(scans, expected, strict=False):
        event, data = published(rig, record.scan.uuid)
        assert event == "scan.assign"
        assert data["assignment"] == assignment_of(rig, part_id, manual=False)
        assert data["design_material"] == DESIGN_A and data["output"] == {"id": output}
        assert data["qc_needs_review"] is False

    event, data = published(rig, scans[3].scan.uuid)  # one more than the batch's three copies of DESIGN_A
    assert event == "scan.quality_control"
    assert data["assignment"] is None and data["design_material"] == DESIGN_A
    assert data["qc_needs_review"] is True and data["qc_pass"] is None
    assert data["output"] == {"id": 9}  # unchanged: the session's, as captured
    assert rig.assignments.copies_assigned() == {"P1": 2, "P2": 1, "P3": 0}
    assert rig.assignments.over_counted() == ["P1", "P2"]

    rig.assignments.identified(scans[4].scan.uuid, DESIGN_B)
    event, data = published(rig, scans[4].scan.uuid)
    assert event == "scan.assign" and data["assignment"] == assignment_of(rig, "P3", manual=False)
    assert data["output"] == {"id": 9}  # P3 names no output: the session request's, given at session start
    assert rig.assignments.copies_assigned() == {"P1": 2, "P2": 1, "P3": 1}
    assert rig.inspected == []  # the identifying worker inspects; the callback is for manual changes only


def test_the_over_count_clears_when_the_extra_scan_is_rejected(rig: Rig) -> None:
    scans = [rig.stored() for _ in range(4)]
    for record in scans:
        rig.assignments.identified(record.scan.uuid, DESIGN_A)
    assert rig.assignments.over_counted() == ["P1", "P2"]
    rig.assignments.reject(scans[3].scan.uuid, "a reprint of batch A7; not of this batch")
    assert rig.assignments.over_counted() == []
    rig.assignments.unassign(scans[0].scan.uuid)
    assert rig.assignments.copies_assigned() == {"P1": 1, "P2": 1, "P3": 0}


def test_a_design_of_no_part_is_left_to_the_inspection_verdict(rig: Rig) -> None:
    """No order line to assign: nothing changes and nothing is announced here; the verdict that follows carries the
    design (tests/test_daemon_inspection.py)."""
    record = rig.stored()
    before = rig.row(record.scan.uuid)
    after = rig.assignments.identified(record.scan.uuid, DESIGN_ONLY)
    assert rig.row(record.scan.uuid) == before and after.scan.assignment is None
    assert rig.assignments.over_counted() == []


def test_identification_never_overrides_an_operator(rig: Rig) -> None:
    assigned, rejected, other = rig.stored(), rig.stored(), rig.stored(session="5e7b6f1c-0000-4000-8000-000000000000")
    rig.assignments.assign(assigned.scan.uuid, "P3")
    rig.assignments.reject(rejected.scan.uuid, "foreign object: a glove")
    for record, why in ((assigned, "already assigned"), (rejected, "is rejected"), (other, "not to the active")):
        before = rig.row(record.scan.uuid)
        with pytest.raises(AssignmentError, match=why):
            rig.assignments.identified(record.scan.uuid, DESIGN_A)
        assert rig.row(record.scan.uuid) == before
    with pytest.raises(AssignmentError, match="is not a design_material id"):
        rig.assignments.identified(assigned.scan.uuid, "../etc/passwd")


def test_copies_are_counted_from_the_stored_scans_across_a_restart(cfg: StationConfig, rig: Rig) -> None:
    scans = [rig.stored() for _ in range(3)]
    rig.assignments.identified(scans[0].scan.uuid, DESIGN_A)
    rig.assignments.assign(scans[1].scan.uuid, "P1")
    session = rig.sessions.current
    rig.db.close()

    again = make_rig(cfg)  # a new process: new database connections, the session read back from its file
    try:
        assert again.sessions.current == session
        assert again.assignments.copies_assigned() == {"P1": 2, "P2": 0, "P3": 0}
        again.assignments.identified(scans[2].scan.uuid, DESIGN_A)
        event, data = published(again, scans[2].scan.uuid)
        assert event == "scan.assign" and data["assignment"]["part_id"] == "P2"
        assert data["assignment"]["assignment"] == next(p.assignment for p in session.parts if p.part_id == "P2")
    finally:
        again.db.close()


def test_concurrent_identifications_never_take_the_same_last_copy(rig: Rig) -> None:
    scans = [rig.stored() for _ in range(12)]
    start = threading.Barrier(len(scans))
    errors: list[BaseException] = []

    def identify(record: ScanRecord) -> None:
        try:
            start.wait(10)
            rig.assignments.identified(record.scan.uuid, DESIGN_A)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=identify, args=(record,)) for record in scans]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert errors == []
    assigned = [rig.get(r.scan.uuid).scan.assignment for r in scans]
    assert sorted(a.part_id for a in assigned if a is not None) == ["P1", "P1", "P2"]
    assert sum(rig.get(r.scan.uuid).scan.qc_needs_review for r in scans) == 9
    assert rig.assignments.copies_assigned() == {"P1": 2, "P2": 1, "P3": 0}


# --- manual changes: what each does to the payload ---


def test_the_manual_lifecycle_and_what_each_change_does_to_the_scan(rig: Rig) -> None:
    record = rig.inspected_as(rig.stored(), DESIGN_B)  # inspected against a design the operator then corrects
    assert record.scan.inspectionreport == REPORT and record.scan.qc_needs_review is True

    rig.assignments.assign(record.scan.uuid, "P1")
    event, assigned = published(rig, record.scan.uuid)
    assert event == "scan.assign"
    assert assigned["assignment"] == assignment_of(rig, "P1", manual=True)
    assert (assigned["design_material"], assigned["output"]) == (DESIGN_A, {"id": 1})
    # the inspection was against DESIGN_B: it says nothing about a DESIGN_A part
    assert [assigned[k] for k in INSPECTED] == [None, None, False, [], None]
    assert assigned["modified"] > record.scan.modified
    assert rig.inspected == [record.scan.uuid]  # inspected again, against the part's design

    rig.inspected_as(rig.get(record.scan.uuid), DESIGN_A)
    rig.assignments.reassign(record.scan.uuid, "P2")  # same design: the inspection stands
    event, moved = published(rig, record.scan.uuid)
    assert event == "scan.reassign"
    assert moved["assignment"] == assignment_of(rig, "P2", manual=True) and moved["output"] == {"id": 2}
    assert moved["inspectionreport"] == REPORT and moved["qc_reasons"] == ["misalignment"]
    assert rig.inspected == [record.scan.uuid]

    rig.assignments.reassign(record.scan.uuid, "P3")
    event, moved = published(rig, record.scan.uuid)
    assert event == "scan.reassign" and moved["design_material"] == DESIGN_B
    assert moved["output"] == {"id": 9} and [moved[k] for k in INSPECTED] == [None, None, False, [], None]
    assert rig.inspected == [record.scan.uuid, record.scan.uuid]

    rig.assignments.unassign(record.scan.uuid)
    event, loose = published(rig, record.scan.uuid)
    assert event == "scan.unassign"
    assert (loose["assignment"], loose["design_material"], loose["output"]) == (None, None, {"id": 9})
    assert len(rig.inspected) == 2

    rig.assignments.reject(record.scan.uuid, "part of batch 20260309_01B")
    event, rejected = published(rig, record.scan.uuid)
    assert event == "scan.reject"
    assert (rejected["assignment"], rejected["design_material"], rejected["output"]) == (None, None, None)
    assert rejected["qc_comment"] == "part of batch 20260309_01B"
    assert len(rig.inspected) == 2
    assert rig.assignments.is_rejected(record.scan.uuid)

    rig.assignments.assign(record.scan.uuid, "P3")  # the operator takes the reject back
    event, back = published(rig, record.scan.uuid)
    assert event == "scan.assign" and back["assignment"] == assignment_of(rig, "P3", manual=True)
    assert not rig.assignments.is_rejected(record.scan.uuid)
    assert [e for e, _ in rig.outbox(record.scan.uuid)] == [
        "scan.capture",
        "scan.quality_control",
        "scan.assign",
        "scan.quality_control",
        "scan.reassign",
        "scan.reassign",
        "scan.unassign",
        "scan.reject",
        "scan.assign",
    ]
    for _, message in rig.outbox(record.scan.uuid):
        assert list(message["data"]) == list(rig.get(record.scan.uuid).scan.model_dump())


def test_an_operator_verdict_stands_through_a_change_of_design(rig: Rig) -> None:
    record = rig.inspected_as(rig.stored(), DESIGN_B)
    decisions = Decisions(rig.events, load_reasons(), rig.cfg.station.timezone)
    decisions.decide(record.scan.uuid, True, source="mqtt", device="mqtt", at=PRESSED_AT, comment="looks fine")
    rig.assignments.assign(record.scan.uuid, "P1")
    scan = rig.get(record.scan.uuid).scan
    assert (scan.qc_operator, scan.qc_pass, scan.qc_comment) == (True, True, "looks fine")
    assert (scan.inspectionreport, scan.qc_machine) == (None, None)


REFUSALS: list[tuple[str, str]] = [
    ("assign-unknown-part", "is not a part of the active session"),
    ("assign-assigned", "send reassign"),
    ("assign-full", "all 1 copies of part P3 are assigned"),
    ("reassign-unassigned", "is not assigned; send assign"),
    ("reassign-same", "is already assigned to part P1"),
    ("reassign-full", "all 1 copies of part P3 are assigned"),
    ("unassign-unassigned", "nothing to unassign"),
    ("reject-rejected", "already rejected"),
    ("reassign-rejected", "only a manual assign takes the reject back"),
    ("unassign-rejected", "only a manual assign takes the reject back"),
    ("assign-other-session", "not to the active session"),
    ("reject-other-session", "not to the active session"),
    ("unassign-unknown-scan", "is not known to this station"),
]


@pytest.mark.parametrize(("case", "expected"), REFUSALS, ids=[c for c, _ in REFUSALS])
def test_out_of_place_changes_are_refused_and_change_nothing(rig: Rig, case: str, expected: str) -> None:
    fresh, on_p1, on_p3 = rig.stored(), rig.stored(), rig.stored()
    rig.assignments.assign(on_p1.scan.uuid, "P1")
    rig.assignments.assign(on_p3.scan.uuid, "P3")
    rejected = rig.stored()
    rig.assignments.reject(rejected.scan.uuid, "foreign object")
    other = rig.stored(session="5e7b6f1c-0000-4000-8000-000000000000")
    a = rig.assignments
    attempts = {
        "assign-unknown-part": (fresh, lambda u: a.assign(u, "P404")),
        "assign-assigned": (on_p1, lambda u: a.assign(u, "P2")),
        "assign-full": (fresh, lambda u: a.assign(u, "P3")),
        "reassign-unassigned": (fresh, lambda u: a.reassign(u, "P2")),
        "reassign-same": (on_p1, lambda u: a.reassign(u, "P1")),
        "reassign-full": (on_p1, lambda u: a.reassign(u, "P3")),
        "unassign-unassigned": (fresh, a.unassign),
        "reject-rejected": (rejected, lambda u: a.reject(u, "again")),
        "reassign-rejected": (rejected, lambda u: a.reassign(u, "P1")),
        "unassign-rejected": (rejected, a.unassign),
        "assign-other-session": (other, lambda u: a.assign(u, "P1")),
        "reject-other-session": (other, lambda u: a.reject(u, "x")),
        "unassign-unknown-scan": (None, a.unassign),
    }
    target, attempt = attempts[case]
    scan_uuid = target.scan.uuid if target is not None else "6a1f0d3e-31c6-11f1-9d2c-0242ac120002"
    before = rig.row(scan_uuid), rig.assignments.copies_assigned(), len(rig.inspected)
    with pytest.raises(AssignmentError, match=expected):
        attempt(scan_uuid)
    assert (rig.row(scan_uuid), rig.assignments.copies_assigned(), len(rig.inspected)) == before


def test_manual_over_count_is_allowed_only_when_configured(cfg: StationConfig, rig: Rig) -> None:
    first, second = rig.stored(), rig.stored()
    rig.assignments.assign(first.scan.uuid, "P3")
    with pytest.raises(AssignmentError, match="assignment.manual_over_count"):
        rig.assignments.assign(second.scan.uuid, "P3")
    lenient = Assignments(rig.events, rig.db, rig.sessions, cfg.station.timezone, manual_over_count=True)
    lenient.assign(second.scan.uuid, "P3")
    assert lenient.copies_assigned()["P3"] == 2 and lenient.over_counted() == ["P3"]
    third = rig.stored()
    with pytest.raises(AssignmentError):  # the station itself never over-counts
        rig.assignments.assign(third.scan.uuid, "P3")
    lenient.identified(third.scan.uuid, DESIGN_B)
    assert rig.get(third.scan.uuid).scan.assignment is None and rig.get(third.scan.uuid).scan.qc_needs_review


def test_a_failing_design_callback_does_not_undo_the_change(cfg: StationConfig, rig: Rig) -> None:
    def broken(record: ScanRecord) -> None:
        raise RuntimeError("inspector gone")

    assignments = Assignments(rig.events, rig.db, rig.sessions, cfg.station.timezone, design_changed=broken)
    record = rig.stored()
    assert assignments.assign(record.scan.uuid, "P1").scan.assignment is not None
    assert rig.get(record.scan.uuid).scan.assignment is not None


# --- the operator's button confirms an identification ---


def ambiguous(rig: Rig, record: ScanRecord, best: str, outcome: str = "ambiguous") -> None:
    found = IdentificationRecord(
        outcome=outcome,
        design_material=None,
        candidates=[
            CandidateRecord(design_material=best, score=0.61),
            CandidateRecord(design_material=DESIGN_ONLY, score=0.6),
        ],
        reason="two designs explain the photos almost equally well",
        at=record.scan.created,
    )
    rig.events.annotate(
        record.scan.uuid,
        lambda r: r.model_copy(update={"station": r.station.model_copy(update={"identification": found})}),
    )


def panel_of(rig: Rig, confirms: bool) -> OperatorPanel:
    decisions = Decisions(rig.events, load_reasons(), rig.cfg.station.timezone)
    panel = OperatorPanel(
        decisions,
        RecordingLamps(),
        "every",
        lockout_s=5.0,
        assignments=rig.assignments if confirms else None,
    )
    rig.events.listen(panel.scan_event)
    return panel


def press(action: str) -> ButtonPress:
    return ButtonPress(action=action, source="fake:pedal", at=PRESSED_AT)  # type: ignore[arg-type]


@pytest.mark.parametrize("outcome", ["ambiguous", "material_ambiguous"])
def test_approve_confirms_the_best_candidate_as_a_manual_assignment(rig: Rig, outcome: str) -> None:
    panel = panel_of(rig, confirms=True)
    record = rig.stored()
    ambiguous(rig, record, DESIGN_B, outcome)

    assert panel.press(press("reject")) is None  # reject does not choose a part, nor decide quality
    assert rig.get(record.scan.uuid).scan.qc_operator is None
    confirmed = panel.press(press("approve"))
    assert confirmed is not None
    event, data = published(rig, record.scan.uuid)
    assert event == "scan.assign" and data["assignment"] == assignment_of(rig, "P3", manual=True)
    assert data["qc_operator"] is None  # confirming the part is not approving its quality
    assert rig.inspected == [record.scan.uuid]
    asked = rig.get(record.scan.uuid).station.assignments
    assert [(a.change, a.source, a.device) for a in asked] == [("confirm", "button", "fake:pedal")]
    assert panel.press(press("approve")) is None  # a bounce within the lockout decides nothing
    assert rig.get(record.scan.uuid).scan.qc_operator is None


def test_without_the_option_a_press_decides_quality_as_before(rig: Rig) -> None:
    panel = panel_of(rig, confirms=False)
    record = rig.stored()
    ambiguous(rig, record, DESIGN_B)
    decided = panel.press(press("approve"))
    assert decided is not None and decided.scan.qc_operator is True and decided.scan.assignment is None
    assert [e for e, _ in rig.outbox(record.scan.uuid)] == ["scan.capture", "scan.quality_control"]


def test_a_confirmed_scan_is_then_decided_by_the_next_press(rig: Rig) -> None:
    panel = panel_of(rig, confirms=True)
    panel._lockout_s = 0.0  # the lockout is tested above; here the press after a confirmation decides quality
    record = rig.stored()
    ambiguous(rig, record, DESIGN_A)
    assert panel.press(press("approve")) is not None
    decided = panel.press(press("reject"))
    assert decided is not None and decided.scan.qc_operator is False
    assert decided.scan.assignment is not None and decided.scan.assignment.part_id == "P1"


def test_confirming_a_design_of_no_part_sets_the_design_only(rig: Rig) -> None:
    panel = panel_of(rig, confirms=True)
    record = rig.stored()
    ambiguous(rig, record, DESIGN_ONLY)
    assert panel.press(press("approve")) is not None
    event, data = published(rig, record.scan.uuid)
    assert event == "scan.quality_control"
    assert (data["design_material"], data["assignment"], data["qc_operator"]) == (DESIGN_ONLY, None, None)
    assert rig.inspected == [record.scan.uuid]
    assert rig.assignments.over_counted() == [] and rig.assignments.copies_assigned()["P1"] == 0
    panel._lockout_s = 0.0
    decided = panel.press(press("approve"))  # settled: the next press decides quality
    assert decided is not None and decided.scan.qc_operator is True
