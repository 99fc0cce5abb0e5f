"""Processing a batch: everything that depends only on the designs, computed when the session starts.

Identification compares a scan with every design of the batch, and what it needs of a design
(rest poses, footprints, the alignment model) takes seconds per mesh. AM-Vision "processes" a
batch for the same reason. Here it runs in a process of its own, one design at a time, so the
progress can be told in the log and on the state topic, capture never waits for it, and the
results land in the design cache on disk (by mesh hash) where the inspection workers find them.
Scans that need identification wait until the batch is processed; scans that name their design
do not wait.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field

from amflow_edge.inspection.designs import Design
from amflow_edge.ops.log import current_logging
from amflow_edge.station.inspector import WorkerError, kill_workers, worker_started

log = structlog.get_logger(__name__)

ProcessingState = Literal["idle", "processing", "ready"]
PROGRESS_EVERY_S = 2.0
"""Shortest time between two progress reports on the state topic (every design is logged)."""
DESIGN_TIMEOUT_S = 600.0
"""Longest one design may take; a worker stuck on a pathological mesh is replaced and the design skipped."""


class FailedDesign(BaseModel):
    model_config = ConfigDict(extra="forbid")

    design_material: str = Field(description="The design that could not be processed.")
    error: str = Field(description="Why, and what to do.")


class RepairedDesign(BaseModel):
    model_config = ConfigDict(extra="forbid")

    design_material: str = Field(description="A design whose mesh was not a closed solid as sent.")
    processing: str = Field(
        description="What the mesh was and what was done: repaired into a closed solid, or used as an open surface."
    )


class ProcessingProgress(BaseModel):
    """Part of the state topic: how far the session's batch is processed."""

    model_config = ConfigDict(extra="forbid")

    state: ProcessingState = Field(
        description="idle: nothing to process; processing: under way, scans to identify wait; ready: done."
    )
    total: int = Field(ge=0, description="Designs of the session.")
    done: int = Field(ge=0, description="Designs processed (failed ones included).")
    failed: list[FailedDesign] = Field(
        default_factory=list, description="Designs that could not be processed; scans are never identified as them."
    )
    repaired: list[RepairedDesign] = Field(
        default_factory=list,
        description="Designs whose mesh was not a closed solid: each is identified and inspected all the same, as "
        "repaired or as an open surface.",
    )


Preparer = Callable[[str, str, str], "str | None"]
"""Runs in the processing process: (mesh path, units, cache dir) → the design's cached data on disk, and what
had to be done to its mesh (None: it was a closed solid, used unchanged)."""


def prepare_in_worker(mesh_path: str, units: str, cache_dir: str) -> str | None:
    from amflow_edge.inspection.identification.pipeline import prepare_design

    try:
        processing = prepare_design(Path(mesh_path), units, Path(cache_dir))
    except Exception as exc:  # noqa: BLE001 - see WorkerError
        raise WorkerError(str(exc) or type(exc).__name__) from None
    if processing is None or (processing.watertight_input and not processing.repairs):
        return None
    return processing.summary()


def _worker_started(parent_pid: int, log_level: str, log_json: bool) -> None:
    """Logs as the daemon does, ends with it (as the inspection workers do), and yields the CPU to capture and
    inspection: processing is the one job that can wait."""
    worker_started(parent_pid, log_level, log_json)
    os.nice(5)


class DesignProcessing:
    """One batch at a time: a new session's batch replaces the one being processed."""

    def __init__(
        self, cache_dir: Path, on_progress: Callable[[], None] = lambda: None, preparer: Preparer = prepare_in_worker
    ) -> None:
        self._cache_dir = cache_dir
        self._on_progress = on_progress
        self._preparer = preparer
        self._lock = threading.Lock()
        self._generation = 0
        self._progress = ProcessingProgress(state="idle", total=0, done=0)
        self._waiting: list[Callable[[], None]] = []
        self._releasing = False
        self._pool: ProcessPoolExecutor | None = None
        self._last_report = 0.0

    def progress(self) -> ProcessingProgress:
        with self._lock:
            return self._progress.model_copy(deep=True)

    def ready(self) -> bool:
        """Processed: a scan to identify need not wait."""
        with self._lock:
            return self._progress.state != "processing"

    def settled(self) -> bool:
        """Processed, and every scan that waited for it handed on to the inspector."""
        with self._lock:
            return self._progress.state != "processing" and not self._releasing

    def failed(self) -> set[str]:
        with self._lock:
            return {f.design_material for f in self._progress.failed}

    def when_ready(self, action: Callable[[], None]) -> None:
        """Runs `action` now when the batch is processed, else once it is (on the processing thread)."""
        with self._lock:
            if self._progress.state == "processing":
                self._waiting.append(action)
                return
        action()

    def start(self, designs: Sequence[Design]) -> None:
        """Replaces the batch being processed: its worker is stopped, its waiting scans go to this batch."""
        self._stop_worker()
        with self._lock:
            self._generation += 1
            generation = self._generation
            state: ProcessingState = "processing" if designs else "idle"
            self._progress = ProcessingProgress(state=state, total=len(designs), done=0)
        if designs:
            log.info("processing the batch's designs", designs=len(designs))
            threading.Thread(
                target=self._run, args=(generation, list(designs)), name="design-processing", daemon=True
            ).start()
        else:
            self._release()
        self._report()

    def _run(self, generation: int, designs: list[Design]) -> None:
        """Always ends settled, whatever goes wrong: scans waiting for the batch must not wait for ever."""
        started = time.monotonic()
        try:
            self._process(generation, designs)
        except Exception:
            log.exception("processing the batch's designs failed; scans are identified among those done")
        with self._lock:
            if self._generation != generation:
                return
            self._progress = self._progress.model_copy(update={"state": "ready"})
            failures = len(self._progress.failed)
        log.info("batch processed", designs=len(designs), failed=failures, seconds=round(time.monotonic() - started, 1))
        self._release()
        self._report()

    def _process(self, generation: int, designs: list[Design]) -> None:
        prepared: dict[tuple[Path, str], tuple[str | None, str | None]] = {}
        for design in designs:
            if not self._current(generation):
                return
            geometry = (design.path, design.units)  # one geometry in several materials is processed once
            if geometry not in prepared:
                prepared[geometry] = self._prepare(design)
            error, repairs = prepared[geometry]
            with self._lock:
                if self._generation != generation:
                    return
                progress = self._progress
                failed, repaired = progress.failed, progress.repaired
                if error is not None:
                    failed = [*failed, FailedDesign(design_material=design.design_material, error=error)]
                if repairs is not None:
                    repaired = [*repaired, RepairedDesign(design_material=design.design_material, processing=repairs)]
                self._progress = progress.model_copy(
                    update={"done": progress.done + 1, "failed": failed, "repaired": repaired}
                )
                done, total = self._progress.done, self._progress.total
            if error is None:
                log.info(
                    "design processed",
                    design_material=design.design_material,
                    done=done,
                    total=total,
                    mesh=repairs or "closed solid, used unchanged",
                )
            else:
                log.error(
                    "design could not be processed; scans are never identified as it",
                    design_material=design.design_material,
                    error=error,
                )
            if done == total or time.monotonic() - self._last_report >= PROGRESS_EVERY_S:
                self._report()

    def _report(self) -> None:
        self._last_report = time.monotonic()
        try:
            self._on_progress()
        except Exception:  # the state topic is told later; processing goes on
            log.exception("the batch's processing progress could not be reported")

    def _current(self, generation: int) -> bool:
        with self._lock:
            return self._generation == generation

    def _prepare(self, design: Design) -> tuple[str | None, str | None]:
        """(why it failed, what was done to its mesh)."""
        pool = self._worker()
        try:
            future: Future[str | None] = pool.submit(
                self._preparer, str(design.path), design.units, str(self._cache_dir)
            )
            return None, future.result(timeout=DESIGN_TIMEOUT_S)
        except TimeoutError:
            self._stop_worker(pool)
            return (
                f"processing took longer than {DESIGN_TIMEOUT_S:g} s; simplify the mesh (fewer faces) and start the "
                "session again",
                None,
            )
        except WorkerError as exc:  # the mesh's own problem, with its fix
            return str(exc), None
        except (BrokenProcessPool, RuntimeError):  # RuntimeError: a pool shut down by a new batch or the stop
            self._stop_worker(pool)  # the next design gets a new worker
            return "the processing worker stopped (a new batch, the station's stop, or a crash on this mesh)", None
        except Exception as exc:  # noqa: BLE001 - a bad mesh is reported and skipped, never fatal
            return str(exc) or type(exc).__name__, None

    def _worker(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_worker_started,
                    initargs=(os.getpid(), *current_logging()),
                )
            return self._pool

    def _stop_worker(self, which: ProcessPoolExecutor | None = None) -> None:
        """The worker (`which`, if it is still the current one) is killed, not waited for: a design may take
        minutes, and a new batch or the stop must not."""
        with self._lock:
            pool = self._pool
            if pool is None or (which is not None and which is not pool):
                return
            self._pool = None
        kill_workers(pool)

    def _release(self) -> None:
        with self._lock:
            waiting, self._waiting = self._waiting, []
            self._releasing = True
        try:
            for action in waiting:
                try:
                    action()
                except Exception:
                    log.exception("a scan waiting for the batch's processing could not be queued")
        finally:
            with self._lock:
                self._releasing = False

    def close(self) -> None:
        """Scans still waiting are identified at the next start (they have no verdict yet)."""
        with self._lock:
            self._generation += 1
            self._waiting.clear()
        self._stop_worker()
