"""The inspection: five photos, their empty-tray references, the calibration and a design in; a report out.

Knows nothing of MQTT, systemd, the daemon or the simulator, so it can be used and tested on its own.
`inspect.py` is the entry point; `models.py` holds what it finds as plain data; `geometry/` the cameras and rays."""
