"""Outbox messages: notifications written in the transaction that caused them, sent later by a worker.

A message moves ``pending`` → ``sending`` (claimed, with a lease, committed
*before* the provider is called) → ``sent`` / ``retrying`` / ``failed``. A
message found in ``sending`` after its lease ran out is *in doubt* (the worker
died mid-send): it is resolved by asking the provider (SMS ``OutId``) before
anything is sent again, because SendSms is not idempotent. ``dedupe_key`` makes
"once per stay" / "once per transition" facts a store constraint.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import attrs

from .entities import new_id
from .errors import Conflict


class MessageState(str, enum.Enum):
    PENDING = "pending"  # waiting for its first attempt (or for quiet hours to end)
    SENDING = "sending"  # claimed by a worker until ``lease_until``; in doubt if the lease ran out
    SENT = "sent"  # accepted by the provider
    RETRYING = "retrying"  # a temporary failure; next attempt at ``next_attempt_at``
    FAILED = "failed"  # permanent failure, or retries exhausted, or in doubt and not resendable
    CANCELLED = "cancelled"  # an attendant cancelled it, or it was replaced by a fallback


OPEN_STATES = (MessageState.PENDING, MessageState.RETRYING)

_MOVES: dict[MessageState, set[MessageState]] = {
    MessageState.PENDING: {MessageState.SENDING, MessageState.CANCELLED, MessageState.FAILED},
    MessageState.RETRYING: {MessageState.SENDING, MessageState.CANCELLED, MessageState.FAILED},
    MessageState.SENDING: {MessageState.SENT, MessageState.RETRYING, MessageState.FAILED, MessageState.SENDING,
                           MessageState.CANCELLED},
    MessageState.SENT: set(),
    MessageState.FAILED: {MessageState.PENDING},  # `smartpark notifications retry`
    MessageState.CANCELLED: {MessageState.PENDING},
}


@attrs.define(slots=True, eq=False)
class OutboxMessage:
    _id: str
    _dedupe_key: str  # unique: the same fact never queues two messages (e.g. "overtime:<session>:sms")
    _kind: str  # the template name, e.g. "entry_reminder", "lot_full", "device_offline"
    _recipient_kind: str  # "owner" | "visitor" | "attendant"
    _recipient_id: str  # owner/visitor id, or an attendant's configured name
    _channel: str  # "sms" | "wechat" | ...
    _address: str  # phone number or openid (sensitive: stores encrypt it)
    _params: Mapping[str, str]
    _text: str  # the rendered Chinese text
    _created_at: datetime
    _urgent: bool = False  # urgent messages ignore quiet hours
    _state: MessageState = MessageState.PENDING
    _attempts: int = 0
    _next_attempt_at: datetime | None = None  # None: as soon as possible
    _lease_until: datetime | None = None
    _sent_at: datetime | None = None
    _vendor_code: str = ""
    _vendor_message_id: str = ""
    _detail: str = ""
    _fallback_of: str | None = None  # the id of the message this one replaces on another channel
    _updated_at: datetime | None = None
    _version: int = 0

    id = property(lambda self: self._id)
    dedupe_key = property(lambda self: self._dedupe_key)
    kind = property(lambda self: self._kind)
    recipient_kind = property(lambda self: self._recipient_kind)
    recipient_id = property(lambda self: self._recipient_id)
    channel = property(lambda self: self._channel)
    address = property(lambda self: self._address)
    params = property(lambda self: dict(self._params))
    text = property(lambda self: self._text)
    created_at = property(lambda self: self._created_at)
    urgent = property(lambda self: self._urgent)
    state = property(lambda self: self._state)
    attempts = property(lambda self: self._attempts)
    next_attempt_at = property(lambda self: self._next_attempt_at)
    lease_until = property(lambda self: self._lease_until)
    sent_at = property(lambda self: self._sent_at)
    vendor_code = property(lambda self: self._vendor_code)
    vendor_message_id = property(lambda self: self._vendor_message_id)
    detail = property(lambda self: self._detail)
    fallback_of = property(lambda self: self._fallback_of)
    updated_at = property(lambda self: self._updated_at)
    version = property(lambda self: self._version)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, OutboxMessage) and other._id == self._id

    def __hash__(self) -> int:
        return hash(("outbox", self._id))

    @classmethod
    def create(cls, *, dedupe_key: str, kind: str, recipient_kind: str, recipient_id: str, channel: str,
               address: str, params: Mapping[str, str], text: str, at: datetime, urgent: bool = False,
               not_before: datetime | None = None, fallback_of: str | None = None) -> OutboxMessage:
        return cls(id=new_id(), dedupe_key=dedupe_key, kind=kind, recipient_kind=recipient_kind,
                   recipient_id=recipient_id, channel=channel, address=address,
                   params={str(k): str(v) for k, v in params.items()}, text=text, created_at=at, urgent=urgent,
                   next_attempt_at=not_before, fallback_of=fallback_of, updated_at=at)

    def due(self, now: datetime) -> bool:
        return self._state in OPEN_STATES and (self._next_attempt_at is None or self._next_attempt_at <= now)

    def in_doubt(self, now: datetime) -> bool:
        return self._state is MessageState.SENDING and self._lease_until is not None and self._lease_until <= now

    def _move(self, to: MessageState, now: datetime) -> None:
        if to not in _MOVES[self._state]:
            raise Conflict(f"消息状态为「{self._state.value}」，不能变为「{to.value}」",
                           f"message {self._id} cannot go from {self._state.value} to {to.value}")
        self._state, self._updated_at = to, now

    def _claim(self, now: datetime, lease: timedelta) -> None:
        """Take the message for one send attempt (commit this before calling the provider)."""
        self._move(MessageState.SENDING, now)
        self._attempts += 1
        self._lease_until = now + lease

    def _sent(self, now: datetime, *, vendor_code: str = "", vendor_message_id: str = "", detail: str = "") -> None:
        self._move(MessageState.SENT, now)
        self._sent_at, self._lease_until = now, None
        self._vendor_code, self._vendor_message_id, self._detail = vendor_code, vendor_message_id, detail

    def _retry(self, now: datetime, at: datetime, *, vendor_code: str = "", detail: str = "") -> None:
        self._move(MessageState.RETRYING, now)
        self._next_attempt_at, self._lease_until = at, None
        self._vendor_code, self._detail = vendor_code, detail

    def _fail(self, now: datetime, *, vendor_code: str = "", detail: str = "") -> None:
        self._move(MessageState.FAILED, now)
        self._lease_until = None
        self._vendor_code, self._detail = vendor_code, detail

    def _cancel(self, now: datetime, *, detail: str = "") -> None:
        self._move(MessageState.CANCELLED, now)
        self._lease_until = None
        self._detail = detail

    def _requeue(self, now: datetime) -> None:
        """An attendant's retry of a failed or cancelled message."""
        self._move(MessageState.PENDING, now)
        self._next_attempt_at = None

    def _defer(self, now: datetime, until: datetime, detail: str = "") -> None:
        """Not yet (quiet hours, rate limit): stays open, tried again at ``until``."""
        if self._state not in OPEN_STATES:
            raise Conflict("消息不在待发送状态", f"message {self._id} is {self._state.value}")
        self._next_attempt_at, self._updated_at = until, now
        if detail:
            self._detail = detail

    def _bump_version(self) -> None:
        self._version += 1


# == what a notifier (smartpark.ports.notifier.Notifier) takes and returns ===============================
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


def message_fields(m: OutboxMessage) -> dict[str, Any]:
    """The constructor keywords that rebuild ``m`` (stores use it to map rows)."""
    return {f.name.lstrip("_"): getattr(m, f.name) for f in attrs.fields(OutboxMessage)}
