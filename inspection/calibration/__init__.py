"""Camera calibration for commissioning: the ChArUco board, its detection, the solve and its report."""
