"""A plant's webhook endpoint for tests: a real HTTP server that records every POST and answers as told.

It stands for an MES such as the one AM-Vision's example posts to; what it can be told to do
(answer 500 for a while, refuse with 401, answer slowly) is what such endpoints do in plants.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Posted:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    """What the receiver answered."""
    at: float
    """Unix time it arrived."""

    @property
    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def event_id(self) -> str:
        return self.headers["webhook-id"]


class WebhookReceiver:
    """Listens on host:port (port 0: a free one); `answer` and `delay_s` may be changed while it runs."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.answer = 200
        self.trickle_s = 0.0
        """Send the answer's body a byte at a time, this long apart: a receiver that never quite answers."""
        self.answer_for: dict[str, int] = {}
        """Per path, overriding `answer`: one receiver serves several targets."""
        self.delay_s = 0.0
        self.posted: list[Posted] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the station's client uses it

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                status = receiver.answer_for.get(self.path, receiver.answer)
                with receiver._lock:
                    receiver.posted.append(
                        Posted(self.path, {k.lower(): v for k, v in self.headers.items()}, body, status, time.time())
                    )
                reply = b"{}" if status < 400 else b'{"detail": "told to refuse"}'
                if receiver.trickle_s:
                    reply = b" " * 64
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                with contextlib.suppress(ConnectionError):  # the station gave up on a slow answer
                    if receiver.trickle_s:
                        for byte in reply:
                            self.wfile.write(bytes([byte]))
                            self.wfile.flush()
                            time.sleep(receiver.trickle_s)
                    else:
                        self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        address = self._server.server_address
        self.host, self.port = str(address[0]), int(address[1])
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhook-receiver", daemon=True)
        self._thread.start()

    def url(self, path: str = "/api/1.0/amflow/update") -> str:
        return f"http://{self.host}:{self.port}{path}"

    def accepted(self, path: str | None = None) -> list[Posted]:
        """Requests answered 2xx, in arrival order."""
        with self._lock:
            return [p for p in self.posted if 200 <= p.status < 300 and (path is None or p.path == path)]

    def refused(self, path: str | None = None) -> list[Posted]:
        with self._lock:
            return [p for p in self.posted if p.status >= 300 and (path is None or p.path == path)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
