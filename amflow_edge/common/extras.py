"""What an installation may leave out: the camera SDK and the panel's C builds are extras of the package."""

from __future__ import annotations

import importlib


def missing(module: str, extra: str) -> str | None:
    """None when `module` imports; else what to install. Tried by importing, as the station will: a package
    that is present but broken (a wheel for another Python) is as missing as one never installed."""
    try:
        importlib.import_module(module)
    except ImportError:
        return f"the {module} package is not installed (or does not load); pip install 'amflow-edge[{extra}]'"
    return None
