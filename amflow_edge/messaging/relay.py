"""The relay: outbox rows → MQTT, in order, a small window in flight, marked sent only on PUBACK.

paho keeps what it was handed across reconnects and resends it itself, so within one run
the relay never hands a row over twice; after a restart paho's memory is gone and every
unsent row is handed over again (subscribers de-duplicate by the event_id property).
Acknowledgements arrive on paho's thread and are queued to this one, so the mid → row map
is only touched here and an ack can never overtake the bookkeeping of its own publish.
"""

from __future__ import annotations

import queue
import threading
import time

import structlog

from amflow_edge.messaging.mqtt import StationMqtt
from amflow_edge.messaging.outbox import Outbox
from amflow_edge.storage.db import StationDb

log = structlog.get_logger(__name__)

_RETRY_AFTER_REFUSAL_S = 5.0
_PRUNE_EVERY_S = 3600.0


class Relay:
    def __init__(
        self,
        db: StationDb,
        mqtt: StationMqtt,
        window: int = 20,
        retention_s: float = 7 * 86400,
    ) -> None:
        self._db = db
        self._outbox = Outbox(db)
        self._stream = db.stream()
        self._mqtt = mqtt
        self._window = window
        self._retention_s = retention_s
        self._acks: queue.Queue[tuple[int, str | None]] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._in_flight: dict[int, int] = {}
        self._handed_up_to = 0
        self._retry_at = 0.0
        self._thread: threading.Thread | None = None
        mqtt.on_published = self._acked

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="relay", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def drain(self, timeout_s: float) -> bool:
        """Wait until every queued event is acknowledged; False if the deadline passed first."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._outbox.stats().backlog == 0:
                return True
            self._wake.set()
            time.sleep(0.05)
        return self._outbox.stats().backlog == 0

    def _acked(self, mid: int, error: str | None) -> None:
        self._acks.put((mid, error))
        self._wake.set()

    def _run(self) -> None:
        # Losing a 'sent' mark costs a duplicate, never an event, so these commits need not wait for the disk.
        self._db.connection().execute("PRAGMA synchronous=NORMAL")
        last_prune = 0.0
        while not self._stop.is_set():
            try:
                self._settle_acks()
                if self._mqtt.connected.is_set() and time.monotonic() >= self._retry_at:
                    self._hand_over()
                if time.monotonic() - last_prune > _PRUNE_EVERY_S:
                    pruned = self._outbox.prune(self._retention_s)
                    last_prune = time.monotonic()
                    if pruned:
                        log.info("pruned acknowledged events past retention", count=pruned)
            except Exception:
                log.exception("relay step failed; retrying")
                self._stop.wait(1.0)
            self._wake.wait(0.5)
            self._wake.clear()

    def _settle_acks(self) -> None:
        sent: list[int] = []
        while True:
            try:
                mid, error = self._acks.get_nowait()
            except queue.Empty:
                break
            seq = self._in_flight.pop(mid, None)
            if seq is None:
                continue
            if error is None:
                sent.append(seq)
                continue
            log.error("the broker refused an event; it stays queued and is retried", seq=seq, reason=error)
            self._outbox.mark_failed(seq, error)
            self._handed_up_to = min(self._handed_up_to, seq - 1)
            self._retry_at = time.monotonic() + _RETRY_AFTER_REFUSAL_S
        if sent:
            self._outbox.mark_sent(sent)

    def _hand_over(self) -> None:
        if not self._in_flight:
            # Nothing awaits a PUBACK, so an unsent row behind us was replayed or refused: go back for it.
            oldest = self._outbox.unsent(0, 1)
            if oldest and oldest[0].seq <= self._handed_up_to:
                self._handed_up_to = oldest[0].seq - 1
        room = min(self._window, self._mqtt.receive_maximum) - len(self._in_flight)
        if room <= 0:
            return
        for row in self._outbox.unsent(self._handed_up_to, room):
            info = self._mqtt.publish(
                row.topic,
                row.payload,
                user_properties={"event_id": row.event_id, "stream": self._stream, "seq": str(row.seq)},
            )
            self._in_flight[info.mid] = row.seq
            self._handed_up_to = row.seq
