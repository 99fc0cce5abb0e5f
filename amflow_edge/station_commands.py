"""What each station request does; validation already happened in commands.py.

Every handler checks the station's state before touching anything, so a request that is
well-formed but out of place (an unknown scan, a second session, a design the station has
no mesh for) is refused with the reason and changes nothing.
"""

from __future__ import annotations

import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from amflow_edge.capture import CameraTask, CaptureResult, Trigger
from amflow_edge.command_models import (
    CaptureRequest,
    QcRequest,
    ReevaluateRequest,
    Response,
    SessionDesign,
    SessionEnd,
    SessionStart,
)
from amflow_edge.commands import CommandRefused, Handler, Reply
from amflow_edge.decisions import DecisionError
from amflow_edge.record import ScanRecord
from amflow_edge.session import batch_mesh_dir
from inspection.designs import Design, MeshError, design_from_file

if TYPE_CHECKING:
    from amflow_edge.daemon import Station

log = structlog.get_logger(__name__)


def resolve_designs(station: Station, wanted: list[SessionDesign]) -> list[Design]:
    """The batch's designs as the station will inspect them; raises CommandRefused naming the first bad one."""
    folder = batch_mesh_dir(station.cfg).resolve()
    designs = []
    for entry in wanted:
        if entry.mesh is None:
            if entry.design_material not in station.library:
                raise CommandRefused(
                    f"design_material {entry.design_material} is not in the station's design library; "
                    "send its mesh (a file in the batch mesh folder) with it"
                )
            continue
        path = (folder / entry.mesh).resolve()
        if not path.is_relative_to(folder):
            raise CommandRefused(f"mesh {entry.mesh!r} is outside the batch mesh folder; name a file inside {folder}")
        try:
            designs.append(design_from_file(path, entry.units, entry.design_material, entry.title))
        except MeshError as exc:
            raise CommandRefused(f"design {entry.design_material}: {exc}") from None
    return designs


class StationCommands:
    def __init__(self, station: Station) -> None:
        self._station = station

    def handlers(self) -> dict[str, Handler]:
        return {"capture": self.capture, "qc": self.qc, "reevaluate": self.reevaluate, "session": self.session}

    def capture(self, request: CaptureRequest, reply: Reply) -> None:
        if request.design_material is not None and request.design_material not in self._station.designs():
            raise CommandRefused(
                f"design_material {request.design_material} is unknown to this station; add it to the design "
                "library or start a session whose designs include it"
            )

        def done(result: CaptureResult) -> None:
            if result.ok:
                reply(Response(status="ok", command="capture", scan=result.uuid))
            else:
                reply(Response(status="error", command="capture", error=result.error))

        self._station.loop.submit(
            Trigger(source="mqtt", design_material=request.design_material, assignment=request.assignment, done=done)
        )

    def qc(self, request: QcRequest, reply: Reply) -> None:
        try:
            record = self._station.decisions.decide(
                str(request.scan),
                request.passed,
                source="mqtt",
                device=f"mqtt:{request.operator}" if request.operator else "mqtt",
                at=datetime.now(timezone.utc),
                comment=request.comment,
                reasons=request.reasons,
            )
        except DecisionError as exc:
            raise CommandRefused(str(exc)) from None
        reply(Response(status="ok", command="qc", scan=record.scan.uuid, data=record.scan))

    def reevaluate(self, request: ReevaluateRequest, reply: Reply) -> None:
        from inspection.profiles import ProfileError, load_profile

        station, scan_uuid = self._station, str(request.scan)
        if station.inspector is None:
            raise CommandRefused("inspection is disabled on this station (inspection.enabled = false)")
        record = station.events.record(scan_uuid)
        if record is None:
            raise CommandRefused(f"scan {scan_uuid} is not known to this station; send the uuid of a stored scan")
        try:
            load_profile(request.profile)
            job = station.inspection_job(record, profile=request.profile)
        except ProfileError as exc:
            raise CommandRefused(str(exc).replace(str(Path.cwd()) + "/", "")) from None
        except LookupError as exc:
            raise CommandRefused(f"scan {scan_uuid} cannot be inspected: {exc}") from None

        def done(updated: ScanRecord | None, error: str | None) -> None:
            if updated is None:
                reply(Response(status="error", command="reevaluate", scan=scan_uuid, error=error))
            else:
                reply(Response(status="ok", command="reevaluate", scan=scan_uuid, data=updated.scan))

        station.inspector.submit(job, on_done=done, failure_needs_review=False)

    def session(self, request: SessionStart | SessionEnd, reply: Reply) -> None:
        self._refuse_out_of_place(request)

        def prepare() -> None:
            """Meshes are read and checked here, off paho's thread and off the capture thread."""
            try:
                designs = resolve_designs(self._station, request.designs) if isinstance(request, SessionStart) else []
            except CommandRefused as exc:
                reply(Response(status="error", command="session", error=str(exc)))
                return
            task = CameraTask(name="session", run=lambda: self._switch(request, designs, reply))
            if not self._station.loop.submit_task(task):
                reply(Response(status="error", command="session", error="station busy: too many captures queued"))

        threading.Thread(target=prepare, name="session-designs", daemon=True).start()

    def _refuse_out_of_place(self, request: SessionStart | SessionEnd) -> None:
        current = self._station.sessions.current
        if isinstance(request, SessionStart) and current.requested:
            batch = current.batch.id if current.batch else "?"
            raise CommandRefused(f"session {current.scan_session} (batch {batch}) is active; end it first")
        if isinstance(request, SessionEnd) and not current.requested:
            raise CommandRefused("no session is active; start one first")

    def _switch(self, request: SessionStart | SessionEnd, designs: list[Design], reply: Reply) -> None:
        """On the capture thread, where session changes are serialised: the state is checked again here,
        because two requests may both have passed the first check before either was carried out."""
        station = self._station
        try:
            self._refuse_out_of_place(request)
            if isinstance(request, SessionStart):
                new = station.sessions.new(request.batch, request.designs, request.output)
            else:
                new = station.sessions.default()
            station.switch_session(new, designs)
        except CommandRefused as exc:
            reply(Response(status="error", command="session", error=str(exc)))
        except Exception as exc:
            log.exception("session change failed; the previous session goes on")
            reply(Response(status="error", command="session", error=f"session not changed: {exc}"))
        else:
            reply(Response(status="ok", command="session", scan_session=new.scan_session))
