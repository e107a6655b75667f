"""外来车辆: register a visitor at the booth for an entry lane (the car is let in), search, delete, and the
cars inside now with the time parked, the fee so far and whether it is paid."""

from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import Any

from ..controllers import FormErrors, PersonRow, zh
from .common import OK_FG, Field, Form, FormDialog, Shell, fill, tree, ui_thread


class VisitorsView:
    def __init__(self, parent: tk.Misc, shell: Shell) -> None:
        self.shell = shell
        c = shell.controller
        f = shell.fonts
        self.frame = ttk.Frame(parent, padding=(10, 8))
        self.frame.columnconfigure(1, weight=1)
        self.frame.rowconfigure(1, weight=1)
        # 车牌/姓名/… form and the registered visitors on the left; the cars inside on the right

        reg = ttk.LabelFrame(self.frame, text="岗亭登记并放行", padding=(10, 4))
        reg.grid(row=0, column=0, sticky="nsew")
        self.lanes = c.entry_lanes()
        ttk.Label(reg, text="车道").grid(row=0, column=0, sticky="ne", padx=(4, 8), pady=(8, 0))
        self.lane = ttk.Combobox(reg, values=[lane.title for lane in self.lanes], state="readonly", font=f.base,
                                 width=18)
        self.lane.grid(row=0, column=1, sticky="new", pady=(6, 0))
        if self.lanes:
            self.lane.current(0)
        self.lane_error = ttk.Label(reg, text="", style="Error.TLabel", wraplength=240)
        self.lane_error.grid(row=0, column=2, sticky="nw", padx=(8, 4), pady=(8, 0))
        self.form = Form(self._validate, self.register)
        self.form.add(Field(reg, 1, "plate", "车牌", f, width=20, error_width=240))
        self.form.add(Field(reg, 2, "name", "姓名", f, width=20, error_width=240))
        self.form.add(Field(reg, 3, "id_number", "身份证号", f, width=20, error_width=240))
        self.form.add(Field(reg, 4, "phone", "手机号", f, width=20, error_width=240))
        self.consent = tk.BooleanVar(reg, value=False)
        self.consent_box = ttk.Checkbutton(reg, text="访客已阅读并同意《个人信息处理说明》", variable=self.consent,
                                           command=lambda: self.form.check())
        self.consent_box.grid(row=5, column=1, columnspan=2, sticky="w", pady=(6, 0))
        self.consent_error = ttk.Label(reg, text="", style="Error.TLabel", wraplength=240)
        self.consent_error.grid(row=6, column=2, sticky="nw", padx=(8, 4))
        self.form.extra["consent"] = self.consent.get
        self.form.extra["lane"] = self._lane_id
        buttons = ttk.Frame(reg)
        buttons.grid(row=6, column=0, columnspan=2, sticky="w", pady=(8, 4))
        self.register_button = ttk.Button(buttons, text="登记并抬杆（Enter）", style="Primary.TButton",
                                          command=self.register)
        self.register_button.pack(side="left")
        ttk.Button(buttons, text="清空", command=self.clear).pack(side="left", padx=8)
        self.result = ttk.Label(reg, text="", wraplength=240)
        self.result.grid(row=6, column=2, sticky="nw", padx=(8, 4), pady=(8, 0))
        reg.columnconfigure(2, minsize=240)

        # -- registered visitors ---------------------------------------------------------------------
        notice = ttk.Label(self.frame, text=c.privacy_notice().replace(" ", "\u00a0"), style="Muted.TLabel",
                           wraplength=580, justify="left")
        notice.grid(row=1, column=0, sticky="nw", pady=(8, 0))
        side = ttk.Frame(self.frame)
        side.grid(row=0, column=1, rowspan=2, sticky="nsew", padx=(12, 0))
        side.columnconfigure(0, weight=1)
        side.rowconfigure(1, weight=1)
        right = ttk.LabelFrame(side, text="已登记访客", padding=(6, 2))
        right.grid(row=0, column=0, sticky="nsew")
        right.columnconfigure(0, weight=1)
        right.rowconfigure(1, weight=1)
        bar = ttk.Frame(right)
        bar.grid(row=0, column=0, sticky="ew")
        self.query = tk.StringVar(bar)
        self.search_entry = ttk.Entry(bar, textvariable=self.query, font=f.base, width=18)
        self.search_entry.pack(side="left", fill="x", expand=True)
        self.search_entry.bind("<Return>", lambda e: self.search())
        self.search_entry.bind("<Escape>", lambda e: (self.query.set(""), self.search()))
        ttk.Button(bar, text="查询", command=self.search).pack(side="left", padx=6)
        self.delete_button = ttk.Button(bar, text="删除", style="Danger.TButton", command=self.ask_delete)
        self.delete_button.pack(side="left")
        self.results = tree(right, (("plate", "车牌", 120), ("name", "姓名", 90), ("phone", "手机号", 150),
                                    ("valid", "登记有效至", 140)), height=3, stretch="valid")
        self.results.frame.grid(row=1, column=0, sticky="nsew", pady=(4, 0))
        self.results.bind("<<TreeviewSelect>>", lambda e: self._selected())

        # -- cars inside now ----------------------------------------------------------------------------
        stays = ttk.LabelFrame(side, text="在场车辆（停车时长、当前费用、支付状态）", padding=(6, 2))
        stays.grid(row=1, column=0, sticky="nsew", pady=(6, 0))
        stays.columnconfigure(0, weight=1)
        stays.rowconfigure(0, weight=1)
        self.stays = tree(stays, (("plate", "车牌", 110), ("holder", "类型", 60), ("entered", "入场", 80),
                                  ("parked", "已停", 110), ("fee", "费用", 80), ("status", "支付状态", 150)),
                          height=6, stretch="status")
        self.stays.frame.grid(row=0, column=0, sticky="nsew")
        self.stay_count = ttk.Label(stays, text="", style="Muted.TLabel")
        self.stay_count.grid(row=1, column=0, sticky="w")
        self.rows: dict[str, PersonRow] = {}
        self._selected()

    def _lane_id(self) -> str | None:
        i = self.lane.current()
        return self.lanes[i].id if 0 <= i < len(self.lanes) else None

    def _validate(self, data: dict[str, Any]) -> dict[str, str]:
        errors = self.shell.controller.validate_visitor(data)
        if self.form.submitted or not errors.get("consent"):
            self.consent_error.configure(text=("✗\u00a0" + errors["consent"]) if errors.get("consent") else "")
        self.lane_error.configure(text=("✗\u00a0" + errors["lane"]) if errors.get("lane") else "")
        return errors

    def select_lane(self, lane_id: str) -> None:
        for i, lane in enumerate(self.lanes):
            if lane.id == lane_id:
                self.lane.current(i)

    def focus_form(self) -> None:
        self.form.fields["plate"].entry.focus_set()

    def focus_search(self) -> None:
        self.search_entry.focus_set()
        self.search_entry.select_range(0, "end")

    @ui_thread
    def clear(self) -> None:
        self.form.clear()
        self.consent.set(False)
        self.consent_error.configure(text="")
        self.lane_error.configure(text="")

    @ui_thread
    def register(self) -> None:
        self.form.submitted = True
        errors = self.form.check(all_fields=True)
        if errors:
            self.result.configure(text="请按提示修改标红的项目", foreground="#c62828")
            return
        data = self.form.data()
        self.register_button.configure(state="disabled")
        self.result.configure(text="正在登记…", foreground="#55606e")

        def ok(decision: Any) -> None:
            self.register_button.configure(state="normal")
            self.clear()
            opened = decision is not None and getattr(decision, "gate_ok", None)
            msg = getattr(decision, "message", "") or "已登记"
            self.result.configure(text=f"✓ {msg}" + ("" if opened else "（道闸未确认，请留意车道）"),
                                  foreground=OK_FG if opened else "#b26a00")
            self.shell.status(msg)
            self.search()

        def failed(e: BaseException) -> None:
            self.register_button.configure(state="normal")
            if isinstance(e, FormErrors):
                self.form.show(e.errors)
                self._validate(data) if "consent" in e.errors else None
                self.result.configure(text="；".join(e.errors.values()), foreground="#c62828")
            else:
                self.result.configure(text=zh(e), foreground="#c62828")

        self.shell.run_task(lambda: self.shell.controller.admit_visitor(data), on_ok=ok, on_error=failed)

    @ui_thread
    def search(self) -> None:
        try:
            rows = self.shell.controller.search_visitors(self.query.get())
        except Exception as e:  # noqa: BLE001
            self.shell.status(zh(e), error=True)
            return
        self.rows = {r.id: r for r in rows}
        fill(self.results, [(r.id, (r.plates_text, r.name, r.phone, r.valid_until)) for r in rows])
        self._selected()

    def _selected(self) -> None:
        self.delete_button.configure(state="normal" if self.results.selection() else "disabled")

    def ask_delete(self) -> FormDialog | None:
        sel = self.results.selection()
        row = self.rows.get(sel[0]) if sel else None
        if row is None:
            return None

        def submit(values: dict[str, str]) -> Any:
            if not values["reason"].strip():
                return {"reason": "请填写删除原因"}
            try:
                self.shell.controller.delete_visitor(row.id, values["reason"])
            except FormErrors as e:
                return e.errors
            self.shell.status(f"已删除访客 {row.plates_text}")
            self.search()
            return None

        return FormDialog(self.shell, "删除访客", [("reason", "删除原因", "")], on_submit=submit, ok_text="确认删除",
                          danger=True, message=f"确定删除访客 {row.name}（{row.plates_text}）的登记信息？记入审计日志。")

    @ui_thread
    def refresh_stays(self) -> None:
        try:
            rows = self.shell.controller.current_stays()
        except Exception as e:  # noqa: BLE001
            self.shell.status(zh(e), error=True)
            return
        self.show_stays(rows)

    @ui_thread
    def show_stays(self, rows: list[Any]) -> None:
        fill(self.stays, [(r.session_id, (r.plate, r.holder, r.entered, r.parked, r.fee, r.status))
                          for r in rows])
        self.stay_count.configure(text=f"共 {len(rows)} 辆在场")
