"""The station as the screen follows it: its state, the batch's parts and counts, the reasons, the live stream."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from amflow_edge.station.state import StationState
from amflow_edge.web.deps import Context, Reader, client_of, fail
from amflow_edge.web.models import ApiError, PartsView, PartView, ReasonsView

_NO_OUTPUT = 2**63
"""Sorts parts without an output after every output id."""


def parts_view(ctx: Context) -> PartsView:
    session = ctx.session()
    counts = ctx.copies_assigned() if session.parts else {}

    # sorted() is stable: parts of one output keep the batch's order.
    ordered = sorted(session.parts, key=lambda p: p.output.id if p.output is not None else _NO_OUTPUT)
    return PartsView(
        scan_session=session.scan_session,
        batch=session.batch,
        parts=[
            PartView(
                part_id=p.part_id,
                part_title=p.part_title,
                design_material=p.design_material,
                copies=p.copies,
                assigned=counts.get(p.part_id, 0),
                output=p.output,
                assignment=p.assignment,
            )
            for p in ordered
        ],
    )


def router() -> APIRouter:
    api = APIRouter(dependencies=[Reader], responses={401: {"model": ApiError}})

    @api.get("/api/state/", response_model=StationState, summary="The station's state")
    async def state(ctx: Context) -> Response:
        """The same StationState the retained MQTT state topic carries, taken now."""
        current = await run_in_threadpool(ctx.state)
        return Response(current.model_dump_json(), media_type="application/json")

    @api.get("/api/parts/", response_model=PartsView, summary="The batch's parts and their counts")
    def parts(ctx: Context) -> PartsView:
        """The current session's batch: each part with its copies, how many scans are assigned to it so far, and
        its output; empty without a batch of parts."""
        return parts_view(ctx)

    @api.get("/api/reasons/", response_model=ReasonsView, summary="The QualityControlReason catalogue")
    def reasons(ctx: Context) -> ReasonsView:
        """The ids a decision's `reasons` may carry, with their titles and categories, for the reason picker."""
        return ReasonsView(categories=ctx.reasons.categories, reasons=ctx.reasons.reasons)

    @api.get(
        "/api/events/",
        response_class=StreamingResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "An endless event stream."}},
        summary="Live scan events and station states (Server-Sent Events)",
    )
    async def events(ctx: Context, request: Request) -> StreamingResponse:
        """`retry:` first, then `event: state` with the current StationState; then `event: scan` with data
        `{"event": "scan.capture" | "scan.quality_control" | "scan.assign" | …, "scan": Scan}` for every scan event,
        `event: state` on every state the station publishes, and a `: heartbeat` comment every 15 s. A client that
        falls 256 messages behind is dropped; EventSource reconnects by itself. At most 8 streams per client
        address and 64 in all: beyond them 503 with Retry-After."""
        address = client_of(request)
        refused = ctx.broadcaster.admit(address)
        if refused is not None:
            fail(503, refused, {"Retry-After": "30"})
        return StreamingResponse(
            ctx.broadcaster.stream(ctx.state, address),
            media_type="text/event-stream",
            headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
        )

    return api
