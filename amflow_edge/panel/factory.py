"""Config → panel drivers.

Each driver module is imported only when configured, so a station (or a developer's laptop)
without evdev or libgpiod installed can still run with the other drivers.
"""

from __future__ import annotations

from amflow_edge.common.extras import missing
from amflow_edge.config.qc import (
    ButtonSettings,
    EvdevButtons,
    GpiodButtons,
    GpiodLamps,
    KeyboardButtons,
)
from amflow_edge.panel.base import ButtonSource, Lamps, NoLamps
from amflow_edge.panel.errors import PanelConfigError


def _needs(module: str) -> None:
    """The panel's libraries are an extra (C builds a mock-only station need not make); a station configured
    with buttons or lamps without them is told which extra to install, not handed an ImportError."""
    problem = missing(module, "panel")
    if problem is not None:
        raise PanelConfigError(problem)


def make_button_sources(settings: list[ButtonSettings]) -> list[ButtonSource]:
    """One source per configured device; raises PanelConfigError for a setting the hardware layer cannot use."""
    sources: list[ButtonSource] = []
    for item in settings:
        if isinstance(item, EvdevButtons | GpiodButtons):
            _needs("evdev" if isinstance(item, EvdevButtons) else "gpiod")
        if isinstance(item, EvdevButtons):
            from amflow_edge.panel.evdev_buttons import EvdevButtonSource

            sources.append(EvdevButtonSource(item))
        elif isinstance(item, GpiodButtons):
            from amflow_edge.panel.gpiod_buttons import GpiodButtonSource

            sources.append(GpiodButtonSource(item))
        elif isinstance(item, KeyboardButtons):
            from amflow_edge.panel.keyboard_buttons import KeyboardButtonSource

            sources.append(KeyboardButtonSource(item))
        else:
            raise TypeError(f"no button driver for {type(item).__name__}")
    return sources


def make_lamps(settings: GpiodLamps | None) -> Lamps:
    if settings is None:
        return NoLamps()
    _needs("gpiod")
    from amflow_edge.panel.gpiod_lamps import GpiodLampPanel

    return GpiodLampPanel(settings)
