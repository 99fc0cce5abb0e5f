"""Camera drivers: one module per kind of camera rig, all meeting base.CameraDriver."""
