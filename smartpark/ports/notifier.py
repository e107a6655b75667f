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

    # Optional capabilities (checked with ``getattr``; not part of the runtime-checkable protocol):
    #
    # ``lookup(message: Message) -> DeliveryResult | None`` -- ask the provider what became of ``message`` (matched
    # by ``message.id``, which ``send`` passes as the provider's idempotency/correlation id, e.g. Aliyun ``OutId``).
    # The outbox worker calls it for a message whose worker died mid-send, and before retrying a send that got no
    # answer (a timeout) -- *before* ever sending it again:
    #   * ``None``: the provider has no record of it -- it never went out, so it is sent again;
    #   * SENT: it went out (``vendor_message_id`` if known);
    #   * REJECTED: the provider received it but refused it or could not deliver it (not resent);
    #   * FAILED: the answer is unknown right now (network, throttling) -- asked again later.
    # A notifier without ``lookup`` (WeChat template messages) makes an in-doubt message FAILED, never resent.
    #
    # ``timeout_seconds: float`` -- the longest one ``send`` can take; the worker's claim lease is longer.
