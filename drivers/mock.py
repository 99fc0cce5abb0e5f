"""A camera rig without cameras: renders a design placed on the tray, so the whole station runs on a laptop.

Scenes are rendered ahead of the triggers in a background thread, because the capture-latency
figures the station is judged by must measure the station, not this renderer. Every scene's
seed follows from the configured seed and the scene's index, so a demo run is reproducible.
Configured printing defects go into some scenes' parts, so the inspection has bad parts to find.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from amflow_edge.drivers.base import CameraHealth, CameraSettings, DriverError, Frame, GrabError, Shot
from amflow_edge.drivers.mock_settings import MockDriverSettings
from amflow_edge.drivers.simulator.charuco_board import BoardPlacement, BoardRenderer, default_placements
from amflow_edge.drivers.simulator.defect_spec import Defect
from amflow_edge.drivers.simulator.defects import DefectError, apply_defect, defect_rng, settle
from amflow_edge.drivers.simulator.looks import LookError, PartMaterial, StationLook, load_look, load_material
from amflow_edge.drivers.simulator.materials import albedo_for, material_for
from amflow_edge.drivers.simulator.render import Renderer
from amflow_edge.inspection.calibration.board import BoardDefinition
from amflow_edge.inspection.geometry.camera import CalibrationError, CameraCalibration, load_calibration
from amflow_edge.inspection.geometry.lighting import PART_ALBEDO
from amflow_edge.inspection.geometry.placement import PlacementError, place_on_tray

if TYPE_CHECKING:
    import trimesh

_STOP_POLL_S = 0.2
_JOIN_TIMEOUT_S = 30.0


class _Design(Protocol):
    @property
    def design_material(self) -> str: ...

    @property
    def title(self) -> str: ...

    def mesh(self) -> trimesh.Trimesh: ...


class _DesignSource(Protocol):
    """The part of inspection.designs.DesignLibrary the mock needs."""

    @property
    def designs(self) -> Sequence[_Design]: ...

    def get(self, design_material: str) -> _Design: ...


@dataclass(frozen=True)
class _Scene:
    index: int
    seed: int
    design_material: str | None
    pose: np.ndarray | None
    images: dict[str, np.ndarray]
    defect: dict[str, object] | None = None

    def metadata(self) -> dict[str, Any]:
        return {
            "mock_scene": {
                "design_material": self.design_material,
                "pose": None if self.pose is None else [[float(v) for v in row] for row in self.pose],
                "seed": self.seed,
                "defect": self.defect,
            }
        }


_REFERENCE_INDEX = 2**40  # a scene index no run reaches: the empty-tray reference's own noise
_BOARD_INDEX = 2**41  # and the calibration board's pictures, one noise per placement


def scene_seed(run_seed: int, index: int) -> int:
    """Seed of scene `index`: independent streams per scene, the same on every machine and run."""
    sequence = np.random.SeedSequence([run_seed & 0xFFFFFFFFFFFFFFFF, index])
    return int(sequence.generate_state(1, np.uint32)[0])


class MockDriver:
    """Meets drivers.base.CameraDriver with rendered frames instead of cameras."""

    def __init__(self, cameras: list[CameraSettings], settings: MockDriverSettings, designs: _DesignSource) -> None:
        self._cameras = list(cameras)
        self._settings = settings
        self._designs = designs
        self._renderer: Renderer | None = None
        self._render_lock = threading.Lock()
        self._design_ids: list[str] = []
        self._defects: list[Defect] = []
        self._meshes: dict[str, trimesh.Trimesh] = {}
        self._material: PartMaterial | None = None
        self._pool: list[_Scene] = []
        self._ready: queue.Queue[_Scene] = queue.Queue(maxsize=settings.prerender)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failure: str | None = None
        self._triggers: deque[datetime] = deque()
        self._grabbed = 0
        self._open = False
        self._lock = threading.Lock()
        self._board_renderer: BoardRenderer | None = None
        self._board: tuple[int, BoardPlacement | None] | None = None

    def open(self) -> None:
        if self._open:
            return
        calibrations = [self._calibration(camera) for camera in self._cameras]
        self._design_ids = self._chosen_designs()
        self._defects = [Defect.parse(text) for text in self._settings.defects]
        try:
            look = load_look(self._settings.look)
            self._material = None if self._settings.material is None else load_material(self._settings.material)
        except LookError as exc:
            raise DriverError(f"mock: {exc}") from None
        self._renderer = Renderer(calibrations, look=look)
        self._stop.clear()
        self._failure = None
        self._triggers.clear()
        self._grabbed = 0
        self._ready = queue.Queue(maxsize=self._settings.prerender)
        try:
            if self._settings.scene_pool > 0:
                self._pool = [self._render_scene(i) for i in range(self._settings.scene_pool)]
            else:
                self._thread = threading.Thread(target=self._render_ahead, name="mock-renderer", daemon=True)
                self._thread.start()
        except DriverError:
            self._renderer.close()
            self._renderer = None
            raise
        self._open = True

    def _calibration(self, camera: CameraSettings) -> CameraCalibration:
        try:
            calib = load_calibration(camera.calibration)
        except CalibrationError as exc:
            raise DriverError(f"{camera.name}: {exc}") from None
        if (calib.image_width, calib.image_height) != (camera.width, camera.height):
            raise DriverError(
                f"{camera.name}: calibration {camera.calibration} is for {calib.image_width}×{calib.image_height} "
                f"images but the camera is configured for {camera.width}×{camera.height}; "
                "fix width/height or use the right calibration"
            )
        if calib.serial != camera.serial:
            raise DriverError(
                f"{camera.name}: calibration {camera.calibration} was made for the camera with serial {calib.serial}, "
                f"but {camera.name} is serial {camera.serial}; use this camera's own calibration"
            )
        if calib.name != camera.name:
            raise DriverError(
                f"{camera.name}: calibration {camera.calibration} belongs to {calib.name}; point {camera.name} at its own file"
            )
        return calib

    def _chosen_designs(self) -> list[str]:
        """The configured designs, checked once; without any configured, each scene draws from the designs the
        source has at that moment (the station's: the active session's batch), so a new batch is placed at once."""
        if self._settings.empty_tray:
            return []
        wanted = list(self._settings.designs)
        if not wanted and not self._designs.designs:
            raise DriverError("mock: the design library is empty; add designs or set mock.empty_tray = true")
        for design_material in wanted:
            try:
                self._designs.get(design_material)
            except KeyError as exc:
                raise DriverError(f"mock.designs: {exc}") from None
        return wanted

    def _mesh(self, design_material: str) -> trimesh.Trimesh:
        """One copy per design for the whole run: placement and rendering cache their work per mesh object."""
        mesh = self._meshes.get(design_material)
        if mesh is None:
            mesh = self._designs.get(design_material).mesh()
            self._meshes[design_material] = mesh
        return mesh

    def _render_scene(self, index: int) -> _Scene:
        assert self._renderer is not None
        seed = scene_seed(self._settings.seed, index)
        rng = np.random.default_rng(seed)
        design_material: str | None = None
        pose: np.ndarray | None = None
        mesh = None
        choices = self._design_ids
        if not choices and not self._settings.empty_tray:
            choices = [d.design_material for d in self._designs.designs]
        if choices:
            design_material = choices[int(rng.integers(len(choices)))]
            try:
                mesh = self._mesh(design_material)
                pose = place_on_tray(mesh, rng, tray_size_mm=self._renderer.tray_size_mm)
            except (PlacementError, ValueError) as exc:
                raise DriverError(f"mock scene {index}: design {design_material}: {exc}") from None
        defect = None
        if mesh is not None and pose is not None:
            mesh, pose, defect = self._maybe_defective(
                mesh, pose, seed, f"mock scene {index}: design {design_material}"
            )
        albedo, material = self._look_of(design_material)
        with self._render_lock:
            images = self._renderer.render(mesh, pose, seed, albedo=albedo, material=material)
        for image in images.values():
            image.setflags(write=False)
        return _Scene(index, seed, design_material, pose, images, defect)

    def _look_of(self, design_material: str | None) -> tuple[float, PartMaterial | None]:
        """The part's albedo and material: the configured material, else with `materials` its COLOUR token's (the
        demo station keeps the albedos it was tuned with), else grey PA12."""
        if self._material is not None:
            return self._material.albedo, self._material
        if not self._settings.materials or design_material is None:
            return PART_ALBEDO, None
        if self._renderer is None or self._renderer.look == StationLook():
            return albedo_for(design_material), None
        material = material_for(design_material)
        return material.albedo, material

    def _maybe_defective(
        self, mesh: trimesh.Trimesh, pose: np.ndarray, seed: int, where: str
    ) -> tuple[trimesh.Trimesh, np.ndarray, dict[str, object] | None]:
        """The scene's part with one of the configured defects, or as it was, from the scene's own defect stream.

        The stream is separate from the scene's, so the same seed shows the same part, pose and
        noise with or without defects configured.
        """
        if not self._defects or self._settings.defect_rate <= 0:
            return mesh, pose, None
        rng = defect_rng(seed)
        if rng.random() >= self._settings.defect_rate:
            return mesh, pose, None
        defect = self._defects[int(rng.integers(len(self._defects)))]
        assert self._renderer is not None
        viewpoints = np.array([calib.centre for calib in self._renderer.cameras])
        try:
            defective, truth = apply_defect(mesh, defect, rng, pose=pose, viewpoints=viewpoints)
        except DefectError as exc:
            raise DriverError(f"{where}: mock.defects: {exc}") from None
        return defective, settle(defective, pose), truth.model_dump(mode="json")

    def _render_ahead(self) -> None:
        index = 0
        while not self._stop.is_set():
            try:
                scene = self._render_scene(index)
            except Exception as exc:  # noqa: BLE001 - a dead renderer must surface at grab(), not vanish in a thread
                self._failure = f"mock renderer stopped at scene {index}: {exc}"
                return
            index += 1
            while not self._stop.is_set():
                try:
                    self._ready.put(scene, timeout=_STOP_POLL_S)
                    break
                except queue.Full:
                    continue

    def trigger(self) -> None:
        if not self._open:
            raise DriverError("mock: trigger() before open(); open the driver first")
        with self._lock:
            self._triggers.append(datetime.now(UTC))

    def grab(self, timeout_s: float) -> Shot:
        if not self._open:
            raise DriverError("mock: grab() before open(); open the driver first")
        first = self._cameras[0].name
        with self._lock:
            if not self._triggers:
                raise GrabError(first, "no trigger to grab a frame for; call trigger() first")
            triggered_at = self._triggers.popleft()
        if self._board is not None:
            return self._board_shot(triggered_at)
        scene = self._next_scene(first, timeout_s)
        self._grabbed += 1
        if self._settings.fail_camera is not None and any(c.name == self._settings.fail_camera for c in self._cameras):
            raise GrabError(self._settings.fail_camera, "no frame (failure injected by mock.fail_camera)")
        return Shot(frames=self._frames(scene.images, triggered_at), metadata=scene.metadata())

    def present_board(self, board: BoardDefinition, placement: int | None) -> str:
        """Show the calibration board at the mock's built-in placement `placement` (0: flat at the tray centre,
        defining the tray frame; then tilted and shifted) until the next call, or the empty tray for None, as the
        calibration capture asks a person to. The printed surface is rendered board.thickness_mm above the tray
        (or the blocks), where a board on its backing lies, so the solve's tray frame (z = 0 on the tray) is the
        rig's. Returns what the placement is; DriverError past the last one."""
        if not self._open or self._renderer is None:
            raise DriverError("mock: present_board() before open(); open the driver first")
        if self._board_renderer is None or self._board_renderer.board != board:
            self._board_renderer = BoardRenderer(self._renderer.cameras, board, self._renderer.tray_size_mm)
        if placement is None:
            self._board = (-1, None)
            return "the empty tray"
        placements = default_placements(board)
        if not 0 <= placement < len(placements):
            raise DriverError(
                f"mock: the mock has {len(placements)} board placements (0 … {len(placements) - 1}), not {placement}; "
                f"capture at most {len(placements)}"
            )
        self._board = (placement, placements[placement])
        return placements[placement].instruction

    def _board_shot(self, triggered_at: datetime) -> Shot:
        assert self._board is not None and self._board_renderer is not None
        index, placement = self._board
        seed = scene_seed(self._settings.seed, _BOARD_INDEX + index)
        with self._render_lock:
            images = self._board_renderer.render(None if placement is None else placement.pose, seed)
        truth = None if placement is None else {"name": placement.name, "pose": placement.pose.tolist()}
        return Shot(frames=self._frames(images, triggered_at), metadata={"mock_board": truth})

    def grab_reference(self, timeout_s: float) -> Shot:
        """The empty tray as every camera sees it, for inspection's per-camera background."""
        if not self._open or self._renderer is None:
            raise DriverError("mock: grab_reference() before open(); open the driver first")
        now = datetime.now(UTC)
        with self._render_lock:
            images = self._renderer.render(None, None, scene_seed(self._settings.seed, _REFERENCE_INDEX))
        return Shot(frames=self._frames(images, now), metadata={"mock_scene": None})

    def _frames(self, images: dict[str, np.ndarray], timestamp: datetime) -> dict[str, Frame]:
        return {
            camera.name: Frame(
                camera=camera.name,
                image=images[camera.name],
                timestamp=timestamp,
                serial=camera.serial,
                exposure_us=camera.exposure_us,
                gain_db=camera.gain_db,
            )
            for camera in self._cameras
        }

    def _next_scene(self, camera: str, timeout_s: float) -> _Scene:
        if self._pool:
            return self._pool[self._grabbed % len(self._pool)]
        deadline = time.monotonic() + max(timeout_s, 0.0)
        while True:
            try:
                return self._ready.get(timeout=max(0.0, min(_STOP_POLL_S, deadline - time.monotonic())))
            except queue.Empty:
                if self._failure is not None:
                    raise DriverError(f"mock: {self._failure}") from None
                if time.monotonic() >= deadline:
                    raise GrabError(
                        camera,
                        f"no frame within {timeout_s:g} s (nor from the other cameras; the mock renderer is behind)",
                    ) from None

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=_JOIN_TIMEOUT_S)
            self._thread = None
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._pool = []
        self._board = None
        self._open = False

    def health(self) -> list[CameraHealth]:
        report = []
        for camera in self._cameras:
            if not self._open:
                connected, detail = False, "mock driver not open"
            elif self._failure is not None:
                connected, detail = False, self._failure
            elif camera.name == self._settings.fail_camera:
                connected, detail = False, "fails every grab (mock.fail_camera)"
            else:
                connected, detail = True, ""
            report.append(CameraHealth(camera=camera.name, serial=camera.serial, connected=connected, detail=detail))
        return report
