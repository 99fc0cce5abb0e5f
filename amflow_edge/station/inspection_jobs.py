"""What the worker needs to inspect one stored scan, or why the scan cannot be inspected."""

from __future__ import annotations

from pathlib import Path

from amflow_edge.inspection.designs import UnknownDesignError
from amflow_edge.station.designs import DesignCatalogue
from amflow_edge.station.inspector import InspectionJob, design_of
from amflow_edge.station.session import SessionKeeper
from amflow_edge.storage.record import ScanRecord
from amflow_edge.storage.store import ScanStore


class InspectionJobs:
    def __init__(
        self,
        store: ScanStore,
        catalogue: DesignCatalogue,
        sessions: SessionKeeper,
        calibrations: dict[str, Path],
        profile: str,
        cache_dir: Path,
    ) -> None:
        self._store = store
        self._catalogue = catalogue
        self._sessions = sessions
        self._calibrations = calibrations
        self._profile = profile
        self._cache_dir = cache_dir

    def for_scan(self, record: ScanRecord, profile: str | None = None) -> InspectionJob:
        """Raises LookupError (UnknownDesignError is one) saying why the scan cannot be inspected."""
        if record.station.deleted_at is not None:
            raise LookupError(f"its images were deleted by retention at {record.station.deleted_at}")
        design_material = design_of(record)
        reference_dir = self._store.reference_dir(record.scan.scan_session)
        if design_material is None:
            raise LookupError("the design is unknown (name it in the capture request)")
        try:
            design = self._catalogue.current().get(design_material)
        except UnknownDesignError:
            session = self._sessions.current
            if design_material in {d.design_material for d in session.designs}:
                raise LookupError(
                    f"design {design_material} of session {session.scan_session} could not be loaded at start (see the "
                    f"log); put its mesh back in {self._catalogue.batch_meshes} and restart, or start the session again"
                ) from None
            raise
        if not reference_dir.is_dir():
            raise LookupError(f"no empty-tray references for session {record.scan.scan_session}")
        return InspectionJob(
            scan_uuid=record.scan.uuid,
            scan_dir=self._store.directory_of(record),
            reference_dir=reference_dir,
            calibrations=self._calibrations,
            design_path=design.path,
            units=design.units,
            design_material=design.design_material,
            profile=profile or self._profile,
            cache_dir=self._cache_dir,
        )
