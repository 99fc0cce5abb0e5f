"""Which scan the operator's button decides, and what the lamps show about it.

The operator judges the part on the tray, which is the latest scan; an older undecided
scan is no longer in front of them, so a press never reaches it. Under the
'failed_or_review' policy a press counts only once the machine has asked for a human.
On a station where the button confirms identifications (assignment.button_confirms_identification),
a scan the station could not tell between designs is first identified: approve confirms the best
candidate (a manual assignment), and only a later press decides quality.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.messaging.payload import EventName, Scan
from amflow_edge.panel.base import ButtonPress, Lamps, LampSignal
from amflow_edge.qc.decisions import DecisionError, Decisions
from amflow_edge.station.assignments import AssignmentError, Assignments, Requester
from amflow_edge.storage.record import ScanRecord

log = structlog.get_logger(__name__)

Policy = Literal["every", "failed_or_review"]

UNDECIDED_IDENTIFICATION = ("ambiguous", "material_ambiguous")
"""Outcomes where the station found candidates but would not choose: a human's confirmation settles them."""


class OperatorView(BaseModel):
    """The operator panel in the state topic: what the lamps show and which scan a press would decide."""

    model_config = ConfigDict(extra="forbid")

    signal: LampSignal = Field(description="What the lamps show about the latest scan.")
    latest_scan: str | None = Field(description="UUID of the scan on the tray (the latest one).")
    awaiting_decision: str | None = Field(description="UUID of the scan a button press would decide, if any.")
    qc_machine: bool | None = Field(description="The latest scan's machine verdict.")
    qc_needs_review: bool = Field(description="Whether the latest scan needs a human.")
    qc_reasons: list[str] = Field(description="The latest scan's reasons.")
    qc_pass: bool | None = Field(description="The latest scan's final decision so far.")


def signal_of(scan: Scan | None, inspecting: bool) -> LampSignal:
    if scan is None:
        return "idle"
    if scan.qc_operator is not None:
        return "pass" if scan.qc_operator else "fail"
    if scan.qc_needs_review:
        return "review"
    if scan.qc_machine is None:
        return "inspecting" if inspecting else "review"
    return "pass" if scan.qc_machine else "fail"


def awaits_decision(scan: Scan, policy: Policy) -> bool:
    if scan.qc_operator is not None:
        return False
    return policy == "every" or scan.qc_needs_review or scan.qc_machine is False


def awaits_identification(record: ScanRecord) -> str | None:
    """The design a confirming press would choose (the best candidate), when the scan waits for one."""
    found = record.station.identification
    if record.scan.assignment is not None or record.scan.design_material is not None:
        return None  # settled since: confirmed, assigned, or named by the capture request
    if found is None or found.outcome not in UNDECIDED_IDENTIFICATION:
        return None
    return found.candidates[0].design_material if found.candidates else None


def _moment(stamp: str) -> datetime:
    """created carries the station's UTC offset, which changes with daylight saving: compare instants, not text."""
    return datetime.fromisoformat(stamp)


class OperatorPanel:
    """One lock guards what the panel shows and what a press decides, so a press, an inspection
    result and a new capture arriving together can never leave the lamps on another scan than
    the one a press would decide."""

    def __init__(
        self,
        decisions: Decisions,
        lamps: Lamps,
        policy: Policy,
        lockout_s: float,
        inspects: bool = False,
        assignments: Assignments | None = None,
    ) -> None:
        self._decisions = decisions
        self._assignments = assignments
        self._lamps = lamps
        self._policy = policy
        self._lockout_s = lockout_s
        self._listeners: list[Callable[[], None]] = []
        self._inspects = inspects
        self._lock = threading.RLock()
        self._latest: Scan | None = None
        self._latest_decisions = 0
        self._decided_at = float("-inf")
        self._inspecting = False
        self._shown: OperatorView | None = None

    def listen(self, listener: Callable[[], None]) -> None:
        """Called after every change of what the panel shows (the station publishes its state)."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    def follow(self, latest: ScanRecord | None) -> None:
        """Start from the latest scan the station knows (at start, from the database; its inspection resumes)."""
        with self._lock:
            self._latest = latest.scan if latest is not None else None
            self._latest_decisions = len(latest.station.decisions) if latest is not None else 0
            self._inspecting = self._inspects
            changed = self._refresh()
        if changed:
            self._changed()

    def scan_event(self, event: EventName, record: ScanRecord) -> None:
        """Every scan event: a capture puts a new part on the tray; a quality_control updates the one there."""
        with self._lock:
            latest = self._latest
            if event == "scan.capture":
                if latest is not None and _moment(record.scan.created) < _moment(latest.created):
                    return
                self._latest, self._inspecting = record.scan, self._inspects
                self._latest_decisions = len(record.station.decisions)
            elif latest is not None and record.scan.uuid == latest.uuid:
                self._latest = record.scan
                if record.scan.qc_machine is not None or record.scan.qc_needs_review:
                    self._inspecting = False
                elif event in ("scan.assign", "scan.reassign") and record.scan.inspectionreport is None:
                    self._inspecting = self._inspects  # a new design clears the verdict; it is inspected again
                if len(record.station.decisions) > self._latest_decisions:
                    self._latest_decisions = len(record.station.decisions)
                    self._decided_at = time.monotonic()
            else:
                return
            changed = self._refresh()
        if changed:
            self._changed()

    def view(self) -> OperatorView:
        with self._lock:
            scan, inspecting = self._latest, self._inspecting
        return OperatorView(
            signal=signal_of(scan, inspecting),
            latest_scan=scan.uuid if scan else None,
            awaiting_decision=scan.uuid if scan and awaits_decision(scan, self._policy) else None,
            qc_machine=scan.qc_machine if scan else None,
            qc_needs_review=scan.qc_needs_review if scan else False,
            qc_reasons=list(scan.qc_reasons) if scan else [],
            qc_pass=scan.qc_pass if scan else None,
        )

    def press(self, press: ButtonPress) -> ScanRecord | None:
        """A button press; ignored (and logged) when nothing awaits or it follows a decision too closely."""
        with self._lock:
            since = time.monotonic() - self._decided_at
            if since < self._lockout_s:
                log.info(
                    "button press ignored: within the lockout after a decision",
                    action=press.action,
                    button=press.source,
                    seconds_since_decision=round(since, 3),
                )
                return None
            if self._assignments is not None and self._latest is not None:
                record = self._assignments.record(self._latest.uuid)
                waiting = record is not None and not self._assignments.is_rejected(record.scan.uuid)
                design = awaits_identification(record) if record is not None and waiting else None
                if design is not None and record is not None:
                    return self._confirm(record, design, press)
            awaited = self.view().awaiting_decision
            if awaited is None:
                log.info(
                    "button press ignored: no scan awaits a decision",
                    action=press.action,
                    button=press.source,
                    policy=self._policy,
                )
                return None
            try:
                return self._decisions.decide(
                    awaited,
                    press.action == "approve",
                    source="button",
                    device=press.source,
                    at=press.at,
                    only_if_undecided=True,
                )
            except DecisionError as exc:
                log.error("button press not applied", scan=awaited, error=str(exc))
                return None

    def _confirm(self, record: ScanRecord, design: str, press: ButtonPress) -> ScanRecord | None:
        """Under the lock. The lockout starts here too, so a bounce of this press cannot also decide quality."""
        assert self._assignments is not None
        scan_uuid = record.scan.uuid
        if press.action != "approve":
            log.info(
                "button press ignored: the scan awaits identification; approve confirms the best candidate, "
                "another part is chosen on the screen or by request",
                action=press.action,
                button=press.source,
                scan=scan_uuid,
            )
            return None
        self._decided_at = time.monotonic()
        try:
            confirmed = self._assignments.confirm(scan_uuid, design, by=Requester("button", press.source))
        except AssignmentError as exc:
            log.error("button press not applied", scan=scan_uuid, design_material=design, error=str(exc))
            return None
        log.info("operator confirmed the identification", scan=scan_uuid, design_material=design, button=press.source)
        return confirmed

    def _refresh(self) -> bool:
        """Under the lock: light the lamps for the current view; whether the view changed (the state is then due)."""
        view = self.view()
        if view == self._shown:
            return False
        if self._shown is None or view.signal != self._shown.signal:
            self._lamps.show(view.signal)
        self._shown = view
        return True

    def close(self) -> None:
        self._lamps.show("idle")
        self._lamps.close()
