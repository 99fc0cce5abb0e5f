"""The link budget of several GigE cameras sharing one network card, as pure arithmetic.

Five cameras triggered together all start streaming at the same instant. Each camera's own
link runs at 1 GbE, so unthrottled their packet trains reach the switch at five times what
the station's NIC can take; the switch drops what its buffer cannot hold and pylon sees
incomplete frames and resends. Basler's answer is to stretch every camera's packet train with
an inter-packet delay (GevSCPD) so that the sum fits the NIC, and to offset the trains a
little (GevSCFTD) so their packets interleave instead of arriving at the same instant. Kept
free of pylon so the doctor can check a config on any machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from amflow_edge.common.durable import replace_durably
from amflow_edge.drivers.pylon_settings import PylonSettings

ETHERNET_OVERHEAD_BYTES = 38
"""Preamble and start delimiter (8), Ethernet header (14), FCS (4), inter-frame gap (12): on the wire, not in the
packet size the camera is given."""
STREAM_HEADER_BYTES = 36
"""IP (20), UDP (8) and GVSP (8) headers: inside GevSCPSPacketSize, but not image data."""
FALLBACK_TICK_HZ = 1_000_000_000
"""Cameras without GevTimestampTickFrequency: 1 GHz (SFNC 2 cameras count nanoseconds). Assuming a faster clock than
the real one only makes the delay longer (safe, slower); assuming a slower one would overload the NIC."""
APPLIED_STREAMS_FILE = "camera_streams.json"
"""In the station's state_dir: what the driver set on each camera at open, for the doctor while the station runs."""


@dataclass(frozen=True)
class StreamSettings:
    """What one camera streams with: the values written to (or read back from) GevSCPSPacketSize, GevSCPD, GevSCFTD."""

    packet_size: int
    delay_ticks: int
    frame_delay_ticks: int
    tick_hz: float


@dataclass(frozen=True)
class PacketLimits:
    """What a camera takes for GevSCPSPacketSize (its node's Min, Max, Inc). The defaults are a Basler ace's, for
    planning without a camera (the doctor); the driver reads the camera's own."""

    minimum: int = 220
    maximum: int = 9014
    increment: int = 4


def packet_size_for(mtu: int, limits: PacketLimits = PacketLimits()) -> int:
    """The largest packet size the camera takes that fits the MTU: fewer packets per frame, less CPU and overhead.

    GevSCPSPacketSize is the size of the IP packet, its IP, UDP and GVSP headers included (GigE
    Vision; a receiver sees a UDP payload 28 bytes shorter), and the MTU is the largest IP packet
    the link carries, so the packet size may reach the MTU itself, no header subtracted. GenICam's
    valid values are minimum + k * increment, so the result is the largest of those ≤ min(MTU, maximum).
    """
    limit = min(mtu, limits.maximum)
    if limit < limits.minimum:
        raise ValueError(f"an MTU of {mtu} bytes is below the camera's smallest packet size ({limits.minimum} bytes)")
    return limit - (limit - limits.minimum) % max(1, limits.increment)


def packet_period_s(packet_size: int, delay_ticks: int, tick_hz: float, camera_link_bytes_s: float) -> float:
    """Time from one stream packet to the next: its time on the camera's wire plus the inter-packet delay."""
    return (packet_size + ETHERNET_OVERHEAD_BYTES) / camera_link_bytes_s + delay_ticks / tick_hz


def wire_rate_bytes_s(stream: StreamSettings, camera_link_bytes_s: float) -> float:
    """What one streaming camera takes of the NIC, headers and gaps included."""
    period = packet_period_s(stream.packet_size, stream.delay_ticks, stream.tick_hz, camera_link_bytes_s)
    return (stream.packet_size + ETHERNET_OVERHEAD_BYTES) / period


def image_rate_bytes_s(stream: StreamSettings, camera_link_bytes_s: float) -> float:
    """How fast image data arrives from one camera: what the grab deadline must allow for."""
    period = packet_period_s(stream.packet_size, stream.delay_ticks, stream.tick_hz, camera_link_bytes_s)
    return (stream.packet_size - STREAM_HEADER_BYTES) / period


def transfer_s(frame_bytes: int, stream: StreamSettings, camera_link_bytes_s: float) -> float:
    """How long one frame takes to stream at these settings (after any frame transmission delay)."""
    packets = math.ceil(frame_bytes / (stream.packet_size - STREAM_HEADER_BYTES))
    return packets * packet_period_s(stream.packet_size, stream.delay_ticks, stream.tick_hz, camera_link_bytes_s)


def plan_streams(
    cameras: int,
    packet_size: int,
    tick_hz: float,
    nic_bytes_s: float,
    camera_link_bytes_s: float,
    headroom: float,
    stagger: bool = True,
) -> list[StreamSettings]:
    """Per camera (in order), the delays that let all of them stream at once within (1 - headroom) of the NIC.

    Every camera gets the same share; the frame transmission delays offset camera i by i packet slots of the
    shared NIC, so the trains interleave at the switch rather than collide there.
    """
    if cameras < 1:
        raise ValueError("a link budget needs at least one camera")
    if not 0 <= headroom < 1:
        raise ValueError("headroom is a fraction of the NIC, from 0 up to (not including) 1")
    share = min(nic_bytes_s * (1 - headroom) / cameras, camera_link_bytes_s)
    on_wire = packet_size + ETHERNET_OVERHEAD_BYTES
    delay_s = on_wire / share - on_wire / camera_link_bytes_s
    delay_ticks = max(0, math.ceil(delay_s * tick_hz - 1e-9))
    slot_ticks = math.ceil(on_wire / nic_bytes_s * tick_hz) if stagger else 0
    return [StreamSettings(packet_size, delay_ticks, index * slot_ticks, tick_hz) for index in range(cameras)]


@dataclass(frozen=True)
class LinkPlan:
    """The budget of `[pylon.gige]` for a station: how many cameras share the NIC, each one's share, their settings."""

    sharing: int
    share_bytes_s: float
    link_bytes_s: float
    streams: tuple[StreamSettings, ...]

    @property
    def packet_size(self) -> int:
        return self.streams[0].packet_size

    def for_camera(self, index: int) -> StreamSettings:
        """The settings of the station's `index`-th camera: with several NICs, each NIC's cameras count from 0."""
        return self.streams[index % self.sharing]


def plan_link(
    settings: PylonSettings,
    cameras: int,
    tick_hz: float = FALLBACK_TICK_HZ,
    limits: PacketLimits = PacketLimits(),
) -> LinkPlan:
    """The one place `[pylon.gige]` and `pylon.link_mb_s` become packet sizes and delays: the driver (with the camera's
    clock and packet limits) and the doctor (with a typical camera's) both plan through here."""
    gige = settings.gige
    sharing = gige.cameras_per_nic or cameras
    nic, link = gige.nic_mb_s * 1e6, settings.link_mb_s * 1e6
    packet = packet_size_for(gige.mtu, limits)
    streams = plan_streams(sharing, packet, tick_hz, nic, link, gige.headroom, gige.stagger)
    return LinkPlan(sharing, min(nic * (1 - gige.headroom) / sharing, link), link, tuple(streams))


@dataclass(frozen=True)
class BudgetCheck:
    """Whether streams sharing a NIC fit it, in words for the doctor and the log."""

    ok: bool
    total_bytes_s: float
    capacity_bytes_s: float
    detail: str


def check_streams(
    streams: dict[str, StreamSettings], nic_bytes_s: float, camera_link_bytes_s: float, headroom: float
) -> BudgetCheck:
    """The sum of the cameras' wire rates at their delays against the NIC less its headroom."""
    rates = {name: wire_rate_bytes_s(s, camera_link_bytes_s) for name, s in streams.items()}
    total = sum(rates.values())
    capacity = nic_bytes_s * (1 - headroom)
    verdict = "fits" if total <= capacity * (1 + 1e-6) else "EXCEEDS"
    lines = [
        f"{len(streams)} cameras streaming together take {total / 1e6:.1f} MB/s: {verdict} the NIC's "
        f"{nic_bytes_s / 1e6:.0f} MB/s less {headroom:.0%} headroom ({capacity / 1e6:.1f} MB/s)"
    ]
    lines += [
        f"  {name}: {rates[name] / 1e6:.1f} MB/s (packet {s.packet_size} bytes, delay {s.delay_ticks} ticks, "
        f"frame delay {s.frame_delay_ticks} ticks)"
        for name, s in streams.items()
    ]
    detail = "\n".join(lines)
    return BudgetCheck(verdict == "fits", total, capacity, detail)


class AppliedStream(BaseModel):
    """One camera's stream settings as the driver left them at open (read back from the camera)."""

    model_config = ConfigDict(extra="forbid")

    serial: str = Field(description="The camera's serial number.")
    packet_size: int = Field(description="GevSCPSPacketSize in bytes (the IP packet, headers included).")
    delay_ticks: int = Field(description="GevSCPD: the inter-packet delay in ticks of tick_hz.")
    frame_delay_ticks: int = Field(description="GevSCFTD: the frame transmission delay in ticks of tick_hz.")
    tick_hz: float = Field(description="The camera's timestamp clock the delays count in.")
    tick_source: str = Field(description="Where tick_hz came from: the camera's node, SFNC 2 (ns) or assumed.")
    budget_applied: bool = Field(description="pylon.gige.apply at the time: false kept the feature file's values.")
    applied_at: datetime = Field(description="When the driver opened the camera and read these back (UTC).")

    def settings(self) -> StreamSettings:
        return StreamSettings(self.packet_size, self.delay_ticks, self.frame_delay_ticks, self.tick_hz)


class AppliedStreams(BaseModel):
    """`<state_dir>/camera_streams.json`: what the running station's cameras stream with.

    The doctor cannot open a camera the station holds; without this it could only ever say
    "not read" while the station runs, which is when the answer matters.
    """

    model_config = ConfigDict(extra="forbid")

    cameras: dict[str, AppliedStream] = Field(description="Per camera name, its settings as applied at open.")

    def write(self, path: Path) -> None:
        replace_durably(path, self.model_dump_json(indent=2).encode())

    @classmethod
    def read(cls, path: Path) -> AppliedStreams:
        """Raises OSError (no file: the station has not opened its cameras with this path) or ValueError (not ours)."""
        try:
            return cls.model_validate_json(path.read_bytes())
        except ValidationError as exc:
            raise ValueError(f"{path} is not a record of applied stream settings: {exc.errors()[0]['msg']}") from None
