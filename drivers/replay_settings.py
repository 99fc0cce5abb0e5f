"""The `[replay]` section: which recording the replay rig plays back, and how.

Apart from the driver so that reading a config never loads OpenCV.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from amflow_edge.common.config_file import ConfigPath


class ReplaySettings(BaseModel):
    """A recording of stored scans played through the whole station, as its five cameras.

    Decoding is all or per scan, never a bounded LRU cache: the replay plays its scans in a cycle, and an LRU
    cache smaller than the cycle misses on every grab (each image is evicted just before it is wanted again), so it
    would cost memory and save nothing. A recording that fits in memory is decoded once at open (`preload`: the
    fleet's small recordings, where twenty stations share two cores); any other decodes its five PNGs per scan,
    which is no more than the station spends encoding them again.
    """

    model_config = ConfigDict(extra="forbid")

    source: ConfigPath = Field(
        description="Directory of stored scans: a station's data root (with scans/<uuid>/ and references/), its "
        "scans/ directory, a backup disk's directory, or one scan's directory. Read only, never changed; it must "
        "lie apart from this station's data_root and backup.path."
    )
    loop: bool = Field(
        default=True,
        description="Start again at the first scan after the last. False: a grab after the last scan fails with "
        "'the recording is exhausted' and no scan is stored.",
    )
    order: Literal["created", "name"] = Field(
        default="created",
        description="'created': in the order the scans were taken (scan.created in scan.json); "
        "'name': by scan directory name.",
    )
    preload: bool = Field(
        default=False,
        description="Decode every image once at open and keep it in memory (grabs then cost nothing); "
        "false: decode each scan's images when it is played.",
    )
    preload_limit_mb: int = Field(
        default=2048,
        ge=1,
        le=1_048_576,
        description="Largest recording (decoded, in MB) preload keeps in memory; a larger one is refused at open "
        "rather than left to exhaust the machine's memory.",
    )

    @field_validator("source", mode="before")
    @classmethod
    def _named(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise ValueError("name the directory of stored scans to play back (an empty path would be the config's)")
        return value


def source_problem(source: Path, data_root: Path, backup: Path | None = None) -> str | None:
    """Why the station cannot play `source`, or None.

    A recording that overlaps the station's own data (its data root, or its backup disk, where retention and backup
    move its scans) is refused rather than snapshotted: the station stores every replayed scan there, so the
    recording would grow with its own replays, and a snapshot taken at open would stop the endless loop but not
    the writes into a directory the replay promises to leave as it found it.
    """
    if not source.exists():
        return (
            f"replay.source: expected a directory of stored scans (found nothing at {source}); give a station's "
            "data root, its scans/ directory or one scan's directory"
        )
    if not source.is_dir():
        return f"replay.source: expected a directory of stored scans (found a file at {source})"
    played = source.resolve()
    for setting, own in (("station.data_root", data_root), ("backup.path", backup)):
        if own is None:
            continue
        resolved = own.resolve()
        if played.is_relative_to(resolved) or resolved.is_relative_to(played):
            return (
                f"replay.source {source} and {setting} {own} overlap: the station would store the scans it replays "
                f"in the recording it plays; give the replaying station a {setting} of its own, outside the "
                "recording (or play a copy of the recording)"
            )
    return None
