"""The HTTP API of a built station: its context, apps and server, made once by build_station."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from amflow_edge.config.station import StationConfig
from amflow_edge.messaging.commands import Handler
from amflow_edge.messaging.events import Events
from amflow_edge.qc.reasons import ReasonCatalogue
from amflow_edge.station.session import SessionKeeper
from amflow_edge.station.state import StationState
from amflow_edge.storage.db import StationDb
from amflow_edge.storage.store import ScanStore
from amflow_edge.web.app import create_app
from amflow_edge.web.auth import Credentials
from amflow_edge.web.context import WebContext
from amflow_edge.web.query import ScanQuery
from amflow_edge.web.requests import HttpRequests
from amflow_edge.web.server import HttpServer
from amflow_edge.web.stream import Broadcaster


def http_server(
    cfg: StationConfig,
    *,
    events: Events,
    store: ScanStore,
    db: StationDb,
    sessions: SessionKeeper,
    reasons: ReasonCatalogue,
    handlers: Mapping[str, Handler],
    state: Callable[[], StationState],
    copies_assigned: Callable[[], dict[str, int]],
    capturing: Callable[[], bool],
) -> tuple[HttpServer, Broadcaster]:
    """The server, and the broadcaster the station tells of its events and states."""
    settings = cfg.http
    broadcaster = Broadcaster()
    scans = ScanQuery(db.path)
    requests = HttpRequests(handlers)
    ctx = WebContext(
        settings=settings,
        timezone=cfg.station.timezone,
        record=events.record,
        directory_of=store.directory_of,
        state=state,
        session=lambda: sessions.current,
        copies_assigned=copies_assigned,
        capturing=capturing,
        thumbnails=cfg.station.state_dir / "thumbnails",
        reasons=reasons,
        scans=scans,
        requests=requests,
        credentials=Credentials(settings, cfg.station.timezone),
        broadcaster=broadcaster,
    )
    apps = [
        (
            "listen",
            settings.listen,
            create_app(ctx, max_body_bytes=settings.max_body_bytes, allowed_hosts=settings.hosts),
        )
    ]
    if settings.read_listen is not None:
        apps.append(
            (
                "read_listen",
                settings.read_listen,
                create_app(ctx, read_only=True, max_body_bytes=settings.max_body_bytes, allowed_hosts=settings.hosts),
            )
        )
    events.listen(broadcaster.scan_event)
    return HttpServer(
        apps, broadcaster, on_stop=scans.close, release=requests.close, trusted_proxies=settings.trusted_proxies
    ), broadcaster
