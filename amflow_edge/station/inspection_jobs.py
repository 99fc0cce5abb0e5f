"""What the worker needs to identify and inspect one stored scan, or why the scan cannot be.

A scan that names its design (a capture request did, an operator assigned it) is inspected
against it. One that does not is identified first, among the designs of the session it was taken
in: the batch's parts and designs, or, for a station scanning without a batch, its design library.
Nothing here reads what the camera driver knows of the scene.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from amflow_edge.inspection.designs import Design, UnknownDesignError
from amflow_edge.inspection.identification.models import CandidateDesign, MaterialLook
from amflow_edge.station.designs import DesignCatalogue
from amflow_edge.station.inspector import InspectionJob
from amflow_edge.station.session import ScanningSession, SessionKeeper
from amflow_edge.storage.record import ScanRecord
from amflow_edge.storage.store import ScanStore

LookOf = Callable[[str], MaterialLook | None]


class InspectionJobs:
    def __init__(
        self,
        store: ScanStore,
        catalogue: DesignCatalogue,
        sessions: SessionKeeper,
        calibrations: dict[str, Path],
        profile: str,
        cache_dir: Path,
        *,
        identify: bool = True,
        look_of: LookOf = lambda _: None,
        unusable: Callable[[], set[str]] = set,
        refusal: Callable[[str], str | None] = lambda _: None,
    ) -> None:
        self._store = store
        self._catalogue = catalogue
        self._sessions = sessions
        self._calibrations = calibrations
        self._profile = profile
        self._cache_dir = cache_dir
        self._identify = identify
        self._look_of = look_of
        self._unusable = unusable
        self._refusal = refusal

    def for_scan(self, record: ScanRecord, profile: str | None = None) -> InspectionJob:
        """Raises LookupError (UnknownDesignError is one) saying why the scan cannot be inspected."""
        if record.station.deleted_at is not None:
            raise LookupError(f"its images were deleted by retention at {record.station.deleted_at}")
        refusal = self._refusal(record.scan.scan_session)
        if refusal is not None:
            raise LookupError(refusal)
        reference_dir = self._store.reference_dir(record.scan.scan_session)
        if not reference_dir.is_dir():
            raise LookupError(f"no empty-tray references for session {record.scan.scan_session}")
        common = {
            "scan_uuid": record.scan.uuid,
            "scan_dir": self._store.directory_of(record),
            "reference_dir": reference_dir,
            "calibrations": self._calibrations,
            "profile": profile or self._profile,
            "cache_dir": self._cache_dir,
        }
        if record.scan.design_material is None:
            return InspectionJob(**common, candidates=self._candidates(record))
        design = self._design(record.scan.design_material)
        return InspectionJob(
            **common, design_path=design.path, units=design.units, design_material=design.design_material
        )

    def _design(self, design_material: str) -> Design:
        try:
            return self._catalogue.current().get(design_material)
        except UnknownDesignError:
            session = self._sessions.current
            if design_material in session_design_ids(session):
                raise LookupError(
                    f"design {design_material} of session {session.scan_session} could not be loaded at start (see the "
                    f"log); put its mesh back in {self._catalogue.batch_meshes} and restart, or start the session again"
                ) from None
            raise

    def _candidates(self, record: ScanRecord) -> list[CandidateDesign]:
        if not self._identify:
            raise LookupError("its design is unknown and identification is off; assign it (assign request)")
        session = self._sessions.current
        if record.scan.scan_session != session.scan_session:
            raise LookupError(
                f"it was taken in session {record.scan.scan_session}, which ended before it was identified; "
                "assign it by hand (assign request)"
            )
        designs = self.session_designs(session)
        unusable = self._unusable()
        usable = [d for d in designs if d.design_material not in unusable]
        if not usable:
            raise LookupError(
                "the session has no design to identify it among; start a session with the batch's parts"
                if not designs
                else "none of the session's designs could be processed (see the log); fix their meshes"
            )
        return [
            CandidateDesign(
                design_material=d.design_material,
                mesh_path=d.path,
                units=d.units,
                look=self._look_of(d.design_material),
            )
            for d in usable
        ]

    def session_designs(self, session: ScanningSession | None = None) -> list[Design]:
        """The designs a scan of `session` is identified among: its parts' and designs', else the whole library."""
        session = session or self._sessions.current
        library = self._catalogue.current()
        wanted = session_design_ids(session)
        if not wanted:
            return library.designs
        return [d for d in library.designs if d.design_material in wanted]


def session_design_ids(session: ScanningSession) -> set[str]:
    return {p.design_material for p in session.parts} | {d.design_material for d in session.designs}
