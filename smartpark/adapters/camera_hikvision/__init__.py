"""The ``camera_hikvision`` plugin: Hikvision ISAPI ANPR cameras -> the Recognizer port (see README.md).

Three ways in, one path through: the camera POSTs ``EventNotificationAlert`` to our HTTP route (listening
mode), an edge bridge relays the same bytes to MQTT, or we hold the camera's ``alertStream`` open (arming
mode). This module holds only the hook and the settings; paho-mqtt and httpx are imported by the adapter
when the settings ask for them.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smartpark import hookimpl
from smartpark.config import Secret
from smartpark.core.errors import ConfigError

from .parse import DEFAULT_MAX_BYTES

__all__ = ["AlertStreamConfig", "CameraConfig", "Config", "MqttRelayConfig", "register_recognizers"]

NAME = "camera_hikvision"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CameraConfig(_Strict):
    """One camera (``[[plugins.camera_hikvision.cameras]]``)."""

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,32}$", description="our name for the camera: URL, topic, file names")
    lane: str = Field(min_length=1, description="the lane it reads, one of [lot] lanes")
    ip: str | None = Field(default=None, pattern=r"^[A-Za-z0-9.:\[\]_-]{1,64}$",
                           description="camera address; needed for the alert stream and for check_client_ip")
    port: int = Field(default=80, ge=1, le=65535, description="camera HTTP port (alert stream)")
    channel: int | None = Field(default=None, ge=0, le=4096,
                                description="channelID of this camera on a shared stream (an NVR)")
    forward: Literal["in", "out"] | None = Field(
        default=None, description='where a vehicle reported "forward" goes; default: the lane\'s direction')
    offline_after_seconds: float | None = Field(
        default=None, ge=0, description="overrides the plugin-wide value for this camera; 0 never marks it offline")


class MqttRelayConfig(_Strict):
    """``[plugins.camera_hikvision.mqtt]``: the edge relay publishes the camera's raw payloads."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(default=1883, ge=1, le=65535)
    topic: str = Field(default="smartpark/cameras/{camera}/events",
                       description="one topic per camera; {camera} is the camera id")
    username: str | None = None
    password: Secret | None = None
    client_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$",
                                  description="stable id for the persistent session; default derived from data_dir")
    persistent: bool = Field(default=True, description="keep a session so QoS 1 events wait for us while we are away")
    session_expiry_s: int = Field(
        default=3600, ge=0, le=7 * 24 * 3600,
        description="how long the broker keeps the session, and queues QoS 1 events, while this instance is away "
                    "(a dead instance's events wait in it: see docs/scaling.md)")
    shared_group: str | None = Field(
        default=None, pattern=r"^[A-Za-z0-9_-]{1,32}$",
        description="MQTT v5 shared subscription group: several service instances with the same group share the "
                    "camera topics, each event going to one of them ($share/<group>/<topic>)")

    @field_validator("topic")
    @classmethod
    def _topic(cls, v: str) -> str:
        if v.count("{camera}") != 1:
            raise ValueError("the topic needs exactly one {camera} placeholder")
        if any(ch in v for ch in "+#") or not v.strip("/"):
            raise ValueError("the topic template may not contain MQTT wildcards (+ #)")
        if re.search(r"\{(?!camera\})", v):
            raise ValueError("only the {camera} placeholder is allowed")
        return v


class AlertStreamConfig(_Strict):
    """``[plugins.camera_hikvision.alert_stream]``: arming mode, we hold the camera's event stream open."""

    enabled: bool = False
    username: str = "admin"
    password: Secret | None = None
    scheme: Literal["http", "https"] = "http"
    verify_tls: bool = True
    path: str = Field(default="/ISAPI/Event/notification/alertStream", pattern=r"^/[A-Za-z0-9/_.-]*$")
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    read_timeout_seconds: float = Field(default=60.0, gt=0, le=3600,
                                        description="silence after which the connection is dropped and remade")
    reconnect_min_seconds: float = Field(default=1.0, gt=0, le=600, description="first retry delay, doubled each time")
    reconnect_max_seconds: float = Field(default=30.0, gt=0, le=3600)

    @model_validator(mode="after")
    def _password_when_enabled(self) -> AlertStreamConfig:
        if self.enabled and self.password is None:
            raise ValueError('the alert stream needs password = { env = "..." } (Digest auth)')
        return self


class Config(_Strict):
    """Settings under ``[plugins.camera_hikvision]`` in plugins.toml."""

    cameras: list[CameraConfig] = Field(min_length=1)
    http_path: str = Field(default="/devices/hikvision/{camera}",
                           description="listening-mode URL path; {camera} is the camera id")
    mqtt: MqttRelayConfig = Field(default_factory=MqttRelayConfig)
    alert_stream: AlertStreamConfig = Field(default_factory=AlertStreamConfig)
    dedupe_seconds: float = Field(default=10.0, ge=0, le=3600,
                                  description="the same plate on the same lane within this window is one read")
    offline_after_seconds: float = Field(default=90.0, ge=0,
                                         description="no message for this long -> offline; 0 disables")
    max_body_bytes: int = Field(default=DEFAULT_MAX_BYTES, ge=4096, le=64 * 1024 * 1024)
    save_pictures: bool = True
    pictures_dir: str = Field(default="pictures", min_length=1, description="relative to the data folder")
    max_clock_skew_seconds: float | None = Field(
        default=300.0, ge=0, description="camera times further than this from ours are replaced by the receive time")
    check_client_ip: bool = Field(default=False,
                                  description="refuse listening POSTs from another address than the camera's ip")

    @field_validator("http_path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or v.count("{camera}") != 1 or re.search(r"\{(?!camera\})", v):
            raise ValueError("http_path must start with / and contain exactly one {camera}")
        return v

    @field_validator("cameras")
    @classmethod
    def _unique(cls, v: list[CameraConfig]) -> list[CameraConfig]:
        ids = [c.id for c in v]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"camera ids must be unique; repeated: {', '.join(dupes)}")
        return v

    @model_validator(mode="after")
    def _stream_needs_ip(self) -> Config:
        if self.alert_stream.enabled and not any(c.ip for c in self.cameras):
            raise ValueError("alert_stream is enabled but no camera has an ip")
        return self


@hookimpl
def register_recognizers(register: Any) -> None:
    register.add(NAME, _factory, Config, description="Hikvision ISAPI ANPR cameras (HTTP push, MQTT relay, alert stream)")


def _factory(config: Config, context: Any) -> Any:
    """Build the recognizer; ``context`` supplies ``data_dir``, ``clock`` and ``config`` (the lot's lanes, zone)."""
    from zoneinfo import ZoneInfo

    from .recognizer import HikvisionRecognizer

    # fail at start-up (Plugins.build turns ImportError into ConfigError), not when start() runs
    if config.mqtt.enabled:
        import smartpark.infra.mqtt  # noqa: F401
    if config.alert_stream.enabled:
        import httpx  # noqa: F401

    lanes = {lane.id: lane.direction for lane in context.config.lot.lanes}
    for cam in config.cameras:
        if cam.lane not in lanes:
            known = ", ".join(lanes) or "（无）"
            raise ConfigError(
                f"插件 {NAME}：摄像机 {cam.id} 的车道 {cam.lane!r} 不存在，[lot] 中的车道为：{known}",
                f"plugin {NAME}: camera {cam.id} is on lane {cam.lane!r}, which is not one of the [lot] lanes ({known})",
            )
    return HikvisionRecognizer(
        config,
        lanes=lanes,
        clock=context.clock,
        data_dir=context.data_dir,
        tz=ZoneInfo(context.config.lot.timezone),
    )
