"""Five Basler cameras through pypylon, mapped by serial number and recovering from removal.

Follows Basler's pypylon samples: one InstantCamera per device, features from a .pfs file
per serial, a configuration event handler that only sets a flag on removal (pylon calls it
on its own thread), and every grab result released at once. The whole driver runs on the
station's capture thread; the supervisor only asks `needs_reconnect()` and schedules
`reconnect()` there, so no two threads ever drive a camera.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, Protocol

import structlog
from pypylon import genicam, pylon

from amflow_edge.common.backoff import Backoff
from amflow_edge.drivers.base import CameraHealth, CameraSettings, DriverError, Frame, GrabError, Shot
from amflow_edge.drivers.gige_budget import (
    FALLBACK_TICK_HZ,
    AppliedStream,
    AppliedStreams,
    PacketLimits,
    StreamSettings,
    plan_link,
    transfer_s,
)
from amflow_edge.drivers.pylon_settings import ActionCommand, PylonSettings
from amflow_edge.drivers.trigger_check import FrameDroppedError, FrameIncompleteError, TriggerNotConfirmedError

log = structlog.get_logger(__name__)

TRIGGER_READY_MS = 1000
PULSE_POLL_S = 0.005
FIRST_RECONNECT_S = 1.0
CHUNKS = ("Timestamp", "ExposureTime", "Gain", "GainAll")
"""Chunk selectors enabled where the camera has them: ace 2 / SFNC 2 give Gain in dB, ace classic GainAll in raw units."""
CHUNK_NODES = ("ChunkTimestamp", "ChunkExposureTime", "ChunkGain", "ChunkGainAll")
NO_ADDRESS = "0.0.0.0"
TickSource = Literal["GevTimestampTickFrequency", "sfnc2_ns", "assumed"]
"""Where a camera's timestamp clock rate came from: its node, SFNC 2's nanoseconds, or nowhere (1 GHz assumed)."""


class _RemovalFlag(pylon.ConfigurationEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.removed = threading.Event()

    def OnCameraDeviceRemoved(self, camera: pylon.InstantCamera) -> None:  # noqa: N802 - pylon's name
        self.removed.set()


@dataclass
class _Camera:
    settings: CameraSettings
    backoff: Backoff
    camera: pylon.InstantCamera | None = None
    flag: _RemovalFlag = field(default_factory=_RemovalFlag)
    features_sha256: str | None = None
    model: str = ""
    address: str = ""
    stream: StreamSettings | None = None
    stream_applied_at: datetime | None = None
    tick_hz: float = FALLBACK_TICK_HZ
    tick_source: TickSource = "assumed"
    chunks: bool = False
    exposure_us: float = 0.0
    gain_db: float = 0.0
    lost: str | None = "not opened"
    next_attempt: float = 0.0


def _why(exc: Exception) -> str:
    """pylon's message without its source-file trailer."""
    return str(exc).split("\n")[0].split(" : ")[0].strip()


def enumerate_cameras() -> list[pylon.DeviceInfo]:
    return list(pylon.TlFactory.GetInstance().EnumerateDevices())


class ActionTransport(Protocol):
    """Where an action command goes out and its acknowledgements come back: pylon's GigE transport layer on a station.

    Its own seam because the confirmation logic must be testable on a machine without GigE cameras.
    """

    def issue(self, action: ActionCommand, timeout_ms: int, expected: int) -> tuple[bool, Sequence[tuple[str, int]]]:
        """Send one ACTION_CMD; wait up to timeout_ms for `expected` acknowledgements, as (ip address, status)."""


class PylonActionTransport:
    """pylon's BaslerGigE transport layer, as Basler's action command sample uses it."""

    def issue(self, action: ActionCommand, timeout_ms: int, expected: int) -> tuple[bool, Sequence[tuple[str, int]]]:
        try:
            tl = pylon.TlFactory.GetInstance().CreateTl("BaslerGigE")
            ok, results = tl.IssueActionCommandWait(
                action.device_key, action.group_key, action.group_mask, action.broadcast_address, timeout_ms, expected
            )
        except genicam.GenericException as exc:
            raise DriverError(
                f"the action command to {action.broadcast_address} could not be sent: {_why(exc)}; check "
                "pylon.action.broadcast_address is the camera network's broadcast address"
            ) from None
        return bool(ok), [(str(address), int(status)) for address, status in results]


ACTION_STATUS = {
    pylon.GigEActionCommandStatus_Ok: "ok",
    pylon.GigEActionCommandStatus_NoRefTime: "no reference time (PTP not synchronised)",
    pylon.GigEActionCommandStatus_Overflow: "action queue overflow",
    pylon.GigEActionCommandStatus_ActionLate: "the action time was already past",
}


class ActionNotConfirmedError(TriggerNotConfirmedError):
    """Not every camera acknowledged an action command: some of them did not expose, so there is no scan.

    A TriggerNotConfirmedError, so `cameras check-triggers` counts it per camera and carries on.
    """

    def __init__(self, missing: Mapping[str, str]) -> None:
        names = ", ".join(f"{camera}: {why}" for camera, why in missing.items())
        super().__init__(
            f"action command not confirmed by {names}; check the camera's cable and that its ActionDeviceKey, "
            "ActionGroupKey and ActionGroupMask match [pylon.action] (the driver sets them at open) and that "
            "pylon.action.broadcast_address reaches its subnet",
            missing,
        )


def issue_action_command(
    action: ActionCommand,
    cameras: Mapping[str, str],
    timeout_ms: int,
    transport: ActionTransport | None = None,
) -> None:
    """One GigE Vision ACTION_CMD broadcast, confirmed: every camera (ip address → name) must answer status ok.

    Fire-and-forget could not tell a camera that missed the packet from one that exposed; only
    the acknowledgements can, before the station waits a grab deadline for a frame that never comes.
    """
    _, results = (transport or PylonActionTransport()).issue(action, timeout_ms, len(cameras))
    answered = {address: status for address, status in results if address and address != NO_ADDRESS}
    strangers = sorted(set(answered) - set(cameras))
    if strangers:
        log.warning("devices not of this station answered its action command", addresses=strangers)
    missing = {
        name: (
            "no answer"
            if address not in answered
            else ACTION_STATUS.get(answered[address], f"status {answered[address]}")
        )
        for address, name in cameras.items()
        if answered.get(address) != pylon.GigEActionCommandStatus_Ok
    }
    if missing:
        raise ActionNotConfirmedError(missing)


TimestampSource = Literal["chunk", "grab_result"] | None
"""Where a frame's camera timestamp came from; None when the camera keeps no clock (pylon's emulation)."""


def _ip_address(info: pylon.DeviceInfo) -> str:
    """The GigE camera's address action command acknowledgements come from; empty for other transports."""
    try:
        address = str(info.GetIpAddress())
    except genicam.GenericException:
        return ""
    return "" if address in ("", "N/A") else address


def tick_rate(
    camera: str, tick_frequency_hz: float | None, sfnc_major: int | None, sfnc2_timestamp: bool
) -> tuple[float, TickSource]:
    """The rate of a camera's timestamp clock, which the inter-packet delays and the frames' timestamps count in.

    GigE cameras of SFNC 1 (ace classic) say it in GevTimestampTickFrequency (125 MHz on many);
    SFNC 2 cameras (ace 2, USB) dropped that node because their timestamps are nanoseconds. A
    camera that is neither is assumed at 1 GHz, out loud: that is safe for the budget (a delay
    counted in too fast ticks is only longer) but would make its timestamps wrong.
    """
    if tick_frequency_hz:
        return tick_frequency_hz, "GevTimestampTickFrequency"
    if sfnc2_timestamp or (sfnc_major is not None and sfnc_major >= 2):
        return float(FALLBACK_TICK_HZ), "sfnc2_ns"
    log.warning(
        "the camera states no timestamp clock rate (no GevTimestampTickFrequency, not SFNC 2); assuming 1 GHz: "
        "its packet delays are then longer than needed and its timestamps may be off by a constant factor",
        camera=camera,
        assumed_tick_hz=FALLBACK_TICK_HZ,
    )
    return float(FALLBACK_TICK_HZ), "assumed"


def _readable(nodemap: genicam.INodeMap, name: str) -> genicam.INode | None:
    node = nodemap.GetNode(name)
    return node if node is not None and genicam.IsReadable(node) else None


def _read_tick_rate(camera: pylon.InstantCamera, name: str) -> tuple[float, TickSource]:
    nodemap = camera.GetNodeMap()
    frequency = _readable(nodemap, "GevTimestampTickFrequency")
    major = _readable(nodemap, "DeviceSFNCVersionMajor")
    sfnc2_timestamp = any(
        (node := nodemap.GetNode(n)) is not None and genicam.IsAvailable(node)
        for n in ("TimestampLatch", "TimestampLatchValue", "Timestamp")
    )
    return tick_rate(
        name,
        float(frequency.GetValue()) if frequency is not None else None,
        int(major.GetValue()) if major is not None else None,
        sfnc2_timestamp,
    )


def _enable_chunks(camera: pylon.InstantCamera) -> bool:
    """Timestamp, exposure and gain as chunk data of every frame, where the camera can (Basler's grabchunkimage).

    A camera that accepts ChunkModeActive but then offers no ChunkSelector (pylon's emulation)
    cannot even start grabbing with it on, so it is switched back off.
    """
    mode = _node(camera, "ChunkModeActive")
    if mode is None:
        return False
    camera.ChunkModeActive.Value = True
    selector = camera.GetNodeMap().GetNode("ChunkSelector")
    if selector is None or not genicam.IsWritable(selector) or "Timestamp" not in camera.ChunkSelector.Symbolics:
        camera.ChunkModeActive.Value = False
        return False
    for chunk in CHUNKS:
        if chunk in camera.ChunkSelector.Symbolics:
            camera.ChunkSelector.Value = chunk
            camera.ChunkEnable.Value = True
    return True


def _chunk_values(chunks: genicam.INodeMap) -> dict[str, float]:
    """The chunk values as the camera gives them: ChunkTimestamp stays an int, whose nanoseconds a float would round
    once the camera has run for 104 days."""
    values: dict[str, float] = {}
    for name in CHUNK_NODES:
        node = _readable(chunks, name)
        if node is not None:
            values[name] = node.GetValue()
    return values


SettingsSource = Literal["chunk", "camera"]


@dataclass(frozen=True)
class FrameFacts:
    """What the camera says about one frame: its clock, and the exposure and gain it used, each with its source."""

    ticks: int | None
    timestamp_source: TimestampSource
    exposure_us: float
    exposure_source: SettingsSource
    gain_db: float
    gain_source: SettingsSource
    gain_raw: int | None = None


def frame_facts(
    chunks: Mapping[str, float], grab_timestamp: int, read_back_exposure_us: float, read_back_gain_db: float
) -> FrameFacts:
    """Each chunk value on its own, over what the camera read back at open.

    Chunk data is what the sensor did for this very frame. An ace classic sends its gain as
    ChunkGainAll in raw units, with no conversion to dB the camera states: that is kept as raw,
    and the dB recorded stay the read-back ones, while its chunk exposure is still used.
    """
    ticks: int | None = None
    source: TimestampSource = None
    if "ChunkTimestamp" in chunks:
        ticks, source = int(chunks["ChunkTimestamp"]), "chunk"
    elif grab_timestamp:
        ticks, source = int(grab_timestamp), "grab_result"
    exposure = chunks.get("ChunkExposureTime")
    gain = chunks.get("ChunkGain")
    raw = chunks.get("ChunkGainAll")
    return FrameFacts(
        ticks=ticks,
        timestamp_source=source,
        exposure_us=read_back_exposure_us if exposure is None else exposure,
        exposure_source="camera" if exposure is None else "chunk",
        gain_db=read_back_gain_db if gain is None else gain,
        gain_source="camera" if gain is None else "chunk",
        gain_raw=None if raw is None else int(raw),
    )


def _node(camera: pylon.InstantCamera, *names: str) -> genicam.INode | None:
    nodemap = camera.GetNodeMap()
    for name in names:
        node = nodemap.GetNode(name)
        if node is not None and genicam.IsWritable(node):
            return node
    return None


class PylonDriver:
    def __init__(
        self,
        cameras: list[CameraSettings],
        settings: PylonSettings,
        action_transport: ActionTransport | None = None,
        applied_streams_path: Path | None = None,
    ) -> None:
        """`applied_streams_path`: where to record the stream settings applied at open (the station passes
        `<state_dir>/camera_streams.json`), so the doctor can check them while the station holds the cameras."""
        self._settings = settings
        self._cameras = [_Camera(c, Backoff(FIRST_RECONNECT_S, settings.reconnect_max_backoff_s)) for c in cameras]
        self._hardware = settings.trigger == "line1"
        self._action_transport = action_transport
        self._applied_streams_path = applied_streams_path

    @property
    def hardware_triggered(self) -> bool:
        return self._hardware

    def camera(self, name: str) -> pylon.InstantCamera:
        """The open pylon camera behind a configured name, for diagnostics (and tests that play the hardware)."""
        for entry in self._cameras:
            if entry.settings.name == name and entry.camera is not None:
                return entry.camera
        raise KeyError(f"{name} is not open")

    def open(self) -> None:
        found = {info.GetSerialNumber(): info for info in enumerate_cameras()}
        wanted = {c.settings.serial for c in self._cameras}
        missing = [c.settings for c in self._cameras if c.settings.serial not in found]
        extra = sorted(set(found) - wanted)
        if extra:
            log.warning("cameras connected but not configured; ignored", serials=extra)
        if missing:
            names = ", ".join(f"{s.name} (serial {s.serial})" for s in missing)
            seen = ", ".join(f"{serial} ({info.GetModelName()})" for serial, info in sorted(found.items())) or "none"
            raise DriverError(
                f"camera {names} not found; connected: {seen}. Check cable and power, "
                "or fix the serial in [[cameras]] (`amflow-edge cameras list` shows what is connected)"
            )
        if self._settings.trigger == "action":
            self._check_action_addresses({c.settings.name: found[c.settings.serial] for c in self._cameras})
        try:
            for entry in self._cameras:
                self._open_one(entry, found[entry.settings.serial])
        except Exception:
            self.close()
            raise
        self._record_streams()

    def _check_action_addresses(self, infos: Mapping[str, pylon.DeviceInfo]) -> None:
        """Action commands are confirmed by each camera's acknowledgement, told apart by its IP address: a camera
        without one (or sharing one) could never be confirmed, and would shrink the set of answers waited for."""
        serials: dict[str, str] = {c.settings.name: c.settings.serial for c in self._cameras}
        addresses = {name: _ip_address(info) for name, info in infos.items()}
        without = [f"{name} (serial {serials[name]})" for name, address in addresses.items() if not address]
        if without:
            raise DriverError(
                f"trigger = 'action' needs every camera's IP address, which confirms its acknowledgement; "
                f"{', '.join(without)} {'has' if len(without) == 1 else 'have'} none (not a GigE camera?). "
                "Connect them over GigE, or set pylon.trigger = 'software' or 'line1'"
            )
        by_address: dict[str, list[str]] = {}
        for name, address in addresses.items():
            by_address.setdefault(address, []).append(name)
        shared = [f"{' and '.join(names)} ({address})" for address, names in by_address.items() if len(names) > 1]
        if shared:
            raise DriverError(
                f"cameras share an IP address: {'; '.join(shared)}; their action command acknowledgements cannot "
                "be told apart. Give each camera its own address (pylon IP Configurator)"
            )

    def _record_streams(self) -> None:
        """Write what the cameras stream with to applied_streams_path (atomically): the doctor reads it while the
        station holds the cameras. A failure is logged, never fatal: the cameras work without the record."""
        if self._applied_streams_path is None:
            return
        record = AppliedStreams(
            cameras={
                e.settings.name: AppliedStream(
                    serial=e.settings.serial,
                    packet_size=e.stream.packet_size,
                    delay_ticks=e.stream.delay_ticks,
                    frame_delay_ticks=e.stream.frame_delay_ticks,
                    tick_hz=e.stream.tick_hz,
                    tick_source=e.tick_source,
                    budget_applied=self._settings.gige.apply,
                    applied_at=e.stream_applied_at,
                )
                for e in self._cameras
                if e.stream is not None and e.stream_applied_at is not None
            }
        )
        try:
            record.write(self._applied_streams_path)
        except OSError as exc:
            log.warning(
                "cannot record the cameras' stream settings; the doctor cannot check them while the station runs",
                path=str(self._applied_streams_path),
                error=exc.strerror or str(exc),
            )

    def _open_one(self, entry: _Camera, info: pylon.DeviceInfo) -> None:
        name, serial = entry.settings.name, entry.settings.serial
        try:
            camera = pylon.InstantCamera(pylon.TlFactory.GetInstance().CreateDevice(info))
            entry.flag = _RemovalFlag()
            camera.RegisterConfiguration(entry.flag, pylon.RegistrationMode_Append, pylon.Cleanup_None)
            camera.Open()
            entry.camera = camera
            entry.model = info.GetModelName()
            entry.address = _ip_address(info)
            if self._settings.trigger == "action" and not entry.address:
                raise DriverError(
                    f"{name} (serial {serial}) has no IP address, which confirms its action command "
                    "acknowledgement; connect it over GigE or set pylon.trigger = 'software' or 'line1'"
                )
            entry.features_sha256 = self._load_features(camera, entry.settings)
            self._configure(camera, entry)
            entry.tick_hz, entry.tick_source = _read_tick_rate(camera, name)
            entry.stream = self._apply_link_budget(camera, entry)
            entry.stream_applied_at = datetime.now(UTC) if entry.stream is not None else None
            entry.chunks = _enable_chunks(camera)
            camera.MaxNumBuffer.Value = self._settings.grab_buffers
            camera.StartGrabbing(pylon.GrabStrategy_OneByOne)
        except genicam.GenericException as exc:
            self._release(entry)
            raise DriverError(f"{name} (serial {serial}): cannot open or configure: {_why(exc)}") from None
        except DriverError:
            self._release(entry)
            raise
        entry.lost = None
        entry.backoff.reset()
        log.info(
            "camera open",
            camera=name,
            serial=serial,
            model=entry.model,
            features=entry.features_sha256,
            exposure_us=entry.exposure_us,
            gain_db=entry.gain_db,
            chunks=entry.chunks,
            tick_hz=entry.tick_hz,
            tick_source=entry.tick_source,
        )

    def _load_features(self, camera: pylon.InstantCamera, settings: CameraSettings) -> str | None:
        if self._settings.features_dir is None:
            return None
        path = self._settings.features_dir / f"{settings.serial}.pfs"
        if not path.is_file():
            log.warning("no feature file for this camera; using its own settings", camera=settings.name, path=str(path))
            return None
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DriverError(f"{settings.name}: cannot read feature file {path}: {exc.strerror or exc}") from None
        try:
            pylon.FeaturePersistence.Load(str(path), camera.GetNodeMap(), True)
        except genicam.GenericException as exc:
            raise DriverError(
                f"{settings.name}: feature file {path} does not fit the camera: {_why(exc)}; "
                "save it again from this camera with `amflow-edge cameras save-features`"
            ) from None
        return hashlib.sha256(data).hexdigest()

    def _configure(self, camera: pylon.InstantCamera, entry: _Camera) -> None:
        """The station's own settings win over the feature file: the scan record must be true."""
        settings = entry.settings
        camera.Width.Value = settings.width
        camera.Height.Value = settings.height
        camera.PixelFormat.Value = settings.pixel_format
        exposure = _node(camera, "ExposureTime", "ExposureTimeAbs")
        gain = _node(camera, "Gain", "GainAbs")
        if exposure is None or gain is None:
            raise DriverError(f"{settings.name}: the camera has no writable exposure time or gain in dB")
        exposure.SetValue(settings.exposure_us)
        gain.SetValue(settings.gain_db)
        entry.exposure_us, entry.gain_db = float(exposure.GetValue()), float(gain.GetValue())
        if _node(camera, "TestImageSelector") is not None:
            camera.TestImageSelector.Value = "Off"
        camera.TriggerSelector.Value = "FrameStart"
        camera.TriggerMode.Value = "On"
        if self._settings.trigger == "software":
            camera.TriggerSource.Value = "Software"
        elif self._settings.trigger == "line1":
            camera.TriggerSource.Value = "Line1"
            camera.TriggerActivation.Value = self._settings.line_activation
        else:
            action = self._settings.action
            assert action is not None
            if _node(camera, "ActionDeviceKey") is None:
                raise DriverError(
                    f"{settings.name}: this camera has no action commands; use trigger = software or line1"
                )
            camera.ActionDeviceKey.Value = action.device_key
            camera.ActionGroupKey.Value = action.group_key
            camera.ActionGroupMask.Value = action.group_mask
            camera.TriggerSource.Value = "Action1"

    def _apply_link_budget(self, camera: pylon.InstantCamera, entry: _Camera) -> StreamSettings | None:
        """Packet size and delays from [pylon.gige], where the camera has them (GigE); what it streams with after."""
        nodes = [_node(camera, name) for name in ("GevSCPSPacketSize", "GevSCPD", "GevSCFTD")]
        size_node, delay_node, frame_delay_node = nodes
        if size_node is None or delay_node is None:
            log.info(
                "packet size and inter-packet delay do not apply to this camera (not GigE)",
                camera=entry.settings.name,
                model=entry.model,
            )
            return None
        tick_hz = entry.tick_hz
        gige = self._settings.gige
        if gige.apply:
            limits = PacketLimits(
                int(camera.GevSCPSPacketSize.Min), int(camera.GevSCPSPacketSize.Max), int(camera.GevSCPSPacketSize.Inc)
            )
            plan = plan_link(self._settings, len(self._cameras), tick_hz, limits)
            wanted = plan.for_camera(self._cameras.index(entry))
            size_node.SetValue(wanted.packet_size)
            if wanted.delay_ticks > camera.GevSCPD.Max:
                log.warning(
                    "the camera cannot delay its packets as long as the link budget needs; frames may get lost",
                    camera=entry.settings.name,
                    needed_ticks=wanted.delay_ticks,
                    max_ticks=camera.GevSCPD.Max,
                )
            delay_node.SetValue(min(wanted.delay_ticks, camera.GevSCPD.Max))
            if frame_delay_node is not None:
                frame_delay_node.SetValue(min(wanted.frame_delay_ticks, camera.GevSCFTD.Max))
        applied = StreamSettings(
            packet_size=int(size_node.GetValue()),
            delay_ticks=int(delay_node.GetValue()),
            frame_delay_ticks=int(frame_delay_node.GetValue()) if frame_delay_node is not None else 0,
            tick_hz=tick_hz,
        )
        log.info(
            "stream link budget",
            camera=entry.settings.name,
            applied=gige.apply,
            packet_size=applied.packet_size,
            delay_ticks=applied.delay_ticks,
            frame_delay_ticks=applied.frame_delay_ticks,
            tick_hz=applied.tick_hz,
        )
        return applied

    def stream_settings(self) -> dict[str, StreamSettings]:
        """What each open GigE camera streams with, for the doctor and the trigger check."""
        return {e.settings.name: e.stream for e in self._cameras if e.stream is not None}

    def frame_deadline_s(self) -> float:
        """Exposure, then transfer over the camera's link (at its budgeted delays on GigE), then a margin for the host."""

        def transfer(entry: _Camera) -> float:
            frame_bytes = entry.settings.width * entry.settings.height
            plain = frame_bytes / (self._settings.link_mb_s * 1e6)
            stream = entry.stream
            if stream is None:
                return plain
            budgeted = transfer_s(frame_bytes, stream, self._settings.link_mb_s * 1e6)
            return max(plain, budgeted + stream.frame_delay_ticks / stream.tick_hz)

        slowest = max(c.settings.exposure_us / 1e6 + transfer(c) for c in self._cameras)
        return slowest + self._settings.grab_margin_s

    def _check(self) -> None:
        for entry in self._cameras:
            if entry.lost is None and entry.camera is not None:
                if entry.flag.removed.is_set() or entry.camera.IsCameraDeviceRemoved():
                    self._lose(entry, "removed (cable, power or network)")
                elif not entry.camera.IsOpen() or not entry.camera.IsGrabbing():
                    self._lose(entry, "closed under the station")
        lost = [e for e in self._cameras if e.lost is not None]
        if lost:
            names = ", ".join(f"{e.settings.name} (serial {e.settings.serial}): {e.lost}" for e in lost)
            raise DriverError(f"incomplete rig, no scan taken: {names}; the station reconnects by itself")

    def _lose(self, entry: _Camera, reason: str) -> None:
        entry.lost = reason
        entry.next_attempt = time.monotonic()
        log.error(
            "camera lost; scans are refused until it is back",
            camera=entry.settings.name,
            serial=entry.settings.serial,
            reason=reason,
        )

    def trigger(self) -> None:
        self._check()
        if self._hardware:
            raise DriverError(
                "this station is triggered on Line1 by its part-present sensor (pylon.trigger = "
                "'line1'); software triggers are refused"
            )
        if self._settings.trigger == "action":
            assert self._settings.action is not None
            self._discard_stale_frames()
            issue_action_command(
                self._settings.action,
                {e.address: e.settings.name for e in self._cameras},
                self._settings.action_timeout_ms,
                self._action_transport,
            )
            return
        self._software_trigger()

    def _software_trigger(self) -> None:
        self._discard_stale_frames()
        for entry in self._cameras:
            assert entry.camera is not None
            try:
                entry.camera.WaitForFrameTriggerReady(TRIGGER_READY_MS, pylon.TimeoutHandling_ThrowException)
                entry.camera.ExecuteSoftwareTrigger()
            except genicam.TimeoutException:
                raise GrabError(
                    entry.settings.name,
                    f"not ready for a trigger within {TRIGGER_READY_MS} ms (serial {entry.settings.serial})",
                ) from None
            except genicam.GenericException as exc:
                self._lose(entry, _why(exc))
                raise DriverError(f"{entry.settings.name}: trigger failed: {_why(exc)}") from None

    def _discard_stale_frames(self) -> None:
        """A frame that arrived after the last scan gave up on it must not become part of the next scan."""
        for entry in self._cameras:
            assert entry.camera is not None
            while True:
                result = entry.camera.RetrieveResult(0, pylon.TimeoutHandling_Return)
                if result is None or not result.IsValid():
                    break
                result.Release()
                log.warning("late frame from an earlier trigger discarded", camera=entry.settings.name)

    def grab(self, timeout_s: float) -> Shot:
        outcomes = self.grab_each(timeout_s)
        for outcome in outcomes.values():
            if isinstance(outcome, GrabError):
                raise outcome  # the capture loop logs it, naming the camera
        frames = {name: frame for name, frame in outcomes.items() if isinstance(frame, Frame)}
        return Shot(frames=frames, metadata={"trigger": self._settings.trigger})

    def grab_each(self, timeout_s: float) -> dict[str, Frame | GrabError]:
        """Every camera's frame of the last trigger or why there is none: what the trigger check counts."""
        deadline = time.monotonic() + min(timeout_s, self.frame_deadline_s())
        outcomes: dict[str, Frame | GrabError] = {}
        for entry in self._cameras:
            try:
                outcomes[entry.settings.name] = self._retrieve(entry, deadline)
            except GrabError as exc:
                outcomes[entry.settings.name] = exc
        return outcomes

    def wait_shot(self, timeout_s: float) -> Shot | None:
        """Hardware trigger: None while no camera has a frame; else the rig's frames of that pulse.

        Any camera's frame starts the collection: waiting on one camera only would, after it
        missed a pulse, pair its next frame with the others' frames of the pulse before.
        """
        self._check()
        deadline = time.monotonic() + timeout_s
        try:
            while not any(e.camera is not None and e.camera.GetGrabResultWaitObject().Wait(0) for e in self._cameras):
                if time.monotonic() >= deadline:
                    return None
                time.sleep(PULSE_POLL_S)
        except genicam.GenericException as exc:
            raise DriverError(f"waiting for a Line1 pulse failed: {_why(exc)}") from None
        try:
            return self.grab(self.frame_deadline_s())
        except GrabError:
            self._discard_stale_frames()  # the rest of a half-seen pulse must not start the next scan
            raise

    def _retrieve(self, entry: _Camera, deadline: float) -> Frame:
        name = entry.settings.name
        assert entry.camera is not None
        remaining_ms = max(0, int((deadline - time.monotonic()) * 1000))
        try:
            result = entry.camera.RetrieveResult(remaining_ms, pylon.TimeoutHandling_Return)
        except genicam.GenericException as exc:
            self._lose(entry, _why(exc))
            raise GrabError(name, f"camera failed: {_why(exc)}") from None
        if result is None or not result.IsValid():
            raise FrameDroppedError(
                name, f"no frame within {remaining_ms} ms of the trigger (serial {entry.settings.serial})"
            )
        try:
            if not result.GrabSucceeded():
                raise FrameIncompleteError(
                    name, f"failed buffer: {result.GetErrorDescription()} (0x{result.GetErrorCode():x})"
                )
            if result.GetNumberOfSkippedImages():
                raise FrameDroppedError(
                    name,
                    f"{result.GetNumberOfSkippedImages()} images skipped: triggers come faster "
                    "than the camera transfers",
                )
            if (result.GetWidth(), result.GetHeight()) != (entry.settings.width, entry.settings.height):
                raise GrabError(
                    name,
                    f"frame is {result.GetWidth()}×{result.GetHeight()}, expected "
                    f"{entry.settings.width}×{entry.settings.height}",
                )
            image = result.GetArray().copy()
            chunks = (
                _chunk_values(result.GetChunkDataNodeMap()) if entry.chunks and result.IsChunkDataAvailable() else {}
            )
            facts = frame_facts(chunks, int(result.GetTimeStamp()), entry.exposure_us, entry.gain_db)
            tick_hz = entry.tick_hz if facts.ticks is not None else None
            return Frame(
                camera=name,
                image=image,
                timestamp=datetime.now(UTC),
                serial=entry.settings.serial,
                exposure_us=facts.exposure_us,
                gain_db=facts.gain_db,
                camera_timestamp_ticks=facts.ticks,
                camera_tick_hz=tick_hz,
                extra={
                    "camera_timestamp_ticks": facts.ticks,
                    "camera_timestamp_source": facts.timestamp_source,
                    "camera_tick_hz": tick_hz,
                    "camera_tick_source": entry.tick_source if facts.ticks is not None else None,
                    "exposure_source": facts.exposure_source,
                    "gain_source": facts.gain_source,
                    "chunk_gain_raw": facts.gain_raw,
                    "configured_exposure_us": entry.settings.exposure_us,
                    "configured_gain_db": entry.settings.gain_db,
                    "image_number": int(result.GetImageNumber()),
                    "model": entry.model,
                    "features_sha256": entry.features_sha256,
                },
            )
        finally:
            result.Release()

    def grab_reference(self, timeout_s: float) -> Shot:
        """The empty tray is photographed like any part; no part is there to pulse Line1, so the station does."""
        if not self._hardware:
            self.trigger()
            return self.grab(timeout_s)
        self._check()
        self._set_trigger_source("Software")
        try:
            self._software_trigger()
            return self.grab(timeout_s)
        finally:
            self._set_trigger_source("Line1")

    def _set_trigger_source(self, source: str) -> None:
        for entry in self._cameras:
            assert entry.camera is not None
            try:
                entry.camera.StopGrabbing()
                entry.camera.TriggerSource.Value = source
                entry.camera.StartGrabbing(pylon.GrabStrategy_OneByOne)
            except genicam.GenericException as exc:
                self._lose(entry, _why(exc))
                raise DriverError(
                    f"{entry.settings.name}: cannot switch the trigger to {source}: {_why(exc)}"
                ) from None

    def needs_reconnect(self) -> bool:
        """Asked by the supervisor thread: reads flags only, never touches a camera."""
        now = time.monotonic()
        return any((e.lost is not None or e.flag.removed.is_set()) and now >= e.next_attempt for e in self._cameras)

    def reconnect(self) -> None:
        """Re-enumerate by serial and reopen lost cameras, with backoff; runs on the capture thread."""
        with contextlib.suppress(DriverError):
            self._check()
        now = time.monotonic()
        due = [e for e in self._cameras if e.lost is not None and now >= e.next_attempt]
        if not due:
            return
        found = {info.GetSerialNumber(): info for info in enumerate_cameras()}
        for entry in due:
            self._release(entry)
            info = found.get(entry.settings.serial)
            try:
                if info is None:
                    raise DriverError(f"serial {entry.settings.serial} not found")
                self._open_one(entry, info)
                log.info("camera reconnected", camera=entry.settings.name, serial=entry.settings.serial)
            except DriverError as exc:
                entry.lost = f"reconnecting: {exc}"
                entry.next_attempt = time.monotonic() + entry.backoff.next_delay()
        self._record_streams()

    def _release(self, entry: _Camera) -> None:
        camera, entry.camera = entry.camera, None
        if camera is None:
            return
        for step in (
            camera.StopGrabbing,
            lambda: camera.DeregisterConfiguration(entry.flag),
            camera.Close,
            camera.DestroyDevice,
        ):
            with contextlib.suppress(genicam.GenericException):
                step()

    def close(self) -> None:
        for entry in self._cameras:
            self._release(entry)
            entry.lost = "closed"

    def health(self) -> list[CameraHealth]:
        return [
            CameraHealth(
                camera=e.settings.name,
                serial=e.settings.serial,
                connected=e.lost is None and not e.flag.removed.is_set(),
                detail=e.lost or ("removed (cable, power or network)" if e.flag.removed.is_set() else ""),
            )
            for e in self._cameras
        ]


def read_stream_settings(cameras: list[CameraSettings]) -> tuple[dict[str, StreamSettings], dict[str, str]]:
    """What each connected camera streams with now, for the doctor; and why a camera could not be read.

    Opening a camera the running station holds fails: that camera is reported, not waited for.
    """
    found = {info.GetSerialNumber(): info for info in enumerate_cameras()}
    streams: dict[str, StreamSettings] = {}
    problems: dict[str, str] = {}
    for settings in cameras:
        info = found.get(settings.serial)
        if info is None:
            problems[settings.name] = f"serial {settings.serial} not connected"
            continue
        camera = pylon.InstantCamera()
        try:
            camera.Attach(pylon.TlFactory.GetInstance().CreateDevice(info))
            camera.Open()
            nodemap = camera.GetNodeMap()
            size, delay = nodemap.GetNode("GevSCPSPacketSize"), nodemap.GetNode("GevSCPD")
            if size is None or delay is None or not genicam.IsReadable(size) or not genicam.IsReadable(delay):
                problems[settings.name] = "not a GigE camera: no packet size or inter-packet delay"
                continue
            frame_delay = nodemap.GetNode("GevSCFTD")
            streams[settings.name] = StreamSettings(
                packet_size=int(size.GetValue()),
                delay_ticks=int(delay.GetValue()),
                frame_delay_ticks=int(frame_delay.GetValue())
                if frame_delay is not None and genicam.IsReadable(frame_delay)
                else 0,
                tick_hz=_read_tick_rate(camera, settings.name)[0],
            )
        except genicam.GenericException as exc:
            problems[settings.name] = f"cannot open (in use by the running station?): {_why(exc)}"
        finally:
            with contextlib.suppress(genicam.GenericException):
                camera.Close()
            with contextlib.suppress(genicam.GenericException):
                camera.DestroyDevice()
    return streams, problems
