"""Events lost behind the broker are found and sent again: stream and seq on every event, the station's position
in its state, and the consumer asking for the gaps (request/resend).

mosquitto 2.0 forgets a shared subscription across its own restart until a consumer of the group comes back,
so what stations publish meanwhile reaches no one in the group, though the broker acknowledged it and the
station's outbox counts it sent. That is the loss these tests make happen, with a real broker.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from amflow_edge.config.loading import load_config
from amflow_edge.plant.messages import StationPosition
from amflow_edge.plant.scan_table import MAX_ASKS, ensure_schema, lost_ranges, store_position
from amflow_edge.plant.schema import Tables
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions, Station
from tests.mqtt_helpers import Broker, Subscriber
from tests.polling import wait_for
from tests.postgres import fresh_database
from tests.station_files import write_station

REPO = Path(__file__).resolve().parent.parent
EVENTS = "amflow/test-station/event/#"


class Consumer:
    """`amflow-edge consume` as a process, with a repair pass every second."""

    def __init__(self, root: Path, broker: Broker, dsn: str) -> None:
        self.log = root / "consumer.log"
        self.config = root / "consumer.toml"
        self.config.write_text(
            f'[broker]\nhost = "{broker.host}"\nport = {broker.port}\n'
            '[subscription]\ngroup = "mes"\nclient_id = "mes-1"\n'
            f"[postgres]\ndsn = {json.dumps(dsn)}\n"
            "[repair]\nevery_s = 1\ngrace_s = 2\n"
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "amflow_edge.cli", "consume", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        assert wait_for(lambda: self.text().count('"consuming"') >= 1, 30), self.text()

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


@pytest.fixture
def dsn() -> Iterator[str]:
    with fresh_database() as database:
        yield database


def stored_events(dsn: str) -> list[tuple[str, int | None]]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT event, seq FROM amflow_scan_events ORDER BY seq").fetchall()
    return [(str(event), seq if isinstance(seq, int) else None) for event, seq in rows]


def capture(station: Station) -> str:
    result = station.loop.capture(Trigger(source="test"))
    assert result.ok and result.uuid is not None
    return result.uuid


def test_events_lost_when_the_broker_forgets_the_group_are_asked_for_again_and_stored(tmp_path: Path, dsn: str) -> None:
    broker = Broker(tmp_path, persistence=True)
    broker.start()
    consumer = Consumer(tmp_path, broker, dsn)
    station = build_station(load_config(write_station(tmp_path, broker.port)))
    try:
        consumer.start()
        station.start(RunOptions(http=False, state_interval_s=1.0))
        capture(station)
        assert wait_for(lambda: len(stored_events(dsn)) == 1, 30)
        consumer.stop()
        broker.stop(graceful=True)  # saved: the consumer's session survives, its shared subscription does not
        broker.start()
        assert wait_for(station.mqtt.connected.is_set, 30)
        lost = [capture(station), capture(station)]
        assert station.relay.drain(30)  # the broker acknowledged both: the station counts them delivered
        consumer.start()
        assert wait_for(lambda: len(stored_events(dsn)) == 3, 60), consumer.text()
    finally:
        station.shutdown()
        consumer.stop()
        broker.stop()
    assert stored_events(dsn) == [("scan.capture", 1), ("scan.capture", 2), ("scan.capture", 3)]
    assert "asked the station to send them again" in consumer.text()
    with psycopg.connect(dsn) as conn:
        scans = {str(u) for (u,) in conn.execute("SELECT uuid FROM amflow_scans").fetchall()}
    assert set(lost) <= scans


def test_each_event_carries_its_stream_and_seq_and_a_resend_sends_them_again(tmp_path: Path, broker: Broker) -> None:
    subscriber = Subscriber(broker, [EVENTS, "amflow/test-station/response/resend"])
    station = build_station(load_config(write_station(tmp_path, broker.port)))
    try:
        station.start(RunOptions(http=False))
        scans = [capture(station), capture(station)]
        first = [subscriber.next(topic="amflow/test-station/event/scan.capture") for _ in scans]
        stream = station.outbox.stats().stream
        assert [(m.user_properties["stream"], m.user_properties["seq"]) for m in first] == [
            (stream, "1"),
            (stream, "2"),
        ]
        assert wait_for(lambda: station.outbox.stats().acknowledged_through_seq == 2, 10)

        subscriber.publish(
            "amflow/test-station/request/resend", json.dumps({"stream": stream, "from_seq": 2, "to_seq": 2}).encode()
        )
        answer = json.loads(subscriber.next(topic="amflow/test-station/response/resend").payload)
        assert answer["status"] == "ok" and answer["resent"] == 1
        again = subscriber.next(topic="amflow/test-station/event/scan.capture")
        assert again.user_properties == first[1].user_properties and again.payload == first[1].payload

        wrong = {"stream": "another-database", "from_seq": 1, "to_seq": 1}
        subscriber.publish("amflow/test-station/request/resend", json.dumps(wrong).encode())
        refused = json.loads(subscriber.next(topic="amflow/test-station/response/resend").payload)
        assert refused["status"] == "error" and "database was rebuilt" in refused["error"]
    finally:
        station.shutdown()
        subscriber.close()


def _plant_tables(dsn: str) -> Tables:
    tables = Tables.named("amflow")
    with psycopg.connect(dsn, autocommit=True) as conn:
        ensure_schema(conn, tables)
    return tables


def _event(conn: psycopg.Connection[tuple[object, ...]], seq: int, age_s: float) -> None:
    conn.execute(
        "INSERT INTO amflow_scan_events (event_id, scan_uuid, station, event, modified, consumer, payload, stream, seq,"
        " received_at) VALUES (gen_random_uuid(), gen_random_uuid(), 's1', 'scan.capture', now(), 'c', '{}', 'S', %s,"
        " now() - make_interval(secs => %s))",
        (seq, age_s),
    )


def test_gaps_are_lost_once_later_events_are_old_rejects_count_as_received_and_vanished_events_are_given_up(
    dsn: str,
) -> None:
    tables = _plant_tables(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for seq in (1, 2, 4, 7):
            _event(conn, seq, 120)
        _event(conn, 9, 0)  # just arrived: 8 may still be on its way through another consumer
        conn.execute(
            "INSERT INTO amflow_rejected_messages (consumer, topic, reason, payload, stream, seq) "
            "VALUES ('c', 't', 'bad', '', 'S', 5)"
        )
        store_position(conn, tables, StationPosition("s1", "S", 9))
        assert lost_ranges(conn, tables, grace_s=60) == [("s1", "S", 3, 3), ("s1", "S", 6, 6)]
        for _ in range(MAX_ASKS - 1):
            assert lost_ranges(conn, tables, grace_s=60) == [("s1", "S", 3, 3), ("s1", "S", 6, 6)]
        # Seq 3 was asked for MAX_ASKS times in vain (pruned at the station): given up, so 6 is the first now.
        assert lost_ranges(conn, tables, grace_s=60) == [("s1", "S", 6, 6)]
        assert lost_ranges(conn, tables, grace_s=60) == [("s1", "S", 6, 6)]
        (through,) = conn.execute("SELECT complete_through_seq FROM amflow_station_streams").fetchone()  # type: ignore[misc]
        assert through == 5


def test_a_new_station_is_repaired_from_its_first_event(dsn: str) -> None:
    tables = _plant_tables(dsn)
    with psycopg.connect(dsn, autocommit=True) as conn:
        store_position(conn, tables, StationPosition("s1", "S", 0))  # its state at connect, before any event
        _event(conn, 3, 120)  # its first two events were lost behind the broker
        assert lost_ranges(conn, tables, grace_s=60) == [("s1", "S", 1, 2)]
