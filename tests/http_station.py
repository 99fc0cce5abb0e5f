"""A test station serving its HTTP API on a free loopback port, with a PIN and an integration token."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from amflow_edge.config.loading import load_config
from amflow_edge.station.build import build_station
from amflow_edge.station.station import Station
from tests.station_files import write_station

PIN = "246810"
MES_TOKEN = "mes-integration-token-0123456789abcdef"


def http_station(root: Path, mqtt_port: int, sections: dict[str, dict[str, Any]] | None = None) -> Station:
    """Built, not started; [http] listens on 127.0.0.1:0 with PIN and a static token for operator 'mes'."""
    base: dict[str, dict[str, Any]] = {"http": {"listen": "127.0.0.1:0", "pin": PIN}}
    for name, values in (sections or {}).items():
        base.setdefault(name, {}).update(values)
    path = write_station(root, mqtt_port, base)
    with path.open("a") as toml:
        toml.write(f'\n[[http.operators]]\nname = "mes"\ntoken = "{MES_TOKEN}"\n')
    return build_station(load_config(path))


def base_url(station: Station) -> str:
    assert station.http is not None
    return station.http.addresses[0]
