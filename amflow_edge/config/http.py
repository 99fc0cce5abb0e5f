"""[http]: the station's HTTP API and the operator's screen (amflow_edge/web).

Its own module so the API's settings, their bounds and the secrets behind them can be read in one place.
Secrets (the station PIN, integration tokens, the read token) come preferably from systemd credentials,
like the MQTT password, so they never sit in a world-readable TOML file.
"""

from __future__ import annotations

import ipaddress
import re

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from amflow_edge.config.secrets import secret_from

_STRICT = ConfigDict(extra="forbid")

OPERATOR_NAME = r"^[A-Za-z0-9][A-Za-z0-9 ._@-]{0,63}$"
"""Who decided, as scan.json keeps it ("http:<operator>"): a badge id or a user name, no control characters."""
MIN_PIN_DIGITS = 6
"""A million PINs: with the global failed-login limit a guess takes months, not the minutes four digits allow."""
MIN_TOKEN_LENGTH = 16
"""A guessable token would let anyone on the plant network decide parts."""
_LISTEN = re.compile(r"^(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]]+)):(?P<port>\d{1,5})$")


def parse_listen(value: str) -> tuple[str, int]:
    """'127.0.0.1:8080', '0.0.0.0:8080' or '[::1]:8080' → (host, port); port 0 picks a free port (tests)."""
    match = _LISTEN.match(value)
    if match is None:
        raise ValueError(f"{value!r} is not host:port; write e.g. '127.0.0.1:8080' or '[::1]:8080'")
    host = match["v6"] or match["host"]
    port = int(match["port"])
    if port > 65535:
        raise ValueError(f"port {port} in {value!r} is beyond 65535")
    if match["v6"]:
        ipaddress.IPv6Address(host)
    return host, port


class OperatorToken(BaseModel):
    """A static bearer token for an integration (an MES client, a second screen) that decides in a name."""

    model_config = _STRICT

    name: str = Field(pattern=OPERATOR_NAME, description="Who its decisions are recorded as ('http:<name>').")
    token: SecretStr | None = Field(
        default=None, description="The token; prefer token_credential, so it is not in the config file."
    )
    token_credential: str | None = Field(
        default=None, description="File name of the token in $CREDENTIALS_DIRECTORY (systemd LoadCredential=)."
    )

    @model_validator(mode="after")
    def _token_given(self) -> OperatorToken:
        self.token = secret_from(self.token, self.token_credential, f"operator {self.name!r}")
        if self.token is None:
            raise ValueError(
                f"operator {self.name!r} has no token: set token_credential (a systemd credential) or token"
            )
        if len(self.token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"the token of operator {self.name!r} is shorter than {MIN_TOKEN_LENGTH} characters; "
                "generate one with: openssl rand -hex 32"
            )
        return self


class HttpSettings(BaseModel):
    """The HTTP API that serves what the events' URLs name (scans, images, reports) and the operator's screen."""

    model_config = _STRICT

    enabled: bool = Field(default=True, description="Serve the HTTP API and the operator's screen.")
    listen: str = Field(
        default="127.0.0.1:8080",
        description="host:port of the full API (reads, login, decisions) and the screen. Loopback by default: put a "
        "TLS reverse proxy in front to reach it from elsewhere (README). Port 0 picks a free port.",
    )
    read_listen: str | None = Field(
        default=None,
        description="Optional second host:port serving only the read routes and the screen read-only (no login, no "
        "decisions), e.g. on the plant network for dashboards.",
    )
    pin: SecretStr | None = Field(
        default=None, description="The station PIN operators log in with; prefer the pin_credential credential."
    )
    pin_credential: str = Field(
        default="http_pin", description="File name of the PIN in $CREDENTIALS_DIRECTORY, when pin is not set."
    )
    session_hours: float = Field(
        default=12.0, gt=0, le=24 * 7, description="How long a login's token is valid (a shift, by default)."
    )
    operators: list[OperatorToken] = Field(
        default_factory=list, max_length=100, description="Static tokens of integrations, each with its name."
    )
    read_token: SecretStr | None = Field(
        default=None,
        description="When set (or its credential), reads need 'Authorization: Bearer <read token>' or an operator's "
        "token; absent, reads are open to whoever reaches the address.",
    )
    read_token_credential: str | None = Field(
        default=None, description="File name of the read token in $CREDENTIALS_DIRECTORY."
    )
    max_body_bytes: int = Field(
        default=64 * 1024, ge=1024, le=1024 * 1024, description="Larger request bodies are refused (413)."
    )
    requests_per_minute: int = Field(
        default=120,
        ge=1,
        le=100_000,
        description="Decisions and logins per client address and minute; more are refused (429) until the minute "
        "has passed. Failed logins are limited to a tenth of this (at least 5).",
    )
    failed_logins_per_minute: int = Field(
        default=20,
        ge=1,
        le=10_000,
        description="Failed logins per minute from all addresses together; beyond it every login is refused (429) "
        "until the minute has passed, so spreading guesses over many addresses does not help either.",
    )
    trusted_proxies: list[str] = Field(
        default_factory=list,
        max_length=32,
        description="Addresses (IPs or CIDR networks) of reverse proxies whose X-Forwarded-For / X-Forwarded-Proto "
        "are believed. Empty (the default): the headers are ignored and the TCP peer is the client, so nobody can "
        "choose the address the rate limits count. Behind the README's nginx, set ['127.0.0.1'].",
    )
    secure_cookie: bool | None = Field(
        default=None,
        description="Mark the login cookie Secure (and name it __Host-amflow_token), so browsers send it over HTTPS "
        "only. Default: Secure when trusted_proxies is set (the TLS proxy of the README is in front); plain "
        "loopback HTTP otherwise.",
    )
    allowed_hosts: list[str] | None = Field(
        default=None,
        max_length=64,
        description="Host header values the API answers (anything else: 400), against DNS rebinding. Default: "
        "localhost, 127.0.0.1, ::1 and the hosts of listen and read_listen; add the proxy's public name when "
        "one is used. '*' allows any.",
    )
    decision_timeout_s: float = Field(
        default=60.0,
        gt=0,
        le=600,
        description="How long a decision or capture request waits for the station's answer before a 504.",
    )

    @field_validator("listen", "read_listen")
    @classmethod
    def _address(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @model_validator(mode="after")
    def _secrets(self) -> HttpSettings:
        self.pin = secret_from(self.pin, self.pin_credential, "the station PIN")
        self.read_token = secret_from(self.read_token, self.read_token_credential, "the read token")
        if self.pin is not None and not re.fullmatch(rf"\d{{{MIN_PIN_DIGITS},12}}", self.pin.get_secret_value()):
            raise ValueError(
                f"the station PIN must be {MIN_PIN_DIGITS} to 12 digits; choose a longer one (a short PIN is guessed "
                "in hours)"
            )
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {proxy!r} is not an IP address or network; write e.g. '127.0.0.1' or "
                    "'10.0.0.0/24'"
                ) from None
        if self.read_token is not None and len(self.read_token.get_secret_value()) < MIN_TOKEN_LENGTH:
            raise ValueError(
                f"read_token is shorter than {MIN_TOKEN_LENGTH} characters; generate one with: openssl rand -hex 32"
            )
        names = [o.name for o in self.operators]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"operators listed twice: {', '.join(twice)}; give each integration one token")
        for key, listen in (("listen", self.listen), ("read_listen", self.read_listen)):
            if listen is not None and parse_listen(listen)[0] in ("0.0.0.0", "::") and self.allowed_hosts is None:
                raise ValueError(
                    f"{key} = {listen!r} listens on every address, and requests are answered only for the host names "
                    "in allowed_hosts; set [http] allowed_hosts to the names and addresses clients use (the station's "
                    "IP address and DNS name, and localhost for its own screen)"
                )
        same = self.read_listen is not None and parse_listen(self.read_listen) == parse_listen(self.listen)
        if same and parse_listen(self.listen)[1] != 0:  # port 0: each gets a free port of its own
            raise ValueError("read_listen is the same address as listen; give the read-only address its own port")
        return self

    @property
    def cookie_secure(self) -> bool:
        return self.secure_cookie if self.secure_cookie is not None else bool(self.trusted_proxies)

    @property
    def hosts(self) -> list[str]:
        """What allowed_hosts resolves to."""
        if self.allowed_hosts is not None:
            return self.allowed_hosts
        hosts = ["localhost", "127.0.0.1", "::1", "[::1]"]
        for listen in (self.listen, self.read_listen):
            if listen is not None:
                host = parse_listen(listen)[0]
                hosts += [host, f"[{host}]"] if ":" in host else [host]
        return list(dict.fromkeys(hosts))
