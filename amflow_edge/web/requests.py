"""Decisions over HTTP go through the MQTT requests' own handler: the same validation, rules and events.

The HTTP route turns its body into the MQTT request body (the scan from the path, the operator from the
credential) and hands it to a CommandHandler built on the same StationCommands handlers as the broker's;
the handler's one answer (a Response) comes back here instead of to a response topic.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from typing import Any

from amflow_edge.messaging.command_models import Response
from amflow_edge.messaging.commands import CommandHandler, Handler


class StoppingError(Exception):
    """The server stops: a request still waiting for the station's answer is released (503) instead of holding
    the shutdown up until its timeout."""


class _Answer:
    """One request's answer slot: the handler may answer on another thread (a capture, when the scan is stored)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._payload = b""
        self._released = False

    def set(self, payload: bytes) -> None:
        self._payload = payload
        self._done.set()

    def release(self) -> None:
        self._released = True
        self._done.set()

    def wait(self, timeout_s: float) -> bytes | None:
        if not self._done.wait(timeout_s):
            return None
        if self._released and not self._payload:
            raise StoppingError
        return self._payload


class HttpRequests:
    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handler = CommandHandler(handlers, self._respond)
        self._waiting: set[_Answer] = set()
        self._lock = threading.Lock()
        self._closed = False

    def close(self) -> None:
        """Every request still waiting is released with StoppingError, and new ones are refused with it."""
        with self._lock:
            self._closed = True
            waiting = list(self._waiting)
        for answer in waiting:
            answer.release()

    @staticmethod
    def _respond(command: str, payload: bytes, answer: Any) -> None:
        answer.set(payload)

    def send(self, command: str, body: Mapping[str, Any], timeout_s: float) -> Response | None:
        """The handler's Response, or None when it did not answer within timeout_s (the request may still be
        carried out: a capture queued behind others); StoppingError once the server stops."""
        answer = _Answer()
        with self._lock:
            if self._closed:
                raise StoppingError
            self._waiting.add(answer)
        try:
            self._handler(command, json.dumps(body).encode(), answer)
            payload = answer.wait(timeout_s)
        finally:
            with self._lock:
                self._waiting.discard(answer)
        return None if payload is None else Response.model_validate_json(payload)
