"""Who may read and who may decide: the station PIN, login tokens, integrations' static tokens, the read token.

Login tokens are random, kept only in memory (a restart logs everyone out, which a station PC's screen survives
by logging in again) and stored by their SHA-256, so a lookup's timing says nothing about a token. The PIN and
static tokens are compared with hmac.compare_digest against every candidate. Failed logins are limited per client
address and across all addresses together (the address is the TCP peer unless [http] trusted_proxies vouches for
X-Forwarded-For), so a PIN cannot be guessed at network speed from one address or from many.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import structlog

from amflow_edge.config.http import HttpSettings
from amflow_edge.messaging.payload import timestamp

log = structlog.get_logger(__name__)

EVERYONE = "*"
"""The key of the limiter that counts failed logins from all addresses together."""
FAILED_LOG_EVERY_S = 10.0
"""At most one log line per this long about failed logins: a guessing run must not flood the journal."""

MAX_SESSIONS = 1000
"""More logins than a station has screens and shifts; the oldest are dropped beyond it."""
MAX_CLIENTS = 10_000
"""Client addresses the rate limiter remembers; a flood from many addresses cannot grow it without bound."""


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class Login:
    token: str
    operator: str
    expires_at: str


class LoginError(Exception):
    """The login was refused; the message says why (never which part of a credential was wrong)."""


class RateLimiter:
    """At most `limit` events per client in any `window_s`; answers how long to wait when over."""

    def __init__(self, limit: int, window_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._window = window_s
        self._clock = clock
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()
        self._lock = threading.Lock()

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self._seen.setdefault(client, deque())
        self._seen.move_to_end(client)
        while times and times[0] <= now - self._window:
            times.popleft()
        while len(self._seen) > MAX_CLIENTS:
            self._seen.popitem(last=False)
        return times

    def wait_s(self, client: str) -> float | None:
        """Seconds until `client` may try again, or None when it may now (without counting this look)."""
        with self._lock:
            now = self._clock()
            times = self._recent(client, now)
            return None if len(times) < self._limit else max(1.0, times[0] + self._window - now)

    def hit(self, client: str) -> float | None:
        """Count one event; seconds to wait when it was one too many (and then it is not counted)."""
        with self._lock:
            now = self._clock()
            times = self._recent(client, now)
            if len(times) >= self._limit:
                return max(1.0, times[0] + self._window - now)
            times.append(now)
            return None


class Credentials:
    def __init__(self, settings: HttpSettings, timezone: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._tz = ZoneInfo(timezone)
        self._clock = clock
        self._sessions: OrderedDict[bytes, tuple[str, float]] = OrderedDict()
        self._lock = threading.Lock()
        self._static = [
            (_digest(o.token.get_secret_value()), o.name) for o in settings.operators if o.token is not None
        ]
        self._read = _digest(settings.read_token.get_secret_value()) if settings.read_token is not None else None
        self.requests = RateLimiter(settings.requests_per_minute, clock=clock)
        self.failed_logins = RateLimiter(max(5, settings.requests_per_minute // 10), clock=clock)
        self.failed_everywhere = RateLimiter(settings.failed_logins_per_minute, clock=clock)
        self._unlogged_failures = 0
        self._logged_at: float | None = None

    def login_wait_s(self, client: str) -> float | None:
        """Seconds before `client` may try to log in: its own failures, everyone's, or its request rate."""
        everyone = None if _loopback(client) else self.failed_everywhere.wait_s(EVERYONE)
        return self.failed_logins.wait_s(client) or everyone or self.requests.hit(client)

    def failed(self, client: str, what: str) -> None:
        """Counts a failed login or an unauthenticated decision, and logs failures at most every few seconds."""
        self.failed_logins.hit(client)
        if not _loopback(client):
            self.failed_everywhere.hit(EVERYONE)
        with self._lock:
            self._unlogged_failures += 1
            now = self._clock()
            if self._logged_at is not None and now - self._logged_at < FAILED_LOG_EVERY_S:
                return
            count, self._unlogged_failures, self._logged_at = self._unlogged_failures, 0, now
        log.warning("failed HTTP API authentication", what=what, client=client, failures_since_last_line=count)

    @property
    def can_log_in(self) -> bool:
        return self._settings.pin is not None

    def login(self, operator: str, pin: str, client: str) -> Login:
        """A new token for `operator`; LoginError for a wrong PIN (counted) or a station without one."""
        if self._settings.pin is None:
            raise LoginError(
                "this station has no PIN, so nobody can log in; set [http] pin or the systemd credential "
                f"{self._settings.pin_credential!r} (LoadCredential=) and restart"
            )
        expected = self._settings.pin.get_secret_value().encode("utf-8")
        if not hmac.compare_digest(expected, pin.encode("utf-8")):
            self.failed(client, f"login as {operator!r}: wrong PIN")
            raise LoginError("wrong PIN; ask the shift lead for the station PIN")
        token = secrets.token_urlsafe(32)
        lifetime = self._settings.session_hours * 3600.0
        with self._lock:
            self._sessions[_digest(token)] = (operator, self._clock() + lifetime)
            self._prune()
        expires = timestamp(datetime.now(self._tz) + timedelta(seconds=lifetime))
        return Login(token=token, operator=operator, expires_at=expires)

    def logout(self, token: str) -> bool:
        with self._lock:
            return self._sessions.pop(_digest(token), None) is not None

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, (_, until) in self._sessions.items() if until <= now]:
            del self._sessions[key]
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)

    def operator(self, token: str | None) -> str | None:
        """The operator a token decides as: a login's, or an integration's static token; None otherwise."""
        if not token:
            return None
        digest = _digest(token)
        name = None
        for known, static_name in self._static:  # every entry compared, whichever matches
            if hmac.compare_digest(known, digest):
                name = static_name
        if name is not None:
            return name
        with self._lock:
            entry = self._sessions.get(digest)
            if entry is None:
                return None
            if entry[1] <= self._clock():
                del self._sessions[digest]
                return None
            return entry[0]

    def is_read_token(self, token: str | None) -> bool:
        return self._read is not None and bool(token) and hmac.compare_digest(self._read, _digest(token or ""))

    def may_read(self, token: str | None, operators: bool = True) -> bool:
        """`operators` False (the read-only address, ?access_token=): only the read token counts, so an
        operator's credential is never sent where it is not needed."""
        if self._read is None:
            return True
        if self.is_read_token(token):
            return True
        return operators and self.operator(token) is not None


def _loopback(client: str) -> bool:
    """The station PC itself (its kiosk screen): kept to its own per-address limit, so that hosts on the network
    guessing PINs can fill the global limit without locking the operator at the station out of logging in."""
    try:
        return ipaddress.ip_address(client).is_loopback
    except ValueError:
        return False
