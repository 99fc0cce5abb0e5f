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


class _Answer:
    """One request's answer slot: the handler may answer on another thread (a capture, when the scan is stored)."""

    def __init__(self) -> None:
        self._done = threading.Event()
        self._payload = b""

    def set(self, payload: bytes) -> None:
        self._payload = payload
        self._done.set()

    def wait(self, timeout_s: float) -> bytes | None:
        return self._payload if self._done.wait(timeout_s) else None


class HttpRequests:
    def __init__(self, handlers: Mapping[str, Handler]) -> None:
        self._handler = CommandHandler(handlers, self._respond)

    @staticmethod
    def _respond(command: str, payload: bytes, answer: Any) -> None:
        answer.set(payload)

    def send(self, command: str, body: Mapping[str, Any], timeout_s: float) -> Response | None:
        """The handler's Response, or None when it did not answer within timeout_s (the request may still be
        carried out: a capture queued behind others)."""
        answer = _Answer()
        self._handler(command, json.dumps(body).encode(), answer)
        payload = answer.wait(timeout_s)
        return None if payload is None else Response.model_validate_json(payload)
