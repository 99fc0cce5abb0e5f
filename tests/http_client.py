"""A plain HTTP/1.1 client for the station's API in tests and benchmarks: keep-alive, raw paths, raw bodies.

The standard library's http.client, not a framework's test client: the tests talk to the real uvicorn
server over loopback as the screen and integrations do, and can send what no polite client would (a path
with '..', a body larger than it claims, a wrong content type).
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Api:
    def __init__(self, base: str, token: str | None = None, timeout_s: float = 30.0) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.token = token
        self._timeout = timeout_s
        self._conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout_s)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Answer:
        sent = dict(headers or {})
        if self.token is not None:
            sent.setdefault("Authorization", f"Bearer {self.token}")
        for attempt in range(2):  # the server may close an idle keep-alive connection
            try:
                self._conn.request(method, path, body=body, headers=sent)
                response = self._conn.getresponse()
                data = response.read()
                return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self._conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def get(self, path: str, headers: dict[str, str] | None = None) -> Answer:
        return self.request("GET", path, headers=headers)

    def post(self, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Answer:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode() if body is not None else b""
        return self.request("POST", path, raw, {"Content-Type": "application/json", **(headers or {})})

    def close(self) -> None:
        self._conn.close()


def raw_request(host: str, port: int, data: bytes, timeout_s: float = 10.0) -> bytes:
    """Bytes on the wire, the answer until the server closes or goes quiet: for what http.client would not send."""
    with socket.create_connection((host, port), timeout=timeout_s) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks) and len(chunks) > 0 and _complete(b"".join(chunks)):
                    break
        except TimeoutError:
            pass
    return b"".join(chunks)


def _complete(data: bytes) -> bool:
    head, _, body = data.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return len(body) >= int(line.split(b":", 1)[1])
    return False


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


class EventStream:
    """An SSE client: (event, data) pairs as they arrive; comments and retry hints are kept apart."""

    def __init__(self, base: str, path: str = "/api/events/", headers: dict[str, str] | None = None) -> None:
        parts = urlsplit(base)
        self._conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 80, timeout=30)
        self._conn.request("GET", path, headers=headers or {})
        self.response = self._conn.getresponse()
        self.comments: list[str] = []
        self.retry: int | None = None

    def events(self) -> Iterator[tuple[str, str]]:
        event, data = "message", list[str]()
        while True:
            line = self.response.readline()
            if not line:
                return
            text = line.decode("utf-8").rstrip("\r\n")
            if text == "":
                if data:
                    yield event, "\n".join(data)
                event, data = "message", []
            elif text.startswith(":"):
                self.comments.append(text)
            elif text.startswith("retry:"):
                self.retry = int(text.split(":", 1)[1])
            elif text.startswith("event:"):
                event = text.split(":", 1)[1].strip()
            elif text.startswith("data:"):
                data.append(text.split(":", 1)[1].removeprefix(" "))

    def settimeout(self, seconds: float) -> None:
        sock = self._conn.sock
        if sock is not None:
            sock.settimeout(seconds)

    def close(self) -> None:
        self._conn.close()
