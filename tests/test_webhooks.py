"""AM-Vision-style HTTP webhooks from the outbox: the 3.7 body per target, in order, signed, retried, parked.

A real station (mock rig, real mosquitto) posts to a real HTTP server; what the receiver answers is
what plant endpoints do: go down, refuse, answer slowly.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

from amflow_edge.cli.main import main
from amflow_edge.config.loading import ConfigError, load_config
from amflow_edge.config.webhooks import WebhookTarget
from amflow_edge.messaging.outbox import Outbox
from amflow_edge.messaging.webhook_ledger import WebhookLedger
from amflow_edge.station.build import build_station
from amflow_edge.station.capture import Trigger
from amflow_edge.station.station import RunOptions, Station
from amflow_edge.storage.db import DB_FILE, StationDb
from tests.mqtt_helpers import Broker, Subscriber
from tests.polling import wait_for
from tests.station_files import write_station
from tests.webhook_receiver import WebhookReceiver

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MES = "/api/1.0/amflow/update"
SORTER = "/sorter/hooks"
EVENTS_TOPIC = "amflow/test-station/event/#"


def webhook_block(receiver: WebhookReceiver, path: str, hook_id: int, **extra: object) -> str:
    lines = ["[[webhooks]]", f'url = "{receiver.url(path)}"', f"hook_id = {hook_id}"]
    for key, value in extra.items():
        rendered = json.dumps(value) if not isinstance(value, (int, float)) else str(value)
        lines.append(f"{key} = {rendered}")
    return "\n".join(lines) + "\n"


def station_config(tmp_path: Path, broker: Broker, *blocks: str) -> Path:
    config = write_station(tmp_path, broker.port)
    config.write_text(config.read_text() + "\n" + "\n".join(blocks))
    return config


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver()
    yield server
    server.close()


def capture(station: Station, count: int) -> list[str]:
    scans = []
    for _ in range(count):
        result = station.loop.capture(Trigger(source="test"))
        assert result.ok, result
        assert result.uuid is not None
        scans.append(result.uuid)
    return scans


def approve(station: Station, scan: str) -> None:
    station.decisions.decide(scan, True, source="mqtt", device="test", at=datetime.now(UTC))


def test_each_target_gets_the_exact_envelope_with_its_hook_signed_in_order(
    tmp_path: Path, broker: Broker, receiver: WebhookReceiver
) -> None:
    config = station_config(
        tmp_path,
        broker,
        webhook_block(receiver, MES, 7, secret=SECRET, target="batcher.myopps.nl"),
        webhook_block(receiver, SORTER, 8, events=["scan.quality_control"]),
    )
    subscriber = Subscriber(broker, [EVENTS_TOPIC])
    station = build_station(load_config(config))
    try:
        station.start(RunOptions(http=False))
        scans = capture(station, 3)
        for scan in scans:
            approve(station, scan)
        assert wait_for(lambda: len(receiver.accepted(MES)) == 6 and len(receiver.accepted(SORTER)) == 3, 30)
        mqtt: dict[str, bytes] = {}
        while len(mqtt) < 6:
            message = subscriber.next(topic=None)
            if "/event/" in message.topic:
                mqtt[message.user_properties["event_id"]] = message.payload
    finally:
        station.shutdown()
        subscriber.close()

    posted = receiver.accepted(MES)
    assert [(p.json["hook"]["event"], p.json["data"]["uuid"]) for p in posted] == [
        *(("scan.capture", s) for s in scans),
        *(("scan.quality_control", s) for s in scans),
    ]
    verifier = Webhook(SECRET)
    for post in posted:
        # The body is the MQTT event's body byte for byte but for this target's hook.
        over_mqtt = json.loads(mqtt[post.event_id])
        assert post.json == {
            **over_mqtt,
            "hook": {"id": 7, "event": over_mqtt["hook"]["event"], "target": "batcher.myopps.nl"},
        }
        assert list(post.json) == ["hook", "data"] and list(post.json["data"]) == list(over_mqtt["data"])
        assert post.body == json.dumps(post.json, separators=(",", ":")).encode()
        verifier.verify(post.body, post.headers)
        assert post.headers["x-amflow-event"] == post.json["hook"]["event"]
        assert post.headers["x-amflow-station"] == "test-station"
    with pytest.raises(Exception, match="signature"):
        verifier.verify(posted[0].body.replace(b"false", b"true", 1), posted[0].headers)
    sorter = receiver.accepted(SORTER)
    assert [p.json["hook"] for p in sorter] == [
        {"id": 8, "event": "scan.quality_control", "target": receiver.url(SORTER)}
    ] * 3
    assert "webhook-signature" not in sorter[0].headers


def test_a_target_that_is_down_gets_every_event_in_order_when_it_returns(
    tmp_path: Path, broker: Broker, receiver: WebhookReceiver
) -> None:
    receiver.answer = 503
    config = station_config(tmp_path, broker, webhook_block(receiver, MES, 1, max_backoff_s=1))
    station = build_station(load_config(config))
    try:
        station.start(RunOptions(http=False))
        scans = capture(station, 4)
        assert wait_for(lambda: len(receiver.refused()) >= 3, 30)
        status = station.state().webhooks[0]
        assert status.backlog == 4 and status.failures >= 1 and "HTTP 503" in (status.last_error or "")
        assert not status.parked
        assert station.relay.drain(30)  # MQTT is not held back by the webhook
        receiver.answer = 200
        assert wait_for(lambda: len(receiver.accepted()) == 4, 30)
        assert wait_for(lambda: station.state().webhooks[0].backlog == 0, 10)
        assert station.state().webhooks[0].failures == 0
    finally:
        station.shutdown()
    assert [p.json["data"]["uuid"] for p in receiver.accepted()] == scans
    # Every refused attempt was at the head of the queue: nothing was skipped or posted out of order.
    assert {p.json["data"]["uuid"] for p in receiver.refused()} == {scans[0]}


def test_a_target_that_refuses_is_parked_with_its_reason_and_resumed_after_the_fix(
    tmp_path: Path, broker: Broker, receiver: WebhookReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.answer_for[SORTER] = 401
    config = station_config(
        tmp_path, broker, webhook_block(receiver, MES, 1), webhook_block(receiver, SORTER, 2, max_backoff_s=1)
    )
    station = build_station(load_config(config))
    try:
        station.start(RunOptions(http=False))
        scans = capture(station, 3)
        assert wait_for(lambda: len(receiver.accepted(MES)) == 3, 30)
        assert wait_for(lambda: station.state().webhooks[1].parked, 10)
        parked = station.state().webhooks[1]
        assert "HTTP 401" in (parked.parked_reason or "") and "outbox resume" in (parked.parked_reason or "")
        attempts = len(receiver.refused(SORTER))
        capture(station, 1)
        assert wait_for(lambda: len(receiver.accepted(MES)) == 4, 30)
        assert len(receiver.refused(SORTER)) == attempts == 1  # parked: not asked again
        receiver.answer_for[SORTER] = 200
        assert main(["outbox", "resume", "--config", str(config), "--target", "2"]) == 0
        assert "resumed" in capsys.readouterr().out
        assert wait_for(lambda: len(receiver.accepted(SORTER)) == 4, 30)
        assert not station.state().webhooks[1].parked
    finally:
        station.shutdown()
    assert [p.json["data"]["uuid"] for p in receiver.accepted(SORTER)][:3] == scans


def test_a_slow_target_never_slows_capture_or_mqtt(tmp_path: Path, broker: Broker, receiver: WebhookReceiver) -> None:
    receiver.delay_s = 10.0
    config = station_config(tmp_path, broker, webhook_block(receiver, MES, 1, timeout_s=60))
    subscriber = Subscriber(broker, ["amflow/test-station/event/scan.capture"])
    station = build_station(load_config(config))
    try:
        station.start(RunOptions(http=False))
        scans = capture(station, 5)
        arrived = [json.loads(subscriber.next().payload)["data"]["uuid"] for _ in scans]
        # Every scan was stored and announced over MQTT while the webhook had posted at most the first two.
        assert arrived == scans
        assert len(receiver.posted) <= 2
        assert station.state().webhooks[0].backlog >= 3
    finally:
        receiver.delay_s = 0.0
        station.shutdown()
        subscriber.close()


def test_the_position_survives_a_restart_and_nothing_delivered_is_posted_again(
    tmp_path: Path, broker: Broker, receiver: WebhookReceiver
) -> None:
    config = station_config(tmp_path, broker, webhook_block(receiver, MES, 1, max_backoff_s=1))
    station = build_station(load_config(config))
    try:
        station.start(RunOptions(http=False))
        first = capture(station, 2)
        assert wait_for(lambda: len(receiver.accepted()) == 2, 30)
        receiver.answer = 500
        second = capture(station, 2)
        assert wait_for(lambda: len(receiver.refused()) >= 1, 30)
    finally:
        station.shutdown()
    receiver.answer = 200
    station = build_station(load_config(config))
    try:
        station.start(RunOptions(http=False))
        assert wait_for(lambda: len(receiver.accepted()) == 4, 30)
    finally:
        station.shutdown()
    assert [p.json["data"]["uuid"] for p in receiver.accepted()] == first + second


def test_events_failing_too_long_become_dead_letters_and_can_be_replayed(
    tmp_path: Path, broker: Broker, receiver: WebhookReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.answer = 500
    config = station_config(
        tmp_path, broker, webhook_block(receiver, MES, 1, max_backoff_s=1, dead_letter_after_s=3600)
    )
    station = build_station(load_config(config))
    try:
        station.start(RunOptions(http=False))
        old = capture(station, 2)
        assert wait_for(lambda: len(receiver.refused()) >= 1, 30)
        # Two hours pass for the events of the first two scans (the outbox's own clock is their creation time).
        with station.db.transaction() as conn:
            conn.execute("UPDATE outbox SET created = created - 7200")
            conn.execute("UPDATE webhook_targets SET failing_since = failing_since - 7200")
        assert wait_for(lambda: station.state().webhooks[0].dead_letters == 2, 30)
        receiver.answer = 200
        fresh = capture(station, 1)
        assert wait_for(lambda: len(receiver.accepted()) == 1, 30)
        assert receiver.accepted()[0].json["data"]["uuid"] == fresh[0]
        assert main(["outbox", "dead-letters", "--config", str(config), "--target", "1"]) == 0
        letters = json.loads(capsys.readouterr().out)
        assert [(d["scan"], d["event"]) for d in letters] == [(s, "scan.capture") for s in old]
        assert all("HTTP 500" in d["reason"] and not d["requeued"] for d in letters)
        assert main(["outbox", "replay", "--config", str(config), "--target", "1", "--dead-letters"]) == 0
        assert "2 event(s) queued to be posted again to webhook 1" in capsys.readouterr().out
        assert wait_for(lambda: len(receiver.accepted()) == 3, 30)
        assert wait_for(lambda: station.state().webhooks[0].dead_letters == 0, 10)
    finally:
        station.shutdown()
    assert [p.json["data"]["uuid"] for p in receiver.accepted()] == fresh + old


def test_replay_to_one_target_and_status_per_target(
    tmp_path: Path, broker: Broker, receiver: WebhookReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    config = station_config(tmp_path, broker, webhook_block(receiver, MES, 1), webhook_block(receiver, SORTER, 2))
    station = build_station(load_config(config))
    try:
        station.start(RunOptions(http=False))
        scans = capture(station, 2)
        assert wait_for(lambda: len(receiver.accepted(MES)) == 2 and len(receiver.accepted(SORTER)) == 2, 30)
    finally:
        station.shutdown()
    assert main(["outbox", "replay", "--config", str(config), "--target", "2", "--since", "1h"]) == 0
    assert "2 event(s) queued to be posted again to webhook 2" in capsys.readouterr().out
    assert main(["outbox", "status", "--config", str(config), "--target", "2"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [w["hook_id"] for w in report["webhooks"]] == [2] and report["webhooks"][0]["backlog"] == 2
    assert report["mqtt"]["backlog"] == 0
    assert main(["outbox", "status", "--config", str(config), "--target", "9"]) == 2
    assert "no [[webhooks]] target has that hook_id (1, 2)" in capsys.readouterr().err
    station = build_station(load_config(config))
    try:
        station.start(RunOptions(http=False))
        assert wait_for(lambda: len(receiver.accepted(SORTER)) == 4, 30)
    finally:
        station.shutdown()
    assert [p.json["data"]["uuid"] for p in receiver.accepted(SORTER)] == scans + scans
    assert len(receiver.accepted(MES)) == 2


def _target_row(db: StationDb, hook_id: int, delivered_seq: int) -> None:
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO webhook_targets (hook_id, url, fingerprint, delivered_seq) VALUES (?, 'http://x', 'f', ?)",
            (hook_id, delivered_seq),
        )


def test_a_replay_is_not_undone_by_a_post_that_was_in_flight(tmp_path: Path) -> None:
    db = StationDb(tmp_path / DB_FILE)
    with db.transaction() as conn:
        for _ in range(6):
            Outbox.add(conn, "scan.capture", None, "t", b"{}")
    _target_row(db, 1, 3)
    ledger = WebhookLedger(db)
    in_flight = ledger.pending(1, ["scan.capture"], 10)
    assert [e.seq for e in in_flight] == [4, 5, 6]
    assert ledger.replay(1, 0.0, ["scan.capture"]) == 3  # the CLI, while seq 4 is being posted
    assert not ledger.delivered(1, in_flight[0])
    assert [e.seq for e in ledger.pending(1, ["scan.capture"], 10)] == [1, 2, 3, 4, 5, 6]
    db.close()


def test_a_target_that_takes_only_some_events_does_not_hold_back_pruning(tmp_path: Path) -> None:
    db = StationDb(tmp_path / DB_FILE)
    outbox = Outbox(db)
    with db.transaction() as conn:
        for _ in range(4):
            Outbox.add(conn, "scan.capture", None, "t", b"{}")
    outbox.mark_sent([1, 2, 3, 4])
    _target_row(db, 1, 0)
    assert WebhookLedger(db).pending(1, ["scan.reject"], 10) == []
    time.sleep(0.01)
    assert outbox.prune(0.0) == 4
    db.close()


def test_giving_up_goes_by_how_long_the_target_failed_not_by_how_old_the_events_are(tmp_path: Path) -> None:
    db = StationDb(tmp_path / DB_FILE)
    with db.transaction() as conn:
        for _ in range(3):
            Outbox.add(conn, "scan.capture", None, "t", b"{}")
        conn.execute("UPDATE outbox SET created = created - 86400")  # a station back from a long shutdown
    _target_row(db, 1, 0)
    ledger = WebhookLedger(db)
    ledger.failed(1, "HTTP 503 Service Unavailable")
    assert ledger.give_up_if_failing_too_long(1, ["scan.capture"], 3600) == 0
    with db.transaction() as conn:
        conn.execute("UPDATE webhook_targets SET failing_since = failing_since - 3601")
    assert ledger.give_up_if_failing_too_long(1, ["scan.capture"], 3600) == 3
    assert [d.reason for d in ledger.dead_letters(1)] == [
        "HTTP 503 Service Unavailable; given up after 3600 s of failing"
    ] * 3
    db.close()


def test_a_receiver_that_trickles_its_answer_is_cut_off_at_the_timeout(
    tmp_path: Path, broker: Broker, receiver: WebhookReceiver
) -> None:
    receiver.trickle_s = 0.5
    config = station_config(tmp_path, broker, webhook_block(receiver, MES, 1, timeout_s=1, max_backoff_s=1))
    station = build_station(load_config(config))
    try:
        station.start(RunOptions(http=False))
        capture(station, 1)
        assert wait_for(lambda: "took longer than 1 s" in (station.state().webhooks[0].last_error or ""), 30)
    finally:
        receiver.trickle_s = 0.0
        station.shutdown()


def test_the_outbox_commands_leave_a_parked_target_parked(
    tmp_path: Path, broker: Broker, receiver: WebhookReceiver, capsys: pytest.CaptureFixture[str]
) -> None:
    receiver.answer = 403
    daemon_config = station_config(tmp_path, broker, webhook_block(receiver, MES, 1, secret=SECRET))
    station = build_station(load_config(daemon_config))
    try:
        station.start(RunOptions(http=False))
        capture(station, 1)
        assert wait_for(lambda: station.state().webhooks[0].parked, 30)
    finally:
        station.shutdown()
    # The operator's shell lacks the daemon's credentials: its config sees another secret, or none.
    shell_config = tmp_path / "shell.toml"
    shell_config.write_text(daemon_config.read_text().replace(f'secret = "{SECRET}"\n', ""))
    assert main(["outbox", "status", "--config", str(shell_config)]) == 0
    assert json.loads(capsys.readouterr().out)["webhooks"][0]["parked"]
    assert main(["outbox", "status", "--config", str(daemon_config)]) == 0
    assert json.loads(capsys.readouterr().out)["webhooks"][0]["parked"]


def test_the_outbox_keeps_what_a_webhook_target_has_not_delivered(tmp_path: Path) -> None:
    db = StationDb(tmp_path / DB_FILE)
    outbox = Outbox(db)
    with db.transaction() as conn:
        for _ in range(3):
            Outbox.add(conn, "scan.capture", None, "t", b"{}")
    outbox.mark_sent([1, 2, 3])
    with db.transaction() as conn:
        conn.execute(
            "INSERT INTO webhook_targets (hook_id, url, fingerprint, delivered_seq) VALUES (1, 'http://x', 'f', 1)"
        )
    time.sleep(0.01)
    assert outbox.prune(0.0) == 1  # MQTT is done with all three; the webhook only with the first
    with db.transaction() as conn:
        conn.execute("UPDATE webhook_targets SET active = 0")
    assert outbox.prune(0.0) == 2  # a target taken out of the config holds nothing back
    assert WebhookLedger(db).known() == [1]
    db.close()


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ('url = "ftp://mes/x"\nhook_id = 1', "is not an http:// or https:// URL"),
        ('url = "http://mes:99999/x"\nhook_id = 1', "the port must be a number from 1 to 65535"),
        ('url = "https://mes/x"\nhook_id = 1\nca_file = "no-such-ca.pem"', "expected a readable PEM CA certificate"),
        ('url = "http://mes/x"\nhook_id = 1\nsecret = "whsec_c2hvcnQ="', "at least 24 random bytes"),
        ('url = "http://mes/x"\nhook_id = 1\nevents = ["scan.captured"]', "scan.capture"),
        ('url = "http://mes/x"\nhook_id = 1\n[[webhooks]]\nurl = "http://mes/y"\nhook_id = 1', "used more than once"),
    ],
)
def test_a_bad_webhook_config_names_the_problem(tmp_path: Path, block: str, message: str) -> None:
    config = write_station(tmp_path, 1883)
    config.write_text(config.read_text() + "\n[[webhooks]]\n" + block + "\n")
    with pytest.raises(ConfigError, match=message):
        load_config(config)


def test_a_failure_before_a_restart_does_not_count_toward_giving_up(tmp_path: Path) -> None:
    db = StationDb(tmp_path / DB_FILE)
    with db.transaction() as conn:
        Outbox.add(conn, "scan.capture", None, "t", b"{}")
        conn.execute("UPDATE outbox SET created = created - 86400")
    target = load_target(hook_id=1)
    ledger = WebhookLedger(db)
    ledger.register([target])
    with db.transaction() as conn:
        conn.execute("UPDATE webhook_targets SET delivered_seq = 0")
    ledger.failed(1, "HTTP 503 Service Unavailable")  # Friday, before the shutdown
    with db.transaction() as conn:
        conn.execute("UPDATE webhook_targets SET failing_since = failing_since - 86400")
    ledger.register([target])  # Monday's start: the receiver may work again
    assert ledger.give_up_if_failing_too_long(1, ["scan.capture"], 3600) == 0
    db.close()


def test_a_webhook_table_of_an_earlier_version_gets_its_new_columns(tmp_path: Path) -> None:
    path = tmp_path / DB_FILE
    with sqlite3.connect(path) as conn:
        conn.execute(
            "CREATE TABLE webhook_targets (hook_id INTEGER PRIMARY KEY, url TEXT NOT NULL, fingerprint TEXT NOT NULL,"
            " delivered_seq INTEGER NOT NULL, active INTEGER NOT NULL DEFAULT 1, parked_reason TEXT, parked_at REAL,"
            " last_delivered_at REAL, last_error TEXT, failures INTEGER NOT NULL DEFAULT 0)"
        )
        conn.execute("INSERT INTO webhook_targets (hook_id, url, fingerprint, delivered_seq) VALUES (1, 'u', 'f', 0)")
    db = StationDb(path)
    assert WebhookLedger(db).pending(1, ["scan.capture"], 10) == []
    db.close()


def load_target(hook_id: int) -> WebhookTarget:
    return WebhookTarget(url="http://127.0.0.1:9/hook", hook_id=hook_id)
