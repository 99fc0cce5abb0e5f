"""The running station: how it is built (build.py), started, stopped, and what follows each scan."""
