"""Lamps show the machine verdict of the awaited scan, blink while it is inspected, and never raise."""

from __future__ import annotations

import errno
import threading
import time
from pathlib import Path
from typing import Any, get_args

import pytest
from gpiod.line import Value
from structlog.testing import capture_logs

from amflow_edge.config.qc import GpiodLamps
from amflow_edge.panel import gpiod_lamps
from amflow_edge.panel.base import Lamps, LampSignal, NoLamps
from amflow_edge.panel.factory import make_lamps
from amflow_edge.panel.gpiod_lamps import GpiodLampPanel, Lamp, LampPattern, fitted_lines, lamp_pattern
from tests.test_panel_sources import SimChip, gpio_sim, wait_for  # noqa: F401 - gpio_sim is a fixture

ALL: frozenset[Lamp] = frozenset({"green", "red", "amber"})
OFFSETS: dict[Lamp, int] = {"green": 4, "red": 5, "amber": 6}
UNAVAILABLE = "lamps unavailable; the station runs without them"


@pytest.mark.parametrize(
    ("signal", "fitted", "expected"),
    [
        ("idle", ALL, LampPattern()),
        ("pass", ALL, LampPattern(steady=frozenset({"green"}))),
        ("fail", ALL, LampPattern(steady=frozenset({"red"}))),
        ("review", ALL, LampPattern(steady=frozenset({"amber"}))),
        ("inspecting", ALL, LampPattern(blinking=frozenset({"amber"}))),
        ("inspecting", frozenset({"green", "red"}), LampPattern()),
        ("review", frozenset({"green", "red"}), LampPattern()),
        ("pass", frozenset({"red", "amber"}), LampPattern()),
        ("fail", frozenset({"red"}), LampPattern(steady=frozenset({"red"}))),
    ],
)
def test_signal_to_lamps(signal: LampSignal, fitted: frozenset[Lamp], expected: LampPattern) -> None:
    assert lamp_pattern(signal, fitted) == expected


def test_every_signal_is_mapped() -> None:
    patterns = {signal: lamp_pattern(signal, ALL) for signal in get_args(LampSignal)}
    assert set(patterns) == {"idle", "inspecting", "pass", "fail", "review"}
    lit = [p.steady | p.blinking for s, p in patterns.items() if s != "idle"]
    assert all(len(lamps) == 1 for lamps in lit), "each non-idle signal lights exactly one lamp"


def test_only_configured_lines_are_fitted() -> None:
    settings = GpiodLamps(green_line=17, amber_line="AMBER")
    assert fitted_lines(settings) == {"green": 17, "amber": "AMBER"}


def test_no_lamp_settings_mean_no_lamps() -> None:
    lamps = make_lamps(None)
    assert isinstance(lamps, NoLamps)
    lamps.show("fail")
    lamps.close()


def test_bad_chip_never_raises_and_logs_once(tmp_path: Path) -> None:
    chip = tmp_path / "gpiochip7"
    with capture_logs() as logs:
        lamps = make_lamps(GpiodLamps(chip=chip, green_line=1, red_line=2, amber_line="AMBER"))
        assert isinstance(lamps, Lamps)
        for signal in ["pass", "inspecting", "fail", "review", "idle", "inspecting"]:
            lamps.show(signal)  # type: ignore[arg-type]
        lamps.close()
        lamps.show("pass")
    [line] = [e for e in logs if e["event"] == UNAVAILABLE]
    assert (line["chip"], line["cause"], line["log_level"]) == (str(chip), "not found", "warning")


class FakeRequest:
    """Records what the lamp lines are set to, as on/off per lamp."""

    def __init__(self) -> None:
        self.states: list[frozenset[Lamp]] = []
        self.released = False
        self.fail_with: OSError | None = None
        self._lock = threading.Lock()

    def set_values(self, values: dict[int, Value]) -> None:
        assert not self.released, "written after release"
        assert set(values) == set(OFFSETS.values()), "every lamp line is set on every write"
        if self.fail_with is not None:
            raise self.fail_with
        lamp_at = {offset: lamp for lamp, offset in OFFSETS.items()}
        with self._lock:
            self.states.append(frozenset(lamp_at[o] for o, v in values.items() if v == Value.ACTIVE))

    def release(self) -> None:
        self.released = True

    @property
    def lit(self) -> frozenset[Lamp]:
        with self._lock:
            return self.states[-1]

    def seen(self, state: set[str], since: int = 0) -> bool:
        with self._lock:
            return frozenset(state) in self.states[since:]


@pytest.fixture
def requests(monkeypatch: pytest.MonkeyPatch) -> list[FakeRequest]:
    """Every line request the panel makes, newest last; blink fast so the test stays quick."""
    made: list[FakeRequest] = []

    def request_outputs(settings: GpiodLamps) -> tuple[FakeRequest, dict[Lamp, int]]:
        made.append(FakeRequest())
        return made[-1], dict(OFFSETS)

    monkeypatch.setattr(gpiod_lamps, "request_outputs", request_outputs)
    monkeypatch.setattr(gpiod_lamps, "BLINK_HALF_PERIOD_S", 0.01)
    return made


def all_lamps() -> GpiodLamps:
    return GpiodLamps(green_line=4, red_line=5, amber_line=6)


def test_panel_lights_blinks_and_turns_off_on_close(requests: list[FakeRequest]) -> None:
    lamps = GpiodLampPanel(all_lamps())
    [request] = requests
    assert request.states == [frozenset()], "requested once, all off"
    lamps.show("pass")
    assert request.lit == {"green"}
    writes = len(request.states)
    lamps.show("pass")
    assert len(request.states) == writes, "showing the same signal again writes nothing"

    lamps.show("inspecting")
    assert request.lit == {"amber"}
    mark = len(request.states)
    wait_for(lambda: request.seen(set(), since=mark), "amber to blink off")
    wait_for(lambda: request.seen({"amber"}, since=mark + 1), "amber to blink on again")

    lamps.show("fail")
    after_fail = len(request.states) - 1
    time.sleep(0.1)  # ten blink half-periods: no stale amber may follow the verdict
    assert set(request.states[after_fail:]) == {frozenset({"red"})}

    lamps.show("inspecting")
    lamps.close()
    assert request.lit == frozenset() and request.released
    lamps.show("review")
    assert request.lit == frozenset(), "show() after close() changes nothing"
    assert len(requests) == 1


def test_lamps_come_back_after_the_chip_fails(requests: list[FakeRequest]) -> None:
    with capture_logs() as logs:
        lamps = GpiodLampPanel(all_lamps())
        requests[0].fail_with = OSError(errno.ENODEV, "No such device")
        lamps.show("pass")
        assert requests[0].released, "a failed request is dropped"
        lamps.show("review")
        lamps.close()
    assert [request.lit for request in requests[1:]] == [frozenset()], "re-requested on the next show, off at close"
    assert [e["cause"] for e in logs if e["event"] == UNAVAILABLE] == ["not a GPIO chip"]
    assert [e["event"] for e in logs].count("lamps working again") == 1


def test_real_lamps_through_gpio_sim(gpio_sim: SimChip) -> None:  # noqa: F811 - the fixture
    lamps = GpiodLampPanel(GpiodLamps(chip=gpio_sim.path, green_line=4, red_line=5, amber_line="AMBER"))
    values: dict[str, Any] = {}
    try:
        lamps.show("pass")
        values["pass"] = [gpio_sim.value(o) for o in (4, 5, 6)]
        lamps.show("inspecting")
        wait_for(lambda: gpio_sim.value(6) == 0, "amber to blink off")
        wait_for(lambda: gpio_sim.value(6) == 1, "amber to blink on")
    finally:
        lamps.close()
    assert values["pass"] == [1, 0, 0]
    assert [gpio_sim.value(o) for o in (4, 5, 6)] == [0, 0, 0]
