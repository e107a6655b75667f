"""The ``sensors_mqtt`` plugin: per-space occupancy sensors over MQTT (see README.md)."""

from __future__ import annotations

import hashlib
import socket
from datetime import UTC
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smartpark import hookimpl
from smartpark.config import Secret

from .sensor import (
    DEFAULT_DEVICE_PREFIX,
    DEFAULT_TOPIC_PREFIX,
    MqttSpaceSensor,
    OccupancyTracker,
    check_prefix,
    is_valid_id,
)

__all__ = ["Config", "MqttSpaceSensor", "OccupancyTracker", "register_sensors"]

class Config(BaseModel):
    """Settings under ``[plugins.sensors_mqtt]`` in plugins.toml."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", min_length=1, description="MQTT broker host")
    port: int = Field(1883, ge=1, le=65535, description="MQTT broker port")
    username: str | None = Field(None, description="broker user name, if the broker requires one")
    password: Secret | None = Field(None, description='broker password: { env = "VARIABLE" }')
    keepalive_s: int = Field(30, ge=5, le=3600, description="MQTT keep-alive")
    session_expiry_s: int = Field(
        3600, ge=0, le=7 * 24 * 3600,
        description="how long the broker keeps our session, and queues QoS 1 messages, while we are away")
    client_id: str | None = Field(
        None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.-]+$",
        description="the persistent session's name; default derived from the lot, host name and data folder")
    lot: str = Field("main", description="replaces {lot} in the topic prefixes")
    topic_prefix: str = Field(DEFAULT_TOPIC_PREFIX, description="states arrive on {topic_prefix}/{space}/state")
    device_prefix: str = Field(DEFAULT_DEVICE_PREFIX,
                               description="health on {device_prefix}/{device}/status and .../heartbeat")
    spaces: list[str] = Field(default_factory=list, description="spaces known from the start (None until heard)")
    only_known_spaces: bool = Field(False, description="ignore (and log) states of spaces not listed in `spaces`")
    min_hold_ms: int = Field(2000, ge=0, le=600_000, description="debounce hold time; 0 reports every change")
    stale_after_s: float = Field(600, ge=0, description="a space silent this long shows None; 0 never")
    device_offline_after_s: float = Field(900, ge=0, description="a device silent this long is offline; 0 never")
    connect_wait_s: float = Field(5.0, ge=0, le=60, description="how long start() waits for the subscriptions")

    @field_validator("lot")
    @classmethod
    def _valid_lot(cls, v: str) -> str:
        if not is_valid_id(v):
            raise ValueError("expected 1-64 printable characters without / + # or surrounding spaces")
        return v

    @field_validator("spaces")
    @classmethod
    def _valid_spaces(cls, v: list[str]) -> list[str]:
        bad = [s for s in v if not is_valid_id(s)]
        if bad:
            raise ValueError(f"space ids must be 1-64 printable characters without / + # or surrounding spaces: {bad}")
        if len(set(v)) != len(v):
            raise ValueError("space ids must be unique")
        return v

    @field_validator("topic_prefix", "device_prefix")
    @classmethod
    def _valid_prefix(cls, v: str, info: Any) -> str:
        check_prefix(v.replace("{lot}", "main"), info.field_name)  # raises ValueError with the reason
        return v

    @field_validator("only_known_spaces")
    @classmethod
    def _needs_spaces(cls, v: bool, info: Any) -> bool:
        if v and not info.data.get("spaces"):
            raise ValueError("only_known_spaces needs a non-empty `spaces` list")
        return v


@hookimpl
def register_sensors(register: Any) -> None:
    register.add("sensors_mqtt", _factory, Config, description="MQTT occupancy sensors (QoS 1, debounced)")


def default_client_id(lot: str, data_dir: Any) -> str:
    """Stable for one installation (same host and data folder), distinct between installations sharing a broker:
    two services with one client id would take the session from each other in turn."""
    where = f"{socket.gethostname()}|{Path(data_dir).resolve() if data_dir is not None else ''}"
    return f"smartpark-sensors-{lot}-{hashlib.sha256(where.encode()).hexdigest()[:10]}"


def _factory(config: Config, context: Any) -> MqttSpaceSensor:
    """Build the adapter; ``context`` supplies ``clock``, ``data_dir`` (for the default client id) and the lot's
    ``timezone`` (for timestamps without an offset)."""
    from smartpark.infra.mqtt import BrokerSettings

    broker = BrokerSettings(
        host=config.host, port=config.port, username=config.username,
        password=config.password.get_secret_value() if config.password is not None else None,
        keepalive=config.keepalive_s, session_expiry=config.session_expiry_s,
    )
    return MqttSpaceSensor(
        broker, name="sensors_mqtt", lot=config.lot, topic_prefix=config.topic_prefix,
        device_prefix=config.device_prefix, spaces=config.spaces,
        client_id=config.client_id or default_client_id(config.lot, getattr(context, "data_dir", None)),
        only_known_spaces=config.only_known_spaces, min_hold_ms=config.min_hold_ms,
        stale_after_s=config.stale_after_s, device_offline_after_s=config.device_offline_after_s,
        clock=context.clock, tz=getattr(context, "timezone", None) or UTC,
        connect_wait_s=config.connect_wait_s,
    )
