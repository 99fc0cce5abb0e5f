"""What the HTTP API needs from the station, handed over once by build_station.

Plain callables and values, not the Station: the web package reads through the same functions the station
uses (the scan record, where its files are, the state, the session) and writes only through the request
handlers, so it can neither bypass a rule nor import the station's wiring back (an import cycle).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from amflow_edge.config.http import HttpSettings
from amflow_edge.qc.reasons import ReasonCatalogue
from amflow_edge.station.session import ScanningSession
from amflow_edge.station.state import StationState
from amflow_edge.storage.record import ScanRecord
from amflow_edge.web.auth import Credentials
from amflow_edge.web.query import ScanQuery
from amflow_edge.web.requests import HttpRequests
from amflow_edge.web.stream import Broadcaster


@dataclass(frozen=True)
class WebContext:
    settings: HttpSettings
    timezone: str
    record: Callable[[str], ScanRecord | None]
    """The scan as stored (Events.record); None for an unknown scan."""
    directory_of: Callable[[ScanRecord], Path]
    """Where its files are now: the data root, or the backup disk once moved (ScanStore.directory_of)."""
    state: Callable[[], StationState]
    session: Callable[[], ScanningSession]
    copies_assigned: Callable[[], dict[str, int]]
    capturing: Callable[[], bool]
    """True while the station takes a scan (CaptureLoop.capturing): image downloads wait for it to end."""
    thumbnails: Path
    """Where downscaled images are kept (<state_dir>/thumbnails): made once, sent many times."""
    reasons: ReasonCatalogue
    scans: ScanQuery
    requests: HttpRequests
    credentials: Credentials
    broadcaster: Broadcaster
