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


GREY_WIDE = _member("GREY", 1.739, 0.257)
"""Grey as the identification benchmark learned it from four scans, one of a part showing few lit faces."""
GREEN = _member("GREEN", 1.299, 0.045)


def test_a_part_far_outside_the_narrow_look_is_the_wide_one() -> None:
    chosen, why = choose_material([GREEN, GREY_WIDE], 1.975)
    assert chosen is GREY_WIDE, why


def test_a_part_within_both_looks_is_left_to_the_operator() -> None:
    chosen, why = choose_material([GREEN, GREY_WIDE], 1.40)
    assert chosen is None
    assert "fits both" in why


def test_looks_within_each_others_noise_are_never_told_apart() -> None:
    twin = _member("GREY", 1.30, 0.045).model_copy(update={"design_material": f"{SHA1}_MJF_PA12_GREY"})
    chosen, why = choose_material([GREEN, twin], 1.299)
    assert chosen is None
    assert "fits both" in why


def test_a_part_matching_no_look_is_not_given_one() -> None:
    chosen, why = choose_material([GREEN, GREY_WIDE], 3.4)
    assert chosen is None
    assert "matches none" in why
