"""Material looks: configured at commissioning, learned from scans the plant confirmed, kept across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from amflow_edge.config.identification import IdentificationSettings, MaterialLookSetting
from amflow_edge.inspection.identification.models import APPEARANCE_MEASURE
from amflow_edge.messaging.payload import Assignment
from amflow_edge.station.material_looks import LOOKS_FILE, MaterialLooks, material_key
from amflow_edge.storage.record import IdentificationRecord, ScanRecord
from tests.factories import make_record

BLACK = "6d2e1b64c586b7a2dad9eb34a961cc4a513751b6_SLS_PA12_BLACK"


def _confirmed(
    scan_uuid: str, appearance: float, *, manual: bool = True, measure: str | None = APPEARANCE_MEASURE
) -> ScanRecord:
    record = make_record(scan_uuid)
    scan = record.scan.model_copy(
        update={
            "design_material": BLACK,
            "assignment": Assignment(
                assignment="8801b334-7012-46e3-aeba-f2a2683a8f90",
                part_id="MB-80-B",
                part_title="Montageblok black",
                copies=2,
                last_added_copies=1,
                manual=manual,
            ),
        }
    )
    identification = IdentificationRecord(
        outcome="material_ambiguous",
        design_material=None,
        reason="two materials",
        appearance=appearance,
        appearance_measure=measure,
        at="2026-12-07T10:00:00.000000+01:00",
    )
    return record.model_copy(
        update={"scan": scan, "station": record.station.model_copy(update={"identification": identification})}
    )


def test_the_key_is_the_material_not_the_geometry() -> None:
    assert material_key(BLACK) == "SLS_PA12_BLACK"


def test_a_configured_look_stands_until_enough_confirmed_scans_are_learned(tmp_path: Path) -> None:
    settings = IdentificationSettings(
        looks={"SLS_PA12_BLACK": MaterialLookSetting(mean=0.3, spread=0.05)}, learn_after=3
    )
    looks = MaterialLooks(settings, tmp_path)
    assert looks.look(BLACK) == looks.look(BLACK.replace("6d2e", "0000"))  # any geometry in that material
    first = looks.look(BLACK)
    assert first is not None and first.mean == 0.3 and first.samples == 0
    for index, value in enumerate((0.20, 0.22, 0.24)):
        looks.scan_event("scan.assign", _confirmed(f"00000000-0000-1000-8000-00000000000{index}", value))
        if index < 2:
            assert looks.look(BLACK) == first
    learned = looks.look(BLACK)
    assert learned is not None and learned.samples == 3
    assert learned.mean == pytest.approx(0.22) and learned.spread == pytest.approx(0.02)
    again = MaterialLooks(settings, tmp_path)  # a restart keeps what was learned
    assert again.look(BLACK) == learned


def test_only_confirmations_teach_and_each_scan_counts_once(tmp_path: Path) -> None:
    looks = MaterialLooks(IdentificationSettings(learn_after=1), tmp_path)
    looks.scan_event("scan.assign", _confirmed("00000000-0000-1000-8000-000000000001", 0.5, manual=False))
    assert looks.look(BLACK) is None  # the station's own assignment confirms nothing
    approved = _confirmed("00000000-0000-1000-8000-000000000002", 0.4, manual=False)
    approved = approved.model_copy(update={"scan": approved.scan.model_copy(update={"qc_operator": True})})
    looks.scan_event("scan.quality_control", approved)
    looks.scan_event("scan.quality_control", approved)
    looks.scan_event("scan.reassign", _confirmed("00000000-0000-1000-8000-000000000002", 0.9))
    look = looks.look(BLACK)
    assert look is not None and look.samples == 1 and look.mean == pytest.approx(0.4)


def test_an_unreadable_looks_file_is_reported_and_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / LOOKS_FILE).write_text("{not json")
    looks = MaterialLooks(IdentificationSettings(learn_after=1), tmp_path)
    assert looks.look(BLACK) is None
    looks.learn("00000000-0000-1000-8000-000000000003", BLACK, 0.3)
    assert MaterialLooks(IdentificationSettings(learn_after=1), tmp_path).look(BLACK) is not None


def test_looks_learned_with_another_measure_are_set_aside_and_learned_again(tmp_path: Path) -> None:
    """A file from before the measure was recorded holds 80th-percentile looks, which the 95th-percentile
    measurements of today would not match: it is moved aside, and the configured look stands in until new scans
    are confirmed; a scan measured the old way teaches nothing, and one already learned from counts once."""
    old = (
        '{"looks": {"SLS_PA12_BLACK": {"samples": 9, "mean": 0.25, "m2": 0.01}}, '
        '"learned_from": ["00000000-0000-1000-8000-000000000005"]}'
    )
    (tmp_path / LOOKS_FILE).write_text(old)
    settings = IdentificationSettings(
        looks={"SLS_PA12_BLACK": MaterialLookSetting(mean=0.3, spread=0.05)}, learn_after=1
    )
    looks = MaterialLooks(settings, tmp_path)
    assert (tmp_path / "material_looks.lit80.json").read_text() == old
    look = looks.look(BLACK)
    assert look is not None and look.samples == 0 and look.mean == 0.3
    looks.scan_event("scan.assign", _confirmed("00000000-0000-1000-8000-000000000006", 0.26, measure=None))
    looks.scan_event("scan.assign", _confirmed("00000000-0000-1000-8000-000000000005", 0.32))
    assert looks.look(BLACK) == look
    looks.scan_event("scan.assign", _confirmed("00000000-0000-1000-8000-000000000004", 0.31))
    again = MaterialLooks(settings, tmp_path).look(BLACK)
    assert again is not None and again.samples == 1 and again.mean == pytest.approx(0.31)
