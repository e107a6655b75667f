"""The ``wechat_template`` plugin: WeChat official-account template messages -> the Notifier port (see README.md).

This module holds only the hook and the settings; the client (httpx) lives in :mod:`.notifier`.
"""

from __future__ import annotations

import re
import string
from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from smartpark import hookimpl
from smartpark.config import Secret

__all__ = ["Config", "TemplateConfig", "register_notifiers"]

NAME = "wechat_template"
_LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _check_format(text: str, what: str) -> str:
    try:
        fields = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ValueError(f"{what}: {e}") from None
    for _, name, spec, conversion in fields:
        if name is not None and (not name.isidentifier() or spec or conversion):
            raise ValueError(f"{what}: only {{name}} placeholders are allowed, got {{{name}}}")
    return text


def _check_link(text: str) -> str:
    _check_format(text, "url")
    if urlsplit(text.replace("{", "").replace("}", "")).scheme not in ("http", "https"):
        raise ValueError("url must start with https:// (or http://)")
    return text


class TemplateConfig(BaseModel):
    """One template, when more than its id is needed (``[plugins.wechat_template.templates.NAME]``)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,128}$", description="the template_id from the official account")
    url: str | None = Field(default=None, description='the link opened from the message, e.g. '
                                                      '"https://park.example.com/receipts/{order_id}"')
    data: dict[str, str] | None = Field(
        default=None, description='WeChat data key -> value, a format over the message parameters, e.g. '
                                  '{ car_number1 = "{plate}", time2 = "{minutes}分钟" }; default: the parameters '
                                  'under their own names')

    @field_validator("url")
    @classmethod
    def _url(cls, v: str | None) -> str | None:
        return None if v is None else _check_link(v)

    @field_validator("data")
    @classmethod
    def _data(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None:
            for key, fmt in v.items():
                if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", key):
                    raise ValueError(f"data key {key!r} is not a WeChat template key (e.g. keyword1, thing2)")
                _check_format(fmt, f"data.{key}")
        return v


class Config(BaseModel):
    """Settings under ``[plugins.wechat_template]`` in plugins.toml."""

    model_config = ConfigDict(extra="forbid")

    appid: str = Field(pattern=r"^wx[0-9a-fA-F]{16}$", description="the official account's AppID")
    secret: Secret = Field(description='its AppSecret: { env = "VARIABLE" }')
    base_url: str = Field(default="https://api.weixin.qq.com", description="the API's address (tests: a loopback)")
    use_stable_token: bool = Field(default=True, description="get the token from /cgi-bin/stable_token "
                                                             "(false: the classic /cgi-bin/token)")
    templates: dict[str, str | TemplateConfig] = Field(
        min_length=1, description="our logical template name -> template_id, or a table with id, url and data")
    page_url: str | None = Field(default=None, description="the link for templates without their own url")
    connect_timeout_seconds: float = Field(default=3.0, gt=0, le=60)
    read_timeout_seconds: float = Field(default=5.0, gt=0, le=120)
    token_refresh_margin_seconds: float = Field(default=300.0, ge=0, le=3600,
                                                description="fetch a new access token this long before it expires")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in ("https", "http") or not parts.hostname or parts.query or parts.fragment:
            raise ValueError("base_url must be an http(s) address such as https://api.weixin.qq.com")
        if parts.scheme == "http" and parts.hostname not in _LOOPBACK:
            raise ValueError("base_url may use http:// only on loopback (127.0.0.1, localhost): the AppSecret "
                             "and access tokens must not cross the network unencrypted")
        return v.rstrip("/")

    @field_validator("templates")
    @classmethod
    def _templates(cls, v: dict[str, str | TemplateConfig]) -> dict[str, str | TemplateConfig]:
        for logical, spec in v.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", logical):
                raise ValueError(f"template name {logical!r}: lower-case letters, digits and _ (e.g. entry_reminder)")
            if isinstance(spec, str) and not re.fullmatch(r"[A-Za-z0-9_-]{1,128}", spec):
                raise ValueError(f"template {logical}: {spec!r} does not look like a WeChat template_id")
        return v

    @field_validator("page_url")
    @classmethod
    def _page_url(cls, v: str | None) -> str | None:
        return None if v is None else _check_link(v)


@hookimpl
def register_notifiers(register: Any) -> None:
    register.add(NAME, _factory, Config, description="WeChat official-account template messages")


def _factory(config: Config, context: Any) -> Any:
    """Build the notifier (``context`` is not needed: token expiry runs on the monotonic clock)."""
    return config_to_notifier(config)


def config_to_notifier(config: Config, **kwargs: Any) -> Any:
    """A :class:`~.notifier.WeChatTemplateNotifier` from validated settings (``kwargs``: ``monotonic``,
    ``transport``)."""
    from .notifier import TemplateSpec, WeChatTemplateNotifier

    templates = {
        name: TemplateSpec(template_id=spec) if isinstance(spec, str)
        else TemplateSpec(template_id=spec.id, url=spec.url, data=spec.data)
        for name, spec in config.templates.items()
    }
    return WeChatTemplateNotifier(
        appid=config.appid,
        secret=config.secret.get_secret_value(),
        templates=templates,
        base_url=config.base_url,
        use_stable_token=config.use_stable_token,
        page_url=config.page_url,
        connect_timeout_s=config.connect_timeout_seconds,
        read_timeout_s=config.read_timeout_seconds,
        refresh_margin_s=config.token_refresh_margin_seconds,
        name=NAME,
        **kwargs,
    )
