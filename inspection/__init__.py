"""Geometry and image work of the station: designs, cameras, rendering, and (later) alignment and metrics.

Knows nothing of MQTT, systemd or the daemon, so it can be used and tested on its own.
"""
