"""[[webhooks]]: AM-Vision-style HTTP webhook targets, each fed from the station's outbox.

Plants already integrate with AM-Vision by webhooks (the vendor's example posts to an MES URL),
so a station replacing one must post the same envelope to the same kind of endpoint. Each target
is a subscription with its own `hook.id`, its own event filter and its own delivery position.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from typing import get_args
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from amflow_edge.common.config_file import ConfigPath
from amflow_edge.config.secrets import secret_from
from amflow_edge.messaging.payload import MAX_ID_LENGTH, EventName

ALL_EVENTS: tuple[EventName, ...] = get_args(EventName)


def _key_bytes(secret: str) -> bytes:
    """The key a Standard Webhooks secret stands for; empty when it is not base64."""
    encoded = secret.removeprefix("whsec_")
    try:
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        return b""


class WebhookTarget(BaseModel):
    """One HTTP endpoint that receives every chosen event, in order, at least once."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(
        min_length=8,
        max_length=2048,
        description="Where events are POSTed, http:// or https://, e.g. https://mes.plant/api/1.0/amflow/update.",
    )
    hook_id: int = Field(
        ge=0, le=2**31 - 1, description="hook.id in this target's events: a stable integer, unique per station."
    )
    target: str | None = Field(
        default=None,
        max_length=MAX_ID_LENGTH,
        description="hook.target in this target's events; default the url without user, password or query.",
    )
    events: list[EventName] = Field(
        default_factory=lambda: list(ALL_EVENTS),
        min_length=1,
        description="Which events this target receives; default all six.",
    )
    secret: SecretStr | None = Field(
        default=None,
        description="Signing secret (Standard Webhooks: 'whsec_' + base64 of 24 to 64 random bytes); each request "
        "then carries webhook-signature. Prefer secret_credential, so it is not in the config file.",
    )
    secret_credential: str | None = Field(
        default=None, description="File name of the secret in $CREDENTIALS_DIRECTORY (systemd LoadCredential=)."
    )
    ca_file: ConfigPath | None = Field(
        default=None, description="CA certificate that signed an https target's certificate; default the system's."
    )
    timeout_s: float = Field(default=10.0, gt=0, le=120, description="Deadline for one request, connect to answer.")
    max_backoff_s: float = Field(
        default=300.0,
        ge=1,
        le=3600,
        description="Longest wait between retries of a failing target (the wait doubles from 1 s, with jitter).",
    )
    dead_letter_after_s: float = Field(
        default=3 * 86400,
        ge=60,
        description="An event this target could not take for this long is moved to its dead letters and the target "
        "goes on with the next; `amflow-edge outbox replay --target ID --dead-letters` sends them again.",
    )

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL; write e.g. 'https://mes.plant/hooks/scan'")
        try:
            parts.port  # noqa: B018 - urlsplit checks the port only when asked
        except ValueError:
            raise ValueError(f"{value!r}: the port must be a number from 1 to 65535") from None
        return value

    @field_validator("events")
    @classmethod
    def _distinct(cls, value: list[EventName]) -> list[EventName]:
        return list(dict.fromkeys(value))

    @model_validator(mode="after")
    def _signing_secret(self) -> WebhookTarget:
        self.secret = secret_from(self.secret, self.secret_credential, f"webhook {self.hook_id}")
        if self.secret is not None and len(_key_bytes(self.secret.get_secret_value())) < 24:
            raise ValueError(
                f"webhook {self.hook_id}: the secret must be 'whsec_' followed by base64 of at least 24 random "
                "bytes (Standard Webhooks); make one with: echo whsec_$(openssl rand -base64 32)"
            )
        return self

    @property
    def hook_target(self) -> str:
        """Default the url without credentials or query: every body carries it, and receivers log bodies."""
        return self.target or self.display_url

    @property
    def display_url(self) -> str:
        """The url without user:password or query (which may hold a token), for logs and the state topic."""
        parts = urlsplit(self.url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"

    def fingerprint(self) -> str:
        """Changes when the endpoint or its credentials change: a parked target is retried after a config fix."""
        secret = self.secret.get_secret_value() if self.secret is not None else ""
        ca = str(self.ca_file) if self.ca_file is not None else ""
        return hashlib.sha256("\0".join((self.url, secret, ca)).encode()).hexdigest()[:16]


def unique_hook_ids(targets: list[WebhookTarget]) -> list[WebhookTarget]:
    ids = [t.hook_id for t in targets]
    duplicated = sorted({i for i in ids if ids.count(i) > 1})
    if duplicated:
        raise ValueError(
            f"[[webhooks]] hook_id {', '.join(map(str, duplicated))} used more than once; each target needs its own"
        )
    return targets
