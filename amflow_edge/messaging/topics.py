"""The station's MQTT topic names, derived from the config alone so every part of the daemon agrees."""

from __future__ import annotations

from amflow_edge.config.station import StationConfig


def event_topic(cfg: StationConfig, event: str) -> str:
    return cfg.topic("event", event)


def hook_target(cfg: StationConfig, topic: str) -> str:
    """hook.target: configured, or the URI of the topic the event goes to."""
    configured = cfg.mqtt.hook.target
    return configured if configured else f"mqtt://{cfg.mqtt.host}:{cfg.mqtt.port}/{topic}"
