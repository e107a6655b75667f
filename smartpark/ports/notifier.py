"""Notifier port: one message channel (Aliyun SMS, WeChat template messages, ...)."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..core.outbox import DeliveryResult, DeliveryStatus, Message

__all__ = ["DeliveryResult", "DeliveryStatus", "Message", "Notifier"]


@runtime_checkable
class Notifier(Protocol):
    name: str
    channel: str  # "sms" | "wechat" | ...

    def send(self, message: Message) -> DeliveryResult: ...
