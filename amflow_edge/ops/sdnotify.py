"""systemd's notify protocol (sd_notify(3)) without a dependency: one datagram per message.

The unit is Type=notify: systemd considers the station started when it says READY=1, shows
STATUS= in `systemctl status`, and restarts it when WATCHDOG=1 stops arriving. Outside
systemd (development, tests, `amflow-edge capture`) NOTIFY_SOCKET is unset and every call
does nothing. A notification that cannot be sent must never stop the station, so nothing
here raises; the first failure is logged, later ones are silent (the watchdog pings every
few seconds and would otherwise flood the journal).
"""

from __future__ import annotations

import os
import socket
import threading

import structlog

log = structlog.get_logger(__name__)

_failure_logged = threading.Event()


def _address(value: str) -> str | bytes | None:
    """A filesystem path, or '@name' for an abstract socket (the kernel's leading NUL byte)."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return b"\0" + value[1:].encode()
    return None  # vsock:… and anything newer: not spoken here


def notify(*assignments: str) -> bool:
    """Send 'KEY=value' lines in one datagram; True if systemd got it, False if unset or it failed."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return False
    address = _address(target)
    message = "\n".join(assignments).encode("utf-8", "replace")
    try:
        if address is None:
            raise OSError(f"unsupported NOTIFY_SOCKET address {target!r}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message, address)
        return True
    except OSError as exc:
        if not _failure_logged.is_set():
            _failure_logged.set()
            log.warning(
                "cannot notify systemd; start-up, status and watchdog pings are not reported "
                "(the unit then times out or is restarted by its watchdog)",
                socket=target,
                error=str(exc),
            )
        return False


def _one_line(text: str) -> str:
    """STATUS= is a single line: a newline would start a new assignment systemd tries to parse."""
    return " ".join(text.split())


def ready(status: str | None = None) -> bool:
    """Start-up is complete: systemd moves the unit to 'active' and starts enforcing WatchdogSec=."""
    fields = ["READY=1"]
    if status is not None:
        fields.append(f"STATUS={_one_line(status)}")
    return notify(*fields)


def status(text: str) -> bool:
    """A one-line state for `systemctl status` (e.g. 'running: 1042 scans, backlog 0')."""
    return notify(f"STATUS={_one_line(text)}")


def watchdog() -> bool:
    """'Still alive'; only the Watchdog should call this, and only while the station is healthy."""
    return notify("WATCHDOG=1")


def stopping(status: str | None = None) -> bool:
    """The stop has begun (draining the outbox); systemd shows 'deactivating' instead of a hang."""
    fields = ["STOPPING=1"]
    if status is not None:
        fields.append(f"STATUS={_one_line(status)}")
    return notify(*fields)


def watchdog_interval_s() -> float | None:
    """WatchdogSec= of the unit in seconds, or None when no watchdog is expected from this process.

    systemd sets WATCHDOG_PID to the main process; a child that inherited the environment
    (the inspection worker) must not believe it owns the watchdog.
    """
    usec = os.environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = os.environ.get("WATCHDOG_PID")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None
