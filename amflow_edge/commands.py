"""Station requests over MQTT: validated bodies, and an answer for every request, good or bad.

A plant system that sends a malformed request must learn why from the answer, and the
station must change nothing; so every body is a strict pydantic model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from amflow_edge.capture import CaptureResult, Trigger

log = structlog.get_logger(__name__)

MAX_BODY_BYTES = 64 * 1024


class CaptureRequest(BaseModel):
    """Body of <prefix>/<station>/request/capture (an empty body is the same as {})."""

    model_config = ConfigDict(extra="forbid")

    design_material: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{40}_[A-Z0-9]+_[A-Z0-9]+_[A-Z0-9]+$",
        description="The part expected on the tray, if the requester knows it; becomes the scan's design_material.",
    )


class Response(BaseModel):
    """Body of <prefix>/<station>/response/<command>."""

    model_config = ConfigDict(extra="forbid")

    status: Literal["ok", "error"] = Field(description="Whether the request was carried out.")
    command: str = Field(description="The command this answers.")
    scan: str | None = Field(default=None, description="UUID of the scan the request produced or touched.")
    error: str | None = Field(default=None, description="What was wrong and how to fix it.")


Responder = Callable[[str, bytes, Any], None]
Submit = Callable[[Trigger], bool]


def _problems(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


class CommandHandler:
    def __init__(self, submit: Submit, respond: Responder) -> None:
        self._submit = submit
        self._respond = respond

    def __call__(self, command: str, body: bytes, properties: Any) -> None:
        def answer(response: Response) -> None:
            self._respond(command, response.model_dump_json().encode(), properties)

        def fail(message: str) -> None:
            log.warning("request refused", command=command, error=message)
            answer(Response(status="error", command=command, error=message))

        if len(body) > MAX_BODY_BYTES:
            return fail(f"body of {len(body)} bytes is larger than {MAX_BODY_BYTES}")
        if command != "capture":
            return fail(f"unknown command {command!r}; known commands: capture")
        try:
            data = json.loads(body) if body.strip() else {}
            request = CaptureRequest.model_validate(data)
        except json.JSONDecodeError as exc:
            return fail(f"body is not valid JSON: {exc.msg} at position {exc.pos}")
        except ValidationError as exc:
            return fail(_problems(exc))

        def done(result: CaptureResult) -> None:
            if result.ok:
                answer(Response(status="ok", command=command, scan=result.uuid))
            else:
                answer(Response(status="error", command=command, error=result.error))

        self._submit(Trigger(source="mqtt", design_material=request.design_material, done=done))
