"""Time and threads of one scan's computation: shared by the inspection and the identification."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import cache, wraps
from typing import ParamSpec, TypeVar

from threadpoolctl import ThreadpoolController

P = ParamSpec("P")
R = TypeVar("R")


def one_blas_thread(function: Callable[P, R]) -> Callable[P, R]:
    """Runs `function` with the BLAS libraries' thread pools held to one thread.

    The inspection runs its own threads (two cameras at a time, the shading comparison beside the
    scale and bend fits), and OpenBLAS adding its own to every small matrix product made the
    least-squares fits' SVDs wait on each other: on six mid-sized benchmark scenes one BLAS
    thread took the metrics stage from 0.39 to 0.29 s and a whole scan from 1.30 to 1.16 s.
    The limit is the process's, which is why the daemon inspects in worker processes, one scan
    at a time each (amflow_edge.station.inspector).
    """

    @wraps(function)
    def limited(*args: P.args, **kwargs: P.kwargs) -> R:
        with blas().limit(limits=1, user_api="blas"):
            return function(*args, **kwargs)

    return limited


@cache
def blas() -> ThreadpoolController:
    """Made on first use, when numpy's and scipy's BLAS libraries are loaded."""
    return ThreadpoolController()


class Stopwatch:
    """Seconds per stage of one inspection or identification, and in total since it was made, for the report's timings."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Times the block; a stage timed twice adds up."""
        mark = time.perf_counter()
        yield
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - mark

    def rounded(self) -> dict[str, float]:
        """The stages and the total so far, to 0.1 ms."""
        seconds = {**self.seconds, "total": time.perf_counter() - self.started}
        return {k: round(v, 4) for k, v in seconds.items()}
