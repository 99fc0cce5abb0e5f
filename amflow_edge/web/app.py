"""The FastAPI application: the API's routes, its error format and size guard, and the operator's screen.

Two flavours from one factory: the full API (reads, login, decisions) on [http] listen, and a read-only one
(reads and the screen, nothing that changes the station) on [http] read_listen for the plant network.
"""

from __future__ import annotations

import asyncio
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.responses import Response as StarletteResponse
from starlette.types import Scope

from amflow_edge import __version__
from amflow_edge.web import decisions, errors, scans, station
from amflow_edge.web import files as scan_files
from amflow_edge.web.context import WebContext
from amflow_edge.web.deps import fail

STATIC = Path(str(files("amflow_edge.web") / "static"))
"""The operator's screen: index.html, screen.js, screen.css (installed with the package)."""

DESCRIPTION = """The HTTP API of an amflow-edge scanning station: what the AM-Vision 3.7 events' URLs name
(`url`, `scan_urls`, `scan_urls_full`), the operator's screen, and the operator's decisions.

Reads are open unless `[http] read_token` is set (then `Authorization: Bearer <read or operator token>`, the login
cookie, or `?access_token=<read token>` for images and the event stream; the read-only address takes the read token
only). Decisions need an operator's `Authorization: Bearer` (the login cookie authorises reads only): `POST
/api/login` with the station PIN, or an integration's static token. A POST with a body must be
`Content-Type: application/json`. Decisions go through the same handlers as the MQTT requests:
the same validation, the same events. Every refusal is JSON `{"error": …}` naming the problem and the fix."""


SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'; "
    "base-uri 'none'; form-action 'self'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
"""On every answer: the screen loads nothing from elsewhere and is framed by nobody (clickjacking)."""


class StaticScreen(StaticFiles):
    """The screen's files, revalidated on every load (no-cache: an updated station serves its new screen at once,
    and an unchanged file costs a 304)."""

    async def get_response(self, path: str, scope: Scope) -> StarletteResponse:
        response = await super().get_response(path, scope)
        response.headers["cache-control"] = "no-cache"
        return response


def create_app(
    ctx: WebContext | None,
    read_only: bool = False,
    max_body_bytes: int = 64 * 1024,
    allowed_hosts: list[str] | None = None,
) -> FastAPI:
    """`ctx` None: an app for its OpenAPI document only (`amflow-edge openapi`). `allowed_hosts`: the Host
    headers answered (errors.HostCheck, against DNS rebinding); None answers any (tests' in-process apps)."""
    app = FastAPI(
        title="amflow-edge station HTTP API",
        version=__version__,
        description=DESCRIPTION,
        openapi_url="/api/openapi.json",
        docs_url="/api/docs",
        redoc_url=None,
    )
    app.state.ctx = ctx
    app.state.read_only = read_only
    app.state.sending = asyncio.Semaphore(scan_files.SENDING_AT_ONCE)
    app.state.capturing = ctx.capturing if ctx is not None else lambda: False
    errors.install(app)
    app.include_router(scans.router())
    app.include_router(scan_files.router())
    app.include_router(station.router())
    if read_only:

        @app.post("/api/{path:path}", include_in_schema=False)
        async def refused(path: str) -> JSONResponse:
            return errors.error_response(
                403, "this address serves reads only ([http] read_listen); decisions go to the station's [http] listen"
            )

    else:
        app.include_router(decisions.router())

    @app.get("/", include_in_schema=False)
    async def screen(request: Request) -> FileResponse:
        index = STATIC / "index.html"
        if not index.is_file():
            fail(404, "the operator's screen is not installed (amflow_edge/web/static/index.html is missing)")
        return FileResponse(index, media_type="text/html", headers={"cache-control": "no-cache"})

    if STATIC.is_dir():  # one mount: index.html names its files relative to /
        app.mount("/", StaticScreen(directory=STATIC), name="screen")

    app.add_middleware(errors.SecurityHeaders, headers=SECURITY_HEADERS)
    app.add_middleware(errors.BodyLimit, limit=max_body_bytes)
    if allowed_hosts is not None and "*" not in allowed_hosts:
        app.add_middleware(errors.HostCheck, allowed=allowed_hosts)
    return app
