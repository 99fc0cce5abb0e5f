"""The QualityControlReason catalogue: the only ids a scan's qc_reasons may carry.

Plant systems group and count rejects by these ids, so an id typed wrong in a command or
a profile must be refused, not published. The catalogue must contain every reason the
inspection itself can report.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from amflow_edge.common.shipped import QC_REASONS
from amflow_edge.inspection.profiles import Reason

DEFAULT_REASONS = QC_REASONS
REASON_ID = r"^[a-z][a-z0-9_]{0,63}$"


class ReasonCatalogueError(ValueError):
    """The catalogue file cannot be used; the message names the file, the entry and the fix."""


class ReasonCategory(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=REASON_ID, description="Category id, e.g. 'geometry'.")
    title: str = Field(min_length=1, description="Shown to operators.")


class QualityControlReason(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=REASON_ID, description="Reason id as it appears in qc_reasons, e.g. 'warp'.")
    title: str = Field(min_length=1, description="Shown to operators.")
    category: str = Field(description="Id of its category.")


class ReasonCatalogue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    categories: list[ReasonCategory] = Field(alias="category", min_length=1, description="[[category]] tables.")
    reasons: list[QualityControlReason] = Field(alias="reason", min_length=1, description="[[reason]] tables.")

    @model_validator(mode="after")
    def _consistent(self) -> ReasonCatalogue:
        problems = []
        for kind, ids in (("category", [c.id for c in self.categories]), ("reason", [r.id for r in self.reasons])):
            twice = sorted({i for i in ids if ids.count(i) > 1})
            if twice:
                problems.append(f"{kind} ids listed twice: {', '.join(twice)}")
        categories = {c.id for c in self.categories}
        for reason in self.reasons:
            if reason.category not in categories:
                problems.append(
                    f"reason {reason.id!r}: unknown category {reason.category!r}; add a [[category]] for it"
                )
        missing = sorted(set(get_args(Reason)) - self.ids)
        if missing:
            problems.append(f"the inspection reports {', '.join(missing)}; keep a [[reason]] for each")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def ids(self) -> set[str]:
        return {r.id for r in self.reasons}

    def unknown(self, reason_ids: list[str]) -> list[str]:
        return [r for r in reason_ids if r not in self.ids]


def load_reasons(path: Path | None = None) -> ReasonCatalogue:
    path = path or DEFAULT_REASONS
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReasonCatalogueError(
            f"{path}: not found; set qc.reasons to a catalogue file, or remove it for the default"
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ReasonCatalogueError(f"{path}: not valid TOML ({exc}); fix the syntax") from None
    try:
        return ReasonCatalogue.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in e['loc']) or '(file)'}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors(include_url=False)
        ]
        raise ReasonCatalogueError(f"{path}: " + "; ".join(problems)) from None
