"""The operator's button: which scan a press decides, the lockout, the lamps, and the record of the press.

Real database and events (no broker needed: events wait in the outbox); a fake ButtonSource
stands in for the pedal, which is the one part this machine lacks.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from amflow_edge.config.loading import load_config
from amflow_edge.config.station import StationConfig
from amflow_edge.messaging.events import Events
from amflow_edge.panel.base import ButtonPress, LampSignal, OnPress
from amflow_edge.panel.operator import OperatorPanel
from amflow_edge.qc.decisions import DecisionError, Decisions
from amflow_edge.qc.reasons import load_reasons
from amflow_edge.qc.rules import with_machine_verdict
from amflow_edge.storage.db import StationDb
from amflow_edge.storage.record import ScanRecord
from tests.factories import make_record
from tests.station_files import write_station

PRESSED_AT = datetime(2026, 3, 11, 15, 40, 1, 250000, tzinfo=UTC)


class RecordingLamps:
    def __init__(self) -> None:
        self.shown: list[str] = []  # str, not LampSignal: mypy would keep an asserted signal narrowed after a press
        self.closed = False

    def show(self, signal: LampSignal) -> None:
        self.shown.append(signal)

    def close(self) -> None:
        self.closed = True


class FakeButtons:
    """A ButtonSource whose presses the test makes; run() behaves as a real source's does."""

    name = "fake"

    def __init__(self) -> None:
        self._on_press: OnPress | None = None
        self.ready = threading.Event()

    def run(self, on_press: OnPress, stop: threading.Event) -> None:
        self._on_press = on_press
        self.ready.set()
        stop.wait()

    def press(self, action: str, at: datetime = PRESSED_AT) -> None:
        assert self._on_press is not None
        self._on_press(ButtonPress(action=action, source="fake:pedal", at=at))  # type: ignore[arg-type]


@pytest.fixture
def cfg(tmp_path: Path) -> StationConfig:
    return load_config(write_station(tmp_path, 1883))


@pytest.fixture
def events(cfg: StationConfig) -> Iterator[Events]:
    db = StationDb(cfg.station.state_dir / "station.db")
    yield Events(cfg, db)
    db.close()


def make_panel(
    events: Events, policy: str = "every", lockout_s: float = 0.0, inspects: bool = False
) -> tuple[OperatorPanel, RecordingLamps]:
    lamps = RecordingLamps()
    decisions = Decisions(events, load_reasons(), "Europe/Amsterdam")
    panel = OperatorPanel(decisions, lamps, policy, lockout_s, inspects=inspects)  # type: ignore[arg-type]
    events.listen(panel.scan_event)
    return panel, lamps


def stored(events: Events) -> ScanRecord:
    record = make_record()
    events.scan_stored(record)
    return record


def machine_verdict(events: Events, record: ScanRecord, passed: bool | None, review: bool, reasons: list[str]) -> None:
    events.update_scan(
        record.scan.uuid,
        "scan.quality_control",
        lambda r: r.model_copy(
            update={"scan": with_machine_verdict(r.scan, r.scan.modified, None, passed, review, reasons)}
        ),
    )


def outbox_events(events: Events, scan_uuid: str) -> list[str]:
    rows = events._db.connection().execute("SELECT event FROM outbox WHERE scan_uuid = ? ORDER BY seq", (scan_uuid,))
    return [row[0] for row in rows]


def test_a_press_decides_the_latest_scan_and_records_who_and_when(events: Events) -> None:
    panel, lamps = make_panel(events)
    older, latest = stored(events), stored(events)
    buttons = FakeButtons()
    stop = threading.Event()
    thread = threading.Thread(target=buttons.run, args=(panel.press, stop))
    thread.start()
    try:
        buttons.ready.wait(5)
        buttons.press("reject")
    finally:
        stop.set()
        thread.join(5)
    decided = events.record(latest.scan.uuid)
    assert decided is not None
    assert (decided.scan.qc_operator, decided.scan.qc_pass, decided.scan.qc_needs_review) == (False, False, False)
    [entry] = decided.station.decisions
    assert entry.model_dump() == {
        "passed": False,
        "source": "button",
        "device": "fake:pedal",
        "at": "2026-03-11T16:40:01.250000+01:00",
        "comment": None,
        "reasons": None,
    }
    assert events.record(older.scan.uuid).scan.qc_operator is None  # type: ignore[union-attr]
    assert outbox_events(events, latest.scan.uuid) == ["scan.capture", "scan.quality_control"]
    assert lamps.shown[-1] == "fail"


def test_failed_or_review_policy_waits_for_the_machine_to_ask(events: Events) -> None:
    panel, lamps = make_panel(events, policy="failed_or_review")
    record = stored(events)
    press = ButtonPress(action="approve", source="fake:pedal", at=PRESSED_AT)
    assert panel.press(press) is None  # not inspected yet: nothing awaits
    machine_verdict(events, record, True, False, [])
    assert panel.view().signal == "pass" and panel.press(press) is None  # passed: no human needed
    machine_verdict(events, record, False, False, ["missing_material"])
    assert panel.view().awaiting_decision == record.scan.uuid and lamps.shown[-1] == "fail"
    decided = panel.press(press)
    assert decided is not None and decided.scan.qc_operator is True and decided.scan.qc_pass is True
    assert decided.scan.qc_machine is False and decided.scan.qc_reasons == ["missing_material"]
    assert panel.view().awaiting_decision is None and lamps.shown[-1] == "pass"
    assert outbox_events(events, record.scan.uuid) == ["scan.capture"] + ["scan.quality_control"] * 3


def test_review_is_awaited_and_shown_amber(events: Events) -> None:
    panel, lamps = make_panel(events, policy="failed_or_review", inspects=True)
    record = stored(events)
    assert lamps.shown == ["inspecting"] and panel.view().awaiting_decision is None
    machine_verdict(events, record, True, True, ["dimensional_deviation"])
    assert lamps.shown == ["inspecting", "review"] and panel.view().awaiting_decision == record.scan.uuid


def test_a_scan_given_another_design_shows_inspecting_until_its_new_verdict(events: Events) -> None:
    panel, lamps = make_panel(events, policy="failed_or_review", inspects=True)
    record = stored(events)
    machine_verdict(events, record, None, True, ["wrong_part"])  # not identified: the operator must say which
    assert lamps.shown == ["inspecting", "review"]
    events.update_scan(  # what an assignment with a new design stores: the old verdict cleared
        record.scan.uuid,
        "scan.assign",
        lambda r: r.model_copy(
            update={
                "scan": r.scan.model_copy(
                    update={"qc_machine": None, "qc_needs_review": False, "qc_reasons": [], "inspectionreport": None}
                )
            }
        ),
    )
    assert lamps.shown[-1] == "inspecting" and panel.view().awaiting_decision is None
    machine_verdict(events, record, True, False, [])
    assert lamps.shown[-1] == "pass"


def test_presses_within_the_lockout_or_with_nothing_awaiting_change_nothing(events: Events) -> None:
    panel, _ = make_panel(events, lockout_s=30.0)
    with capture_logs() as logs:
        assert panel.press(ButtonPress(action="approve", source="fake:pedal", at=PRESSED_AT)) is None
    assert [entry["event"] for entry in logs] == ["button press ignored: no scan awaits a decision"]
    record = stored(events)
    first = panel.press(ButtonPress(action="approve", source="fake:pedal", at=PRESSED_AT))
    assert first is not None
    with capture_logs() as logs:
        again = panel.press(ButtonPress(action="reject", source="fake:pedal", at=PRESSED_AT + timedelta(seconds=0.2)))
    assert again is None
    assert [entry["event"] for entry in logs] == ["button press ignored: within the lockout after a decision"]
    assert logs[0]["button"] == "fake:pedal" and logs[0]["action"] == "reject"
    after = events.record(record.scan.uuid)
    assert after is not None and after.scan.qc_operator is True and len(after.station.decisions) == 1
    assert outbox_events(events, record.scan.uuid) == ["scan.capture", "scan.quality_control"]


def test_a_decided_scan_awaits_nothing_until_the_next_capture(events: Events) -> None:
    panel, _ = make_panel(events)
    first = stored(events)
    assert panel.press(ButtonPress(action="approve", source="fake:pedal", at=PRESSED_AT)) is not None
    assert panel.press(ButtonPress(action="reject", source="fake:pedal", at=PRESSED_AT)) is None
    second = stored(events)
    assert panel.view().awaiting_decision == second.scan.uuid
    assert events.record(first.scan.uuid).scan.qc_pass is True  # type: ignore[union-attr]


def test_mqtt_and_button_decisions_share_one_path(events: Events) -> None:
    decisions = Decisions(events, load_reasons(), "Europe/Amsterdam")
    record = stored(events)
    decided = decisions.decide(
        record.scan.uuid,
        False,
        source="mqtt",
        device="mqtt:mes",
        at=PRESSED_AT,
        comment="layer shift",
        reasons=["dimensional_deviation", "surface_defect"],
    )
    assert decided.scan.qc_reasons == ["dimensional_deviation", "surface_defect"]
    assert decided.scan.qc_comment == "layer shift" and decided.station.decisions[0].source == "mqtt"
    with pytest.raises(DecisionError, match="unknown QualityControlReason 'made_up'"):
        decisions.decide(record.scan.uuid, True, source="mqtt", device="mqtt", at=PRESSED_AT, reasons=["made_up"])
    with pytest.raises(DecisionError, match="not known to this station"):
        decisions.decide("6a1f0d3e-31c6-11f1-9d2c-0242ac120002", True, source="mqtt", device="mqtt", at=PRESSED_AT)
    assert events.record(record.scan.uuid) == decided


def test_the_press_is_mirrored_into_scan_json(cfg: StationConfig, tmp_path: Path) -> None:
    from amflow_edge.storage.store import ScanStore
    from tests.factories import make_images

    store = ScanStore(cfg.station.data_root)
    store.prepare()
    db = StationDb(cfg.station.state_dir / "station.db")
    try:
        events = Events(cfg, db, mirror=store.update_record)
        panel, _ = make_panel(events)
        record = make_record()
        store.write_scan(record, make_images())
        events.scan_stored(record)
        panel.press(ButtonPress(action="approve", source="fake:pedal", at=PRESSED_AT))
        on_disk = json.loads((store.scan_dir(record.scan.uuid) / "scan.json").read_text())
    finally:
        store.close()
        db.close()
    assert on_disk["scan"]["qc_operator"] is True
    assert on_disk["station"]["decisions"][0]["device"] == "fake:pedal"


def test_the_scan_taken_after_the_autumn_clock_change_is_the_one_on_the_tray(events: Events) -> None:
    panel, _ = make_panel(events)
    before, after = make_record(), make_record()
    before = before.model_copy(
        update={"scan": before.scan.model_copy(update={"created": "2026-10-25T02:55:00.000000+02:00"})}
    )
    after = after.model_copy(
        update={"scan": after.scan.model_copy(update={"created": "2026-10-25T02:05:00.000000+01:00"})}
    )
    events.scan_stored(before)
    events.scan_stored(after)  # ten minutes later, though its text sorts first
    assert panel.view().latest_scan == after.scan.uuid


def test_a_plant_decision_on_an_older_scan_does_not_lock_the_button_out(events: Events) -> None:
    panel, _ = make_panel(events, lockout_s=30.0)
    older, latest = stored(events), stored(events)
    Decisions(events, load_reasons(), "Europe/Amsterdam").decide(
        older.scan.uuid, True, source="mqtt", device="mqtt:mes", at=PRESSED_AT
    )
    decided = panel.press(ButtonPress(action="reject", source="fake:pedal", at=PRESSED_AT))
    assert decided is not None and decided.scan.uuid == latest.scan.uuid


def test_a_press_never_overrides_a_decision_taken_meanwhile(events: Events) -> None:
    record = stored(events)
    decisions = Decisions(events, load_reasons(), "Europe/Amsterdam")
    decisions.decide(record.scan.uuid, False, source="mqtt", device="mqtt:mes", at=PRESSED_AT)
    with pytest.raises(DecisionError, match="was decided meanwhile"):
        decisions.decide(
            record.scan.uuid, True, source="button", device="fake:pedal", at=PRESSED_AT, only_if_undecided=True
        )
    after = events.record(record.scan.uuid)
    assert after is not None and after.scan.qc_operator is False and len(after.station.decisions) == 1
