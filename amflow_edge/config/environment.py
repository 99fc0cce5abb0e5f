"""The AMFLOW_ variables: every one must name a setting, as every key of the file must.

pydantic-settings reads only the variables that name a setting; a misspelt one (AMFLOW_MQT__PORT) changes
nothing and says nothing. The names a variable may take are read off the model, at any depth.
"""

from __future__ import annotations

import difflib
import json
import types
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel

from amflow_edge.config.station import StationConfig

NON_SETTING_VARIABLES = frozenset(
    {
        # scripts/install: "1" leaves out creating the venv (tests/test_install.py runs it so).
        "AMFLOW_INSTALL_SKIP_VENV",
        # scripts/setup and tests/postgres.py: the PostgreSQL role the plant-side tests create databases as.
        "AMFLOW_TEST_POSTGRES",
    }
)
"""AMFLOW_ variables of the project's other programs: they share the settings' prefix but set nothing, so they are
not typos. A program that reads a new one adds it here."""

_PREFIX = StationConfig.model_config.get("env_prefix") or ""
_DELIMITER = StationConfig.model_config.get("env_nested_delimiter") or "__"

Kind = Literal["value", "section", "list", "table"]
"""What a setting is to pydantic-settings: a section is entered with the delimiter, a list or a table is set whole
as JSON (a table's keys are free), a value is set as text."""


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The models pydantic-settings enters with the delimiter: the annotation's own, or its union's (`X | None`);
    never a list's items, which only JSON can set."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    if get_origin(annotation) in (Union, types.UnionType, Annotated):
        return [model for argument in get_args(annotation) for model in _models_in(argument)]
    return []


def _container(annotation: Any) -> Kind | None:
    origin = get_origin(annotation)
    if annotation is dict or (isinstance(origin, type) and issubclass(origin, Mapping)):
        return "table"
    if annotation in (list, tuple, set, frozenset) or origin in (list, tuple, set, frozenset):
        return "list"
    if origin in (Union, types.UnionType, Annotated):
        kinds = {_container(argument) for argument in get_args(annotation)} - {None}
        return "table" if "table" in kinds else kinds.pop() if kinds else None
    return None


def _settings(model: type[BaseModel], path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Kind]]:
    for name, field in model.model_fields.items():
        here = (*path, name.lower())
        models = _models_in(field.annotation)
        yield here, "section" if models else _container(field.annotation) or "value"
        for inner in models:
            yield from _settings(inner, here)


SETTINGS: dict[tuple[str, ...], Kind] = dict(_settings(StationConfig))
"""Every setting an AMFLOW_ variable can name, at any depth, read off the model: a new setting needs nothing here."""


def setting_variable(path: tuple[str, ...]) -> str:
    return _PREFIX.upper() + _DELIMITER.join(path).upper()


def _near(name: str) -> list[str]:
    return difflib.get_close_matches(name.upper(), [setting_variable(path) for path in SETTINGS], n=3, cutoff=0.75)


def _variable_problem(name: str, value: str) -> tuple[str, tuple[str, ...] | None] | None:
    """The problem with one AMFLOW_ variable, if any, and the setting path pydantic-settings will read it as."""
    path = tuple(name[len(_PREFIX) :].lower().split(_DELIMITER))
    kind = SETTINGS.get(path)
    if kind is None and any(SETTINGS.get(path[:depth]) == "table" for depth in range(1, len(path))):
        return None  # a key inside a table: any key is a setting there
    where = f"{name} (environment)"
    if kind is None:
        lists = [path[:depth] for depth in range(1, len(path)) if SETTINGS.get(path[:depth]) == "list"]
        if lists:
            whole = setting_variable(lists[0])
            hint = f"{'.'.join(lists[0])} is a list, set whole as JSON: {whole}='[…]'"
        else:
            near = _near(name)
            hint = "no setting has a similar name"
            if near:
                hint = f"did you mean {near[0]}?" + (f" Near too: {', '.join(near[1:])}" if near[1:] else "")
        problem = (
            f"{where}: expected the name of a setting, {_PREFIX}<SECTION>{_DELIMITER}<KEY> (found no setting "
            f"{'.'.join(path)!r}; {hint}); rename the variable or unset it"
        )
        return problem, path
    if kind != "value" and (value or len(path) == 1):
        try:
            json.loads(value)
        except ValueError:
            dotted = ".".join(path)
            shown = value if len(value) <= 40 else value[:39] + "…"
            what, how = {
                "section": (
                    f"[{dotted}] section",
                    f"""{name}='{{"key": value}}', or set one key: {name}{_DELIMITER}<KEY>""",
                ),
                "list": (f"list {dotted}", f"{name}='[…]'"),
                "table": (f"table {dotted}", f"""{name}='{{"key": value}}'"""),
            }[kind]
            return f"{where}: expected the whole {what} as JSON (found {shown!r}); write it as JSON: {how}", None
    return None


def environment_problems(environ: Mapping[str, str]) -> tuple[list[str], set[tuple[str, ...]]]:
    """Problems of the AMFLOW_ variables, and the setting paths of those that name no setting.

    pydantic-settings reads only the variables that name a setting; a misspelt one changes nothing and says
    nothing, although the file's unknown keys are errors. So every AMFLOW_ variable must name one (or belong to
    another program of the project, NON_SETTING_VARIABLES).
    """
    ignored = {name.upper() for name in NON_SETTING_VARIABLES}
    problems: list[str] = []
    unknown: set[tuple[str, ...]] = set()
    for name in sorted(environ):
        if not name.upper().startswith(_PREFIX.upper()) or name.upper() in ignored:
            continue
        found = _variable_problem(name, environ[name])
        if found is not None:
            problems.append(found[0])
            if found[1] is not None:
                unknown.add(found[1])
    return problems, unknown
