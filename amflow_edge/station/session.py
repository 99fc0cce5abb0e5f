"""The scanning session: which batch the station is scanning, kept across restarts.

A station restarted mid-batch (power cut, update) must go on stamping scans with the same
session, batch and output, so the session lives in a file in the state directory, written
atomically, not only in memory.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from amflow_edge.common.durable import remove_durably, replace_durably
from amflow_edge.config.station import StationConfig
from amflow_edge.messaging.command_models import BatchPart, SessionDesign
from amflow_edge.messaging.payload import Batch, Output, timestamp

log = structlog.get_logger(__name__)

SESSION_FILE = "session.json"


class SessionPart(BatchPart):
    """A batch's part as the session holds it: with the assignment UUID every scan assigned to it carries."""

    model_config = ConfigDict(extra="forbid")

    assignment: str = Field(description="UUID of the part's scan assignment, made when the session started.")


class ScanningSession(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scan_session: str = Field(description="UUID every scan of the session carries.")
    started: str = Field(description="When the session started (ISO 8601, station time).")
    batch: Batch | None = Field(default=None, description="The batch scanned, if any.")
    output: Output | None = Field(default=None, description="Where the session's parts go, if known.")
    designs: list[SessionDesign] = Field(default_factory=list, description="Designs of the batch that have no part.")
    parts: list[SessionPart] = Field(default_factory=list, description="The batch's parts, each with its assignment.")
    mesh_folder: Path | None = Field(
        default=None,
        description="Folder the parts' and designs' mesh paths are relative to: a batch file's folder; None for the "
        "station's batch mesh folder (designs.batch_meshes).",
    )
    requested: bool = Field(
        default=False, description="Started by a session request (true) or the station's default session (false)."
    )


class SessionKeeper:
    def __init__(self, cfg: StationConfig) -> None:
        self._cfg = cfg
        self._path = cfg.station.state_dir / SESSION_FILE
        self._tz = ZoneInfo(cfg.station.timezone)
        self._lock = threading.Lock()
        self._current = self._load() or self.default()

    def default(self) -> ScanningSession:
        """The session of a station nobody told about batches: from the config, new at every start."""
        s = self._cfg.session
        return ScanningSession(
            scan_session=s.scan_session or str(uuid.uuid4()),
            started=timestamp(datetime.now(self._tz)),
            batch=Batch(id=s.batch_id, title=s.batch_title) if s.batch_id and s.batch_title else None,
        )

    def _load(self) -> ScanningSession | None:
        try:
            session = ScanningSession.model_validate_json(self._path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError) as exc:
            log.error(
                "the saved session is unreadable; starting the default session", path=str(self._path), error=str(exc)
            )
            return None
        log.info(
            "resuming the scanning session",
            scan_session=session.scan_session,
            batch=session.batch.id if session.batch else None,
        )
        return session

    @property
    def current(self) -> ScanningSession:
        with self._lock:
            return self._current

    def replace(self, session: ScanningSession) -> None:
        """Persist first, then switch: a crash in between resumes the new session, never a half-written one."""
        with self._lock:
            if session.requested:
                self._path.parent.mkdir(parents=True, exist_ok=True)
                replace_durably(self._path, session.model_dump_json(indent=2).encode())
            else:
                remove_durably(self._path)
            self._current = session

    def new(
        self,
        batch: Batch,
        designs: list[SessionDesign],
        output: Output | None,
        parts: Sequence[BatchPart] = (),
        mesh_folder: Path | None = None,
    ) -> ScanningSession:
        """Each part gets its assignment UUID here, once: every scan assigned to it in this session carries it."""
        return ScanningSession(
            scan_session=str(uuid.uuid4()),
            started=timestamp(datetime.now(self._tz)),
            batch=batch,
            output=output,
            designs=designs,
            parts=[SessionPart(**part.model_dump(), assignment=str(uuid.uuid4())) for part in parts],
            mesh_folder=mesh_folder,
            requested=True,
        )


def batch_mesh_dir(cfg: StationConfig) -> Path:
    return cfg.designs.batch_meshes or cfg.designs.library.parent
