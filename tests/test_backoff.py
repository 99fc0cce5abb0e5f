from __future__ import annotations

from amflow_edge.common.backoff import Backoff


def test_waits_double_up_to_the_ceiling_and_start_again_after_a_success() -> None:
    backoff = Backoff(0.25, 1.5)
    assert [backoff.next_delay() for _ in range(5)] == [0.25, 0.5, 1.0, 1.5, 1.5]
    backoff.reset()
    assert backoff.next_delay() == 0.25


def test_a_first_wait_above_the_ceiling_is_the_ceiling() -> None:
    assert Backoff(5.0, 2.0).next_delay() == 2.0
