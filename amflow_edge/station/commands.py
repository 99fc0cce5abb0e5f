"""What each station request does; validation already happened in messaging.commands.

Every handler checks the station's state before touching anything, so a request that is
well-formed but out of place (an unknown scan, a second session, a design the station has
no mesh for) is refused with the reason and changes nothing.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal

import structlog

from amflow_edge.inspection.designs import Design
from amflow_edge.inspection.profiles import PROFILE_DIR, ProfileError, load_profile, profile_path
from amflow_edge.messaging.command_models import (
    AssignRequest,
    CaptureRequest,
    QcRequest,
    ReassignRequest,
    ReevaluateRequest,
    RejectRequest,
    ResendRequest,
    Response,
    SessionEnd,
    SessionStart,
    UnassignRequest,
)
from amflow_edge.messaging.commands import CommandRefusedError, Handler, Reply
from amflow_edge.messaging.events import Events
from amflow_edge.messaging.outbox import Outbox
from amflow_edge.qc.decisions import DecisionError, Decisions
from amflow_edge.station.assignments import AssignmentError, Assignments, Requester
from amflow_edge.station.capture import CameraTask, CaptureLoop, CaptureResult, Trigger
from amflow_edge.station.designs import BatchDesignError, DesignCatalogue
from amflow_edge.station.inspection_jobs import InspectionJobs
from amflow_edge.station.inspector import Inspector
from amflow_edge.station.session import ScanningSession, SessionKeeper
from amflow_edge.storage.record import ScanRecord

log = structlog.get_logger(__name__)

RequestSource = Literal["mqtt", "http"]
"""The path a request came through: a plant system over MQTT, or the station's HTTP API (the operator's screen)."""

SwitchSession = Callable[[ScanningSession, list[Design]], None]
"""Runs on the capture thread: the new session's references, then the switch (Station.switch_session)."""


def _requester(source: RequestSource, operator: str | None) -> Requester:
    """'http:<operator>', 'mqtt:<operator>', or just the path when the request names nobody (as qc records it)."""
    return Requester(source=source, device=f"{source}:{operator}" if operator else source)


class StationCommands:
    def __init__(
        self,
        *,
        assignments: Assignments,
        loop: CaptureLoop,
        catalogue: DesignCatalogue,
        decisions: Decisions,
        events: Events,
        inspector: Inspector | None,
        jobs: InspectionJobs,
        sessions: SessionKeeper,
        switch_session: SwitchSession,
        outbox: Outbox,
        wake_relay: Callable[[], None],
    ) -> None:
        self.assignments = assignments
        self._loop = loop
        self._catalogue = catalogue
        self._decisions = decisions
        self._events = events
        self._inspector = inspector
        self._jobs = jobs
        self._sessions = sessions
        self._switch_session = switch_session
        self._outbox = outbox
        self._wake_relay = wake_relay

    def handlers(self, source: RequestSource = "mqtt") -> dict[str, Handler]:
        """`source`: which path the requests come through (MQTT, or the HTTP API); a decision records it, with
        the operator the request names, and a capture's trigger carries it."""
        return {
            "capture": lambda request, reply: self.capture(request, reply, source),
            "qc": lambda request, reply: self.qc(request, reply, source),
            "reevaluate": self.reevaluate,
            "session": self.session,
            "assign": lambda request, reply: self.assign(request, reply, source),
            "reassign": lambda request, reply: self.reassign(request, reply, source),
            "unassign": lambda request, reply: self.unassign(request, reply, source),
            "reject": lambda request, reply: self.reject(request, reply, source),
            "resend": self.resend,
        }

    def capture(self, request: CaptureRequest, reply: Reply, source: RequestSource = "mqtt") -> None:
        if request.design_material is not None and request.design_material not in self._catalogue.current():
            raise CommandRefusedError(
                f"design_material {request.design_material} is unknown to this station; add it to the design "
                "library or start a session whose designs include it"
            )

        def done(result: CaptureResult) -> None:
            if result.ok:
                reply(Response(status="ok", command="capture", scan=result.uuid))
            else:
                reply(Response(status="error", command="capture", error=result.error))

        self._loop.submit(
            Trigger(source=source, design_material=request.design_material, assignment=request.assignment, done=done)
        )

    def resend(self, request: ResendRequest, reply: Reply) -> None:
        """What a plant consumer lost behind the broker goes out again, in order, with its event ids: the
        consumer keeps each event once."""
        stream = self._outbox.stream()
        if request.stream != stream:
            raise CommandRefusedError(
                f"stream {request.stream} is not this station's outbox (now {stream}: its database was rebuilt from "
                "the scans, so those events are gone); take each scan's state from the station's HTTP API"
            )
        count = self._outbox.resend(request.from_seq, request.to_seq)
        self._wake_relay()
        log.info(
            "events queued again on a subscriber's request", first=request.from_seq, last=request.to_seq, count=count
        )
        reply(Response(status="ok", command="resend", resent=count))

    def qc(self, request: QcRequest, reply: Reply, source: RequestSource = "mqtt") -> None:
        try:
            record = self._decisions.decide(
                str(request.scan),
                request.passed,
                source=source,
                device=f"{source}:{request.operator}" if request.operator else source,
                at=datetime.now(UTC),
                comment=request.comment,
                reasons=request.reasons,
            )
        except DecisionError as exc:
            raise CommandRefusedError(str(exc)) from None
        reply(Response(status="ok", command="qc", scan=record.scan.uuid, data=record.scan))

    def assign(self, request: AssignRequest, reply: Reply, source: RequestSource = "mqtt") -> None:
        by = _requester(source, request.operator)
        self._assignment("assign", lambda: self.assignments.assign(str(request.scan), request.part_id, by=by), reply)

    def reassign(self, request: ReassignRequest, reply: Reply, source: RequestSource = "mqtt") -> None:
        by = _requester(source, request.operator)
        self._assignment("reassign", lambda: self.assignments.reassign(str(request.scan), request.part_id, by), reply)

    def unassign(self, request: UnassignRequest, reply: Reply, source: RequestSource = "mqtt") -> None:
        by = _requester(source, request.operator)
        self._assignment("unassign", lambda: self.assignments.unassign(str(request.scan), by), reply)

    def reject(self, request: RejectRequest, reply: Reply, source: RequestSource = "mqtt") -> None:
        by = _requester(source, request.operator)
        self._assignment("reject", lambda: self.assignments.reject(str(request.scan), request.comment, by), reply)

    @staticmethod
    def _assignment(command: str, change: Callable[[], ScanRecord], reply: Reply) -> None:
        try:
            record = change()
        except AssignmentError as exc:
            raise CommandRefusedError(str(exc)) from None
        reply(Response(status="ok", command=command, scan=record.scan.uuid, data=record.scan))

    def reevaluate(self, request: ReevaluateRequest, reply: Reply) -> None:
        scan_uuid = str(request.scan)
        if self._inspector is None:
            raise CommandRefusedError("inspection is disabled on this station (inspection.enabled = false)")
        record = self._events.record(scan_uuid)
        if record is None:
            raise CommandRefusedError(f"scan {scan_uuid} is not known to this station; send the uuid of a stored scan")
        # Requests name profiles, never paths, so the answer offers names only and shows no station path.
        known = sorted(path.stem for path in PROFILE_DIR.glob("*.toml"))
        if request.profile not in known:
            raise CommandRefusedError(
                f"unknown inspection profile {request.profile!r}; use one of: {', '.join(known) or '(none installed)'}"
            )
        try:
            load_profile(request.profile)
            job = self._jobs.for_scan(record, profile=request.profile)
        except ProfileError as exc:
            where = str(profile_path(request.profile))
            raise CommandRefusedError(str(exc).replace(where, f"inspection profile {request.profile!r}")) from None
        except LookupError as exc:
            raise CommandRefusedError(f"scan {scan_uuid} cannot be inspected: {exc}") from None

        def done(updated: ScanRecord | None, error: str | None) -> None:
            if updated is None:
                reply(Response(status="error", command="reevaluate", scan=scan_uuid, error=error))
            else:
                reply(Response(status="ok", command="reevaluate", scan=scan_uuid, data=updated.scan))

        self._inspector.submit(job, on_done=done, failure_needs_review=False)

    def session(self, request: SessionStart | SessionEnd, reply: Reply) -> None:
        self._refuse_out_of_place(request)

        def prepare() -> None:
            """Meshes are read and checked here, off paho's thread and off the capture thread."""
            try:
                designs = (
                    self._catalogue.resolve(request.designs, request.parts) if isinstance(request, SessionStart) else []
                )
            except BatchDesignError as exc:
                reply(Response(status="error", command="session", error=str(exc)))
                return
            except Exception:  # on this thread no one else would answer, and the requester would wait forever
                log.exception("reading the session's designs failed; the previous session goes on")
                reply(Response(status="error", command="session", error="internal error reading the batch's designs"))
                return
            task = CameraTask(name="session", run=lambda: self._switch(request, designs, reply))
            if not self._loop.submit_task(task):
                reply(Response(status="error", command="session", error="station busy: too many captures queued"))

        threading.Thread(target=prepare, name="session-designs", daemon=True).start()

    def _refuse_out_of_place(self, request: SessionStart | SessionEnd) -> None:
        current = self._sessions.current
        if isinstance(request, SessionStart) and current.requested:
            batch = current.batch.id if current.batch else "?"
            raise CommandRefusedError(f"session {current.scan_session} (batch {batch}) is active; end it first")
        if isinstance(request, SessionEnd) and not current.requested:
            raise CommandRefusedError("no session is active; start one first")

    def _switch(self, request: SessionStart | SessionEnd, designs: list[Design], reply: Reply) -> None:
        """On the capture thread, where session changes are serialised: the state is checked again here,
        because two requests may both have passed the first check before either was carried out."""
        try:
            self._refuse_out_of_place(request)
            if isinstance(request, SessionStart):
                # A part that names no output goes where the session's scans go.
                parts = [
                    p if p.output is not None else p.model_copy(update={"output": request.output})
                    for p in request.parts
                ]
                new = self._sessions.new(request.batch, request.designs, request.output, parts=parts)
            else:
                new = self._sessions.default()
            self._switch_session(new, designs)
        except CommandRefusedError as exc:
            reply(Response(status="error", command="session", error=str(exc)))
        except Exception as exc:
            log.exception("session change failed; the previous session goes on")
            reply(Response(status="error", command="session", error=f"session not changed: {exc}"))
        else:
            reply(Response(status="ok", command="session", scan_session=new.scan_session))
