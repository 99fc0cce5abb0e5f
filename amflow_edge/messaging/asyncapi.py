"""The station's MQTT API as an AsyncAPI 3.0 document, generated from the pydantic models.

Plant integrators use AsyncAPI tooling (viewers, code and contract-test generators) rather than
our README, so docs/asyncapi.json is their contract. It is built from the very models the station
validates requests with and serialises its messages with, and a test compares the committed file
with this output, so the document cannot drift from what is on the wire.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from amflow_edge import __version__
from amflow_edge.messaging.command_models import COMMANDS, Response
from amflow_edge.messaging.payload import Envelope, EventName
from amflow_edge.station.state import StationState

JsonObject = dict[str, Any]
SchemaRefs = dict[tuple[Any, JsonSchemaMode], JsonObject]
"""pydantic's schema references, keyed by (model, mode); its models may also be pydantic dataclasses."""

SCHEMA_REF = "#/components/schemas/{model}"
MQTT_BINDING = "0.2.0"
PUBLISHED_EVENTS: tuple[EventName, ...] = (
    "scan.capture",
    "scan.quality_control",
    "scan.assign",
    "scan.reassign",
    "scan.unassign",
    "scan.reject",
)
"""Every AM-Vision 3.7 scan event; what each does to the scan is in station/assignments.py and the README."""

EVENT_WHEN: dict[EventName, str] = {
    "scan.capture": "Once per scan, when all of its images are durably stored.",
    "scan.quality_control": "A change of quality control: machine inspection, operator decision, re-evaluation; "
    "also a scan identified without an assignment (a design of no part, or one beyond every copy of its part: "
    "then qc_needs_review is true).",
    "scan.assign": "The scan was assigned to a part of the active batch: by the station's identification "
    "(assignment.manual false) or by an operator (manual true). design_material and output are the part's.",
    "scan.reassign": "An operator moved an assigned scan to another part; design_material and output follow the part.",
    "scan.unassign": "The scan lost its assignment: assignment and design_material are null, output is the "
    "session's, and inspection results against the old design are cleared.",
    "scan.reject": "The scan is no part of this batch: assignment, design_material, output and inspection results "
    "are cleared, qc_comment says why.",
}
"""When each event is sent; every one carries the whole scan after the change."""

_SCAN = "6f1c0a2e-1d2b-11ef-9a4c-0242ac120002"
_DESIGN = "3f786850e387550fdab836ed7e6dc881de23001b_MJF_PA12_GREY"
REQUEST_EXAMPLES: dict[str, list[JsonObject]] = {
    "capture": [{}, {"design_material": _DESIGN}],
    "qc": [{"scan": _SCAN, "pass": False, "comment": "warped corner", "reasons": ["warp"], "operator": "badge-0417"}],
    "reevaluate": [{"scan": _SCAN, "profile": "strict"}],
    "session": [
        {
            "action": "start",
            "batch": {"id": "PRTS_SRC_102_DAT_20260309_VER_A", "title": "Brackets, March"},
            "designs": [{"design_material": _DESIGN, "mesh": "bracket.stl", "units": "mm"}],
            "output": {"id": 3},
        },
        {
            "action": "start",
            "batch": {"id": "PRTS_SRC_102_DAT_20260309_VER_A", "title": "Brackets, March"},
            "parts": [
                {
                    "part_id": "2471584",
                    "part_title": "montageblok groot step",
                    "design_material": _DESIGN,
                    "copies": 4,
                    "output": {"id": 2},
                    "mesh": "bracket.stl",
                }
            ],
            "output": {"id": 3},
        },
        {"action": "end"},
    ],
    "assign": [{"scan": _SCAN, "part_id": "2471584"}],
    "reassign": [{"scan": _SCAN, "part_id": "2471585"}],
    "unassign": [{"scan": _SCAN}],
    "reject": [{"scan": _SCAN, "comment": "not of this batch: a part of batch 20260309_01B"}],
    "resend": [{"stream": "0b9f3f4e-2c55-4d0e-9a57-3f1c1e2d4a10", "from_seq": 1841, "to_seq": 1843}],
}
"""Request bodies shown to integrators; a test validates each with its request model, so they are real."""

_DESCRIPTION = (
    "MQTT v5 API of an amflow-edge part-scanning station. Events carry exactly the AM-Vision 3.7 webhook "
    'payload contract (`{"hook": ..., "data": <Scan>}`), so AM-Vision subscribers work unchanged. Every topic '
    "starts with `{prefix}/{station}/`. The MQTT v5 bindings give QoS and retain per operation; what bindings "
    "cannot express (the `event_id` user property, ResponseTopic and CorrelationData) is in the descriptions and "
    "in `x-mqtt-user-properties`. Generated from the station's pydantic models by `amflow-edge asyncapi`."
)
_STREAM = (
    "MQTT v5 user property `stream`: the id of the station's outbox (it changes only when the station's database "
    "is rebuilt). The state topic's `outbox.stream` names the current one."
)
_SEQ = (
    "MQTT v5 user property `seq`: the event's place in its stream, 1, 2, 3, …, the same in a resend. A seq up to the "
    "state's `outbox.acknowledged_through_seq` that never arrived was lost behind the broker: ask for it again with "
    "request/resend."
)
_EVENT_ID = (
    "MQTT v5 user property `event_id`: a UUID unique per event. Delivery is at least once and in order per scan, "
    "so a subscriber de-duplicates by `event_id`."
)


def _schemas() -> tuple[SchemaRefs, JsonObject]:
    """All models in one namespace: a shared sub-model is defined once, and pydantic renames on a mode clash."""
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [(model, "validation") for model in COMMANDS.values()]
    models += [(model, "serialization") for model in (Response, Envelope, StationState)]
    refs, top = models_json_schema(models, by_alias=True, ref_template=SCHEMA_REF)
    return refs, {name: _asyncapi_schema(schema) for name, schema in top.get("$defs", {}).items()}


def _asyncapi_schema(node: Any) -> Any:
    """AsyncAPI's `discriminator` is a property name whose values name schemas, not pydantic's OpenAPI object.

    So pydantic's is kept only as `x-discriminator`; the oneOf branches already pin the property with `const`.
    """
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: JsonObject = {}
    for key, value in node.items():
        if key == "properties":  # property names are data, never keywords
            out[key] = {name: _asyncapi_schema(schema) for name, schema in value.items()}
        elif key == "discriminator" and isinstance(value, dict):
            out["x-discriminator"] = value
        else:
            out[key] = _asyncapi_schema(value)
    return out


def _ref(*path: str) -> JsonObject:
    return {"$ref": "#/" + "/".join(path)}


def _channel(address: str, description: str, message: str) -> JsonObject:
    """Each channel carries one message, under the key `message`, so operations can point at it uniformly."""
    return {
        "address": "{prefix}/{station}/" + address,
        "description": description,
        "messages": {"message": _ref("components", "messages", message)},
        "parameters": {name: _ref("components", "parameters", name) for name in ("prefix", "station")},
    }


def _operation(action: str, channel: str, description: str, retain: bool | None = None) -> JsonObject:
    """QoS 1 everywhere: at least once, so every consumer, the station included, must tolerate duplicates."""
    mqtt: JsonObject = {"bindingVersion": MQTT_BINDING, "qos": 1}
    if retain is not None:
        mqtt["retain"] = retain
    return {
        "action": action,
        "bindings": {"mqtt": mqtt},
        "channel": _ref("channels", channel),
        "description": description,
        "messages": [_ref("channels", channel, "messages", "message")],
    }


def _message(name: str, description: str, payload: JsonObject, **extra: Any) -> JsonObject:
    return {"contentType": "application/json", "description": description, "name": name, "payload": payload} | extra


def _event_message(event: EventName, envelope: JsonObject) -> JsonObject:
    """The Envelope schema narrowed to this channel's hook.event, so a consumer knows what arrives where."""
    pinned = {"properties": {"hook": {"properties": {"event": {"const": event}}}}}
    text = (
        f"AM-Vision 3.7 webhook payload of `{event}`: `hook` names the subscription and event, `data` is the scan. "
        + EVENT_WHEN[event]
    )
    user_properties = {
        "event_id": {"description": _EVENT_ID, "format": "uuid", "type": "string"},
        "stream": {"description": _STREAM, "type": "string"},
        "seq": {"description": _SEQ, "pattern": "^[1-9][0-9]*$", "type": "string"},
    }
    return _message(
        event, f"{text} {_EVENT_ID}", {"allOf": [envelope, pinned]}, **{"x-mqtt-user-properties": user_properties}
    )


def _request_message(command: str, payload: JsonObject) -> JsonObject:
    correlation = {"description": "Optional; copied onto the answer sent to the request's ResponseTopic."}
    examples = [{"name": f"{command}-{n}", "payload": body} for n, body in enumerate(REQUEST_EXAMPLES[command], 1)]
    return _message(
        f"{command}Request",
        f"Body of a `{command}` request. Strict: unknown keys or wrong types get an `error` response and change "
        "nothing. Set an MQTT v5 ResponseTopic (and CorrelationData) to get the answer there as well.",
        payload,
        bindings={"mqtt": {"bindingVersion": MQTT_BINDING, "correlationData": correlation}},
        examples=examples,
    )


def _components(refs: SchemaRefs, schemas: JsonObject) -> JsonObject:
    availability = _message(
        "availability",
        "Plain text, not JSON: `online` on every connect; `offline` on a clean stop and as the will when the "
        "station dies.",
        {"enum": ["online", "offline"], "type": "string"},
    ) | {"contentType": "text/plain"}
    messages: JsonObject = {
        "availability": availability,
        "state": _message("state", "What a dashboard needs at a glance.", refs[(StationState, "serialization")]),
        "response": _message(
            "response",
            "The answer to a request; `error` says what was wrong and how to fix it.",
            refs[(Response, "serialization")],
        ),
    }
    messages |= {event: _event_message(event, refs[(Envelope, "serialization")]) for event in PUBLISHED_EVENTS}
    messages |= {
        f"request.{name}": _request_message(name, refs[(model, "validation")]) for name, model in COMMANDS.items()
    }
    parameters = {
        "prefix": {"default": "amflow", "description": "First topic level: config `mqtt.topic_prefix`."},
        "station": {"description": "Station id: config `station.id`.", "examples": ["station-1"]},
    }
    return {"messages": messages, "parameters": parameters, "schemas": schemas}


def _command(channels: JsonObject, operations: JsonObject, command: str) -> None:
    """A request channel the station receives on, whose reply is the command's response channel."""
    request, response = f"request.{command}", f"response.{command}"
    channels[request] = _channel(f"request/{command}", f"`{command}` requests to the station.", request)
    channels[response] = _channel(f"response/{command}", f"Answers to `{command}` requests.", "response")
    reply = {"channel": _ref("channels", response), "messages": [_ref("channels", response, "messages", "message")]}
    operations[f"receive.{request}"] = _operation(
        "receive",
        request,
        f"The station subscribes with QoS 1 in a persistent session, so `{command}` requests "
        "sent while it is away wait for it.",
    ) | {"reply": reply}
    operations[f"send.{response}"] = _operation(
        "send",
        response,
        f"Every `{command}` request is answered here, and also on the request's MQTT v5 "
        "ResponseTopic with its CorrelationData when it set one.",
        retain=False,
    )


def _channels_and_operations() -> tuple[JsonObject, JsonObject]:
    channels: JsonObject = {
        "availability": _channel("availability", "Whether the station is connected (retained).", "availability"),
        "state": _channel(
            "state",
            "JSON summary of the station (retained); re-published on connect, periodically and on change.",
            "state",
        ),
    }
    operations: JsonObject = {
        "send.availability": _operation("send", "availability", "Station availability, retained.", retain=True),
        "send.state": _operation("send", "state", "Station state, retained.", retain=True),
    }
    for event in PUBLISHED_EVENTS:
        channels[f"event.{event}"] = _channel(f"event/{event}", f"`{event}` events (not retained).", event)
        operations[f"send.event.{event}"] = _operation("send", f"event.{event}", f"Publish `{event}`.", retain=False)
    for command in COMMANDS:
        _command(channels, operations, command)
    return channels, operations


def build_asyncapi() -> JsonObject:
    refs, schemas = _schemas()
    channels, operations = _channels_and_operations()
    server = {
        "host": "127.0.0.1:1883",
        "protocol": "mqtt",
        "protocolVersion": "5",
        "description": "Example only: "
        "a mosquitto on the station itself (the default mqtt.host and mqtt.port); use your plant broker.",
    }
    return {
        "asyncapi": "3.0.0",
        "channels": channels,
        "components": _components(refs, schemas),
        "defaultContentType": "application/json",
        "info": {"description": _DESCRIPTION, "title": "amflow-edge station MQTT API", "version": __version__},
        "operations": operations,
        "servers": {"example-local-mosquitto": server},
    }


def dump_asyncapi() -> str:
    """Sorted keys and a final newline, so regenerating an unchanged API leaves docs/asyncapi.json byte-identical."""
    return json.dumps(build_asyncapi(), indent=2, sort_keys=True) + "\n"
