"""A camera rig that plays back stored scans: a plant's own recorded parts through a new version of the station.

The recording is read, never written: another station's data may be played, so nothing here opens a file for
writing. The list of scans is taken once at open and kept, whatever appears in the directory later, and a recording
that overlaps the station's own data root is refused outright (replay_settings.source_problem says why a snapshot
alone is not enough). Every image's size and pixel format is checked at open from its PNG header (a few bytes), so
a recording that does not fit the configured cameras stops the start with the fix, not the hundredth scan.
"""

from __future__ import annotations

import json
import struct
import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import structlog

from amflow_edge.common.scan_layout import RECORD_FILE, REFERENCES_DIR, SCANS_DIR, reference_image, scan_image
from amflow_edge.drivers.base import CameraHealth, CameraSettings, DriverError, Frame, GrabError, Shot
from amflow_edge.drivers.replay_settings import ReplaySettings, source_problem

log = structlog.get_logger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_HEADER_BYTES = 26  # signature, IHDR length and type, width, height, bit depth, colour type
_GREY = 0
_SKIPPED_SHOWN = 20


class RecordingExhaustedError(DriverError):
    """Every scan of a recording played with replay.loop = false has been played: the end of the run, not a fault."""


class _ImageError(Exception):
    """Why one image cannot be played, to be told with the camera and the file."""


@dataclass(frozen=True)
class RecordedScan:
    """One stored scan as the replay plays it: where its images are and how the recording took them."""

    uuid: str
    directory: Path
    created: str
    scan_session: str | None
    station_id: str | None
    cameras: dict[str, dict[str, Any]]
    """Per camera name, the recorded station block's entry (serial, exposure_us, gain_db, timestamp), if any."""

    def image(self, camera: str) -> Path:
        return self.directory / scan_image(camera)


@dataclass(frozen=True)
class Recording:
    """The scans of a source as found at open, in playing order, and where its empty-tray references are."""

    source: Path
    scans: list[RecordedScan]
    references: Path | None


def _png_header(path: Path) -> tuple[int, int, int, int]:
    """Width, height, bit depth and colour type, from the first bytes of the file: no decoding."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_PNG_HEADER_BYTES)
    except OSError as exc:
        raise _ImageError(f"cannot read it ({exc.strerror})") from None
    if len(head) < _PNG_HEADER_BYTES or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise _ImageError("not a readable PNG file (no PNG signature and header)")
    width, height = struct.unpack(">II", head[16:24])
    return width, height, head[24], head[25]


def _check_image(camera: CameraSettings, path: Path) -> None:
    try:
        width, height, bit_depth, colour = _png_header(path)
    except _ImageError as exc:
        raise DriverError(f"{camera.name}: {path}: {exc}; replace or remove that scan") from None
    if (bit_depth, colour) != (8, _GREY):
        raise DriverError(
            f"{camera.name}: {path} is not 8-bit grey (bit depth {bit_depth}, PNG colour type {colour}); the station "
            "stores and inspects Mono8 images only: play scans a station stored"
        )
    if (width, height) != (camera.width, camera.height):
        raise DriverError(
            f"{camera.name}: {path} is {width}×{height} but {camera.name} is configured for "
            f"{camera.width}×{camera.height}; set the [[cameras]] width/height of {camera.name} to the recording's "
            f"({width} and {height}), with a calibration for that size"
        )


def _decode(camera: CameraSettings, path: Path) -> np.ndarray:
    """The image, read only, or _ImageError: a file whose header passed can still be damaged further in."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise _ImageError(f"cannot read it ({exc.strerror})") from None
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise _ImageError("not a readable PNG file (damaged or truncated)")
    if image.dtype != np.uint8 or image.ndim != 2 or image.shape != (camera.height, camera.width):
        raise _ImageError(
            f"decodes to {image.dtype} {'×'.join(str(n) for n in image.shape[::-1])}, "
            f"not the configured {camera.width}×{camera.height} Mono8"
        )
    image.setflags(write=False)
    return image


def _plain_name(name: str) -> bool:
    """A recorded session id used as a folder name stays inside the recording's references/."""
    return Path(name).name == name and not name.startswith(".")


def _field(record: Any, *keys: str) -> Any:
    value: Any = record
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _created_key(created: str) -> float:
    moment = datetime.fromisoformat(created)
    return (moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)).timestamp()


def _read_scan(directory: Path, cameras: Sequence[CameraSettings]) -> RecordedScan | str:
    """The scan stored in `directory`, or why it cannot be played (half-written, deleted, not a scan)."""
    if directory.name.startswith("."):
        return "hidden (a station's staging area for half-written scans)"
    try:
        record = json.loads((directory / RECORD_FILE).read_bytes())
    except FileNotFoundError:
        return f"no {RECORD_FILE}"
    except (OSError, ValueError) as exc:
        return f"{RECORD_FILE} unreadable: {exc}"
    uuid, created = _field(record, "scan", "uuid"), _field(record, "scan", "created")
    if not isinstance(uuid, str) or not isinstance(created, str):
        return f"{RECORD_FILE} has no scan.uuid and scan.created"
    try:
        _created_key(created)
    except ValueError:
        return f"{RECORD_FILE}: scan.created {created!r} is not an ISO 8601 time"
    missing = [scan_image(c.name) for c in cameras if not (directory / scan_image(c.name)).is_file()]
    if missing:
        return f"no {', '.join(missing)}"
    recorded = _field(record, "station", "cameras")
    session, station_id = _field(record, "scan", "scan_session"), _field(record, "station", "station_id")
    return RecordedScan(
        uuid=uuid,
        directory=directory,
        created=created,
        scan_session=session if isinstance(session, str) else None,
        station_id=station_id if isinstance(station_id, str) else None,
        cameras={c.name: entry for c in cameras if isinstance(entry := _field(recorded, c.name), dict)},
    )


def _layout(source: Path) -> tuple[list[Path], Path]:
    """The candidate scan directories of a source and where its references would be, for each form it may take."""
    if (source / RECORD_FILE).is_file():
        return [source], source.parent.parent / REFERENCES_DIR
    scans = source / SCANS_DIR if (source / SCANS_DIR).is_dir() else source
    references = source / REFERENCES_DIR if scans != source else source.parent / REFERENCES_DIR
    return sorted(p for p in scans.iterdir() if p.is_dir()), references


def read_recording(source: Path, cameras: Sequence[CameraSettings], order: Literal["created", "name"]) -> Recording:
    """The playable scans of `source`, checked against the cameras; skipped directories are logged, not fatal."""
    try:
        candidates, references = _layout(source)
    except OSError as exc:
        raise DriverError(f"replay.source: cannot list {source} ({exc.strerror})") from None
    scans: list[RecordedScan] = []
    skipped: list[str] = []
    for directory in candidates:
        found = _read_scan(directory, cameras)
        if isinstance(found, str):
            skipped.append(f"{directory.name}: {found}")
        else:
            scans.append(found)
    if skipped:
        log.warning(
            "replay: directories without a complete scan are skipped",
            source=str(source),
            count=len(skipped),
            skipped=skipped[:_SKIPPED_SHOWN],
        )
    if not scans:
        raise DriverError(
            f"replay.source: no complete scans in {source} (looked at {len(candidates)} directories; a scan is a "
            f"directory with {RECORD_FILE} and {', '.join(scan_image(c.name) for c in cameras)}); give a station's "
            "data root, its scans/ directory or one scan's directory"
        )
    if order == "created":
        scans.sort(key=lambda s: (_created_key(s.created), s.directory.name))
    else:
        scans.sort(key=lambda s: s.directory.name)
    for scan in scans:
        for camera in cameras:
            _check_image(camera, scan.image(camera.name))
    return Recording(source=source, scans=scans, references=references if references.is_dir() else None)


class ReplayDriver:
    """Meets drivers.base.CameraDriver and ReferenceSource with a recording's scans instead of cameras."""

    def __init__(
        self,
        cameras: list[CameraSettings],
        settings: ReplaySettings,
        data_root: Path,
        backup: Path | None = None,
    ) -> None:
        self._cameras = list(cameras)
        self._settings = settings
        self._data_root = data_root
        self._backup = backup
        self._recording: Recording | None = None
        self._preloaded: list[dict[str, np.ndarray]] = []
        self._triggers: deque[datetime] = deque()
        self._played = 0
        self._exhausted = False
        self._lock = threading.Lock()

    @property
    def scan_uuids(self) -> list[str]:
        """The recording's scans in playing order, as found at open."""
        return [] if self._recording is None else [s.uuid for s in self._recording.scans]

    def open(self) -> None:
        if self._recording is not None:
            return
        source = self._settings.source
        problem = source_problem(source, self._data_root, self._backup)
        if problem is not None:
            raise DriverError(problem)
        recording = read_recording(source, self._cameras, self._settings.order)
        self._preloaded = self._preload(recording) if self._settings.preload else []
        self._triggers.clear()
        self._played = 0
        self._exhausted = False
        self._recording = recording
        log.info(
            "replay: recording opened",
            source=str(source),
            scans=len(recording.scans),
            loop=self._settings.loop,
            preloaded=self._settings.preload,
            references=str(recording.references) if recording.references else None,
        )

    def _preload(self, recording: Recording) -> list[dict[str, np.ndarray]]:
        size_mb = len(recording.scans) * sum(c.width * c.height for c in self._cameras) / 1e6
        if size_mb > self._settings.preload_limit_mb:
            raise DriverError(
                f"replay.preload: the {len(recording.scans)} scans of {recording.source} decode to {size_mb:.0f} MB, "
                f"more than replay.preload_limit_mb = {self._settings.preload_limit_mb}; raise the limit if the "
                "machine has the memory, or set replay.preload = false to decode each scan as it is played"
            )
        return [self._images(scan) for scan in recording.scans]

    def _images(self, scan: RecordedScan) -> dict[str, np.ndarray]:
        images: dict[str, np.ndarray] = {}
        for camera in self._cameras:
            path = scan.image(camera.name)
            try:
                images[camera.name] = _decode(camera, path)
            except _ImageError as exc:
                raise GrabError(camera.name, f"{path}: {exc}; replace or remove that scan") from None
        return images

    def trigger(self) -> None:
        if self._recording is None:
            raise DriverError("replay: trigger() before open(); open the driver first")
        with self._lock:
            self._triggers.append(datetime.now(UTC))

    def grab(self, timeout_s: float) -> Shot:
        """The next recorded scan. A damaged image costs that scan's grab (GrabError naming the file) and the next
        grab plays the scan after it, so one bad file cannot stall a run."""
        recording = self._recording
        if recording is None:
            raise DriverError("replay: grab() before open(); open the driver first")
        with self._lock:
            if not self._triggers:
                raise GrabError(self._cameras[0].name, "no trigger to grab a frame for; call trigger() first")
            triggered_at = self._triggers.popleft()
            played = self._played
            count = len(recording.scans)
            if played >= count and not self._settings.loop:
                self._exhausted = True
                raise RecordingExhaustedError(
                    f"replay: the recording is exhausted: all {count} scans of {recording.source} were played "
                    "(replay.loop = false); no scan taken. Set replay.loop = true to play it again, or stop the station"
                )
            self._played += 1
        index = played % count
        scan = recording.scans[index]
        images = self._preloaded[index] if self._preloaded else self._images(scan)
        metadata = {
            "replay": {
                "scan": scan.uuid,
                "directory": str(scan.directory),
                "station_id": scan.station_id,
                "created": scan.created,
                "round": played // count + 1,
            }
        }
        return Shot(frames=dict(self._frames(images, triggered_at, scan)), metadata=metadata)

    def _frames(
        self, images: dict[str, np.ndarray], timestamp: datetime, scan: RecordedScan | None
    ) -> Iterator[tuple[str, Frame]]:
        """Exposure and gain as recorded where the scan says them (the frame is that exposure), else configured."""
        for camera in self._cameras:
            recorded = scan.cameras.get(camera.name, {}) if scan is not None else {}
            exposure, gain = recorded.get("exposure_us"), recorded.get("gain_db")
            extra = {f"recorded_{key}": recorded[key] for key in ("serial", "timestamp") if key in recorded}
            yield (
                camera.name,
                Frame(
                    camera=camera.name,
                    image=images[camera.name],
                    timestamp=timestamp,
                    serial=camera.serial,
                    exposure_us=float(exposure) if isinstance(exposure, int | float) else camera.exposure_us,
                    gain_db=float(gain) if isinstance(gain, int | float) else camera.gain_db,
                    extra=extra,
                ),
            )

    def grab_reference(self, timeout_s: float) -> Shot:
        """The recording's empty-tray references: those of the session of the next scan to play where it has them,
        else the first session of the recording that does."""
        recording = self._recording
        if recording is None:
            raise DriverError("replay: grab_reference() before open(); open the driver first")
        directory = self._reference_dir(recording)
        images: dict[str, np.ndarray] = {}
        for camera in self._cameras:
            path = directory / reference_image(camera.name)
            _check_image(camera, path)
            try:
                images[camera.name] = _decode(camera, path)
            except _ImageError as exc:
                raise DriverError(f"{camera.name}: {path}: {exc}") from None
        frames = dict(self._frames(images, datetime.now(UTC), None))
        return Shot(frames=frames, metadata={"replay": {"references": str(directory)}})

    def _reference_dir(self, recording: Recording) -> Path:
        names = [reference_image(c.name) for c in self._cameras]
        if recording.references is not None:
            next_scan = recording.scans[self._played % len(recording.scans)]
            sessions = [next_scan.scan_session, *(s.scan_session for s in recording.scans)]
            for session in dict.fromkeys(s for s in sessions if s and _plain_name(s)):
                directory = recording.references / session
                if all((directory / name).is_file() for name in names):
                    return directory
        where = recording.references or recording.source / REFERENCES_DIR
        raise DriverError(
            f"replay: the recording has no empty-tray references for its scans' sessions (expected "
            f"{where}/<scan_session>/{names[0]} …); inspection compares every scan with them: copy the recording's "
            "references/ directory with its scans, or set inspection.enabled = false"
        )

    def close(self) -> None:
        self._recording = None
        self._preloaded = []
        self._triggers.clear()

    def health(self) -> list[CameraHealth]:
        """An exhausted recording shows as cameras without frames, so the state topic says why scans stopped."""
        if self._recording is None:
            connected, detail = False, "replay driver not open"
        elif self._exhausted:
            connected, detail = False, "the recording is exhausted (replay.loop = false)"
        else:
            connected, detail = True, ""
        return [CameraHealth(camera=c.name, serial=c.serial, connected=connected, detail=detail) for c in self._cameras]
