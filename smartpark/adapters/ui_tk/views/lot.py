"""车位: free and total spaces, today's entries/exits and fees per hour as bar charts, and device status."""

from __future__ import annotations

import tkinter as tk
from tkinter import ttk
from typing import Any

from ..controllers import DeviceRow, OccupancyView, TodayStats
from .common import HEADER_BG, MUTED_FG, PANEL_BG, Shell, fill, tree, ui_thread

ENTRY_COLOUR, EXIT_COLOUR, REVENUE_COLOUR = "#1f5fa8", "#e07b00", "#2e7d32"


def free_colour(o: OccupancyView) -> str:
    """Red when full, amber when nearly (5% or one space), else green."""
    if o.full:
        return "#c62828"
    return "#b26a00" if o.free <= max(1, o.capacity // 20) else "#1b7f3b"


class BarChart:
    """Bars per hour (0–23) on a Canvas; one or two series side by side."""

    def __init__(self, parent: tk.Misc, shell: Shell, *, title: str, height: int,
                 series: list[tuple[str, str]], money: bool = False) -> None:
        self.shell = shell
        self.canvas = tk.Canvas(parent, height=height, bg="#ffffff", highlightthickness=1,
                                highlightbackground="#c5ccd6")
        self.title, self.series, self.money = title, series, money
        self.values: list[tuple[int, ...]] = [tuple([0] * 24) for _ in series]
        self.hour_now = -1
        self.canvas.bind("<Configure>", lambda e: self.draw())

    @ui_thread
    def set(self, values: list[tuple[int, ...]], hour_now: int) -> None:
        self.values, self.hour_now = values, hour_now
        self.draw()

    def draw(self) -> None:
        c = self.canvas
        c.delete("all")
        f = self.shell.fonts
        w, h = max(c.winfo_width(), 400), max(c.winfo_height(), 120)
        left, right, top, bottom = 64, 16, 40, 30
        c.create_text(left, 8, text=self.title, anchor="nw", font=f.bold, fill=HEADER_BG)
        lx = w - right
        for name, colour in reversed(self.series):
            tid = c.create_text(lx, 10, text=name, anchor="ne", font=f.small, fill="#1a1a1a")
            x0 = c.bbox(tid)[0]
            c.create_rectangle(x0 - 22, 14, x0 - 6, 28, fill=colour, outline="")
            lx = x0 - 34
        peak = max((max(v) for v in self.values), default=0) or 1
        plot_h = h - top - bottom
        plot_w = w - left - right
        c.create_line(left, h - bottom, w - right, h - bottom, fill="#9aa5b1")
        for frac in (0.5, 1.0):
            y = h - bottom - plot_h * frac
            c.create_line(left, y, w - right, y, fill="#eceff3")
            label = f"¥{peak * frac / 100:.0f}" if self.money else f"{peak * frac:.0f}"
            c.create_text(left - 6, y, text=label, anchor="e", font=f.small, fill=MUTED_FG)
        group = plot_w / 24
        bar = max(2.0, (group - 4) / max(1, len(self.series)))
        for hour in range(24):
            gx = left + hour * group + 2
            if hour == self.hour_now:
                c.create_rectangle(gx - 2, top, gx + group - 2, h - bottom, fill="#f3f7fc", outline="")
            for i, (_name, colour) in enumerate(self.series):
                v = self.values[i][hour] if i < len(self.values) else 0
                if v:
                    y = h - bottom - plot_h * v / peak
                    c.create_rectangle(gx + i * bar, y, gx + (i + 1) * bar - 1, h - bottom, fill=colour, outline="")
            if hour % 3 == 0:
                c.create_text(gx + group / 2, h - bottom + 4, text=f"{hour}时", anchor="n", font=f.small,
                              fill=MUTED_FG)


class LotView:
    def __init__(self, parent: tk.Misc, shell: Shell) -> None:
        self.shell = shell
        f = shell.fonts
        self.frame = ttk.Frame(parent, padding=(10, 8))
        self.frame.columnconfigure(1, weight=1)
        self.frame.rowconfigure(0, weight=1)
        left = tk.Frame(self.frame, bg=PANEL_BG, highlightthickness=1, highlightbackground="#c5ccd6", width=300)
        left.grid(row=0, column=0, sticky="nsew")
        tk.Label(left, text="剩余车位", font=f.title, bg=PANEL_BG, fg=HEADER_BG).pack(anchor="w", padx=14, pady=(10, 0))
        self.free = tk.Label(left, text="—", font=f.huge, bg=PANEL_BG, fg="#1b7f3b")
        self.free.pack(anchor="w", padx=14)
        self.total = tk.Label(left, text="", font=f.base, bg=PANEL_BG, fg="#1a1a1a", justify="left")
        self.total.pack(anchor="w", padx=14)
        self.gauge = tk.Canvas(left, width=260, height=26, bg="#ffffff", highlightthickness=1,
                               highlightbackground="#c5ccd6")
        self.gauge.pack(anchor="w", padx=14, pady=(8, 6))
        self.today = tk.Label(left, text="", font=f.base, bg=PANEL_BG, fg="#1a1a1a", justify="left")
        self.today.pack(anchor="w", padx=14, pady=(10, 0))
        tk.Label(left, text="设备状态", font=f.title, bg=PANEL_BG, fg=HEADER_BG).pack(anchor="w", padx=14,
                                                                                 pady=(14, 0))
        self.devices = tree(left, (("device", "设备", 120), ("kind", "类型", 80), ("state", "状态", 70)), height=5,
                            stretch="device")
        self.devices.frame.pack(fill="both", expand=True, padx=10, pady=(4, 10))
        self.devices.tag_configure("offline", foreground="#c62828")
        self.devices.tag_configure("online", foreground="#1b5e20")
        charts = ttk.Frame(self.frame)
        charts.grid(row=0, column=1, sticky="nsew", padx=(12, 0))
        charts.columnconfigure(0, weight=1)
        charts.rowconfigure(0, weight=3)
        charts.rowconfigure(1, weight=2)
        self.traffic = BarChart(charts, shell, title="今日进出车辆（按小时）", height=300,
                                series=[("入场", ENTRY_COLOUR), ("出场", EXIT_COLOUR)])
        self.traffic.canvas.grid(row=0, column=0, sticky="nsew")
        self.revenue = BarChart(charts, shell, title="今日缴费收入（按小时）", height=200,
                                series=[("收入", REVENUE_COLOUR)], money=True)
        self.revenue.canvas.grid(row=1, column=0, sticky="nsew", pady=(10, 0))

    @ui_thread
    def set_occupancy(self, o: OccupancyView) -> None:
        self.free.configure(text=str(o.free), fg=free_colour(o))
        self.total.configure(text=f"总车位 {o.capacity}\n在场车辆 {o.occupied}" + ("\n车库已满" if o.full else ""))
        g = self.gauge
        g.delete("all")
        width = int(g.cget("width"))
        frac = min(1.0, o.occupied / o.capacity) if o.capacity else 0
        g.create_rectangle(0, 0, width * frac, 26, fill="#c62828" if o.full else "#1f5fa8", outline="")
        g.create_text(width / 2, 13, text=f"已用 {frac:.0%}", font=self.shell.fonts.small,
                      fill="#ffffff" if frac > 0.5 else "#1a1a1a")

    @ui_thread
    def set_today(self, t: TodayStats) -> None:
        self.today.configure(text=f"今日（{t.day}）\n入场 {t.total_entries} 辆次\n出场 {t.total_exits} 辆次\n"
                                  f"缴费收入 {t.total_revenue}")
        self.traffic.set([t.entries, t.exits], t.hour_now)
        self.revenue.set([t.revenue_fen], t.hour_now)

    @ui_thread
    def set_devices(self, rows: list[DeviceRow]) -> None:
        fill(self.devices, [(r.device, (r.device, r.kind_zh, "在线" if r.online else "离线")) for r in rows])
        for r in rows:
            self.devices.item(r.device, tags=("online" if r.online else "offline",))

    def summary(self) -> dict[str, Any]:
        return {"free": self.free.cget("text"), "today": self.today.cget("text")}
