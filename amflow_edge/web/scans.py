"""Reading scans: one scan as its last event carried it, its detail for the screen, and filtered listings."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Path, Query, Response
from fastapi.concurrency import run_in_threadpool

from amflow_edge.messaging.payload import Scan
from amflow_edge.storage.record import ScanRecord
from amflow_edge.web.deps import Context, Reader, fail
from amflow_edge.web.detail import scan_detail
from amflow_edge.web.models import ApiError, ScanDetail, ScanPage
from amflow_edge.web.query import CursorError, QcFilter, ScanFilter

ScanId = Annotated[UUID, Path(description="The scan's UUID, as in its event's `uuid`.")]

NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ApiError, "description": "No scan with this uuid on this station."}
}


def known(ctx: Context, scan: UUID) -> ScanRecord:
    record = ctx.record(str(scan))
    if record is None:
        fail(404, f"scan {scan} is not known to this station; use the uuid of a scan event or of /api/scans/")
    return record


def json_of(scan: Scan) -> Response:
    """The Scan as its event's `data` carries it, byte for byte (keys in payload order)."""
    return Response(scan.model_dump_json(), media_type="application/json")


def router() -> APIRouter:
    api = APIRouter(dependencies=[Reader], responses={401: {"model": ApiError}, 422: {"model": ApiError}})

    @api.get("/api/scan/{scan}/", response_model=Scan, responses=NOT_FOUND, summary="A scan, as its last event")
    def get_scan(ctx: Context, scan: ScanId) -> Response:
        """The 19-key AM-Vision 3.7 Scan exactly as the last event about it carried it (its `url`)."""
        return json_of(known(ctx, scan).scan)

    @api.get(
        "/api/scan/{scan}/detail/", response_model=ScanDetail, responses=NOT_FOUND, summary="A scan for the screen"
    )
    def get_detail(ctx: Context, scan: ScanId) -> ScanDetail:
        """The Scan with what the operator's screen shows beside it: the identification and its candidates (with
        the batch's parts), the inspection's verdict per criterion, how each camera took its image, the
        operators' decisions so far."""
        record = known(ctx, scan)
        return scan_detail(record, ctx.session(), ctx.directory_of(record))

    @api.get("/api/scans/", response_model=ScanPage, summary="Scans, newest first, filtered")
    async def list_scans(
        ctx: Context,
        batch: Annotated[str | None, Query(max_length=255, description="Only scans of this batch id.")] = None,
        session: Annotated[UUID | None, Query(description="Only scans of this scanning session.")] = None,
        qc: Annotated[
            QcFilter | None,
            Query(
                description="passed / failed: the final decision (qc_pass); review: a human must look "
                "(qc_needs_review); pending: neither yet (being inspected)."
            ),
        ] = None,
        needs_review: Annotated[
            bool | None, Query(description="Only scans that do (true) or do not need review.")
        ] = None,
        unassigned: Annotated[
            bool | None, Query(description="Only scans without (true) or with an assignment.")
        ] = None,
        since: Annotated[
            datetime | None,
            Query(description="Only scans created at or after this ISO 8601 time (no offset: station time)."),
        ] = None,
        until: Annotated[datetime | None, Query(description="Only scans created before this ISO 8601 time.")] = None,
        limit: Annotated[int, Query(ge=1, le=200, description="Scans per page.")] = 50,
        cursor: Annotated[
            str | None, Query(max_length=64, description="next_cursor of the previous page; absent: the newest.")
        ] = None,
    ) -> Response:
        """Keyset pagination: follow `next_cursor` until it is null. Scans stored meanwhile never shift a page."""
        tz = ZoneInfo(ctx.timezone)
        where = ScanFilter(
            batch=batch,
            session=str(session) if session is not None else None,
            qc=qc,
            needs_review=needs_review,
            unassigned=unassigned,
            since=since if since is None or since.tzinfo else since.replace(tzinfo=tz),
            until=until if until is None or until.tzinfo else until.replace(tzinfo=tz),
        )
        try:
            scans, next_cursor = await run_in_threadpool(ctx.scans.page, where, limit, cursor)
        except CursorError as exc:
            fail(422, str(exc))
        body = ScanPage.model_construct(items=scans, next_cursor=next_cursor)
        return Response(body.model_dump_json(), media_type="application/json")

    return api
