"""Which material of one geometry the part's appearance names: a pure decision on looks, no images needed."""

from __future__ import annotations

from pathlib import Path

from amflow_edge.inspection.identification.appearance import choose_material
from amflow_edge.inspection.identification.models import CandidateDesign, MaterialLook

SHA1 = "9080b4bf9e9946b7cb62477a62767073283709e4"


def _member(colour: str, mean: float, spread: float) -> CandidateDesign:
    return CandidateDesign(
        design_material=f"{SHA1}_SLS_PA12_{colour}",
        mesh_path=Path("part.stl"),
        units="mm",
        look=MaterialLook(mean=mean, spread=spread, samples=4),
    )


GREY = _member("GREY", 2.116, 0.071)
GREEN = _member("GREEN", 1.405, 0.028)
"""As the identification benchmark learned them (seed 8000, four scans each)."""
GREY_WIDE = _member("GREY", 1.739, 0.257)
"""Grey as learned with the 80th percentile, from four scans one of which showed few lit faces."""
GREEN_LIT80 = _member("GREEN", 1.299, 0.045)


def test_a_part_near_one_look_and_far_from_the_other_is_that_material() -> None:
    assert choose_material([GREEN, GREY], 2.05)[0] is GREY
    assert choose_material([GREEN, GREY], 1.42)[0] is GREEN


def test_a_part_within_both_looks_is_left_to_the_operator() -> None:
    chosen, why = choose_material([GREEN_LIT80, GREY_WIDE], 1.40)
    assert chosen is None
    assert "fits both" in why


def test_a_look_as_wide_as_the_gap_never_names_its_material() -> None:
    """A reading below green's mean lies closer to green than to the wide grey look, and one far above green
    inside grey's range could be grey: neither is named while the looks overlap that much."""
    for reading in (1.10, 1.50, 1.975):
        chosen, why = choose_material([GREEN_LIT80, GREY_WIDE], reading)
        assert chosen is None, reading
        assert "fits both" in why or "matches none" in why


def test_a_part_matching_no_look_is_not_given_one() -> None:
    chosen, why = choose_material([GREEN, GREY], 3.4)
    assert chosen is None
    assert "matches none" in why
