"""A TCP proxy that adds latency: this kernel has no netem, so the fleet tests' 200 ms of delay between stations and
the plant broker is added here, in the path, rather than on the link (tests/netlab.py makes the links).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from types import TracebackType


class DelayProxy:
    """A TCP proxy that delivers each chunk ``delay_s`` after it arrived, in order, in both directions.

    This is latency, not throttling: chunks in flight wait concurrently, so a stream's throughput is not divided
    by the delay. When either side closes or fails, what it sent is still delivered (after the delay) and then
    both sides are closed. If the upstream refuses, the client's connection is reset, the nearest a proxy can
    come to "connection refused" once it has accepted.
    """

    def __init__(
        self,
        listen: tuple[str, int],
        upstream: tuple[str, int],
        delay_s: float = 0.2,
        chunk_bytes: int = 65536,
        max_queued_chunks: int = 1024,
    ) -> None:
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        self._listen = listen
        self._upstream = upstream
        self._delay_s = delay_s
        self._chunk_bytes = chunk_bytes
        self._max_queued_chunks = max_queued_chunks
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.address: tuple[str, int] = listen

    @property
    def delay_s(self) -> float:
        return self._delay_s

    def set_delay(self, delay_s: float) -> None:
        """Applies to chunks arriving from now on; earlier ones keep their due time, and order is kept."""
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        self._delay_s = delay_s

    def start(self) -> None:
        if self._loop is not None:
            raise RuntimeError("DelayProxy already started")
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="delay-proxy", daemon=True)
        self._thread.start()
        try:
            self.address = asyncio.run_coroutine_threadsafe(self._start_server(), loop).result(timeout=10)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        if not thread.is_alive():
            loop.close()
        self._loop = None
        self._thread = None

    def __enter__(self) -> DelayProxy:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    async def _start_server(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(self._accept, self._listen[0], self._listen[1], reuse_address=True)
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            try:
                upstream_r, upstream_w = await asyncio.open_connection(*self._upstream)
            except OSError:
                _reset(client_w)
                return
            _nodelay(client_w)
            _nodelay(upstream_w)
            try:
                pumps = [
                    asyncio.create_task(self._pump(client_r, upstream_w)),
                    asyncio.create_task(self._pump(upstream_r, client_w)),
                ]
                try:
                    await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for pump in pumps:
                        pump.cancel()
                    await asyncio.gather(*pumps, return_exceptions=True)
            finally:
                await _close(upstream_w)
        finally:
            await _close(client_w)
            self._connections.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(self._max_queued_chunks)

        async def receive() -> None:
            while True:
                try:
                    data = await reader.read(self._chunk_bytes)
                except OSError:
                    data = b""
                await queue.put((loop.time() + self._delay_s, data))
                if not data:
                    return

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:
                    return
                try:
                    writer.write(data)
                    await writer.drain()
                except OSError:
                    return

        receiver = asyncio.create_task(receive())
        try:
            await deliver()
        finally:
            receiver.cancel()
            await asyncio.gather(receiver, return_exceptions=True)


def _reset(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def _nodelay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(writer.wait_closed(), timeout=1)
