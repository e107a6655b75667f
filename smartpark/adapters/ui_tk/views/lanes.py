"""车道: one panel per lane (picture, plate, who, the decision in colour, the buttons the moment needs), the
occupancy, the traffic rules and the event log."""

from __future__ import annotations

import os
import tkinter as tk
from tkinter import ttk
from typing import Any

from ..controllers import FormErrors, LaneInfo, zh
from ..model import HOLDER_ZH, LaneState
from .common import (
    HEADER_BG,
    MUTED_FG,
    OUTCOME_COLOURS,
    OUTCOME_ZH,
    PANEL_BG,
    RED_BG,
    FormDialog,
    ImageDialog,
    Painter,
    Shell,
    ui_thread,
)
from .lot import free_colour
from .paydialogs import show_payment_qr

try:  # optional: JPEG pictures (cameras usually send JPEG); without it a placeholder names the file
    from PIL import Image as _PILImage  # type: ignore[import-not-found]
    from PIL import ImageTk as _PILImageTk  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the machine
    _PILImage = _PILImageTk = None

MAX_PICTURE_BYTES = 16 * 1024 * 1024


def load_picture(path: str | None, max_w: int, max_h: int) -> tuple[Any, str]:
    """``(PhotoImage or None, caption)`` for a read's picture: PNG/GIF with Tk, JPEG with Pillow if installed."""
    if not path:
        return None, "无抓拍图片"
    name = os.path.basename(path)
    if "://" in path:
        return None, f"抓拍图片：{name}"
    try:
        if not os.path.isfile(path) or os.path.getsize(path) > MAX_PICTURE_BYTES:
            return None, f"抓拍图片不可用：{name}"
        ext = os.path.splitext(path)[1].lower()
        if ext in (".png", ".gif", ".ppm", ".pgm"):
            img = tk.PhotoImage(file=path)
            factor = max(1, -(-img.width() // max_w), -(-img.height() // max_h))
            return (img.subsample(factor) if factor > 1 else img), name
        if _PILImage is not None:
            with _PILImage.open(path) as im:
                im.thumbnail((max_w, max_h))
                return _PILImageTk.PhotoImage(im), name
        return None, f"抓拍图片：{name}\n（JPEG 图片需安装 pillow 才能显示）"
    except (tk.TclError, OSError, ValueError) as e:
        return None, f"抓拍图片无法显示：{name}（{e.__class__.__name__}）"


class LanePanel:
    """One lane. :meth:`render` draws a :class:`LaneState`; the buttons call the shell's lane actions."""

    def __init__(self, parent: tk.Misc, shell: Shell, lane: LaneInfo, *, compact: bool, width: int) -> None:
        self.shell, self.lane = shell, lane
        f = shell.fonts
        self.frame = tk.Frame(parent, bg="#ffffff", highlightthickness=2, highlightbackground="#c5ccd6")
        top = tk.Frame(self.frame, bg=HEADER_BG)
        top.pack(fill="x")
        tk.Label(top, text=lane.title, font=f.title, bg=HEADER_BG, fg="#ffffff", anchor="w", padx=10,
                 pady=4).pack(side="left")
        if lane.shortcut:
            tk.Label(top, text=f"{lane.shortcut} 手动抬杆", font=f.small, bg=HEADER_BG, fg="#cfe0f5",
                     padx=10).pack(side="right")
        self.pic_h = 90 if compact else 110
        self.pic_w = width - 24
        pic = tk.Frame(self.frame, width=self.pic_w, height=self.pic_h, bg="#263238")
        pic.pack(padx=10, pady=(8, 4))
        pic.pack_propagate(False)
        self.picture = tk.Label(pic, text="无抓拍图片", font=f.small, fg="#cfd8dc", bg="#263238",
                                wraplength=self.pic_w - 20, justify="center")
        self.picture.pack(fill="both", expand=True)
        self._picture_path: str | None = ""
        self._photo: Any = None
        row = tk.Frame(self.frame, bg="#ffffff")
        row.pack(fill="x", padx=10)
        self.plate = tk.Label(row, text="—", font=f.plate, bg="#ffffff", fg="#0b1d33", anchor="w")
        self.plate.pack(side="left")
        side = tk.Frame(row, bg="#ffffff")
        side.pack(side="right", anchor="e")
        self.holder = tk.Label(side, text="", font=f.bold, bg="#dfe8f3", fg=HEADER_BG, anchor="e", padx=8)
        self.holder.pack(anchor="e", pady=(4, 2))
        self.when = tk.Label(side, text="", font=f.small, bg="#ffffff", fg=MUTED_FG, anchor="e", justify="right")
        self.when.pack(anchor="e")
        self.message = tk.Label(self.frame, text="等待车辆", font=f.large, anchor="w", justify="left",
                                wraplength=width - 40, padx=12, pady=5)
        self.message.pack(fill="x", padx=10, pady=(2, 2))
        self.alert = tk.Label(self.frame, text="", font=f.bold, fg=RED_BG, bg="#ffffff", anchor="w",
                              justify="left", wraplength=width - 30)
        self.alert.pack(fill="x", padx=10)
        self.buttons_frame = tk.Frame(self.frame, bg="#ffffff")
        self.buttons_frame.pack(fill="x", padx=10, pady=(4, 8))
        self.buttons_frame.columnconfigure((0, 1), weight=1, uniform="b")
        self.buttons: dict[str, ttk.Button] = {
            "manual": ttk.Button(self.buttons_frame, text=f"手动抬杆 {lane.shortcut}".strip(), style="Big.TButton",
                                 command=self.ask_manual_open),
            "confirm": ttk.Button(self.buttons_frame, text="确认车牌", style="Big.TButton", command=self.ask_confirm),
            "cash": ttk.Button(self.buttons_frame, text="现金收费", style="Pay.TButton", command=self.ask_cash),
            "pay_qr": ttk.Button(self.buttons_frame, text="显示付款二维码", style="Big.TButton", command=self.show_pay_qr),
            "reg_qr": ttk.Button(self.buttons_frame, text="显示登记二维码", style="Big.TButton", command=self.show_reg_qr),
            "register": ttk.Button(self.buttons_frame, text="岗亭代为登记", style="Big.TButton",
                                   command=self.register_here),
        }
        self._visible: tuple[str, ...] = ()
        self.history: tk.Listbox | None = None
        if not compact:
            tk.Label(self.frame, text="最近记录", font=f.small, bg="#ffffff", fg=MUTED_FG, anchor="w").pack(
                fill="x", padx=10)
            self.history = tk.Listbox(self.frame, height=3, font=f.small, activestyle="none", relief="flat",
                                      highlightthickness=0, bg="#f3f5f8")
            self.history.pack(fill="both", expand=True, padx=10, pady=(0, 8))
        self.state = LaneState(lane.id)
        self._paint = Painter()
        self._history_lines: list[str] = []
        self.render(self.state)

    # -- drawing ---------------------------------------------------------------------------------------
    @ui_thread
    def render(self, s: LaneState) -> None:
        c = self.shell.controller
        paint = self._paint.set
        self.state = s
        fg, bg = OUTCOME_COLOURS.get(s.outcome, OUTCOME_COLOURS[None])
        paint(self.plate, text=s.plate or ("—" if s.outcome is None else "无车牌"))
        holder = HOLDER_ZH.get(s.holder, "")
        if s.outcome == "hold" and s.reason == "registration_required":
            holder = "外来 · 未登记"
        paint(self.holder, text=holder, bg="#dfe8f3" if holder else "#ffffff")
        when = c.time(s.at) if s.at else ""
        if s.read_at is not None and s.confidence is not None and s.outcome is not None:
            when = f"置信度 {s.confidence:.0%}  {when}"
        paint(self.when, text=when)
        label = OUTCOME_ZH.get(s.outcome, "")
        text = s.message if s.outcome is None else f"【{label}】{s.message}"
        if s.gate_ok is False and s.outcome == "open":
            text += "（道闸未确认）"
        paint(self.message, text=text, fg=fg, bg=bg)
        alert = s.alert
        if s.reg_url and s.reg_expires:
            alert = alert or f"等待访客扫码登记（{c.time(s.reg_expires)} 前有效）"
        if s.needs_confirm and s.read_raw:
            alert = alert or f"摄像机识别为「{s.read_raw}」，请核对车牌"
        paint(self.alert, text=alert, fg=RED_BG if s.alert else HEADER_BG)
        if s.picture != self._picture_path:
            self._picture_path = s.picture
            self._photo, caption = load_picture(s.picture, self.pic_w, self.pic_h)
            if self._photo is not None:
                self.picture.configure(image=self._photo, text="")
            else:
                self.picture.configure(image="", text=caption)
        self._show_buttons(s)
        if self.history is not None:
            lines = [f"{c.time(at)}  {message}" for at, _plate, message, _outcome in list(s.history)[1:5]]
            if lines != self._history_lines:
                self._history_lines = lines
                self.history.delete(0, "end")
                if lines:
                    self.history.insert("end", *lines)

    def _show_buttons(self, s: LaneState) -> None:
        wanted = ["manual"]
        if s.order_id:
            self._paint.set(self.buttons["cash"], text=f"现金收费 {c_money(s.amount_fen)}")
            wanted += ["cash", "pay_qr"]
            online = self.shell.controller.payment_features().pay_qr
            self._paint.set(self.buttons["pay_qr"], text="显示付款二维码" if online else "付款二维码（未开通）",
                            state="normal" if online else "disabled")
        if s.reg_url:
            wanted += ["reg_qr", "register"]
        if s.needs_confirm or s.outcome in ("hold", "refuse") and not s.order_id:
            wanted.insert(0, "confirm")
        visible = tuple(dict.fromkeys(wanted))
        if visible == self._visible:
            return
        for b in self.buttons.values():
            b.grid_forget()
        for i, name in enumerate(visible):
            self.buttons[name].grid(row=i // 2, column=i % 2, sticky="ew", padx=3, pady=3)
        self._visible = visible

    @property
    def visible_buttons(self) -> tuple[str, ...]:
        return self._visible

    # -- actions ---------------------------------------------------------------------------------------
    def ask_manual_open(self) -> FormDialog:
        c = self.shell.controller

        def submit(values: dict[str, str]) -> Any:
            reason = values["reason"].strip()
            if not reason:
                return {"reason": "手动抬杆必须填写原因"}
            self.shell.run_task(lambda: c.manual_open(self.lane.id, reason), on_ok=dialog.done,
                                on_error=lambda e: dialog.fail(_errors(e)))
            return "pending"

        dialog = FormDialog(self.shell, f"手动抬杆 — {self.lane.title}", [("reason", "原因", "")],
                            on_submit=submit, ok_text="抬杆", danger=True,
                            message="手动抬杆会记入审计日志，请写明原因（如：救护车、识别失败已核实）。")
        return dialog

    def ask_confirm(self) -> FormDialog:
        c = self.shell.controller
        s = self.state
        hint = f"摄像机识别为「{s.read_raw}」。" if s.read_raw else ""

        def submit(values: dict[str, str]) -> Any:
            plate = values["plate"].strip()
            if not plate:
                return {"plate": "请输入车牌号"}
            self.shell.run_task(lambda: c.confirm_read(self.lane.id, plate), on_ok=dialog.done,
                                on_error=lambda e: dialog.fail(_errors(e, "plate")))
            return "pending"

        dialog = FormDialog(self.shell, f"确认车牌 — {self.lane.title}", [("plate", "车牌号", "")],
                            on_submit=submit, ok_text="确认",
                            message=hint + "请核对车辆实际车牌后输入，系统将按该车牌重新判断。")
        return dialog

    def ask_cash(self) -> FormDialog | None:
        s = self.state
        if not s.order_id:
            return None
        order_id, amount = s.order_id, c_money(s.amount_fen)

        def submit(_values: dict[str, str]) -> Any:
            self.shell.run_task(lambda: self.shell.controller.settle_cash(order_id, self.lane.id),
                                on_ok=lambda d: (dialog.done(), self.shell.status(f"已收现金 {amount}")),
                                on_error=lambda e: dialog.fail(_errors(e)))
            return "pending"

        dialog = FormDialog(self.shell, f"现金收费 — {self.lane.title}", [], on_submit=submit,
                            ok_text=f"已收现金 {amount}",
                            message=f"车辆 {s.plate or ''} 应缴 {amount}。收到现金后按 Enter，道闸将抬起。")
        return dialog

    def show_reg_qr(self) -> ImageDialog | None:
        s = self.state
        if not s.reg_url:
            return None
        image, note = self.shell.qr_image(s.reg_url)
        caption = f"外来车辆 {s.reg_plate or ''} 请用手机扫码登记\n{self.shell.controller.time(s.reg_expires)} 前有效"
        return ImageDialog(self.shell, f"登记二维码 — {self.lane.title}", image=image, caption=caption,
                           fallback=note)

    def show_pay_qr(self) -> Any:
        """The order's payment QR code on a chosen channel (polled until paid; the gate opens on payment)."""
        s = self.state
        if not s.order_id:
            return None
        return show_payment_qr(self.shell, s.order_id, f"付款二维码 — {self.lane.title}")

    def register_here(self) -> None:
        self.shell.open_visitor_registration(self.lane.id)


class LanesView:
    """The main screen: the lane panels, the occupancy, the traffic rules and the event log."""

    def __init__(self, parent: tk.Misc, shell: Shell) -> None:
        self.shell = shell
        f = shell.fonts
        self.frame = ttk.Frame(parent, padding=(8, 8))
        lanes = shell.controller.lanes()
        grid = ttk.Frame(self.frame)
        grid.grid(row=0, column=0, sticky="nsew")
        side = ttk.Frame(self.frame, width=330)
        side.grid(row=0, column=1, sticky="nsew", padx=(10, 0))
        self.frame.columnconfigure(0, weight=1)
        self.frame.rowconfigure(0, weight=1)
        cols = 2 if len(lanes) > 1 else 1
        compact = len(lanes) > 2
        width = 440 if cols == 2 else 880
        self.panels: dict[str, LanePanel] = {}
        for i, lane in enumerate(lanes):
            p = LanePanel(grid, shell, lane, compact=compact, width=width)
            p.frame.grid(row=i // cols, column=i % cols, sticky="nsew", padx=4, pady=4)
            self.panels[lane.id] = p
        for c in range(cols):
            grid.columnconfigure(c, weight=1, uniform="lane")
        for r in range((len(lanes) + cols - 1) // cols):
            grid.rowconfigure(r, weight=1)

        occ = tk.Frame(side, bg=PANEL_BG, highlightthickness=1, highlightbackground="#c5ccd6")
        occ.pack(fill="x")
        tk.Label(occ, text="剩余\n车位", font=f.bold, bg=PANEL_BG, fg=HEADER_BG, justify="left").pack(
            side="left", padx=(10, 4), pady=4)
        self.free = tk.Label(occ, text="—", font=f.huge, bg=PANEL_BG, fg="#1b7f3b")
        self.free.pack(side="left", padx=4)
        self.total = tk.Label(occ, text="", font=f.small, bg=PANEL_BG, fg=MUTED_FG, justify="left")
        self.total.pack(side="left", padx=(8, 10))

        rules = ttk.LabelFrame(side, text="收费与通行规则", padding=(8, 2))
        rules.pack(fill="x", pady=(6, 0))
        self.rules_frame = rules
        self.rule_labels: list[ttk.Label] = []
        logf = ttk.LabelFrame(side, text="事件记录", padding=(4, 2))
        logf.pack(fill="both", expand=True, pady=(6, 0))
        self.log = tk.Text(logf, font=f.small, relief="flat", highlightthickness=0, width=30, height=4,
                           bg="#ffffff", wrap="none", state="disabled", cursor="arrow")
        self.log.pack(fill="both", expand=True)
        for tone, colour in (("refuse", "#c62828"), ("hold", "#8a5a00"), ("open", "#1b5e20"), ("info", "#1a1a1a")):
            self.log.tag_configure(tone, foreground=colour)
        self.log_lines = 0

    @ui_thread
    def set_rules(self, lines: list[str]) -> None:
        for label in self.rule_labels:
            label.destroy()
        self.rule_labels = []
        for i, line in enumerate(lines):
            bullet = ttk.Label(self.rules_frame, text="•", font=self.shell.fonts.small)
            bullet.grid(row=i, column=0, sticky="nw")
            # no break at the spaces between Chinese and numbers: Tk wraps at ASCII spaces only
            text = ttk.Label(self.rules_frame, text=line.replace(" ", "\u00a0"), font=self.shell.fonts.small,
                             wraplength=310, justify="left")
            text.grid(row=i, column=1, sticky="w", padx=(4, 0))
            self.rule_labels += [bullet, text]

    @ui_thread
    def set_occupancy(self, occ: Any) -> None:
        self.free.configure(text=str(occ.free), fg=free_colour(occ))
        self.total.configure(text=f"总车位 {occ.capacity}\n在场 {occ.occupied} 辆" + ("\n车库已满" if occ.full else ""))

    @ui_thread
    def add_log(self, lines: list[tuple[str, str]]) -> None:
        """Newest on top; keeps the last 200 lines. ``lines`` are ``(text, tone)``, oldest first. One insert
        call for the whole batch, whatever its size."""
        if not lines:
            return
        args: list[str] = []
        for text, tone in reversed(lines[-200:]):
            args += [text + "\n", tone if tone in ("refuse", "hold", "open") else "info"]
        self.log.configure(state="normal")
        self.log.insert("1.0", *args)
        self.log_lines = min(200, self.log_lines + min(len(lines), 200))
        self.log.delete("201.0", "end")
        self.log.configure(state="disabled")

    def log_text(self) -> str:
        return self.log.get("1.0", "end").strip()


def c_money(fen: int | None) -> str:
    return "" if fen is None else f"¥{fen // 100}.{fen % 100:02d}"


def _errors(e: BaseException, field: str = "reason") -> dict[str, str] | str:
    if isinstance(e, FormErrors):
        return e.errors
    if getattr(e, "field", None) == "plate" and field == "plate":
        return {"plate": zh(e)}
    return zh(e)
