"""BoothApp: the attendant's window (值班岗亭).

It builds the window (header with device status and the clock, the lot-full banner, the scrolling
announcements, six screens in a notebook, a status line), wires the keyboard, and runs the one loop that moves
events onto the screen:

* other threads (devices, the booth's own tasks) only ever call :meth:`Inbox.put`;
* the Tk main thread drains the inbox when the wake-up pipe says so (at most every ``MIN_GAP_S``) and on a
  ``root.after(refresh_ms)`` poll, at most ``MAX_BATCH`` items per drain, folds them into the :class:`Board`
  and draws each changed thing once: the latest decision per lane, the counters once per drain; lists that
  need a database query (stays, today's chart, owners) are reloaded at most every ``RELOAD_S`` and only when
  their screen is showing.

:attr:`BoothApp.metrics` records, per event, the time from being queued to being applied on screen.
"""

from __future__ import annotations

import base64
import getpass
import logging
import os
import signal
import sys
import threading
import time
import tkinter as tk
from collections.abc import Callable
from pathlib import Path
from tkinter import ttk
from typing import Any

from smartpark.core import events as ev

from . import qr
from .controllers import BoothController, zh
from .inbox import Inbox, Metrics, ObservingSink, TaskDone, TaskRunner
from .model import Board
from .screenshot import capture_x11
from .views.announcements import AnnouncementsView, Marquee, marquee_text
from .views.common import (
    ERROR_FG,
    HEADER_BG,
    HEADER_FG,
    OK_FG,
    RED_BG,
    Dialog,
    Fonts,
    FormDialog,
    MessageDialog,
    apply_styles,
    ui_thread,
)
from .views.lanes import LanesView
from .views.lot import LotView
from .views.notifications import NotificationsView
from .views.owners import OwnersView
from .views.payments import PaymentsView
from .views.visitors import VisitorsView

log = logging.getLogger(__name__)

MIN_WIDTH, MIN_HEIGHT = 1280, 800
TABS = (("lanes", "车道"), ("owners", "业主"), ("visitors", "外来车辆"), ("payments", "支付查询"),
        ("announcements", "公告"), ("lot", "车位"), ("notifications", "通知"))


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = os.environ.get("USER") or "unknown"
    return f"booth:{user}"


class BoothApp:
    """The booth window over an in-process :class:`~smartpark.bootstrap.App`."""

    MAX_BATCH = 5000  # items per drain; the rest wait for the next one (scheduled at once)
    MIN_GAP_S = 0.015  # between two wake-up drains: coalesce bursts
    RELOAD_S = 0.5  # database-backed lists reload at most this often

    def __init__(self, app: Any, config: Any = None, *, runtime: Any = None, actor: str | None = None,
                 root: tk.Tk | None = None) -> None:
        from . import Config

        self.app = app
        self.config = config or Config()
        # Every Tk call releases the GIL and takes it back; while a device thread computes, taking it back waits
        # up to the switch interval (5 ms by default), so a redraw of a dozen calls could take 60 ms. 1 ms
        # bounds that for this process (restored by close()).
        self._switch_interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._switch_interval, 0.001))
        self.runtime = runtime
        self.actor = actor or default_actor()
        lane_lock = getattr(getattr(runtime, "dispatcher", None), "lane_lock", None)
        self.controller = BoothController(app, actor=self.actor, lane_lock=lane_lock)
        self.inbox = Inbox(app.bus).start()
        self.tasks = TaskRunner(self.inbox)
        self.metrics = Metrics()
        self.board = Board({lane.id: lane.name for lane in self.controller.lanes()})
        self.dialogs: list[Dialog] = []
        self.full_popup: MessageDialog | None = None
        self._drain_job: str | None = None
        self._tick_job: str | None = None
        self._last_drain = 0.0
        self._pending: set[str] = set()
        self._loading: set[str] = set()
        self._again: set[str] = set()
        self._reloaded: dict[str, float] = {}
        self._seen_dropped = 0
        self._stop_requested = False
        self._closed = False
        self._started = False
        self._clock_text = ""
        self._periodic = {"stays": 30.0, "stats": 30.0, "devices": 10.0}
        self._periodic_at = {k: time.monotonic() for k in self._periodic}

        self.root = root or tk.Tk(className="smartpark")
        self.root.title(f"{self.controller.lot_name} · 值班岗亭")
        self.root.minsize(MIN_WIDTH, MIN_HEIGHT)
        self.root.geometry(f"{MIN_WIDTH}x{MIN_HEIGHT}+0+0")
        if self.config.fullscreen:
            self.root.attributes("-fullscreen", True)
        self.fonts = Fonts(self.root, self.config.font_size)
        if not self.fonts.cjk_found:
            log.warning("no CJK font found (tried Noto Sans CJK SC, ...); install fonts-noto-cjk")
        apply_styles(self.root, self.fonts)
        self.root.configure(background="#ffffff")
        self._build()
        self._bind_keys()
        self.root.protocol("WM_DELETE_WINDOW", self.ask_quit)
        self.reload_all()
        self._file_handler = self._install_wake()
        self._tick_job = self.root.after(self.config.refresh_ms, self._tick)

    # == building =================================================================================================
    def _build(self) -> None:
        f = self.fonts
        header = self._header = tk.Frame(self.root, bg=HEADER_BG)
        header.pack(fill="x")
        tk.Label(header, text=f"{self.controller.lot_name} · 值班岗亭", font=f.title, bg=HEADER_BG, fg=HEADER_FG,
                 padx=12, pady=5).pack(side="left")
        self.clock = tk.Label(header, text="", font=f.title, bg=HEADER_BG, fg=HEADER_FG, padx=12)
        self.clock.pack(side="right")
        self.free_label = tk.Label(header, text="", font=f.bold, bg="#1b7f3b", fg="#ffffff", padx=12, pady=2)
        self.free_label.pack(side="right", padx=(8, 4))
        self.device_chips: dict[str, tk.Label] = {}
        for kind, name in (("sensor", "传感器"), ("gate", "道闸"), ("camera", "摄像机")):
            chip = tk.Label(header, text=f"{name} —", font=f.small, bg="#2c4f78", fg="#ffffff", padx=8, pady=2)
            chip.pack(side="right", padx=3)
            self.device_chips[kind] = chip
        self.banner = tk.Label(self.root, text="车库已满 · 暂停外来车辆入场", font=f.large, bg=RED_BG, fg="#ffffff",
                               pady=2)
        self.banner_shown = False
        bar = tk.Frame(self.root, bg="#fff4d6")
        bar.pack(fill="x")
        self.marquee = Marquee(bar, self)
        self.marquee.badge.pack(side="left", fill="y")
        self.marquee.canvas.pack(side="left", fill="x", expand=True)
        self._marquee_bar = bar

        status = tk.Frame(self.root, bg="#e9edf2")
        status.pack(side="bottom", fill="x")
        self.status_label = tk.Label(status, text="就绪", font=f.small, bg="#e9edf2", fg="#1a1a1a", anchor="w",
                                     padx=10, pady=3)
        self.status_label.pack(side="left", fill="x", expand=True)
        keys = [lane.shortcut for lane in self.controller.lanes() if lane.shortcut]
        hint = (f"{keys[0]}–{keys[-1]} 手动抬杆 · " if len(keys) > 1 else (f"{keys[0]} 手动抬杆 · " if keys else ""))
        tk.Label(status, text=hint + "Ctrl+F 查询 · Ctrl+1–7 切换 · Enter 提交 · Esc 关闭", font=f.small,
                 bg="#e9edf2", fg="#55606e", padx=10).pack(side="right")
        tk.Label(status, text=f"值班员 {self.actor}", font=f.small, bg="#e9edf2", fg="#55606e",
                 padx=10).pack(side="right")

        self.notebook = ttk.Notebook(self.root)
        self.notebook.pack(fill="both", expand=True, padx=6, pady=(4, 2))
        self.lanes = LanesView(self.notebook, self)
        self.owners = OwnersView(self.notebook, self)
        self.visitors = VisitorsView(self.notebook, self)
        self.payments = PaymentsView(self.notebook, self)
        self.announcements = AnnouncementsView(self.notebook, self)
        self.lot = LotView(self.notebook, self)
        self.notifications = NotificationsView(self.notebook, self)
        self.views = {"lanes": self.lanes, "owners": self.owners, "visitors": self.visitors,
                      "payments": self.payments, "announcements": self.announcements, "lot": self.lot,
                      "notifications": self.notifications}
        for key, label in TABS:
            self.notebook.add(self.views[key].frame, text=f" {label} ")
        self.notebook.bind("<<NotebookTabChanged>>", lambda e: self._refresh_pending(force=True))
        self.lanes.set_rules(self.controller.tariff_lines())

    def _bind_keys(self) -> None:
        r = self.root
        for lane in self.controller.lanes():
            if lane.shortcut:
                r.bind_all(f"<{lane.shortcut}>", lambda e, lid=lane.id: (self.manual_open(lid), "break")[1])
        r.bind_all("<Control-f>", lambda e: (self.focus_search(), "break")[1])
        r.bind_all("<Control-F>", lambda e: (self.focus_search(), "break")[1])
        for i, (key, _label) in enumerate(TABS, start=1):
            r.bind_all(f"<Control-Key-{i}>", lambda e, k=key: (self.select_tab(k), "break")[1])
        r.bind("<Escape>", lambda e: self.close_top_dialog())

    # == shell services for the views ================================================================================
    def run_task(self, fn: Callable[[], Any], on_ok: Callable[[Any], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None) -> Any:
        """Run ``fn`` on a worker thread (gate commands can take seconds); the callbacks run on this thread."""
        return self.tasks.submit(fn, on_ok, on_error)

    @ui_thread
    def status(self, text: str, *, error: bool = False) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.status_label.configure(text=f"{stamp}  {text}", fg=ERROR_FG if error else OK_FG)

    def qr_image(self, url: str) -> tuple[tk.PhotoImage | None, str]:
        png = qr.qr_png(url)
        if png is None:
            return None, qr.MISSING.format(url=url)
        return tk.PhotoImage(master=self.root, data=base64.b64encode(png).decode("ascii"), format="png"), url

    def open_visitor_registration(self, lane_id: str) -> None:
        self.select_tab("visitors")
        self.visitors.select_lane(lane_id)
        self.visitors.focus_form()

    def select_tab(self, key: str) -> None:
        self.notebook.select(self.views[key].frame)
        self.root.update_idletasks()

    def current_tab(self) -> str:
        current = self.notebook.select()
        return next((k for k, v in self.views.items() if str(v.frame) == current), "lanes")

    def focus_search(self) -> None:
        tab = self.current_tab()
        if tab not in ("owners", "visitors", "payments"):
            tab = "owners"
            self.select_tab(tab)
        self.views[tab].focus_search()

    def manual_open(self, lane_id: str) -> FormDialog | None:
        if any(isinstance(d, FormDialog) for d in self.dialogs):
            return None  # one form at a time; Esc closes it
        self.select_tab("lanes")
        panel = self.lanes.panels.get(lane_id)
        return panel.ask_manual_open() if panel else None

    def close_top_dialog(self) -> None:
        if self.dialogs:
            self.dialogs[-1].close()

    def ask_quit(self) -> None:
        def submit(_values: dict[str, str]) -> None:
            self._stop_requested = True
            return None

        FormDialog(self, "退出岗亭程序", [], on_submit=submit, ok_text="退出", danger=True,
                   message="退出后本机将不再接收车道识别结果，道闸需手动处理。确定退出？")

    # == loading from the services ===================================================================================
    def load(self, name: str, query: Callable[[], Any], show: Callable[[Any], None]) -> None:
        """Run ``query`` (a database read) on a worker thread and ``show`` its result here. One load per name
        is in flight; asking again meanwhile runs it once more afterwards (coalesced). The Tk thread never
        waits for the store, whose lock a busy lane may hold."""
        if name in self._loading:
            self._again.add(name)
            return
        self._loading.add(name)

        def finished(result: Any = None, error: BaseException | None = None) -> None:
            self._loading.discard(name)
            if error is not None:
                log.error("loading %s failed: %s", name, error)
                self.status(zh(error), error=True)
            else:
                show(result)
            if name in self._again:
                self._again.discard(name)
                self.load(name, query, show)

        self.run_task(query, on_ok=lambda r: finished(r), on_error=lambda e: finished(error=e))

    def reload_all(self) -> None:
        """Everything from the services (at start, and after the inbox dropped events)."""
        for lane in self.controller.lanes():
            decisions = list(reversed(self.app.parking.recent_decisions(lane.id, 5)))
            for d in decisions:
                self.board.apply(_recorded(d))
        self.board.reset_flags()
        for lane_id, panel in self.lanes.panels.items():
            panel.render(self.board.lanes[lane_id])
        self.set_full(self.controller.occupancy().full, popup=False)
        self._show_occupancy()
        self._show_devices()
        self._show_announcements()
        self.owners.search()
        self.visitors.search()
        self.payments.search()
        self._pending |= {"stays", "stats"}
        self._refresh_pending(force=True, all_tabs=True)

    def _show_occupancy(self) -> None:
        self.load("occupancy", self.controller.occupancy, self._occupancy_loaded)

    @ui_thread
    def _occupancy_loaded(self, occ: Any) -> None:
        self.lanes.set_occupancy(occ)
        self.lot.set_occupancy(occ)
        self.free_label.configure(text=f"空位 {occ.free}/{occ.capacity}", bg="#c62828" if occ.full else "#1b7f3b")

    def _show_devices(self) -> None:
        self.load("devices", self.controller.devices, self._devices_loaded)

    @ui_thread
    def _devices_loaded(self, rows: list[Any]) -> None:
        self.lot.set_devices(rows)
        for kind, chip in self.device_chips.items():
            name = {"camera": "摄像机", "gate": "道闸", "sensor": "传感器"}[kind]
            mine = [r for r in rows if r.kind == kind]
            if not mine:
                chip.configure(text=f"{name} —", bg="#2c4f78")
            elif all(r.online for r in mine):
                chip.configure(text=f"● {name}在线", bg="#1b7f3b")
            else:
                off = sum(1 for r in mine if not r.online)
                chip.configure(text=f"● {name}离线 {off}", bg=RED_BG)

    def _show_announcements(self) -> None:
        c = self.controller
        self.load("announcements", lambda: (c.current_announcements(), c.announcements()),
                  self._announcements_loaded)

    @ui_thread
    def _announcements_loaded(self, result: Any) -> None:
        current, every = result
        self.marquee.set_text(marquee_text(current))
        self.announcements.show(every)

    @ui_thread
    def set_full(self, full: bool, *, popup: bool = True) -> None:
        if full and not self.banner_shown:
            self.banner.pack(fill="x", after=self._header)
            self.banner_shown = True
        elif not full and self.banner_shown:
            self.banner.pack_forget()
            self.banner_shown = False
        if full and popup and (self.full_popup is None or self.full_popup.closed):
            self.full_popup = MessageDialog(self, "车库已满", "车库已满\n暂停外来车辆入场", tone="danger", big=True,
                                            width=700)
        if not full and self.full_popup is not None and not self.full_popup.closed:
            self.full_popup.close()

    def _refresh_pending(self, *, force: bool = False, all_tabs: bool = False) -> None:
        now = time.monotonic()
        tab = self.current_tab()
        where = {"stays": "visitors", "stats": "lot", "owners": "owners", "visitors": "visitors"}
        for name in list(self._pending):
            if not (all_tabs or where[name] == tab):
                continue
            if not force and now - self._reloaded.get(name, 0.0) < self.RELOAD_S:
                continue
            self._pending.discard(name)
            self._reloaded[name] = now
            if name == "stays":
                self.load("stays", self.controller.current_stays, self.visitors.show_stays)
            elif name == "stats":
                self.load("stats", self.controller.today, self.lot.set_today)
            elif name == "owners":
                self.owners.refresh()
            elif name == "visitors":
                self.visitors.search()

    def flush(self, timeout: float = 10.0) -> None:
        """Reload every pending list and wait until nothing is queued or loading (tests, screenshots)."""
        deadline = time.monotonic() + timeout
        self._refresh_pending(force=True, all_tabs=True)
        while len(self.inbox) or self.tasks.pending or self._loading:
            if time.monotonic() > deadline:
                raise TimeoutError("the booth did not settle")
            self._drain()
            if self.tasks.pending or self._loading:
                time.sleep(0.002)
            self._refresh_pending(force=True, all_tabs=True)
        self.root.update_idletasks()

    # == the event loop =============================================================================================
    def _install_wake(self) -> bool:
        try:
            self.root.tk.createfilehandler(self.inbox.fileno(), tk.READABLE, self._on_wake)
            return True
        except (AttributeError, RuntimeError, tk.TclError):  # Windows, or a Tk without file handlers: poll only
            log.info("no Tk file handlers here; the inbox is polled every %d ms", self.config.refresh_ms)
            return False

    def _on_wake(self, _fd: int, _mask: int) -> None:
        self.inbox.clear_wake()
        self._schedule_drain()

    def _schedule_drain(self) -> None:
        if self._drain_job is not None or self._closed:
            return
        wait = self.MIN_GAP_S - (time.perf_counter() - self._last_drain)
        self._drain_job = self.root.after(max(0, int(wait * 1000)), self._drain)

    def _tick(self) -> None:
        self._tick_job = None
        if self._closed:
            return
        if self._stop_requested:
            self.root.quit()
            return
        try:
            self._drain()
            now = time.monotonic()
            for name, every in self._periodic.items():
                if now - self._periodic_at[name] >= every:
                    self._periodic_at[name] = now
                    if name == "devices":
                        self._show_devices()
                    else:
                        self._pending.add(name)
            self._refresh_pending()
            self._update_clock()
        finally:
            if not self._closed:
                self._tick_job = self.root.after(self.config.refresh_ms, self._tick)

    def _update_clock(self) -> None:
        text = self.controller.now().strftime("%Y-%m-%d %H:%M:%S")
        if text != self._clock_text:
            self._clock_text = text
            self.clock.configure(text=text)

    def _drain(self) -> None:
        if self._drain_job is not None:
            try:
                self.root.after_cancel(self._drain_job)
            except tk.TclError:
                pass
            self._drain_job = None
        if self._closed:
            return
        started = time.perf_counter()
        items = self.inbox.take(self.MAX_BATCH)
        if not items:
            return
        board = self.board
        board.reset_flags()
        done: list[TaskDone] = []
        for _stamp, item in items:
            if isinstance(item, TaskDone):
                done.append(item)
            else:
                try:
                    board.apply(item)
                except Exception:  # noqa: BLE001 - one odd event must not stop the screen
                    log.exception("could not show %r", item)
        try:
            self._apply(board)
        except Exception:  # noqa: BLE001
            log.exception("updating the screen failed")
        for task in done:
            self._finish(task)
        finished = time.perf_counter()
        self.metrics.record([s for s, _ in items], started, finished)
        self._last_drain = finished
        if self.inbox.dropped != self._seen_dropped:
            self._seen_dropped = self.inbox.dropped
            log.warning("the booth fell behind: %d events dropped; reloading", self.inbox.dropped)
            self.reload_all()
        if len(self.inbox):
            self._schedule_drain()

    def _apply(self, board: Board) -> None:
        for lane_id in board.dirty_lanes:
            panel = self.lanes.panels.get(lane_id)
            if panel is not None:
                panel.render(board.lanes[lane_id])
        if board.log_added:
            recent = list(board.log)[-min(board.log_added, 50):]
            self.lanes.add_log([(f"{self.controller.time(at)}  {text}", tone) for at, text, tone in recent])
        if board.occupancy:
            self._show_occupancy()
        if board.full_changed and board.full is not None:
            self.set_full(board.full, popup=True)
        if board.devices_changed:
            self._show_devices()
        if board.announcements:
            self._show_announcements()
        if board.stays:
            self._pending.add("stays")
        if board.stats:
            self._pending.add("stats")
        if board.people:
            self._pending |= {"owners", "visitors"}
        self._refresh_pending()

    def _finish(self, task: TaskDone) -> None:
        try:
            result = task.future.result()
        except BaseException as e:  # noqa: BLE001 - handed to the view
            if task.on_error is not None:
                task.on_error(e)
            else:
                self.status(zh(e), error=True)
            return
        if task.on_ok is not None:
            try:
                task.on_ok(result)
            except Exception:  # noqa: BLE001
                log.exception("task callback failed")

    # == life cycle =================================================================================================
    def start(self) -> None:
        """Connect the device runtime (if one was given and ``start_runtime``): reads then arrive live."""
        if self._started:
            return
        self._started = True
        if self.runtime is not None and self.config.start_runtime:
            self.runtime.dispatcher = ObservingSink(self.runtime.dispatcher, self.inbox)
            self.runtime.start()

    def mainloop(self) -> None:
        self.start()
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "_stop_requested", True))
        try:
            self.root.mainloop()
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        sys.setswitchinterval(self._switch_interval)
        if self._started and self.runtime is not None and self.config.start_runtime:
            try:
                self.runtime.stop()
            except Exception:  # noqa: BLE001
                log.exception("stopping the device runtime failed")
        self.tasks.shutdown()
        if self._file_handler:
            try:
                self.root.tk.deletefilehandler(self.inbox.fileno())
            except (tk.TclError, OSError, ValueError):
                pass
        self.inbox.close()
        self.marquee.stop()
        for job in (self._tick_job, self._drain_job):
            if job is not None:
                try:
                    self.root.after_cancel(job)
                except tk.TclError:
                    pass
        try:
            self.root.destroy()
        except tk.TclError:
            pass

    # == screenshots ================================================================================================
    def screenshot(self, name: str, directory: str | Path | None = None) -> Path:
        """Write the window as ``booth-<name>.png`` (X11 via xwd) to ``directory`` or ``screenshot_dir``."""
        folder = Path(directory or self.config.screenshot_dir or ".")
        self.root.update()
        box = (self.root.winfo_rootx(), self.root.winfo_rooty(), self.root.winfo_width(), self.root.winfo_height())
        display = os.environ.get("DISPLAY") or str(self.root.winfo_screen())
        return capture_x11(display, box, folder / f"booth-{name}.png")


def _recorded(d: Any) -> ev.DecisionRecorded:
    return ev.DecisionRecorded(at=d.at, decision_id=d.id, lane=d.lane, direction=d.direction, outcome=d.outcome.value,
                               reason=d.reason, message=d.message, plate=d.plate.masked if d.plate else None,
                               holder_kind=d.holder_kind, session_id=d.session_id, order_id=d.order_id,
                               gate_ok=d.gate_ok)
