"""The daemon's own terminal as a button box, for development and demos.

Reads the file descriptor directly (not the Python stream) so `select` sees every key:
a buffered text stream would swallow several keys into its buffer and leave select waiting.
"""

from __future__ import annotations

import codecs
import os
import select
import sys
import termios
import threading
import tty
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import BinaryIO, TextIO

import structlog

from amflow_edge.config.qc import KeyboardButtons
from amflow_edge.panel.base import ButtonAction, ButtonPress, OnPress, deliver

log = structlog.get_logger(__name__)

POLL_S = 0.2
SOURCE = "keyboard"


class KeyboardButtonSource:
    def __init__(self, settings: KeyboardButtons, stream: TextIO | BinaryIO = sys.stdin) -> None:
        approve, reject = settings.approve_key.casefold(), settings.reject_key.casefold()
        self._keys: dict[str, ButtonAction] = {approve: "approve", reject: "reject"}
        self._stream = stream
        self.name = SOURCE

    def action_for(self, char: str) -> ButtonAction | None:
        return self._keys.get(char.casefold())

    def run(self, on_press: OnPress, stop: threading.Event) -> None:
        """Read keys until `stop` or the end of input (a daemon under systemd has no terminal: it ends at once)."""
        try:
            fd = self._stream.fileno()
        except (OSError, ValueError) as exc:
            log.info("keyboard buttons off: the input has no file descriptor", error=str(exc))
            return
        encoding = getattr(self._stream, "encoding", None) or "utf-8"
        decoder = codecs.getincrementaldecoder(encoding)(errors="replace")
        try:
            with _cbreak(fd):
                while not stop.is_set():
                    readable, _, _ = select.select([fd], [], [], POLL_S)
                    if not readable:
                        continue
                    chunk = os.read(fd, 64)
                    if not chunk:
                        log.info("keyboard input ended; keyboard buttons off")
                        return
                    for char in decoder.decode(chunk):
                        self._press(char, on_press)
        except OSError as exc:
            log.warning("keyboard input failed; keyboard buttons off", error=str(exc))

    def _press(self, char: str, on_press: OnPress) -> None:
        action = self.action_for(char)
        if action is None:
            return
        deliver(on_press, ButtonPress(action=action, source=SOURCE, at=datetime.now(UTC)))


@contextmanager
def _cbreak(fd: int) -> Iterator[None]:
    """Keys arrive one by one (no Enter needed) while Ctrl-C still stops the daemon; the terminal is restored after."""
    if not os.isatty(fd):
        yield
        return
    try:
        saved = termios.tcgetattr(fd)
        tty.setcbreak(fd)
    except termios.error as exc:
        log.warning("terminal left in line mode: press Enter after each key", error=str(exc))
        yield
        return
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
