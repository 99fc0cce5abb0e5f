"""Wires the station together and owns start and stop order.

Start: store (clean crash leftovers) → cameras → MQTT → capture loop → triggers.
Stop: triggers → capture loop (the scan in progress finishes or leaves nothing) → events
flushed as far as the broker allows → 'offline' → cameras closed.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass

import structlog

from amflow_edge import __version__
from amflow_edge.capture import CaptureLoop, Trigger
from amflow_edge.commands import CommandHandler
from amflow_edge.config import StationConfig
from amflow_edge.events import EventPublisher
from amflow_edge.mqtt import StationMqtt
from amflow_edge.record import ScanRecord
from amflow_edge.state import StationState
from amflow_edge.store import ScanStore
from drivers.base import CameraDriver, DriverError

log = structlog.get_logger(__name__)


def make_driver(cfg: StationConfig) -> CameraDriver:
    if cfg.rig.driver == "mock":
        from drivers.mock import MockDriver
        from inspection.designs import DesignLibrary

        return MockDriver(cfg.cameras, cfg.mock, DesignLibrary.load(cfg.designs.library))
    raise DriverError(f"camera driver {cfg.rig.driver!r} is not available in this build; set rig.driver = \"mock\"")


@dataclass
class RunOptions:
    max_scans: int | None = None
    flush_timeout_s: float = 10.0


class Station:
    def __init__(self, cfg: StationConfig, driver: CameraDriver | None = None) -> None:
        self.cfg = cfg
        self.stop_event = threading.Event()
        self.scan_session = cfg.session.scan_session or str(uuid.uuid4())
        capture = cfg.capture
        self.store = ScanStore(
            cfg.station.data_root, capture.png_compression, capture.png_strategy, capture.png_filter, capture.encode_threads
        )
        self.driver = driver if driver is not None else make_driver(cfg)
        self.mqtt = StationMqtt(cfg)
        self.publisher = EventPublisher(self.mqtt, cfg.mqtt.hook.id)
        self.loop = CaptureLoop(cfg, self.driver, self.store, self.publisher, self.scan_session, self._after_scan)
        self.mqtt.set_request_handler(CommandHandler(self.loop.submit, self.mqtt.respond))
        self.mqtt.on_connected = lambda: self.publish_state("running")
        self._threads: list[threading.Thread] = []
        self._max_scans: int | None = None

    def state(self, mode: str) -> StationState:
        return StationState(
            station=self.cfg.station.id,
            version=__version__,
            mode=mode,  # type: ignore[arg-type]
            driver=self.cfg.rig.driver,
            scan_session=self.scan_session,
            cameras=self.driver.health(),
            scans_stored=self.loop.scans_stored,
            scans_failed=self.loop.scans_failed,
            last_scan=self.loop.last_scan,
        )

    def publish_state(self, mode: str) -> None:
        self.mqtt.publish(self.mqtt.state_topic, self.state(mode).model_dump_json().encode(), retain=True)

    def _after_scan(self, record: ScanRecord) -> None:
        self.publish_state("running")
        if self._max_scans is not None and self.loop.scans_stored >= self._max_scans:
            log.info("captured the requested number of scans; stopping", scans=self.loop.scans_stored)
            self.stop_event.set()

    def _timer(self, interval_s: float) -> None:
        while not self.stop_event.wait(interval_s):
            self.loop.submit(Trigger(source="timer"))

    def _spawn(self, name: str, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, name=name, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def start(self, options: RunOptions | None = None) -> None:
        options = options or RunOptions()
        self._max_scans = options.max_scans
        self.store.prepare()
        self.driver.open()
        self.mqtt.start()
        self._spawn("capture", self.loop.run, self.stop_event)
        if self.cfg.capture.timer_interval_s is not None:
            self._spawn("timer", self._timer, self.cfg.capture.timer_interval_s)
        log.info(
            "station running",
            station=self.cfg.station.id,
            scan_session=self.scan_session,
            data_root=str(self.cfg.station.data_root),
            driver=self.cfg.rig.driver,
        )

    def wait(self) -> None:
        while not self.stop_event.wait(0.5):
            pass

    def shutdown(self, flush_timeout_s: float = 10.0) -> None:
        self.stop_event.set()
        for thread in self._threads:
            thread.join(timeout=30)
        if not self.publisher.flush(flush_timeout_s):
            log.warning("some events were not acknowledged by the broker before stopping")
        if self.mqtt.connected.is_set():
            self.publish_state("stopping")
        self.mqtt.stop()
        self.driver.close()
        self.store.close()
        log.info("station stopped", scans_stored=self.loop.scans_stored, scans_failed=self.loop.scans_failed)
