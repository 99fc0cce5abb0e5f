"""Publishing AM-Vision events: every event is built by the same envelope function and carries an event id.

The event id travels as an MQTT v5 user property so subscribers can de-duplicate while the
JSON body stays exactly AM-Vision's shape.
"""

from __future__ import annotations

import threading
import time
import uuid

from paho.mqtt.client import MQTTMessageInfo
import structlog

from amflow_edge.mqtt import StationMqtt
from amflow_edge.payload import EventName, Scan, envelope, to_wire

log = structlog.get_logger(__name__)


class EventPublisher:
    def __init__(self, mqtt: StationMqtt, hook_id: int) -> None:
        self._mqtt = mqtt
        self._hook_id = hook_id
        self._pending: list[MQTTMessageInfo] = []
        self._lock = threading.Lock()

    def publish(self, event: EventName, scan: Scan) -> str:
        """Hand the event to the MQTT client (QoS 1, queued by paho while the broker is away); returns its id."""
        topic = self._mqtt.event_topic(event)
        message = envelope(event, scan, self._hook_id, self._mqtt.target_for(topic))
        event_id = str(uuid.uuid4())
        info = self._mqtt.publish(topic, to_wire(message), user_properties={"event_id": event_id})
        with self._lock:
            self._pending = [p for p in self._pending if not p.is_published()]
            self._pending.append(info)
        log.info("event published", name=event, scan=scan.uuid, event_id=event_id, topic=topic, mid=info.mid)
        return event_id

    def flush(self, timeout_s: float) -> bool:
        """Wait until the broker acknowledged every event handed over so far; False if the deadline passed."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                self._pending = [p for p in self._pending if not p.is_published()]
                if not self._pending:
                    return True
            time.sleep(0.02)
        return False
