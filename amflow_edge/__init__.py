"""amflow-edge: the edge daemon of an additive-manufacturing part-scanning station."""

__version__ = "0.1.0"
