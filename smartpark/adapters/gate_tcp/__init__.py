"""The ``gate_tcp`` plugin: barrier controllers over TCP, speaking the smartpark gate protocol (see README.md and
docs/gate-protocol.md). The simulator that speaks the same protocol is :mod:`.simulator`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from smartpark import hookimpl
from smartpark.core.errors import ConfigError

from .client import ControllerSpec, GateRejected, TcpGate, UnknownLaneError

__all__ = ["Config", "ControllerConfig", "GateRejected", "TcpGate", "UnknownLaneError", "register_gates"]


class ControllerConfig(BaseModel):
    """One ``[[plugins.gate_tcp.controllers]]`` entry."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="a name for the controller (logs, device health)")
    host: str = Field(min_length=1, description="the controller's address")
    port: int = Field(ge=1, le=65535, description="its TCP port")
    lanes: list[str] = Field(min_length=1, description="the lane ids (from [lot] lanes) it serves")


class Config(BaseModel):
    """Settings under ``[plugins.gate_tcp]`` in plugins.toml."""

    model_config = ConfigDict(extra="forbid")

    controllers: list[ControllerConfig] = Field(min_length=1)
    connect_timeout_s: float = Field(1.0, gt=0, le=30, description="TCP connect, and the hello that must follow")
    reply_timeout_s: float = Field(0.5, gt=0, le=30, description="wait for a reply before re-sending")
    open_deadline_s: float = Field(3.0, gt=0, le=60, description="give up a command (GateTimeout) after this")
    heartbeat_s: float = Field(5.0, gt=0, le=300, description="expected heartbeat interval; 3x silence = offline")
    backoff_initial_s: float = Field(0.1, gt=0, le=60, description="first reconnect delay (doubles, with jitter)")
    backoff_max_s: float = Field(5.0, gt=0, le=300, description="longest reconnect delay")

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        ids = [c.id for c in self.controllers]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"控制器 id 重复 / controller ids repeat: {', '.join(dupes)}")
        seen: dict[str, str] = {}
        for c in self.controllers:
            for lane in c.lanes:
                if lane in seen:
                    raise ValueError(f"车道 {lane} 同时配置在控制器 {seen[lane]} 和 {c.id} / "
                                     f"lane {lane} is listed under both controllers {seen[lane]} and {c.id}")
                seen[lane] = c.id
        if self.open_deadline_s < self.reply_timeout_s:
            raise ValueError("open_deadline_s 不能小于 reply_timeout_s / "
                             "open_deadline_s must be at least reply_timeout_s")
        return self


@hookimpl
def register_gates(register: Any) -> None:
    register.add("gate_tcp", _factory, Config, description="barrier controllers over TCP (smartpark gate protocol v1)")


def _factory(config: Config, context: Any) -> TcpGate:
    """Build the gate; every lane must be one of ``[lot] lanes`` (``context.config.lot.lanes``)."""
    lot = getattr(getattr(context, "config", None), "lot", None)
    known = [lane.id for lane in lot.lanes] if lot is not None else None
    if known is not None:
        for c in config.controllers:
            for lane in c.lanes:
                if lane not in known:
                    raise ConfigError(
                        f"插件 gate_tcp：控制器 {c.id} 的车道 {lane} 不在 [lot] lanes 中（已有车道：{', '.join(known)}）",
                        f"plugin gate_tcp: controller {c.id} lists lane {lane!r}, which is not in [lot] lanes "
                        f"(known lanes: {', '.join(known)})",
                        field="lanes",
                    )
    return config_to_gate(config, clock=getattr(context, "clock", None))


def config_to_gate(config: Config, **kwargs: Any) -> TcpGate:
    """A :class:`TcpGate` from validated settings (``kwargs``: ``clock``, ``on_health``, ``on_state``, ``name``)."""
    return TcpGate(
        [ControllerSpec(id=c.id, host=c.host, port=c.port, lanes=tuple(c.lanes)) for c in config.controllers],
        connect_timeout_s=config.connect_timeout_s,
        reply_timeout_s=config.reply_timeout_s,
        open_deadline_s=config.open_deadline_s,
        heartbeat_s=config.heartbeat_s,
        backoff_initial_s=config.backoff_initial_s,
        backoff_max_s=config.backoff_max_s,
        **kwargs,
    )
