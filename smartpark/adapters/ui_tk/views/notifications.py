"""通知: the recent outbox messages (SMS, WeChat) with their state and the provider's code; 重发 for failed ones."""

from __future__ import annotations

import tkinter as tk
from tkinter import ttk

from ..controllers import NotificationRow, zh
from .common import OK_FG, Shell, fill, tree, ui_thread

STATES = [("", "全部"), ("failed", "发送失败"), ("retrying", "等待重试"), ("pending", "待发送"), ("sending", "发送中"),
          ("sent", "已发送"), ("cancelled", "已取消")]


class NotificationsView:
    REFRESH_MS = 5000  # while the screen shows

    def __init__(self, parent: tk.Misc, shell: Shell) -> None:
        self.shell = shell
        f = shell.fonts
        self.frame = ttk.Frame(parent, padding=(10, 8))
        self.frame.columnconfigure(0, weight=1)
        self.frame.rowconfigure(1, weight=1)
        bar = ttk.Frame(self.frame)
        bar.grid(row=0, column=0, sticky="ew", pady=(0, 6))
        ttk.Label(bar, text="状态").pack(side="left")
        self.state = ttk.Combobox(bar, values=[label for _, label in STATES], state="readonly", width=8, font=f.base)
        self.state.current(0)
        self.state.pack(side="left", padx=(6, 16))
        self.state.bind("<<ComboboxSelected>>", lambda e: self.refresh())
        ttk.Button(bar, text="刷新", command=self.refresh).pack(side="left")
        self.summary = ttk.Label(bar, text="", style="Muted.TLabel")
        self.summary.pack(side="left", padx=(16, 0))
        self.list = tree(self.frame, (("at", "时间", 170), ("channel", "渠道", 70), ("to", "接收人", 140),
                                      ("state", "状态", 100), ("attempts", "次数", 60), ("code", "服务商代码", 200),
                                      ("detail", "说明", 360)), height=12, stretch="detail")
        self.list.frame.grid(row=1, column=0, sticky="nsew")
        self.list.bind("<<TreeviewSelect>>", lambda e: self._selected())
        bottom = ttk.Frame(self.frame)
        bottom.grid(row=2, column=0, sticky="ew", pady=(8, 0))
        bottom.columnconfigure(0, weight=1)
        self.preview = ttk.Label(bottom, text="", wraplength=900, justify="left")
        self.preview.grid(row=0, column=0, sticky="w")
        self.retry_button = ttk.Button(bottom, text="重发", style="Primary.TButton", command=self.retry,
                                       state="disabled")
        self.retry_button.grid(row=0, column=1, sticky="e", padx=(12, 0))
        self.result = ttk.Label(bottom, text="")
        self.result.grid(row=1, column=0, columnspan=2, sticky="w", pady=(4, 0))
        self.rows: dict[str, NotificationRow] = {}
        self._job: str | None = None
        self.frame.bind("<Map>", lambda e: self._shown())
        self.frame.bind("<Unmap>", lambda e: self._hidden())

    def _shown(self) -> None:
        self.refresh()
        if self._job is None:
            self._job = self.frame.after(self.REFRESH_MS, self._tick)

    def _hidden(self) -> None:
        if self._job is not None:
            self.frame.after_cancel(self._job)
            self._job = None

    def _tick(self) -> None:
        self._job = None
        if self.frame.winfo_exists() and self.frame.winfo_ismapped():
            self.refresh()
            self._job = self.frame.after(self.REFRESH_MS, self._tick)

    @ui_thread
    def refresh(self) -> None:
        state = STATES[max(0, self.state.current())][0] or None
        try:
            rows = self.shell.controller.notifications(state)
        except Exception as e:  # noqa: BLE001
            self.shell.status(zh(e), error=True)
            return
        self.show(rows)

    @ui_thread
    def show(self, rows: list[NotificationRow]) -> None:
        self.rows = {r.id: r for r in rows}
        fill(self.list, [(r.id, (r.at, r.channel, r.recipient, r.state, r.attempts, r.vendor_code,
                                 " ".join(r.detail.split()))) for r in rows])
        failed = sum(1 for r in rows if r.state_code == "failed")
        self.summary.configure(text=f"共 {len(rows)} 条" + (f"，其中发送失败 {failed} 条" if failed else ""))
        self._selected()

    def _selected(self) -> None:
        sel = self.list.selection()
        row = self.rows.get(sel[0]) if sel else None
        self.preview.configure(text=f"内容：{row.text}" if row else "")
        self.retry_button.configure(state="normal" if row and row.can_retry else "disabled")

    @ui_thread
    def retry(self) -> None:
        sel = self.list.selection()
        row = self.rows.get(sel[0]) if sel else None
        if row is None or not row.can_retry:
            return
        try:
            self.shell.controller.retry_notification(row.id)
        except Exception as e:  # noqa: BLE001
            self.result.configure(text="✗\u00a0" + zh(e), foreground="#c62828")
            return
        self.result.configure(text=f"✓ 已重新排队，稍后发送至 {row.recipient}", foreground=OK_FG)
        self.shell.status(f"通知已重新排队：{row.recipient}")
        self.refresh()
