"""Notifier port: one message channel (Aliyun SMS, WeChat template messages, ...)."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import attrs


class DeliveryStatus(str, enum.Enum):
    SENT = "sent"  # accepted by the provider
    REJECTED = "rejected"  # failed permanently: do not retry (bad number, user not following, ...)
    FAILED = "failed"  # failed temporarily: retry later (flow control, network, ...)


@attrs.frozen(kw_only=True)
class Message:
    id: str  # the outbox id; also the idempotency key
    recipient: str  # phone number or openid, as the channel expects
    template: str  # the logical template name, e.g. "entry_reminder"
    params: Mapping[str, str]
    text: str = ""  # the rendered Chinese text, for logs and channels that send free text


@attrs.frozen(kw_only=True)
class DeliveryResult:
    status: DeliveryStatus
    vendor_code: str = ""
    vendor_message_id: str = ""
    detail: str = ""


@runtime_checkable
class Notifier(Protocol):
    name: str
    channel: str  # "sms" | "wechat" | ...

    def send(self, message: Message) -> DeliveryResult: ...
