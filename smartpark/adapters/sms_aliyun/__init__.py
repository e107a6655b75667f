"""The ``sms_aliyun`` plugin: Aliyun SMS (Dysmsapi SendSms) -> the Notifier port (see README.md).

This module holds only the hook and the settings; the vendor SDK (the ``aliyun`` extra,
``alibabacloud-dysmsapi20170525``) is imported when the plugin is built, so an installation without it can still
list and validate the plugin.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from smartpark import hookimpl
from smartpark.config import Secret

__all__ = ["Config", "register_notifiers"]

NAME = "sms_aliyun"
_LOOPBACK = ("127.0.0.1", "localhost", "::1", "[::1]")


class Config(BaseModel):
    """Settings under ``[plugins.sms_aliyun]`` in plugins.toml."""

    model_config = ConfigDict(extra="forbid")

    access_key_id: str = Field(pattern=r"^[A-Za-z0-9._-]{1,128}$", description="the RAM user's AccessKey id")
    access_key_secret: Secret = Field(description='its AccessKey secret: { env = "VARIABLE" }')
    sign_name: str = Field(min_length=1, max_length=64, description="the approved signature (签名), e.g. 阳光花园物业")
    templates: dict[str, str] = Field(
        min_length=1,
        description="our logical template name -> the approved Aliyun TemplateCode, e.g. entry_reminder = \"SMS_1\"")
    endpoint: str = Field(default="dysmsapi.aliyuncs.com", pattern=r"^[A-Za-z0-9.-]+(:\d{1,5})?$|^\[[0-9a-fA-F:]+\](:\d{1,5})?$",
                          description="host[:port], no scheme")
    protocol: Literal["https", "http"] = Field(default="https", description='"http" only for a loopback endpoint')
    connect_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    read_timeout_seconds: float = Field(default=5.0, gt=0, le=120,
                                        description="a reply later than this leaves the outcome unknown (FAILED)")

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: dict[str, str]) -> dict[str, str]:
        for logical, code in v.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", logical):
                raise ValueError(f"template name {logical!r}: lower-case letters, digits and _ (e.g. entry_reminder)")
            if not re.fullmatch(r"SMS_\d{1,20}", code):
                raise ValueError(f"template {logical}: {code!r} is not an Aliyun TemplateCode (SMS_ and digits)")
        return v

    @model_validator(mode="after")
    def _plain_http_only_on_loopback(self) -> Config:
        host = self.endpoint.rsplit(":", 1)[0] if not self.endpoint.startswith("[") else self.endpoint.split("]")[0] + "]"
        if self.protocol == "http" and host not in _LOOPBACK:
            raise ValueError('protocol = "http" is only allowed for a loopback endpoint (127.0.0.1, localhost): '
                             "phone numbers and message contents must not cross the network unencrypted")
        return self


@hookimpl
def register_notifiers(register: Any) -> None:
    register.add(NAME, _factory, Config, description="Aliyun SMS (Dysmsapi SendSms, official SDK)")


def _factory(config: Config, context: Any) -> Any:
    """Build the notifier (``context`` is not needed: the SDK signs with its own clock)."""
    return config_to_notifier(config)


def config_to_notifier(config: Config, **kwargs: Any) -> Any:
    """An :class:`~.notifier.AliyunSmsNotifier` from validated settings."""
    from .notifier import AliyunSmsNotifier  # ImportError -> ConfigError naming the missing extra (Plugins.build)

    return AliyunSmsNotifier(
        access_key_id=config.access_key_id,
        access_key_secret=config.access_key_secret.get_secret_value(),
        sign_name=config.sign_name,
        templates=config.templates,
        endpoint=config.endpoint,
        protocol=config.protocol,
        connect_timeout_s=config.connect_timeout_seconds,
        read_timeout_s=config.read_timeout_seconds,
        name=NAME,
        **kwargs,
    )
