"""The consumer's settings: a TOML file (config/plant_consumer.example.toml), command-line options over it.

The client id is required and has no default: the broker keeps the session, and the messages it handed to
this consumer but never saw acknowledged, under that id. A consumer restarted under another id would leave
them behind.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

_STRICT = ConfigDict(extra="forbid", strict=True)

TOPIC_LEVEL = r"^[^/#+\x00]+$"
"""One topic level without a wildcard: a shared subscription's group, a client id in logs."""

MAX_SESSION_EXPIRY_S = 0xFFFFFFFF
"""MQTT v5's largest Session Expiry Interval, which means the session never expires."""


class SettingsError(ValueError):
    """The settings cannot work; `problems` names each setting, what it expects and what it found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class BrokerSettings(BaseModel):
    model_config = _STRICT

    host: str = Field(default="127.0.0.1", min_length=1, description="The plant broker's host name or address.")
    port: int = Field(default=1883, ge=1, le=65535, description="The broker's port (8883 for TLS by convention).")
    tls: bool = Field(default=False, description="TLS with the system's trusted CAs; ca_file implies TLS.")
    ca_file: Path | None = Field(default=None, description="CA certificate that signed the broker's certificate.")
    cert_file: Path | None = Field(default=None, description="Client certificate, when the broker wants one.")
    key_file: Path | None = Field(default=None, description="Private key of cert_file.")
    username: str | None = Field(default=None, min_length=1, description="Broker user name.")
    password: SecretStr | None = Field(default=None, description="Broker password; keep the file private (0600).")
    keepalive_s: int = Field(default=30, ge=5, le=3600, description="MQTT keep-alive interval.")

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> BrokerSettings:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("set both cert_file and key_file, or neither")
        return self

    @property
    def uses_tls(self) -> bool:
        return self.tls or self.ca_file is not None or self.cert_file is not None


class SubscriptionSettings(BaseModel):
    model_config = _STRICT

    topic_prefix: str = Field(
        default="amflow",
        min_length=1,
        pattern=r"^[^#+\x00]+$",
        description="The stations' mqtt.topic_prefix: first level(s) of every topic.",
    )
    stations: str = Field(
        default="+",
        pattern=r"^(\+|[^/#+\x00]+)$",
        description="Which stations: + for all, or one station id.",
    )
    group: str = Field(
        min_length=1,
        max_length=128,
        pattern=TOPIC_LEVEL,
        description="Shared-subscription group: the consumers of one group split the events between them.",
    )
    client_id: str = Field(
        min_length=1,
        max_length=128,
        pattern=TOPIC_LEVEL,
        description="MQTT client id, stable per consumer process and unique in the group: the broker keeps its "
        "session, and what it was handed but did not acknowledge, under this id.",
    )
    session_expiry_s: int = Field(
        default=86400,
        ge=60,
        le=MAX_SESSION_EXPIRY_S,
        description="How long the broker keeps this consumer's session (and the events queued for it) while it "
        "is away.",
    )
    receive_maximum: int = Field(
        default=100,
        ge=1,
        le=65535,
        description="Events the broker may hand this consumer before it acknowledges any: what a crash "
        "leaves to be delivered again.",
    )

    @property
    def topic_filter(self) -> str:
        return f"$share/{self.group}/{self.topic_prefix.rstrip('/')}/{self.stations}/event/#"

    @property
    def state_filter(self) -> str:
        """Not shared: every consumer follows every station's outbox position (the writes are idempotent)."""
        return f"{self.topic_prefix.rstrip('/')}/{self.stations}/state"


class RepairSettings(BaseModel):
    """Asking stations again for what the group lost behind the broker (mosquitto forgets a shared subscription
    across its restart until the group's consumers return; a broker killed outright forgets what it had not
    saved). Each event carries its outbox stream and seq; each station's state says up to which seq the
    broker acknowledged everything; a seq up to there missing from the event log is asked for again."""

    model_config = _STRICT

    enabled: bool = Field(default=True, description="Look for gaps and ask stations to send them again.")
    every_s: float = Field(default=10.0, ge=1, le=3600, description="How often one consumer of the group looks.")
    grace_s: float = Field(
        default=30.0,
        ge=1,
        le=3600,
        description="How long after a station reported its position a missing event counts as lost, not late "
        "(another consumer of the group may still be storing it).",
    )


class PostgresSettings(BaseModel):
    model_config = _STRICT

    dsn: SecretStr = Field(
        description="libpq connection string or URI (postgresql://user@host/db); a password is better kept "
        "in ~/.pgpass or PGPASSWORD than here."
    )
    table_prefix: str = Field(
        default="amflow",
        pattern=r"^[a-z][a-z0-9_]{0,31}$",
        description="Tables are <prefix>_scans, <prefix>_scan_events and <prefix>_rejected_messages.",
    )
    connect_timeout_s: int = Field(default=10, ge=1, le=600, description="Wait for a connection at most this long.")
    retry_max_s: float = Field(
        default=30.0,
        ge=0.1,
        le=3600,
        description="Longest wait between attempts while PostgreSQL is unreachable (nothing is acknowledged "
        "meanwhile).",
    )


class PlantConsumerSettings(BaseModel):
    model_config = _STRICT

    broker: BrokerSettings = Field(default_factory=BrokerSettings, description="The plant MQTT broker.")
    subscription: SubscriptionSettings = Field(description="What this consumer takes, and as whom.")
    postgres: PostgresSettings = Field(description="Where the scans go.")
    repair: RepairSettings = Field(default_factory=RepairSettings, description="Asking again for lost events.")


_PATHS = ("ca_file", "cert_file", "key_file")


def _read(config: Path) -> dict[str, Any]:
    try:
        with config.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError([f"{config}: file not found"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError([f"{config}: not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise SettingsError([f"{config}: cannot read the file: {exc.strerror}"]) from None
    broker = data.get("broker")
    if isinstance(broker, dict):
        for key in _PATHS:
            if isinstance(broker.get(key), str):
                broker[key] = config.parent / broker[key]
    return data


def _location(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc) or "(top level)"


def describe(exc: ValidationError) -> list[str]:
    """`section.key: problem (found …)`, never showing a password or a DSN, which may hold one."""
    lines = []
    for error in exc.errors(include_url=False):
        where = _location(error["loc"])
        secret = error["loc"][-1:] in (("password",), ("dsn",))
        found = "nothing" if error["type"] == "missing" else "***" if secret else repr(error.get("input"))[:60]
        if error["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown setting; see config/plant_consumer.example.toml")
            continue
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message[0].lower()}{message[1:]} (found {found})")
    return lines


def load_settings(config: Path | None, overrides: dict[str, dict[str, Any]]) -> PlantConsumerSettings:
    """The file's settings with the command line's over them, section by section."""
    data = _read(config) if config is not None else {}
    for section, values in overrides.items():
        current = data.setdefault(section, {})
        if not isinstance(current, dict):
            raise SettingsError([f"{section}: expected a [{section}] table"])
        current.update(values)
    if isinstance(data.get("postgres"), dict) and isinstance(data["postgres"].get("dsn"), str):
        data["postgres"]["dsn"] = SecretStr(data["postgres"]["dsn"])
    if isinstance(data.get("broker"), dict) and isinstance(data["broker"].get("password"), str):
        data["broker"]["password"] = SecretStr(data["broker"]["password"])
    try:
        return PlantConsumerSettings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(describe(exc)) from None
