"""The reference plant consumer (`amflow-edge consume`) against a real mosquitto and a real PostgreSQL.

Each test gets a database of its own (created on the machine's PostgreSQL, dropped afterwards), so tests never
see each other's rows, and runs consumers as the real command in subprocesses: killing one is the point.
"""

from __future__ import annotations

import ast
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from amflow_edge.messaging.payload import EventName, Scan, envelope, new_scan, to_wire
from amflow_edge.plant.settings import load_settings
from tests.import_graph import REPO, import_graph, imported_names, module_files
from tests.mqtt_helpers import Broker, Subscriber, free_port
from tests.polling import wait_for
from tests.postgres import admin_dsn, fresh_database

TZ = ZoneInfo("Europe/Amsterdam")
T0 = datetime(2026, 3, 11, 16, 36, 57, 247589, tzinfo=TZ)
SESSION = str(uuid.uuid4())


# --- the database ---


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database() as database:
        yield database


def query(dsn: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return conn.execute(sql.encode(), params).fetchall()


def count(dsn: str, table: str) -> int:
    """A consumer creates its tables before it subscribes: they exist once it is ready."""
    return int(query(dsn, f"SELECT count(*) FROM {table}")[0][0])


# --- what stations publish ---


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    event_id: str
    scan: Scan
    event: str


def captured(at: datetime) -> Scan:
    return new_scan(str(uuid.uuid1()), at, SESSION, camera_count=5)


def changed(scan: Scan, at: datetime, **changes: Any) -> Scan:
    return Scan.model_validate({**scan.model_dump(), "modified": at.isoformat(timespec="microseconds"), **changes})


def message(station: str, event: EventName, scan: Scan, event_id: str | None = None) -> Message:
    topic = f"amflow/{station}/event/{event}"
    payload = to_wire(envelope(event, scan, 1, f"mqtt://127.0.0.1:1883/{topic}"))
    return Message(topic, payload, event_id or str(uuid.uuid4()), scan, event)


def lifecycle(station: str, start: datetime) -> list[Message]:
    """A scan's three events, each a later state: captured, assigned, inspected."""
    scan = captured(start)
    assigned = changed(
        scan,
        start + timedelta(seconds=1),
        design_material="193d3830c6e41e3f3cc8114508119fedd08d04f7_SLS_PAGF_GREY",
    )
    inspected = changed(
        assigned,
        start + timedelta(seconds=2),
        inspectionreport=str(uuid.uuid4()),
        qc_machine=True,
        qc_pass=True,
    )
    return [
        message(station, "scan.capture", scan),
        message(station, "scan.assign", assigned),
        message(station, "scan.quality_control", inspected),
    ]


def user_properties(**values: str) -> Properties:
    properties = Properties(PacketTypes.PUBLISH)
    properties.UserProperty = list(values.items())
    return properties


def publish(publisher: Subscriber, item: Message) -> None:
    publisher.publish(item.topic, item.payload, user_properties(event_id=item.event_id))


@pytest.fixture
def publisher(broker: Broker) -> Iterator[Subscriber]:
    """A station's side of the broker: QoS 1, each message acknowledged before the next."""
    client = Subscriber(broker, ["nothing/#"])
    yield client
    client.close()


# --- consumers as the real command ---


class ConsumerProcess:
    def __init__(self, log: Path, args: list[str]) -> None:
        self.log = log
        with log.open("ab") as stderr:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "amflow_edge.cli", "--log-json", "consume", *args],
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return out

    def logged(self, event: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("event") == event]

    def wait_ready(self) -> None:
        assert wait_for(lambda: bool(self.logged("consuming")) or self.proc.poll() is not None, 30)
        assert self.proc.poll() is None, self.log.read_text()

    def stop(self) -> dict[str, Any]:
        """SIGTERM; the counts it logs as it stops."""
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0, self.log.read_text()[-3000:]
        [summary] = self.logged("consumer stopped")
        return summary

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


class Consumers:
    def __init__(self, tmp_path: Path, broker: Broker, dsn: str) -> None:
        self._tmp_path = tmp_path
        self._broker = broker
        self._dsn = dsn
        self.started: list[ConsumerProcess] = []

    def start(self, client_id: str, group: str = "mes", wait: bool = True) -> ConsumerProcess:
        args = ["--broker", f"{self._broker.host}:{self._broker.port}", "--dsn", self._dsn]
        args += ["--group", group, "--client-id", client_id]
        consumer = ConsumerProcess(self._tmp_path / f"{client_id}-{len(self.started)}.log", args)
        self.started.append(consumer)
        if wait:
            consumer.wait_ready()
        return consumer


@pytest.fixture
def consumers(tmp_path: Path, broker: Broker, dsn: str) -> Iterator[Consumers]:
    started = Consumers(tmp_path, broker, dsn)
    yield started
    for consumer in started.started:
        if consumer.proc.poll() is None:
            consumer.kill()


def handled(summary: dict[str, Any]) -> int:
    return sum(int(summary.get(key, 0)) for key in ("stored", "stale", "duplicate", "rejected"))


def assert_latest(dsn: str, expected: list[Message]) -> None:
    """Every scan once, holding the state of its latest event."""
    latest: dict[str, Message] = {}
    for item in expected:
        if item.scan.uuid not in latest or item.scan.modified > latest[item.scan.uuid].scan.modified:
            latest[item.scan.uuid] = item
    rows = {
        str(row[0]): row[1:]
        for row in query(dsn, "SELECT uuid, station, last_event, last_event_id, modified, payload FROM amflow_scans")
    }
    assert set(rows) == set(latest)
    for scan_uuid, item in latest.items():
        station, last_event, last_event_id, modified, payload = rows[scan_uuid]
        assert payload == json.loads(item.scan.model_dump_json())
        assert (station, last_event, str(last_event_id)) == (item.topic.split("/")[1], item.event, item.event_id)
        assert modified == datetime.fromisoformat(item.scan.modified)


# --- the tests ---


def test_two_consumers_in_a_group_split_the_events_and_store_each_once(
    consumers: Consumers, publisher: Subscriber, dsn: str
) -> None:
    first, second = consumers.start("consumer-a", wait=False), consumers.start("consumer-b", wait=False)
    first.wait_ready()  # both made the tables at once: the advisory lock keeps CREATE … IF NOT EXISTS apart
    second.wait_ready()
    scans = [lifecycle(f"station-{i % 4}", T0 + timedelta(minutes=i)) for i in range(20)]
    sent = [scan[step] for step in range(3) for scan in scans]
    for item in sent:
        publish(publisher, item)

    assert wait_for(lambda: count(dsn, "amflow_scan_events") == len(sent), 30)
    one, other = first.stop(), second.stop()
    assert handled(one) > 0 and handled(other) > 0, (one, other)
    assert handled(one) + handled(other) == len(sent)
    assert one.get("duplicate", 0) == other.get("duplicate", 0) == 0
    by_consumer = dict(query(dsn, "SELECT consumer, count(*) FROM amflow_scan_events GROUP BY consumer"))
    assert set(by_consumer) == {"consumer-a", "consumer-b"}
    assert {str(row[0]) for row in query(dsn, "SELECT event_id FROM amflow_scan_events")} == {m.event_id for m in sent}
    assert_latest(dsn, sent)


def test_an_event_sent_twice_is_stored_once_and_does_not_touch_the_scan_again(
    consumers: Consumers, publisher: Subscriber, dsn: str
) -> None:
    consumer = consumers.start("consumer-a")
    capture, _, inspected = lifecycle("station-1", T0)
    publish(publisher, capture)
    publish(publisher, inspected)
    assert wait_for(lambda: query(dsn, "SELECT last_event_id::text FROM amflow_scans") == [(inspected.event_id,)])
    before = query(dsn, "SELECT xmin::text, updated_at FROM amflow_scans")

    publish(publisher, inspected)  # a station restarted before the broker's PUBACK reached it
    publish(publisher, capture)
    sentinel = lifecycle("station-2", T0)[0]
    publish(publisher, sentinel)
    assert wait_for(lambda: count(dsn, "amflow_scan_events") == 3)

    assert query(dsn, "SELECT xmin::text, updated_at FROM amflow_scans WHERE uuid = %s", (capture.scan.uuid,)) == before
    assert sorted(str(row[0]) for row in query(dsn, "SELECT event_id FROM amflow_scan_events")) == sorted(
        [capture.event_id, inspected.event_id, sentinel.event_id]
    )
    assert count(dsn, "amflow_rejected_messages") == 0
    assert consumer.stop().get("duplicate") == 2
    assert_latest(dsn, [capture, inspected, sentinel])


def test_an_older_event_arriving_late_does_not_overwrite_the_latest_state(
    consumers: Consumers, publisher: Subscriber, dsn: str
) -> None:
    consumers.start("consumer-a")
    capture, assigned, inspected = lifecycle("station-1", T0)
    for item in (inspected, capture, assigned):
        publish(publisher, item)
    # Equal `modified`, different content (a stepped clock): the same winner whichever arrives first.
    tied = []
    for order in ((0, 1), (1, 0)):
        scan = captured(T0)
        variants = [
            message("station-2", "scan.quality_control", changed(scan, T0 + timedelta(seconds=5), qc_comment=text))
            for text in ("first", "second")
        ]
        for index in order:
            publish(publisher, variants[index])
        tied.append(scan.uuid)
    assert wait_for(lambda: count(dsn, "amflow_scan_events") == 7)

    row = query(dsn, "SELECT last_event_id::text, payload FROM amflow_scans WHERE uuid = %s", (capture.scan.uuid,))
    assert row == [(inspected.event_id, json.loads(inspected.scan.model_dump_json()))]
    events = query(
        dsn, "SELECT event FROM amflow_scan_events WHERE scan_uuid = %s ORDER BY modified", (capture.scan.uuid,)
    )
    assert [e for (e,) in events] == ["scan.capture", "scan.assign", "scan.quality_control"]
    comments = [
        query(dsn, "SELECT payload->>'qc_comment' FROM amflow_scans WHERE uuid = %s", (scan_uuid,))[0][0]
        for scan_uuid in tied
    ]
    assert comments[0] == comments[1]


def test_a_consumer_killed_mid_batch_and_restarted_loses_nothing_and_stores_nothing_twice(
    consumers: Consumers, publisher: Subscriber, dsn: str
) -> None:
    victim, survivor = consumers.start("consumer-a"), consumers.start("consumer-b")
    scans = [lifecycle(f"station-{i % 5}", T0 + timedelta(minutes=i)) for i in range(100)]
    sent = [scan[step] for step in range(3) for scan in scans]
    half = len(sent) // 2
    for item in sent[:half]:
        publish(publisher, item)
    stored_by_victim = "SELECT count(*) FROM amflow_scan_events WHERE consumer = 'consumer-a'"
    assert wait_for(lambda: query(dsn, stored_by_victim)[0][0] >= 10)
    # The broker hands it up to receive_maximum (100) events at a time, faster than it stores them: it dies
    # holding events it has not stored, and some it has stored but not yet acknowledged.
    victim.kill()
    for item in sent[half:]:
        publish(publisher, item)
    for item in sent[: len(sent) : 10]:  # a station's restart sends some again
        publish(publisher, item)
    restarted = consumers.start("consumer-a")

    assert wait_for(lambda: count(dsn, "amflow_scan_events") == len(sent), 30)
    again = restarted.stop()
    survivor.stop()
    assert handled(again) > 0  # the session kept what the broker had handed it, and gave it back
    ids = [str(row[0]) for row in query(dsn, "SELECT event_id FROM amflow_scan_events")]
    assert sorted(ids) == sorted(m.event_id for m in sent)
    assert count(dsn, "amflow_rejected_messages") == 0
    assert_latest(dsn, sent)


def test_a_poison_message_is_kept_as_a_reject_acknowledged_and_not_delivered_again(
    consumers: Consumers, publisher: Subscriber, dsn: str
) -> None:
    consumer = consumers.start("consumer-a")
    good = lifecycle("station-1", T0)[0]
    broken = json.loads(good.payload)
    del broken["data"]["qc_reasons"]
    nul = message("station-1", "scan.capture", changed(captured(T0), T0, qc_comment="a\x00b"))
    poison = [
        (good.topic, good.payload, user_properties()),
        (good.topic, b"not json", user_properties(event_id=str(uuid.uuid4()))),
        (good.topic, json.dumps(broken).encode(), user_properties(event_id=str(uuid.uuid4()))),
        ("amflow/station-1/event/scan.reject", good.payload, user_properties(event_id=str(uuid.uuid4()))),
        (nul.topic, nul.payload, user_properties(event_id=nul.event_id)),
        (good.topic, good.payload, user_properties(event_id="not-a-uuid")),
    ]
    for topic, payload, properties in poison:
        publisher.publish(topic, payload, properties)
    publish(publisher, good)
    assert wait_for(lambda: count(dsn, "amflow_scan_events") == 1)

    reasons = [row[0] for row in query(dsn, "SELECT reason FROM amflow_rejected_messages ORDER BY id")]
    assert len(reasons) == len(poison), reasons
    assert "expected one MQTT v5 user property event_id (found none)" in reasons[0]
    assert "not an AM-Vision 3.7 envelope" in reasons[1] and "data.qc_reasons" in reasons[2]
    assert "does not match the topic" in reasons[3] and "PostgreSQL refused the event" in reasons[4]
    assert "event_id is not a UUID" in reasons[5]
    kept = query(dsn, "SELECT topic, payload FROM amflow_rejected_messages ORDER BY id")
    assert [(topic, bytes(payload)) for topic, payload in kept] == [(t, p) for t, p, _ in poison]
    assert consumer.stop().get("rejected") == len(poison)

    restarted = consumers.start("consumer-a")
    later = lifecycle("station-1", T0 + timedelta(minutes=1))[0]
    publish(publisher, later)
    assert wait_for(lambda: count(dsn, "amflow_scan_events") == 2)
    assert restarted.stop().get("rejected", 0) == 0
    assert count(dsn, "amflow_rejected_messages") == len(poison)


def test_while_postgresql_is_away_nothing_is_acknowledged_and_all_is_stored_when_it_is_back(
    consumers: Consumers, publisher: Subscriber, dsn: str
) -> None:
    consumer = consumers.start("consumer-a")
    first, *rest = lifecycle("station-1", T0)
    publish(publisher, first)
    assert wait_for(lambda: count(dsn, "amflow_scan_events") == 1)
    name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(admin_dsn(), autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false".encode())
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        for item in rest:
            publish(publisher, item)
        refused = "not currently accepting connections"
        assert wait_for(lambda: any(refused in line.get("reason", "") for line in consumer.lines()))
        admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true".encode())

    assert wait_for(lambda: count(dsn, "amflow_scan_events") == 3)
    assert consumer.logged("PostgreSQL is back")
    assert consumer.stop().get("stored") == 3
    assert_latest(dsn, [first, *rest])


# --- the command line ---


def run_consume(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "amflow_edge.cli", "consume", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_wrong_input_is_named_with_the_setting_and_exit_2(tmp_path: Path) -> None:
    base = ["--dsn", "postgresql://postgres@127.0.0.1/test", "--group", "mes", "--client-id", "c1"]
    cases: list[tuple[list[str], str]] = [
        (["--dsn", "nonsense", "--group", "mes", "--client-id", "c1"], "postgres.dsn (--dsn): not a PostgreSQL"),
        ([*base, "--broker", "host:port:x"], "--broker 'host:port:x': expected HOST:PORT"),
        ([*base, "--broker", "broker:99999"], "broker.port: input should be less than or equal to 65535"),
        (
            ["--dsn", "postgresql:///x", "--group", "a/b", "--client-id", "c1"],
            "subscription.group: string should match",
        ),
        (["--dsn", "postgresql:///x", "--group", "mes"], "subscription.client_id: field required (found nothing)"),
        ([*base, "--stations", "#"], "subscription.stations"),
    ]
    config = tmp_path / "plant.toml"
    config.write_text('[subscription]\ngroup = "mes"\nclient_id = "c1"\nclinet = 1\n')
    cases.append((["--config", str(config), "--dsn", "postgresql:///x"], "subscription.clinet: unknown setting"))
    for args, expected in cases:
        proc = run_consume(*args)
        assert proc.returncode == 2 and expected in proc.stderr, (args, proc.stderr)
        assert "nonsense" not in proc.stderr or "--dsn" in args


def test_an_unreachable_database_or_broker_is_said_plainly_and_exit_1(broker: Broker, dsn: str) -> None:
    names = ["--group", "mes", "--client-id", "c1"]
    no_database = run_consume("--dsn", f"postgresql://postgres@127.0.0.1:{free_port()}/x", *names)
    assert no_database.returncode == 1 and "cannot connect to PostgreSQL" in no_database.stderr, no_database.stderr
    port = free_port()
    no_broker = run_consume("--dsn", dsn, "--broker", f"127.0.0.1:{port}", *names)
    assert no_broker.returncode == 1, no_broker.stderr
    assert f"cannot connect to the MQTT broker at 127.0.0.1:{port}: connection refused" in no_broker.stderr


def test_without_the_plant_extra_the_command_says_what_to_install(tmp_path: Path) -> None:
    stand_in = tmp_path / "absent" / "psycopg"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("raise ImportError('not installed here')\n")
    proc = run_consume(
        "--dsn", "postgresql:///x", "--group", "mes", "--client-id", "c1", env={"PYTHONPATH": str(stand_in.parent)}
    )
    assert proc.returncode == 2 and "pip install 'amflow-edge[plant]'" in proc.stderr, proc.stderr


def test_the_example_config_is_valid_and_the_command_line_goes_over_it() -> None:
    example = REPO / "config" / "plant_consumer.example.toml"
    settings = load_settings(example, {"subscription": {"client_id": "mes-consumer-2"}, "broker": {"port": 8884}})
    assert settings.subscription.topic_filter == "$share/mes/amflow/+/event/#"
    assert (settings.subscription.client_id, settings.broker.port) == ("mes-consumer-2", 8884)
    assert settings.broker.uses_tls and settings.postgres.table_prefix == "amflow"


def test_the_printed_schema_is_the_one_the_consumer_creates(dsn: str) -> None:
    proc = run_consume("--print-schema", "--table-prefix", "mes")
    assert proc.returncode == 0, proc.stderr
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(proc.stdout.encode())
    tables = {row[0] for row in query(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert tables == {"mes_scans", "mes_scan_events", "mes_rejected_messages", "mes_station_streams"}


# --- where the consumer sits in the code ---

FILES = module_files()
GRAPH = import_graph(FILES)


def test_the_consumer_is_a_plant_side_tool_the_station_never_loads() -> None:
    plant = "amflow_edge.plant"
    users = sorted(
        {
            module
            for module in GRAPH
            if module.startswith("amflow_edge.") and not module.startswith(plant)
            for target in GRAPH.successors(module)
            if target.startswith(plant)
        }
    )
    assert users == ["amflow_edge.cli.consume"]
    # The station's MQTT contract only: the events' payload, and the request it sends (resend).
    allowed = (plant, "amflow_edge.messaging.payload", "amflow_edge.messaging.command_models", "amflow_edge.common")
    reached = sorted(
        f"{module} imports {target}"
        for module in GRAPH
        if module.startswith(plant)
        for target in GRAPH.successors(module)
        if target.startswith("amflow_edge") and not target.startswith(allowed)
    )
    assert reached == []
    psycopg_users = sorted(
        module
        for module, path in FILES.items()
        if any(
            name.split(".")[0] == "psycopg"
            for name in imported_names(ast.parse(path.read_text()), module, path.name == "__init__.py")
        )
    )
    assert psycopg_users == ["amflow_edge.plant.scan_table"]
    code = "import sys, amflow_edge.cli.main; print('psycopg' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "False", proc.stderr
