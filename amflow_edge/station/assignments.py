"""Which order line of the batch each scan is: one function per change, whoever asks for it.

The station's identification, a plant system's MQTT request and the operator's button must leave
identical traces (the same payload rules, the same event), so each change of a scan's assignment
is one method here and every path calls it. AM-Vision's scan events announce the changes:

| change | event | design_material | assignment | output | inspection results* | qc_comment |
|---|---|---|---|---|---|---|
| identified, part with copies left | scan.assign | the design | the part's, manual false | the part's | cleared if the design changed |
| identified, every copy assigned | scan.quality_control | the design | null | unchanged | cleared if the design changed; qc_needs_review true |
| identified, design of no part | scan.quality_control | the design | null | unchanged | cleared if the design changed |
| confirm, design of no part | scan.quality_control | the design | null | unchanged | cleared if the design changed |
| assign / confirm | scan.assign | the part's | the part's, manual as given | the part's | cleared if the design changed |
| reassign | scan.reassign | the new part's | the new part's, manual true | the new part's | cleared if the design changed |
| unassign | scan.unassign | null | null | the session's (as at capture) | cleared |
| reject | scan.reject | null | null | null | cleared | the reject's comment |

*Inspection results are inspectionreport, qc_machine (null), qc_reasons ([]) and qc_needs_review (false): an
inspection against a design the scan no longer has says nothing about the part. qc_operator (an operator's verdict
on the part itself) always stands, and qc_pass follows the final-decision rule (qc/rules.py). Every change sets
`modified`; `batch`, `scan_session` and the rest never change.

The assignment object is AM-Vision's: the part's assignment UUID (made at session start), part_id, part_title,
copies (the part's copies in the batch), last_added_copies 1 (one scan is one copy), manual.

Refused, with the reason and nothing changed: an unknown scan or part_id; a scan of another session than the
active one (its parts and their assignment UUIDs belong to that session; AM-Vision corrects closed batches);
assign on an assigned scan (reassign it); reassign of an unassigned scan or to the part it has; unassign of an
unassigned scan; a part whose copies are all assigned (unless `assignment.manual_over_count` lets operators
over-count, as AM-Vision does); any change of a rejected scan but a manual assign, which is the operator
taking the reject back; identification of a scan already assigned or rejected (an operator's word stands).

Counts are read from the database in the transaction that changes the scan, so they survive restarts, and two
changes at once (a request on paho's thread, an identification on the inspector's) never take the same last copy.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

import structlog

from amflow_edge.messaging.events import Events
from amflow_edge.messaging.payload import DESIGN_MATERIAL, Assignment, EventName, Scan, timestamp
from amflow_edge.qc.rules import final_decision
from amflow_edge.station.session import ScanningSession, SessionKeeper, SessionPart
from amflow_edge.storage.db import StationDb
from amflow_edge.storage.record import AssignmentChangeRecord, ScanRecord

log = structlog.get_logger(__name__)

DesignChanged = Callable[[ScanRecord], None]
"""Told of a scan that now has a design it was not inspected against (Station.inspect)."""

_ASSIGNED = "json_extract(record, '$.scan.assignment.assignment')"
"""Must be written exactly as in the index scans_assignment (storage/db.py), or SQLite does not use the index."""
_SESSION = "json_extract(record, '$.scan.scan_session')"
_CHUNK = 500
"""Parts per IN list: below SQLite's oldest limit of 999 variables."""


IDENTIFY_ATTEMPTS = 5


@dataclass(frozen=True)
class Requester:
    """Who asked for a change: kept in scan.json (station.assignments) and logged, as decisions are."""

    source: Literal["button", "mqtt", "http", "station"] = "station"
    device: str = "station"


STATION = Requester()


class _OvertakenError(Exception):
    """The scan or its part's copies changed between choosing the assignment and making it."""


class AssignmentError(ValueError):
    """The change cannot be made as asked; nothing was changed. The message says why and what to send instead."""


class Assignments:
    def __init__(
        self,
        events: Events,
        db: StationDb,
        sessions: SessionKeeper,
        timezone: str,
        design_changed: DesignChanged | None = None,
        manual_over_count: bool = False,
    ) -> None:
        self._events = events
        self._db = db
        self._sessions = sessions
        self._tz = ZoneInfo(timezone)
        self._design_changed = design_changed
        self._manual_over_count = manual_over_count

    # --- the automatic path ---

    def identified(self, scan_uuid: str, design_material: str) -> ScanRecord:
        """The station's identification: the first part of that design with copies left gets the scan.

        A scan beyond every copy is a part the batch did not order (a reprint, a double print, a mix-up): it
        gets no assignment and asks for review, and its part shows in over_counted() until someone decides.
        A design of no part (a designs-only session, a station scanning without a batch) changes nothing here:
        there is no order line to assign, and the scan.quality_control of the inspection that follows carries
        the design (a scan.assign without an assignment would break subscribers that read one from every
        scan.assign, and a scan.quality_control of its own would announce no change of quality control).
        No design_changed call: whoever identified the scan inspects it against the design it found.
        """
        if re.fullmatch(DESIGN_MATERIAL, design_material) is None:
            raise AssignmentError(f"{design_material!r} is not a design_material id")
        if not any(p.design_material == design_material for p in self._sessions.current.parts):
            log.info("scan identified as a design of no part", scan=scan_uuid, design_material=design_material)
            return self._read(scan_uuid)
        # update_scan names its event before the change runs, and here what the change finds decides it: the
        # choice is made first and checked again inside the transaction; a choice overtaken by another change
        # (the part's last copy taken meanwhile) is made again. No lock is held around update_scan: it calls
        # the event listeners (the panel, which takes its own lock and may be waiting for a scan change).
        for _ in range(IDENTIFY_ATTEMPTS):
            event, part = self._identification(self._read(scan_uuid), design_material)

            def change(record: ScanRecord, event: EventName = event, part: SessionPart | None = part) -> ScanRecord:
                if self._identification(record, design_material) != (event, part):
                    raise _OvertakenError
                scan = _with_design(record.scan, design_material)
                if part is not None:
                    return self._stamped(record, _with_part(scan, part, False, self._sessions.current))
                review = final_decision(scan.qc_machine, True, scan.qc_operator)
                return self._stamped(record, scan.model_copy(update={"qc_needs_review": True, "qc_pass": review}))

            try:
                record = self._update(scan_uuid, event, change)
                break
            except _OvertakenError:
                continue
        else:
            raise AssignmentError(f"scan {scan_uuid} kept changing while it was identified; assign it by hand")
        if part is None and any(p.design_material == design_material for p in self._sessions.current.parts):
            log.warning("a scan beyond the copies of its part; it needs review", scan=scan_uuid, design=design_material)
        log.info(
            "scan identified",
            scan=scan_uuid,
            design_material=design_material,
            part_id=part.part_id if part else None,
            name=event,
        )
        return record

    def _identification(self, record: ScanRecord, design_material: str) -> tuple[EventName, SessionPart | None]:
        session = self._active(record)
        if self._rejected(record.scan.uuid):
            raise AssignmentError(f"scan {record.scan.uuid} is rejected; its identification is not applied")
        if record.scan.assignment is not None:
            raise AssignmentError(
                f"scan {record.scan.uuid} is already assigned to part {record.scan.assignment.part_id}; "
                "its identification is not applied"
            )
        parts = [p for p in session.parts if p.design_material == design_material]
        counts = self._counts([p.assignment for p in parts])
        part = next((p for p in parts if counts.get(p.assignment, 0) < p.copies), None)
        return ("scan.assign", part) if part is not None else ("scan.quality_control", None)

    # --- operators and plant systems ---

    def assign(
        self, scan_uuid: str, part_id: str, manual: bool = True, by: Requester = STATION, change_name: str = "assign"
    ) -> ScanRecord:
        """Also takes an operator's reject back: the scan was a part of the batch after all."""
        part = self._part(part_id)
        noted = self._noted(change_name, by, part_id=part_id)

        def change(record: ScanRecord) -> ScanRecord:
            session = self._active(record)
            if record.scan.assignment is not None:
                raise AssignmentError(
                    f"scan {scan_uuid} is already assigned to part {record.scan.assignment.part_id}; "
                    "send reassign to move it to another part"
                )
            self._room_for(part)
            self._db.connection().execute("DELETE FROM scan_rejections WHERE uuid = ?", (scan_uuid,))
            return noted(
                self._stamped(
                    record, _with_part(_with_design(record.scan, part.design_material), part, manual, session)
                )
            )

        return self._to_part(scan_uuid, "scan.assign", change, part, manual, by)

    def confirm(self, scan_uuid: str, design_material: str, by: Requester = STATION) -> ScanRecord:
        """An operator confirms a design the station offered (the button): a manual assign to the first part of
        that design with copies left (with none left, to its first part, which only manual over-counting allows).
        In a session whose parts do not include the design (a designs-only session) the scan gets the design
        without an assignment, announced as scan.quality_control as the station's own identification would be."""
        parts = [p for p in self._sessions.current.parts if p.design_material == design_material]
        if parts:
            if self._rejected(scan_uuid):  # assign would take the reject back: an operator does that on purpose
                raise AssignmentError(f"scan {scan_uuid} is rejected; assign it to a part to take the reject back")
            counts = self._counts([p.assignment for p in parts])
            part = next((p for p in parts if counts.get(p.assignment, 0) < p.copies), parts[0])
            return self.assign(scan_uuid, part.part_id, manual=True, by=by, change_name="confirm")
        if re.fullmatch(DESIGN_MATERIAL, design_material) is None:
            raise AssignmentError(f"{design_material!r} is not a design_material id")
        designs: list[str | None] = []

        def change(record: ScanRecord) -> ScanRecord:
            self._active(record)
            self._refuse_if_rejected(scan_uuid)
            if record.scan.assignment is not None:
                raise AssignmentError(f"scan {scan_uuid} is already assigned to part {record.scan.assignment.part_id}")
            designs.append(record.scan.design_material)
            return noted(self._stamped(record, _with_design(record.scan, design_material)))

        noted = self._noted("confirm", by)
        record = self._update(scan_uuid, "scan.quality_control", change)
        log.info("operator confirmed the design", scan=scan_uuid, design_material=design_material, device=by.device)
        self._tell_design_changed(designs[-1], record)
        return record

    def reassign(self, scan_uuid: str, part_id: str, by: Requester = STATION) -> ScanRecord:
        part = self._part(part_id)
        noted = self._noted("reassign", by, part_id=part_id)

        def change(record: ScanRecord) -> ScanRecord:
            session = self._active(record)
            self._refuse_if_rejected(scan_uuid)
            current = record.scan.assignment
            if current is None:
                raise AssignmentError(f"scan {scan_uuid} is not assigned; send assign")
            if current.assignment == part.assignment:
                raise AssignmentError(f"scan {scan_uuid} is already assigned to part {part_id}")
            self._room_for(part)
            return noted(
                self._stamped(record, _with_part(_with_design(record.scan, part.design_material), part, True, session))
            )

        return self._to_part(scan_uuid, "scan.reassign", change, part, True, by)

    def unassign(self, scan_uuid: str, by: Requester = STATION) -> ScanRecord:
        """The scan is of the batch, but not of that part: back to how it was captured, awaiting a part."""
        noted = self._noted("unassign", by)

        def change(record: ScanRecord) -> ScanRecord:
            session = self._active(record)
            self._refuse_if_rejected(scan_uuid)
            if record.scan.assignment is None:
                raise AssignmentError(f"scan {scan_uuid} is not assigned; there is nothing to unassign")
            scan = _with_design(record.scan, None).model_copy(update={"assignment": None, "output": session.output})
            return noted(self._stamped(record, scan))

        record = self._update(scan_uuid, "scan.unassign", change)
        log.info("scan unassigned", scan=scan_uuid, source=by.source, device=by.device)
        return record

    def reject(self, scan_uuid: str, comment: str, by: Requester = STATION) -> ScanRecord:
        """The scan is no part of this batch (a foreign object, another batch's part, a scan to take again):
        it goes to no output of the batch, and the comment says why."""

        noted = self._noted("reject", by, comment=comment)

        def change(record: ScanRecord) -> ScanRecord:
            self._active(record)
            if self._rejected(scan_uuid):
                raise AssignmentError(f"scan {scan_uuid} is already rejected")
            scan = _without_inspection(record.scan.model_copy(update={"design_material": None})).model_copy(
                update={"assignment": None, "output": None, "qc_comment": comment}
            )
            now = self._now()
            self._db.connection().execute(
                "INSERT INTO scan_rejections (uuid, at, comment) VALUES (?, ?, ?)", (scan_uuid, now, comment)
            )
            return noted(self._stamped(record, scan, now))

        record = self._update(scan_uuid, "scan.reject", change)
        log.info("scan rejected", scan=scan_uuid, source=by.source, device=by.device)
        return record

    # --- what the state topic shows ---

    def copies_assigned(self) -> dict[str, int]:
        """part_id → scans assigned to it in the active session, every part listed."""
        parts = self._sessions.current.parts
        counts = self._counts([p.assignment for p in parts])
        return {p.part_id: counts.get(p.assignment, 0) for p in parts}

    def over_counted(self) -> list[str]:
        """Parts with more scans than copies: assigned beyond them (a manual over-count), or with all copies
        assigned while a scan of their design waits unassigned (the station found one more than ordered).
        Read from the scans, so it holds after a restart and clears once the extra scan is assigned elsewhere,
        unassigned or rejected."""
        session = self._sessions.current
        counts = self._counts([p.assignment for p in session.parts])
        waiting = self._unassigned_designs(session)
        by_design: dict[str, list[SessionPart]] = {}
        for part in session.parts:
            by_design.setdefault(part.design_material, []).append(part)
        over: list[str] = []
        for design, parts in by_design.items():
            full = all(counts.get(p.assignment, 0) >= p.copies for p in parts)
            for part in parts:
                if counts.get(part.assignment, 0) > part.copies or (full and design in waiting):
                    over.append(part.part_id)
        return over

    def record(self, scan_uuid: str) -> ScanRecord | None:
        return self._events.record(scan_uuid)

    def is_rejected(self, scan_uuid: str) -> bool:
        return self._rejected(scan_uuid)

    # --- inside ---

    def _now(self) -> str:
        return timestamp(datetime.now(self._tz))

    def _stamped(self, record: ScanRecord, scan: Scan, now: str | None = None) -> ScanRecord:
        """Validated again: model_copy does not validate, and a stored record that no longer validates is lost."""
        scan = Scan.model_validate(scan.model_copy(update={"modified": now or self._now()}).model_dump())
        return record.model_copy(update={"scan": scan})

    def _noted(
        self, change: str, by: Requester, part_id: str | None = None, comment: str | None = None
    ) -> Callable[[ScanRecord], ScanRecord]:
        """Appends who asked for the change to the record that the change stores (one transaction with it)."""

        def note(record: ScanRecord) -> ScanRecord:
            entry = AssignmentChangeRecord.model_validate(
                {
                    "change": change,
                    "part_id": part_id,
                    "comment": comment,
                    "source": by.source,
                    "device": by.device,
                    "at": record.scan.modified,
                }
            )
            station = record.station.model_copy(update={"assignments": [*record.station.assignments, entry]})
            return record.model_copy(update={"station": station})

        return note

    def _part(self, part_id: str) -> SessionPart:
        session = self._sessions.current
        for part in session.parts:
            if part.part_id == part_id:
                return part
        known = ", ".join(p.part_id for p in session.parts[:20]) or "(none: the session has no parts)"
        raise AssignmentError(f"part_id {part_id!r} is not a part of the active session; its parts: {known}")

    def _active(self, record: ScanRecord) -> ScanningSession:
        session = self._sessions.current
        if record.scan.scan_session != session.scan_session:
            raise AssignmentError(
                f"scan {record.scan.uuid} belongs to session {record.scan.scan_session}, not to the active session "
                f"{session.scan_session}; a closed session's assignments are corrected in AM-Vision"
            )
        return session

    def _room_for(self, part: SessionPart) -> None:
        if self._manual_over_count:
            return
        assigned = self._counts([part.assignment]).get(part.assignment, 0)
        if assigned >= part.copies:
            raise AssignmentError(
                f"all {part.copies} copies of part {part.part_id} are assigned; unassign or reassign one of its "
                "scans first (or allow operators to over-count: assignment.manual_over_count)"
            )

    def _counts(self, assignments: Sequence[str]) -> dict[str, int]:
        """Inside a change this runs in its transaction (same thread, same connection), so it sees every
        committed assignment and none can commit in between."""
        conn = self._db.connection()
        counts: dict[str, int] = {}
        for start in range(0, len(assignments), _CHUNK):
            chunk = list(assignments[start : start + _CHUNK])
            marks = ", ".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT {_ASSIGNED}, COUNT(*) FROM scans WHERE {_ASSIGNED} IN ({marks}) GROUP BY {_ASSIGNED}", chunk
            )
            counts.update({str(a): int(n) for a, n in rows})
        return counts

    def _unassigned_designs(self, session: ScanningSession) -> set[str]:
        rows = self._db.connection().execute(
            f"SELECT DISTINCT json_extract(record, '$.scan.design_material') FROM scans WHERE {_SESSION} = ? "
            "AND json_extract(record, '$.scan.assignment') IS NULL "
            "AND json_extract(record, '$.scan.design_material') IS NOT NULL",
            (session.scan_session,),
        )
        return {str(row[0]) for row in rows}

    def _rejected(self, scan_uuid: str) -> bool:
        row = self._db.connection().execute("SELECT 1 FROM scan_rejections WHERE uuid = ?", (scan_uuid,)).fetchone()
        return row is not None

    def _refuse_if_rejected(self, scan_uuid: str) -> None:
        if self._rejected(scan_uuid):
            raise AssignmentError(
                f"scan {scan_uuid} is rejected; only a manual assign takes the reject back (send assign)"
            )

    def _read(self, scan_uuid: str) -> ScanRecord:
        record = self._events.record(scan_uuid)
        if record is None:
            raise AssignmentError(f"scan {scan_uuid} is not known to this station; send the uuid of a stored scan")
        return record

    def _update(self, scan_uuid: str, event: EventName, change: Callable[[ScanRecord], ScanRecord]) -> ScanRecord:
        try:
            return self._events.update_scan(scan_uuid, event, change)
        except KeyError:
            raise AssignmentError(
                f"scan {scan_uuid} is not known to this station; send the uuid of a stored scan"
            ) from None

    def _to_part(
        self,
        scan_uuid: str,
        event: EventName,
        change: Callable[[ScanRecord], ScanRecord],
        part: SessionPart,
        manual: bool,
        by: Requester = STATION,
    ) -> ScanRecord:
        """A manual change gives the scan a part's design; one it was not inspected against is inspected now."""
        designs: list[str | None] = []

        def noting(record: ScanRecord) -> ScanRecord:
            designs.append(record.scan.design_material)
            return change(record)

        record = self._update(scan_uuid, event, noting)
        log.info(
            "scan assigned",
            scan=scan_uuid,
            name=event,
            part_id=part.part_id,
            manual=manual,
            source=by.source,
            device=by.device,
        )
        self._tell_design_changed(designs[-1], record)
        return record

    def _tell_design_changed(self, before: str | None, record: ScanRecord) -> None:
        if self._design_changed is None or before == record.scan.design_material:
            return
        try:
            self._design_changed(record)
        except Exception:  # committed and announced; a failure to start the inspection must not look like a refusal
            log.exception("inspecting the scan against its new design could not start", scan=record.scan.uuid)


def _with_design(scan: Scan, design_material: str | None) -> Scan:
    """A new design voids an inspection against the old one; an operator's verdict on the part stands."""
    if design_material == scan.design_material:
        return scan
    return _without_inspection(scan.model_copy(update={"design_material": design_material}))


def _without_inspection(scan: Scan) -> Scan:
    """No machine verdict (nor the review an identification that failed asked for); an operator's stands."""
    return scan.model_copy(
        update={
            "inspectionreport": None,
            "qc_machine": None,
            "qc_needs_review": False,
            "qc_reasons": [] if scan.qc_operator is None else list(scan.qc_reasons),
            "qc_pass": final_decision(None, False, scan.qc_operator),
        }
    )


def _with_part(scan: Scan, part: SessionPart, manual: bool, session: ScanningSession) -> Scan:
    """A part that names no output goes where the session's scans go (a session request fills it in already;
    a session made another way, such as from a batch file, may not)."""
    assignment = Assignment(
        assignment=part.assignment,
        part_id=part.part_id,
        part_title=part.part_title,
        copies=part.copies,
        last_added_copies=1,
        manual=manual,
    )
    output = part.output if part.output is not None else session.output
    return scan.model_copy(update={"assignment": assignment, "output": output})
