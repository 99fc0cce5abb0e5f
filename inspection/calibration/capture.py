"""`calibrate capture` without the cameras: which pictures to take, in what order, what to ask, what to check.

The rig is reached through three callables (take a picture with every camera, put the board somewhere if
the rig can, ask a person), so the procedure is the same for the mock, pylon and a test, and the
inspection package stays free of drivers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from amflow_edge.common.durable import replace_durably, write_durably
from amflow_edge.inspection.calibration.board import BoardDefinition
from amflow_edge.inspection.calibration.detection import CornerDetector, view_problem
from amflow_edge.inspection.calibration.errors import CalibrationProcedureError
from amflow_edge.inspection.calibration.manifest import (
    EMPTY_DIR,
    MANIFEST,
    CapturedCamera,
    CapturedPlacement,
    CaptureManifest,
    placement_dir,
)

PROMPTS = (
    "place the board flat at the centre of the tray, printed side up, its long side along the tray's long side",
    "prop the board up about 25° along one diagonal of the tray (one corner on a block about 2 cm high)",
    "prop it up about 25° along the other diagonal, a little higher (about 4 cm)",
    "tilt it about 20° the other way along the first diagonal, higher still (about 6 cm)",
    "tilt it about 20° the other way along the second diagonal, low (about 1 cm)",
    "lay it flat again, shifted towards a corner of the tray and turned a little",
)
"""What a person is asked to do per placement; the first, flat one defines the tray frame."""
MIN_PLACEMENTS = 3

Shoot = Callable[[], Mapping[str, np.ndarray]]
"""Take one picture with every camera at once, by camera name."""
Place = Callable[[int | None], str]
"""Put the board at placement N (None: take it away) and say what that is; for rigs that can (the mock)."""
Ask = Callable[[str], None]
"""Show a prompt and wait for the person; raise CalibrationProcedureError when no one can answer."""


class BoardCapture:
    """One capture into a new directory; `ask=None` takes every picture at once and fails on a bad one (--yes)."""

    def __init__(
        self,
        out: Path,
        board: BoardDefinition,
        cameras: Sequence[CapturedCamera],
        driver: str,
        shoot: Shoot,
        place: Place | None,
        ask: Ask | None,
        say: Callable[[str], None],
    ) -> None:
        self.out = out
        self.board = board
        self.cameras = list(cameras)
        self.driver = driver
        self.shoot = shoot
        self.place = place
        self.ask = ask
        self.say = say
        self.detector = CornerDetector(board)

    def run(self, placements: int) -> CaptureManifest:
        if not MIN_PLACEMENTS <= placements <= len(PROMPTS):
            raise CalibrationProcedureError(f"--placements {placements}: take {MIN_PLACEMENTS} … {len(PROMPTS)}")
        if self.place is not None:
            self.place(None)
        self._prompt("empty tray: take everything off the tray (it becomes the commissioning reference), press Enter")
        self._save(EMPTY_DIR, self.shoot())
        self.say(f"{EMPTY_DIR}: taken")
        taken = []
        for index in range(placements):
            instruction = self.place(index) if self.place is not None else PROMPTS[index]
            directory = placement_dir(index)
            self._placement(directory, index, placements, instruction)
            taken.append(CapturedPlacement(directory=directory, instruction=instruction))
        manifest = CaptureManifest(
            captured_at=datetime.now(UTC), driver=self.driver, board=self.board, cameras=self.cameras, placements=taken
        )
        replace_durably(self.out / MANIFEST, (manifest.model_dump_json(indent=2) + "\n").encode())
        return manifest

    def _placement(self, directory: str, index: int, count: int, instruction: str) -> None:
        prompt = f"placement {index + 1} of {count}: {instruction}; let go of it and press Enter"
        while True:
            self._prompt(prompt)
            images = self.shoot()
            problems, counts = [], []
            for camera in self.cameras:
                view = self.detector.detect(images[camera.name])
                counts.append(f"{camera.name} {view.count}")
                problem = view_problem(self.board, view)
                if problem is not None:
                    problems.append(f"{directory}: {camera.name}: {problem}")
            if not problems:
                self._save(directory, images)
                self.say(f"{directory}: corners seen: {', '.join(counts)}")
                return
            if self.ask is None:
                raise CalibrationProcedureError("\n".join(problems) + "\n(--yes: not asking again; fix it and rerun)")
            self.say("\n".join(problems))
            prompt = f"placement {index + 1} again: fix what is said above, let go of the board and press Enter"

    def _prompt(self, text: str) -> None:
        if self.ask is not None:
            self.ask(text)

    def _save(self, directory: str, images: Mapping[str, np.ndarray]) -> None:
        folder = self.out / directory
        folder.mkdir(parents=True, exist_ok=True)
        for camera in self.cameras:
            path = folder / f"{camera.name}.png"
            ok, encoded = cv2.imencode(".png", images[camera.name], [cv2.IMWRITE_PNG_COMPRESSION, 1])
            if not ok:
                raise CalibrationProcedureError(f"{path}: OpenCV could not encode the picture")
            path.unlink(missing_ok=True)
            write_durably(path, encoded.tobytes())
