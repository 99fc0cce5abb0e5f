"""The commissioning check of a rig's triggering: fire all cameras many times, count what did not come back.

A station whose link budget is wrong loses frames only now and then, when five frames happen to
collide; one test scan proves nothing. A hundred triggers in a row show dropped and incomplete
frames per camera, and the spread of the cameras' timestamps within each trigger shows whether
they really exposed together.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Literal, Protocol

from amflow_edge.drivers.base import Frame, GrabError


class TriggerGrabber(Protocol):
    """A rig that can say, per camera, what became of one trigger (PylonDriver)."""

    def trigger(self) -> None: ...

    def grab_each(self, timeout_s: float) -> dict[str, Frame | GrabError]: ...


@dataclass
class CameraTally:
    received: int = 0
    dropped: int = 0
    incomplete: int = 0
    first_problem: str = ""

    def note(self, kind: Literal["dropped", "incomplete"], reason: str) -> None:
        if kind == "dropped":
            self.dropped += 1
        else:
            self.incomplete += 1
        self.first_problem = self.first_problem or reason


@dataclass
class TriggerCheckReport:
    triggers: int
    cameras: dict[str, CameraTally]
    spreads_s: list[float] = field(default_factory=list)
    clock: Literal["camera", "host"] = "camera"

    @property
    def ok(self) -> bool:
        return all(t.dropped == 0 and t.incomplete == 0 for t in self.cameras.values())

    def spread_summary(self) -> str:
        if not self.spreads_s:
            return "timestamp spread: no trigger with a frame from every camera"
        ordered = sorted(self.spreads_s)
        p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
        if self.clock == "camera":
            how = "camera clocks, each aligned at the first complete trigger"
        else:
            how = "host arrival times: the cameras report no timestamp, so this includes transfer"
        return (
            f"timestamp spread within a trigger ({how}) over {len(ordered)} complete triggers: "
            f"median {_duration(statistics.median(ordered))}, p95 {_duration(p95)}, max {_duration(ordered[-1])}"
        )

    def render(self) -> str:
        rows = [("CAMERA", "RECEIVED", "DROPPED", "INCOMPLETE", "FIRST PROBLEM")]
        rows += [
            (name, str(t.received), str(t.dropped), str(t.incomplete), t.first_problem or "-")
            for name, t in self.cameras.items()
        ]
        widths = [max(len(row[i]) for row in rows) for i in range(4)]
        lines = [
            "  ".join(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)) + "  " + row[4]
            for row in rows
        ]
        lines.append(self.spread_summary())
        lost = sum(t.dropped + t.incomplete for t in self.cameras.values())
        lines.append(
            f"{self.triggers} triggers: all frames complete"
            if self.ok
            else f"{self.triggers} triggers: {lost} frames dropped or incomplete"
        )
        return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    return f"{seconds * 1e3:.2f} ms"


class FrameDroppedError(GrabError):
    """No frame of this trigger came from the camera (or it skipped images): counted as dropped."""


class FrameIncompleteError(GrabError):
    """A frame came with missing packets or another buffer error: the link is overloaded, or a cable is bad."""


def _kind(error: GrabError) -> Literal["dropped", "incomplete"]:
    return "incomplete" if isinstance(error, FrameIncompleteError) else "dropped"


def trigger_spread_s(frames: dict[str, Frame], origins: dict[str, float]) -> tuple[float, Literal["camera", "host"]]:
    """Spread of one trigger's frames. Camera clocks are not synchronised without PTP, so each camera's times are
    taken relative to its frame of the first complete trigger (`origins`, filled on first use)."""
    if all(f.camera_timestamp_ticks is not None and f.camera_tick_hz for f in frames.values()):
        times = {}
        for name, frame in frames.items():
            assert frame.camera_timestamp_ticks is not None and frame.camera_tick_hz is not None
            seconds = frame.camera_timestamp_ticks / frame.camera_tick_hz
            times[name] = seconds - origins.setdefault(name, seconds)
        return max(times.values()) - min(times.values()), "camera"
    arrivals = [f.timestamp.timestamp() for f in frames.values()]
    return max(arrivals) - min(arrivals), "host"


def run_trigger_check(
    rig: TriggerGrabber,
    cameras: list[str],
    count: int,
    timeout_s: float,
) -> TriggerCheckReport:
    """Trigger the whole rig `count` times and tally every camera's frames; DriverError (a lost camera) ends it."""
    report = TriggerCheckReport(triggers=count, cameras={name: CameraTally() for name in cameras})
    origins: dict[str, float] = {}
    clocks: set[str] = set()
    for _ in range(count):
        not_ready: GrabError | None = None
        try:
            rig.trigger()
        except GrabError as exc:
            not_ready = exc  # the cameras before it were triggered: their frames still come
        outcomes = rig.grab_each(timeout_s)
        frames: dict[str, Frame] = {}
        for name in cameras:
            outcome = outcomes.get(name)
            if isinstance(outcome, Frame):
                frames[name] = outcome
                report.cameras[name].received += 1
            elif outcome is not None:
                reason = outcome.reason
                if not_ready is not None:
                    reason = not_ready.reason if not_ready.camera == name else f"not triggered: {not_ready}"
                report.cameras[name].note(_kind(outcome), reason)
            else:
                report.cameras[name].note("dropped", "no frame")
        if len(frames) == len(cameras):
            spread, clock = trigger_spread_s(frames, origins)
            report.spreads_s.append(spread)
            clocks.add(clock)
    report.clock = "host" if "host" in clocks else "camera"
    return report
