"""The ``pay_wechat`` plugin: WeChat Pay API v3 through ``wechatpayv3`` -> the PaymentChannel port (see README.md).

This module holds the hook and the settings; the SDK is imported only when the plugin is enabled, so an
installation without the ``wechat`` extra still lists the plugin and fails at start-up with a clear message.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smartpark import hookimpl
from smartpark.config import Secret
from smartpark.core.errors import ConfigError

__all__ = ["Config", "NAME", "register_payment_channels"]

NAME = "pay_wechat"
log = logging.getLogger(__name__)


class Config(BaseModel):
    """Settings under ``[plugins.pay_wechat]`` in plugins.toml."""

    model_config = ConfigDict(extra="forbid")

    mchid: str = Field(pattern=r"^[0-9]{6,32}$", description="merchant id (商户号), e.g. 1230000109")
    appid: str = Field(pattern=r"^wx[0-9A-Za-z]{16}$",
                       description="the official account / mini program app id bound to the merchant (wx...)")
    api_v3_key: Secret = Field(description='APIv3 key (APIv3密钥, 32 characters): { env = "WECHATPAY_API_V3_KEY" }')
    private_key_path: str = Field(min_length=1, description="the merchant API private key apiclient_key.pem; "
                                                            "relative to the data folder")
    cert_serial_no: str = Field(pattern=r"^[0-9A-Fa-f]{8,64}$",
                                description="serial number of the merchant API certificate (商户API证书序列号)")
    platform_public_key_path: str = Field(min_length=1, description="WeChat Pay public key pub_key.pem "
                                                                    "(微信支付公钥); relative to the data folder")
    platform_public_key_id: str = Field(pattern=r"^[0-9A-Za-z_]{1,64}$",
                                        description="its id (微信支付公钥ID), PUB_KEY_ID_...")
    notify_url: str | None = Field(
        default=None, max_length=255,
        description="public https URL of POST /pay/wechat/notify; unset: PaymentRequest.notify_url is used")
    mode: Literal["native", "jsapi", "h5"] = Field(
        default="native", description="native: QR code (code_url); jsapi: inside WeChat; h5: phone browser")
    gateway: str | None = Field(
        default=None,
        description="FOR TESTS ONLY: base URL of a loopback WeChat Pay sandbox "
                    "(python -m smartpark.testing.wechatpay_sandbox). Never set it in production.")
    connect_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    read_timeout_seconds: float = Field(default=15.0, gt=0, le=120)
    notify_max_age_seconds: float = Field(
        default=300.0, ge=0, le=3600,
        description="refuse notifications signed further than this from our clock (replays); 0 disables")

    @field_validator("api_v3_key")
    @classmethod
    def _key_length(cls, v: Any) -> Any:
        if len(v.get_secret_value().encode("utf-8")) != 32:
            raise ValueError("the APIv3 key has exactly 32 characters")
        return v

    @field_validator("notify_url", "gateway")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        parts = urlsplit(v)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError("expected an absolute http(s) URL")
        if parts.query or parts.fragment:
            raise ValueError("WeChat Pay refuses URLs with a query string or fragment")
        return v

    @model_validator(mode="after")
    def _https_in_production(self) -> Config:
        if self.notify_url and self.gateway is None and not self.notify_url.startswith("https://"):
            raise ValueError("notify_url must be https:// (WeChat Pay refuses plain http)")
        if self.gateway is not None and urlsplit(self.gateway).path not in ("", "/"):
            raise ValueError("gateway is a base URL such as http://127.0.0.1:8000 (no path)")
        return self


@hookimpl
def register_payment_channels(register: Any) -> None:
    register.add(NAME, _factory, Config, description="WeChat Pay API v3 (wechatpayv3): Native/JSAPI/H5")


def _read_key(path: Path, what: str, *, private: bool) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"插件 {NAME}：无法读取{what} {path}：{e.strerror}",
                          f"plugin {NAME}: cannot read the {what} {path}: {e.strerror}") from None
    if private and os.name == "posix" and stat.S_IMODE(path.stat().st_mode) & 0o077:
        log.warning("%s %s is readable by other users: chmod 600 it", what, path)
    return data


def _factory(config: Config, context: Any) -> Any:
    """Build the channel; ``context`` supplies ``data_dir`` (relative key paths) and ``clock``."""
    from .channel import WeChatPayChannel  # needs the `wechat` extra (wechatpayv3)

    base = Path(context.data_dir)
    private_key = _read_key(base / Path(config.private_key_path).expanduser(), "merchant private key", private=True)
    public_key = _read_key(base / Path(config.platform_public_key_path).expanduser(), "platform public key",
                           private=False)
    try:
        return WeChatPayChannel(
            mchid=config.mchid,
            appid=config.appid,
            api_v3_key=config.api_v3_key.get_secret_value(),
            private_key_pem=private_key,
            cert_serial_no=config.cert_serial_no.upper(),
            platform_public_key_pem=public_key,
            platform_public_key_id=config.platform_public_key_id,
            notify_url=config.notify_url,
            mode=config.mode,
            connect_timeout=config.connect_timeout_seconds,
            read_timeout=config.read_timeout_seconds,
            max_age_seconds=config.notify_max_age_seconds,
            clock=getattr(context, "clock", None),
            name=NAME,
            gateway=config.gateway,
        )
    except ValueError as e:
        raise ConfigError(f"插件 {NAME} 的密钥有误：{e}", f"plugin {NAME}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the SDK raises bare Exception (e.g. 'failed to load private key.')
        raise ConfigError(f"插件 {NAME} 无法初始化微信支付 SDK：{e}", f"plugin {NAME}: wechatpayv3 refused the settings: {e}") from None
