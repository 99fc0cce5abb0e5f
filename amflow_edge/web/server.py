"""uvicorn on a thread of the daemon, with an event loop of its own.

In-process so the API reads the same database and calls the same handlers as the rest of the station, with
nothing more to deploy; on its own thread and loop so neither a slow client nor a burst of image requests can
stall the capture loop or paho. Started by Station.start after the broker client, stopped in Station.shutdown.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable

import structlog
import uvicorn
from fastapi import FastAPI

from amflow_edge.ops.watchdog import Heartbeat
from amflow_edge.web.bind import HttpServerError, address_of, bind
from amflow_edge.web.stream import Broadcaster

log = structlog.get_logger(__name__)

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0
BEAT_S = 5.0
SILENT_S = 60.0
"""The event loop beats every BEAT_S; a loop silent for SILENT_S (a handler that blocks it) serves no screen, and
the watchdog lets systemd restart the station."""


def _loop_factory() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # a dependency on Linux (pyproject.toml); elsewhere asyncio's loop serves as well
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


NICE = 10
"""The HTTP thread's niceness above the station's: capture, PNG encoding and the broker come first when screens
pull images on a two-core PC. Linux threads created by this one (the worker threads that read files) inherit it."""


def _lower_priority() -> None:
    """Best effort: on Linux a thread has a niceness of its own (setpriority on its thread id)."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + NICE)
    except (AttributeError, OSError) as exc:
        log.info("the HTTP thread runs at the station's priority", reason=str(exc))


class HttpServer:
    def __init__(
        self,
        apps: list[tuple[str, str, FastAPI]],
        broadcaster: Broadcaster,
        on_stop: Callable[[], None] = lambda: None,
        release: Callable[[], None] = lambda: None,
        trusted_proxies: list[str] | None = None,
    ) -> None:
        """`apps`: (config key, host:port, app) per address: the full API, and the read-only one if configured;
        `on_stop`: what to release once the server has stopped (its database connections)."""
        self._apps = apps
        self._broadcaster = broadcaster
        self._on_stop = on_stop
        self._release = release
        self._proxies = list(trusted_proxies or [])
        self.heartbeat = Heartbeat("http", SILENT_S)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._servers: list[uvicorn.Server] = []
        self._sockets: list[socket.socket] = []
        self._thread: threading.Thread | None = None
        self._failed: BaseException | None = None
        self.addresses: list[str] = []

    def start(self) -> None:
        """Binds every address first (a taken port raises HttpServerError, nothing left running), then serves."""
        try:
            for setting, listen, _ in self._apps:
                self._sockets.append(bind(listen, setting))
        except HttpServerError:
            self._close_sockets()
            self.heartbeat.retire()  # nothing to beat: a server that never started is not a hung one
            raise
        for _, _, app in self._apps:
            config = uvicorn.Config(
                app,
                lifespan="off",
                log_config=None,  # the daemon's logging stays as configured (ops/log.py)
                access_log=False,
                log_level="warning",  # uvicorn's start and stop lines say nothing the station's log does not
                ws="none",
                http="auto",
                timeout_graceful_shutdown=2,
                timeout_keep_alive=30,
                limit_concurrency=256,
                server_header=False,
                # X-Forwarded-For only from configured proxies: uvicorn's default believes any loopback peer, so
                # a local client (or a proxy passing the header on) could choose the address the limits count.
                proxy_headers=bool(self._proxies),
                forwarded_allow_ips=self._proxies or None,
                h11_max_incomplete_event_size=16 * 1024,
            )
            self._servers.append(uvicorn.Server(config))
        self.addresses = [address_of(s) for s in self._sockets]
        self._thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._thread.start()
        if not self._started():
            self.stop()
            raise HttpServerError(f"the HTTP API did not start within {START_TIMEOUT_S:.0f} s: {self._failed}")
        log.info("HTTP API listening", addresses=self.addresses)

    def _started(self) -> bool:
        deadline = threading.Event()
        for _ in range(int(START_TIMEOUT_S / 0.01)):
            if all(s.started for s in self._servers):
                return True
            if self._failed is not None or (self._thread is not None and not self._thread.is_alive()):
                return False
            deadline.wait(0.01)
        return False

    def _run(self) -> None:
        _lower_priority()
        try:
            with asyncio.Runner(loop_factory=_loop_factory) as runner:
                runner.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - uvicorn exits with SystemExit on a startup failure
            self._failed = exc
            log.error("the HTTP API stopped", error=repr(exc))

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        self._broadcaster.attach(self.loop)
        beating = asyncio.create_task(self._beat())
        try:
            await asyncio.gather(
                *(server.serve(sockets=[sock]) for server, sock in zip(self._servers, self._sockets, strict=True))
            )
        finally:
            beating.cancel()
            self._broadcaster.attach(None)

    async def _beat(self) -> None:
        while True:
            self.heartbeat.beat()
            await asyncio.sleep(BEAT_S)

    def stop(self) -> None:
        """Open streams end at once; requests under way get timeout_graceful_shutdown to finish."""
        self.heartbeat.retire()
        self._release()  # requests waiting for the station's answer end with 503 now, not at their timeout
        self._broadcaster.close()
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("the HTTP API did not stop in time; left to end with the process")
            self._thread = None
        self._close_sockets()
        self._on_stop()

    def _close_sockets(self) -> None:
        for sock in self._sockets:
            sock.close()
        self._sockets = []
