"""The commissioning check of a rig's triggering: fire all cameras many times, count what did not come back.

A station whose link budget is wrong loses frames only now and then, when five frames happen to
collide; one test scan proves nothing. A hundred triggers in a row show dropped and incomplete
frames per camera, and the spread of the cameras' timestamps within each trigger shows whether
they really exposed together.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np

from amflow_edge.drivers.base import DriverError, Frame, GrabError

MIN_RATE_FIT = 3
"""Complete triggers needed to fit each camera's clock rate as well as its offset: two points fit any line exactly."""


class TriggerGrabber(Protocol):
    """A rig that can say, per camera, what became of one trigger (PylonDriver)."""

    def trigger(self) -> None: ...

    def grab_each(self, timeout_s: float) -> dict[str, Frame | GrabError]: ...


@dataclass
class CameraTally:
    received: int = 0
    dropped: int = 0
    incomplete: int = 0
    unconfirmed: int = 0
    """Of the dropped: triggers whose action command this camera did not acknowledge."""
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
    """Per complete trigger, the latest camera's time less the earliest's (on the fitted clocks, or the host's)."""
    clock: Literal["camera", "host"] = "camera"
    reference: str | None = None
    """The camera whose clock the others' are fitted to."""
    rate_ppm: dict[str, float] = field(default_factory=dict)
    """Per other camera, how much faster its clock runs than the reference's (parts per million); empty when fewer
    than MIN_RATE_FIT complete triggers allowed only the offsets to be fitted."""

    @property
    def ok(self) -> bool:
        return all(t.dropped == 0 and t.incomplete == 0 for t in self.cameras.values())

    def spread_summary(self) -> str:
        if not self.spreads_s:
            return "timestamp spread: no trigger with a frame from every camera"
        ordered = sorted(self.spreads_s)
        p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
        if self.clock == "host":
            how = "host arrival times: the cameras report no timestamp, so this includes transfer"
        elif self.rate_ppm:
            how = (
                f"camera clocks, each camera's offset and rate fitted to {self.reference}'s; a lag the same at every "
                "trigger is absorbed by the fit and needs PTP to be seen"
            )
        else:
            how = f"camera clocks, offsets fitted to {self.reference}'s; too few complete triggers to fit their rates"
        lines = [
            f"timestamp spread within a trigger ({how}) over {len(ordered)} complete triggers: "
            f"median {_duration(statistics.median(ordered))}, p95 {_duration(p95)}, max {_duration(ordered[-1])}"
        ]
        if self.rate_ppm:
            rates = ", ".join(f"{name} {ppm:+.1f} ppm" for name, ppm in self.rate_ppm.items())
            lines.append(f"camera clock rates against {self.reference} (drift, removed from the spread): {rates}")
        return "\n".join(lines)

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
        unconfirmed = [(name, t.unconfirmed) for name, t in self.cameras.items() if t.unconfirmed]
        if unconfirmed:
            lines.append(
                "action command not acknowledged (counted as dropped): "
                + ", ".join(f"{name} {count}×" for name, count in unconfirmed)
            )
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


class TriggerNotConfirmedError(DriverError):
    """Some cameras did not confirm that they took the trigger (an action command they did not acknowledge).

    A DriverError, not a GrabError: the station takes no scan from such a trigger. The trigger
    check, though, is there to count exactly this, per camera (`missing`: name → why), and go on.
    """

    def __init__(self, message: str, missing: Mapping[str, str]) -> None:
        super().__init__(message)
        self.missing = dict(missing)


def _kind(error: GrabError) -> Literal["dropped", "incomplete"]:
    return "incomplete" if isinstance(error, FrameIncompleteError) else "dropped"


@dataclass(frozen=True)
class _Stamp:
    ticks: int
    tick_hz: float


def _stamp(frame: Frame) -> _Stamp | None:
    if frame.camera_timestamp_ticks is None or not frame.camera_tick_hz:
        return None
    return _Stamp(int(frame.camera_timestamp_ticks), float(frame.camera_tick_hz))


def fit_camera_clocks(stamps: list[dict[str, _Stamp]], cameras: list[str]) -> tuple[list[float], dict[str, float]]:
    """Per trigger, the spread of the cameras' timestamps once each camera's clock is mapped onto the first camera's;
    and each other camera's clock rate against it in ppm.

    Without PTP each camera counts on its own crystal, off by tens of ppm: over a hundred
    triggers that is milliseconds, far more than the exposure spread sought. A least-squares line
    per camera (offset and rate against the reference) removes both; what remains is how
    unevenly the cameras exposed from trigger to trigger; a lag that is the same at every trigger
    is absorbed into the offset (only synchronised clocks, PTP, show it). With fewer than
    MIN_RATE_FIT triggers only the offsets are fitted. Ticks are taken relative to each camera's first, in integers,
    so a clock that has counted nanoseconds for months keeps its resolution.
    """
    reference = cameras[0]

    def seconds(name: str) -> np.ndarray:
        first = stamps[0][name].ticks
        return np.array([(s[name].ticks - first) / s[name].tick_hz for s in stamps], dtype=np.float64)

    ref = seconds(reference)
    mapped = [ref]
    rates: dict[str, float] = {}
    for name in cameras[1:]:
        own = seconds(name)
        if len(stamps) >= MIN_RATE_FIT and np.ptp(own) > 0:
            slope, intercept = np.polyfit(own, ref, 1)
            mapped.append(slope * own + intercept)
            rates[name] = (1.0 / slope - 1.0) * 1e6
        else:
            mapped.append(own + float(np.mean(ref - own)))
    times = np.vstack(mapped)
    return [float(v) for v in times.max(axis=0) - times.min(axis=0)], rates


def run_trigger_check(
    rig: TriggerGrabber,
    cameras: list[str],
    count: int,
    timeout_s: float,
) -> TriggerCheckReport:
    """Trigger the whole rig `count` times and tally every camera's frames; another DriverError (a lost camera) ends
    it. A trigger some cameras did not confirm counts those cameras as dropped; what arrived is still collected, so
    it cannot turn up in the next trigger."""
    report = TriggerCheckReport(triggers=count, cameras={name: CameraTally() for name in cameras})
    stamps: list[dict[str, _Stamp]] = []
    arrival_spreads: list[float] = []
    for _ in range(count):
        not_ready: GrabError | None = None
        unconfirmed: dict[str, str] = {}
        try:
            rig.trigger()
        except GrabError as exc:
            not_ready = exc  # the cameras before it were triggered: their frames still come
        except TriggerNotConfirmedError as exc:
            unconfirmed = exc.missing  # the others did take it: their frames still come
        outcomes = rig.grab_each(timeout_s)
        frames: dict[str, Frame] = {}
        for name in cameras:
            outcome = outcomes.get(name)
            tally = report.cameras[name]
            if name in unconfirmed:
                came = "; its frame came anyway" if isinstance(outcome, Frame) else ""
                tally.note("dropped", f"action command not acknowledged: {unconfirmed[name]}{came}")
                tally.unconfirmed += 1
            elif isinstance(outcome, Frame):
                frames[name] = outcome
                tally.received += 1
            elif outcome is not None:
                reason = outcome.reason
                if not_ready is not None:
                    reason = not_ready.reason if not_ready.camera == name else f"not triggered: {not_ready}"
                tally.note(_kind(outcome), reason)
            else:
                tally.note("dropped", "no frame")
        if len(frames) == len(cameras):
            arrivals = [f.timestamp.timestamp() for f in frames.values()]
            arrival_spreads.append(max(arrivals) - min(arrivals))
            trigger_stamps = {name: _stamp(frame) for name, frame in frames.items()}
            if all(trigger_stamps.values()):
                stamps.append({name: stamp for name, stamp in trigger_stamps.items() if stamp is not None})
    if stamps and len(stamps) == len(arrival_spreads):
        report.spreads_s, report.rate_ppm = fit_camera_clocks(stamps, cameras)
        report.clock, report.reference = "camera", cameras[0]
    else:
        report.spreads_s, report.clock = arrival_spreads, "host"
    return report
