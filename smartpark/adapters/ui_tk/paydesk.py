"""The booth's payment desk: online payment QR codes, receipts and refunds, as calls into the core. No Tk.

* 付款二维码 — :meth:`PaymentDesk.start` asks ``app.payments.pay_order`` for a payment of an order on a chosen
  channel (an unexpired one on the same channel is shown again), :meth:`PaymentDesk.state` polls it
  (``app.payments.status``, which asks the provider when the callback is late).
* 打印收据 — :meth:`PaymentDesk.save_receipt` writes the receipt PDF (``app.receipts`` +
  :mod:`smartpark.infra.receipt_render`) to ``<data_dir>/receipts/`` and returns the path; the attendant prints
  it from there.
* 退款 — :meth:`PaymentDesk.refund_rule` says whether an order may be refunded here and why not (only a paid
  online payment with money left to refund; cash goes back across the counter), :meth:`PaymentDesk.refund`
  refunds through ``app.payments.refund`` (audited, reason required).
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import attrs

from smartpark.core.errors import SmartparkError, ValidationError
from smartpark.core.receipts import CHANNEL_ZH
from smartpark.core.values import Money


@attrs.frozen
class PaymentFeatures:
    """What the core offers the booth; ``False`` shows the button disabled with the reason."""

    pay_qr: bool
    receipt: bool
    refund: bool


@attrs.frozen
class QrPayment:
    out_trade_no: str
    code_url: str
    amount: str  # ¥6.00
    channel: str  # 微信支付
    expires: str  # 09:15


@attrs.frozen
class PayState:
    state: str  # paying | paid | closed
    text: str  # Chinese, for the dialog


@attrs.frozen
class RefundRule:
    allowed: bool
    why: str  # Chinese: the reason it is not allowed, or what is refundable
    out_trade_no: str = ""
    refundable_fen: int = 0

    @property
    def refundable(self) -> str:
        return str(Money(self.refundable_fen))


class DeskError(Exception):
    """A refusal to show the attendant (Chinese); ``errors`` maps a form field to its message."""

    def __init__(self, errors: dict[str, str]) -> None:
        self.errors = errors
        super().__init__("; ".join(errors.values()))


class PaymentDesk:
    def __init__(self, app: Any, *, actor: str, tz: Any) -> None:
        self.app, self.actor, self.tz = app, actor, tz

    # -- what is on offer ---------------------------------------------------------------------------
    @property
    def _payments(self) -> Any:
        return getattr(self.app, "payments", None)

    def channels(self) -> list[tuple[str, str]]:
        """``[(name, 中文名)]`` of the enabled online channels."""
        payments = self._payments
        if payments is None:
            return []
        return [(c, CHANNEL_ZH.get(c, c)) for c in payments.channels()]

    def features(self) -> PaymentFeatures:
        payments = self._payments
        return PaymentFeatures(pay_qr=bool(self.channels()), receipt=getattr(self.app, "receipts", None) is not None,
                               refund=payments is not None)

    # -- 付款二维码 -----------------------------------------------------------------------------------
    def start(self, order_id: str, channel: str) -> QrPayment:
        if self._payments is None or channel not in dict(self.channels()):
            raise ValidationError("该支付方式未开通，请收取现金", f"channel {channel!r} is not enabled", field="channel")
        v = self._payments.pay_order(order_id, channel, actor=self.actor)
        return QrPayment(v.out_trade_no, v.code_url, str(Money(v.amount_fen)), CHANNEL_ZH.get(v.channel, v.channel),
                         _hm(v.expires_at, self.tz))

    def state(self, out_trade_no: str) -> PayState:
        v = self._payments.status(out_trade_no)
        state = str(getattr(v.state, "value", v.state))
        if state == "paid":
            return PayState(state, f"✓ 已收到{CHANNEL_ZH.get(v.channel, v.channel)} {Money(v.amount_fen)}")
        if state == "closed":
            return PayState(state, "支付已关闭（超时或已取消），请重新生成二维码或收取现金")
        return PayState(state, f"等待车主扫码支付 {Money(v.amount_fen)}（{_hm(v.expires_at, self.tz)} 前有效）")

    # -- 打印收据 -------------------------------------------------------------------------------------
    def receipts_dir(self) -> Path:
        return Path(self.app.config.data_dir) / "receipts"

    def save_receipt(self, order_id: str) -> Path:
        """The order's receipt as a PDF file; ``SmartparkError`` (Chinese) for an unpaid order."""
        from smartpark.infra.receipt_render import render_pdf

        receipt = self.app.receipts.for_order(order_id)
        folder = self.receipts_dir()
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = folder / f"receipt-{receipt.receipt_no}.pdf"
        path.write_bytes(render_pdf(receipt))
        return path

    # -- 退款 -----------------------------------------------------------------------------------------
    def refund_rule(self, order_id: str, state_code: str, channel_code: str | None) -> RefundRule:
        if state_code not in ("paid", "refunded"):
            return RefundRule(False, "订单未支付，无需退款")
        if channel_code in (None, "cash"):
            return RefundRule(False, "现金订单请当面退还现金，不能在系统中退款")
        if channel_code == "balance":
            return RefundRule(False, "余额支付的订单请在业主页面调整余额")
        if self._payments is None:
            return RefundRule(False, "线上支付未开通，不能退款")
        paid = [a for a in self._payments.attempts_for(order_id) if str(getattr(a.state, "value", a.state)) == "paid"]
        if not paid:
            return RefundRule(False, "没有找到该订单的线上支付记录")
        attempt = paid[-1]
        left = attempt.amount_fen - attempt.refunded_fen
        if left <= 0:
            return RefundRule(False, "该订单已全额退款")
        return RefundRule(True, f"可退 {Money(left)}", attempt.out_trade_no, left)

    def refund(self, rule: RefundRule, amount_text: str, reason: str) -> str:
        """Refund ``amount_text`` yuan of the payment; returns a Chinese line for the status bar."""
        errors: dict[str, str] = {}
        fen = 0
        try:
            fen = Money.from_yuan(amount_text or "").fen
        except ValidationError as e:
            errors["amount"] = e.zh
        if not errors and fen <= 0:
            errors["amount"] = "退款金额必须大于 0"
        elif not errors and fen > rule.refundable_fen:
            errors["amount"] = f"最多可退 {rule.refundable}"
        if not (reason or "").strip():
            errors["reason"] = "请填写退款原因"
        if errors:
            raise DeskError(errors)
        try:
            refund = self._payments.refund(rule.out_trade_no, fen, reason=reason.strip(), actor=self.actor)
        except SmartparkError as e:
            raise DeskError({"amount" if e.field == "amount_fen" else (e.field or ""): e.zh}) from None
        state = str(getattr(refund.state, "value", refund.state))
        done = {"succeeded": "退款成功", "processing": "退款已提交，等待到账", "failed": "退款失败"}.get(state, state)
        return f"{done}：{Money(refund.amount_fen)}（退款单号 {refund.out_refund_no}）"


def _hm(at: datetime | None, tz: Any) -> str:
    return "—" if at is None else at.astimezone(tz).strftime("%H:%M")
