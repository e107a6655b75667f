"""Dialogs of the payment desk: the payment QR code (polled every 2 s) and the refund form. Tk only; the work is
:class:`smartpark.adapters.ui_tk.paydesk.PaymentDesk` (``shell.controller.pay``)."""

from __future__ import annotations

import tkinter as tk
from collections.abc import Callable
from typing import Any

from ..controllers import zh
from ..paydesk import DeskError, PayState, QrPayment, RefundRule
from .common import FormDialog, ImageDialog, Shell, ui_thread

POLL_MS = 2000


class PaymentQrDialog(ImageDialog):
    """The QR code of one payment; the caption follows its state until it is paid or closed."""

    def __init__(self, shell: Shell, title: str, payment: QrPayment) -> None:
        image, note = shell.qr_image(payment.code_url)
        super().__init__(shell, title, image=image, fallback=note,
                         caption=f"请车主用{payment.channel}扫码支付 {payment.amount}\n{payment.expires} 前有效")
        self.payment = payment
        self.state = PayState("paying", "")
        self._after: str | None = self.top.after(POLL_MS, self.poll)

    def poll(self) -> None:
        self._after = None
        if self.closed:
            return
        desk = self.shell.controller.pay
        self.shell.run_task(lambda: desk.state(self.payment.out_trade_no), on_ok=self.show,
                            on_error=lambda e: self.show(PayState("paying", f"查询支付状态失败：{zh(e)}，稍后重试")))

    @ui_thread
    def show(self, state: PayState) -> None:
        if self.closed:
            return
        self.state = state
        self.caption.configure(text=state.text, foreground="#13803d" if state.state == "paid" else "")
        if state.state == "paid":
            self.shell.status(f"{self.payment.channel}收款成功 {self.payment.amount}")
        if state.state == "paying":
            self._after = self.top.after(POLL_MS, self.poll)

    def release(self) -> None:
        if self._after is not None:
            try:
                self.top.after_cancel(self._after)
            except tk.TclError:
                pass
            self._after = None
        super().release()


def show_payment_qr(shell: Shell, order_id: str, title: str) -> FormDialog | None:
    """Choose the channel (when more than one is enabled), create the payment, show its QR code.

    Returns the channel dialog when one is shown; the QR dialog opens when the payment exists (``shell.dialogs``).
    """
    desk = shell.controller.pay
    channels = desk.channels()
    if not channels:
        shell.status("线上支付未开通，请收取现金", error=True)
        return None

    def open_qr(channel: str, dialog: FormDialog | None = None) -> None:
        def opened(payment: QrPayment) -> None:
            if dialog is not None:
                dialog.done()
            PaymentQrDialog(shell, title, payment)

        def failed(e: BaseException) -> None:
            if dialog is not None:
                dialog.fail(zh(e))
            else:
                shell.status(zh(e), error=True)

        shell.run_task(lambda: desk.start(order_id, channel), on_ok=opened, on_error=failed)

    if len(channels) == 1:
        open_qr(channels[0][0])
        return None

    def submit(values: dict[str, str]) -> Any:
        index = int(values.get("channel") or 0)
        open_qr(channels[max(0, index)][0], dialog)
        return "pending"

    dialog = FormDialog(shell, f"选择支付方式 — {title}", [("channel", "支付方式", "")], on_submit=submit,
                        ok_text="生成二维码", choices={"channel": [label for _, label in channels]})
    return dialog


def ask_refund(shell: Shell, rule: RefundRule, plate: str, on_done: Callable[[str], None]) -> FormDialog:
    """The refund form: amount (yuan, at most what is left) and a reason; audited in the core."""
    desk = shell.controller.pay

    def submit(values: dict[str, str]) -> Any:
        def failed(e: BaseException) -> None:
            dialog.fail(e.errors if isinstance(e, DeskError) else zh(e))

        def ok(text: str) -> None:
            dialog.done()
            on_done(text)

        shell.run_task(lambda: desk.refund(rule, values["amount"], values["reason"]), on_ok=ok, on_error=failed)
        return "pending"

    dialog = FormDialog(shell, f"退款 — {plate}", [("amount", "退款金额（元）", f"{rule.refundable_fen / 100:.2f}"),
                                                  ("reason", "原因", "")],
                        on_submit=submit, ok_text="确认退款", danger=True,
                        message=f"{rule.why}。退款原路退回车主的支付账户，并记入审计日志。")
    return dialog
