"""Decisions over HTTP: login, then approve/reject and (re)assignments, through the MQTT requests' handlers.

Each route turns its body into the MQTT request's (the scan from the path, the operator from the credential)
and sends it through HttpRequests, so a decision from the screen is validated, carried out and announced exactly
as one from a plant system, and is recorded as source "http", device "http:<operator>".
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from amflow_edge.messaging.command_models import CaptureRequest
from amflow_edge.messaging.command_models import Response as CommandResponse
from amflow_edge.web.auth import LoginError
from amflow_edge.web.deps import Context, Operator, client_of, cookie_name, fail, token_of
from amflow_edge.web.models import ApiError, EmptyBody, LoginRequest, LoginResponse, PartBody, QcBody, RejectBody
from amflow_edge.web.requests import StoppingError
from amflow_edge.web.scans import ScanId, known

ANSWERS: dict[int | str, dict[str, Any]] = {
    200: {"model": CommandResponse, "description": "Done: `data` is the scan after the change, as its event."},
    401: {"model": ApiError, "description": "No operator credential, or not a valid one."},
    404: {"model": ApiError, "description": "No scan with this uuid on this station."},
    409: {"model": CommandResponse, "description": "Refused by the station (`error` says why); nothing changed."},
    413: {"model": ApiError},
    422: {"model": ApiError, "description": "The body is not valid; nothing changed."},
    429: {"model": ApiError, "description": "Too many requests from this address; see Retry-After."},
    503: {"model": ApiError, "description": "The station is stopping (or, for a capture, not running)."},
    504: {"model": ApiError, "description": "The station did not answer in time; the request may still be done."},
}


STOPPING = "the station is stopping; send the request again once it runs (GET /api/state/)"


def _answer(ctx: Context, command: str, body: dict[str, Any]) -> JSONResponse:
    try:
        response = ctx.requests.send(command, body, ctx.settings.decision_timeout_s)
    except StoppingError:
        fail(503, STOPPING, {"Retry-After": "10"})
    if response is None:
        fail(
            504,
            f"the station did not answer the {command} request within {ctx.settings.decision_timeout_s:.0f} s; "
            "look at the scan or the state before sending it again",
        )
    status = 200 if response.status == "ok" else 409
    return JSONResponse(response.model_dump(mode="json"), status_code=status)


def _on_scan(ctx: Context, scan: UUID, command: str, body: dict[str, Any]) -> JSONResponse:
    """A request about one scan: 404 for a scan the station does not have, before anything is sent. Run in the
    thread pool as one step (its SQLite read is never on the event loop)."""
    known(ctx, scan)
    return _answer(ctx, command, body)


def router() -> APIRouter:
    api = APIRouter()

    @api.post(
        "/api/login",
        response_model=LoginResponse,
        responses={
            401: {"model": ApiError},
            403: {"model": ApiError},
            429: {"model": ApiError},
            422: {"model": ApiError},
        },
        summary="Log in with the station PIN",
    )
    def login(ctx: Context, request: Request, body: LoginRequest, response: Response) -> LoginResponse:
        """A token for `operator`, valid [http] session_hours; also set as an HttpOnly, SameSite=Strict cookie
        (Secure and named __Host-amflow_token when [http] secure_cookie) so the screen's images and event stream
        carry it; the cookie authorises reads only. Wrong PINs are limited per address and in total."""
        client = client_of(request)
        wait = ctx.credentials.login_wait_s(client)
        if wait is not None:
            fail(
                429, f"too many login attempts from {client}; try again in {wait:.0f} s", {"Retry-After": f"{wait:.0f}"}
            )
        if not ctx.credentials.can_log_in:
            fail(
                403,
                "this station has no PIN, so nobody can log in; set [http] pin or the "
                f"{ctx.settings.pin_credential!r} systemd credential and restart the station",
            )
        try:
            granted = ctx.credentials.login(body.operator, body.pin, client)
        except LoginError as exc:
            fail(401, str(exc))
        response.set_cookie(
            cookie_name(ctx.settings.cookie_secure),
            granted.token,
            max_age=int(ctx.settings.session_hours * 3600),
            httponly=True,
            samesite="strict",
            secure=ctx.settings.cookie_secure,
            path="/",
        )
        return LoginResponse(token=granted.token, operator=granted.operator, expires_at=granted.expires_at)

    @api.post("/api/logout", status_code=204, response_class=Response, summary="End a login")
    def logout(ctx: Context, request: Request) -> Response:
        """The token stops working at once (integration tokens from the config cannot be logged out)."""
        token = token_of(request, ctx)
        if token:
            ctx.credentials.logout(token)
        response = Response(status_code=204)
        name = cookie_name(ctx.settings.cookie_secure)
        response.delete_cookie(name, path="/", secure=ctx.settings.cookie_secure, httponly=True, samesite="strict")
        return response

    @api.post("/api/scan/{scan}/qc/", response_model=CommandResponse, responses=ANSWERS, summary="Approve or reject")
    async def qc(ctx: Context, operator: Operator, scan: ScanId, body: QcBody) -> JSONResponse:
        """The MQTT `qc` request: the operator's verdict; `scan.quality_control` follows."""
        request = {"scan": str(scan), "pass": body.passed, "operator": operator}
        request |= body.model_dump(exclude={"passed"}, exclude_unset=True)
        return await run_in_threadpool(_on_scan, ctx, scan, "qc", request)

    @api.post("/api/scan/{scan}/assign/", response_model=CommandResponse, responses=ANSWERS, summary="Assign to a part")
    async def assign(ctx: Context, operator: Operator, scan: ScanId, body: PartBody) -> JSONResponse:
        """The MQTT `assign` request: an unassigned (or rejected) scan becomes a copy of the part; `scan.assign`."""
        return await run_in_threadpool(
            _on_scan, ctx, scan, "assign", {"scan": str(scan), "part_id": body.part_id, "operator": operator}
        )

    @api.post(
        "/api/scan/{scan}/reassign/", response_model=CommandResponse, responses=ANSWERS, summary="Move to another part"
    )
    async def reassign(ctx: Context, operator: Operator, scan: ScanId, body: PartBody) -> JSONResponse:
        """The MQTT `reassign` request: an assigned scan moves to another part; `scan.reassign`, inspected again."""
        return await run_in_threadpool(
            _on_scan, ctx, scan, "reassign", {"scan": str(scan), "part_id": body.part_id, "operator": operator}
        )

    @api.post(
        "/api/scan/{scan}/unassign/",
        response_model=CommandResponse,
        responses=ANSWERS,
        summary="Take the assignment back",
    )
    async def unassign(ctx: Context, operator: Operator, scan: ScanId, body: EmptyBody | None = None) -> JSONResponse:
        """The MQTT `unassign` request (body `{}` or none); `scan.unassign`."""
        return await run_in_threadpool(_on_scan, ctx, scan, "unassign", {"scan": str(scan), "operator": operator})

    @api.post(
        "/api/scan/{scan}/reject/",
        response_model=CommandResponse,
        responses=ANSWERS,
        summary="Not a part of this batch",
    )
    async def reject(ctx: Context, operator: Operator, scan: ScanId, body: RejectBody) -> JSONResponse:
        """The MQTT `reject` request: a foreign object, another batch's part, a scan to take again; `scan.reject`."""
        return await run_in_threadpool(
            _on_scan, ctx, scan, "reject", {"scan": str(scan), "comment": body.comment, "operator": operator}
        )

    @api.post("/api/capture/", response_model=CommandResponse, responses=ANSWERS, summary="Take a scan now")
    async def capture(ctx: Context, operator: Operator, body: CaptureRequest | None = None) -> JSONResponse:
        """The MQTT `capture` request (body `{}` or none): answers with the new scan's uuid once it is stored.
        Refused (503) unless the station runs: a trigger queued while it starts, pauses or stops would hold the
        request (and the shutdown) until the decision timeout."""
        mode = (await run_in_threadpool(ctx.state)).mode
        if mode != "running":
            fail(
                503,
                f"the station is {mode}, so it takes no scan now; see paused_reason in GET /api/state/, and send the "
                "request again once the mode is running",
                {"Retry-After": "10"},
            )
        request = body.model_dump(mode="json", exclude_unset=True) if body is not None else {}
        return await run_in_threadpool(_answer, ctx, "capture", request)

    return api
