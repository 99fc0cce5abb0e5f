"""Operator decisions: one function, whatever the source (button, MQTT or the HTTP API).

A decision from the pedal and one from the MES must leave identical traces: the same
qc_* rules (qc.py), the same record of who decided when, the same scan.quality_control.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal
from zoneinfo import ZoneInfo

import structlog

from amflow_edge.messaging.events import Events
from amflow_edge.messaging.payload import timestamp
from amflow_edge.qc.reasons import ReasonCatalogue
from amflow_edge.qc.rules import with_operator_decision
from amflow_edge.storage.record import OperatorDecisionRecord, ScanRecord

log = structlog.get_logger(__name__)

DecisionSource = Literal["button", "mqtt", "http"]


class DecisionError(ValueError):
    """The decision cannot be taken as asked; nothing was changed. The message says why and what to send instead."""


class Decisions:
    def __init__(self, events: Events, reasons: ReasonCatalogue, timezone: str) -> None:
        self._events = events
        self._reasons = reasons
        self._tz = ZoneInfo(timezone)

    def decide(
        self,
        scan_uuid: str,
        passed: bool,
        *,
        source: DecisionSource,
        device: str,
        at: datetime,
        comment: str | None = None,
        reasons: list[str] | None = None,
        only_if_undecided: bool = False,
    ) -> ScanRecord:
        """`only_if_undecided`: a button press decides a part once; a plant system may change a decision."""
        if reasons is not None:
            unknown = self._reasons.unknown(reasons)
            if unknown:
                raise DecisionError(
                    f"unknown QualityControlReason {', '.join(map(repr, unknown))}; "
                    f"use ids from the reason catalogue: {', '.join(sorted(self._reasons.ids))}"
                )
        now = timestamp(datetime.now(self._tz))
        entry = OperatorDecisionRecord(
            passed=passed,
            source=source,
            device=device,
            at=timestamp(at.astimezone(self._tz)),
            comment=comment,
            reasons=list(reasons) if reasons is not None else None,
        )

        def change(record: ScanRecord) -> ScanRecord:
            if only_if_undecided and record.scan.qc_operator is not None:
                raise DecisionError(f"scan {scan_uuid} was decided meanwhile; the press is not applied")
            scan = with_operator_decision(record.scan, now, passed, comment=comment, reasons=reasons)
            station = record.station.model_copy(update={"decisions": [*record.station.decisions, entry]})
            return record.model_copy(update={"scan": scan, "station": station})

        try:
            record = self._events.update_scan(scan_uuid, "scan.quality_control", change)
        except KeyError:
            raise DecisionError(
                f"scan {scan_uuid} is not known to this station; send the uuid of a stored scan"
            ) from None
        log.info(
            "operator decided",
            scan=scan_uuid,
            qc_operator=passed,
            source=source,
            device=device,
            qc_pass=record.scan.qc_pass,
        )
        return record
