"""What every route depends on: the station (WebContext), the caller's credential, its address, clean errors."""

from __future__ import annotations

from typing import Annotated, NoReturn

from fastapi import Depends, HTTPException, Request

from amflow_edge.web.context import WebContext

COOKIE = "amflow_token"
"""Set by /api/login: the screen's images and its EventSource cannot send an Authorization header. It authorises
reads (GET) only: a cookie rides along with any site's request, so decisions need 'Authorization: Bearer'."""
SECURE_COOKIE = "__Host-" + COOKIE
"""The name when [http] secure_cookie holds: browsers then keep it to HTTPS, this host and path /."""


def cookie_name(secure: bool) -> str:
    return SECURE_COOKIE if secure else COOKIE


class ApiHTTPError(HTTPException):
    """An HTTP error whose body is an ApiError: what was wrong and the fix."""

    def __init__(self, status: int, error: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(status_code=status, detail=error, headers=headers)


def fail(status: int, error: str, headers: dict[str, str] | None = None) -> NoReturn:
    raise ApiHTTPError(status, error, headers)


def context(request: Request) -> WebContext:
    ctx: WebContext = request.app.state.ctx
    return ctx


Context = Annotated[WebContext, Depends(context)]


def bearer_of(request: Request) -> str | None:
    """The 'Authorization: Bearer' token; 401 for another scheme (a mistake worth naming)."""
    header = request.headers.get("authorization")
    if header is None:
        return None
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        fail(401, "Authorization must be 'Bearer <token>'", {"WWW-Authenticate": "Bearer"})
    return value.strip()


def cookie_of(request: Request, ctx: WebContext) -> str | None:
    return request.cookies.get(cookie_name(ctx.settings.cookie_secure))


def token_of(request: Request, ctx: WebContext) -> str | None:
    """The bearer token, else the login cookie: for logout, which a forged request can only make end early."""
    return bearer_of(request) or cookie_of(request, ctx)


def client_of(request: Request) -> str:
    return request.client.host if request.client is not None else "?"


def reader(request: Request, ctx: Context) -> None:
    """The read-only address takes only the read token (header or ?access_token=), never an operator's token or
    cookie; the full API takes an operator's token or cookie too. ?access_token= is the read token only, since a
    URL ends up in logs and histories."""
    read_only = bool(getattr(request.app.state, "read_only", False))
    credentials = ctx.credentials
    header = bearer_of(request)
    if header is not None:
        allowed = credentials.may_read(header, operators=not read_only)
    elif param := request.query_params.get("access_token"):
        allowed = credentials.may_read(param, operators=False)
    elif not read_only and (cookie := cookie_of(request, ctx)):
        allowed = credentials.may_read(cookie)
    else:
        allowed = credentials.may_read(None)
    if not allowed:
        fail(
            401,
            "reading needs a credential on this station: send 'Authorization: Bearer <read token>' (or an operator "
            "token, or log in at /api/login, on the station's full address)",
            {"WWW-Authenticate": "Bearer"},
        )


def operator(request: Request, ctx: Context) -> str:
    """The operator a decision is recorded as: from 'Authorization: Bearer' only (never the cookie, which another
    site's page could make the browser send). 401 without a valid one; only such failed requests count towards
    the address's limit (429), so a flood of them cannot block logged-in operators behind the same proxy."""
    name = ctx.credentials.operator(bearer_of(request))
    if name is not None:
        return name
    client = client_of(request)
    wait = ctx.credentials.requests.hit(client)
    if wait is not None:
        fail(429, f"too many requests from {client}; try again in {wait:.0f} s", {"Retry-After": f"{wait:.0f}"})
    fail(
        401,
        "decisions need an operator: log in with POST /api/login {operator, pin} and send "
        "'Authorization: Bearer <token>' (the login cookie does not authorise decisions), or use an integration "
        "token ([[http.operators]])",
        {"WWW-Authenticate": "Bearer"},
    )


Reader = Depends(reader)
Operator = Annotated[str, Depends(operator)]
