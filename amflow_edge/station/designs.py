"""The designs a scan can be inspected against: the station's library plus the active session's batch."""

from __future__ import annotations

from pathlib import Path

from amflow_edge.inspection.designs import Design, DesignLibrary, MeshError, design_from_file
from amflow_edge.messaging.command_models import SessionDesign


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

    def resolve(self, wanted: list[SessionDesign]) -> list[Design]:
        """The batch's designs as the station will inspect them; raises BatchDesignError naming the first bad one.
        Meshes are read only from the batch mesh folder, whatever path a request names."""
        folder = self.batch_meshes.resolve()
        designs = []
        for entry in wanted:
            if entry.mesh is None:
                if entry.design_material not in self.library:
                    raise BatchDesignError(
                        f"design_material {entry.design_material} is not in the station's design library; "
                        "send its mesh (a file in the batch mesh folder) with it"
                    )
                continue
            path = (folder / entry.mesh).resolve()
            if not path.is_relative_to(folder):
                raise BatchDesignError(
                    f"mesh {entry.mesh!r} is outside the batch mesh folder; name a file inside {folder}"
                )
            try:
                designs.append(design_from_file(path, entry.units, entry.design_material, entry.title))
            except MeshError as exc:
                raise BatchDesignError(f"design {entry.design_material}: {exc}") from None
        return designs
