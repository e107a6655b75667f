"""支付查询: orders by plate, day and state, with each order's history. Receipts and refunds arrive with the
payments work in the core; until then they say "即将推出" (nothing is faked)."""

from __future__ import annotations

import tkinter as tk
from tkinter import ttk

from ..controllers import STATE_ZH, FormErrors, OrderRow, zh
from .common import Shell, fill, tree, ui_thread

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
        features = shell.controller.payment_features()
        self.receipt = ttk.Button(side, text="打印收据" if features.receipt else "打印收据（即将推出）",
                                  state="normal" if features.receipt else "disabled")
        self.receipt.pack(fill="x")
        self.refund = ttk.Button(side, text="退款" if features.refund else "退款（即将推出）",
                                 state="normal" if features.refund else "disabled")
        self.refund.pack(fill="x", pady=(6, 0))
        self.total = ttk.Label(side, text="", font=f.bold)
        self.total.pack(anchor="e", pady=(10, 0))
        self.rows: dict[str, OrderRow] = {}

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
