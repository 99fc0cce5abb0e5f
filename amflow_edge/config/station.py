"""The station configuration's model: one TOML file, overridable by AMFLOW_… environment variables.

Every section is a strict model (`extra="forbid"`) so a typo in an integrator's file is an
error at start, not a silently ignored setting discovered weeks later on the line.
Precedence: environment > TOML file > defaults; the MQTT password may also come from
systemd's credentials directory so it never sits in a world-readable file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from amflow_edge.common.config_file import ConfigPath
from amflow_edge.config.http import HttpSettings
from amflow_edge.config.identification import IdentificationSettings
from amflow_edge.config.qc import QcSettings
from amflow_edge.config.secrets import read_credential
from amflow_edge.config.service import BackupSettings, DiskSettings, WatchdogSettings
from amflow_edge.config.webhooks import WebhookTarget, unique_hook_ids
from amflow_edge.drivers.base import CAMERA_NAMES, CameraSettings
from amflow_edge.drivers.mock_settings import MockDriverSettings
from amflow_edge.drivers.pylon_settings import PylonSettings
from amflow_edge.drivers.replay_settings import ReplaySettings
from amflow_edge.messaging.payload import MAX_ID_LENGTH

_STRICT = ConfigDict(extra="forbid")


class StationSettings(BaseModel):
    model_config = _STRICT

    id: str = Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Station id; part of every MQTT topic, so no spaces, '/', '+' or '#'.",
    )
    timezone: str = Field(default="Europe/Amsterdam", description="IANA time zone for the created/modified timestamps.")
    data_root: ConfigPath = Field(default=Path("/data"), description="Scans are stored in <data_root>/scans/<uuid>/.")
    state_dir: ConfigPath = Field(
        default=Path("/var/lib/amflow-edge"), description="Station state (databases, caches); survives restarts."
    )

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name such as 'Europe/Amsterdam'") from None
        return value


class RigSettings(BaseModel):
    model_config = _STRICT

    driver: Literal["mock", "pylon", "replay"] = Field(
        default="mock",
        description="Camera driver: 'mock' renders CAD parts, 'pylon' drives Basler cameras, "
        "'replay' plays back stored scans (the [replay] section).",
    )
    grab_timeout_s: float = Field(default=5.0, gt=0, le=60, description="Deadline for all five frames of a trigger.")


class DesignsSettings(BaseModel):
    model_config = _STRICT

    library: ConfigPath = Field(description="Design library TOML: design_material id → mesh file, units, material.")
    batch_meshes: ConfigPath | None = Field(
        default=None,
        description="Folder of the mesh files a session request may name (the MES drops them here); "
        "default the library's folder. Requests cannot reach files outside it.",
    )
    cache_dir: ConfigPath | None = Field(
        default=None,
        description="Where processed designs are kept, by mesh hash (stable poses, footprints, alignment models); "
        "default <state_dir>/design_cache. Stations or test runs may share one: entries are written atomically.",
    )


class TlsSettings(BaseModel):
    model_config = _STRICT

    ca_file: ConfigPath | None = Field(default=None, description="CA certificate that signed the broker's certificate.")
    cert_file: ConfigPath | None = Field(default=None, description="Client certificate, when the broker wants one.")
    key_file: ConfigPath | None = Field(default=None, description="Client private key for cert_file.")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file, or neither")
        return self


class HookSettings(BaseModel):
    model_config = _STRICT

    id: int = Field(default=1, ge=0, description="hook.id in every event: a stable integer per subscription.")
    target: str | None = Field(
        default=None, description="hook.target in every event; default mqtt://host:port/<topic of the event>."
    )


class MqttSettings(BaseModel):
    model_config = _STRICT

    host: str = Field(default="127.0.0.1", min_length=1, description="Broker host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="Broker port (8883 for TLS by convention).")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval.")
    client_id: str | None = Field(default=None, description="MQTT client id; default amflow-edge-<station id>.")
    topic_prefix: str = Field(
        default="amflow", min_length=1, pattern=r"^[^#+]+$", description="First level of every topic."
    )
    username: str | None = Field(default=None, description="Broker user name.")
    password: SecretStr | None = Field(
        default=None, description="Broker password; prefer the 'mqtt_password' systemd credential to this field."
    )
    password_credential: str = Field(
        default="mqtt_password", description="File name of the password in $CREDENTIALS_DIRECTORY, when that is set."
    )
    tls: TlsSettings | None = Field(default=None, description="TLS to the broker; absent means plain TCP.")
    session_expiry_s: int = Field(
        default=7 * 86400,
        ge=0,
        description="How long the broker keeps our session (and requests sent to us) while we are away.",
    )
    max_in_flight: int = Field(
        default=100,
        ge=1,
        le=65535,
        description="Events awaiting PUBACK at once (capped by the broker's Receive Maximum); more drains a backlog faster.",
    )
    hook: HookSettings = Field(default_factory=HookSettings, description="The AM-Vision hook block of every event.")

    @model_validator(mode="after")
    def _password_from_credentials(self) -> MqttSettings:
        if self.password is None:
            try:
                self.password = read_credential(self.password_credential)
            except OSError as exc:
                raise ValueError(
                    f"cannot read the {self.password_credential!r} credential ({exc.strerror}); "
                    "check the unit's LoadCredential= and the file's permissions"
                ) from None
        return self


class CaptureSettings(BaseModel):
    model_config = _STRICT

    timer_interval_s: float | None = Field(
        default=None, gt=0, description="Capture every N seconds (the demo's trigger); absent means no timer."
    )
    png_compression: int = Field(default=1, ge=0, le=9, description="PNG zlib level (0 none … 9 smallest, slowest).")
    png_strategy: Literal["default", "filtered", "huffman_only", "rle", "fixed"] = Field(
        default="huffman_only",
        description="zlib strategy. Sensor noise defeats zlib's string matching, so Huffman coding alone of the "
        "SUB-filtered rows is both faster and smaller (benchmarks/capture_latency.py --png-options).",
    )
    png_filter: Literal["none", "sub", "up", "avg", "paeth", "fast", "all"] = Field(
        default="sub", description="PNG row filter(s) libpng may choose from."
    )
    encode_threads: int = Field(
        default_factory=lambda: min(5, os.cpu_count() or 1),
        ge=1,
        le=16,
        description="Images encoded in parallel (OpenCV frees the GIL); more threads than cores only adds switching.",
    )


class OutboxSettings(BaseModel):
    model_config = _STRICT

    max_backlog_events: int = Field(
        default=100_000,
        ge=1,
        description="Unsent events at which the station stops taking scans until the backlog drains.",
    )
    max_backlog_age_s: float = Field(
        default=3 * 86400, gt=0, description="Age of the oldest unsent event at which the station stops taking scans."
    )
    resume_fraction: float = Field(
        default=0.9, gt=0, lt=1, description="Capture resumes when the backlog falls below this share of the bound."
    )
    retention_s: float = Field(default=7 * 86400, ge=0, description="How long acknowledged events are kept for replay.")


class InspectionSettings(BaseModel):
    model_config = _STRICT

    enabled: bool = Field(default=True, description="Inspect every scan against its design after scan.capture.")
    profile: str = Field(
        default="default",
        min_length=1,
        description="Inspection profile: a name in config/inspection_profiles or a path.",
    )
    deadline_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="Longest one inspection may run; a worker still busy then is stopped and replaced, and the "
        "scan goes to review (insufficient_evidence).",
    )


class CalibrationSettings(BaseModel):
    model_config = _STRICT

    check_drift: bool = Field(
        default=True,
        description="At every session start, compare each camera's empty tray with the one photographed at "
        "commissioning, and inspect nothing through a camera that moved.",
    )
    max_drift_px: float = Field(
        default=1.0,
        gt=0,
        le=50,
        description="How far (pixels, at any image corner) a camera's view may move before it must be "
        "recalibrated; a bumped bracket moves it by several.",
    )


class SessionSettings(BaseModel):
    model_config = _STRICT

    scan_session: str | None = Field(
        default=None, description="UUID of the scanning session; a new one is made at each start when absent."
    )
    batch_id: str | None = Field(
        default=None,
        max_length=MAX_ID_LENGTH,
        description="Id of the active batch, e.g. PRTS_SRC_102_DAT_20260309_VER_A.",
    )
    batch_title: str | None = Field(
        default=None, max_length=MAX_ID_LENGTH, description="Title of the active batch, e.g. 20260309_02A."
    )

    @model_validator(mode="after")
    def _batch_complete(self) -> SessionSettings:
        if (self.batch_id is None) != (self.batch_title is None):
            raise ValueError("set both batch_id and batch_title, or neither")
        return self


class AssignmentSettings(BaseModel):
    """Assigning scans to the batch's parts: what the operator's button and manual requests may do."""

    model_config = _STRICT

    button_confirms_identification: bool = Field(
        default=False,
        description="A press of the operator's approve button on the scan on the tray, while the station could not "
        "tell between designs (identification ambiguous or material_ambiguous), confirms the best candidate: the "
        "scan is assigned (manual) to that design's part. A reject press then does nothing; the part is chosen on "
        "the screen or by request. Off: presses only approve or reject quality, as before.",
    )
    manual_over_count: bool = Field(
        default=False,
        description="Let a manual assign or reassign (request, button) give a part more scans than its copies, as "
        "AM-Vision lets operators; off, such a change is refused until one of the part's scans is moved. The "
        "station itself never over-counts: a scan beyond the copies waits for review.",
    )


class StationConfig(BaseSettings):
    """The whole station. Built by `load_config`, which also makes relative paths relative to the file."""

    model_config = SettingsConfigDict(
        extra="forbid", env_prefix="AMFLOW_", env_nested_delimiter="__", case_sensitive=False
    )

    station: StationSettings = Field(description="Who this station is and where it keeps its data.")
    rig: RigSettings = Field(default_factory=RigSettings, description="Which camera driver runs the five cameras.")
    cameras: list[CameraSettings] = Field(description="The five cameras cam01…cam05.")
    mock: MockDriverSettings = Field(default_factory=MockDriverSettings, description="Settings of the mock driver.")
    pylon: PylonSettings = Field(default_factory=PylonSettings, description="Settings of the Basler (pylon) driver.")
    replay: ReplaySettings | None = Field(
        default=None,
        validate_default=True,  # so that a missing [replay] is checked against rig.driver too
        description="The recording the replay driver plays back; required with rig.driver = 'replay'.",
    )
    designs: DesignsSettings = Field(description="Where the station finds the designs it inspects against.")
    mqtt: MqttSettings = Field(default_factory=MqttSettings, description="The plant MQTT broker.")
    capture: CaptureSettings = Field(default_factory=CaptureSettings, description="Triggers and image storage.")
    outbox: OutboxSettings = Field(default_factory=OutboxSettings, description="Bounds of the event outbox.")
    inspection: InspectionSettings = Field(
        default_factory=InspectionSettings, description="Automated inspection of scans against their design."
    )
    identification: IdentificationSettings = Field(
        default_factory=IdentificationSettings, description="Recognising which of the batch's designs is on the tray."
    )
    calibration: CalibrationSettings = Field(
        default_factory=CalibrationSettings, description="Checking that the cameras still match their calibration."
    )
    session: SessionSettings = Field(default_factory=SessionSettings, description="Scanning session defaults.")
    qc: QcSettings = Field(
        default_factory=QcSettings, description="Operator decisions: policy, reason catalogue, buttons and lamps."
    )
    assignment: AssignmentSettings = Field(
        default_factory=AssignmentSettings, description="Assigning scans to the batch's parts: button and over-counts."
    )
    disk: DiskSettings = Field(default_factory=DiskSettings, description="Free-space guard and retention.")
    backup: BackupSettings = Field(default_factory=BackupSettings, description="Moving old scans to a backup disk.")
    watchdog: WatchdogSettings = Field(default_factory=WatchdogSettings, description="What counts as hung.")
    http: HttpSettings = Field(default_factory=HttpSettings, description="The HTTP API and the operator's screen.")
    webhooks: list[WebhookTarget] = Field(
        default_factory=list,
        max_length=32,
        description="AM-Vision-style HTTP webhook targets, each fed every chosen event from the outbox, in order.",
    )

    @field_validator("webhooks")
    @classmethod
    def _unique_hook_ids(cls, targets: list[WebhookTarget]) -> list[WebhookTarget]:
        return unique_hook_ids(targets)

    @field_validator("cameras")
    @classmethod
    def _five_named_cameras(cls, cameras: list[CameraSettings]) -> list[CameraSettings]:
        names = [c.name for c in cameras]
        missing = [n for n in CAMERA_NAMES if n not in names]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        problems = []
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        if duplicated:
            problems.append(f"duplicated {', '.join(duplicated)}")
        serials = [c.serial for c in cameras]
        dup_serials = sorted({s for s in serials if serials.count(s) > 1})
        if dup_serials:
            problems.append(f"serial {', '.join(dup_serials)} used by more than one camera")
        if problems:
            raise ValueError("need exactly one [[cameras]] entry for each of cam01…cam05: " + "; ".join(problems))
        return sorted(cameras, key=lambda c: c.name)

    @field_validator("replay")
    @classmethod
    def _replay_names_its_recording(cls, replay: ReplaySettings | None, info: ValidationInfo) -> ReplaySettings | None:
        """A field's check rather than the model's, so the problem is reported at `replay`, not the whole config."""
        rig = info.data.get("rig")
        if replay is None and isinstance(rig, RigSettings) and rig.driver == "replay":
            raise ValueError(
                "rig.driver = 'replay' plays back stored scans: add a [replay] section naming them, "
                "e.g. source = \"/data/recordings/line1\" (a station's data root, its scans/ directory or one scan's)"
            )
        return replay

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)

    @property
    def client_id(self) -> str:
        return self.mqtt.client_id or f"amflow-edge-{self.station.id}"

    def topic(self, *parts: str) -> str:
        return "/".join((self.mqtt.topic_prefix.rstrip("/"), self.station.id, *parts))
