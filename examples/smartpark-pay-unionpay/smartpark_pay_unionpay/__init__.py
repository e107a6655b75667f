"""The ``pay_unionpay`` smartpark plugin: the 银联云闪付 demo provider -> the PaymentChannel port.

An example of a third-party payment channel: a separate distribution with one entry point in the ``smartpark``
group (see this package's ``pyproject.toml``). This module holds the hook and the settings model; the channel
(and its HTTP client) is imported only when the plugin is enabled.

From smartpark it imports only the public surface for plugin authors: ``smartpark.ports`` (the hook marker and the
port types) and ``smartpark.core`` (domain errors); its tests add ``smartpark.testing``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator, model_validator
from smartpark.core.errors import ConfigError
from smartpark.ports.hookspecs import hookimpl

__all__ = ["Config", "NAME", "EnvSecret", "build_channel", "register_payment_channels"]
__version__ = "0.1.0"

#: the name integrators enable in plugins.toml, and the channel's ``name`` (payment attempts record it)
NAME = "pay_unionpay"
DEFAULT_GATEWAY = "https://gateway.unionpay-demo.invalid"
_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


def _from_env(value: Any) -> Any:
    """``{ env = "NAME" }`` -> the variable's value; a secret written into plugins.toml itself is refused."""
    if isinstance(value, SecretStr):
        return value
    if isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str):
        name = value["env"]
        if name not in os.environ:
            raise ValueError(f"environment variable {name} is not set")
        return SecretStr(os.environ[name])
    raise ValueError('secrets are never written in plugins.toml; use { env = "VARIABLE_NAME" }')


#: A secret setting: only ``{ env = "NAME" }`` in the file; a ``SecretStr`` (never printed) in the model.
EnvSecret = Annotated[SecretStr, BeforeValidator(_from_env)]


def _is_loopback(url: str) -> bool:
    return (urlsplit(url).hostname or "") in _LOOPBACK_HOSTS


class Config(BaseModel):
    """Settings under ``[plugins.pay_unionpay]`` in plugins.toml (the README has the table)."""

    model_config = ConfigDict(extra="forbid")

    merchant_id: str = Field(pattern=r"^[0-9]{15}$", description="商户号: 15 digits, e.g. 898310000000001")
    api_key: EnvSecret = Field(description='the merchant API key that signs our requests: { env = "UNIONPAY_API_KEY" }')
    provider_public_key_path: str = Field(
        min_length=1, description="the provider's RSA public key (PEM) that signs replies and notifications; "
                                  "relative to the data folder")
    notify_url: str | None = Field(
        default=None, max_length=256,
        description="public https URL of POST /pay/unionpay/notify; unset: PaymentRequest.notify_url is used")
    gateway: str = Field(default=DEFAULT_GATEWAY,
                         description="the provider's base URL; http:// only for a loopback test provider")
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    read_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    notify_max_age_seconds: float = Field(
        default=300.0, ge=0, le=3600,
        description="refuse notifications signed further than this from our clock (replays); 0 disables")

    @field_validator("api_key")
    @classmethod
    def _key_length(cls, v: SecretStr) -> SecretStr:
        if len(v.get_secret_value()) < 16:
            raise ValueError("the API key has at least 16 characters")
        return v

    @field_validator("notify_url", "gateway")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("expected an absolute http(s) URL")
        if parts.scheme == "http" and not _is_loopback(v):
            raise ValueError("expected https:// (plain http only for 127.0.0.1 / localhost)")
        return v

    @model_validator(mode="after")
    def _gateway_is_a_base_url(self) -> Config:
        if urlsplit(self.gateway).path not in ("", "/"):
            raise ValueError("gateway is a base URL such as https://gateway.example.com (no path)")
        return self


@hookimpl
def register_payment_channels(register: Any) -> None:
    register.add(NAME, build_channel, Config, description="银联云闪付 demo（扫码支付，示例插件）")


def build_channel(config: Config, context: Any) -> Any:
    """The factory: ``context.data_dir`` anchors the key path, ``context.clock`` dates notifications."""
    from .channel import UnionPayChannel  # imported only when enabled: installed is not enabled

    path = Path(context.data_dir) / Path(config.provider_public_key_path).expanduser()
    try:
        pem = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"插件 {NAME}：无法读取云闪付公钥文件 {path}：{e.strerror}",
                          f"plugin {NAME}: cannot read the provider public key {path}: {e.strerror}") from None
    try:
        return UnionPayChannel(
            name=NAME,
            merchant_id=config.merchant_id,
            api_key=config.api_key.get_secret_value().encode("utf-8"),
            provider_public_key_pem=pem,
            gateway=config.gateway,
            notify_url=config.notify_url,
            connect_timeout=config.connect_timeout_seconds,
            read_timeout=config.read_timeout_seconds,
            max_age_seconds=config.notify_max_age_seconds,
            clock=getattr(context, "clock", None),
        )
    except ValueError as e:
        raise ConfigError(f"插件 {NAME} 的公钥有误：{e}", f"plugin {NAME}: {e}") from None
