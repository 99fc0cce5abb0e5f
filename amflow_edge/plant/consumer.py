"""The reference plant consumer: a persistent MQTT v5 session in a shared-subscription group, into PostgreSQL.

The delivery promise, end to end: a message is acknowledged (PUBACK) only after the transaction that stored
it committed. A consumer killed at any moment has acknowledged only what is in the database; the broker keeps
the rest in its session (clean_start=False, a Session Expiry Interval) and hands it over again when the
consumer comes back under the same client id. A message handed over twice, or sent twice by a station,
finds its event_id in the log and changes nothing.

paho's network thread only queues what arrives; the caller's thread stores and acknowledges, in order. So
the connection keeps its keep-alive while PostgreSQL is away (messages then wait, unacknowledged, and the
broker stops at `receive_maximum` of them), and an acknowledgement is sent only on the connection that
delivered the message: on a new one the broker sends it again, and the copy is a duplicate.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from amflow_edge.common.backoff import Backoff
from amflow_edge.messaging.command_models import MAX_RESEND, ResendRequest
from amflow_edge.plant.messages import Rejected, ScanEvent, outbox_position, parse, parse_state
from amflow_edge.plant.scan_table import (
    Outcome,
    connect,
    ensure_schema,
    lost_ranges,
    psycopg,
    store_event,
    store_position,
    store_reject,
)
from amflow_edge.plant.schema import Tables
from amflow_edge.plant.settings import BrokerSettings, PlantConsumerSettings

log = structlog.get_logger(__name__)

T = TypeVar("T")
Database = psycopg.Connection[tuple[object, ...]]

REPORT_EVERY_S = 60.0
FIRST_CONNECT_TIMEOUT_S = 30.0


class ConsumerStartError(Exception):
    """The consumer cannot start; the message says why and what to check. `config` when no retry can help."""

    def __init__(self, message: str, *, config: bool) -> None:
        super().__init__(message)
        self.config = config


@dataclass(frozen=True)
class _Delivery:
    connection: int
    """Which connection delivered it: its PUBACK may go only there."""
    mid: int
    qos: int
    topic: str
    payload: bytes
    user_properties: list[tuple[str, str]]


def tls_context(broker: BrokerSettings) -> ssl.SSLContext:
    try:
        context = ssl.create_default_context(cafile=str(broker.ca_file) if broker.ca_file else None)
        if broker.cert_file is not None and broker.key_file is not None:
            context.load_cert_chain(str(broker.cert_file), str(broker.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConsumerStartError(
            f"broker TLS files (ca_file, cert_file, key_file) cannot be used: {exc}", config=True
        ) from None
    return context


def diagnose(broker: BrokerSettings, exc: BaseException) -> str:
    """paho's socket errors in words an integrator can act on."""
    where = f"the MQTT broker at {broker.host}:{broker.port}"
    if isinstance(exc, ConnectionRefusedError):
        return f"cannot connect to {where}: connection refused; check --broker (broker.host, broker.port) and that the broker runs"
    if isinstance(exc, socket.gaierror):
        return f"cannot connect to {where}: unknown host ({exc.strerror}); check broker.host and DNS"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"cannot connect to {where}: its TLS certificate was not accepted ({exc.verify_message}); check broker.ca_file"
    if isinstance(exc, ssl.SSLError):
        return f"cannot connect to {where}: TLS failed ({exc.reason or exc}); is the port a TLS listener?"
    if isinstance(exc, TimeoutError):
        return f"cannot connect to {where}: no answer (timeout); check the network path and firewall"
    return f"cannot connect to {where}: {getattr(exc, 'strerror', None) or exc}"


class Consumer:
    def __init__(self, settings: PlantConsumerSettings) -> None:
        self._settings = settings
        self._sub = settings.subscription
        self._tables = Tables.named(settings.postgres.table_prefix)
        self._inbox: queue.Queue[_Delivery] = queue.Queue()
        self._lock = threading.Lock()
        self._connection = 0
        self._connected = False
        self._closing = False
        self._ready = threading.Event()
        self._first_failure: ConsumerStartError | None = None
        self._last_failure: str | None = None
        self._db: Database | None = None
        self.counts: Counter[str] = Counter()
        self._asked: dict[tuple[str, str, int, int], float] = {}
        self._repairing = settings.repair.enabled
        self._client = self._make_client()

    # --- MQTT: paho's network thread ---

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=self._sub.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.enable_logger()
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        broker = self._settings.broker
        if broker.username is not None:
            client.username_pw_set(broker.username, broker.password.get_secret_value() if broker.password else None)
        if broker.uses_tls:
            client.tls_set_context(tls_context(broker))
        client.on_connect = self._guarded(self._on_connect)
        client.on_subscribe = self._guarded(self._on_subscribe)
        client.on_disconnect = self._guarded(self._on_disconnect)
        client.on_connect_fail = self._guarded(self._on_connect_fail)
        client.on_message = self._guarded(self._on_message)
        return client

    @staticmethod
    def _guarded(callback: Callable[..., None]) -> Callable[..., None]:
        """An exception escaping a paho callback kills its network thread without a word."""

        def run(*args: Any) -> None:
            try:
                callback(*args)
            except Exception:
                log.exception("MQTT callback failed; the consumer carries on", callback=callback.__name__)

        return run

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._tell_failure(
                f"the MQTT broker refused the connection ({reason_code}); check broker.username, broker.password "
                "and the broker's ACL",
                config=True,
            )
            return
        with self._lock:
            self._connection += 1
            self._connected = True
        self._last_failure = None
        log.info("connected to the MQTT broker", session_present=bool(flags.session_present))
        if self._ready.is_set() and not flags.session_present:
            log.warning(
                "the broker had no session for this consumer: events queued for it while it was away are lost; "
                "raise subscription.session_expiry_s",
                client_id=self._sub.client_id,
            )
        subscriptions = [(self._sub.topic_filter, 1)]
        if self._repairing:
            # QoS 0: a state is not queued for a consumer that is away (the retained one comes at subscribe).
            subscriptions.append((self._sub.state_filter, 0))
        client.subscribe(subscriptions)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        codes = list(reason_codes)
        if len(codes) > 1 and codes[1].is_failure:
            self._repairing = False
            log.warning(
                "the broker refused the stations' state topic; lost events are not asked for again (let this "
                "consumer's user read <prefix>/+/state and write <prefix>/+/request/resend)",
                topic=self._sub.state_filter,
                reason=str(codes[1]),
            )
        failed = [str(code) for code in codes[:1] if code.is_failure]
        if failed:
            self._tell_failure(
                f"the broker refused the subscription {self._sub.topic_filter} ({', '.join(failed)}); "
                "check its ACL and that it supports shared subscriptions",
                config=True,
            )
            return
        if not self._ready.is_set():
            log.info("consuming", topic=self._sub.topic_filter, client_id=self._sub.client_id)
        self._ready.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._lock:
            was_connected = self._connected
            self._connected = False
        if was_connected and not self._closing:
            log.warning("disconnected from the MQTT broker; reconnecting", reason=str(reason_code))

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        broker = self._settings.broker
        try:
            socket.create_connection((broker.host, broker.port), timeout=5).close()
            reason = f"the MQTT broker at {broker.host}:{broker.port} accepted TCP but not the MQTT connection"
        except OSError as exc:
            reason = diagnose(broker, exc)
        self._tell_failure(reason, config=False)

    def _tell_failure(self, reason: str, *, config: bool) -> None:
        """Before the first success it ends the start; later, once per cause, while paho retries."""
        if not self._ready.is_set():
            self._first_failure = ConsumerStartError(reason, config=config)
            self._ready.set()
        if reason != self._last_failure:
            self._last_failure = reason
            log.error(reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        properties = getattr(message, "properties", None)
        user_properties = list(getattr(properties, "UserProperty", None) or [])
        with self._lock:
            connection = self._connection
        self._inbox.put(
            _Delivery(connection, message.mid, message.qos, message.topic, bytes(message.payload), user_properties)
        )

    def _ack(self, delivery: _Delivery) -> None:
        if delivery.qos == 0:
            return
        with self._lock:
            if self._connected and delivery.connection == self._connection:
                self._client.ack(delivery.mid, 1)

    # --- PostgreSQL and the caller's thread ---

    def _database(self) -> Database:
        if self._db is None or self._db.closed:
            postgres = self._settings.postgres
            self._db = connect(
                postgres.dsn.get_secret_value(),
                f"amflow-edge consume {self._sub.client_id}",
                postgres.connect_timeout_s,
            )
        return self._db

    def _drop_database(self) -> None:
        if self._db is not None:
            with contextlib.suppress(psycopg.Error):
                self._db.close()
        self._db = None

    def start(self, stop: threading.Event) -> None:
        """Schema first, then the broker: a consumer that could not store anything must not take messages."""
        try:
            ensure_schema(self._database(), self._tables)
        except psycopg.OperationalError as exc:
            raise ConsumerStartError(f"cannot connect to PostgreSQL: {str(exc).strip()}", config=False) from None
        except psycopg.Error as exc:
            raise ConsumerStartError(
                f"cannot create the consumer's tables in PostgreSQL: {str(exc).strip()}", config=False
            ) from None
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self._sub.session_expiry_s
        properties.ReceiveMaximum = self._sub.receive_maximum
        broker = self._settings.broker
        try:
            self._client.connect(
                broker.host, broker.port, keepalive=broker.keepalive_s, clean_start=False, properties=properties
            )
        except (OSError, ssl.SSLError) as exc:
            raise ConsumerStartError(diagnose(broker, exc), config=False) from None
        self._client.loop_start()
        deadline = time.monotonic() + FIRST_CONNECT_TIMEOUT_S
        while not self._ready.wait(0.2) and not stop.is_set():
            if time.monotonic() > deadline:
                self._first_failure = ConsumerStartError(
                    f"the MQTT broker at {broker.host}:{broker.port} did not answer within "
                    f"{FIRST_CONNECT_TIMEOUT_S:.0f} s",
                    config=False,
                )
                break
        if self._first_failure is not None:
            self.close()
            raise self._first_failure

    def run(self, stop: threading.Event) -> None:
        """Store and acknowledge until `stop`; what is still queued here stays unacknowledged, in the session."""
        reported = dict(self.counts)
        next_report = time.monotonic() + REPORT_EVERY_S
        next_repair = time.monotonic() + self._settings.repair.every_s
        while not stop.is_set():
            if self._repairing and time.monotonic() >= next_repair:
                next_repair = time.monotonic() + self._settings.repair.every_s
                self._repair(stop)
            try:
                delivery = self._inbox.get(timeout=0.2)
            except queue.Empty:
                delivery = None
            if delivery is not None and self._handle(delivery, stop):
                self._ack(delivery)
            if time.monotonic() >= next_report:
                next_report = time.monotonic() + REPORT_EVERY_S
                if dict(self.counts) != reported:
                    reported = dict(self.counts)
                    log.info("consumer progress", **reported)

    def _repair(self, stop: threading.Event) -> None:
        """Ask each station again for what the group lost behind the broker; the answers are ordinary events,
        stored once whoever of the group takes them. A range is asked for again only after twice the grace."""
        try:
            ranges = lost_ranges(self._database(), self._tables, self._settings.repair.grace_s)
        except psycopg.Error as exc:  # the next pass tries again; storing events must not wait for it
            log.error("looking for lost events failed", reason=f"{type(exc).__name__}: {str(exc).strip()}")
            if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                self._drop_database()
            return
        if not ranges:
            return
        grace = self._settings.repair.grace_s
        now = time.monotonic()
        self._asked = {key: at for key, at in self._asked.items() if now - at < 2 * grace}
        prefix = self._sub.topic_prefix.rstrip("/")
        for station, stream, first, last in ranges:
            if (station, stream, first, last) in self._asked:
                continue
            self._asked[(station, stream, first, last)] = now
            for start in range(first, last + 1, MAX_RESEND):
                request = ResendRequest(stream=stream, from_seq=start, to_seq=min(last, start + MAX_RESEND - 1))
                self._client.publish(f"{prefix}/{station}/request/resend", request.model_dump_json().encode(), qos=1)
            self.counts["asked_again"] += last - first + 1
            log.warning(
                "events lost behind the broker; asked the station to send them again",
                station=station,
                stream=stream,
                first_seq=first,
                last_seq=last,
            )

    def _handle(self, delivery: _Delivery, stop: threading.Event) -> bool:
        """True once the message is in the database (as an event, a duplicate or a reject); False on stop."""
        if delivery.topic.endswith("/state"):
            position = parse_state(delivery.topic, delivery.payload, self._sub.topic_prefix)
            if position is None:
                return True
            return self._with_database(lambda conn: store_position(conn, self._tables, position), stop) is not None
        parsed = parse(delivery.topic, delivery.payload, delivery.user_properties, self._sub.topic_prefix)
        if isinstance(parsed, ScanEvent):
            try:
                outcome = self._with_database(
                    lambda conn: store_event(conn, self._tables, parsed, self._sub.client_id), stop
                )
            except psycopg.DataError as exc:  # a value PostgreSQL cannot hold, e.g. \u0000 in a JSON string
                parsed_reject = Rejected(str(parsed.event_id), f"PostgreSQL refused the event: {str(exc).strip()}")
                return self._reject(delivery, parsed_reject, stop)
            if outcome is None:
                return False
            self.counts[outcome.value] += 1
            if outcome is Outcome.DUPLICATE:
                log.info("duplicate event ignored", event_id=str(parsed.event_id), scan=str(parsed.scan_uuid))
            else:
                log.debug(
                    "event stored",
                    name=parsed.event,
                    event_id=str(parsed.event_id),
                    scan=str(parsed.scan_uuid),
                    station=parsed.station,
                    outcome=outcome.value,
                )
            return True
        return self._reject(delivery, parsed, stop)

    def _reject(self, delivery: _Delivery, rejected: Rejected, stop: threading.Event) -> bool:
        position = outbox_position(delivery.user_properties)
        reject_id = self._with_database(
            lambda conn: store_reject(
                conn, self._tables, delivery.topic, delivery.payload, rejected, self._sub.client_id, position
            ),
            stop,
        )
        if reject_id is None:
            return False
        self.counts["rejected"] += 1
        log.warning(
            "message rejected; kept in the rejects table and acknowledged",
            table=self._tables.rejects,
            id=reject_id,
            topic=delivery.topic,
            event_id=rejected.event_id,
            reason=rejected.reason,
        )
        return True

    def _with_database(self, write: Callable[[Database], T], stop: threading.Event) -> T | None:
        """The write's result, retried with backoff while PostgreSQL fails; None when stopped meanwhile.

        A DataError belongs to the message, not to the database: it is raised, for the message to be rejected.
        """
        backoff = Backoff(0.2, self._settings.postgres.retry_max_s)
        failure: str | None = None
        while not stop.is_set():
            try:
                result = write(self._database())
            except psycopg.DataError:
                raise
            except psycopg.Error as exc:
                reason = f"{type(exc).__name__}: {str(exc).strip()}"
                if reason != failure:
                    failure = reason
                    log.error("PostgreSQL failed; retrying, nothing is acknowledged meanwhile", reason=reason)
                if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
                    self._drop_database()
                stop.wait(backoff.next_delay())
                continue
            if failure is not None:
                log.info("PostgreSQL is back")
            return result
        return None

    def close(self) -> None:
        """A clean DISCONNECT keeps the session (its expiry was set at CONNECT), with what we did not acknowledge."""
        self._closing = True
        self._client.disconnect()
        self._client.loop_stop()
        self._drop_database()
