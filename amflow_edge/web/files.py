"""The scan's files: its five images (both URL forms the events name), the inspection report, the overlays.

Paths are never taken from the request: the scan must be known to the database, the camera is a number in
range, and the file is found where the station's record says the scan is (the data root, or the backup disk
once moved). Files are sent in reads of up to 4 MiB (a whole image) (starlette's default of 64 KiB costs a thread hop per 64 KiB: a
quarter of the throughput on a 5 MB image, and a GIL hand-over each that the capture thread waits for). Images never change once stored, so clients may cache them; the
report and the overlays change on a re-evaluation and are revalidated by their ETag.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections.abc import Callable
from pathlib import Path as FilePath
from typing import Annotated, Any
from uuid import UUID

import cv2
from fastapi import APIRouter, Path, Query, Request, Response
from fastapi.responses import FileResponse
from starlette.types import Receive, Scope, Send

from amflow_edge.common.scan_layout import CONTACT_SHEET, scan_image
from amflow_edge.inspection.report import REPORT_NAME
from amflow_edge.storage.record import ScanRecord
from amflow_edge.web.deps import Context, Reader, fail
from amflow_edge.web.models import ApiError
from amflow_edge.web.scans import ScanId, known

CHUNK = 4 * 1024 * 1024
IMMUTABLE = "private, max-age=86400, immutable"
REVALIDATE = "private, no-cache"

PNG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "The PNG file."},
    404: {"model": ApiError},
}


JPEG: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/jpeg": {}}, "description": "The JPEG thumbnail."},
    404: {"model": ApiError},
}
THUMB_MIN, THUMB_MAX, THUMB_STEP = 160, 960, 80
"""Widths a thumbnail may have; asked widths round up to a step, so the cache holds a few sizes per image."""
THUMB_QUALITY = 85
THUMBS_KEPT = 5000
"""Thumbnails kept on disk (about 15 KB each at 480 px); the oldest go beyond it, checked every PRUNE_EVERY writes."""
PRUNE_EVERY = 100
_written = [0]

CAPTURE_WAIT_S = 2.0
SENDING_AT_ONCE = 16
"""Files sent at the same time per address; more wait their turn. Bounds the memory of the big reads (16 × 4 MiB)."""


class _BigChunks(FileResponse):
    chunk_size = CHUNK

    def __init__(self, *args: Any, sending: asyncio.Semaphore, capturing: Callable[[], bool], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sending = sending
        self._capturing = capturing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await after_capture(self._capturing)
        async with self._sending:
            await super().__call__(scope, receive, send)


async def after_capture(capturing: Callable[[], bool]) -> None:
    """A download starts between captures: on a two-core station PC a screen pulling 300 MB/s of images slows a
    capture's PNG encoding by half, and a capture takes ~150 ms, which a screen does not notice. At most
    CAPTURE_WAIT_S, so back-to-back captures never starve the screens."""
    deadline = time.monotonic() + CAPTURE_WAIT_S
    while capturing() and time.monotonic() < deadline:
        await asyncio.sleep(0.005)


def _send(request: Request, path: FilePath, media_type: str, cache: str, missing: str) -> Response:
    """The file with ETag and Last-Modified; 304 when the client's copy is current."""
    try:
        stat = path.stat()
    except OSError:
        fail(404, missing)
    tag = (
        '"'
        + hashlib.md5(f"{stat.st_mtime_ns}-{stat.st_size}-{path.name}".encode(), usedforsecurity=False).hexdigest()
        + '"'
    )
    if tag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers={"etag": tag, "cache-control": cache})
    return _BigChunks(
        path,
        media_type=media_type,
        stat_result=stat,
        headers={"etag": tag, "cache-control": cache},
        sending=request.app.state.sending,
        capturing=request.app.state.capturing,
    )


def _with_image(ctx: Context, scan: UUID, number: int) -> ScanRecord:
    """The scan's record, if it has camera `number`'s image still on its disk (404 or 410 in words if not)."""
    record = known(ctx, scan)
    cameras = len(record.scan.scan_urls)
    if not 1 <= number <= cameras:
        fail(404, f"scan {scan} has images 1 to {cameras}; camera {number} is not one of them")
    if record.station.deleted_at is not None:
        fail(410, f"scan {scan}'s images were deleted by retention at {record.station.deleted_at}")
    return record


def _image(ctx: Context, request: Request, scan: UUID, number: int) -> Response:
    record = _with_image(ctx, scan, number)
    name = scan_image(f"cam{number:02d}")
    return _send(
        request,
        ctx.directory_of(record) / name,
        "image/png",
        IMMUTABLE,
        f"scan {scan}'s {name} is not on disk (moved or deleted by hand); the station's log may say more",
    )


def _thumbnail(ctx: Context, request: Request, scan: UUID, number: int, width: int) -> Response:
    """A camera's image downscaled to `width` (INTER_AREA: no aliasing on the tray's texture) as JPEG, made on the
    first request and kept in the thumbnail cache: a screen tile needs ~15 KB, not a 2-5 MB PNG that a two-core
    station PC would decode in the browser five times per scan."""
    record = _with_image(ctx, scan, number)
    width = min(THUMB_MAX, -(-width // THUMB_STEP) * THUMB_STEP)
    cached = ctx.thumbnails / f"{scan}_cam{number:02d}_w{width}.jpg"
    if not cached.is_file():
        source = ctx.directory_of(record) / scan_image(f"cam{number:02d}")
        image = cv2.imread(str(source), cv2.IMREAD_UNCHANGED)
        if image is None:
            fail(404, f"scan {scan}'s {source.name} is not on disk or not readable; the station's log may say more")
        height = max(1, round(image.shape[0] * width / image.shape[1]))
        small = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA) if width < image.shape[1] else image
        ok, encoded = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])
        if not ok:
            fail(500, f"scan {scan}'s camera {number} image could not be encoded as JPEG")
        try:
            ctx.thumbnails.mkdir(parents=True, exist_ok=True)
            # One temporary name per request: two screens asking for the same new tile at once must not write
            # into each other's file, or one of them could serve (and cache for good) a truncated JPEG.
            partial = cached.with_name(f".{cached.name}.{uuid.uuid4().hex}.part")
            try:
                partial.write_bytes(encoded.tobytes())
                partial.replace(cached)  # atomic: a concurrent request reads the old state or the whole file
            finally:
                partial.unlink(missing_ok=True)
        except OSError:  # a full or read-only disk: serve it uncached, the screen still works
            return Response(encoded.tobytes(), media_type="image/jpeg", headers={"cache-control": IMMUTABLE})
        _prune(ctx.thumbnails)
    return _send(request, cached, "image/jpeg", IMMUTABLE, f"scan {scan}'s thumbnail vanished; ask again")


def _prune(folder: FilePath) -> None:
    _written[0] += 1
    if _written[0] % PRUNE_EVERY:
        return
    try:
        files = sorted(folder.glob("*.jpg"), key=lambda f: f.stat().st_mtime)
        for old in files[: max(0, len(files) - THUMBS_KEPT)]:
            old.unlink(missing_ok=True)
    except OSError:
        pass  # a file removed meanwhile; the next prune catches up


CameraNumber = Annotated[int, Path(ge=1, le=99, description="Camera number: 1 is cam01 … 5 is cam05.")]


def router() -> APIRouter:
    api = APIRouter(dependencies=[Reader], responses={401: {"model": ApiError}, 422: {"model": ApiError}})

    @api.get(
        "/api/scan/{scan}/full_image/{number}/", response_class=Response, responses=PNG, summary="A camera's image"
    )
    def full_image(
        ctx: Context,
        request: Request,
        scan: ScanId,
        number: CameraNumber,
    ) -> Response:
        """The stored PNG of one camera at full sensor resolution, 8-bit grey (`scan_urls_full`)."""
        return _image(ctx, request, scan, number)

    @api.get(
        "/api/scan/{scan}/thumbnail/{number}/",
        response_class=Response,
        responses={**JPEG, 410: {"model": ApiError}},
        summary="A camera's image, downscaled",
    )
    def thumbnail(
        ctx: Context,
        request: Request,
        scan: ScanId,
        number: CameraNumber,
        w: Annotated[
            int,
            Query(
                ge=THUMB_MIN,
                le=THUMB_MAX,
                description="Width in pixels (160 … 960, rounded up to a multiple of 80); height keeps the aspect.",
            ),
        ] = 480,
    ) -> Response:
        """The camera's image scaled down to `w` pixels wide (area averaging), as JPEG: for screens and
        dashboards that show tiles. Made once per size and cached; never changes, so cache it (ETag too)."""
        return _thumbnail(ctx, request, scan, number, w)

    @api.get(
        "/data/scans/{scan}/scan_cam{number}.png", response_class=Response, responses=PNG, summary="A camera's image"
    )
    def scan_png(
        ctx: Context,
        request: Request,
        scan: ScanId,
        number: Annotated[int, Path(ge=1, le=99, description="Two-digit camera number, 01 … 05.")],
    ) -> Response:
        """The same file as full_image, under the path the events' `scan_urls` name."""
        return _image(ctx, request, scan, number)

    @api.get(
        "/api/scan/{scan}/report/",
        response_class=Response,
        responses={200: {"content": {"application/json": {}}}, 404: {"model": ApiError}},
        summary="The inspection report",
    )
    def report(ctx: Context, request: Request, scan: ScanId) -> Response:
        """inspection_report.json as the inspection wrote it: pose, metrics, each criterion's value and verdict
        (its `id` is the scan's `inspectionreport`). 404 until the scan is inspected."""
        record = known(ctx, scan)
        if record.scan.inspectionreport is None:
            fail(
                404,
                f"scan {scan} has not been inspected (yet): its inspectionreport is null; wait for its scan.quality_control",
            )
        return _send(
            request,
            ctx.directory_of(record) / REPORT_NAME,
            "application/json",
            REVALIDATE,
            f"scan {scan}'s inspection report is not on disk",
        )

    @api.get(
        "/api/scan/{scan}/overlays.png", response_class=Response, responses=PNG, summary="The overlay contact sheet"
    )
    def overlays(ctx: Context, request: Request, scan: ScanId) -> Response:
        """inspection_overlays.png: a 1920 × 1064 colour PNG, a 40 px title band (design and verdict) above two
        rows of three 640 × 512 tiles: cam01, cam02, cam03 on top, cam04 and cam05 below (the sixth cell is
        black). Each tile is the photo cropped around the part and scaled to fit (top-left aligned), with the
        design's outline in green, missing material red, extra material blue and surface defects amber; a camera
        whose crop could not be made shows its whole photo. 404 until the scan is inspected."""
        record = known(ctx, scan)
        if record.scan.inspectionreport is None:
            fail(
                404,
                f"scan {scan} has not been inspected (yet), so it has no overlays; wait for its scan.quality_control",
            )
        return _send(
            request,
            ctx.directory_of(record) / CONTACT_SHEET,
            "image/png",
            REVALIDATE,
            f"scan {scan}'s overlays are not on disk",
        )

    return api
