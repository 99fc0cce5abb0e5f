"""The ChArUco board a station is calibrated with: its definition file, the OpenCV board, the printable picture.

One definition travels from printing to capture to solve (board.json beside the printed picture), so a
board printed with other squares can never be solved as the default one. The default suits the demo rig:
a 300 × 240 mm tray seen from about 600 mm at about 0.17 mm per pixel, printable on A4.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Literal, get_args

import cv2
import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from amflow_edge.common.durable import replace_durably

Dictionary = Literal[
    "DICT_4X4_50",
    "DICT_4X4_100",
    "DICT_4X4_250",
    "DICT_4X4_1000",
    "DICT_5X5_50",
    "DICT_5X5_100",
    "DICT_5X5_250",
    "DICT_5X5_1000",
    "DICT_6X6_50",
    "DICT_6X6_100",
    "DICT_6X6_250",
    "DICT_6X6_1000",
    "DICT_7X7_50",
    "DICT_7X7_100",
    "DICT_7X7_250",
    "DICT_7X7_1000",
]
DICTIONARIES: tuple[str, ...] = get_args(Dictionary)
MM_PER_INCH = 25.4


class BoardError(ValueError):
    """A board definition or picture that cannot be used; the message names the file and the fix."""


class BoardDefinition(BaseModel):
    """A ChArUco board as printed (board.json). Corners and markers follow OpenCV's CharucoBoard layout."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    squares_x: int = Field(default=12, ge=3, le=40, description="Chessboard squares along the board's long side.")
    squares_y: int = Field(default=9, ge=3, le=40, description="Chessboard squares along the board's short side.")
    square_mm: float = Field(
        default=18.0, gt=2.0, le=200.0, description="Side of one chessboard square as printed, in mm (measure it)."
    )
    marker_mm: float = Field(
        default=13.0, gt=1.0, le=200.0, description="Side of one ArUco marker inside a white square, in mm."
    )
    dictionary: Dictionary = Field(
        default="DICT_5X5_100", description="OpenCV predefined ArUco dictionary the markers are drawn from."
    )
    thickness_mm: float = Field(
        default=0.0,
        ge=0.0,
        le=30.0,
        description="Measured thickness of the board with its backing, in mm: the printed surface lies this far above "
        "the tray when the board lies flat, and the tray frame's z = 0 is the tray surface. 0 only for bare paper "
        "lying on the tray; measure a glued board and set it before `calibrate solve`.",
    )

    @model_validator(mode="after")
    def _fits(self) -> BoardDefinition:
        if self.marker_mm > 0.9 * self.square_mm:
            raise ValueError(
                f"marker_mm {self.marker_mm:g} leaves no white border in a {self.square_mm:g} mm square; "
                f"make it at most {0.9 * self.square_mm:g} mm (about 0.7 × square_mm is usual)"
            )
        markers = self.squares_x * self.squares_y // 2
        available = int(self.dictionary.rsplit("_", 1)[1])
        if markers > available:
            raise ValueError(
                f"{self.squares_x}×{self.squares_y} squares need {markers} markers but {self.dictionary} has "
                f"{available}; pick a larger dictionary (e.g. {self.dictionary.rsplit('_', 1)[0]}_250)"
            )
        return self

    @property
    def size_mm(self) -> tuple[float, float]:
        return self.squares_x * self.square_mm, self.squares_y * self.square_mm

    @property
    def corner_count(self) -> int:
        return (self.squares_x - 1) * (self.squares_y - 1)

    def printed_pattern(self) -> BoardDefinition:
        """The board as the cameras' pictures show it: everything but the thickness, which only a ruler sees (and
        may be measured after the capture)."""
        return self.model_copy(update={"thickness_mm": 0.0})

    def cv_board(self) -> cv2.aruco.CharucoBoard:
        dictionary = cv2.aruco.getPredefinedDictionary(getattr(cv2.aruco, self.dictionary))
        return cv2.aruco.CharucoBoard((self.squares_x, self.squares_y), self.square_mm, self.marker_mm, dictionary)

    def corners_board(self) -> np.ndarray:
        """(N,3) inner chessboard corners in the board frame (OpenCV: x along a row, y down the rows, z into the
        board, origin at the outer corner of the first square), indexed as the detector's corner ids."""
        return np.asarray(self.cv_board().getChessboardCorners(), dtype=np.float64).reshape(-1, 3)

    def board_to_tray_flat(self) -> np.ndarray:
        """4×4 board→tray transform of the board lying flat and defining the tray frame.

        The tray frame is the board frame of the flat placement turned face up and centred, then lowered by the
        board's thickness: origin under the board's centre on the tray's top surface (where the parts inspected
        later lie, and what the inspection's "lying on the tray" is measured from), x along the board's rows,
        y towards its first row (OpenCV's -y), z up out of the print (OpenCV's -z). The printed surface, which is
        what the cameras see, is at z = thickness_mm.
        """
        width, height = self.size_mm
        transform = np.diag([1.0, -1.0, -1.0, 1.0])
        transform[:3, 3] = [-width / 2, height / 2, self.thickness_mm]
        return transform

    def texture(self, mm_per_px: float, margin_mm: float = 0.0) -> np.ndarray:
        """The board as a Mono8 picture at `mm_per_px`, squares starting `margin_mm` from the picture's edge."""
        width, height = self.size_mm
        size = (round(width / mm_per_px), round(height / mm_per_px))
        image = self.cv_board().generateImage(size, marginSize=0, borderBits=1)
        margin = round(margin_mm / mm_per_px)
        return cv2.copyMakeBorder(image, margin, margin, margin, margin, cv2.BORDER_CONSTANT, value=255)


def load_board(path: Path) -> BoardDefinition:
    """Read board.json; any problem names the file and the fix."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BoardError(
            f"{path}: cannot read the board definition ({exc.strerror}); give the board.json written beside "
            "the printed board by `amflow-edge calibrate board`"
        ) from None
    try:
        return BoardDefinition.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(whole file)'}: {e['msg']}" for e in exc.errors(include_url=False)
        )
        raise BoardError(f"{path}: not a board definition ({problems}); regenerate it with `calibrate board`") from None


def board_file_beside(picture: Path) -> Path:
    return picture.with_suffix(".json")


def write_board(board: BoardDefinition, out: Path, dpi: int) -> Path:
    """Write the printable picture at true scale and board.json beside it; returns the json.

    Pillow records the resolution in the file (a PNG's pHYs, a PDF's page size), so a print dialog at 100 %
    prints true millimetres.
    """
    suffix = out.suffix.lower()
    if suffix not in (".png", ".pdf"):
        raise BoardError(f"{out}: a board is written as .png or .pdf; use --out board.png or --out board.pdf")
    mm_per_px = MM_PER_INCH / dpi
    margin_mm = max(board.square_mm / 2, 5.0)
    picture = Image.fromarray(board.texture(mm_per_px, margin_mm))
    encoded = io.BytesIO()
    if suffix == ".png":
        picture.save(encoded, format="PNG", dpi=(dpi, dpi))
    else:
        picture.save(encoded, format="PDF", resolution=float(dpi), title="amflow-edge ChArUco calibration board")
    out.parent.mkdir(parents=True, exist_ok=True)
    replace_durably(out, encoded.getvalue())
    definition = board_file_beside(out)
    replace_durably(definition, (json.dumps(board.model_dump(mode="json"), indent=2) + "\n").encode())
    return definition
