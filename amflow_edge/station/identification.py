"""What the station does with an identification: record it, assign the scan, or say why it could not.

The worker decides which design is on the tray; here that decision becomes the scan's own
(`station.identification` in scan.json, where the screen and the button read it), a confident one
becomes an assignment through the one assignment function every path uses, and a scan left for the
operator is named on the state topic with its candidates until someone assigns or rejects it.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo

import structlog
from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.messaging.events import Events
from amflow_edge.messaging.payload import EventName, timestamp
from amflow_edge.station.assignments import AssignmentError
from amflow_edge.storage.record import (
    CandidateRecord,
    IdentificationOutcome,
    IdentificationRecord,
    IdentifiedAs,
    ScanRecord,
)

log = structlog.get_logger(__name__)

MAX_AWAITING = 20
"""Scans named on the state topic as awaiting the operator; older ones are still in the database."""


class AwaitingIdentification(BaseModel):
    """A scan the station could not identify with confidence: the operator assigns or rejects it."""

    model_config = ConfigDict(extra="forbid")

    scan: str = Field(description="UUID of the scan.")
    outcome: IdentificationOutcome = Field(description="Why no design was chosen.")
    reason: str = Field(description="In words, naming the close candidates.")
    candidates: list[CandidateRecord] = Field(description="The closest designs, best first.")


class ScanChangedError(LookupError):
    """The scan changed while the worker ran (an operator assigned, reassigned, unassigned or rejected it, or its
    session ended): the worker's result no longer applies and is dropped, never turned into a review."""


AssignIdentified = Callable[[str, str], ScanRecord]
"""(scan uuid, design_material) → the scan after the automatic assignment (station.assignments)."""


class Identifications:
    def __init__(
        self, events: Events, timezone: str, assign: AssignIdentified, rejected: Callable[[str], bool] = lambda _: False
    ) -> None:
        self._events = events
        self._tz = ZoneInfo(timezone)
        self._assign = assign
        self._rejected = rejected
        self._lock = threading.Lock()
        self._awaiting: OrderedDict[str, AwaitingIdentification] = OrderedDict()

    def apply(self, scan_uuid: str, found: IdentifiedAs) -> ScanRecord:
        """Records the identification, then assigns a confident one (scan.assign); returns the scan after both."""
        if self._rejected(scan_uuid):
            raise ScanChangedError("an operator rejected it while it was being identified")
        record = IdentificationRecord(**found.model_dump(), at=timestamp(datetime.now(self._tz)))
        updated = self._events.annotate(
            scan_uuid,
            lambda r: r.model_copy(update={"station": r.station.model_copy(update={"identification": record})}),
        )
        names = [c.design_material for c in found.candidates[:3]]
        if found.outcome == "identified" and found.design_material is not None:
            try:
                return self._assign(scan_uuid, found.design_material)
            except AssignmentError as exc:
                raise ScanChangedError(str(exc)) from None
        log.warning(
            "scan not identified; it waits for the operator",
            scan=scan_uuid,
            outcome=found.outcome,
            reason=found.reason,
            candidates=names,
        )
        with self._lock:
            self._awaiting[scan_uuid] = AwaitingIdentification(
                scan=scan_uuid, outcome=found.outcome, reason=found.reason, candidates=found.candidates[:5]
            )
            while len(self._awaiting) > MAX_AWAITING:
                self._awaiting.popitem(last=False)
        return updated

    def scan_event(self, event: EventName, record: ScanRecord) -> None:
        """Events listener: a scan that got its design by other means no longer awaits identification."""
        if record.scan.assignment is not None or record.scan.design_material is not None or event == "scan.reject":
            with self._lock:
                self._awaiting.pop(record.scan.uuid, None)

    def awaiting(self) -> list[AwaitingIdentification]:
        with self._lock:
            return list(self._awaiting.values())

    def forget_session(self) -> None:
        """A new session: the old session's scans are no longer the operator's next task on this station."""
        with self._lock:
            self._awaiting.clear()
