"""The design library: which CAD meshes a scan can be compared against, and under which id.

A design's id (``design_material``) is the SHA-1 of its mesh file's bytes plus process, material
and colour, so it changes exactly when the geometry file does; it is computed, never typed in.
Meshes are checked and converted to millimetres here, once, so every later step (rendering,
alignment, metrics) can trust a mesh in the station's unit: repaired into a closed solid where that is
safe, otherwise kept as the open surface a slicer would have printed (inspection.mesh_repair), with a
record of which it is.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import re
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from amflow_edge.inspection.mesh_repair import MeshProcessing, UnusableMeshError, prepare_mesh

if TYPE_CHECKING:
    import trimesh

log = logging.getLogger(__name__)

Units = Literal["mm", "inch", "m"]

MM_PER_UNIT: dict[str, float] = {"mm": 1.0, "inch": 25.4, "m": 1000.0}
MIN_EXTENT_MM = 1.0
MAX_EXTENT_MM = 1000.0
_TYPICAL_PART_MM = 50.0

_BASIC_FORMATS: dict[str, str] = {".stl": "stl", ".obj": "obj", ".ply": "ply"}
PROCESSING_KEY = "amflow_mesh_processing"
"""Key of a loaded mesh's `metadata` holding its MeshProcessing (as a dict): it travels with the mesh's copies."""


@lru_cache(maxsize=1)
def mesh_formats() -> dict[str, str]:
    """Suffix → trimesh file type; 3MF only where trimesh can read it. Imports trimesh, so asked for lazily:
    loading a library (check-config, daemon start) only hashes files and need not pay for it."""
    import trimesh

    formats = dict(_BASIC_FORMATS)
    if "3mf" in trimesh.available_formats():
        formats[".3mf"] = "3mf"
    return formats


_TOKEN = re.compile(r"[A-Z0-9]+")
DESIGN_MATERIAL_PATTERN = re.compile(r"[0-9a-f]{40}_[A-Z0-9]+_[A-Z0-9]+_[A-Z0-9]+")


class DesignError(ValueError):
    """A design library that cannot be used as written; lists every problem so one edit fixes all."""

    def __init__(self, library: Path | str, problems: list[str]) -> None:
        self.library = Path(library)
        self.problems = list(problems)
        count = f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}"
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{self.library}: {count} in the design library:\n{lines}")


class MeshError(ValueError):
    """A mesh file the station cannot compare scans against; names the file, the problem and the fix."""

    def __init__(self, path: Path | str, problem: str, fix: str) -> None:
        self.path = Path(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}. Fix: {fix}")


class MeshMismatchError(MeshError):
    """The file is not the one its design_material id was made from (the id's first 40 hex digits are the
    SHA-1 of the file); a caller that must not show hashes says so in its own words."""


class UnknownDesignError(KeyError):
    """Asked for a design_material the library does not hold."""

    def __init__(self, design_material: str, library: Path, known: list[str]) -> None:
        self.design_material = design_material
        self.known = list(known)
        listing = "\n".join(f"  - {k}" for k in self.known) or "  (none)"
        self.message = (
            f"{library}: no design with design_material {design_material!r}. "
            f"Fix: add it to the library or use one of the {len(self.known)} known ids:\n{listing}"
        )
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message


def _check_token(value: str, example: str) -> str:
    if _TOKEN.fullmatch(value):
        return value
    suggestion = re.sub(r"[^A-Z0-9]", "", value.upper())
    fix = f"write {suggestion!r}" if suggestion else f"use e.g. {example!r}"
    raise ValueError(f"{value!r} must be upper-case letters and digits only, like {example!r}. Fix: {fix}")


class DesignEntry(BaseModel):
    """One ``[[design]]`` table of a library file, as the integrator writes it."""

    model_config = ConfigDict(extra="forbid")

    file: Path = Field(description="Mesh file (STL, OBJ, PLY), relative to the library file's folder.")
    units: Units = Field(description="Unit the CAD file was exported in; STL carries none, so it must be said here.")
    process: str = Field(description="Manufacturing process token of the design_material id, e.g. SLS.")
    material: str = Field(description="Material token of the design_material id, e.g. PA12 or PAGF.")
    colour: str = Field(description="Colour token of the design_material id, e.g. GREY.")
    title: str = Field(min_length=1, description="Human part name shown in reports and logs.")
    part_id: str | None = Field(default=None, min_length=1, description="The customer's or ERP's part number, if any.")

    @field_validator("process")
    @classmethod
    def _process_token(cls, value: str) -> str:
        return _check_token(value, "SLS")

    @field_validator("material")
    @classmethod
    def _material_token(cls, value: str) -> str:
        return _check_token(value, "PA12")

    @field_validator("colour")
    @classmethod
    def _colour_token(cls, value: str) -> str:
        return _check_token(value, "GREY")


def design_material_id(path: Path | str, process: str, material: str, colour: str) -> str:
    """The id the AM-Vision API knows this design by: SHA-1 of the file bytes, then the three tokens."""
    tokens = (("process", process, "SLS"), ("material", material, "PA12"), ("colour", colour, "GREY"))
    for what, value, example in tokens:
        try:
            _check_token(value, example)
        except ValueError as exc:
            raise ValueError(f"{path}: {what} {exc}") from None
    return _id_from_bytes(_read_mesh_bytes(Path(path)), process, material, colour)


def _id_from_bytes(data: bytes, process: str, material: str, colour: str) -> str:
    return f"{hashlib.sha1(data).hexdigest()}_{process}_{material}_{colour}"


def _read_mesh_bytes(path: Path) -> bytes:
    if not path.exists():
        raise MeshError(path, "file not found", "check the path (library paths are relative to the library file)")
    if not path.is_file():
        raise MeshError(path, "is not a regular file", "point at the mesh file itself, not a folder")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise MeshError(path, f"cannot be read ({exc.strerror or exc})", "check the file's permissions") from None


def _file_type(path: Path) -> str:
    file_type = _BASIC_FORMATS.get(path.suffix.lower()) or mesh_formats().get(path.suffix.lower())
    if file_type is None:
        supported = ", ".join(sorted(mesh_formats()))
        suffix = path.suffix or "(no suffix)"
        raise MeshError(path, f"unsupported mesh format {suffix!r}", f"export the design as one of {supported}")
    return file_type


def load_mesh_mm(path: Path | str, units: Units) -> trimesh.Trimesh:
    """Load a design mesh in millimetres, repaired where safe, or say why it cannot be used at all.

    The mesh may be an open surface when no repair could close it (see `load_design_mesh` for the record).
    """
    path = Path(path)
    if units not in MM_PER_UNIT:
        raise MeshError(path, f"unknown units {units!r}", f"use one of {', '.join(MM_PER_UNIT)}")
    file_type = _file_type(path)
    return _mesh_from_bytes(_read_mesh_bytes(path), path, file_type, units)


def load_design_mesh(path: Path | str, units: Units) -> tuple[trimesh.Trimesh, MeshProcessing]:
    """`load_mesh_mm` and its processing report: whether the mesh was closed, what was repaired, or that it is
    used as an open surface, for the design's record."""
    path = Path(path)
    if units not in MM_PER_UNIT:
        raise MeshError(path, f"unknown units {units!r}", f"use one of {', '.join(MM_PER_UNIT)}")
    return _processed_from_bytes(_read_mesh_bytes(path), path, _file_type(path), units)


def mesh_processing(mesh: trimesh.Trimesh) -> MeshProcessing | None:
    """The processing report of a mesh loaded here (kept in its metadata, so copies keep it); None for others."""
    recorded = mesh.metadata.get(PROCESSING_KEY)
    return MeshProcessing.model_validate(recorded) if isinstance(recorded, dict) else None


def _mesh_from_bytes(data: bytes, path: Path, file_type: str, units: str) -> trimesh.Trimesh:
    return _processed_from_bytes(data, path, file_type, units)[0]


def _processed_from_bytes(
    data: bytes, path: Path, file_type: str, units: str
) -> tuple[trimesh.Trimesh, MeshProcessing]:
    raw = _parse(data, path, file_type)
    raw.apply_scale(MM_PER_UNIT[units])  # first, so trimesh's absolute merge tolerances act in mm
    try:
        mesh, processing = prepare_mesh(raw)
    except UnusableMeshError as exc:
        raise MeshError(path, exc.problem, exc.fix) from None
    if processing.used_as_is:
        log.warning("%s: mesh used as an open surface: %s", path, processing.summary())
    elif processing.repairs:
        log.warning("%s: repaired mesh: %s", path, "; ".join(processing.repairs))
    _check_size(mesh, path, units)
    mesh.metadata[PROCESSING_KEY] = processing.model_dump()
    return mesh, processing


def _parse(data: bytes, path: Path, file_type: str) -> trimesh.Trimesh:
    import trimesh

    kind = file_type.upper()
    export_again = f"export the design again as {kind}"
    if not data:
        raise MeshError(path, "file is empty (0 bytes)", f"{export_again}; the copy was probably interrupted")
    try:
        # Unprocessed, because processing silently drops the triangles of NaN vertices: a corrupt file
        # would become a part with faces missing.
        scene = trimesh.load_scene(io.BytesIO(data), file_type=file_type, process=False)
    except Exception as exc:  # noqa: BLE001 - trimesh's parsers raise anything from ValueError to IndexError on bad files
        raise MeshError(path, f"cannot be parsed as {kind} ({type(exc).__name__}: {exc})", export_again) from None
    geometries = list(scene.geometry.values())
    _check_finite(geometries, path, export_again)
    for geometry in geometries:
        if isinstance(geometry, trimesh.Trimesh):
            geometry.process()  # what loading with process=True does: merge vertices
    meshes = [g for g in geometries if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
    if not meshes:
        if geometries:
            found = ", ".join(sorted({type(g).__name__ for g in geometries}))
            raise MeshError(path, f"contains no triangles, only {found}", "export the design as a triangle mesh")
        problem = f"no triangles could be read: the file is corrupt or not a valid {kind} file"
        raise MeshError(path, problem, export_again)
    mesh = scene.to_mesh()
    if not np.isfinite(mesh.vertices).all():
        raise MeshError(path, "has vertices with NaN or infinite coordinates", f"{export_again}; the file is corrupt")
    return mesh


def _check_finite(geometries: list[Any], path: Path, export_again: str) -> None:
    import trimesh

    for geometry in geometries:
        if not isinstance(geometry, trimesh.Trimesh) or len(geometry.faces) == 0:
            continue
        finite = np.asarray(np.isfinite(np.asarray(geometry.vertices)).all(axis=1), dtype=bool)
        broken = int((~finite[geometry.faces]).any(axis=1).sum())
        if broken:
            raise MeshError(
                path,
                f"{broken} of {len(geometry.faces)} triangles have NaN or infinite vertex coordinates",
                f"{export_again}; the file is corrupt",
            )


def _check_size(mesh: trimesh.Trimesh, path: Path, units: str) -> None:
    largest = float(mesh.extents.max())
    if MIN_EXTENT_MM <= largest <= MAX_EXTENT_MM:
        return
    if largest < MIN_EXTENT_MM:
        beyond = f"smaller than any part the station scans (< {MIN_EXTENT_MM:g} mm)"
    else:
        beyond = f"larger than any part the station scans (> {MAX_EXTENT_MM:g} mm)"
    problem = f"largest extent is {largest:.4g} mm with units = {units!r}: {beyond}"
    raw = largest / MM_PER_UNIT[units]
    guess = _guess_units(raw, units)
    if guess is None:
        fix = "check the units and the scale of the CAD export"
    else:
        would_be = raw * MM_PER_UNIT[guess]
        fix = f'the file is probably in {guess}: set units = "{guess}" (the part would then be {would_be:.4g} mm)'
    raise MeshError(path, problem, fix)


def _guess_units(raw_extent: float, wrong: str) -> str | None:
    plausible = [unit for unit, factor in MM_PER_UNIT.items() if MIN_EXTENT_MM <= raw_extent * factor <= MAX_EXTENT_MM]
    candidates = [unit for unit in plausible if unit != wrong]
    if not candidates:
        return None
    return min(candidates, key=lambda u: abs(math.log(raw_extent * MM_PER_UNIT[u] / _TYPICAL_PART_MM)))


@dataclass(frozen=True, eq=False)
class Design:
    """One design the station can compare scans against; its mesh is loaded lazily, once."""

    design_material: str
    title: str
    path: Path
    units: Units
    process: str
    material: str
    colour: str
    part_id: str | None = None
    _cache: dict[str, trimesh.Trimesh] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def mesh(self) -> trimesh.Trimesh:
        """The design in mm; a copy, because trimesh transforms meshes in place and the cache is shared."""
        cached = self._cache.get("mesh")
        if cached is None:
            with self._lock:
                cached = self._cache.get("mesh")
                if cached is None:
                    cached = self._load()
                    self._cache["mesh"] = cached
        return cached.copy()

    def processing(self) -> MeshProcessing:
        """What loading did to the design's mesh (closed as read, repaired, or used as an open surface)."""
        processing = mesh_processing(self.mesh())
        if processing is None:  # every mesh _load returns carries one; a bug if not
            raise RuntimeError(f"{self.path}: loaded mesh has no processing record")
        return processing

    def _load(self) -> trimesh.Trimesh:
        data = _read_mesh_bytes(self.path)
        digest = hashlib.sha1(data).hexdigest()
        if not self.design_material.startswith(digest + "_"):
            was = self.design_material.split("_", 1)[0]
            raise MeshError(
                self.path,
                f"file changed since the design library was loaded (SHA-1 was {was}, now {digest})",
                "reload the design library; the design gets a new design_material id",
            )
        return _mesh_from_bytes(data, self.path, _file_type(self.path), self.units)


def design_from_file(path: Path, units: Units, design_material: str, title: str | None = None) -> Design:
    """A design named by its id elsewhere (a batch sent by the MES): the file must be the one the id was made from.

    The mesh is loaded and checked now, so a bad file is refused with the batch, not at its first scan.
    """
    if not DESIGN_MATERIAL_PATTERN.fullmatch(design_material):
        raise MeshError(
            path, f"{design_material!r} is not a design_material id", "use <40 hex>_<PROCESS>_<MATERIAL>_<COLOUR>"
        )
    data = _read_mesh_bytes(path)
    digest = hashlib.sha1(data).hexdigest()
    if not design_material.startswith(digest + "_"):
        raise MeshMismatchError(
            path,
            f"its SHA-1 is {digest}, but design_material {design_material} names {design_material[:40]}",
            "send the mesh file the design_material id was made from",
        )
    _, process, material, colour = design_material.split("_")
    design = Design(design_material, title or path.stem, path, units, process, material, colour)
    design.mesh()
    return design


class DesignLibrary:
    """The designs a station knows, from one TOML library file with ``[[design]]`` tables."""

    def __init__(self, path: Path, designs: list[Design]) -> None:
        self.path = path
        self._designs = {d.design_material: d for d in designs}

    @classmethod
    def load(cls, path: Path | str) -> DesignLibrary:
        path = Path(path)
        raw = _read_library_toml(path)
        problems: list[str] = []
        unknown = sorted(set(raw) - {"design"})
        if unknown:
            problems.append(f"unknown top-level keys {unknown}: remove them; the library holds only [[design]] tables")
        tables = raw.get("design")
        if not isinstance(tables, list) or not tables or not all(isinstance(t, dict) for t in tables):
            problems.append(
                "no [[design]] tables: add one per mesh, with file, units, process, material, colour and title"
            )
            raise DesignError(path, problems)

        designs: list[Design] = []
        seen: dict[str, str] = {}
        for index, table in enumerate(tables, start=1):
            label = _entry_label(index, table)
            design = _design_from_table(table, label, path.parent, problems)
            if design is None:
                continue
            if design.design_material in seen:
                problems.append(
                    f"{label}: same design_material {design.design_material} as {seen[design.design_material]} "
                    "(identical mesh bytes, process, material and colour): remove one of the two entries"
                )
                continue
            seen[design.design_material] = label
            designs.append(design)
        if problems:
            raise DesignError(path, problems)
        return cls(path, designs)

    @property
    def designs(self) -> list[Design]:
        return list(self._designs.values())

    def with_designs(self, extra: list[Design]) -> DesignLibrary:
        """The library plus a batch's designs; the library's own entry wins for an id both have."""
        return DesignLibrary(self.path, [*self.designs, *(d for d in extra if d.design_material not in self)])

    def get(self, design_material: str) -> Design:
        try:
            return self._designs[design_material]
        except KeyError:
            raise UnknownDesignError(design_material, self.path, list(self._designs)) from None

    def check_meshes(self) -> None:
        """Load every mesh now, so a bad file is found at start-up rather than at the first scan of that part."""
        problems: list[str] = []
        for design in self.designs:
            try:
                design.mesh()
            except MeshError as exc:
                problems.append(f"{design.title!r} ({design.design_material}): {exc}")
        if problems:
            raise DesignError(self.path, problems)

    def __contains__(self, design_material: object) -> bool:
        return design_material in self._designs

    def __iter__(self) -> Iterator[Design]:
        return iter(self.designs)

    def __len__(self) -> int:
        return len(self._designs)


def _read_library_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise DesignError(path, ["library file not found: check the path in the station settings"]) from None
    except OSError as exc:
        problem = f"library file cannot be read ({exc.strerror or exc}): check its permissions"
        raise DesignError(path, [problem]) from None
    try:
        return tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as exc:
        problem = f"not UTF-8 text ({exc.reason} at byte {exc.start}): save the library as UTF-8"
        raise DesignError(path, [problem]) from None
    except tomllib.TOMLDecodeError as exc:
        raise DesignError(path, [f"invalid TOML ({exc}): fix the syntax at that line"]) from None


def _entry_label(index: int, table: dict[str, Any]) -> str:
    title = table.get("title")
    shown = repr(title) if isinstance(title, str) and title else "no title"
    return f"[[design]] #{index} ({shown})"


_FIELD_HINTS: dict[str, str] = {
    "file": 'the mesh file relative to the library file, e.g. file = "bracket.stl"',
    "units": 'the unit the CAD file was exported in: units = "mm", "inch" or "m"',
    "process": 'e.g. process = "SLS"',
    "material": 'e.g. material = "PA12"',
    "colour": 'e.g. colour = "GREY"',
    "title": 'the part name, e.g. title = "Angle bracket AB-60"',
    "part_id": 'the part number as text, e.g. part_id = "AB-60", or leave it out',
}


def _design_from_table(table: dict[str, Any], label: str, folder: Path, problems: list[str]) -> Design | None:
    entry: DesignEntry | None = None
    try:
        entry = DesignEntry.model_validate(table)
    except ValidationError as exc:
        problems.extend(f"{label}: {_describe(error)}" for error in exc.errors())
    file = table.get("file")
    data = _entry_mesh_bytes(folder, file, label, problems) if isinstance(file, str) else None
    if entry is None or data is None:
        return None
    mesh_path = folder / entry.file
    design_material = _id_from_bytes(data, entry.process, entry.material, entry.colour)
    return Design(
        design_material=design_material,
        title=entry.title,
        path=mesh_path,
        units=entry.units,
        process=entry.process,
        material=entry.material,
        colour=entry.colour,
        part_id=entry.part_id,
    )


def _entry_mesh_bytes(folder: Path, file: str, label: str, problems: list[str]) -> bytes | None:
    mesh_path = folder / file
    try:
        _file_type(mesh_path)
        data = _read_mesh_bytes(mesh_path)
    except MeshError as exc:
        problems.append(f"{label}: mesh {file!r}: {exc.problem} (looked for {mesh_path}). Fix: {exc.fix}")
        return None
    if not data:
        problems.append(f"{label}: mesh {file!r}: file is empty (0 bytes). Fix: export the design again")
        return None
    return data


def _describe(error: Any) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(entry)"
    kind = error["type"]
    if kind == "missing":
        return f"missing key {key!r}. Fix: add {_FIELD_HINTS.get(key, key)}"
    if kind == "extra_forbidden":
        allowed = ", ".join(DesignEntry.model_fields)
        return f"unknown key {key!r}. Fix: remove it or correct its spelling (allowed: {allowed})"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind == "value_error":
        return f"{key}: {message}"
    message += f", got {error.get('input')!r}"
    hint = _FIELD_HINTS.get(key)
    return f"{key}: {message}. Fix: {hint}" if hint else f"{key}: {message}"
