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

ETHERNET_OVERHEAD_BYTES = 38
"""Preamble and start delimiter (8), Ethernet header (14), FCS (4), inter-frame gap (12): on the wire, not in the
packet size the camera is given."""
STREAM_HEADER_BYTES = 36
"""IP (20), UDP (8) and GVSP (8) headers: inside GevSCPSPacketSize, but not image data."""
STANDARD_PACKET = 1500
JUMBO_PACKET = 8192
"""Basler's packet size for jumbo frames: well inside a 9000-byte MTU, which some switches count differently."""
FALLBACK_TICK_HZ = 1_000_000_000
"""Cameras without GevTimestampTickFrequency: 1 GHz. Assuming a faster clock than the real one only makes the delay
longer (safe, slower); assuming a slower one would overload the NIC."""


@dataclass(frozen=True)
class StreamSettings:
    """What one camera streams with: the values written to (or read back from) GevSCPSPacketSize, GevSCPD, GevSCFTD."""

    packet_size: int
    delay_ticks: int
    frame_delay_ticks: int
    tick_hz: float


def packet_size_for(mtu: int, minimum: int = 220, maximum: int = 9014, increment: int = 4) -> int:
    """The packet size for a NIC's MTU: jumbo (8192) where the MTU takes it, else the largest that fits the MTU."""
    wanted = JUMBO_PACKET if mtu >= JUMBO_PACKET else min(mtu, STANDARD_PACKET)
    size = min(wanted, maximum)
    size -= (size - minimum) % increment
    if size < minimum:
        raise ValueError(f"an MTU of {mtu} bytes is below the camera's smallest packet size ({minimum} bytes)")
    return size


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
