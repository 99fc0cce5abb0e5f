"""`amflow-edge`: the station's command line, one module per group of commands."""

from amflow_edge.cli.main import main

__all__ = ["main"]
