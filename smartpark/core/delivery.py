"""Delivery: the outbox worker that sends queued notifications, each at most once per claim and never twice.

:class:`OutboxWorker.run_once` does one pass:

1. **In-doubt messages first** -- ``sending`` with an expired lease: a worker died (or hung) between claiming a
   message and recording the provider's answer, so nobody knows whether it went out. If the channel's notifier
   offers ``lookup(message)`` (Aliyun SMS: QuerySendDetails by ``OutId``) the provider is asked: sent -> SENT;
   not there -> sent again (RETRYING, due now); unknown -> asked again later, and after ``in_doubt_give_up``
   the message is FAILED. Without ``lookup`` (WeChat) it is FAILED at once with a detail that says so: a second
   send is never risked; an attendant may resend it (``smartpark notifications retry``).
2. **Due messages** (pending/retrying, ``next_attempt_at`` passed), oldest first: quiet hours (non-urgent ones
   wait for their end), the rate limit per recipient (non-urgent ones wait), then **claim** -- ``sending`` with
   a lease, saved version-checked and committed *before* the provider is called, so of two workers only one
   gets a message (the other's save raises ``Conflict`` and it moves on) -- then send, then record the answer
   in a new transaction: SENT; REJECTED -> FAILED (a WeChat message to an owner with a phone falls back to an SMS
   when ``fallback_to_sms``); FAILED (temporary, or the notifier raised) -> RETRYING with exponential backoff,
   FAILED after ``max_attempts``.

Only the standard library, attrs and the core: the notifiers arrive as objects with ``channel`` and ``send``
(see :mod:`smartpark.ports.notifier`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, time, timedelta, tzinfo
from typing import Any

import attrs

from .errors import Conflict, NotFound, ValidationError
from .outbox import DeliveryResult, DeliveryStatus, Message, MessageState, OutboxMessage

__all__ = ["DEFAULT_BACKOFF", "IN_DOUBT_NO_LOOKUP_ZH", "DeliveryPolicy", "DeliveryReport", "OutboxWorker",
           "masked_address", "parse_quiet_hours", "state_zh"]

log = logging.getLogger(__name__)

#: The wait before attempt 2, 3, ...: 30 s, 2 min, 10 min, 30 min, then 2 h for every later one.
DEFAULT_BACKOFF: tuple[timedelta, ...] = (timedelta(seconds=30), timedelta(minutes=2), timedelta(minutes=10),
                                          timedelta(minutes=30), timedelta(hours=2))

IN_DOUBT_NO_LOOKUP_ZH = "状态不明，未自动重发（可手动重发）"
IN_DOUBT_GAVE_UP_ZH = "状态不明（服务商查询无结果），未自动重发（可手动重发）"

_QUIET = re.compile(r"^\s*([01]?\d|2[0-3]):([0-5]\d)\s*-\s*([01]?\d|2[0-3]):([0-5]\d)\s*$")


def parse_quiet_hours(text: str | None) -> tuple[time, time] | None:
    """``"22:00-07:00"`` -> ``(22:00, 07:00)``; ``""`` or ``None`` -> ``None`` (no quiet hours)."""
    if not text or not text.strip():
        return None
    m = _QUIET.match(text)
    if m is None:
        raise ValidationError(f"免打扰时段格式应为“22:00-07:00”，而不是“{text}”",
                              f"quiet hours must look like 22:00-07:00, not {text!r}", field="quiet_hours")
    start, end = time(int(m[1]), int(m[2])), time(int(m[3]), int(m[4]))
    if start == end:
        raise ValidationError("免打扰时段的开始与结束不能相同", "quiet hours must not start and end at the same time",
                              field="quiet_hours")
    return start, end


@attrs.frozen(kw_only=True)
class DeliveryPolicy:
    """How the worker delivers. ``rate_limit_per_hour`` 0 means no limit."""

    quiet_hours: tuple[time, time] | None = None  # local times in ``timezone``; may wrap midnight
    timezone: tzinfo = UTC
    rate_limit_per_hour: int = 0
    fallback_to_sms: bool = True
    backoff: tuple[timedelta, ...] = DEFAULT_BACKOFF
    max_attempts: int = 6
    #: How long a claim holds a message; longer than a send can take (the notifiers' timeouts), else a slow send
    #: is taken for a dead worker's.
    lease: timedelta = timedelta(seconds=60)
    #: An in-doubt message whose provider status stays unknown is asked again after this ...
    lookup_interval: timedelta = timedelta(seconds=30)
    #: ... and FAILED (not resent) this long after its lease ran out.
    in_doubt_give_up: timedelta = timedelta(hours=1)
    batch: int = 50

    def quiet_until(self, now: datetime) -> datetime | None:
        """The end of the quiet hours ``now`` falls in, or ``None`` when ``now`` is not in quiet hours."""
        if self.quiet_hours is None:
            return None
        start, end = self.quiet_hours
        local = now.astimezone(self.timezone)
        t = local.timetz().replace(tzinfo=None)
        inside = (start <= t < end) if start < end else (t >= start or t < end)
        if not inside:
            return None
        day = local.date() if t < end else local.date() + timedelta(days=1)
        return datetime.combine(day, end, tzinfo=self.timezone).astimezone(UTC)

    def backoff_after(self, attempts: int) -> timedelta:
        """The wait after the ``attempts``-th failed attempt (1-based)."""
        if not self.backoff:
            return timedelta(0)
        return self.backoff[min(max(attempts, 1), len(self.backoff)) - 1]


@attrs.define
class DeliveryReport:
    """What one :meth:`OutboxWorker.run_once` did (counts of messages)."""

    sent: int = 0
    retrying: int = 0
    failed: int = 0
    fallbacks: int = 0
    deferred: int = 0
    skipped: int = 0  # claimed or changed by another worker meanwhile
    in_doubt_resolved: int = 0
    in_doubt_pending: int = 0

    @property
    def worked(self) -> int:
        """Messages whose state changed in this pass."""
        return self.sent + self.retrying + self.failed + self.fallbacks + self.deferred + self.in_doubt_resolved


class OutboxWorker:
    """Sends outbox messages through the notifiers, one channel each (``notifiers``: any iterable of notifier
    objects or a mapping of them; the first notifier of a channel serves it)."""

    def __init__(self, store: Any, clock: Any, notifiers: Mapping[str, Any] | Iterable[Any],
                 policy: DeliveryPolicy | None = None, *, name: str = "outbox") -> None:
        self._store = store
        self._clock = clock
        items = notifiers.values() if isinstance(notifiers, Mapping) else notifiers
        self._channels: dict[str, Any] = {}
        for n in items:
            self._channels.setdefault(str(getattr(n, "channel", "")), n)
        self.policy = policy or DeliveryPolicy()
        self.name = name
        self._next_lookup: dict[str, datetime] = {}

    @property
    def channels(self) -> Sequence[str]:
        return sorted(self._channels)

    # -- the pass -------------------------------------------------------------------------------------------
    def run_once(self, now: datetime | None = None) -> DeliveryReport:
        report = DeliveryReport()
        now = now or self._clock.now()
        with self._store.unit_of_work() as uow:
            doubtful = uow.outbox.in_doubt(now, self.policy.batch)
        for m in doubtful:
            self._resolve_in_doubt(m, now, report)
        with self._store.unit_of_work() as uow:
            due = uow.outbox.due(now, self.policy.batch)
        for m in due:
            self._deliver(m, now, report)
        return report

    def run_until_idle(self, *, max_passes: int = 1000) -> int:
        """Run passes until nothing is due now (messages waiting for later stay queued); returns messages sent."""
        sent = 0
        for _ in range(max_passes):
            report = self.run_once()
            sent += report.sent
            if report.worked == 0:
                break
        return sent

    def pending(self) -> int:
        """Open or in-flight messages (pending, retrying, sending)."""
        with self._store.unit_of_work() as uow:
            counts = uow.outbox.count_by_state()
        return sum(counts.get(s.value, 0) for s in (MessageState.PENDING, MessageState.RETRYING,
                                                    MessageState.SENDING))

    # -- attendants' view and actions ------------------------------------------------------------------------
    def messages(self, *, state: MessageState | str | None = None, limit: int = 50) -> list[OutboxMessage]:
        """Newest first."""
        wanted = MessageState(state) if isinstance(state, str) else state
        with self._store.unit_of_work() as uow:
            return uow.outbox.list(state=wanted, limit=limit)

    def retry(self, message_id: str, *, actor: str) -> OutboxMessage:
        """Queue a failed or cancelled message again (audited); it is sent on the next pass."""
        now = self._clock.now()
        with self._store.unit_of_work() as uow:
            m = uow.outbox.get(message_id)
            if m is None:
                raise NotFound(f"找不到消息 {message_id}", f"no outbox message {message_id}")
            if m.state not in (MessageState.FAILED, MessageState.CANCELLED):
                raise Conflict(f"消息状态为「{_STATE_ZH[m.state]}」，只有发送失败或已取消的消息可以重发",
                               f"message {m.id} is {m.state.value}; only failed or cancelled messages can be retried")
            before = m.state.value
            m._requeue(now)
            uow.outbox.save(m)
            uow.audit.append(at=now, actor=actor, action="notification.retry", subject=f"outbox:{m.id}",
                             details={"from": before, "channel": m.channel, "kind": m.kind})
        log.info("outbox: message %s (%s, %s) queued again by %s", m.id, m.kind, m.channel, actor)
        return m

    # -- in doubt --------------------------------------------------------------------------------------------
    def _resolve_in_doubt(self, m: OutboxMessage, now: datetime, report: DeliveryReport) -> None:
        notifier = self._channels.get(m.channel)
        lookup = getattr(notifier, "lookup", None) if notifier is not None else None
        if lookup is None:
            why = "no notifier for its channel" if notifier is None else f"{notifier.name} cannot look messages up"
            self._record(m, now, report, lambda x: x._fail(now, detail=IN_DOUBT_NO_LOOKUP_ZH))
            log.warning("outbox: message %s (%s) was being sent when its worker stopped; %s, so it is marked failed "
                        "and not resent automatically", m.id, m.channel, why)
            return
        if self._next_lookup.get(m.id, now) > now:
            report.in_doubt_pending += 1
            return
        try:
            found = lookup(_dto(m))
        except Exception as e:  # noqa: BLE001 - a failing lookup is an unknown answer
            log.warning("outbox: looking up in-doubt message %s failed: %s: %s", m.id, type(e).__name__, e)
            found = DeliveryResult(status=DeliveryStatus.FAILED, detail=f"lookup failed: {type(e).__name__}: {e}")
        if found is None:  # the provider has no record of it: it never went out, send it again
            if self._record(m, now, report, lambda x: x._retry(now, now, detail="服务商无此消息记录，重新发送")):
                report.in_doubt_resolved += 1
            self._next_lookup.pop(m.id, None)
            log.info("outbox: in-doubt message %s was not received by the provider; it will be sent again", m.id)
        elif found.status is DeliveryStatus.SENT:
            if self._record(m, now, report, lambda x: x._sent(now, vendor_code=found.vendor_code,
                                                              vendor_message_id=found.vendor_message_id,
                                                              detail=found.detail or "已由服务商记录确认发送")):
                report.in_doubt_resolved += 1
            self._next_lookup.pop(m.id, None)
            log.info("outbox: in-doubt message %s was found at the provider: sent", m.id)
        elif found.status is DeliveryStatus.REJECTED:
            self._record(m, now, report, lambda x: x._fail(now, vendor_code=found.vendor_code, detail=found.detail))
            self._next_lookup.pop(m.id, None)
            log.warning("outbox: in-doubt message %s was received but refused by the provider: %s", m.id,
                        found.detail)
        elif m.lease_until is not None and now - m.lease_until >= self.policy.in_doubt_give_up:
            self._record(m, now, report, lambda x: x._fail(now, detail=IN_DOUBT_GAVE_UP_ZH))
            self._next_lookup.pop(m.id, None)
            log.warning("outbox: in-doubt message %s: the provider's answer stayed unknown for %s; marked failed, "
                        "not resent", m.id, self.policy.in_doubt_give_up)
        else:
            self._next_lookup[m.id] = now + self.policy.lookup_interval
            report.in_doubt_pending += 1
            log.info("outbox: in-doubt message %s: provider status unknown (%s); asking again later", m.id,
                     found.detail or "-")

    # -- due -------------------------------------------------------------------------------------------------
    def _deliver(self, m: OutboxMessage, now: datetime, report: DeliveryReport) -> None:
        notifier = self._channels.get(m.channel)
        if notifier is None:
            detail = f"未启用「{m.channel}」通知渠道，请在 plugins.toml 中启用相应插件"
            if self._record(m, now, report, lambda x: x._fail(now, detail=detail)):
                log.error("outbox: message %s (%s) failed: no enabled notifier for channel %r", m.id, m.kind,
                          m.channel)
            return
        if not m.urgent:
            until = self.policy.quiet_until(now)
            if until is not None:
                self._defer(m, now, until, "免打扰时段，结束后发送", report, "quiet hours")
                return
            limit = self.policy.rate_limit_per_hour
            if limit > 0:
                with self._store.unit_of_work() as uow:
                    recent = uow.outbox.count_sent_since(m.recipient_id, now - timedelta(hours=1))
                if recent >= limit:
                    wait = timedelta(hours=1) / limit
                    self._defer(m, now, now + wait, f"超过每小时 {limit} 条的发送频率限制，稍后发送", report,
                                "rate limit")
                    return
        # A temporary failure without a vendor answer (a timeout) may have gone out: look before sending again.
        unsure = m.state is MessageState.RETRYING and not m.vendor_code and hasattr(notifier, "lookup")
        # claim: committed before the provider is called; a Conflict means another worker has it
        try:
            with self._store.unit_of_work() as uow:
                m._claim(now, self.policy.lease)
                uow.outbox.save(m)
        except Conflict:
            report.skipped += 1
            log.debug("outbox: message %s was taken by another worker", m.id)
            return
        if unsure:
            result = self._look_before_resending(m, notifier)
            if result is not None:
                self._outcome(m, notifier, result, max(now, self._clock.now()), report)
                return
        try:
            result = notifier.send(_dto(m))
        except Exception as e:  # noqa: BLE001 - an exception from a notifier is a temporary failure
            log.warning("outbox: %s raised sending message %s: %s: %s", notifier.name, m.id, type(e).__name__, e)
            result = DeliveryResult(status=DeliveryStatus.FAILED, detail=f"{type(e).__name__}: {e}")
        self._outcome(m, notifier, result, max(now, self._clock.now()), report)

    def _look_before_resending(self, m: OutboxMessage, notifier: Any) -> DeliveryResult | None:
        """The previous attempt got no answer: ``None`` if the provider has no record of it (send it now), else the
        result to record instead of sending (SENT found; REJECTED; FAILED: still unknown, try again later)."""
        try:
            found = notifier.lookup(_dto(m))
        except Exception as e:  # noqa: BLE001
            found = DeliveryResult(status=DeliveryStatus.FAILED, detail=f"lookup failed: {type(e).__name__}: {e}")
        if found is None:
            return None
        if found.status is DeliveryStatus.SENT:
            log.info("outbox: message %s: the previous attempt had gone out after all (found at the provider); "
                     "not sent again", m.id)
            return attrs.evolve(found, detail=found.detail or "上次发送已由服务商记录确认")
        if found.status is DeliveryStatus.FAILED:
            # no vendor code: the next attempt looks again rather than sending (until the attempts are used up)
            return attrs.evolve(found, vendor_code="", detail=f"上次发送结果不明，服务商查询未成功，暂不重发"
                                                              f"（{found.vendor_code or '-'}：{found.detail}）")
        return found

    def _outcome(self, m: OutboxMessage, notifier: Any, result: DeliveryResult, now: datetime,
                 report: DeliveryReport) -> None:
        if result.status is DeliveryStatus.SENT:
            if self._record(m, now, report, lambda x: x._sent(now, vendor_code=result.vendor_code,
                                                              vendor_message_id=result.vendor_message_id,
                                                              detail=result.detail)):
                log.info("outbox: message %s (%s) sent via %s (vendor id %s)", m.id, m.kind, notifier.name,
                         result.vendor_message_id or "-")
            return
        if result.status is DeliveryStatus.REJECTED:
            if m.channel != "sms" and self.policy.fallback_to_sms and "sms" in self._channels:
                if self._fall_back(m, result, now, report):
                    return
            if self._record(m, now, report, lambda x: x._fail(now, vendor_code=result.vendor_code,
                                                              detail=result.detail)):
                log.warning("outbox: message %s (%s) refused by %s, not retried: %s %s", m.id, m.kind,
                            notifier.name, result.vendor_code or "-", result.detail)
            return
        if m.attempts >= self.policy.max_attempts:
            detail = f"已尝试 {m.attempts} 次仍未成功：{result.detail}"
            if self._record(m, now, report, lambda x: x._fail(now, vendor_code=result.vendor_code, detail=detail)):
                log.warning("outbox: message %s (%s) failed after %d attempts: %s %s", m.id, m.kind, m.attempts,
                            result.vendor_code or "-", result.detail)
            return
        at = now + self.policy.backoff_after(m.attempts)
        if self._record(m, now, report, lambda x: x._retry(now, at, vendor_code=result.vendor_code,
                                                           detail=result.detail)):
            log.info("outbox: message %s (%s) temporarily failed via %s (%s %s); attempt %d of %d, next at %s",
                     m.id, m.kind, notifier.name, result.vendor_code or "-", result.detail, m.attempts,
                     self.policy.max_attempts, at.isoformat())

    def _fall_back(self, m: OutboxMessage, result: DeliveryResult, now: datetime, report: DeliveryReport) -> bool:
        """Queue an SMS for a refused message to a person with a phone number; ``False`` if there is none."""
        try:
            with self._store.unit_of_work() as uow:
                phone = _phone_of(uow, m)
                if not phone:
                    return False
                sms = OutboxMessage.create(
                    dedupe_key=f"{m.dedupe_key}:sms", kind=m.kind, recipient_kind=m.recipient_kind,
                    recipient_id=m.recipient_id, channel="sms", address=phone, params=m.params, text=m.text, at=now,
                    urgent=m.urgent, fallback_of=m.id)
                added = uow.outbox.add(sms)
                code = result.vendor_code or "-"
                m._cancel(now, detail=f"{m.channel} 未送达（{code}：{result.detail}），已改发短信")
                uow.outbox.save(m)
        except Conflict:
            report.skipped += 1
            return True
        report.fallbacks += 1
        log.info("outbox: message %s (%s) refused on %s (%s); %s", m.id, m.kind, m.channel, result.vendor_code or "-",
                 f"falling back to SMS message {sms.id}" if added else "an SMS fallback was already queued")
        return True

    def _defer(self, m: OutboxMessage, now: datetime, until: datetime, detail: str, report: DeliveryReport,
               why: str) -> None:
        if self._record(m, now, report, lambda x: x._defer(now, until, detail), count=False):
            report.deferred += 1
            log.info("outbox: message %s (%s) deferred until %s (%s)", m.id, m.kind, until.isoformat(), why)

    def _record(self, m: OutboxMessage, now: datetime, report: DeliveryReport, change: Callable[[OutboxMessage], None],
                *, count: bool = True) -> bool:
        """Apply ``change`` and save it version-checked; ``False`` if another worker changed the message meanwhile."""
        try:
            with self._store.unit_of_work() as uow:
                change(m)
                uow.outbox.save(m)
        except Conflict:
            report.skipped += 1
            log.info("outbox: message %s was changed by another worker meanwhile; left as it is", m.id)
            return False
        if count:
            state = m.state
            if state is MessageState.SENT:
                report.sent += 1
            elif state is MessageState.RETRYING:
                report.retrying += 1
            elif state in (MessageState.FAILED, MessageState.CANCELLED):
                report.failed += 1
        return True


_STATE_ZH = {MessageState.PENDING: "待发送", MessageState.SENDING: "发送中", MessageState.SENT: "已发送",
             MessageState.RETRYING: "等待重试", MessageState.FAILED: "发送失败", MessageState.CANCELLED: "已取消"}


def state_zh(state: MessageState | str) -> str:
    """The Chinese name of a message state, for screens."""
    return _STATE_ZH.get(MessageState(state), str(state))


def masked_address(m: OutboxMessage) -> str:
    """The address for screens: ``138****8000`` for a phone, ``oAbC****`` for an openid."""
    a = m.address or ""
    if a.isdigit() and len(a) >= 8:
        return f"{a[:3]}****{a[-4:]}"
    return f"{a[:4]}****" if len(a) > 4 else "****"


def _dto(m: OutboxMessage) -> Message:
    return Message(id=m.id, recipient=m.address, template=m.kind, params=m.params, text=m.text)


def _phone_of(uow: Any, m: OutboxMessage) -> str | None:
    repo = {"owner": uow.owners, "visitor": uow.visitors}.get(m.recipient_kind)
    person = repo.get(m.recipient_id) if repo is not None else None
    phone = getattr(person, "phone", None)
    value = getattr(phone, "value", phone)
    return str(value) if value else None
