"""Pictures an operator can check a verdict against: the design's outline on each photo, defects coloured."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from amflow_edge.common.durable import replace_durably
from amflow_edge.inspection.geometry.silhouette import Window

TILE = (640, 512)
OUTLINE = (0, 220, 0)
MISSING = (0, 0, 255)
EXTRA = (255, 80, 0)
SURFACE = (0, 200, 255)


def overlay(image: np.ndarray, window: Window, drawn: dict[str, np.ndarray] | None, label: str) -> np.ndarray:
    """BGR crop around the part: model outline in green, missing material red, extra blue, surface defects amber."""
    if drawn is None:
        picture = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    else:
        crop = window.crop(image)
        picture = cv2.cvtColor(crop, cv2.COLOR_GRAY2BGR)
        for key, colour in (("missing", MISSING), ("extra", EXTRA), ("surface", SURFACE)):
            mask = drawn.get(key)
            if mask is None:
                continue
            picture[mask] = (0.45 * picture[mask] + 0.55 * np.array(colour)).astype(np.uint8)
        contours, _ = cv2.findContours(drawn["model"].astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(picture, contours, -1, OUTLINE, 1, cv2.LINE_AA)
    factor = min(TILE[0] / picture.shape[1], TILE[1] / picture.shape[0])
    size = (max(1, int(picture.shape[1] * factor)), max(1, int(picture.shape[0] * factor)))
    picture = cv2.resize(picture, size, interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
    tile = np.zeros((TILE[1], TILE[0], 3), dtype=np.uint8)
    tile[: picture.shape[0], : picture.shape[1]] = picture
    cv2.putText(tile, label, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return tile


def contact_sheet(tiles: list[np.ndarray], title: str) -> np.ndarray:
    columns = 3
    rows = (len(tiles) + columns - 1) // columns
    sheet = np.zeros((rows * TILE[1] + 40, columns * TILE[0], 3), dtype=np.uint8)
    for index, tile in enumerate(tiles):
        r, c = divmod(index, columns)
        sheet[40 + r * TILE[1] : 40 + (r + 1) * TILE[1], c * TILE[0] : (c + 1) * TILE[0]] = tile
    cv2.putText(sheet, title, (10, 28), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
    return sheet


def write_png(path: Path, image: np.ndarray) -> None:
    """Encoded in memory and written by us, not by cv2.imwrite, whose bare False cannot tell a full disk from
    a read-only directory: the error says which it was."""
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode the overlay image ({image.shape}, {image.dtype})")
    try:
        replace_durably(path, encoded.tobytes(), shared=True)
    except OSError as exc:
        raise OSError(exc.errno, f"could not write the overlay image {path}: {exc.strerror}") from exc
