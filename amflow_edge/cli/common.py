"""What every `amflow-edge` command shares: its exit codes and how it reads the station config.

Exit 2 is a configuration problem (systemd's `RestartPreventExitStatus=2` stops the restart loop a
restart cannot fix); 1 is a failure that a retry may get past.
"""

from __future__ import annotations

import sys
from pathlib import Path

from amflow_edge.config.loading import ConfigError, load_config
from amflow_edge.config.station import StationConfig

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_BAD_INPUT = EXIT_CONFIG
"""A file or argument a person gave is wrong (a mesh, a calibration): the same code, it needs the same care."""


def load_or_report(path: Path) -> StationConfig | None:
    """The config, or None after printing every problem it has."""
    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
