"""Online payments: orders and top-ups paid through a payment channel, callbacks, refunds, reconciliation.

:class:`PaymentService` owns the money side of the lot. Every payment is a
:class:`~smartpark.core.payments.PaymentAttempt` with its own ``out_trade_no``; the provider's verified
callback (a :class:`~smartpark.core.payments.PaymentEvent` from the channel adapter's notify route) is applied
once: the notification id is recorded in the SAME transaction as the attempt becoming paid, the order becoming
PAID and -- when the car waits at the exit -- the stay ending with an OPEN decision. Only the gate command runs
after the commit, so a crash between "callback received" and "gate opened" loses nothing: the next read of the
car at the exit opens again (a repeat read).

What each callback gets (the channel turns a return into 200 ``SUCCESS`` and an exception into 500 ``FAIL``,
and the provider resends after a failure):

* applied (paid, or a second payment refunded automatically, or a late one applied/refunded) -> 200;
* replay of a notification already applied (same ``notify_id``), or a new notification of an attempt already
  paid -> 200 (``"duplicate"`` / ``"already_paid"``), nothing changes;
* unknown ``out_trade_no``, another channel's order, or an amount other than the attempt's -> audited, logged,
  :class:`PaymentRejected` -> 500, nothing changes (the provider resends; reconciliation queries the truth);
* late (our attempt was closed): we query the provider first; paid there -> applied or refunded; not paid
  there -> rejected like above.

Money is integer fen; every state change is audited.
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import attrs

from . import events as ev
from .errors import Conflict, NotFound, SmartparkError, ValidationError
from .parking import OrderState
from .payments import AttemptState, PaymentAttempt, PaymentEvent, PaymentRequest, Purpose, Refund, RefundState
from .services import post_ledger
from .values import Money

log = logging.getLogger(__name__)

SYSTEM = "system:payments"
_PAID_STATES = ("paid", "refunded")


class PaymentRejected(SmartparkError):
    """A genuine-looking callback that does not match our records (unknown order, wrong amount): nothing
    changed; the channel answers the provider with a failure."""


class PaymentUnavailable(SmartparkError):
    """The payment channel could not be reached or refused to create the payment."""


@attrs.frozen(kw_only=True)
class PaymentSettings:
    public_url: str = "http://127.0.0.1:8080"  # notify URLs are built on it when a channel has none of its own
    attempt_ttl: timedelta = timedelta(minutes=15)  # how long a QR code can be paid
    stuck_after: timedelta = timedelta(minutes=1)  # reconciliation queries attempts still paying after this
    query_after: timedelta = timedelta(seconds=5)  # status() asks the provider once an attempt is this old
    timezone: str = "Asia/Shanghai"  # the local day of the daily report


@attrs.frozen(kw_only=True)
class PaymentView:
    out_trade_no: str
    channel: str
    purpose: str  # "order" | "topup"
    subject_id: str  # order id or owner id
    amount_fen: int
    state: str  # "paying" | "paid" | "closed"
    code_url: str
    expires_at: datetime
    paid_at: datetime | None
    transaction_id: str | None
    order_id: str | None  # None for top-ups
    refunded_fen: int

    @classmethod
    def of(cls, a: PaymentAttempt) -> PaymentView:
        return cls(out_trade_no=a.out_trade_no, channel=a.channel, purpose=a.purpose.value, subject_id=a.subject_id,
                   amount_fen=a.amount_fen, state=a.state.value, code_url=a.code_url, expires_at=a.expires_at,
                   paid_at=a.paid_at, transaction_id=a.transaction_id,
                   order_id=a.subject_id if a.purpose is Purpose.ORDER else None, refunded_fen=a.refunded_fen)


@attrs.frozen(kw_only=True)
class ReconcileSummary:
    queried: int = 0
    applied: int = 0  # paid at the provider, applied (or refunded) here
    closed: int = 0  # expired or closed at the provider, closed here
    refunds_retried: int = 0
    errors: int = 0


@attrs.frozen(kw_only=True)
class ChannelTotals:
    channel: str
    ours_count: int  # attempts created that day that we hold as paid
    ours_fen: int
    theirs_count: int  # the same attempts as the provider reports them paid (or refunded)
    theirs_fen: int
    refunds_count: int  # refunds created that day
    refunds_fen: int


@attrs.frozen(kw_only=True)
class ReportMismatch:
    out_trade_no: str
    channel: str
    ours: str  # our state and amount, e.g. "paid 1200"
    theirs: str  # the provider's, e.g. "pending", "paid 1300", "query failed: ..."


@attrs.frozen(kw_only=True)
class PaymentReport:
    day: date
    channels: tuple[ChannelTotals, ...]
    mismatches: tuple[ReportMismatch, ...]

    @property
    def ok(self) -> bool:
        return not self.mismatches


@attrs.define
class _After:
    """What a payment transaction leaves to do after its commit."""

    step: Any = None  # a gate.PaidStep
    events: list[ev.Event] = attrs.Factory(list)
    refunds: list[str] = attrs.Factory(list)  # out_refund_no to send to the channel
    close: list[str] = attrs.Factory(list)  # out_trade_no of other attempts to close


def short_name(channel: str) -> str:
    """``pay_wechat`` -> ``wechat``: the name orders, attempts and the UI use for a channel plugin."""
    return channel.removeprefix("pay_")


def new_out_trade_no(now: datetime) -> str:
    """``SP`` + UTC time to the second + 12 random hex digits: 26 characters that WeChat Pay and Alipay accept."""
    return f"SP{now.astimezone(UTC):%y%m%d%H%M%S}{secrets.token_hex(6)}"


class PaymentService:
    """Orders and top-ups paid online; the channels' ``on_payment`` sink; refunds; reconciliation; the report."""

    def __init__(self, store: Any, clock: Any, bus: Any, *, parking: Any, channels: dict[str, Any],
                 settings: PaymentSettings | None = None) -> None:
        self._store, self._clock, self._bus, self._parking = store, clock, bus, parking
        self._channels = {short_name(name): ch for name, ch in channels.items()}
        # events carry the channel's own name; a plugin may name its channel unlike its plugin entry
        self._aliases = {short_name(str(getattr(ch, "name", key))): key for key, ch in self._channels.items()}
        self._aliases.update({key: key for key in self._channels})
        self.settings = settings or PaymentSettings()
        self._lock = threading.RLock()  # one payment state change at a time in this process (the store guards the rest)
        self._queried: dict[str, datetime] = {}  # out_trade_no -> when status() last asked the provider
        if self._channels:
            bus.subscribe(ev.PaymentSucceeded, self._order_paid_elsewhere)

    # == starting payments ==================================================================================
    def channels(self) -> list[str]:
        """The enabled online channels, e.g. ``["wechat", "alipay"]``."""
        return sorted(self._channels)

    def pay_order(self, order_id: str, channel: str, *, actor: str, payer_hint: str | None = None) -> PaymentView:
        """Start paying an order: a new attempt (its own ``out_trade_no``) created at the channel; the order is
        PAYING. An unexpired attempt on the same channel is shown again instead of a second QR code.

        ``payer_hint`` goes to the channel as ``PaymentRequest.payer_hint``: the payer's IP address for a phone
        browser (WeChat H5), the payer's openid inside WeChat (JSAPI); unused by QR (native / precreate)."""
        name, ch = self._channel(channel)
        now = self._clock.now()
        with self._lock, self._store.unit_of_work() as uow:
            order = uow.orders.get(order_id)
            if order is None:
                raise NotFound(f"找不到订单 {order_id}", f"no order {order_id}")
            if order.state is OrderState.PAID:
                raise Conflict("该订单已支付，无需重复支付", f"order {order_id} is already paid")
            if not order.is_open:
                raise Conflict(f"订单状态为「{order.state.value}」，不能支付", f"order {order_id} is {order.state.value}")
            for a in uow.payments.for_subject(order.id):
                if (a.state is AttemptState.PAYING and a.channel == name and a.code_url
                        and a.amount_fen == order.amount_fen and a.expires_at - now > timedelta(minutes=1)):
                    return PaymentView.of(a)
            attempt = PaymentAttempt.start(out_trade_no=new_out_trade_no(now), channel=name, purpose=Purpose.ORDER,
                                           subject_id=order.id, amount_fen=order.amount_fen, at=now,
                                           expires_at=now + self.settings.attempt_ttl, actor=actor)
            uow.payments.add(attempt)
            order._start_payment(channel=name, out_trade_no=attempt.out_trade_no, at=now, actor=actor)
            uow.orders.save(order)
            uow.audit.append(at=now, actor=actor, action="payment.start", subject=f"payment:{attempt.out_trade_no}",
                             details={"channel": name, "purpose": "order", "order": order.id,
                                      "amount_fen": order.amount_fen})
            description = f"停车费 {order.plate.masked}"
        return self._create_at_channel(attempt, ch, description, actor, payer_hint)

    def prepay(self, plate: str, channel: str, *, actor: str, payer_hint: str | None = None) -> PaymentView:
        """场内预付 (from the visitor page): an order for the fee so far (no exit lane), then :meth:`pay_order`.
        After paying, the car leaves within the grace window; later, only the extra time is billed."""
        self._channel(channel)
        order = self._parking.prepay_order(plate, actor=actor)
        return self.pay_order(order.id, channel, actor=actor, payer_hint=payer_hint)

    def start_topup(self, owner_id: str, amount_fen: int, channel: str, *, actor: str,
                    payer_hint: str | None = None) -> PaymentView:
        """An owner tops up the prepaid balance; the balance is credited when the payment arrives."""
        name, ch = self._channel(channel)
        if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
            raise ValidationError("充值金额必须大于零", "a top-up must be a positive amount of fen", field="amount_fen")
        now = self._clock.now()
        with self._lock, self._store.unit_of_work() as uow:
            if uow.owners.get(owner_id) is None:
                raise NotFound(f"找不到编号为 {owner_id} 的业主", f"no owner with id {owner_id}")
            attempt = PaymentAttempt.start(out_trade_no=new_out_trade_no(now), channel=name, purpose=Purpose.TOPUP,
                                           subject_id=owner_id, amount_fen=amount_fen, at=now,
                                           expires_at=now + self.settings.attempt_ttl, actor=actor)
            uow.payments.add(attempt)
            uow.audit.append(at=now, actor=actor, action="payment.start", subject=f"payment:{attempt.out_trade_no}",
                             details={"channel": name, "purpose": "topup", "owner": owner_id,
                                      "amount_fen": amount_fen})
        return self._create_at_channel(attempt, ch, "停车场余额充值", actor, payer_hint)

    def _create_at_channel(self, attempt: PaymentAttempt, ch: Any, description: str, actor: str,
                           payer_hint: str | None = None) -> PaymentView:
        # The attempt is committed BEFORE the provider hears of it: whatever happens next, we know the number
        # (reconciliation queries it), so money can never arrive for an order we do not know.
        request = PaymentRequest(out_trade_no=attempt.out_trade_no, amount_fen=attempt.amount_fen,
                                 description=description, expires_at=attempt.expires_at,
                                 notify_url=self._notify_url(ch), payer_hint=payer_hint)
        try:
            intent = ch.create(request)
        except Exception as e:  # noqa: BLE001 - any channel failure: close ours, tell the payer to retry
            detail = getattr(e, "en", None) or f"{type(e).__name__}: {e}"
            log.error("creating payment %s at %s failed: %s", attempt.out_trade_no, attempt.channel, detail)
            try:
                ch.close(attempt.out_trade_no)
            except Exception:  # noqa: BLE001 - it may not exist there at all
                pass
            self._close_ours(attempt.out_trade_no, reason=f"create failed: {detail}"[:200], actor=actor)
            raise PaymentUnavailable("支付渠道暂时不可用，请稍后重试或使用其他方式缴费",
                                     f"the {attempt.channel} channel could not create the payment: {detail}") from None
        with self._lock, self._store.unit_of_work() as uow:
            stored = uow.payments.by_out_trade_no(attempt.out_trade_no)
            stored._set_code_url(intent.code_url)
            uow.payments.save(stored)
        return PaymentView.of(stored)

    # == reading ============================================================================================
    def status(self, out_trade_no: str) -> PaymentView:
        """The attempt; one still paying after a few seconds is checked with the provider first (the payer's page
        polls this, so a lost callback does not keep the payer waiting)."""
        attempt = self._attempt(out_trade_no)
        now = self._clock.now()
        if attempt.state is AttemptState.PAYING and now - attempt.created_at >= self.settings.query_after:
            ch = self._channels.get(attempt.channel)
            last = self._queried.get(out_trade_no)
            if ch is not None and (last is None or now - last >= self.settings.query_after):
                # a payer's page polls every few seconds: ask the provider at most once per query_after
                if len(self._queried) > 10_000:
                    self._queried.clear()
                self._queried[out_trade_no] = now
                try:
                    self._apply_query(attempt, ch.query(out_trade_no))
                except Exception:  # noqa: BLE001 - the provider is unreachable: show what we know
                    log.warning("querying %s at %s failed", out_trade_no, attempt.channel, exc_info=True)
                attempt = self._attempt(out_trade_no)
        return PaymentView.of(attempt)

    def attempts_for(self, subject_id: str) -> list[PaymentView]:
        """The attempts of an order (or an owner's top-ups), oldest first."""
        with self._store.unit_of_work() as uow:
            return [PaymentView.of(a) for a in uow.payments.for_subject(subject_id)]

    def refunds_for(self, out_trade_no: str) -> list[Refund]:
        with self._store.unit_of_work() as uow:
            return uow.payments.refunds_for(out_trade_no)

    # == the channels' sink ==================================================================================
    def handle_event(self, event: PaymentEvent) -> str:
        """A verified provider notification; returns what was done (see the module docstring for the answers)."""
        name = self._aliases.get(short_name(event.channel), short_name(event.channel))
        if event.state == "paid":
            return self._paid(name, event.out_trade_no, event.amount_fen, event.transaction_id, event.at,
                              notify_id=event.notify_id, source="callback")
        if event.state == "refunded":
            return self._refund_notified(name, event)
        if event.state == "closed":
            with self._lock, self._store.unit_of_work() as uow:
                if not uow.payments.record_notification(name, event.notify_id, event.out_trade_no, self._clock.now()):
                    return "duplicate"
            return "closed" if self._close_ours(event.out_trade_no, reason="closed by the provider",
                                                actor=f"channel:{name}") else "ignored"
        log.warning("payment event of unknown state %r for %s ignored", event.state, event.out_trade_no)
        return "ignored"

    def _paid(self, name: str, out_trade_no: str, amount_fen: int, transaction_id: str, paid_at: datetime, *,
              notify_id: str | None, source: str, reject: bool = True) -> str:
        attempt = self._attempt_or_none(out_trade_no)
        if attempt is not None and attempt.state is AttemptState.CLOSED and source == "callback":
            # late: we had closed it (expired). Believe the provider's query, not the notification alone.
            ch = self._channels.get(name)
            q = ch.query(out_trade_no) if ch is not None else None
            if q is None or q.state not in _PAID_STATES:
                return self._reject(name, out_trade_no, "late_unconfirmed", amount_fen, transaction_id,
                                    f"the notification says paid but the provider says {q.state if q else '?'}",
                                    reject=reject)
        for attempt_no in range(3):
            try:
                with self._lock, self._store.unit_of_work() as uow:
                    result, after = self._paid_in(uow, name, out_trade_no, amount_fen, transaction_id, paid_at,
                                                  notify_id=notify_id, source=source)
                    if after is not None:
                        self._bus.stage(uow, after.events)
                break
            except Conflict:
                if attempt_no == 2:
                    raise
                log.info("payment %s changed concurrently; applying again", out_trade_no)
        if after is None:
            if result in ("duplicate", "already_paid"):
                log.info("%s notification for %s: %s", name, out_trade_no, result)
                return result
            return self._reject(name, out_trade_no, result, amount_fen, transaction_id, source, reject=reject)
        log.info("payment %s (%s, %d fen) via %s: %s", out_trade_no, name, amount_fen, source, result)
        self._run_after(after)
        return result

    def _paid_in(self, uow: Any, name: str, out_trade_no: str, amount_fen: int, transaction_id: str,
                 paid_at: datetime, *, notify_id: str | None, source: str) -> tuple[str, _After | None]:
        now = self._clock.now()
        attempt = uow.payments.by_out_trade_no(out_trade_no)
        if attempt is None:
            return "unknown_order", None
        if attempt.channel != name:
            return "channel_mismatch", None
        if amount_fen != attempt.amount_fen:
            return "amount_mismatch", None
        if notify_id is not None and not uow.payments.record_notification(name, notify_id, out_trade_no, now):
            return "duplicate", None
        if attempt.state is AttemptState.PAID:
            return "already_paid", None
        late = attempt.state is AttemptState.CLOSED
        actor = f"channel:{name}"
        attempt._mark_paid(at=paid_at or now, transaction_id=transaction_id, amount_fen=amount_fen)
        uow.audit.append(at=now, actor=actor, action="payment.paid", subject=f"payment:{out_trade_no}",
                         details={"channel": name, "purpose": attempt.purpose.value, "subject": attempt.subject_id,
                                  "amount_fen": amount_fen, "transaction_id": transaction_id, "source": source,
                                  "late": late, "notify_id": notify_id})
        after = _After()
        result = "applied_late" if late else "applied"
        if attempt.purpose is Purpose.ORDER:
            order = uow.orders.get(attempt.subject_id)
            if order is not None and order.is_open:
                after.close = [a.out_trade_no for a in uow.payments.for_subject(order.id)
                               if a.state is AttemptState.PAYING and a.out_trade_no != out_trade_no]
                uow.payments.save(attempt)
                step = self._parking.apply_order_payment(uow, order.id, channel=name, actor=actor,
                                                         transaction_id=transaction_id, amount_fen=amount_fen,
                                                         out_trade_no=out_trade_no)
                after.step = step
                if step is not None:
                    self._bus.stage(uow, step.events)
                return result, after
            why = ("the order was already paid" if order is not None and order.state is OrderState.PAID
                   else "the order is no longer open")
            result = "refunded_double" if order is not None and order.state is OrderState.PAID else "refunded_late"
            self._auto_refund_in(uow, attempt, why, now, after)
            return result, after
        owner = uow.owners.get(attempt.subject_id)
        if owner is None:
            self._auto_refund_in(uow, attempt, "the owner no longer exists", now, after)
            return "refunded_no_owner", after
        uow.payments.save(attempt)
        ref = f"topup:{out_trade_no}"
        if uow.ledger.by_ref(ref) is None:
            _, changed = post_ledger(uow, owner, Money(amount_fen), kind="topup", ref=ref, at=now, actor=actor,
                                     note=f"{name} 充值")
            after.events += [changed, ev.TopUpSucceeded(at=now, owner_id=owner.id, amount_fen=amount_fen,
                                                        channel=name, out_trade_no=out_trade_no)]
        return result, after

    def _auto_refund_in(self, uow: Any, attempt: PaymentAttempt, why: str, now: datetime, after: _After) -> None:
        """A payment we cannot use (a second one for a paid stay, one for a closed order): refund it in full.
        Recorded now, in the same transaction; sent to the channel after the commit."""
        amount = attempt.refundable_fen
        refund = Refund.create(out_trade_no=attempt.out_trade_no, channel=attempt.channel, amount_fen=amount,
                               reason=f"自动退款：{why}", actor=SYSTEM, at=now)
        uow.payments.add_refund(refund)
        attempt._add_refund(amount)
        uow.payments.save(attempt)
        uow.audit.append(at=now, actor=SYSTEM, action="payment.refund", subject=f"payment:{attempt.out_trade_no}",
                         details={"out_refund_no": refund.out_refund_no, "amount_fen": amount, "automatic": True,
                                  "reason": why})
        log.warning("payment %s refunded automatically (%d fen): %s", attempt.out_trade_no, amount, why)
        after.refunds.append(refund.out_refund_no)
        after.events.append(self._refunded_event(attempt, refund, now, automatic=True))

    def _reject(self, name: str, out_trade_no: str, why: str, amount_fen: int, transaction_id: str, source: str,
                *, reject: bool) -> str:
        now = self._clock.now()
        with self._lock, self._store.unit_of_work() as uow:
            uow.audit.append(at=now, actor=f"channel:{name}", action="payment.rejected",
                             subject=f"payment:{out_trade_no}",
                             details={"reason": why, "amount_fen": amount_fen, "transaction_id": transaction_id,
                                      "source": source})
        log.error("%s payment notice for %s refused (%s, %s fen, %s): nothing changed", name, out_trade_no, why,
                  amount_fen, source)
        if reject:
            raise PaymentRejected("支付通知与订单不符，已拒绝", f"payment notice for {out_trade_no} refused: {why}")
        return why

    def _refund_notified(self, name: str, event: PaymentEvent) -> str:
        now = self._clock.now()
        with self._lock, self._store.unit_of_work() as uow:
            if not uow.payments.record_notification(name, event.notify_id, event.out_trade_no, now):
                return "duplicate"
            pending = [r for r in uow.payments.refunds_for(event.out_trade_no)
                       if r.state is RefundState.PROCESSING and r.amount_fen == event.amount_fen]
            if not pending:
                uow.audit.append(at=now, actor=f"channel:{name}", action="payment.refund_notice_unmatched",
                                 subject=f"payment:{event.out_trade_no}", details={"amount_fen": event.amount_fen})
                return "refund_unmatched"
            refund = pending[0]
            refund._finish(RefundState.SUCCEEDED, at=now, detail="provider notification")
            uow.payments.save_refund(refund)
            uow.audit.append(at=now, actor=f"channel:{name}", action="payment.refund_succeeded",
                             subject=f"payment:{event.out_trade_no}",
                             details={"out_refund_no": refund.out_refund_no, "amount_fen": refund.amount_fen})
        return "refund_confirmed"

    # == refunds ============================================================================================
    def refund(self, out_trade_no: str, amount_fen: int, *, reason: str, actor: str) -> Refund:
        """Refund part or all of a paid attempt (audited). An order's refund is recorded on the order (fully
        refunded: REFUNDED); a top-up's is taken back from the owner's balance through the ledger."""
        reason = (reason or "").strip()
        if not reason:
            raise ValidationError("请填写退款原因", "a reason is required for a refund", field="reason")
        if not isinstance(amount_fen, int) or isinstance(amount_fen, bool) or amount_fen <= 0:
            raise ValidationError("退款金额必须大于零", "a refund must be a positive amount of fen", field="amount_fen")
        now = self._clock.now()
        after = _After()
        with self._lock, self._store.unit_of_work() as uow:
            attempt = uow.payments.by_out_trade_no(out_trade_no)
            if attempt is None:
                raise NotFound(f"找不到支付记录 {out_trade_no}", f"no payment {out_trade_no}")
            if attempt.state is not AttemptState.PAID:
                raise Conflict("该笔支付未成功，无法退款", f"payment {out_trade_no} is {attempt.state.value}, not paid")
            self._channel(attempt.channel)
            refund = Refund.create(out_trade_no=out_trade_no, channel=attempt.channel, amount_fen=amount_fen,
                                   reason=reason, actor=actor, at=now)
            attempt._add_refund(amount_fen)  # ValidationError beyond what is left
            uow.payments.add_refund(refund)
            uow.payments.save(attempt)
            if attempt.purpose is Purpose.ORDER:
                order = uow.orders.get(attempt.subject_id)
                if order is not None and order.state is OrderState.PAID and order.out_trade_no == out_trade_no:
                    order._add_refund(amount_fen, at=now, actor=actor, out_refund_no=refund.out_refund_no,
                                      reason=reason)
                    uow.orders.save(order)
            else:
                owner = uow.owners.get(attempt.subject_id)
                if owner is not None:
                    if owner.balance.fen < amount_fen:
                        raise ValidationError(f"业主余额 {owner.balance} 不足以退回 {Money(amount_fen)}",
                                              f"the owner's balance is below the refund of {amount_fen} fen",
                                              field="amount_fen")
                    _, changed = post_ledger(uow, owner, Money(-amount_fen), kind="refund",
                                             ref=f"refund:{refund.out_refund_no}", at=now, actor=actor,
                                             note=f"充值退款 {out_trade_no}")
                    after.events.append(changed)
            uow.audit.append(at=now, actor=actor, action="payment.refund", subject=f"payment:{out_trade_no}",
                             details={"out_refund_no": refund.out_refund_no, "amount_fen": amount_fen,
                                      "automatic": False, "reason": reason})
            after.events.append(self._refunded_event(attempt, refund, now, automatic=False))
            after.refunds.append(refund.out_refund_no)
            self._bus.stage(uow, after.events)
        self._run_after(after)
        with self._store.unit_of_work() as uow:
            return uow.payments.refund_by_no(refund.out_refund_no)

    def _send_refund(self, out_refund_no: str) -> None:
        """Ask the channel for a recorded refund (idempotent by ``out_refund_no``); a failure leaves it
        processing for reconciliation to send again."""
        with self._store.unit_of_work() as uow:
            refund = uow.payments.refund_by_no(out_refund_no)
            attempt = uow.payments.by_out_trade_no(refund.out_trade_no) if refund else None
        if refund is None or attempt is None or refund.state is not RefundState.PROCESSING:
            return
        ch = self._channels.get(refund.channel)
        if ch is None:
            log.error("refund %s: channel %s is not enabled", out_refund_no, refund.channel)
            return
        try:
            result = ch.refund(refund.out_trade_no, out_refund_no, refund.amount_fen, attempt.amount_fen)
        except Exception as e:  # noqa: BLE001 - stays processing; reconciliation sends it again
            log.error("refund %s at %s failed: %s", out_refund_no, refund.channel, getattr(e, "en", None) or e)
            return
        if result.state not in ("succeeded", "failed"):
            return  # processing: the provider's notification (or the next reconciliation) finishes it
        now = self._clock.now()
        with self._lock, self._store.unit_of_work() as uow:
            refund = uow.payments.refund_by_no(out_refund_no)
            if refund.state is not RefundState.PROCESSING:
                return
            state = RefundState.SUCCEEDED if result.state == "succeeded" else RefundState.FAILED
            refund._finish(state, at=now, detail=f"channel answered {result.state}")
            uow.payments.save_refund(refund)
            uow.audit.append(at=now, actor=SYSTEM, action=f"payment.refund_{state.value}",
                             subject=f"payment:{refund.out_trade_no}",
                             details={"out_refund_no": out_refund_no, "amount_fen": refund.amount_fen})
            events = self._undo_failed_refund(uow, refund, now) if state is RefundState.FAILED else []
            self._bus.stage(uow, events)
        self._bus.publish(events)
        if state is RefundState.FAILED:
            log.error("refund %s of %s FAILED at %s: nothing was paid back; the amounts were restored and an "
                      "attendant must settle it with the payer", out_refund_no, refund.out_trade_no, refund.channel)

    def _undo_failed_refund(self, uow: Any, refund: Refund, now: datetime) -> list[ev.Event]:
        """The provider refused the refund: the money never left, so undo what recording it had done -- the
        attempt's and the order's refunded amounts (a fully refunded order is PAID again), or for a top-up the
        debit of the owner's balance (credited back through the ledger, idempotent by its ref)."""
        attempt = uow.payments.by_out_trade_no(refund.out_trade_no)
        if attempt is None:
            return []
        attempt._undo_refund(refund.amount_fen)
        uow.payments.save(attempt)
        detail = f"refund {refund.out_refund_no} failed at the provider"
        if attempt.purpose is Purpose.ORDER:
            order = uow.orders.get(attempt.subject_id)
            if order is not None and order.out_trade_no == attempt.out_trade_no and order.refunded_fen:
                order._undo_refund(refund.amount_fen, at=now, actor=SYSTEM, out_refund_no=refund.out_refund_no,
                                   detail=detail)
                uow.orders.save(order)
            return []
        owner = uow.owners.get(attempt.subject_id)
        if owner is None or uow.ledger.by_ref(f"refund:{refund.out_refund_no}") is None:
            return []  # nothing was taken from a balance
        _, changed = post_ledger(uow, owner, Money(refund.amount_fen), kind="refund",
                                 ref=f"refund-failed:{refund.out_refund_no}", at=now, actor=SYSTEM,
                                 note=f"充值退款失败，退回余额 {refund.out_trade_no}")
        return [changed]

    # == reconciliation =====================================================================================
    def reconcile(self, now: datetime | None = None) -> ReconcileSummary:
        """Attempts still paying after ``stuck_after``: query; paid -> apply; closed there -> close here; expired ->
        close at the provider and here (and the order, when no other payment is under way). Refunds still
        processing are sent again."""
        now = now or self._clock.now()
        counts = {"queried": 0, "applied": 0, "closed": 0, "refunds_retried": 0, "errors": 0}
        with self._store.unit_of_work() as uow:
            stuck = uow.payments.find(state=AttemptState.PAYING, until=now - self.settings.stuck_after, limit=500)
            refunds = [r for r in uow.payments.refunds_between(now - timedelta(days=30),
                                                               now - self.settings.stuck_after)
                       if r.state is RefundState.PROCESSING]
        for attempt in stuck:
            ch = self._channels.get(attempt.channel)
            if ch is None:
                continue
            try:
                q = ch.query(attempt.out_trade_no)
                counts["queried"] += 1
                if q.state in _PAID_STATES or q.state == "closed":
                    result = self._apply_query(attempt, q) or ""
                    if result.startswith(("applied", "refunded")):
                        counts["applied"] += 1
                    elif result == "closed":
                        counts["closed"] += 1
                elif now >= attempt.expires_at:
                    try:
                        ch.close(attempt.out_trade_no)
                    except Exception:  # noqa: BLE001
                        if q.state != "unknown":  # it exists there and would not close: try again next time
                            raise
                        # never seen there (an Alipay QR nobody scanned): nothing to close at the provider
                    if self._close_ours(attempt.out_trade_no, reason="expired", actor=SYSTEM, close_order=True):
                        counts["closed"] += 1
            except Exception:  # noqa: BLE001 - one attempt's trouble must not stop the others
                counts["errors"] += 1
                log.warning("reconciling %s failed", attempt.out_trade_no, exc_info=True)
        for refund in refunds:
            counts["refunds_retried"] += 1
            self._send_refund(refund.out_refund_no)
        summary = ReconcileSummary(**counts)
        if stuck or refunds:
            log.info("payment reconciliation: %s", summary)
        return summary

    def _apply_query(self, attempt: PaymentAttempt, q: Any) -> str | None:
        if q.state in _PAID_STATES and q.amount_fen is not None:
            return self._paid(attempt.channel, attempt.out_trade_no, q.amount_fen, q.transaction_id or "",
                              q.paid_at or self._clock.now(), notify_id=None, source="query", reject=False)
        if q.state == "closed":
            return "closed" if self._close_ours(attempt.out_trade_no, reason="closed at the provider",
                                                actor=SYSTEM, close_order=True) else None
        return None

    def _close_ours(self, out_trade_no: str, *, reason: str, actor: str, close_order: bool = False) -> bool:
        now = self._clock.now()
        with self._lock, self._store.unit_of_work() as uow:
            attempt = uow.payments.by_out_trade_no(out_trade_no)
            if attempt is None or attempt.state is not AttemptState.PAYING:
                return False
            attempt._close(reason=reason)
            uow.payments.save(attempt)
            uow.audit.append(at=now, actor=actor, action="payment.closed", subject=f"payment:{out_trade_no}",
                             details={"reason": reason})
            if close_order and attempt.purpose is Purpose.ORDER:
                order = uow.orders.get(attempt.subject_id)
                others = [a for a in uow.payments.for_subject(attempt.subject_id)
                          if a.state is AttemptState.PAYING and a.out_trade_no != out_trade_no]
                if order is not None and order.state is OrderState.PAYING and not others:
                    order._close(at=now, actor=actor, reason=f"payment {reason}")
                    uow.orders.save(order)
        return True

    # == the daily report ===================================================================================
    def report(self, day: date) -> PaymentReport:
        """Attempts created on the local ``day``: ours (paid here) against the provider's (queried one by one),
        per channel, with every disagreement listed."""
        tz = ZoneInfo(self.settings.timezone)
        since = datetime.combine(day, time(0), tz).astimezone(UTC)
        until = datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(UTC)
        with self._store.unit_of_work() as uow:
            attempts = uow.payments.find(since=since, until=until, limit=1_000_000)
            refunds = uow.payments.refunds_between(since, until, limit=1_000_000)
        totals: dict[str, dict[str, int]] = {
            name: dict.fromkeys(("oc", "of", "tc", "tf", "rc", "rf"), 0) for name in self._channels}
        mismatches: list[ReportMismatch] = []
        for a in attempts:
            t = totals.setdefault(a.channel, dict.fromkeys(("oc", "of", "tc", "tf", "rc", "rf"), 0))
            ours_paid = a.state is AttemptState.PAID
            if ours_paid:
                t["oc"], t["of"] = t["oc"] + 1, t["of"] + a.amount_fen
            ours = f"{a.state.value} {a.amount_fen}"
            ch = self._channels.get(a.channel)
            try:
                q = ch.query(a.out_trade_no) if ch is not None else None
            except Exception as e:  # noqa: BLE001 - reported as a mismatch
                mismatches.append(ReportMismatch(out_trade_no=a.out_trade_no, channel=a.channel, ours=ours,
                                                 theirs=f"query failed: {getattr(e, 'en', None) or e}"))
                continue
            if q is None:
                mismatches.append(ReportMismatch(out_trade_no=a.out_trade_no, channel=a.channel, ours=ours,
                                                 theirs="channel not enabled"))
                continue
            theirs_paid = q.state in _PAID_STATES
            if theirs_paid:
                t["tc"], t["tf"] = t["tc"] + 1, t["tf"] + (q.amount_fen or 0)
            if ours_paid != theirs_paid or (theirs_paid and q.amount_fen != a.amount_fen):
                theirs = f"{q.state} {q.amount_fen}" if q.amount_fen is not None else q.state
                mismatches.append(ReportMismatch(out_trade_no=a.out_trade_no, channel=a.channel, ours=ours,
                                                 theirs=theirs))
        for r in refunds:
            t = totals.setdefault(r.channel, dict.fromkeys(("oc", "of", "tc", "tf", "rc", "rf"), 0))
            t["rc"], t["rf"] = t["rc"] + 1, t["rf"] + r.amount_fen
        rows = tuple(ChannelTotals(channel=name, ours_count=t["oc"], ours_fen=t["of"], theirs_count=t["tc"],
                                   theirs_fen=t["tf"], refunds_count=t["rc"], refunds_fen=t["rf"])
                     for name, t in sorted(totals.items()))
        return PaymentReport(day=day, channels=rows, mismatches=tuple(mismatches))

    # == helpers ============================================================================================
    def _run_after(self, after: _After) -> None:
        if after.step is not None:
            self._parking.complete_payment(after.step)  # the gate (on the lane's worker) and the step's events
        self._bus.publish(after.events)
        for out_refund_no in after.refunds:
            self._send_refund(out_refund_no)
        for out_trade_no in after.close:
            self._close_other(out_trade_no)

    def _close_other(self, out_trade_no: str) -> None:
        """Another attempt of an order that has just been paid: close it at the provider, then here. If the
        provider refuses (it was paid meanwhile), its own notification or reconciliation refunds it."""
        attempt = self._attempt_or_none(out_trade_no)
        ch = self._channels.get(attempt.channel) if attempt else None
        if ch is None:
            return
        try:
            ch.close(out_trade_no)
        except Exception as e:  # noqa: BLE001
            log.warning("closing %s at %s failed (%s); reconciliation will look again", out_trade_no,
                        attempt.channel, getattr(e, "en", None) or e)
            return
        self._close_ours(out_trade_no, reason="the order was paid by another payment", actor=SYSTEM)

    def _order_paid_elsewhere(self, event: ev.PaymentSucceeded) -> None:
        """An order paid in cash (or from a balance) at the booth: close its QR codes still open at the providers,
        so the visitor cannot pay a second time (if one is paid meanwhile, it is refunded automatically)."""
        if event.channel in self._channels:
            return  # paid online: handle_event closed the others already
        for view in self.attempts_for(event.order_id):
            if view.state == "paying":
                self._close_other(view.out_trade_no)

    @staticmethod
    def _refunded_event(attempt: PaymentAttempt, refund: Refund, now: datetime, *,
                        automatic: bool) -> ev.PaymentRefunded:
        order = attempt.purpose is Purpose.ORDER
        return ev.PaymentRefunded(at=now, out_trade_no=attempt.out_trade_no, out_refund_no=refund.out_refund_no,
                                  channel=attempt.channel, amount_fen=refund.amount_fen,
                                  order_id=attempt.subject_id if order else None,
                                  owner_id=None if order else attempt.subject_id, reason=refund.reason,
                                  automatic=automatic)

    def _channel(self, channel: str) -> tuple[str, Any]:
        name = short_name(channel or "")
        ch = self._channels.get(name)
        if ch is None:
            offered = "、".join(self.channels()) or "无"
            raise ValidationError(f"不支持的支付方式 {channel}（可用：{offered}）",
                                  f"payment channel {channel!r} is not enabled (enabled: {self.channels()})",
                                  field="channel")
        return name, ch

    def _notify_url(self, ch: Any) -> str:
        routes: Callable[[], Any] | None = getattr(ch, "http_routes", None)
        path = next((r.path for r in (routes() if routes else []) if r.method.upper() == "POST"), None)
        return f"{self.settings.public_url.rstrip('/')}{path}" if path else ""

    def _attempt_or_none(self, out_trade_no: str) -> PaymentAttempt | None:
        with self._store.unit_of_work() as uow:
            return uow.payments.by_out_trade_no(out_trade_no)

    def _attempt(self, out_trade_no: str) -> PaymentAttempt:
        attempt = self._attempt_or_none(out_trade_no)
        if attempt is None:
            raise NotFound(f"找不到支付记录 {out_trade_no}", f"no payment {out_trade_no}")
        return attempt
