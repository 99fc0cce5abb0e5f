"""What commissioning learns of one station from its own images: the station's light (lamps, learned_light) and
how each camera's empty tray looks; stored beside the calibration, versioned. `learn.py` makes it, `model.py`
stores it, `report.py` shows it."""
