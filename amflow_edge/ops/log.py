"""Structured logs: JSON lines for the journal, readable colours for a developer at a terminal.

Libraries log through Python's logging (paho at every broker outage, the inspection's stdlib loggers in the
worker process, Python's warnings); their records go through the same renderer, so the journal holds JSON
lines only.
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


class _CurrentStderr:
    """Writes to whatever sys.stderr is now, so replacing it (tests, daemonisers) never strands the logger."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class _StdlibBridge(logging.StreamHandler):
    """Our handler on the root logger; a second configure_logging replaces it rather than adding another."""


_configured: tuple[str, bool] = ("info", True)

SYSLOG_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "exception": 3, "critical": 2}
"""sd-daemon(3)'s level prefixes, which journald reads off each line it is given on stderr."""


def stderr_is_the_journal() -> bool:
    """systemd says so in $JOURNAL_STREAM (device:inode of the stream it connected): the prefixes are for it,
    and would only spoil the JSON anywhere else (a terminal, a file, CI)."""
    try:
        device, inode = (int(part) for part in os.environ.get("JOURNAL_STREAM", "").split(":"))
        status = os.fstat(sys.stderr.fileno())
    except (ValueError, OSError):
        return False
    return (status.st_dev, status.st_ino) == (device, inode)


class _WithPriority:
    """`journalctl -p err` shows the errors only with the prefix: without one journald files every line as
    info. Decided again whenever sys.stderr is another object, since the lines go to whatever it is now."""

    def __init__(self, renderer: structlog.typing.Processor) -> None:
        self._renderer = renderer
        self._stream: object = None
        self._journal = False

    def __call__(self, logger: object, name: str, event: structlog.typing.EventDict) -> str:
        line = self._renderer(logger, name, event)
        text = line.decode() if isinstance(line, bytes) else str(line)
        if sys.stderr is not self._stream:
            self._stream, self._journal = sys.stderr, stderr_is_the_journal()
        return f"<{SYSLOG_PRIORITY.get(str(event.get('level')), 6)}>{text}" if self._journal else text


def current_logging() -> tuple[str, bool]:
    """(level, JSON or not) as last configured: what a worker process is started with, to log as we do."""
    return _configured


def configure_logging(level: str = "info", json: bool | None = None) -> None:
    """JSON when stderr is not a terminal (systemd, CI), so every line is machine-readable with its scan uuid."""
    global _configured
    as_json = not sys.stderr.isatty() if json is None else json
    _configured = (level, as_json)
    logging.captureWarnings(True)
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if as_json else structlog.dev.ConsoleRenderer()
    )
    renderer = _WithPriority(renderer)
    shared: list[structlog.typing.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelNamesMapping()[level.upper()]),
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    bridge = _StdlibBridge(_CurrentStderr())
    bridge.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info if as_json else structlog.dev.set_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StdlibBridge)]:
        root.removeHandler(handler)
    root.addHandler(bridge)
    root.setLevel(logging.getLevelNamesMapping()[level.upper()])
    # httpx logs every request at INFO: one journal line per webhook post, which the senders already account for.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
