"""Config of the quality-control workflow: decision policy, reason catalogue, buttons and lamps.

Kept apart from station.py because integrators wire this part per station (which pedal, which
GPIO lines), and a strict model per hardware kind catches a wrong line or key at start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from amflow_edge.common.config_file import ConfigPath

_STRICT = ConfigDict(extra="forbid")

KeyName = Annotated[str, Field(pattern=r"^(KEY|BTN)_[A-Z0-9_]+$", description="evdev key name, e.g. KEY_F13 or BTN_0.")]
LineId = Annotated[
    int | str, Field(description="GPIO line: its offset on the chip (17) or its name from the device tree ('GPIO17').")
]


class EvdevButtons(BaseModel):
    """A USB HID button box or foot pedal: it sends key events."""

    model_config = _STRICT

    kind: Literal["evdev"] = "evdev"
    device: Path = Field(
        description="Stable path of the input device, /dev/input/by-id/usb-…-event-kbd (not /dev/input/eventN, "
        "which changes between boots)."
    )
    approve_keys: list[KeyName] = Field(min_length=1, description="Keys that approve the awaited scan.")
    reject_keys: list[KeyName] = Field(min_length=1, description="Keys that reject the awaited scan.")
    grab: bool = Field(default=True, description="Grab the device so presses do not also type into a console.")
    reopen_max_backoff_s: float = Field(
        default=10.0, gt=0, le=300, description="Longest wait between attempts to reopen an unplugged device."
    )

    @model_validator(mode="after")
    def _keys_disjoint(self) -> EvdevButtons:
        both = sorted(set(self.approve_keys) & set(self.reject_keys))
        if both:
            raise ValueError(f"{', '.join(both)} cannot both approve and reject; give each key one meaning")
        return self


class GpiodButtons(BaseModel):
    """Two input lines (approve, reject) on a GPIO chip, read through libgpiod 2.x with kernel debounce."""

    model_config = _STRICT

    kind: Literal["gpiod"] = "gpiod"
    chip: Path = Field(default=Path("/dev/gpiochip0"), description="GPIO chip device.")
    approve_line: LineId
    reject_line: LineId
    active_low: bool = Field(default=True, description="A press pulls the line low (a switch to ground with pull-up).")
    bias: Literal["as-is", "pull-up", "pull-down", "disabled"] = Field(
        default="pull-up", description="Line bias; a switch to ground needs pull-up."
    )
    debounce_ms: int = Field(default=20, ge=0, le=1000, description="Kernel debounce period of both lines.")
    reopen_max_backoff_s: float = Field(
        default=10.0, gt=0, le=300, description="Longest wait between attempts to reopen the chip after a failure."
    )

    @model_validator(mode="after")
    def _lines_differ(self) -> GpiodButtons:
        if self.approve_line == self.reject_line:
            raise ValueError("approve_line and reject_line must be different lines")
        return self


class KeyboardButtons(BaseModel):
    """The terminal the daemon runs in, for development and demos: one key to approve, one to reject."""

    model_config = _STRICT

    kind: Literal["keyboard"] = "keyboard"
    approve_key: str = Field(default="a", min_length=1, max_length=1, description="Key that approves.")
    reject_key: str = Field(default="r", min_length=1, max_length=1, description="Key that rejects.")

    @model_validator(mode="after")
    def _keys_differ(self) -> KeyboardButtons:
        if self.approve_key.casefold() == self.reject_key.casefold():
            raise ValueError("approve_key and reject_key must differ (keys are read case-insensitively)")
        return self


ButtonSettings = Annotated[EvdevButtons | GpiodButtons | KeyboardButtons, Field(discriminator="kind")]


class GpiodLamps(BaseModel):
    """Station lamps on GPIO output lines: green pass, red fail, amber review (and 'inspecting')."""

    model_config = _STRICT

    chip: Path = Field(default=Path("/dev/gpiochip0"), description="GPIO chip device.")
    green_line: LineId | None = Field(default=None, description="Lit when the awaited scan passed the inspection.")
    red_line: LineId | None = Field(default=None, description="Lit when the awaited scan failed the inspection.")
    amber_line: LineId | None = Field(
        default=None, description="Lit when the awaited scan needs review; blinks while it is being inspected."
    )
    active_low: bool = Field(default=False, description="The lamp driver lights on a low output.")

    @model_validator(mode="after")
    def _some_distinct_lines(self) -> GpiodLamps:
        lines = [line for line in (self.green_line, self.red_line, self.amber_line) if line is not None]
        if not lines:
            raise ValueError("name at least one of green_line, red_line, amber_line")
        if len(set(lines)) != len(lines):
            raise ValueError("each lamp needs its own line")
        return self


class QcSettings(BaseModel):
    """How operators decide: which scans await a decision, and which reasons they may give."""

    model_config = _STRICT

    policy: Literal["every", "failed_or_review"] = Field(
        default="failed_or_review",
        description="Which scans await the operator's button: 'every' scan from capture on, or only scans the "
        "inspection failed or flagged for review.",
    )
    lockout_s: float = Field(
        default=1.0,
        ge=0,
        le=30,
        description="Presses this soon after a decision are ignored (a double press, a bounce).",
    )
    reasons: ConfigPath | None = Field(
        default=None,
        description="QualityControlReason catalogue (TOML); default config/qc_reasons.toml shipped with amflow-edge.",
    )
    buttons: list[ButtonSettings] = Field(default_factory=list, description="Approve/reject button sources.")
    lamps: GpiodLamps | None = Field(default=None, description="Station lamps; absent means none.")
