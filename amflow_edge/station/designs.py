"""The designs a scan can be inspected against: the station's library plus the active session's batch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from amflow_edge.inspection.designs import (
    Design,
    DesignLibrary,
    MeshError,
    MeshMismatchError,
    design_from_file,
    mesh_formats,
)
from amflow_edge.messaging.command_models import BatchPart, SessionDesign


class BatchDesignError(ValueError):
    """A session's design the station cannot use, naming it and what to do."""


class DesignCatalogue:
    """Swapped whole at a session change, so a reader on another thread sees the old batch or the new one."""

    def __init__(self, library: DesignLibrary, batch_meshes: Path) -> None:
        self.library = library
        self.batch_meshes = batch_meshes
        self._current = library

    def current(self) -> DesignLibrary:
        return self._current

    def use(self, designs: list[Design]) -> None:
        self._current = self.library.with_designs(designs)

    def resolve(
        self, wanted: Sequence[SessionDesign], parts: Sequence[BatchPart] = (), folder: Path | None = None
    ) -> list[Design]:
        """The batch's designs as the station will inspect them, once each; raises BatchDesignError naming the
        first bad one. Meshes are read only from `folder` (the batch mesh folder unless a batch file's own),
        whatever path a request names."""
        folder = (folder or self.batch_meshes).resolve()
        designs: list[Design] = []
        seen: set[str] = set()
        for entry in [*wanted, *(design_of_part(part) for part in parts)]:
            if entry.design_material in seen:
                continue
            seen.add(entry.design_material)
            if entry.mesh is None:
                if entry.design_material not in self.library:
                    raise BatchDesignError(
                        f"design_material {entry.design_material} is not in the station's design library; "
                        "send its mesh (a file in the batch mesh folder) with it"
                    )
                continue
            designs.append(_batch_design(folder, entry, entry.mesh))
        return designs


def design_of_part(part: BatchPart) -> SessionDesign:
    """A part names its design the way a designs entry does."""
    return SessionDesign(design_material=part.design_material, mesh=part.mesh, units=part.units, title=part.part_title)


def _batch_design(folder: Path, entry: SessionDesign, mesh: str) -> Design:
    """A requester may name any file in the folder, so errors name the file as the request did and nothing
    more: no absolute path of the station, and no hash of the file (a hash would confirm a guess about the
    content of a file the requester never sent, such as a key someone left there). Every check that needs
    no parsing comes first, so a file that is no mesh is never read."""
    name = repr(mesh)
    try:
        path = (folder / mesh).resolve()
    except ValueError:  # a NUL in the name; raised by the OS call, so it would escape as a bug
        raise BatchDesignError(f"mesh {name} is not a usable file name; name a file in the batch mesh folder") from None
    except (RuntimeError, OSError):  # a symbolic link that points back at itself
        raise BatchDesignError(
            f"mesh {name} cannot be resolved (a symbolic link loop); replace the link with the mesh file"
        ) from None
    if not path.is_relative_to(folder):
        raise BatchDesignError(
            f"mesh {name} is outside the batch mesh folder; name a file inside it, relative to the folder"
        )
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as exc:  # a name too long for the file system, a folder the station may not read
        raise BatchDesignError(
            f"mesh {name} cannot be looked up ({exc.strerror or type(exc).__name__}); name a file in the batch "
            "mesh folder, at most 255 bytes a name"
        ) from None
    if not exists:
        raise BatchDesignError(
            f"mesh {name} is not in the batch mesh folder; copy the file there first, or correct the name "
            "(relative to the folder)"
        )
    if not is_file:
        raise BatchDesignError(f"mesh {name} is not a file; name the mesh file itself, not a folder")
    formats = sorted(mesh_formats())
    if path.suffix.lower() not in formats:
        raise BatchDesignError(
            f"mesh {name} is not a mesh file; send the design exported as one of {', '.join(formats)}"
        )
    try:
        return design_from_file(path, entry.units, entry.design_material, entry.title)
    except MeshMismatchError:  # its message holds the file's hash, which stays here
        raise BatchDesignError(
            f"design_material {entry.design_material} does not match mesh {name}: its first 40 hex digits must be "
            "the SHA-1 of the file; send the mesh file the design_material id was made from, or the id of this file"
        ) from None
    except MeshError as exc:
        raise BatchDesignError(f"design {entry.design_material}: mesh {name}: {exc.problem}. Fix: {exc.fix}") from None
