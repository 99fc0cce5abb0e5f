"""A setting naming a file or folder that a relative path in the config places next to the config file.

Marked by type, so loading resolves exactly these settings, wherever a model declares one, and leaves
other paths (a device node such as /dev/input/by-id/…, whose link must stay a link) as written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

from pydantic.fields import FieldInfo


class _NextToConfig:
    """The marker in ConfigPath's metadata."""


NEXT_TO_CONFIG = _NextToConfig()
ConfigPath = Annotated[Path, NEXT_TO_CONFIG]


def _marked(annotation: Any) -> bool:
    if get_origin(annotation) is Annotated:
        return any(item is NEXT_TO_CONFIG for item in get_args(annotation)[1:])
    return any(_marked(argument) for argument in get_args(annotation))


def is_config_path(field: FieldInfo) -> bool:
    """Whether a model field holds ConfigPath values: itself, optional, or in a list."""
    return NEXT_TO_CONFIG in field.metadata or _marked(field.annotation)
