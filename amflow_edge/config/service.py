"""Settings of the station as a long-running service: disk bounds, retention, backup, watchdog.

Sections [disk], [backup] and [watchdog] of the station TOML. Kept apart from station.py so
the service machinery (disk.py, backup.py, watchdog.py, doctor.py) can be read and tested
on its own; StationConfig includes them like any other section.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from amflow_edge.common.config_file import ConfigPath

_STRICT = ConfigDict(extra="forbid")

GIB = 1024**3


class DiskSettings(BaseModel):
    """When the data root runs low the station stops taking scans rather than fail half-way through one."""

    model_config = _STRICT

    min_free_bytes: int = Field(
        default=2 * GIB,
        ge=0,
        description="Free space on the data root below which capture pauses (a scan at full resolution is ~25 MB; "
        "the database and logs need room too).",
    )
    resume_free_bytes: int = Field(
        default=3 * GIB,
        ge=0,
        description="Free space above which capture resumes; higher than min_free_bytes so the station does not "
        "flap between paused and running around one threshold.",
    )
    retention_days: float | None = Field(
        default=None,
        gt=0,
        description="Delete scans on the backup disk (backup.path) older than this many days, oldest first; "
        "absent keeps every scan for ever. Scans on the data root are only ever moved, never deleted.",
    )

    @model_validator(mode="after")
    def _resume_above_pause(self) -> DiskSettings:
        if self.resume_free_bytes < self.min_free_bytes:
            raise ValueError(
                f"resume_free_bytes ({self.resume_free_bytes}) must be at least min_free_bytes "
                f"({self.min_free_bytes}); set it higher so capture resumes only once space was really freed"
            )
        return self


class BackupSettings(BaseModel):
    """Scans moved off the station's disk, verified, after they stop changing."""

    model_config = _STRICT

    path: ConfigPath | None = Field(
        default=None,
        description="Directory on the backup disk (e.g. /backup/amflow-edge); must exist and be writable by the "
        "service. The station never creates it, so an unmounted disk is reported instead of filled. "
        "Absent: no backup.",
    )
    after_s: float = Field(
        default=86400.0,
        ge=0,
        description="Move a scan once it is this old (by its 'created' time) and eligible (inspected, decided); "
        "until then operators and re-evaluations may still change it.",
    )
    interval_s: float = Field(default=600.0, gt=0, description="How often the mover looks for scans to move.")


class WatchdogSettings(BaseModel):
    """Liveness: what counts as 'hung' for systemd's watchdog (WatchdogSec= in the unit sets how often to ping)."""

    model_config = _STRICT

    capture_silent_s: float = Field(
        default=120.0,
        gt=0,
        description="The capture loop counts as hung after this long without an iteration; must exceed the longest "
        "legitimate one (rig.grab_timeout_s plus writing five images, or taking a session's references).",
    )
