"""The station's MQTT client: availability, events, state and station requests.

Topic contract (documented in the README):
  <prefix>/<station>/availability      retained "online" / "offline" (the will)
  <prefix>/<station>/state             retained JSON summary of the station
  <prefix>/<station>/event/<event>     AM-Vision 3.7 envelopes, QoS 1, user property event_id
  <prefix>/<station>/request/<command> requests to the station
  <prefix>/<station>/response/<command> answers (and the v5 response topic when the requester sets one)

Every paho callback is wrapped: an exception escaping a callback silently kills paho's
network thread, and a station that stops talking without saying so is the worst failure.
"""

from __future__ import annotations

import functools
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from amflow_edge.config.station import StationConfig
from amflow_edge.config.tls import tls_context_for
from amflow_edge.ops.log_limit import FirstSeen, rate_limited_warnings

log = structlog.get_logger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

RequestHandler = Callable[[str, bytes, "Properties | None"], None]


class MqttSetupError(ValueError):
    """The MQTT settings cannot work at all (e.g. an unreadable TLS file); the message names the setting and the fix."""


def tls_context(cfg: StationConfig) -> ssl.SSLContext:
    """Built as check-config checks the same files (config.tls), so what it passes, run can use."""
    tls = cfg.mqtt.tls
    assert tls is not None
    return tls_context_for(tls, error=MqttSetupError)


def diagnose_connection(cfg: StationConfig, timeout_s: float = 3.0) -> str:
    """One plain connection attempt, to turn paho's silent retry into a reason an integrator can act on."""
    try:
        with socket.create_connection((cfg.mqtt.host, cfg.mqtt.port), timeout=timeout_s) as sock:
            if cfg.mqtt.tls is None:
                return "the broker accepted TCP but closed the MQTT connection"
            with tls_context(cfg).wrap_socket(sock, server_hostname=cfg.mqtt.host):
                return "TLS handshake succeeded; the broker closed the MQTT connection"
    except ssl.SSLCertVerificationError as exc:
        return (
            f"the broker's TLS certificate was not accepted: {exc.verify_message}; check mqtt.tls.ca_file and mqtt.host"
        )
    except ssl.SSLError as exc:
        return f"TLS failed: {exc.reason or exc}; is the port a TLS listener, and mqtt.tls right?"
    except ConnectionRefusedError:
        return "connection refused: no broker listens there; check mqtt.host and mqtt.port, and that the broker runs"
    except socket.gaierror as exc:
        return f"unknown host {cfg.mqtt.host!r}: {exc.strerror}; check mqtt.host and DNS"
    except TimeoutError:
        return "no answer (timeout): check the network path and firewall to the broker"
    except MqttSetupError as exc:
        return str(exc)
    except OSError as exc:
        return f"{exc.strerror or exc}"


MAX_TOPIC_BYTES = 65535


def response_topic_problem(topic: str, station_root: str) -> str | None:
    """Why the station will not publish to a request's MQTT v5 response topic, or None when it will.

    The station may write its own topics where no one else may (broker ACLs), so answering into its
    own tree would let anyone allowed to send a request inject messages into its events, state or
    availability. A wildcard is no topic at all (paho raises); control characters and over-long names
    make the broker drop the connection, and paho would resend the answer on every reconnect.
    """
    if topic == station_root or topic.startswith(station_root + "/"):
        return f"it is inside the station's own topics ({station_root}/…), where only the station publishes"
    if "+" in topic or "#" in topic:
        return "it contains a wildcard (+ or #); a response topic must be a single topic name"
    if topic.startswith("$"):
        return "topics starting with $ are reserved for the broker"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in topic):
        return "it contains a control character, which the broker refuses in topic names"
    if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        return f"it is longer than MQTT's {MAX_TOPIC_BYTES} bytes"
    return None


def _guarded(func: Callable[P, R]) -> Callable[P, R | None]:
    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R | None:
        try:
            return func(*args, **kwargs)
        except Exception:
            log.exception("MQTT callback failed; the client carries on", callback=func.__name__)
            return None

    return wrapper


class StationMqtt:
    def __init__(self, cfg: StationConfig, on_request: RequestHandler | None = None) -> None:
        self._cfg = cfg
        self._on_request = on_request
        self.on_connected: Callable[[], None] | None = None
        self.on_published: Callable[[int, str | None], None] | None = None
        self._stopping = False
        self._last_failure: str | None = None
        self.receive_maximum = 65535
        self.connected = threading.Event()
        self.availability_topic = cfg.topic("availability")
        self.state_topic = cfg.topic("state")
        self.request_prefix = cfg.topic("request") + "/"
        self._station_root = cfg.topic()
        self._told_topics = FirstSeen()
        self._topic_log = rate_limited_warnings(log, "more response topics ignored; not logged one by one", burst=10)
        self._client = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=cfg.client_id,
            protocol=mqtt.MQTTv5,
        )
        self._client.enable_logger()
        self._client.reconnect_delay_set(min_delay=1, max_delay=30)
        self._client.will_set(self.availability_topic, "offline", qos=1, retain=True)
        if cfg.mqtt.username is not None:
            password = cfg.mqtt.password.get_secret_value() if cfg.mqtt.password else None
            self._client.username_pw_set(cfg.mqtt.username, password)
        if cfg.mqtt.tls is not None:
            self._client.tls_set_context(tls_context(cfg))
        self._client.max_inflight_messages_set(cfg.mqtt.max_in_flight)
        self._client.on_connect = _guarded(self._handle_connect)
        self._client.on_disconnect = _guarded(self._handle_disconnect)
        self._client.on_message = _guarded(self._handle_message)
        self._client.on_connect_fail = _guarded(self._handle_connect_fail)
        self._client.on_subscribe = _guarded(self._handle_subscribe)
        self._client.on_publish = _guarded(self._handle_publish)

    def set_request_handler(self, handler: RequestHandler) -> None:
        self._on_request = handler

    def start(self) -> None:
        """A persistent session (fixed client id, clean_start=False) so requests sent while we were away wait for us."""
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = self._cfg.mqtt.session_expiry_s
        self._client.connect_async(
            self._cfg.mqtt.host,
            self._cfg.mqtt.port,
            keepalive=self._cfg.mqtt.keepalive_s,
            clean_start=False,
            properties=properties,
        )
        self._client.loop_start()
        log.info("connecting to the MQTT broker", host=self._cfg.mqtt.host, port=self._cfg.mqtt.port)

    def network_thread_alive(self) -> bool:
        thread = getattr(self._client, "_thread", None)  # paho exposes no public health check
        return thread is not None and thread.is_alive()

    def revive(self) -> bool:
        """Restart paho's network thread if it died; True when it had to. Checked periodically by the daemon."""
        if self._stopping or self.network_thread_alive():
            return False
        log.error("the MQTT network thread died; restarting it")
        self.connected.clear()
        self._client.loop_stop()
        self._client.loop_start()
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Say 'offline' ourselves: the will only fires on an unclean disconnect."""
        self._stopping = True
        if self.connected.is_set():
            info = self._client.publish(self.availability_topic, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(timeout=timeout_s)
            except (RuntimeError, ValueError):
                log.warning("could not publish offline before stopping")
        self._client.disconnect()
        self._client.loop_stop()

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, user_properties: dict[str, str] | None = None
    ) -> mqtt.MQTTMessageInfo:
        properties = None
        if user_properties:
            properties = Properties(PacketTypes.PUBLISH)
            properties.UserProperty = list(user_properties.items())
        return self._client.publish(topic, payload, qos=1, retain=retain, properties=properties)

    def respond(self, command: str, payload: bytes, request_properties: Properties | None) -> None:
        """Answer on the station's response topic, and on the requester's own response topic if it named one
        the station may publish to (see `response_topic_problem`); a refused one only costs the requester
        that copy of the answer, never the answer itself."""
        self.publish(self._cfg.topic("response", command), payload)
        response_topic = getattr(request_properties, "ResponseTopic", None)
        if not response_topic:
            return
        problem = response_topic_problem(str(response_topic), self._station_root)
        if problem is not None:
            self._ignore_response_topic(command, str(response_topic), problem)
            return
        properties = Properties(PacketTypes.PUBLISH)
        correlation = getattr(request_properties, "CorrelationData", None)
        if correlation is not None:
            properties.CorrelationData = correlation
        try:
            self._client.publish(response_topic, payload, qos=1, properties=properties)
        except ValueError as exc:  # a topic paho refuses that the rule above did not foresee
            self._ignore_response_topic(command, str(response_topic), str(exc))

    def _ignore_response_topic(self, command: str, topic: str, reason: str) -> None:
        """Once per topic, since MQTT does not say which client sent a request: a client that keeps sending
        the same bad topic is one line, a client inventing new ones is rate-limited."""
        if self._told_topics(hash(topic)):  # a hash: topics may be 64 KiB long, and a missed line is harmless
            self._topic_log(
                "ignored the request's MQTT v5 response topic; the answer went to the station's response topic only",
                key=reason,
                command=command,
                response_topic=topic[:256],
                reason=reason,
            )

    def _handle_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            reason = str(reason_code)
            if reason != self._last_failure:
                self._last_failure = reason
                log.error(
                    "the MQTT broker refused the connection; check mqtt.username and the mqtt_password credential "
                    "(or the broker's ACL); events wait in the outbox and the station keeps capturing",
                    reason=reason,
                )
            return
        self._last_failure = None
        # paho ignores the broker's Receive Maximum; exceeding it gets us disconnected, so the relay honours it.
        self.receive_maximum = int(getattr(properties, "ReceiveMaximum", 65535) or 65535)
        client.publish(self.availability_topic, "online", qos=1, retain=True)
        client.subscribe(self.request_prefix + "+", qos=1)

    def _handle_subscribe(
        self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        """Ready only once requests can reach us: a request sent after `connected` is set is never missed."""
        failed = [str(code) for code in reason_codes if code.is_failure]
        if failed:
            log.error(
                "the broker refused the request subscription; check its ACL",
                topic=self.request_prefix + "+",
                reasons=failed,
            )
        self.connected.set()
        log.info("connected to the MQTT broker", host=self._cfg.mqtt.host, port=self._cfg.mqtt.port)
        if self.on_connected is not None:
            self.on_connected()

    def _handle_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if self._stopping:
            log.info("disconnected from the MQTT broker")
        elif was_connected:
            log.warning("disconnected from the MQTT broker; reconnecting", reason=str(reason_code))

    def _handle_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        """paho does not say why; find out, and say it once per distinct cause rather than every retry."""
        reason = diagnose_connection(self._cfg)
        if reason != self._last_failure:
            self._last_failure = reason
            log.error(
                "cannot connect to the MQTT broker; events wait in the outbox and the station keeps capturing",
                host=self._cfg.mqtt.host,
                port=self._cfg.mqtt.port,
                reason=reason,
            )

    def _handle_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        if self.on_published is not None:
            self.on_published(mid, str(reason_code) if reason_code.is_failure else None)

    def _handle_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        if not message.topic.startswith(self.request_prefix) or self._on_request is None:
            return
        command = message.topic[len(self.request_prefix) :]
        self._on_request(command, bytes(message.payload), getattr(message, "properties", None))
