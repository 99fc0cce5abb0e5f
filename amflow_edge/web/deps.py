"""What every route depends on: the station (WebContext), the caller's credential, its address, clean errors."""

from __future__ import annotations

from typing import Annotated, NoReturn

from fastapi import Depends, HTTPException, Request

from amflow_edge.web.context import WebContext

COOKIE = "amflow_token"
"""Set by /api/login: the screen's images and its EventSource cannot send an Authorization header."""


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


def token_of(request: Request, query: bool) -> str | None:
    """The bearer token, the login cookie, or (reads only: img src, EventSource) ?access_token=."""
    header = request.headers.get("authorization")
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            fail(401, "Authorization must be 'Bearer <token>'", {"WWW-Authenticate": "Bearer"})
        return value.strip()
    if query and (param := request.query_params.get("access_token")):
        return param
    return request.cookies.get(COOKIE)


def client_of(request: Request) -> str:
    return request.client.host if request.client is not None else "?"


def reader(request: Request, ctx: Context) -> None:
    if not ctx.credentials.may_read(token_of(request, query=True)):
        fail(
            401,
            "reading needs a credential on this station: send 'Authorization: Bearer <read token or operator "
            "token>' (or log in at /api/login)",
            {"WWW-Authenticate": "Bearer"},
        )


def operator(request: Request, ctx: Context) -> str:
    """The operator a decision is recorded as; 401 without a valid operator credential, 429 when flooding."""
    client = client_of(request)
    wait = ctx.credentials.requests.hit(client)
    if wait is not None:
        fail(429, f"too many requests from {client}; try again in {wait:.0f} s", {"Retry-After": f"{wait:.0f}"})
    name = ctx.credentials.operator(token_of(request, query=False))
    if name is None:
        fail(
            401,
            "decisions need an operator: log in with POST /api/login {operator, pin} and send "
            "'Authorization: Bearer <token>', or use an integration token ([[http.operators]])",
            {"WWW-Authenticate": "Bearer"},
        )
    return name


Reader = Depends(reader)
Operator = Annotated[str, Depends(operator)]
