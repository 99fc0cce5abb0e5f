"""Config problems in words an integrator can act on: where, what was expected, what was found."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

_MAX_SHOWN = 60


Area = Literal["config", "calibration", "designs"]
"""The doctor's rows that file problems are reported under."""


class FileProblem(BaseModel):
    """A problem only a file the config names can show, with the area the doctor reports it under."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    area: Area = Field(description="The doctor's row for it.")
    text: str = Field(description="Where, what was expected and what was found.")


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


_SECRET_KEYS = ("password", "pin", "token")
"""Settings whose values are secrets (mqtt.password, http.pin, http.read_token, an operator's token): a config
error shows them masked, because its message goes to the journal and to whoever runs check-config."""


def _secret(key: object) -> bool:
    return isinstance(key, str) and not key.endswith("_credential") and any(s in key for s in _SECRET_KEYS)


def _masked(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: "***" if _secret(k) else _masked(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_masked(v) for v in value]
    return value


def _found(error: Any) -> str:
    if error["type"] == "missing":
        return "nothing"
    if error.get("loc") and _secret(error["loc"][-1]):
        return "***"
    value = _masked(error.get("input"))
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


def describe_validation_error(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False):
        where = _location(error["loc"])
        if error["type"] == "extra_forbidden":
            lines.append(
                f"{where}: unknown setting (found {_found(error)}); check the spelling against config/station.example.toml"
            )
            continue
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{where}: {message[0].lower()}{message[1:]} (found {_found(error)})")
    return lines
