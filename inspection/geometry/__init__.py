"""Cameras, rays and resting poses: the geometry the inspection and the simulator share."""
