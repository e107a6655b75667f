"""公告: publish, list, delete; and the scrolling announcement bar on top of every screen."""

from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import Any

from ..controllers import AnnouncementRow, FormErrors, zh
from .common import OK_FG, Field, Form, FormDialog, Shell, fill, tree, ui_thread


class Marquee:
    """A bar whose text scrolls right to left, moved by ``after`` on the Tk thread (no thread of its own)."""

    STEP_PX = 2
    INTERVAL_MS = 30

    def __init__(self, parent: tk.Misc, shell: Shell) -> None:
        self.shell = shell
        self.canvas = tk.Canvas(parent, height=shell.fonts.bold.metrics("linespace") + 14, bg="#fff4d6",
                                highlightthickness=0)
        self.badge = tk.Label(parent, text="公告", font=shell.fonts.bold, bg="#b26a00", fg="#ffffff", padx=12)
        self.item = self.canvas.create_text(0, 0, text="", anchor="w", font=shell.fonts.bold, fill="#5d3a00")
        self.text = ""
        self._job: str | None = None
        self.canvas.bind("<Configure>", lambda e: self._place_start())

    @ui_thread
    def set_text(self, text: str) -> None:
        if text == self.text:
            return
        self.text = text
        self.canvas.itemconfigure(self.item, text=text)
        self._place_start()
        if self._job is None:
            self._job = self.canvas.after(self.INTERVAL_MS, self._step)

    def _place_start(self) -> None:
        h = int(self.canvas.cget("height"))
        self.canvas.coords(self.item, max(self.canvas.winfo_width(), 200) - 200, h // 2)

    def _step(self) -> None:
        self._job = None
        if not self.canvas.winfo_exists():
            return
        width = self.canvas.winfo_width()
        x0, _y0, x1, _y1 = self.canvas.bbox(self.item) or (0, 0, 0, 0)
        if x1 - x0 <= width - 20:  # fits: no need to scroll
            self.canvas.coords(self.item, 12, int(self.canvas.cget("height")) // 2)
        elif x1 < 0:
            self.canvas.coords(self.item, width, int(self.canvas.cget("height")) // 2)
        else:
            self.canvas.move(self.item, -self.STEP_PX, 0)
        self._job = self.canvas.after(self.INTERVAL_MS, self._step)

    def stop(self) -> None:
        if self._job is not None:
            self.canvas.after_cancel(self._job)
            self._job = None


def marquee_text(rows: list[AnnouncementRow]) -> str:
    if not rows:
        return "暂无公告"
    return "        ◆        ".join(f"【{r.title}】{' '.join(r.body.split())}" for r in rows)


class AnnouncementsView:
    def __init__(self, parent: tk.Misc, shell: Shell) -> None:
        self.shell = shell
        c = shell.controller
        f = shell.fonts
        self.frame = ttk.Frame(parent, padding=(10, 8))
        self.frame.columnconfigure(1, weight=1)
        self.frame.rowconfigure(0, weight=1)
        form = ttk.LabelFrame(self.frame, text="发布公告", padding=(10, 4))
        form.grid(row=0, column=0, sticky="nsew")
        self.form = Form(c.validate_announcement, self.publish)
        self.form.add(Field(form, 0, "title", "标题", f, width=22, error_width=200))
        ttk.Label(form, text="内容").grid(row=1, column=0, sticky="ne", padx=(4, 8), pady=(8, 0))
        self.body = tk.Text(form, width=22, height=7, font=f.base, wrap="char", relief="solid", borderwidth=1)
        self.body.grid(row=1, column=1, sticky="new", pady=(6, 0))
        self.body_error = ttk.Label(form, text="", style="Error.TLabel", wraplength=200)
        self.body_error.grid(row=1, column=2, sticky="nw", padx=(8, 4), pady=(8, 0))
        self.body.bind("<KeyRelease>", lambda e: self._body_typed())
        self.body.bind("<Control-Return>", lambda e: (self.publish(), "break")[1])
        self.form.extra["body"] = lambda: self.body.get("1.0", "end").strip()
        self.form.add(Field(form, 2, "valid_until", "有效期至", f, width=22, error_width=200,
                            hint="可留空，格式如\n2025-01-31\u00a018:00"))
        buttons = ttk.Frame(form)
        buttons.grid(row=3, column=0, columnspan=3, sticky="w", pady=(10, 4))
        ttk.Button(buttons, text="发布（Enter；内容中 Ctrl+Enter）", style="Primary.TButton",
                   command=self.publish).pack(side="left")
        self.result = ttk.Label(form, text="", wraplength=480)
        self.result.grid(row=4, column=0, columnspan=3, sticky="w")
        form.columnconfigure(2, minsize=200)

        right = ttk.LabelFrame(self.frame, text="全部公告", padding=(6, 4))
        right.grid(row=0, column=1, sticky="nsew", padx=(12, 0))
        right.columnconfigure(0, weight=1)
        right.rowconfigure(0, weight=1)
        self.list = tree(right, (("state", "状态", 80), ("title", "标题", 170), ("valid", "有效期", 220),
                                 ("by", "发布人", 110)), height=10, stretch="title")
        self.list.frame.grid(row=0, column=0, sticky="nsew")
        self.list.bind("<<TreeviewSelect>>", lambda e: self._show_body())
        self.preview = ttk.Label(right, text="", wraplength=520, justify="left")
        self.preview.grid(row=1, column=0, sticky="w", pady=(6, 0))
        self.delete_button = ttk.Button(right, text="删除所选公告", style="Danger.TButton", command=self.ask_delete)
        self.delete_button.grid(row=2, column=0, sticky="e", pady=(6, 0))
        self.rows: dict[str, AnnouncementRow] = {}

    def _body_typed(self) -> None:
        self.form.check()
        errors = self.shell.controller.validate_announcement(self.form.data())
        self.body_error.configure(text=("✗\u00a0" + errors["body"]) if errors.get("body") else "")

    @ui_thread
    def publish(self) -> None:
        self.form.submitted = True
        errors = self.form.check(all_fields=True)
        self.body_error.configure(text=("✗\u00a0" + errors["body"]) if errors.get("body") else "")
        if errors:
            self.result.configure(text="请按提示修改标红的项目", foreground="#c62828")
            return
        try:
            row = self.shell.controller.publish(self.form.data())
        except FormErrors as e:
            self.form.show(e.errors)
            self.result.configure(text="；".join(e.errors.values()), foreground="#c62828")
            return
        self.form.clear()
        self.body.delete("1.0", "end")
        self.body_error.configure(text="")
        self.result.configure(text=f"✓ 已发布：{row.title}", foreground=OK_FG)
        self.shell.status(f"已发布公告：{row.title}")
        self.refresh()

    @ui_thread
    def refresh(self) -> None:
        try:
            rows = self.shell.controller.announcements()
        except Exception as e:  # noqa: BLE001
            self.shell.status(zh(e), error=True)
            return
        self.show(rows)

    @ui_thread
    def show(self, rows: list[AnnouncementRow]) -> None:
        self.rows = {r.id: r for r in rows}
        fill(self.list, [(r.id, ("显示中" if r.current else "未显示", r.title, r.valid, r.by)) for r in rows])
        self._show_body()

    def _show_body(self) -> None:
        sel = self.list.selection()
        row = self.rows.get(sel[0]) if sel else None
        self.preview.configure(text=row.body if row else "")
        self.delete_button.configure(state="normal" if row else "disabled")

    def ask_delete(self) -> FormDialog | None:
        sel = self.list.selection()
        row = self.rows.get(sel[0]) if sel else None
        if row is None:
            return None

        def submit(_values: dict[str, str]) -> Any:
            try:
                self.shell.controller.delete_announcement(row.id)
            except Exception as e:  # noqa: BLE001
                return zh(e)
            self.shell.status(f"已删除公告：{row.title}")
            self.refresh()
            return None

        return FormDialog(self.shell, "删除公告", [], on_submit=submit, ok_text="确认删除", danger=True,
                          message=f"确定删除公告「{row.title}」？")
