"""业主: register (errors beside the fields as you type), search, reveal (audited), change plate or phone
(audited, reason required), delete (confirmed, reason required), balance, payment history and cash top-up."""

from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import Any

from ..controllers import FormErrors, PersonRow, zh
from .common import OK_FG, Field, Form, FormDialog, Shell, fill, tree, ui_thread


class OwnersView:
    def __init__(self, parent: tk.Misc, shell: Shell) -> None:
        self.shell = shell
        c = shell.controller
        f = shell.fonts
        self.frame = ttk.Frame(parent, padding=(10, 8))
        self.frame.columnconfigure(0, weight=0)
        self.frame.columnconfigure(1, weight=1)
        self.frame.rowconfigure(1, weight=1)

        # -- register ------------------------------------------------------------------------------
        reg = ttk.LabelFrame(self.frame, text="业主登记", padding=(10, 4))
        reg.grid(row=0, column=0, sticky="nsew")
        self.form = Form(c.validate_owner, self.register)
        self.form.add(Field(reg, 0, "name", "姓名", f, width=17, error_width=220))
        self.form.add(Field(reg, 1, "id_number", "身份证号", f, width=17, error_width=220))
        self.form.add(Field(reg, 2, "phone", "手机号", f, width=17, error_width=220))
        self.form.add(Field(reg, 3, "plates", "车牌", f, width=17, hint="多个车牌用空格分隔", error_width=220))
        self.opt_out = tk.BooleanVar(reg, value=False)
        ttk.Checkbutton(reg, text="车库满时不接收通知", variable=self.opt_out).grid(row=4, column=1, sticky="w",
                                                                           pady=(6, 0))
        self.form.extra["lot_full_opt_out"] = self.opt_out.get
        buttons = ttk.Frame(reg)
        buttons.grid(row=5, column=0, columnspan=3, sticky="w", pady=(8, 4))
        self.register_button = ttk.Button(buttons, text="登记（Enter）", style="Primary.TButton", command=self.register)
        self.register_button.pack(side="left")
        ttk.Button(buttons, text="清空", command=self.form.clear).pack(side="left", padx=8)
        self.result = ttk.Label(reg, text="", wraplength=520)
        self.result.grid(row=6, column=0, columnspan=3, sticky="w")
        reg.columnconfigure(2, minsize=220)

        hist = ttk.LabelFrame(self.frame, text="选中业主的充值与扣费记录", padding=(6, 2))
        hist.grid(row=1, column=0, sticky="nsew", pady=(8, 0))
        hist.columnconfigure(0, weight=1)
        hist.rowconfigure(0, weight=1)
        self.history = tree(hist, (("at", "时间", 130), ("kind", "类型", 100), ("delta", "金额", 110),
                                   ("after", "余额", 110)), height=3, stretch="at")
        self.history.frame.grid(row=0, column=0, sticky="nsew")

        # -- search, the selected owner, balance and payments -----------------------------------------
        right = ttk.Frame(self.frame)
        right.grid(row=0, column=1, rowspan=2, sticky="nsew", padx=(12, 0))
        right.columnconfigure(0, weight=1)
        right.rowconfigure(1, weight=1)
        bar = ttk.Frame(right)
        bar.grid(row=0, column=0, sticky="ew")
        ttk.Label(bar, text="查询").pack(side="left")
        self.query = tk.StringVar(bar)
        self.search_entry = ttk.Entry(bar, textvariable=self.query, font=f.base, width=14)
        self.search_entry.pack(side="left", padx=6, fill="x", expand=True)
        self.search_entry.bind("<Return>", lambda e: self.search())
        self.search_entry.bind("<Escape>", lambda e: (self.query.set(""), self.search()))
        ttk.Button(bar, text="查询", command=self.search).pack(side="left")
        ttk.Label(bar, text="车牌、手机、身份证或姓名", style="Muted.TLabel").pack(side="left", padx=(8, 0))
        self.results = tree(right, (("name", "姓名", 90), ("plates", "车牌", 200), ("phone", "手机号", 150),
                                    ("balance", "余额", 100)), height=5, stretch="plates")
        self.results.frame.grid(row=1, column=0, sticky="nsew", pady=(6, 2))
        self.results.bind("<<TreeviewSelect>>", lambda e: self.select())

        det = ttk.LabelFrame(right, text="选中的业主", padding=(10, 2))
        det.grid(row=2, column=0, sticky="nsew", pady=(6, 0))
        det.columnconfigure(3, weight=1)
        self.detail: dict[str, ttk.Label] = {}
        for i, (key, label) in enumerate((("name", "姓名"), ("id_number", "身份证号"), ("phone", "手机号"),
                                          ("plates", "车牌"), ("balance", "余额"), ("last", "最近充值"))):
            ttk.Label(det, text=label, style="Muted.TLabel").grid(row=i, column=0, sticky="w", padx=(0, 8))
            self.detail[key] = ttk.Label(det, text="—", font=f.bold)
            self.detail[key].grid(row=i, column=1, sticky="w")
        self.reveal_buttons = {
            "id_number": ttk.Button(det, text="显示", width=4, style="Small.TButton",
                                    command=lambda: self.ask_reveal("id_number")),
            "phone": ttk.Button(det, text="显示", width=4, style="Small.TButton", command=lambda: self.ask_reveal("phone")),
        }
        self.reveal_buttons["id_number"].grid(row=1, column=2, sticky="w", padx=6)
        self.reveal_buttons["phone"].grid(row=2, column=2, sticky="w", padx=6)
        ttk.Label(det, text="查看、更换、删除均记入审计日志", style="Muted.TLabel").grid(
            row=0, column=2, columnspan=2, sticky="e", padx=(12, 0))
        actions = ttk.Frame(det)
        actions.grid(row=6, column=0, columnspan=4, sticky="w", pady=(8, 4))
        self.actions = {
            "plate": ttk.Button(actions, text="更换车牌", command=self.ask_change_plate),
            "phone": ttk.Button(actions, text="更换手机号", command=self.ask_change_phone),
            "topup": ttk.Button(actions, text="现金充值", style="Primary.TButton", command=self.ask_top_up),
            "delete": ttk.Button(actions, text="删除业主", style="Danger.TButton", command=self.ask_delete),
        }
        for b in self.actions.values():
            b.pack(side="left", padx=(0, 8))
        self.rows: dict[str, PersonRow] = {}
        self.selected: PersonRow | None = None
        self.revealed: dict[str, str] = {}
        self._top_up_ref = c.new_ref()
        self.show_detail(None)

    # -- registering ---------------------------------------------------------------------------------------
    @ui_thread
    def register(self) -> None:
        self.form.submitted = True
        errors = self.form.check(all_fields=True)
        if errors:
            self.result.configure(text="请按提示修改标红的项目", foreground="#c62828")
            return
        try:
            row = self.shell.controller.register_owner(self.form.data())
        except FormErrors as e:
            self.form.show(e.errors)
            self.result.configure(text="；".join(e.errors.values()), foreground="#c62828")
            return
        self.form.clear()
        self.opt_out.set(False)
        self.result.configure(text=f"✓ 已登记业主 {row.name}（{row.plates_text}）", foreground=OK_FG)
        self.shell.status(f"已登记业主 {row.name}")
        self.query.set("")
        self.search(select=row.id)

    # -- searching -----------------------------------------------------------------------------------------
    @ui_thread
    def search(self, select: str | None = None) -> None:
        try:
            rows = self.shell.controller.search_owners(self.query.get())
        except Exception as e:  # noqa: BLE001 - shown to the attendant
            self.shell.status(zh(e), error=True)
            return
        self.rows = {r.id: r for r in rows}
        fill(self.results, [(r.id, (r.name, r.plates_text, r.phone, r.balance)) for r in rows])
        if select and self.results.exists(select):
            self.results.selection_set(select)
            self.results.see(select)
        self.select()

    @ui_thread
    def refresh(self) -> None:
        self.search(select=self.selected.id if self.selected else None)

    def focus_search(self) -> None:
        self.search_entry.focus_set()
        self.search_entry.select_range(0, "end")

    @ui_thread
    def select(self) -> None:
        sel = self.results.selection()
        row = self.rows.get(sel[0]) if sel else None
        if row is None or self.selected is None or row.id != self.selected.id:
            self.revealed = {}
        self.show_detail(row)

    @ui_thread
    def show_detail(self, row: PersonRow | None) -> None:
        self.selected = row
        state = "normal" if row else "disabled"
        for b in [*self.actions.values(), *self.reveal_buttons.values()]:
            b.configure(state=state)
        if row is None:
            for label in self.detail.values():
                label.configure(text="—", foreground="#1a1a1a")
            self.history.delete(*self.history.get_children())
            return
        self.detail["name"].configure(text=row.name)
        self.detail["id_number"].configure(text=self.revealed.get("id_number", row.id_number))
        self.detail["phone"].configure(text=self.revealed.get("phone", row.phone))
        self.detail["plates"].configure(text=row.plates_text)
        for field in ("id_number", "phone"):
            self.reveal_buttons[field].configure(text="隐藏" if field in self.revealed else "显示")
        try:
            bal = self.shell.controller.balance(row.id)
        except Exception as e:  # noqa: BLE001 - the owner may have been deleted meanwhile
            self.shell.status(zh(e), error=True)
            return
        self.detail["balance"].configure(text=bal.balance, foreground="#c62828" if bal.negative else OK_FG)
        self.detail["last"].configure(text=bal.last_payment)
        fill(self.history, [(str(i), (h.at, h.kind, h.delta, h.balance_after))
                            for i, h in enumerate(bal.history)])

    # -- audited acts --------------------------------------------------------------------------------------
    def ask_reveal(self, field: str) -> FormDialog | None:
        row = self.selected
        if row is None:
            return None
        if field in self.revealed:  # hide again
            del self.revealed[field]
            self.show_detail(row)
            return None
        what = {"id_number": "身份证号", "phone": "手机号"}[field]

        def submit(values: dict[str, str]) -> Any:
            try:
                self.revealed[field] = self.shell.controller.reveal(row.id, field, values["reason"])
            except FormErrors as e:
                return e.errors
            self.show_detail(row)
            return None

        return FormDialog(self.shell, f"查看完整{what}", [("reason", "查看原因", "")], on_submit=submit,
                          ok_text="查看", message=f"查看 {row.name} 的完整{what}会记入审计日志。")

    def ask_change_plate(self) -> FormDialog | None:
        row = self.selected
        if row is None:
            return None

        def submit(values: dict[str, str]) -> Any:
            try:
                changed = self.shell.controller.change_plate(row.id, int(values["old"] or 0), values["new"],
                                                             values["reason"])
            except FormErrors as e:
                return e.errors
            self.shell.status(f"已为 {changed.name} 更换车牌：{changed.plates_text}")
            self.refresh()
            return None

        return FormDialog(self.shell, "更换车牌", [("old", "原车牌", ""), ("new", "新车牌", ""), ("reason", "原因", "")],
                          on_submit=submit, ok_text="更换", choices={"old": row.plates},
                          message="更换车牌会记入审计日志。")

    def ask_change_phone(self) -> FormDialog | None:
        row = self.selected
        if row is None:
            return None

        def submit(values: dict[str, str]) -> Any:
            try:
                self.shell.controller.change_phone(row.id, values["phone"], values["reason"])
            except FormErrors as e:
                return e.errors
            self.revealed.pop("phone", None)
            self.shell.status(f"已更换 {row.name} 的手机号")
            self.refresh()
            return None

        return FormDialog(self.shell, "更换手机号", [("phone", "新手机号", ""), ("reason", "原因", "")],
                          on_submit=submit, ok_text="更换", message=f"当前手机号 {row.phone}。更换会记入审计日志。")

    def ask_delete(self) -> FormDialog | None:
        row = self.selected
        if row is None:
            return None

        def submit(values: dict[str, str]) -> Any:
            if not values["reason"].strip():
                return {"reason": "请填写删除原因"}
            try:
                self.shell.controller.delete_owner(row.id, values["reason"])
            except FormErrors as e:
                return e.errors
            self.shell.status(f"已删除业主 {row.name}")
            self.selected = None
            self.search()
            return None

        return FormDialog(self.shell, "删除业主", [("reason", "删除原因", "")], on_submit=submit, ok_text="确认删除",
                          danger=True, message=f"确定删除业主 {row.name}（{row.plates_text}）？此操作不可撤销，"
                                               f"余额 {row.balance} 将一并清除，并记入审计日志。")

    def ask_top_up(self) -> FormDialog | None:
        row = self.selected
        if row is None:
            return None
        ref = self._top_up_ref

        def submit(values: dict[str, str]) -> Any:
            try:
                balance = self.shell.controller.top_up(row.id, values["amount"], ref)
            except FormErrors as e:
                return e.errors
            except Exception as e:  # noqa: BLE001
                return zh(e)
            self._top_up_ref = self.shell.controller.new_ref()  # the next top-up is a new one
            self.shell.status(f"已为 {row.name} 现金充值，余额 {balance}")
            self.refresh()
            return None

        return FormDialog(self.shell, "现金充值", [("amount", "金额（元）", "")], on_submit=submit,
                          ok_text="已收现金，充值", message=f"为 {row.name} 充值，当前余额 {row.balance}。")

