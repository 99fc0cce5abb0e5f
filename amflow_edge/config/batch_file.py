"""Batch files: a batch and its parts written down, for `run --batch` and `identify --batch`.

The same model as the session request's (BatchFile), so a batch an MES would send can be tried
on a laptop first. JSON or TOML by suffix; every problem is listed at once, each with its fix.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from amflow_edge.messaging.command_models import BatchFile

SUFFIXES = {".json": "JSON", ".toml": "TOML"}


class BatchFileError(ValueError):
    """A batch file that cannot be used; the message names the file, every problem and its fix."""


def load_batch_file(path: Path) -> BatchFile:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise BatchFileError(f"{path}: a batch file must end in .json or .toml (got {path.suffix or 'no suffix'!r})")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BatchFileError(f"{path}: no such batch file; check the path") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchFileError(f"{path}: cannot be read ({exc}); save it as UTF-8 text the station may read") from None
    raw = _parse(path, kind, text)
    try:
        return BatchFile.model_validate(raw)
    except ValidationError as exc:
        lines = "\n".join(f"  - {_where(e['loc'])}: {e['msg']}" for e in exc.errors(include_url=False))
        raise BatchFileError(
            f"{path}: {exc.error_count()} problem(s) in the batch file:\n{lines}\n"
            'Expected {"batch": {"id", "title"}, "parts": [{"part_id", "part_title", "design_material", "copies", '
            '"output": {"id"} or absent, "mesh", "units"}, ...]}'
        ) from None


def _parse(path: Path, kind: str, text: str) -> Any:
    try:
        return json.loads(text) if kind == "JSON" else tomllib.loads(text)
    except json.JSONDecodeError as exc:
        raise BatchFileError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); fix the syntax there") from None
    except tomllib.TOMLDecodeError as exc:
        raise BatchFileError(f"{path}: not valid TOML ({exc}); fix the syntax there") from None


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"
