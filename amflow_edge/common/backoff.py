"""Waiting longer after each failed attempt, so a device or peer that is gone is not hammered."""

from __future__ import annotations


class Backoff:
    """Doubling waits from `first_s` up to `max_s`; `reset()` after a success starts again from `first_s`."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self._first_s = min(first_s, max_s)
        self._max_s = max_s
        self._delay_s = self._first_s

    @property
    def max_s(self) -> float:
        return self._max_s

    def next_delay(self) -> float:
        """The wait before the next attempt; each call doubles the one after it."""
        delay = self._delay_s
        self._delay_s = min(self._delay_s * 2, self._max_s)
        return delay

    def reset(self) -> None:
        self._delay_s = self._first_s
