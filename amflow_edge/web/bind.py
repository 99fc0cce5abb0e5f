"""The HTTP API's listening sockets, bound before the server runs so a taken port fails the start in words.

Kept apart from server.py (and from FastAPI and uvicorn) so the CLI can name the error without loading them.
"""

from __future__ import annotations

import errno
import socket

from amflow_edge.config.http import parse_listen


class HttpServerError(RuntimeError):
    """The HTTP API cannot listen where it is configured to; the message names the address and the fix."""


def bind(listen: str, setting: str) -> socket.socket:
    """A listening TCP socket on `listen` ('host:port'); `setting` names the config key for the error."""
    host, port = parse_listen(listen)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise HttpServerError(f"[http] {setting} = {listen!r}: unknown host ({exc.strerror}); use an address") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        fix = {
            errno.EADDRINUSE: "another process listens there (a second station, or the last one still stopping); "
            "stop it or choose another port",
            errno.EACCES: "ports below 1024 need privileges the service does not have; use a port above 1023 "
            "behind a reverse proxy",
            errno.EADDRNOTAVAIL: "no interface of this machine has that address",
        }.get(exc.errno or 0, "check the address")
        raise HttpServerError(
            f"the HTTP API cannot listen on [http] {setting} = {listen!r}: {exc.strerror}; {fix}"
        ) from None
    sock.setblocking(False)
    return sock


def address_of(sock: socket.socket) -> str:
    """http://host:port as bound (with the real port when 0 asked for any)."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
