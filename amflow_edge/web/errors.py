"""Every refusal as JSON {"error": …}: a screen or an integration shows it; nothing was changed.

Also the request-size guard: a body over [http] max_body_bytes is refused while it arrives (by its
Content-Length, or counted when it is chunked), before anything parses it.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from amflow_edge.web.models import ApiError

log = structlog.get_logger(__name__)

_STATUS_WORDS = {
    404: "no such resource: {path}; see /api/openapi.json for the API's paths",
    405: "method {method} is not allowed on {path}",
}


def error_response(
    status: int, error: str, problems: list[str] | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = ApiError(error=error, problems=problems).model_dump(exclude_none=True)
    return JSONResponse(body, status_code=status, headers=headers)


def _problem(error: Any) -> str:
    location = ".".join(str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path"))
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if error.get("type") == "json_invalid":
        return f"body is not valid JSON: {error.get('ctx', {}).get('error', message)}"
    return f"{location or 'body'}: {message}"


def install(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        template = _STATUS_WORDS.get(exc.status_code)
        if template is not None and detail in ("Not Found", "Method Not Allowed"):
            detail = template.format(path=request.url.path[:200], method=request.method)
        return error_response(exc.status_code, detail, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_problem(e) for e in exc.errors()]
        return error_response(422, "the request is not valid: " + "; ".join(problems), problems)

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception) -> JSONResponse:
        log.exception("HTTP request failed", path=request.url.path, method=request.method)
        return error_response(500, f"internal error: {type(exc).__name__}; the station's log has the details")


class BodyLimit:
    """Refuses request bodies over `limit` bytes with 413 before the route reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        too_big = f"request body larger than {self._limit} bytes ([http] max_body_bytes); send less"
        headers = dict(scope.get("headers", []))
        has_body = headers.get(b"content-length", b"0").strip() not in (b"0", b"") or b"transfer-encoding" in headers
        media = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope.get("method") == "POST" and has_body and media != b"application/json":
            # A form or text/plain POST is what another site's page can send without a CORS preflight.
            await error_response(415, "a request body must be JSON: send 'Content-Type: application/json'")(
                scope, receive, send
            )
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
                if length < 0:
                    await error_response(400, "Content-Length is not a number")(scope, receive, send)
                    return
                if length > self._limit:
                    await error_response(413, too_big)(scope, receive, send)
                    return
        received = 0
        started = False

        async def counting() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._limit:
                    raise _TooLargeError(too_big)
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._app(scope, counting, tracking)
        except _TooLargeError:  # read outside FastAPI's body parsing (which re-raises it to the handler above)
            if not started:
                await error_response(413, too_big)(scope, receive, send)


class _TooLargeError(StarletteHTTPException):
    """An HTTPException, so FastAPI's body parsing passes it on as a 413 instead of 'error parsing the body'."""

    def __init__(self, error: str) -> None:
        super().__init__(status_code=413, detail=error)


class HostCheck:
    """Answers only requests whose Host header names this station (400 otherwise): a page on another site whose
    name it re-points at 127.0.0.1 (DNS rebinding) sends its own name as Host, and is refused."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self._app = app
        self._allowed = {h.lower() for h in allowed}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            raw = dict(scope.get("headers", [])).get(b"host", b"").decode("latin-1").lower()
            host = raw.rsplit(":", 1)[0] if not raw.endswith("]") else raw
            if host not in self._allowed:
                refusal = (
                    f"Host {raw!r} is not this station's; use its address, or add the name to [http] allowed_hosts"
                )
                await error_response(400, refusal)(scope, receive, send)
                return
        await self._app(scope, receive, send)


class SecurityHeaders:
    """Adds `headers` to every answer that lacks them (plain ASGI: BaseHTTPMiddleware would wrap `receive` and
    turn BodyLimit's refusal into a parse error)."""

    def __init__(self, app: ASGIApp, headers: dict[str, str]) -> None:
        self._app = app
        self._headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return

        async def adding(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {name.lower() for name, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in self._headers if k not in present]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self._app(scope, receive, adding)
