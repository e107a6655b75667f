"""支付查询: orders by plate, day and state, with each order's history; for the selected order 付款二维码 (an
open order, on a chosen channel), 打印收据 (a paid order: the receipt PDF is saved and its path shown) and 退款
(a paid online payment only; the reason it is not possible is shown beside the button)."""

from __future__ import annotations

import tkinter as tk
from pathlib import Path
from tkinter import ttk
from typing import Any

from ..controllers import STATE_ZH, FormErrors, OrderRow, zh
from .common import MessageDialog, Shell, fill, tree, ui_thread
from .paydialogs import ask_refund, show_payment_qr

STATES = [("", "全部")] + [(s.value, label) for s, label in STATE_ZH.items()]


class PaymentsView:
    def __init__(self, parent: tk.Misc, shell: Shell) -> None:
        self.shell = shell
        f = shell.fonts
        self.frame = ttk.Frame(parent, padding=(10, 8))
        self.frame.columnconfigure(0, weight=1)
        self.frame.rowconfigure(2, weight=1)
        bar = ttk.Frame(self.frame)
        bar.grid(row=0, column=0, sticky="ew")
        ttk.Label(bar, text="车牌").pack(side="left")
        self.plate = tk.StringVar(bar)
        self.plate_entry = ttk.Entry(bar, textvariable=self.plate, width=12, font=f.base)
        self.plate_entry.pack(side="left", padx=(6, 16))
        ttk.Label(bar, text="日期").pack(side="left")
        self.date = tk.StringVar(bar, value=shell.controller.now().strftime("%Y-%m-%d"))
        self.date_entry = ttk.Entry(bar, textvariable=self.date, width=12, font=f.base)
        self.date_entry.pack(side="left", padx=(6, 16))
        ttk.Label(bar, text="状态").pack(side="left")
        self.state = ttk.Combobox(bar, values=[label for _, label in STATES], state="readonly", width=8, font=f.base)
        self.state.current(0)
        self.state.pack(side="left", padx=(6, 16))
        ttk.Button(bar, text="查询（Enter）", style="Primary.TButton", command=self.search).pack(side="left")
        for entry in (self.plate_entry, self.date_entry):
            entry.bind("<Return>", lambda e: self.search())
        self.errors = ttk.Label(self.frame, text="日期格式 2025-01-06，留空查询全部；车牌可留空", style="Muted.TLabel")
        self.errors.grid(row=1, column=0, sticky="w", pady=(4, 4))
        self.results = tree(self.frame, (("created", "下单时间", 150), ("plate", "车牌", 130), ("amount", "金额", 110),
                                         ("state", "状态", 100), ("channel", "支付方式", 130), ("paid", "支付时间", 150),
                                         ("lane", "车道", 150), ("refunded", "已退款", 100)), height=9, stretch="lane")
        self.results.frame.grid(row=2, column=0, sticky="nsew")
        self.results.bind("<<TreeviewSelect>>", lambda e: self.select())
        bottom = ttk.Frame(self.frame)
        bottom.grid(row=3, column=0, sticky="ew", pady=(8, 0))
        bottom.columnconfigure(0, weight=1)
        hist = ttk.LabelFrame(bottom, text="订单记录", padding=(6, 2))
        hist.grid(row=0, column=0, sticky="nsew")
        self.history = tk.Listbox(hist, height=4, font=f.small, activestyle="none", relief="flat",
                                  highlightthickness=0)
        self.history.pack(fill="both", expand=True)
        side = ttk.Frame(bottom)
        side.grid(row=0, column=1, sticky="ne", padx=(12, 0))
        self.features = shell.controller.payment_features()
        self.pay_qr = ttk.Button(side, text="付款二维码", state="disabled", command=self.show_pay_qr)
        self.pay_qr.pack(fill="x")
        self.receipt = ttk.Button(side, text="打印收据", state="disabled", command=self.print_receipt)
        self.receipt.pack(fill="x", pady=(6, 0))
        self.refund = ttk.Button(side, text="退款", state="disabled", command=self.ask_refund)
        self.refund.pack(fill="x", pady=(6, 0))
        self.hint = ttk.Label(side, text="请选择一笔订单", style="Muted.TLabel", wraplength=220, justify="left")
        self.hint.pack(anchor="w", pady=(6, 0))
        self.total = ttk.Label(side, text="", font=f.bold)
        self.total.pack(anchor="e", pady=(10, 0))
        self.rows: dict[str, OrderRow] = {}
        self.refund_rule: Any = None
        self.last_receipt: Path | None = None

    def focus_search(self) -> None:
        self.plate_entry.focus_set()
        self.plate_entry.select_range(0, "end")

    @ui_thread
    def search(self) -> None:
        state = STATES[max(0, self.state.current())][0]
        try:
            rows = self.shell.controller.find_orders(self.plate.get(), self.date.get(), state)
        except FormErrors as e:
            self.errors.configure(text="✗\u00a0" + "；".join(e.errors.values()), style="Error.TLabel")
            return
        except Exception as e:  # noqa: BLE001
            self.errors.configure(text="✗\u00a0" + zh(e), style="Error.TLabel")
            return
        self.errors.configure(text=f"找到 {len(rows)} 笔订单", style="Muted.TLabel")
        self.rows = {r.order_id: r for r in rows}
        fill(self.results, [(r.order_id, (r.created, r.plate, r.amount, r.state, r.channel, r.paid_at, r.lane,
                                          r.refunded)) for r in rows])
        paid = sum(1 for r in rows if r.paid_at != "—")
        self.total.configure(text=f"其中已支付 {paid} 笔")
        self.select()

    @ui_thread
    def select(self) -> None:
        sel = self.results.selection()
        row = self.rows.get(sel[0]) if sel else None
        self.history.delete(0, "end")
        if row is not None:
            self.history.insert("end", f"订单号 {row.order_id}")
            for line in row.history:
                self.history.insert("end", line)
        self._buttons(row)

    # -- 付款二维码 / 打印收据 / 退款 ---------------------------------------------------------------------------
    def selected(self) -> OrderRow | None:
        sel = self.results.selection()
        return self.rows.get(sel[0]) if sel else None

    def _buttons(self, row: OrderRow | None) -> None:
        """Enable what the selected order allows; say why the rest is not possible."""
        f = self.features
        self.refund_rule = None
        if row is None:
            for b in (self.pay_qr, self.receipt, self.refund):
                b.configure(state="disabled")
            self.hint.configure(text="请选择一笔订单")
            return
        is_open = row.state_code in ("created", "paying")
        is_paid = row.state_code in ("paid", "refunded")
        self.pay_qr.configure(state="normal" if is_open and f.pay_qr else "disabled")
        self.receipt.configure(state="normal" if is_paid and f.receipt else "disabled")
        hints = []
        if is_open and not f.pay_qr:
            hints.append("线上支付未开通，请收取现金")
        if f.refund:
            rule = self.shell.controller.pay.refund_rule(row.order_id, row.state_code, row.channel_code)
            self.refund_rule = rule if rule.allowed else None
            self.refund.configure(state="normal" if rule.allowed else "disabled")
            if is_paid:
                hints.append(rule.why)
        else:
            self.refund.configure(state="disabled")
        self.hint.configure(text="；".join(hints))

    def show_pay_qr(self) -> Any:
        row = self.selected()
        if row is None or row.state_code not in ("created", "paying"):
            return None
        return show_payment_qr(self.shell, row.order_id, f"付款二维码 — {row.plate} {row.amount}")

    def print_receipt(self) -> None:
        row = self.selected()
        if row is None:
            return
        desk = self.shell.controller.pay

        def saved(path: Path) -> None:
            self.last_receipt = path
            self.shell.status(f"收据已保存：{path}")
            MessageDialog(self.shell, "打印收据", f"收据（PDF）已保存到\n{path}\n请从该文件打印。", tone="ok")

        self.shell.run_task(lambda: desk.save_receipt(row.order_id), on_ok=saved,
                            on_error=lambda e: self.shell.status(zh(e), error=True))

    def ask_refund(self) -> Any:
        row, rule = self.selected(), self.refund_rule
        if row is None or rule is None:
            return None

        def done(text: str) -> None:
            self.shell.status(text)
            self.search()

        return ask_refund(self.shell, rule, row.plate, done)
