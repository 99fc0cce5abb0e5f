"""Button sources turn exactly one physical press into one ButtonPress, and outlive missing devices.

Real-hardware paths run through the kernel's own simulators (uinput, gpio-sim) where the
machine has them; elsewhere those tests skip and say why.
"""

from __future__ import annotations

import contextlib
import errno
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import evdev
import gpiod
import pytest
from evdev import InputEvent, ecodes
from structlog.testing import capture_logs

from amflow_edge.config.qc import EvdevButtons, GpiodButtons, KeyboardButtons
from amflow_edge.panel import evdev_buttons, gpiod_buttons
from amflow_edge.panel.base import ButtonPress, ButtonSource
from amflow_edge.panel.errors import PanelConfigError
from amflow_edge.panel.evdev_buttons import EvdevButtonSource, event_to_press, resolve_keys
from amflow_edge.panel.factory import make_button_sources
from amflow_edge.panel.gpiod_buttons import GpiodButtonSource, bind_lines, edge_to_press
from amflow_edge.panel.keyboard_buttons import KeyboardButtonSource

PEDAL = "/dev/input/by-id/usb-Foot_Pedal-event-kbd"
WHEN_SEC = 1773243417  # 2026-03-11T15:36:57Z
WHEN = datetime(2026, 3, 11, 15, 36, 57, tzinfo=UTC)
DEADLINE_S = 5.0
JOIN_S = 2.0
GPIO_SIM = Path("/sys/kernel/config/gpio-sim")
UINPUT = Path("/dev/uinput")


class Running:
    """A source running in its own thread, as the daemon runs it, collecting what it delivers."""

    def __init__(self, source: ButtonSource) -> None:
        self.presses: queue.Queue[ButtonPress] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=source.run, args=(self.presses.put, self.stop), daemon=True)
        self.thread.start()

    def next_press(self) -> ButtonPress:
        return self.presses.get(timeout=DEADLINE_S)

    def finish(self) -> list[ButtonPress]:
        """Stop, insist the thread ends, and return the presses not yet taken."""
        self.stop.set()
        self.thread.join(timeout=JOIN_S)
        assert not self.thread.is_alive(), "run() did not return after stop was set"
        left = []
        while not self.presses.empty():
            left.append(self.presses.get_nowait())
        return left


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.01)


def entries(logs: Sequence[Mapping[str, Any]], event: str, **fields: object) -> list[Mapping[str, Any]]:
    return [e for e in logs if e["event"] == event and all(e.get(k) == v for k, v in fields.items())]


def pedal_settings(device: str | Path = PEDAL, **overrides: Any) -> EvdevButtons:
    return EvdevButtons(device=Path(device), approve_keys=["KEY_F13", "BTN_0"], reject_keys=["KEY_F14"], **overrides)


# evdev: one event → a press or nothing


def key(code: int, value: int, usec: int = 250_000) -> InputEvent:
    return InputEvent(WHEN_SEC, usec, ecodes.EV_KEY, code, value)


def test_key_down_is_one_press_with_kernel_time_and_source() -> None:
    bindings = resolve_keys(pedal_settings())
    press = event_to_press(key(ecodes.KEY_F13, 1), bindings)
    assert press == ButtonPress(
        action="approve", source=f"evdev:{PEDAL}:KEY_F13", at=WHEN + timedelta(microseconds=250_000)
    )
    assert press.at.utcoffset() == timedelta(0)
    reject = event_to_press(key(ecodes.KEY_F14, 1, usec=7), bindings)
    assert reject is not None and reject.action == "reject" and reject.source == f"evdev:{PEDAL}:KEY_F14"


def test_source_names_the_key_as_configured_even_for_codes_with_two_names() -> None:
    assert ecodes.ecodes["BTN_0"] == ecodes.ecodes["BTN_MISC"]
    press = event_to_press(key(ecodes.BTN_0, 1), resolve_keys(pedal_settings()))
    assert press is not None and press.source == f"evdev:{PEDAL}:BTN_0"


@pytest.mark.parametrize(
    "event",
    [
        key(ecodes.KEY_F13, 2),  # auto-repeat while held
        key(ecodes.KEY_F13, 0),  # release
        key(ecodes.KEY_A, 1),  # a key nobody configured
        InputEvent(WHEN_SEC, 0, ecodes.EV_MSC, ecodes.MSC_SCAN, 1),
        InputEvent(WHEN_SEC, 0, ecodes.EV_SYN, ecodes.SYN_REPORT, 0),
    ],
    ids=["repeat", "release", "other-key", "msc-scan", "syn"],
)
def test_other_events_are_no_press(event: InputEvent) -> None:
    assert event_to_press(event, resolve_keys(pedal_settings())) is None


def test_unknown_key_name_fails_at_construction_naming_key_and_setting() -> None:
    settings = EvdevButtons(device=Path(PEDAL), approve_keys=["KEY_F13"], reject_keys=["KEY_FOOBAR"])
    with pytest.raises(PanelConfigError, match="KEY_FOOBAR") as caught:
        EvdevButtonSource(settings)
    assert "reject_keys" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_two_names_of_one_key_cannot_mean_approve_and_reject() -> None:
    settings = EvdevButtons(device=Path(PEDAL), approve_keys=["BTN_0"], reject_keys=["BTN_MISC"])
    with pytest.raises(PanelConfigError, match="BTN_0 and BTN_MISC"):
        make_button_sources([settings])


# evdev: the run loop


@pytest.mark.parametrize(
    ("where", "cause", "fix"),
    [
        ("missing", "not found", "ls -l /dev/input/by-id"),
        ("/dev/null", "not an input event device", "/dev/input/by-id/"),
    ],
    ids=["missing", "not-an-input-device"],
)
def test_bad_device_is_retried_quietly_and_stop_is_honoured(tmp_path: Path, where: str, cause: str, fix: str) -> None:
    device = tmp_path / "usb-Unplugged_Pedal-event-kbd" if where == "missing" else Path(where)
    with capture_logs() as logs:
        running = Running(EvdevButtonSource(pedal_settings(device)))
        wait_for(lambda: bool(entries(logs, "panel device unavailable; retrying")), "the missing-device line")
        assert running.thread.is_alive()
        assert running.finish() == []
    [line] = entries(logs, "panel device unavailable; retrying")
    assert (line["device"], line["cause"]) == (str(device), cause)
    assert line["log_level"] in ("warning", "error")
    assert fix in line["fix"]


class FakePedal:
    """Stands in for evdev.InputDevice: a pipe wakes select() and read() hands over the queued events."""

    def __init__(self) -> None:
        self._read_end, self._write_end = os.pipe()
        self._events: queue.Queue[InputEvent] = queue.Queue()
        self._unplugged = False
        self.grabbed = False
        self.closed = False

    @property
    def fd(self) -> int:
        return self._read_end

    def grab(self) -> None:
        assert not self.grabbed, "grabbed twice"
        self.grabbed = True

    def ungrab(self) -> None:
        self.grabbed = False

    def close(self) -> None:
        os.close(self._read_end)
        os.close(self._write_end)
        self.closed = True

    def read(self) -> Iterator[InputEvent]:
        os.read(self._read_end, 4096)
        if self._unplugged:
            raise OSError(errno.ENODEV, "No such device")
        while not self._events.empty():
            yield self._events.get_nowait()

    def send(self, *events: InputEvent) -> None:
        for event in events:
            self._events.put(event)
        os.write(self._write_end, b".")

    def unplug(self) -> None:
        self._unplugged = True
        os.write(self._write_end, b".")


def test_reopens_logs_each_cause_once_and_delivers_one_press_per_key_down(monkeypatch: pytest.MonkeyPatch) -> None:
    pedals: list[FakePedal] = []
    failures = [FileNotFoundError(2, "gone"), FileNotFoundError(2, "gone"), PermissionError(13, "denied")]

    def open_device(path: str) -> FakePedal:
        assert path == PEDAL
        if failures:
            raise failures.pop(0)
        pedals.append(FakePedal())
        return pedals[-1]

    monkeypatch.setattr(evdev_buttons.evdev, "InputDevice", open_device)
    with capture_logs() as logs:
        running = Running(EvdevButtonSource(pedal_settings(reopen_max_backoff_s=0.05)))
        wait_for(lambda: bool(pedals) and pedals[0].grabbed, "the pedal to be opened and grabbed")
        first = pedals[0]
        first.send(key(ecodes.KEY_F13, 1), key(ecodes.KEY_F13, 2), key(ecodes.KEY_F13, 2), key(ecodes.KEY_F13, 0))
        first.send(key(ecodes.KEY_A, 1), key(ecodes.KEY_A, 0), key(ecodes.KEY_F14, 1), key(ecodes.KEY_F14, 0))
        assert [running.next_press().action, running.next_press().action] == ["approve", "reject"]

        first.unplug()
        wait_for(lambda: len(pedals) == 2 and pedals[1].grabbed, "the pedal to be reopened")
        assert first.closed and not first.grabbed
        pedals[1].send(key(ecodes.BTN_0, 1))
        assert running.next_press().source == f"evdev:{PEDAL}:BTN_0"
        assert running.finish() == []
    assert pedals[1].closed and not pedals[1].grabbed
    causes = [(e["cause"], e["log_level"]) for e in entries(logs, "panel device unavailable; retrying")]
    assert causes == [("not found", "warning"), ("permission denied", "error"), ("unplugged", "warning")]
    assert len(entries(logs, "panel device reconnected", device=PEDAL)) == 2


def test_a_failing_press_handler_does_not_stop_the_source(monkeypatch: pytest.MonkeyPatch) -> None:
    pedal = FakePedal()
    monkeypatch.setattr(evdev_buttons.evdev, "InputDevice", lambda path: pedal)
    delivered: list[ButtonPress] = []

    def handler(press: ButtonPress) -> None:
        delivered.append(press)
        raise RuntimeError("decision logic bug")

    stop = threading.Event()
    with capture_logs() as logs:
        thread = threading.Thread(target=EvdevButtonSource(pedal_settings()).run, args=(handler, stop), daemon=True)
        thread.start()
        wait_for(lambda: pedal.grabbed, "the pedal to be grabbed")
        pedal.send(key(ecodes.KEY_F13, 1))
        pedal.send(key(ecodes.KEY_F14, 1))
        wait_for(lambda: len(delivered) == 2, "both presses")
        stop.set()
        thread.join(timeout=JOIN_S)
    assert not thread.is_alive()
    assert len(entries(logs, "button press handler failed")) == 2
    assert entries(logs, "panel device unavailable; retrying") == []


def _uinput_unusable() -> str | None:
    if not UINPUT.exists():
        return f"{UINPUT} is absent (modprobe uinput)"
    if not os.access(UINPUT, os.W_OK):
        return f"{UINPUT} is not writable by uid {os.getuid()} (needs root or the 'uinput' group)"
    return None


TYPED = [
    *[(ecodes.KEY_F13, 1), (ecodes.KEY_F13, 2), (ecodes.KEY_F13, 2), (ecodes.KEY_F13, 0)],
    *[(ecodes.KEY_A, 1), (ecodes.KEY_A, 0)],
    *[(ecodes.KEY_F14, 1), (ecodes.KEY_F14, 2), (ecodes.KEY_F14, 0)],
    *[(ecodes.KEY_F13, 1), (ecodes.KEY_F13, 0)],
]
"""Held approve, an unconfigured key, held reject, approve again: three presses."""


@pytest.mark.skipif(_uinput_unusable() is not None, reason=str(_uinput_unusable()))
def test_real_device_through_uinput_one_press_per_key_down_and_grab() -> None:
    keys = [ecodes.KEY_F13, ecodes.KEY_F14, ecodes.KEY_A]
    with evdev.UInput({ecodes.EV_KEY: keys}, name="amflow-edge test pedal") as pedal:
        path = str(pedal.device.path)
        source = EvdevButtonSource(pedal_settings(path))
        with capture_logs() as logs:
            running = Running(source)
            wait_for(lambda: bool(entries(logs, "panel device opened", device=path)), "the device to be opened")
            probe = evdev.InputDevice(path)
            try:
                with pytest.raises(OSError):
                    probe.grab()  # the source holds the grab, so the console sees no F13s
                for code, value in TYPED:
                    pedal.write(ecodes.EV_KEY, code, value)
                    pedal.syn()
                presses = [running.next_press() for _ in range(3)]
                assert running.finish() == []
                probe.grab()  # released on stop
                probe.ungrab()
            finally:
                probe.close()
    assert [p.action for p in presses] == ["approve", "reject", "approve"]
    assert [p.source for p in presses] == [f"evdev:{path}:KEY_F13", f"evdev:{path}:KEY_F14", f"evdev:{path}:KEY_F13"]
    assert all(abs(p.at - datetime.now(UTC)) < timedelta(minutes=1) for p in presses), "not the realtime clock"


# gpiod


def edge(kind: gpiod.EdgeEvent.Type, offset: int, ns: int = 0) -> gpiod.EdgeEvent:
    return gpiod.EdgeEvent(kind.value, WHEN_SEC * 1_000_000_000 + ns, offset, 1, 1)


def gpio_settings(chip: str | Path = "/dev/gpiochip0", **overrides: Any) -> GpiodButtons:
    fields: dict[str, Any] = {"approve_line": 17, "reject_line": "GPIO27", **overrides}
    return GpiodButtons(chip=Path(chip), **fields)


def test_rising_edge_is_a_press_with_its_realtime_timestamp() -> None:
    bindings = bind_lines(gpio_settings(), approve_offset=17, reject_offset=27)
    press = edge_to_press(edge(gpiod.EdgeEvent.Type.RISING_EDGE, 17, ns=123_456_789), bindings)
    assert press == ButtonPress(
        action="approve", source="gpiod:/dev/gpiochip0:17", at=WHEN + timedelta(microseconds=123_456)
    )
    reject = edge_to_press(edge(gpiod.EdgeEvent.Type.RISING_EDGE, 27), bindings)
    assert reject == ButtonPress(action="reject", source="gpiod:/dev/gpiochip0:GPIO27", at=WHEN)


def test_falling_edges_and_other_lines_are_no_press() -> None:
    bindings = bind_lines(gpio_settings(), approve_offset=17, reject_offset=27)
    assert edge_to_press(edge(gpiod.EdgeEvent.Type.FALLING_EDGE, 17), bindings) is None
    assert edge_to_press(edge(gpiod.EdgeEvent.Type.RISING_EDGE, 4), bindings) is None


@pytest.mark.parametrize(
    ("chip", "cause"), [("missing", "not found"), ("/dev/null", "not a GPIO chip")], ids=["missing", "not-a-chip"]
)
def test_bad_chip_is_retried_quietly_and_stop_is_honoured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chip: str, cause: str
) -> None:
    path = tmp_path / "gpiochip9" if chip == "missing" else Path(chip)
    opened: list[str] = []
    real_chip = gpiod.Chip

    def counting_chip(where: str) -> gpiod.Chip:
        opened.append(where)
        return real_chip(where)

    monkeypatch.setattr(gpiod_buttons.gpiod, "Chip", counting_chip)
    with capture_logs() as logs:
        running = Running(GpiodButtonSource(gpio_settings(path, reopen_max_backoff_s=0.05)))
        wait_for(lambda: len(opened) >= 4, "several attempts to open the chip")
        assert running.finish() == []
    [line] = entries(logs, "panel device unavailable; retrying")
    assert (line["device"], line["cause"]) == (str(path), cause)
    assert "gpiodetect" in line["fix"]


@dataclass
class SimChip:
    path: Path
    sysfs: Path

    def pull(self, offset: int, direction: str) -> None:
        (self.sysfs / f"sim_gpio{offset}" / "pull").write_text(direction)

    def value(self, offset: int) -> int:
        return int((self.sysfs / f"sim_gpio{offset}" / "value").read_text())

    def used(self, offset: int) -> bool:
        with gpiod.Chip(str(self.path)) as chip:
            return chip.get_line_info(offset).used


@pytest.fixture
def gpio_sim() -> Iterator[SimChip]:
    """An 8-line simulated chip (line 2 named APPROVE, line 6 named AMBER), removed afterwards."""
    if not GPIO_SIM.is_dir():
        pytest.skip(f"gpio-sim not available: {GPIO_SIM} is absent (CONFIG_GPIO_SIM, modprobe gpio-sim, configfs)")
    device = GPIO_SIM / f"amflow-test-{os.getpid()}"
    try:
        device.mkdir()
    except OSError as exc:
        pytest.skip(f"gpio-sim not usable: cannot create {device}: {exc}")
    bank = device / "bank0"
    lines = {2: "APPROVE", 6: "AMBER"}
    try:
        bank.mkdir()
        (bank / "num_lines").write_text("8")
        for offset, name in lines.items():
            (bank / f"line{offset}").mkdir()
            (bank / f"line{offset}" / "name").write_text(name)
        (device / "live").write_text("1")
        chip_name = (bank / "chip_name").read_text().strip()
        dev_name = (device / "dev_name").read_text().strip()
        yield SimChip(Path("/dev") / chip_name, Path("/sys/devices/platform") / dev_name / chip_name)
    finally:
        if (device / "live").exists():
            (device / "live").write_text("0")
        for offset in lines:
            if (bank / f"line{offset}").exists():
                (bank / f"line{offset}").rmdir()
        if bank.exists():
            bank.rmdir()
        device.rmdir()


def test_real_lines_through_gpio_sim(gpio_sim: SimChip) -> None:
    settings = GpiodButtons(chip=gpio_sim.path, approve_line="APPROVE", reject_line=5, debounce_ms=1)
    running = Running(GpiodButtonSource(settings))
    wait_for(lambda: gpio_sim.used(2) and gpio_sim.used(5), "the lines to be requested")
    gpio_sim.pull(2, "pull-down")  # active low: pulled down is pressed
    first = running.next_press()
    gpio_sim.pull(2, "pull-up")
    gpio_sim.pull(5, "pull-down")
    second = running.next_press()
    gpio_sim.pull(5, "pull-up")
    assert running.finish() == []
    assert (first.action, first.source) == ("approve", f"gpiod:{gpio_sim.path}:APPROVE")
    assert (second.action, second.source) == ("reject", f"gpiod:{gpio_sim.path}:5")
    assert abs(first.at - datetime.now(UTC)) < timedelta(minutes=1), "not the realtime clock"
    assert not gpio_sim.used(2), "lines not released on stop"


# keyboard


@pytest.fixture
def pipe() -> Iterator[tuple[Any, int]]:
    """A stream like stdin (text, buffered) over a pipe, and the fd the test types into."""
    read_end, write_end = os.pipe()
    stream = open(read_end, encoding="utf-8")  # noqa: SIM115 - closed below
    yield stream, write_end
    stream.close()
    with contextlib.suppress(OSError):
        os.close(write_end)


def test_keys_become_presses_case_insensitively_and_eof_ends_the_run(pipe: tuple[Any, int]) -> None:
    stream, typing = pipe
    source = KeyboardButtonSource(KeyboardButtons(approve_key="a", reject_key="r"), stream)
    os.write(typing, b"axR")
    os.close(typing)
    presses: list[ButtonPress] = []
    thread = threading.Thread(target=source.run, args=(presses.append, threading.Event()), daemon=True)
    with capture_logs() as logs:
        thread.start()
        thread.join(timeout=JOIN_S)
    assert not thread.is_alive(), "EOF did not end run()"
    assert [(p.action, p.source) for p in presses] == [("approve", "keyboard"), ("reject", "keyboard")]
    assert all(p.at.utcoffset() == timedelta(0) for p in presses)
    assert len(entries(logs, "keyboard input ended; keyboard buttons off")) == 1


def test_keyboard_honours_stop_while_waiting_for_keys(pipe: tuple[Any, int]) -> None:
    stream, typing = pipe
    running = Running(KeyboardButtonSource(KeyboardButtons(), stream))
    os.write(typing, "é".encode() + b"r")
    assert running.next_press().action == "reject"
    assert running.finish() == []


def test_keyboard_keys_that_differ_only_in_case_are_refused() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="read case-insensitively"):
        KeyboardButtons(approve_key="a", reject_key="A")


def test_factory_builds_each_kind() -> None:
    sources = make_button_sources([pedal_settings(), gpio_settings(), KeyboardButtons()])
    assert [type(s) for s in sources] == [EvdevButtonSource, GpiodButtonSource, KeyboardButtonSource]
    assert all(isinstance(s, ButtonSource) for s in sources)
    assert [s.name for s in sources] == [f"evdev:{PEDAL}", "gpiod:/dev/gpiochip0", "keyboard"]
