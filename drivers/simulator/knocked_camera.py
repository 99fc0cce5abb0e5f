"""A camera knocked on its bracket, for the drift check's tests and benchmark: the same camera, turned a little.

A bump turns a camera about its mount far more than it shifts it, so the camera is turned about its own vertical
axis with its centre of projection kept, by the angle that moves the view `pixels` at the image centre.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from amflow_edge.inspection.geometry.camera import CameraCalibration


def knocked(calib: CameraCalibration, pixels: float) -> CameraCalibration:
    angle = math.atan(pixels / calib.K[0, 0])
    turn = cv2.Rodrigues(np.array([0.0, angle, 0.0]))[0]
    return CameraCalibration.model_validate(
        calib.model_dump() | {"rotation": (turn @ calib.R).tolist(), "translation": (turn @ calib.t).tolist()}
    )
