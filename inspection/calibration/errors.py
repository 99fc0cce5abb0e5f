"""The one error the calibration procedure raises: what is wrong, with which file or camera, and what to do."""

from __future__ import annotations


class CalibrationProcedureError(ValueError):
    """A capture or solve that cannot give a trustworthy calibration; the message names the problem and the fix."""
