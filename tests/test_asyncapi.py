"""docs/asyncapi.json is the contract plant integrators generate code from: current, self-contained, valid AsyncAPI 3.

The official AsyncAPI 3.0.0 JSON Schema is not available offline, so the structural checks below
encode the parts of it this document uses (required fields, allowed keys, MQTT binding fields).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import pytest

from amflow_edge import __version__
from amflow_edge.config.station import MqttSettings, StationConfig, StationSettings
from amflow_edge.messaging.asyncapi import (
    PUBLISHED_EVENTS,
    REQUEST_EXAMPLES,
    build_asyncapi,
    dump_asyncapi,
)
from amflow_edge.messaging.command_models import COMMANDS, Response
from amflow_edge.messaging.payload import Envelope, EventName, envelope, new_scan, to_wire
from amflow_edge.messaging.topics import event_topic

JsonObject = dict[str, Any]

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.json"
REGENERATE = ".venv/bin/amflow-edge asyncapi > docs/asyncapi.json"
COMPONENT_KEY = re.compile(r"^[\w\d.\-_]+$")
EXTENSION = re.compile(r"^x-[\w\d.\-_]+$")

# Allowed keys of the AsyncAPI 3.0.0 objects this document uses, from the official JSON Schema
# (each object there has additionalProperties: false, plus x- extensions).
ALLOWED = {
    "root": {"asyncapi", "id", "info", "servers", "defaultContentType", "channels", "operations", "components"},
    "info": {"title", "version", "description", "termsOfService", "contact", "license", "tags", "externalDocs"},
    "server": {
        "host",
        "pathname",
        "title",
        "summary",
        "description",
        "protocol",
        "protocolVersion",
        "variables",
        "security",
        "tags",
        "externalDocs",
        "bindings",
    },
    "channel": {
        "title",
        "description",
        "address",
        "bindings",
        "externalDocs",
        "messages",
        "parameters",
        "servers",
        "summary",
        "tags",
    },
    "parameter": {"description", "examples", "default", "enum", "location"},
    "operation": {
        "title",
        "description",
        "action",
        "bindings",
        "channel",
        "externalDocs",
        "messages",
        "reply",
        "security",
        "summary",
        "tags",
        "traits",
    },
    "reply": {"address", "channel", "messages"},
    "message": {
        "title",
        "description",
        "examples",
        "deprecated",
        "bindings",
        "contentType",
        "correlationId",
        "externalDocs",
        "headers",
        "name",
        "payload",
        "summary",
        "tags",
        "traits",
    },
    "example": {"headers", "name", "payload", "summary"},
    "mqtt_operation": {"bindingVersion", "messageExpiryInterval", "qos", "retain"},
    "mqtt_message": {"payloadFormatIndicator", "correlationData", "contentType", "responseTopic", "bindingVersion"},
}
DRAFT_2020_ONLY = {
    "$defs",
    "prefixItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentRequired",
    "dependentSchemas",
    "$dynamicRef",
    "$anchor",
}


@pytest.fixture(scope="module")
def doc() -> JsonObject:
    return build_asyncapi()


def resolve(doc: JsonObject, ref: str) -> Any:
    """A local JSON pointer (RFC 6901); KeyError when it leads nowhere."""
    if not ref.startswith("#/"):
        raise KeyError(f"{ref} is not a local reference")
    node: Any = doc
    for token in ref[2:].split("/"):
        node = node[token.replace("~1", "/").replace("~0", "~")]
    return node


def references(node: Any, path: str = "#") -> Iterator[tuple[str, str]]:
    """Every $ref, and every x-discriminator mapping target (a reference in all but name), with where it is."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            yield from references(item, f"{path}/{i}")
    elif isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield path, value
            elif key == "x-discriminator":
                yield from ((f"{path}/{key}", target) for target in value.get("mapping", {}).values())
            else:
                yield from references(value, f"{path}/{key}")


def dangling(doc: JsonObject) -> list[str]:
    problems = []
    for where, ref in references(doc):
        try:
            resolve(doc, ref)
        except (KeyError, IndexError, TypeError):
            problems.append(f"{where}: {ref}")
    return problems


def extra_keys(obj: JsonObject, kind: str) -> set[str]:
    return {key for key in obj if key not in ALLOWED[kind] and not EXTENSION.match(key)}


def first_difference(committed: str, current: str) -> str:
    for number, (old, new) in enumerate(zip(committed.splitlines(), current.splitlines(), strict=False), 1):
        if old != new:
            return f"line {number}: committed {old.strip()!r}, models give {new.strip()!r}"
    return f"committed has {len(committed.splitlines())} lines, models give {len(current.splitlines())}"


# (a) the committed document is current


def test_committed_document_matches_the_models() -> None:
    assert DOC_PATH.is_file(), f"docs/asyncapi.json is missing; generate it with: {REGENERATE}"
    committed, current = DOC_PATH.read_text(encoding="utf-8"), dump_asyncapi()
    assert committed == current, (  # no pytest string diff: it is slow and unreadable for 50 kB
        f"docs/asyncapi.json is stale ({first_difference(committed, current)}); it no longer matches the MQTT API "
        f"models. Regenerate it with: {REGENERATE}"
    )


def test_document_is_deterministic() -> None:
    assert dump_asyncapi() == dump_asyncapi()


# (b) every reference resolves


def test_every_reference_resolves(doc: JsonObject) -> None:
    assert list(references(doc)), "the reference walker found nothing; it is broken"
    assert dangling(doc) == []


def test_a_dangling_reference_is_reported(doc: JsonObject) -> None:
    broken = json.loads(json.dumps(doc))
    del broken["components"]["schemas"]["Batch"]
    assert any(ref.endswith("/Batch") for ref in dangling(broken))


# (c) commands, events and the fixed channels


def test_every_command_has_request_response_and_a_receive_operation_with_reply(doc: JsonObject) -> None:
    for command, model in COMMANDS.items():
        request, response = doc["channels"][f"request.{command}"], doc["channels"][f"response.{command}"]
        assert request["address"] == f"{{prefix}}/{{station}}/request/{command}"
        assert response["address"] == f"{{prefix}}/{{station}}/response/{command}"
        receives = [
            op
            for op in doc["operations"].values()
            if op["action"] == "receive" and resolve(doc, op["channel"]["$ref"]) is request
        ]
        assert len(receives) == 1, f"{command}: expected one receive operation"
        reply = receives[0]["reply"]
        assert resolve(doc, reply["channel"]["$ref"]) is response
        assert [resolve(doc, m["$ref"]) for m in reply["messages"]] == [response["messages"]["message"]]
        request_message = resolve(doc, request["messages"]["message"]["$ref"])
        assert resolve(doc, request_message["payload"]["$ref"])["title"] == model.model_json_schema()["title"]
        response_message = resolve(doc, response["messages"]["message"]["$ref"])
        assert resolve(doc, response_message["payload"]["$ref"])["title"] == Response.__name__
        sends = [
            op
            for op in doc["operations"].values()
            if op["action"] == "send" and resolve(doc, op["channel"]["$ref"]) is response
        ]
        assert len(sends) == 1, f"{command}: expected one send operation on its response channel"


def test_events_are_the_published_ones_with_event_id(doc: JsonObject) -> None:
    assert set(PUBLISHED_EVENTS) <= set(get_args(EventName))
    events = {name.removeprefix("event.") for name in doc["channels"] if name.startswith("event.")}
    assert events == set(get_args(EventName)), "every AM-Vision 3.7 scan event the station publishes is documented"
    assert events == {
        "scan.capture",
        "scan.quality_control",
        "scan.assign",
        "scan.reassign",
        "scan.unassign",
        "scan.reject",
    }
    for event in events:
        message = resolve(doc, doc["channels"][f"event.{event}"]["messages"]["message"]["$ref"])
        assert "event_id" in message["description"]
        assert message["x-mqtt-user-properties"]["event_id"]["type"] == "string"


def test_bindings_qos_1_and_retain_only_for_availability_and_state(doc: JsonObject) -> None:
    for name, operation in doc["operations"].items():
        mqtt = operation["bindings"]["mqtt"]
        assert mqtt["qos"] == 1, name
        assert mqtt.get("retain", False) is (name in {"send.availability", "send.state"}), name


def test_addresses_are_the_topics_the_station_uses(doc: JsonObject) -> None:
    cfg = StationConfig.model_construct(station=StationSettings(id="line-1"), mqtt=MqttSettings(topic_prefix="plant"))
    topics = {"availability": cfg.topic("availability"), "state": cfg.topic("state")}
    topics |= {f"event.{event}": event_topic(cfg, event) for event in PUBLISHED_EVENTS}
    for command in COMMANDS:
        topics |= {
            f"request.{command}": cfg.topic("request", command),
            f"response.{command}": cfg.topic("response", command),
        }
    addresses = {
        name: channel["address"].format(prefix="plant", station="line-1") for name, channel in doc["channels"].items()
    }
    assert addresses == topics


# (d) AsyncAPI 3.0.0 structure (the official JSON Schema is not available offline)


def test_root_info_and_servers(doc: JsonObject) -> None:
    assert doc["asyncapi"] == "3.0.0"
    assert extra_keys(doc, "root") == set()
    assert extra_keys(doc["info"], "info") == set()
    assert doc["info"]["title"] == "amflow-edge station MQTT API" and doc["info"]["version"] == __version__
    assert "AM-Vision 3.7" in doc["info"]["description"] and "MQTT v5" in doc["info"]["description"]
    for server in doc["servers"].values():
        assert extra_keys(server, "server") == set()
        assert server["host"] and server["protocol"] == "mqtt" and server["protocolVersion"] == "5"


def test_channels_have_address_messages_and_declared_parameters(doc: JsonObject) -> None:
    for name, channel in doc["channels"].items():
        assert extra_keys(channel, "channel") == set(), name
        assert isinstance(channel["address"], str) and channel["messages"], name
        parameters = set(re.findall(r"{(\w+)}", channel["address"]))
        assert parameters == set(channel["parameters"]), name
        for parameter in channel["parameters"].values():
            assert extra_keys(resolve(doc, parameter["$ref"]), "parameter") == set()


def test_operations_point_into_their_channels(doc: JsonObject) -> None:
    for name, operation in doc["operations"].items():
        assert extra_keys(operation, "operation") == set(), name
        assert operation["action"] in {"send", "receive"}, name
        assert operation["channel"]["$ref"].startswith("#/channels/"), name
        channel_ref = operation["channel"]["$ref"]
        assert all(m["$ref"].startswith(channel_ref + "/messages/") for m in operation["messages"]), name
        assert extra_keys(operation["bindings"]["mqtt"], "mqtt_operation") == set(), name
        if "reply" in operation:
            reply = operation["reply"]
            assert extra_keys(reply, "reply") == set(), name
            assert all(m["$ref"].startswith(reply["channel"]["$ref"] + "/messages/") for m in reply["messages"])


def test_messages_and_component_names(doc: JsonObject) -> None:
    for section, entries in doc["components"].items():
        assert all(COMPONENT_KEY.match(key) for key in entries), section
    for name, message in doc["components"]["messages"].items():
        assert extra_keys(message, "message") == set(), name
        assert "payload" in message and message["contentType"], name
        assert all(extra_keys(example, "example") == set() for example in message.get("examples", [])), name
        assert extra_keys(message.get("bindings", {}).get("mqtt", {}), "mqtt_message") == set(), name


def test_schemas_are_asyncapi_schema_objects(doc: JsonObject) -> None:
    """AsyncAPI's Schema Object is draft-07 plus a string `discriminator`; pydantic writes 2020-12 and OpenAPI's."""

    def walk(node: Any, path: str) -> Iterator[str]:
        if isinstance(node, list):
            for i, item in enumerate(node):
                yield from walk(item, f"{path}/{i}")
        elif isinstance(node, dict):
            for key, value in node.items():
                if key in DRAFT_2020_ONLY or (key == "discriminator" and not isinstance(value, str)):
                    yield f"{path}/{key}"
                if key == "properties":
                    for prop, schema in value.items():
                        yield from walk(schema, f"{path}/properties/{prop}")
                elif not key.startswith("x-"):
                    yield from walk(value, f"{path}/{key}")

    assert list(walk(doc["components"]["schemas"], "#/components/schemas")) == []
    assert list(walk({"a": {"discriminator": {"propertyName": "x"}}}, "#")) == ["#/a/discriminator"]


def test_schemas_are_valid_draft_07(doc: JsonObject) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    for schema in doc["components"]["schemas"].values():
        jsonschema.Draft7Validator.check_schema(schema)


# (e) examples are real, and real messages fit the document's schemas


def test_every_request_message_has_examples_the_model_accepts(doc: JsonObject) -> None:
    assert set(REQUEST_EXAMPLES) == set(COMMANDS)
    for command, model in COMMANDS.items():
        message = doc["components"]["messages"][f"request.{command}"]
        assert message["examples"], command
        for example in message["examples"]:
            model.model_validate_json(json.dumps(example["payload"]))


def payload_validator(doc: JsonObject, message: str) -> Any:
    """A draft-07 validator of a message's payload whose local $refs resolve inside the document."""
    jsonschema = pytest.importorskip("jsonschema")
    payload = doc["components"]["messages"][message]["payload"]
    return jsonschema.Draft7Validator({"allOf": [payload], "components": doc["components"]})


def test_request_examples_fit_the_documented_schemas(doc: JsonObject) -> None:
    for command in COMMANDS:
        validator = payload_validator(doc, f"request.{command}")
        for example in REQUEST_EXAMPLES[command]:
            assert list(validator.iter_errors(example)) == [], command
    assert not payload_validator(doc, "request.qc").is_valid({"scan": str(uuid.uuid4()), "pass": "yes"})
    assert not payload_validator(doc, "request.session").is_valid({"action": "pause"})


def test_what_the_station_sends_fits_the_documented_schemas(doc: JsonObject) -> None:
    scan = new_scan(str(uuid.uuid1()), datetime.now(UTC), str(uuid.uuid4()), camera_count=5)
    event = json.loads(to_wire(envelope("scan.capture", scan, 13, "mqtt://127.0.0.1:1883/amflow/s/event")))
    Envelope.model_validate(event)
    assert list(payload_validator(doc, "scan.capture").iter_errors(event)) == []
    assert not payload_validator(doc, "scan.quality_control").is_valid(event), "hook.event is pinned per channel"
    answer = json.loads(Response(status="ok", command="qc", scan=scan.uuid, data=scan).model_dump_json())
    assert list(payload_validator(doc, "response").iter_errors(answer)) == []
    assert payload_validator(doc, "availability").is_valid("offline")


def test_the_cli_prints_the_committed_document(capsys: pytest.CaptureFixture[str]) -> None:
    from amflow_edge.cli.main import main

    assert main(["asyncapi"]) == 0
    assert capsys.readouterr().out == DOC_PATH.read_text()
