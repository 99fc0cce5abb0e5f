"""Server-Sent Events: every scan event and every state the station publishes, pushed to the screens.

The station's threads (capture, inspection, paho, the supervisor) call `scan_event` and `state`; those only
format the message once and hand it to the server's event loop (call_soon_threadsafe), which puts it in each
client's bounded queue. A client that does not keep up is dropped when its queue is full, so a stalled browser
never blocks or slows the station; its EventSource reconnects and is sent the current state first.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable
from contextlib import suppress

from amflow_edge.messaging.payload import EventName
from amflow_edge.station.state import StationState
from amflow_edge.storage.record import ScanRecord

HEARTBEAT_S = 15.0
RETRY_MS = 2000
"""What the browser waits before it reconnects a dropped stream."""
QUEUE_SIZE = 256
"""Messages a client may fall behind before it is dropped: minutes of a busy station's events."""

STREAMS_PER_ADDRESS = 8
"""Event streams one client address may hold open: a station's screens and a dashboard or two, with reconnects."""
STREAMS_AT_ALL = 64
"""Event streams in total: each is a socket and a queue; beyond this a flood of them (slowloris) is refused (503)."""

_CLOSE = ""
"""Ends a client's stream: the server stops, or the client fell too far behind."""


def scan_message(event: EventName, record: ScanRecord) -> str:
    return f'event: scan\ndata: {{"event":"{event}","scan":{record.scan.model_dump_json()}}}\n\n'


def state_message(state: StationState) -> str:
    return f"event: state\ndata: {state.model_dump_json()}\n\n"


class Client:
    def __init__(self) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=QUEUE_SIZE)
        self.dropped = False


class Broadcaster:
    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._clients: set[Client] = set()
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}

    def attach(self, loop: asyncio.AbstractEventLoop | None) -> None:
        """The server's loop, where the clients' queues live; None once it stops."""
        with self._lock:
            self._loop = loop

    def admit(self, address: str) -> str | None:
        """Counts a new stream from `address`; why it is refused instead (then nothing is counted). Every admitted
        stream is released by stream() when it ends."""
        with self._lock:
            if sum(self._open.values()) >= STREAMS_AT_ALL:
                return f"the station serves {STREAMS_AT_ALL} event streams already; close one or try again later"
            if self._open.get(address, 0) >= STREAMS_PER_ADDRESS:
                return (
                    f"{address} has {STREAMS_PER_ADDRESS} event streams open already; close a screen's tab or "
                    "try again later"
                )
            self._open[address] = self._open.get(address, 0) + 1
            return None

    def _release(self, address: str) -> None:
        with self._lock:
            left = self._open.get(address, 0) - 1
            if left > 0:
                self._open[address] = left
            else:
                self._open.pop(address, None)

    @property
    def clients(self) -> int:
        return len(self._clients)

    # --- the station's side (any thread) ---

    def scan_event(self, event: EventName, record: ScanRecord) -> None:
        """Events.listen listener."""
        if self._clients:
            self._send(scan_message(event, record))

    def state(self, state: StationState) -> None:
        """Station.listen_state listener."""
        if self._clients:
            self._send(state_message(state))

    def _send(self, message: str) -> None:
        with self._lock:
            loop = self._loop
        if loop is None:
            return
        with suppress(RuntimeError):  # the loop closed meanwhile: the server is stopping
            loop.call_soon_threadsafe(self._deliver, message)

    def close(self) -> None:
        """Every stream ends (the server is stopping), so uvicorn need not wait for them."""
        self._send(_CLOSE)

    # --- the loop's side ---

    def _deliver(self, message: str) -> None:
        for client in list(self._clients):
            if client.dropped:
                continue
            try:
                client.queue.put_nowait(message)
            except asyncio.QueueFull:
                client.dropped = True  # the stream ends at its next read; it may reconnect
                self._clients.discard(client)
            if message == _CLOSE:
                self._clients.discard(client)

    async def stream(self, first: Callable[[], StationState], address: str | None = None) -> AsyncGenerator[str, None]:
        """One client's stream: the reconnect hint, the current state, then events and a heartbeat. `address`:
        the one admit() counted, released when the stream ends."""
        client = Client()
        self._clients.add(client)
        try:
            yield f"retry: {RETRY_MS}\n\n"
            yield state_message(await asyncio.to_thread(first))
            while not client.dropped:
                try:
                    message = await asyncio.wait_for(client.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    yield ": heartbeat\n\n"
                    continue
                if message == _CLOSE:
                    return
                yield message
        finally:
            self._clients.discard(client)
            if address is not None:
                self._release(address)
