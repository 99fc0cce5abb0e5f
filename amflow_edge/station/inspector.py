"""Inspection of stored scans in a worker process, so CPU-heavy numpy never stalls capture or MQTT.

The worker gets paths and returns the report as JSON: nothing large or unpicklable crosses
the process boundary. The result becomes the scan's qc_* fields and a scan.quality_control
event through the same transaction as every other scan change.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import structlog
from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.common.scan_layout import reference_image, scan_image
from amflow_edge.inspection.designs import Units, load_mesh_mm
from amflow_edge.inspection.geometry.camera import CameraCalibration, load_calibration
from amflow_edge.inspection.identification.models import CandidateDesign
from amflow_edge.inspection.profiles import InspectionProfile, load_profile
from amflow_edge.inspection.report import InspectionReport
from amflow_edge.messaging.events import Events
from amflow_edge.messaging.payload import timestamp
from amflow_edge.ops.log import configure_logging, current_logging
from amflow_edge.qc.rules import with_machine_verdict
from amflow_edge.station.identification import ScanChangedError
from amflow_edge.storage.record import CandidateRecord, IdentifiedAs, ScanRecord

if TYPE_CHECKING:
    import numpy as np
    import trimesh

    from amflow_edge.inspection.station_model.model import StationModel

log = structlog.get_logger(__name__)

InspectionDone = Callable[["ScanRecord | None", "str | None"], None]
"""Called with the updated scan, or None and what went wrong."""


class WorkerError(RuntimeError):
    """What a worker raises instead of the pipeline's own error. Exceptions cross the process boundary by
    pickling, and one whose constructor takes other arguments than its message (MeshError) cannot be
    unpickled: the pool then reports its worker terminated abruptly, and the real cause is lost."""


class InspectionJob(BaseModel):
    """Everything the worker needs, as paths and names: the design to inspect against, or the candidates to
    identify the scan among first."""

    model_config = ConfigDict(extra="forbid")

    scan_uuid: str = Field(description="The scan to inspect.")
    scan_dir: Path = Field(description="Its directory: scan_camNN.png in, inspection_report.json and overlays out.")
    reference_dir: Path = Field(description="Empty-tray images empty_camNN.png of the scan's session.")
    calibrations: dict[str, Path] = Field(description="Camera name → calibration YAML.")
    design_path: Path | None = Field(default=None, description="Mesh file of the design; None: identify first.")
    units: Units = Field(default="mm", description="Units of the mesh file.")
    design_material: str | None = Field(default=None, description="The design's id; None: identify first.")
    candidates: list[CandidateDesign] = Field(
        default_factory=list, description="The session's designs to identify the scan among, when it has no design."
    )
    profile: str = Field(description="Inspection profile name or path.")
    cache_dir: Path = Field(description="Design precomputation cache.")


class JobResult(BaseModel):
    """What the worker sends back: the identification (when it ran) and the inspection report (when one ran)."""

    model_config = ConfigDict(extra="forbid")

    identification: IdentifiedAs | None = Field(default=None, description="Which design, or why none.")
    report: InspectionReport | None = Field(default=None, description="The inspection against the design.")


@lru_cache(maxsize=8)
def _mesh(path: str, units: Units) -> trimesh.Trimesh:
    return load_mesh_mm(path, units)


def _cameras(calibrations: tuple[tuple[str, str], ...]) -> list[CameraCalibration]:
    """Each file's modification time and size are part of the key: `calibrate solve` rewrites the files in place,
    and a worker that kept the old ones would inspect a recalibrated station through its bumped calibration."""
    stamps = []
    for _, path in calibrations:
        stat = os.stat(path)
        stamps.append((path, stat.st_mtime_ns, stat.st_size))
    return _cameras_as_on_disk(tuple(stamps))


@lru_cache(maxsize=4)
def _cameras_as_on_disk(files: tuple[tuple[str, int, int], ...]) -> list[CameraCalibration]:
    return [load_calibration(path) for path, _, _ in files]


def _calibration_folder(calibrations: Mapping[str, Path]) -> Path | None:
    """The one folder the cameras' calibrations lie in, beside which commissioning writes the station model."""
    folders = {Path(path).parent for path in calibrations.values()}
    return next(iter(folders)) if len(folders) == 1 else None


def _station_model(calibrations: Mapping[str, Path]) -> StationModel | None:
    """What commissioning learned of the station (`station_model.json` beside the cameras' calibrations), reread
    when `amflow-edge commission learn` has written a new one; None where the calibrations lie in several folders
    or the station was never commissioned."""
    folder = _calibration_folder(calibrations)
    if folder is None:
        log.warning(
            "station model not read: the cameras' calibrations lie in several folders", folders=len(calibrations)
        )
        return None
    path = folder / "station_model.json"  # inspection.station_model.model.STATION_MODEL_FILE
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return _station_model_on_disk(str(path), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=2)
def _station_model_on_disk(path: str, mtime_ns: int, size: int) -> StationModel | None:
    from amflow_edge.inspection.station_model.model import load_station_model

    del mtime_ns, size
    return load_station_model(Path(path).parent)


@lru_cache(maxsize=4)
def _profile(name_or_path: str) -> InspectionProfile:
    return load_profile(name_or_path)


def run_job(job_json: str) -> str:
    """Runs in the worker process; meshes, calibrations and profiles stay loaded between scans. The pipeline is
    imported here, in the worker, so the daemon's own process never loads open3d and trimesh."""
    try:
        return _run_job(InspectionJob.model_validate_json(job_json))
    except Exception as exc:  # noqa: BLE001 - see WorkerError
        raise WorkerError(str(exc) or type(exc).__name__) from None


def _run_job(job: InspectionJob) -> str:
    from amflow_edge.inspection.inspect import commissioned, inspect_scan, read_image

    names = sorted(job.calibrations)
    with structlog.contextvars.bound_contextvars(scan=job.scan_uuid):  # the worker's lines name the scan too
        images = {name: read_image(job.scan_dir / scan_image(name)) for name in names}
        references = {name: read_image(job.reference_dir / reference_image(name)) for name in names}
        cameras = _cameras(tuple((name, str(job.calibrations[name])) for name in names))
        if job.design_material is None or job.design_path is None:
            return _identify_and_inspect(job, images, references, cameras).model_dump_json()
        station = _station_model(job.calibrations)
        known = commissioned(station, references, _calibration_folder(job.calibrations))
        report = inspect_scan(
            images,
            references,
            cameras,
            _mesh(str(job.design_path), job.units),
            job.design_material,
            _profile(job.profile),
            cache_dir=job.cache_dir,
            out_dir=job.scan_dir,
            scan=uuid.UUID(job.scan_uuid),
            **known,
        )
    return JobResult(report=report).model_dump_json()


def _identify_and_inspect(
    job: InspectionJob,
    images: dict[str, np.ndarray],
    references: dict[str, np.ndarray],
    cameras: list[CameraCalibration],
) -> JobResult:
    """One job: which design, then the inspection against it from the same segmentation and pose."""
    from amflow_edge.inspection.identification.pipeline import identify_and_inspect
    from amflow_edge.inspection.inspect import commissioned

    station = _station_model(job.calibrations)
    known = commissioned(station, references, _calibration_folder(job.calibrations))
    found, report = identify_and_inspect(
        images,
        references,
        cameras,
        job.candidates,
        _profile(job.profile),
        cache_dir=job.cache_dir,
        out_dir=job.scan_dir,
        scan=uuid.UUID(job.scan_uuid),
        **known,
    )
    identified = IdentifiedAs(
        outcome=found.outcome,
        design_material=found.design_material,
        candidates=[
            CandidateRecord(design_material=c.design_material, score=min(max(c.score, 0.0), 1.0))
            for c in found.candidates[:10]
        ],
        reason=found.reason,
        appearance=found.appearance,
        appearance_measure=found.appearance_measure,
    )
    return JobResult(identification=identified, report=report)


PARENT_POLL_S = 0.5


def worker_started(parent_pid: int, log_level: str, log_json: bool) -> None:
    """Runs in each worker as it starts: it logs as the daemon does, and ends with it."""
    configure_logging(log_level, log_json)
    _exit_with_parent(parent_pid)


def _exit_with_parent(parent_pid: int) -> None:
    """A worker whose daemon died (kill -9, OOM killer) is orphaned, not
    stopped: under a supervisor other than systemd (which kills the unit's whole cgroup) it would live on with
    its loaded meshes. It watches who its parent is and ends itself once that is no longer the daemon.
    (prctl's parent-death signal fires when the *thread* that started the worker ends, which here is any
    thread that happened to submit a job.)"""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


Runner = Callable[[str], str]
"""What a worker runs for one job: its JSON in, a JobResult's JSON out (run_job)."""


STOP_WAIT_S = 40.0
"""How long a stop waits for inspections under way: well inside the unit's TimeoutStopSec (60 s)."""


@dataclass
class _Pending:
    """One job in a worker pool: what to do with its result, and where it stands."""

    job: InspectionJob
    on_done: InspectionDone | None
    failure_needs_review: bool
    pool: ProcessPoolExecutor
    submitted: float


class Inspector:
    """Inspections in a worker process that cannot wedge the station.

    A worker that crashes, or is still busy after the deadline (the supervisor then stops it), is replaced.
    The job it was running is blamed: its scan goes to review (insufficient_evidence) with the cause in the
    log. The jobs that were only waiting behind it are submitted again to the new worker, by a thread of
    our own: a pool's done-callbacks run under the pool's own lock, where submitting would deadlock."""

    def __init__(
        self, events: Events, timezone: str, *, deadline_s: float = 300.0, workers: int = 1, runner: Runner = run_job
    ) -> None:
        self._events = events
        self._tz = ZoneInfo(timezone)
        self.deadline_s = deadline_s
        self._workers = workers
        self.runner = runner  # tests put in one that crashes or hangs
        self.on_identified: Callable[[str, IdentifiedAs], ScanRecord] | None = None
        """Set by the station: records the identification and assigns the scan (station.identification)."""
        self._lock = threading.Lock()
        self._pending: dict[Future[str], _Pending] = {}
        self._last_done = time.monotonic()
        self._causes: dict[Future[str], str] = {}  # a stopped worker's job → why it was stopped
        self._culprits: dict[ProcessPoolExecutor, Future[str] | None] = {}  # a broken pool → the job it ran
        self._closing = False
        self._resubmit: queue.Queue[_Pending | None] = queue.Queue()
        self._pool = self._new_pool()
        threading.Thread(target=self._resubmitter, name="inspection-resubmit", daemon=True).start()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self._workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=worker_started,
            initargs=(os.getpid(), *current_logging()),
        )

    def submit(
        self, job: InspectionJob, on_done: InspectionDone | None = None, failure_needs_review: bool = True
    ) -> Future[str]:
        """Queue an inspection; `failure_needs_review=False` (a re-evaluation) leaves the scan as it was on failure."""
        future = self._submit(job, on_done, failure_needs_review)
        log.info("inspection queued", scan=job.scan_uuid, design_material=job.design_material, profile=job.profile)
        return future

    def _submit(self, job: InspectionJob, on_done: InspectionDone | None, failure_needs_review: bool) -> Future[str]:
        with self._lock:
            try:
                future = self._pool.submit(self.runner, job.model_dump_json())
            except BrokenProcessPool:
                log.warning("the inspection worker had stopped; a new one is started")
                self._pool = self._new_pool()
                future = self._pool.submit(self.runner, job.model_dump_json())
            self._pending[future] = _Pending(job, on_done, failure_needs_review, self._pool, time.monotonic())
        future.add_done_callback(self._finish)
        return future

    def _resubmitter(self) -> None:
        while (pending := self._resubmit.get()) is not None:
            try:
                self._submit(pending.job, pending.on_done, pending.failure_needs_review)
            except RuntimeError:  # the station stops: the scan is inspected at the next start
                log.warning("inspection not resubmitted: the station is stopping", scan=pending.job.scan_uuid)

    def _head(self, pool: ProcessPoolExecutor | None = None) -> Future[str] | None:
        """The job a pool's worker is running: the oldest one in it (one worker takes them in order)."""
        jobs = [(p.submitted, f) for f, p in self._pending.items() if pool is None or p.pool is pool]
        return min(jobs, key=lambda item: item[0])[1] if jobs else None

    def _busy_s(self, head: Future[str]) -> float:
        """How long the worker has been on its job: since it was submitted or since the one before it ended,
        whichever was later (one worker takes the jobs in order)."""
        return time.monotonic() - max(self._pending[head].submitted, self._last_done)

    def check_deadline(self) -> None:
        """From the supervisor: stop a worker still busy with one job after the deadline."""
        with self._lock:
            head = self._head(self._pool)
            if head is None or self._busy_s(head) < self.deadline_s:
                return
            scan = self._pending[head].job.scan_uuid
            self._causes[head] = f"its inspection ran longer than {self.deadline_s:g} s (inspection.deadline_s)"
            pool, self._pool = self._pool, self._new_pool()
        log.error("inspection worker stopped: over its deadline", scan=scan, deadline_s=self.deadline_s)
        kill_workers(pool)

    def idle(self) -> bool:
        """No inspection queued or running."""
        with self._lock:
            return not self._pending

    def health(self) -> str | None:
        """For the watchdog: a worker that neither finishes nor is replaced means inspection has stopped."""
        with self._lock:
            head = self._head()
            if head is None:
                return None
            busy_s = self._busy_s(head)
        if busy_s > 3 * self.deadline_s:
            return f"the inspection worker has been busy for {busy_s:.0f} s (deadline {self.deadline_s:g} s)"
        return None

    def _finish(self, future: Future[str]) -> None:
        """On the pool's own thread: applies the verdict, or hands a job that was only waiting to our thread."""
        lost = future.cancelled() or isinstance(future.exception(), BrokenProcessPool)
        with self._lock:
            pending = self._pending[future]
            blamed = False
            if lost and not future.cancelled():  # the job the worker was running when the pool broke, once
                blamed = self._culprits.setdefault(pending.pool, self._head(pending.pool)) is future
            del self._pending[future]
            if not any(p.pool is pending.pool for p in self._pending.values()):
                self._culprits.pop(pending.pool, None)
            cause = self._causes.pop(future, None)
            self._last_done = time.monotonic()
        if lost and not blamed:
            if self._closing:  # no verdict yet: resume_inspections takes it up at the next start
                log.info("inspection left for the next start", scan=pending.job.scan_uuid)
                if pending.on_done is not None:
                    pending.on_done(None, "the station stopped before the inspection ended; ask again")
            else:
                self._resubmit.put(pending)  # it was only waiting behind the job that lost the worker
            return
        record: ScanRecord | None = None
        error: str | None = None
        try:
            record = self.apply(pending.job.scan_uuid, future.result())
        except BrokenProcessPool:
            error = f"inspection failed: {cause or 'the inspection worker crashed'}"
        except ScanChangedError as exc:  # an operator's change stands; a new design's inspection is queued
            log.info("inspection result dropped", scan=pending.job.scan_uuid, reason=str(exc))
            if pending.on_done is not None:
                pending.on_done(None, f"inspection not applied: {exc}")
            return
        except Exception as exc:  # noqa: BLE001 - whatever went wrong in the worker, an operator must look
            error = f"inspection failed: {exc}"
        if error is not None:
            scan = pending.job.scan_uuid
            if pending.failure_needs_review:
                log.error("inspection failed; the scan needs an operator's review", scan=scan, error=error)
                record = self.apply_failure(scan)
            else:
                log.error("inspection failed; the scan is left as it was", scan=scan, error=error)
        if pending.on_done is not None:
            pending.on_done(record if error is None else None, error)

    def apply(self, scan_uuid: str, result_json: str) -> ScanRecord:
        """The identification first (its scan.assign goes out before the verdict), then the verdict."""
        result = JobResult.model_validate_json(result_json)
        found = result.identification
        flagged = False
        if found is not None and self.on_identified is not None:
            flagged = self.on_identified(scan_uuid, found).scan.qc_needs_review
        report = result.report
        if report is None:
            if found is None:
                raise ValueError("the worker sent neither an identification nor a report")
            reason = "wrong_part" if found.outcome == "not_in_batch" else "insufficient_evidence"
            return self._set_verdict(scan_uuid, None, None, True, [reason], unidentified=True)
        identified = report.design_material if found is not None and found.outcome == "identified" else None
        record = self._set_verdict(
            scan_uuid,
            str(report.id),
            report.qc_machine,
            report.qc_needs_review or flagged,
            list(report.qc_reasons),
            design_material=identified,
            against=report.design_material,
        )
        log.info(
            "scan inspected",
            scan=scan_uuid,
            design_material=report.design_material,
            qc_machine=report.qc_machine,
            qc_needs_review=record.scan.qc_needs_review,
            qc_reasons=list(report.qc_reasons),
        )
        return record

    def apply_failure(self, scan_uuid: str) -> ScanRecord:
        """No verdict could be reached: a human must look, and the plant is told so."""
        return self._set_verdict(scan_uuid, None, None, True, ["insufficient_evidence"])

    def _set_verdict(
        self,
        scan_uuid: str,
        report_id: str | None,
        qc_machine: bool | None,
        needs_review: bool,
        reasons: list[str],
        design_material: str | None = None,
        against: str | None = None,
        unidentified: bool = False,
    ) -> ScanRecord:
        """`design_material`: the identified design, for a scan that no assignment gave it (a design of no part).
        `against`: the design the report measured; checked in the same transaction, so a verdict against a design
        an operator has just replaced never lands (the new design's inspection is queued). `unidentified`: the
        scan must still have no design, or an operator gave it one while the worker ran."""
        now = timestamp(datetime.now(self._tz))

        def change(record: ScanRecord) -> ScanRecord:
            scan = record.scan
            if design_material is not None and scan.design_material is None:
                scan = scan.model_copy(update={"design_material": design_material})
            if unidentified and (scan.design_material is not None or scan.assignment is not None):
                raise ScanChangedError("an operator gave it a design while it was being identified")
            if against is not None and scan.design_material != against:
                raise ScanChangedError(
                    f"it was inspected against {against}, which is no longer its design (changed meanwhile)"
                )
            return record.model_copy(
                update={"scan": with_machine_verdict(scan, now, report_id, qc_machine, needs_review, reasons)}
            )

        return self._events.update_scan(scan_uuid, "scan.quality_control", change)

    def close(self) -> None:
        """Inspections under way finish and queue their events, for at most STOP_WAIT_S; a worker still busy
        then is stopped, and its scans are inspected at the next start (they have no verdict yet)."""
        self._closing = True
        with self._lock:
            waiting = list(self._pending)
        if wait(waiting, timeout=min(self.deadline_s, STOP_WAIT_S)).not_done:
            log.warning("inspections still running at stop; they are inspected at the next start")
            with self._lock:
                pools = {p.pool for p in self._pending.values()} | {self._pool}
            for pool in pools:
                kill_workers(pool)
            wait(waiting, timeout=10)
        self._resubmit.put(None)
        self._pool.shutdown(wait=True, cancel_futures=True)


def kill_workers(pool: ProcessPoolExecutor) -> None:
    """Stop a pool's workers at once; its jobs end with BrokenProcessPool. (Python 3.14 has kill_workers().)"""
    kill = getattr(pool, "kill_workers", None)
    if callable(kill):
        kill()
    else:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=False)
