"""Reading a station config file: TOML (and AMFLOW_… variables) → validated model → paths made absolute → files
checked.

Every problem is collected and reported at once, each naming the field, what was expected and what
was found, so an integrator fixes a file in one pass rather than one error per start.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_settings import SettingsError

from amflow_edge.common.config_file import is_config_path
from amflow_edge.config.environment import environment_problems
from amflow_edge.config.files import file_problems
from amflow_edge.config.problems import describe_validation_error
from amflow_edge.config.station import StationConfig

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """Every problem of a config file at once, each naming the field, what was expected and what was found."""

    def __init__(self, path: Path, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{path}: {len(problems)} problem(s) in the station config:\n{lines}")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(
            path, ["file not found: pass the path of the station TOML (see config/station.example.toml)"]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, [f"not valid TOML: {exc}"]) from None
    except OSError as exc:
        raise ConfigError(path, [f"cannot read the file: {exc.strerror}"]) from None


def _resolved(value: Any, base: Path) -> Any:
    if isinstance(value, Path):
        return value if value.is_absolute() else (base / value).resolve()
    if isinstance(value, list):
        return [_resolved(item, base) for item in value]
    return value


def resolve_paths(model: M, base: Path) -> M:
    """Every ConfigPath setting, at any depth, made absolute against `base`: relative paths in a file mean
    'next to this file', wherever the daemon was started from. Found by type, so a new file setting needs
    nothing here; other paths (device nodes) stay as written."""
    changes: dict[str, Any] = {}
    for name, field in type(model).model_fields.items():
        value = getattr(model, name)
        if is_config_path(field):
            changes[name] = _resolved(value, base)
        elif isinstance(value, BaseModel):
            changes[name] = resolve_paths(value, base)
        elif isinstance(value, list) and any(isinstance(item, BaseModel) for item in value):
            changes[name] = [resolve_paths(item, base) if isinstance(item, BaseModel) else item for item in value]
    return model.model_copy(update=changes)


def parse_config(path: Path) -> StationConfig:
    """The validated model with absolute paths; the files it names are not looked at."""
    return validate_config(read_toml(Path(path)), Path(path))


def _validation_problems(exc: ValidationError, unknown: set[tuple[str, ...]]) -> list[str]:
    """The model's problems, but not again those the environment's problems already name (a misspelt key in a
    known section, AMFLOW_MQTT__PROT, is also an unknown key 'mqtt.prot' to the model)."""
    lines = describe_validation_error(exc)
    errors = exc.errors(include_url=False)
    return [
        line
        for error, line in zip(errors, lines, strict=True)
        if not (error["type"] == "extra_forbidden" and tuple(str(p).lower() for p in error["loc"]) in unknown)
    ]


def validate_config(raw: dict[str, Any], path: Path) -> StationConfig:
    """`raw`, read from the file at `path`, with the AMFLOW_ variables over it, as the model with absolute paths."""
    env_problems, unknown = environment_problems(os.environ)
    try:
        cfg = StationConfig(**raw)
    except ValidationError as exc:
        raise ConfigError(path, env_problems + _validation_problems(exc, unknown)) from None
    except SettingsError as exc:
        raise ConfigError(
            path, env_problems or [f"environment: {exc}; check the AMFLOW_ variables that set a whole section"]
        ) from None
    if env_problems:
        raise ConfigError(path, env_problems)
    return resolve_paths(cfg, path.resolve().parent)


def load_config(path: Path) -> StationConfig:
    """Read, validate and resolve a station config and check the files it names; raises ConfigError listing
    every problem."""
    cfg = parse_config(path)
    problems = file_problems(cfg)
    if problems:
        raise ConfigError(Path(path), [p.text for p in problems])
    return cfg
