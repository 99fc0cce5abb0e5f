"""`calibrate capture` without the cameras: which pictures to take, in what order, what to ask, what to check.

The rig is reached through three callables (take a picture with every camera, put the board somewhere if
the rig can, ask a person), so the procedure is the same for the mock, pylon and a test, and the
inspection package stays free of drivers.

Every shot is checked before it is kept, because a bad one is only found at the solve, after the person
has gone: the empty tray must show no board (it becomes the drift check's reference), every camera must see
enough of the board, and each placement must differ from the earlier ones (pressing Enter twice would
give the solve the same view twice and one tilt too few).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from amflow_edge.common.durable import replace_durably, write_durably
from amflow_edge.inspection.calibration.board import BoardDefinition
from amflow_edge.inspection.calibration.detection import CornerDetector, ViewCorners, view_problem
from amflow_edge.inspection.calibration.errors import CalibrationProcedureError
from amflow_edge.inspection.calibration.manifest import (
    EMPTY_DIR,
    MANIFEST,
    CapturedCamera,
    CapturedPlacement,
    CaptureManifest,
    placement_dir,
)
from amflow_edge.inspection.calibration.solve import MIN_PLACEMENTS

FACING = (
    "the printout's top edge (the board's first row) towards cam03 and its left edge towards cam04, as at every "
    "calibration of this station: it fixes which way the tray frame's x (towards cam02) and y (towards cam03) point"
)
"""Which way the flat board faces. The tray frame's y points towards the board's first row (the top of the
printed picture) and x along the rows (left to right on the print); on the station's camera layout (cam01 above,
cam02 … cam05 around the tray: +x, +y, -x, -y) that is the orientation the demo rig and the mock have."""
PROMPTS = (
    "place the board flat at the centre of the tray, printed side up, its long side along the tray's long side, "
    + FACING,
    "prop the board up about 25° along one diagonal of the tray (one corner on a block about 2 cm high)",
    "prop it up about 25° along the other diagonal, a little higher (about 4 cm)",
    "tilt it about 20° the other way along the first diagonal, higher still (about 6 cm)",
    "tilt it about 20° the other way along the second diagonal, low (about 1 cm)",
    "lay it flat again, shifted towards a corner of the tray and turned a little",
)
"""What a person is asked to do per placement; the first, flat one defines the tray frame."""
MAX_PLACEMENTS = len(PROMPTS)
SAME_PLACE_PX = 5.0
"""A camera whose corners moved by less than this (median) since an earlier placement sees the board where it was."""
EMPTY_PROMPT = (
    "empty tray: take everything off the tray (it becomes the commissioning reference). While the board is in your "
    "hands, measure its thickness with its backing (calipers, mm) and set thickness_mm in board.json to it before "
    "`calibrate solve --board board.json` (the tray frame's z = 0 is the tray surface under the board). Press Enter"
)


def placements_problem(placements: int) -> str | None:
    """Why `--placements N` cannot be captured (the solve needs MIN_PLACEMENTS, there are MAX_PLACEMENTS prompts)."""
    if MIN_PLACEMENTS <= placements <= MAX_PLACEMENTS:
        return None
    return (
        f"--placements {placements}: take {MIN_PLACEMENTS} … {MAX_PLACEMENTS} (the solve needs {MIN_PLACEMENTS}; "
        f"there are {MAX_PLACEMENTS} placements to ask for)"
    )


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
        self._taken: list[list[ViewCorners]] = []

    def run(self, placements: int) -> CaptureManifest:
        """Take the empty tray and `placements` placements into `out`; manifest.json is written last, so a capture
        stopped half way (Ctrl-C, a camera lost) leaves pictures the solve refuses, never a short capture."""
        problem = placements_problem(placements)
        if problem is not None:
            raise CalibrationProcedureError(problem)
        if self.place is not None:
            self.place(None)
        self._empty()
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

    def _empty(self) -> None:
        prompt = EMPTY_PROMPT
        while True:
            self._prompt(prompt)
            images = self._shot(EMPTY_DIR)
            seen = [(camera.name, self.detector.detect(images[camera.name]).count) for camera in self.cameras]
            problems = [
                f"{EMPTY_DIR}: {name}: sees {count} ChArUco corner(s): the board (or part of it) is still in view; "
                "take it off the tray and out of every camera's view"
                for name, count in seen
                if count > 0
            ]
            if not problems:
                self._save(EMPTY_DIR, images)
                self.say(f"{EMPTY_DIR}: taken")
                return
            self._retry(problems)
            prompt = "empty tray again: take the board away, then press Enter"

    def _placement(self, directory: str, index: int, count: int, instruction: str) -> None:
        prompt = f"placement {index + 1} of {count}: {instruction}; let go of it and press Enter"
        while True:
            self._prompt(prompt)
            images = self._shot(directory)
            problems, counts, views = [], [], []
            for camera in self.cameras:
                view = self.detector.detect(images[camera.name])
                views.append(view)
                counts.append(f"{camera.name} {view.count}")
                problem = view_problem(self.board, view)
                if problem is not None:
                    problems.append(f"{directory}: {camera.name}: {problem}")
            if not problems and (repeated := self._repeated(views)) is not None:
                problems.append(
                    f"{directory}: the board is where it was for {placement_dir(repeated)} (its corners moved by less "
                    f"than {SAME_PLACE_PX:g} px in most cameras): {instruction}"
                )
            if not problems:
                self._save(directory, images)
                self._taken.append(views)
                self.say(f"{directory}: corners seen: {', '.join(counts)}")
                return
            self._retry(problems)
            prompt = f"placement {index + 1} again: fix what is said above, let go of the board and press Enter"

    def _repeated(self, views: list[ViewCorners]) -> int | None:
        """The earlier placement the board is still (or again) at, seen so by most cameras; None for a new one."""
        for index, earlier in enumerate(self._taken):
            same = sum(_same_place(now, before) for now, before in zip(views, earlier, strict=True))
            if 2 * same > len(self.cameras):
                return index
        return None

    def _retry(self, problems: list[str]) -> None:
        if self.ask is None:
            raise CalibrationProcedureError("\n".join(problems) + "\n(--yes: not asking again; fix it and rerun)")
        self.say("\n".join(problems))

    def _shot(self, directory: str) -> Mapping[str, np.ndarray]:
        images = self.shoot()
        missing = [camera.name for camera in self.cameras if camera.name not in images]
        if missing:
            raise CalibrationProcedureError(
                f"{directory}: the shot has no picture from {', '.join(missing)} (it delivered "
                f"{', '.join(sorted(images)) or 'none'}): check that camera's cable and power (`amflow-edge doctor`, "
                "`amflow-edge cameras list`) and capture again into a new directory"
            )
        return images

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


def _same_place(now: ViewCorners, before: ViewCorners) -> bool:
    """Whether one camera sees the board where it saw it before: most of its corners within SAME_PLACE_PX."""
    _, here, there = np.intersect1d(now.ids, before.ids, return_indices=True)
    if 2 * len(here) < now.count:
        return False
    moved = np.linalg.norm(now.pixels[here] - before.pixels[there], axis=1)
    return bool(np.median(moved) < SAME_PLACE_PX)
