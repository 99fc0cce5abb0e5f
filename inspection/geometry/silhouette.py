"""What the design looks like to a calibrated camera at a given pose: its silhouette mask and outline points.

Alignment and metrics compare the photographed part with the model only through its outline, so
this is the single place that turns (mesh, pose, camera) into pixels. Triangles are projected with
the distortion-aware calibration and filled one by one: OpenCV's multi-polygon fill is even-odd,
which would punch holes where front faces overlap.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import open3d as o3d

from amflow_edge.inspection.geometry.camera import CameraCalibration
from amflow_edge.inspection.geometry.raycast import tensor

_SHIFT = 4
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class Window:
    """A pixel rectangle of a (possibly downscaled) image: masks are kept this small to stay fast."""

    x0: int
    y0: int
    width: int
    height: int
    scale: float

    def crop(self, image: np.ndarray) -> np.ndarray:
        """This window's part of an image of the scale it was made for."""
        return image[self.y0 : self.y0 + self.height, self.x0 : self.x0 + self.width]

    def contains(self, other: Window) -> bool:
        return (
            self.x0 <= other.x0
            and self.y0 <= other.y0
            and other.x0 + other.width <= self.x0 + self.width
            and other.y0 + other.height <= self.y0 + self.height
        )


def to_scaled(pixels: np.ndarray, scale: float) -> np.ndarray:
    """Full-resolution pixel centres → pixel centres of an image resized by `scale` (cv2.INTER_AREA convention)."""
    return (pixels + 0.5) * scale - 0.5


def full_window(calib: CameraCalibration, scale: float) -> Window:
    return Window(0, 0, int(round(calib.image_width * scale)), int(round(calib.image_height * scale)), scale)


def front_faces(calib: CameraCalibration, vertices_world: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Indices of triangles facing the camera; the union of these alone is the silhouette of a closed mesh."""
    tri = vertices_world[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    return np.nonzero(np.einsum("ij,ij->i", normals, tri[:, 0] - calib.centre) < 0)[0]


def rasterize(pixels: np.ndarray, faces: np.ndarray, window: Window) -> np.ndarray:
    """uint8 mask (255 inside) of the union of the given projected triangles inside `window`."""
    mask = np.zeros((window.height, window.width), dtype=np.uint8)
    if len(faces) == 0:
        return mask
    local = to_scaled(pixels, window.scale) - (window.x0, window.y0)
    fixed = np.round(local * _ONE).astype(np.int32)[faces]
    limit = 1 << 28
    fixed = np.clip(fixed, -limit, limit)
    for triangle in fixed:
        cv2.fillConvexPoly(mask, triangle, 255, cv2.LINE_8, _SHIFT)
    return mask


def silhouette(calib: CameraCalibration, vertices_world: np.ndarray, faces: np.ndarray, window: Window) -> np.ndarray:
    """Model silhouette in `window`; vertices behind the camera are not expected (parts lie on the tray)."""
    front = faces[front_faces(calib, vertices_world, faces)]
    return rasterize(calib.project(vertices_world), front, window)


def window_rays(calib: CameraCalibration, window: Window) -> np.ndarray:
    """(H·W, 3) unit rays, tray frame, through the pixel centres of a window of a resized image, row by row."""
    ys, xs = np.mgrid[0 : window.height, 0 : window.width]
    scaled = np.column_stack([xs.ravel() + window.x0, ys.ravel() + window.y0]).astype(np.float64)
    return calib.rays((scaled + 0.5) / window.scale - 0.5).astype(np.float32)


def cast_silhouette(
    scene: o3d.t.geometry.RaycastingScene, centre: np.ndarray, rays: np.ndarray, pose: np.ndarray, window: Window
) -> np.ndarray:
    """Silhouette (bool) in `window` of a design at `pose`, from a ray-casting scene of it in its own frame.

    The rays (window_rays) are moved into the design's frame instead of the design into the world, so
    one scene serves every pose: where hundreds of candidate poses are tried, this costs a third of
    drawing their triangles one by one.
    """
    rotation = pose[:3, :3]
    origin = rotation.T @ (centre - pose[:3, 3])
    batch = np.empty((len(rays), 6), dtype=np.float32)
    batch[:, :3] = origin
    batch[:, 3:] = rays @ rotation.astype(np.float32)
    hit = scene.test_occlusions(tensor(batch)).numpy()
    return hit.reshape(window.height, window.width)


def bounding_window(pixels: np.ndarray, calib: CameraCalibration, scale: float, pad_px: float) -> Window | None:
    """Window (in the scaled image) around the given full-resolution pixels, clipped to the image; None if outside."""
    scaled = to_scaled(pixels, scale)
    full = full_window(calib, scale)
    x0 = int(np.floor(scaled[:, 0].min() - pad_px))
    y0 = int(np.floor(scaled[:, 1].min() - pad_px))
    x1 = int(np.ceil(scaled[:, 0].max() + pad_px)) + 1
    y1 = int(np.ceil(scaled[:, 1].max() + pad_px)) + 1
    x0, y0 = max(x0, 0), max(y0, 0)
    x1, y1 = min(x1, full.width), min(y1, full.height)
    if x1 <= x0 or y1 <= y0:
        return None
    return Window(x0, y0, x1 - x0, y1 - y0, scale)


def outer_outline_points(
    calib: CameraCalibration,
    scene: o3d.t.geometry.RaycastingScene,
    pose: np.ndarray,
    vertices_world: np.ndarray,
    faces: np.ndarray,
    edges: np.ndarray,
    edge_faces: np.ndarray,
    spacing_px: float,
    beside_px: float,
) -> np.ndarray:
    """(N,3) world points along the mesh edges that make the outer outline as the camera sees it.

    A contour edge is on the outer outline where the ray `beside_px` past it, on the side away from its
    faces, meets nothing of the part: edges hidden behind the part, and folds inside the outline (a
    hole's rim), have the part there. One ray per point against `scene` (the design in its own frame)
    replaces drawing the whole mesh to find the outline, which cost 8 ms per camera and pose.
    """
    tri = vertices_world[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    facing = np.einsum("ij,ij->i", normals, tri[:, 0] - calib.centre) < 0
    contour = facing[edge_faces[:, 0]] != facing[edge_faces[:, 1]]
    if not contour.any():
        return np.zeros((0, 3))
    ends = vertices_world[edges[contour]]
    front = np.where(facing[edge_faces[contour, 0]], edge_faces[contour, 0], edge_faces[contour, 1])
    projected = calib.project(ends.reshape(-1, 3)).reshape(-1, 2, 2)
    centres = calib.project(tri[front].mean(axis=1))
    along = projected[:, 1] - projected[:, 0]
    lengths = np.linalg.norm(along, axis=1)
    usable = lengths > 1e-6
    ends, projected, centres, along, lengths = (
        ends[usable],
        projected[usable],
        centres[usable],
        along[usable],
        lengths[usable],
    )
    away = np.column_stack([-along[:, 1], along[:, 0]]) / lengths[:, None]
    towards_face = np.einsum("ij,ij->i", away, centres - projected[:, 0]) > 0
    away[towards_face] *= -1.0
    counts = np.maximum(1, np.ceil(lengths / spacing_px).astype(int))
    index = np.repeat(np.arange(len(ends)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    t = ((within + 0.5) / counts[index])[:, None]
    points = ends[index, 0] * (1 - t) + ends[index, 1] * t
    beside = projected[index, 0] * (1 - t) + projected[index, 1] * t + beside_px * away[index]
    rotation = pose[:3, :3]
    rays = np.empty((len(points), 6), dtype=np.float32)
    rays[:, :3] = rotation.T @ (calib.centre - pose[:3, 3])
    rays[:, 3:] = calib.rays(beside) @ rotation
    hit = scene.test_occlusions(tensor(rays)).numpy().astype(bool)
    return points[~hit]
