"""The ``pay_alipay`` plugin: Alipay face-to-face payment (当面付) -> the PaymentChannel port (see README.md).

This module holds only the hook and the settings; python-alipay-sdk is imported by the factory, so a missing
``smartpark[alipay]`` extra is reported when the plugin is enabled, not when it is merely installed.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smartpark import hookimpl
from smartpark.config import Secret
from smartpark.core.errors import ConfigError

__all__ = ["Config", "NAME", "register_payment_channels"]

NAME = "pay_alipay"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Config(BaseModel):
    """Settings under ``[plugins.pay_alipay]`` in plugins.toml."""

    model_config = ConfigDict(extra="forbid")

    app_id: str = Field(pattern=r"^[0-9]{8,32}$", description="the application's APPID from the Alipay console")
    app_private_key_path: str | None = Field(
        default=None, min_length=1,
        description="the app private key (应用私钥): PEM (PKCS#1 or PKCS#8) or the bare base64 the Alipay key "
                    "tool writes; relative to the data folder")
    app_private_key: Secret | None = Field(
        default=None, description='instead of a file: { env = "ALIPAY_APP_PRIVATE_KEY" } holding the same text')
    alipay_public_key_path: str = Field(
        min_length=1, description="the Alipay public key (支付宝公钥, not the app's own): PEM or bare base64; "
                                  "relative to the data folder")
    notify_url: str | None = Field(
        default=None, description="the public URL Alipay POSTs notifies to; default [gate] public_url + notify_path")
    notify_path: str = Field(default="/pay/alipay/notify", pattern=r"^/[A-Za-z0-9/_.-]*$",
                             description="the path of the notify route the service mounts")
    seller_id: str | None = Field(default=None, pattern=r"^2088[0-9]{12}$",
                                  description="the merchant PID; when set, notifies for another seller are refused")
    timeout_seconds: float = Field(default=15.0, gt=0, le=120,
                                   description="one timeout for connecting and reading (the SDK's urlopen has one)")
    sandbox: bool = Field(default=False, description="use Alipay's public sandbox (openapi-sandbox.dl.alipaydev.com)"
                                                     " with sandbox APPID and keys; never in tests here")
    gateway: str | None = Field(
        default=None, description="TESTS ONLY: a loopback gateway URL such as smartpark.testing.alipay_sandbox's; "
                                  "anything but 127.0.0.1/::1/localhost is refused")

    @field_validator("notify_url")
    @classmethod
    def _notify_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("notify_url must be an absolute http(s) URL Alipay can reach")
        return v

    @field_validator("gateway")
    @classmethod
    def _gateway(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not _is_loopback(parts.hostname or ""):
            raise ValueError("gateway is for tests only: a loopback URL (127.0.0.1, ::1, localhost); production "
                             "uses Alipay's own gateway")
        return v

    @model_validator(mode="after")
    def _one_key_and_one_gateway(self) -> Config:
        if (self.app_private_key_path is None) == (self.app_private_key is None):
            raise ValueError("set exactly one of app_private_key_path and app_private_key")
        if self.sandbox and self.gateway:
            raise ValueError("sandbox and gateway exclude each other")
        return self


@hookimpl
def register_payment_channels(register: Any) -> None:
    register.add(NAME, _factory, Config, description="Alipay face-to-face payment (当面付, QR code) via python-alipay-sdk")


def _read(path: str, base: Path, what: str) -> str:
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(base) / p
    try:
        return p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"插件 {NAME}：无法读取{what}文件 {p}：{e}", f"plugin {NAME}: cannot read the {what} {p}: {e}")


def _factory(config: Config, context: Any) -> Any:
    """Build the channel; ``context`` supplies ``data_dir``, ``clock`` and ``config`` ([gate] public_url)."""
    from .channel import AlipayChannel  # imports python-alipay-sdk (the alipay extra)

    base = Path(context.data_dir)
    if config.app_private_key is not None:
        private = config.app_private_key.get_secret_value()
    else:
        private = _read(config.app_private_key_path or "", base, "app private key")
    public = _read(config.alipay_public_key_path, base, "Alipay public key")
    notify_url = config.notify_url
    if notify_url is None:
        notify_url = context.config.gate.public_url.rstrip("/") + config.notify_path
    try:
        return AlipayChannel(
            app_id=config.app_id,
            app_private_key=private,
            alipay_public_key=public,
            notify_url=notify_url,
            notify_path=config.notify_path,
            seller_id=config.seller_id,
            timeout_seconds=config.timeout_seconds,
            sandbox=config.sandbox,
            gateway=config.gateway,
            name=NAME,
            clock=context.clock,
        )
    except ValueError as e:
        raise ConfigError(f"插件 {NAME} 的密钥设置有误：{e}", f"plugin {NAME}: {e}") from None
