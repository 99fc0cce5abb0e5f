"""Station requests over MQTT: every body validated, every request answered, good or bad.

A plant system that sends a malformed request must learn why from the answer, and the
station must change nothing. Validation happens here, before any handler runs; handlers
answer through `Reply` exactly once, possibly later (a capture answers when the scan is stored).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import structlog
from pydantic import BaseModel, RootModel, ValidationError

from amflow_edge.messaging.command_models import COMMANDS, Response
from amflow_edge.ops.log_limit import RateLimitedLog, rate_limited_warnings

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024

Responder = Callable[[str, bytes, Any], None]
Reply = Callable[[Response], None]
Handler = Callable[[Any, Reply], None]


class CommandRefusedError(Exception):
    """Raised by a handler when the request is well-formed but cannot be done now; nothing was changed."""


def problems(exc: ValidationError) -> str:
    errors = exc.errors(include_url=False)
    if errors and errors[0]["type"] == "json_invalid":
        return f"body is not valid JSON: {errors[0]['msg'].removeprefix('Invalid JSON: ')}"
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


def default_refusal_log() -> RateLimitedLog:
    """Every refusal is answered, but only the first few a minute are logged in full: a client retrying a bad
    request in a loop must not fill the journal. The rest are counted per command in one line a minute."""
    return rate_limited_warnings(log, "more requests refused; not logged one by one")


class CommandHandler:
    def __init__(
        self, handlers: Mapping[str, Handler], respond: Responder, refusal_log: RateLimitedLog | None = None
    ) -> None:
        unknown = set(handlers) - set(COMMANDS)
        assert not unknown, f"handlers without a request model: {unknown}"
        self._handlers = dict(handlers)
        self._respond = respond
        self._refused = refusal_log if refusal_log is not None else default_refusal_log()

    def __call__(self, command: str, body: bytes, properties: Any) -> None:
        answered = False

        def reply(response: Response) -> None:
            nonlocal answered
            if answered:
                return
            answered = True
            if response.status == "error":
                # Counted by command; unknown names together, or a client inventing names would grow the count.
                key = command if command in self._handlers else "(unknown command)"
                self._refused("request refused", key=key, command=command, error=response.error)
            self._respond(command, response.model_dump_json().encode(), properties)

        def fail(message: str) -> None:
            reply(Response(status="error", command=command, error=message))

        if command not in self._handlers:
            return fail(f"unknown command {command!r}; known commands: {', '.join(sorted(self._handlers))}")
        if len(body) > MAX_BODY_BYTES:
            return fail(f"body of {len(body)} bytes is larger than {MAX_BODY_BYTES}")
        model = COMMANDS[command]
        if not body.strip():
            if command != "capture":
                return fail(f"empty body; send a JSON object as described for {command} in the README")
            body = b"{}"
        try:
            request: BaseModel = model.model_validate_json(body)
        except ValidationError as exc:
            return fail(problems(exc))
        try:
            self._handlers[command](request.root if isinstance(request, RootModel) else request, reply)
        except CommandRefusedError as exc:
            fail(str(exc))
        except Exception as exc:  # a handler bug must still answer, and never kill paho's thread
            log.exception("request handler failed", command=command)
            fail(f"internal error: {exc}")
