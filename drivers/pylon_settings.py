"""The `[pylon]` section: how the station drives its Basler cameras.

Apart from the driver so that reading a config, on a mock station too, never loads the pylon SDK.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from amflow_edge.common.config_file import ConfigPath


class ActionCommand(BaseModel):
    """GigE action command: one broadcast packet triggers every camera of the group at once."""

    model_config = ConfigDict(extra="forbid")

    device_key: int = Field(ge=0, le=0xFFFFFFFF, description="ActionDeviceKey set on every camera.")
    group_key: int = Field(ge=0, le=0xFFFFFFFF, description="ActionGroupKey set on every camera.")
    group_mask: int = Field(default=0xFFFFFFFF, ge=1, le=0xFFFFFFFF, description="ActionGroupMask.")
    broadcast_address: str = Field(
        default="255.255.255.255", description="Broadcast address of the camera network, e.g. 192.168.10.255."
    )


class GigeLink(BaseModel):
    """How the cameras share the station PC's network card (`[pylon.gige]`), applied to GigE cameras at open.

    Five cameras triggered together stream at once; without a budget their frames collide on the
    NIC and arrive incomplete. The driver sets GevSCPSPacketSize, GevSCPD and GevSCFTD from this,
    after the feature file, so what the doctor checks is what the cameras do.
    """

    model_config = ConfigDict(extra="forbid")

    apply: bool = Field(
        default=True,
        description="Set packet size and delays at open from this budget; false keeps what the feature files say "
        "(the doctor still checks them).",
    )
    nic_mb_s: float = Field(
        default=125.0,
        gt=0,
        le=12_500,
        description="Capacity of the NIC the cameras share in MB/s: 125 for 1 GbE, 1250 for 10 GbE.",
    )
    camera_link_mb_s: float | None = Field(
        default=None,
        gt=0,
        le=12_500,
        description="Old name of pylon.link_mb_s, read so that existing configs load: given alone it sets "
        "pylon.link_mb_s; given with a different pylon.link_mb_s it is a config error. Leave it out.",
    )
    mtu: int = Field(
        default=1500,
        ge=576,
        le=9216,
        description="Largest IP packet on the way from the cameras to the NIC: the NIC's MTU (`ip link`), or the "
        "switch's if smaller. Each camera's packet size (GevSCPSPacketSize, an IP packet with its IP, UDP and GVSP "
        "headers) is set to the largest the camera takes up to this; 9000 (jumbo frames on NIC and switch) means "
        "six times fewer packets and less CPU per frame.",
    )
    cameras_per_nic: int | None = Field(
        default=None,
        ge=1,
        le=5,
        description="How many of the cameras share that NIC; default all configured cameras.",
    )
    headroom: float = Field(
        default=0.1,
        ge=0,
        le=0.5,
        description="Fraction of the NIC kept free for resends and control traffic.",
    )
    stagger: bool = Field(
        default=True,
        description="Offset each camera's stream by one packet slot (GevSCFTD), so packets interleave at the switch.",
    )


class PylonSettings(BaseModel):
    """How the station drives its Basler cameras (`[pylon]`; PYLON_CAMEMU=5 gives five emulated ones)."""

    model_config = ConfigDict(extra="forbid")

    trigger: Literal["software", "line1", "action"] = Field(
        default="software",
        description="'software': the station triggers all five; 'line1': a part-present sensor or PLC pulses "
        "Line1 of every camera and the station waits for the frames; 'action': a GigE action command.",
    )
    line_activation: Literal["RisingEdge", "FallingEdge"] = Field(default="RisingEdge", description="Line1 edge.")
    action: ActionCommand | None = Field(default=None, description="Keys of the action command (trigger = 'action').")
    features_dir: ConfigPath | None = Field(
        default=None,
        description="Folder of <serial>.pfs feature files, loaded with validation at open "
        "(`amflow-edge cameras save-features` writes them). Exposure and gain from [[cameras]] are applied after.",
    )
    link_mb_s: float = Field(
        default=125.0,
        gt=0,
        le=12_500,
        description="Each camera's own link in MB/s: 125 for a 1 GbE camera, about 400 for USB 3. The one setting "
        "of the per-camera rate: the GigE link budget (the wire time of a packet, so the inter-packet delay) and the "
        "grab deadline both use it. Give the link's line rate, not a measured throughput: a lower value shortens "
        "the budget's inter-packet delays. pylon.gige.camera_link_mb_s is its old name.",
    )
    grab_buffers: int = Field(
        default=3,
        ge=2,
        le=32,
        description="Frame buffers per camera (pylon's MaxNumBuffer, 10 by default). One trigger takes one frame per "
        "camera, so a few are enough; each holds a full frame, and ten per camera kept 250 MB of a 5 MP station "
        "resident.",
    )
    gige: GigeLink = Field(default_factory=GigeLink, description="Link budget of GigE cameras on one NIC.")
    action_timeout_ms: int = Field(
        default=200,
        ge=10,
        le=5000,
        description="How long an action command waits for every camera's acknowledgement before the trigger fails.",
    )
    reconnect_max_backoff_s: float = Field(
        default=30.0, gt=0, le=600, description="Longest wait between attempts to reopen a removed camera."
    )
    grab_margin_s: float = Field(
        default=0.5,
        gt=0,
        le=30,
        description="How much longer than exposure and transfer a frame may take to arrive before the grab fails: "
        "the host's share (driver, copy into memory). A busy PC, or pypylon's emulation on a loaded machine, needs "
        "more.",
    )

    @model_validator(mode="after")
    def _action_needs_keys(self) -> PylonSettings:
        if self.trigger == "action" and self.action is None:
            raise ValueError("trigger = 'action' needs an [pylon.action] table with device_key and group_key")
        return self

    @model_validator(mode="after")
    def _one_link_rate(self) -> PylonSettings:
        """Two settings once gave the per-camera rate (the deadline's and the budget's); one value must win for both,
        and a config that gives two different ones cannot say which it meant."""
        old = self.gige.camera_link_mb_s
        if old is None or old == self.link_mb_s:
            return self
        if "link_mb_s" in self.model_fields_set:
            raise ValueError(
                f"pylon.link_mb_s ({self.link_mb_s:g}) and pylon.gige.camera_link_mb_s ({old:g}) both give each "
                "camera's link rate and differ: keep pylon.link_mb_s (the camera link's line rate, 125 for 1 GbE) "
                "and remove pylon.gige.camera_link_mb_s"
            )
        self.link_mb_s = old
        return self
