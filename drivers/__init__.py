"""Camera drivers: one file per kind of camera rig, all meeting drivers.base.CameraDriver."""
