"""What every screen of the booth shares: the look (fonts, colours, ttk styles), the main-thread guard, form
fields with their error beside them, and non-blocking dialogs (Enter submits, Esc closes).

Views hold widgets only: they call the controller (through the :class:`Shell`) and show what it returns.
"""

from __future__ import annotations

import functools
import threading
import tkinter as tk
import tkinter.font as tkfont
from collections.abc import Callable, Sequence
from tkinter import ttk
from typing import Any, Protocol, TypeVar

F = TypeVar("F", bound=Callable[..., Any])

#: The first installed one is used (tkinter.font.families()).
CJK_FAMILIES = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "Microsoft YaHei", "PingFang SC")

# colours: readable from a metre away, and never only colour (every state also has words)
GREEN, GREEN_BG = "#ffffff", "#1b7f3b"
AMBER, AMBER_BG = "#1a1a1a", "#f2b01e"
RED, RED_BG = "#ffffff", "#c62828"
NEUTRAL, NEUTRAL_BG = "#1a1a1a", "#e6e9ee"
HEADER_BG, HEADER_FG = "#12355b", "#ffffff"
ERROR_FG = "#c62828"
OK_FG = "#1b7f3b"
MUTED_FG = "#55606e"
PANEL_BG = "#f6f7f9"
OUTCOME_COLOURS = {"open": (GREEN, GREEN_BG), "hold": (AMBER, AMBER_BG), "refuse": (RED, RED_BG),
                   "ignore": (NEUTRAL, NEUTRAL_BG), None: (NEUTRAL, NEUTRAL_BG)}
OUTCOME_ZH = {"open": "放行", "hold": "等待处理", "refuse": "禁止通行", "ignore": "忽略", None: "等待车辆"}


def ui_thread(fn: F) -> F:
    """Guard a view method: in debug mode (``__debug__``, i.e. not ``python -O``) it raises when called off the
    Tk main thread. Device and worker threads reach the window only through the inbox."""
    if not __debug__:
        return fn

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError(f"{fn.__qualname__} touched a Tk widget off the main thread "
                               f"({threading.current_thread().name}); send it through the inbox")
        return fn(*args, **kwargs)

    return guarded  # type: ignore[return-value]


class Painter:
    """Configure a widget only with the options that changed since the last time.

    Every Tk call from Python releases and re-takes the GIL; with device threads busy, each one can wait a
    switch interval (5 ms). Skipping unchanged options keeps a redraw to a handful of calls."""

    def __init__(self) -> None:
        self._last: dict[str, dict[str, Any]] = {}

    def set(self, widget: tk.Misc, **options: Any) -> bool:
        seen = self._last.setdefault(str(widget), {})
        changed = {k: v for k, v in options.items() if k not in seen or seen[k] != v}
        if changed:
            widget.configure(**changed)
            seen.update(changed)
        return bool(changed)


class Fonts:
    """Named fonts from the first available CJK family; ``base`` is at least 14 points."""

    def __init__(self, root: tk.Misc, base: int) -> None:
        installed = set(tkfont.families(root))
        self.family = next((f for f in CJK_FAMILIES if f in installed), tkfont.nametofont("TkDefaultFont").actual("family"))
        self.cjk_found = self.family in CJK_FAMILIES
        base = max(14, int(base))
        self.size = base
        self.base = tkfont.Font(root, family=self.family, size=base)
        self.bold = tkfont.Font(root, family=self.family, size=base, weight="bold")
        self.small = tkfont.Font(root, family=self.family, size=max(14, base - 2))
        self.large = tkfont.Font(root, family=self.family, size=base + 6, weight="bold")
        self.title = tkfont.Font(root, family=self.family, size=base + 2, weight="bold")
        self.plate = tkfont.Font(root, family=self.family, size=base * 2 + 4, weight="bold")
        self.huge = tkfont.Font(root, family=self.family, size=base * 2 + 16, weight="bold")
        for name in ("TkDefaultFont", "TkTextFont", "TkMenuFont", "TkHeadingFont", "TkCaptionFont"):
            tkfont.nametofont(name).configure(family=self.family, size=base)


def apply_styles(root: tk.Misc, fonts: Fonts) -> ttk.Style:
    style = ttk.Style(root)
    if "clam" in style.theme_names():
        style.theme_use("clam")
    row = fonts.base.metrics("linespace") + 12
    style.configure(".", font=fonts.base)
    style.configure("TNotebook.Tab", font=fonts.bold, padding=(20, 3))
    style.map("TNotebook.Tab", background=[("selected", "#ffffff")], foreground=[("selected", HEADER_BG)])
    style.configure("TButton", font=fonts.base, padding=(12, 6), width=-4)
    style.configure("Small.TButton", font=fonts.small, padding=(6, 0))
    style.configure("Big.TButton", font=fonts.bold, padding=(12, 7))
    style.configure("Primary.TButton", font=fonts.bold, padding=(14, 6), foreground="#ffffff", background="#1f5fa8")
    style.map("Primary.TButton", background=[("active", "#174a85"), ("disabled", "#9db5d3")])
    style.configure("Danger.TButton", font=fonts.bold, padding=(14, 6), foreground="#ffffff", background=RED_BG)
    style.map("Danger.TButton", background=[("active", "#9e1f1f"), ("disabled", "#e3a1a1")])
    style.configure("Pay.TButton", font=fonts.bold, padding=(12, 7), foreground="#1a1a1a", background=AMBER_BG)
    style.map("Pay.TButton", background=[("active", "#d89a10")])
    style.configure("Treeview", font=fonts.base, rowheight=row)
    style.configure("Treeview.Heading", font=fonts.bold)
    style.configure("TLabelframe.Label", font=fonts.title, foreground=HEADER_BG)
    style.configure("Error.TLabel", foreground=ERROR_FG, font=fonts.small)
    style.configure("Muted.TLabel", foreground=MUTED_FG, font=fonts.small)
    style.configure("TEntry", padding=4)
    style.configure("TCombobox", padding=4)
    root.option_add("*TCombobox*Listbox.font", fonts.base)
    return style


class Shell(Protocol):
    """What a view may ask of the window that holds it (implemented by ``BoothApp``)."""

    root: tk.Tk
    fonts: Fonts
    controller: Any
    dialogs: list[Dialog]

    def run_task(self, fn: Callable[[], Any], on_ok: Callable[[Any], None] | None = None,
                 on_error: Callable[[BaseException], None] | None = None) -> Any: ...

    def status(self, text: str, *, error: bool = False) -> None: ...

    def qr_image(self, url: str) -> tuple[tk.PhotoImage | None, str]: ...

    def open_visitor_registration(self, lane_id: str) -> None: ...


# == form fields ==============================================================================================
class Field:
    """A labelled entry with its error message beside it."""

    def __init__(self, parent: tk.Misc, row: int, name: str, label: str, fonts: Fonts, *, width: int = 22,
                 hint: str = "", show: str = "", error_width: int = 260) -> None:
        self.name = name
        self.label = ttk.Label(parent, text=label)
        self.label.grid(row=row, column=0, sticky="ne", padx=(4, 8), pady=(6, 0))
        # no tk.StringVar: a Variable collected by the garbage collector on another thread calls into Tk there
        self.entry = ttk.Entry(parent, width=width, font=fonts.base, show=show)
        self.entry.grid(row=row, column=1, sticky="new", pady=(4, 0))
        self.error = ttk.Label(parent, text=hint, style="Muted.TLabel" if hint else "Error.TLabel",
                               wraplength=error_width, justify="left")
        self.error.grid(row=row, column=2, sticky="nw", padx=(8, 4), pady=(6, 0))
        self.hint = hint
        self.touched = False

    def get(self) -> str:
        return self.entry.get()

    def set(self, value: str) -> None:
        self.entry.delete(0, "end")
        self.entry.insert(0, value)

    @ui_thread
    def show_error(self, text: str | None) -> None:
        if text:
            self.error.configure(text="✗\u00a0" + text, style="Error.TLabel")
        else:
            self.error.configure(text=self.hint, style="Muted.TLabel")

    @property
    def error_text(self) -> str:
        text = str(self.error.cget("text"))
        return "" if text == self.hint else text.removeprefix("✗\u00a0")


class Form:
    """Fields validated on every key release (errors only for fields typed in, all of them after a submit)."""

    def __init__(self, validate: Callable[[dict[str, Any]], dict[str, str]], submit: Callable[[], None]) -> None:
        self.fields: dict[str, Field] = {}
        self.extra: dict[str, Callable[[], Any]] = {}  # checkboxes, comboboxes: name -> getter
        self._validate = validate
        self._submit = submit
        self.submitted = False

    def add(self, field: Field) -> Field:
        self.fields[field.name] = field
        field.entry.bind("<KeyRelease>", lambda e, f=field: self._typed(f, e))
        field.entry.bind("<Return>", lambda e: (self._submit(), "break")[1])
        return field

    def data(self) -> dict[str, Any]:
        out: dict[str, Any] = {name: f.get() for name, f in self.fields.items()}
        out.update({name: get() for name, get in self.extra.items()})
        return out

    def _typed(self, field: Field, event: Any = None) -> None:
        if getattr(event, "keysym", "") in ("Return", "KP_Enter", "Tab", "ISO_Left_Tab", "Escape"):
            return
        field.touched = True
        self.check()

    @ui_thread
    def check(self, *, all_fields: bool = False) -> dict[str, str]:
        errors = self._validate(self.data())
        self.show(errors, all_fields=all_fields or self.submitted)
        return errors

    @ui_thread
    def show(self, errors: dict[str, str], *, all_fields: bool = True) -> None:
        for name, f in self.fields.items():
            f.show_error(errors.get(name) if (all_fields or f.touched) else None)

    @ui_thread
    def clear(self) -> None:
        self.submitted = False
        for f in self.fields.values():
            f.set("")
            f.touched = False
            f.show_error(None)


# == dialogs ==================================================================================================
class Dialog:
    """A non-blocking dialog over the main window: Enter submits, Esc closes. ``shell.dialogs`` lists the open
    ones (newest last), so code and tests can reach them without waiting on them."""

    def __init__(self, shell: Shell, title: str, *, width: int = 620, height: int | None = None) -> None:
        self.shell = shell
        self.top = tk.Toplevel(shell.root)
        self.top.title(title)
        self.top.transient(shell.root)
        self.top.configure(background=PANEL_BG)
        self.top.protocol("WM_DELETE_WINDOW", self.close)
        self.top.bind("<Escape>", lambda e: self.close())
        self.body = ttk.Frame(self.top, padding=18)
        self.body.pack(fill="both", expand=True)
        heading = ttk.Label(self.body, text=title, font=shell.fonts.title)
        heading.grid(row=0, column=0, columnspan=3, sticky="w", pady=(0, 8))
        self.width, self.height = width, height
        self.closed = False
        shell.dialogs.append(self)

    def place(self) -> None:
        root = self.shell.root
        self.top.update_idletasks()
        w = max(self.width, self.top.winfo_reqwidth())
        h = self.height or self.top.winfo_reqheight()
        x = root.winfo_rootx() + max(0, (root.winfo_width() - w) // 2)
        y = root.winfo_rooty() + max(0, (root.winfo_height() - h) // 3)
        self.top.geometry(f"{w}x{h}+{x}+{y}")
        self.top.lift()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self in self.shell.dialogs:
            self.shell.dialogs.remove(self)
        self.release()
        self.top.destroy()
        try:  # keyboard back to the window below (the next dialog, else the main window)
            (self.shell.dialogs[-1].top if self.shell.dialogs else self.shell.root).focus_set()
        except tk.TclError:
            pass


    def release(self) -> None:
        """Drop Tk images here, on the Tk thread (a PhotoImage freed by the garbage collector on another thread
        would call into Tk from there)."""


class FormDialog(Dialog):
    """Fields, an optional message and OK/Cancel. ``on_submit(values)`` returns ``None`` (done: close),
    ``{field: error}`` (show beside the fields) or ``"pending"`` (a background task will call
    :meth:`done` or :meth:`fail`)."""

    def __init__(self, shell: Shell, title: str, fields: Sequence[tuple[str, str, str]], *,
                 on_submit: Callable[[dict[str, str]], Any], message: str = "", ok_text: str = "确定",
                 danger: bool = False, choices: dict[str, Sequence[str]] | None = None) -> None:
        super().__init__(shell, title)
        self._on_submit = on_submit
        row = 1
        if message:
            ttk.Label(self.body, text=message, wraplength=560, justify="left").grid(
                row=row, column=0, columnspan=3, sticky="w", pady=(0, 6))
            row += 1
        self.fields: dict[str, Field] = {}
        self.combos: dict[str, ttk.Combobox] = {}
        first: tk.Widget | None = None
        for name, label, initial in fields:
            if choices and name in choices:
                ttk.Label(self.body, text=label).grid(row=row, column=0, sticky="ne", padx=(4, 8), pady=(8, 0))
                combo = ttk.Combobox(self.body, values=list(choices[name]), state="readonly", font=shell.fonts.base)
                combo.grid(row=row, column=1, sticky="new", pady=(6, 0))
                if choices[name]:
                    combo.current(0)
                self.combos[name] = combo
                err = ttk.Label(self.body, text="", style="Error.TLabel", wraplength=220)
                err.grid(row=row, column=2, sticky="nw", padx=(8, 4), pady=(8, 0))
                self.fields[name] = _ComboField(name, combo, err)
                first = first or combo
            else:
                f = Field(self.body, row, name, label, shell.fonts, error_width=220)
                f.set(initial)
                f.entry.bind("<Return>", lambda e: (self.submit(), "break")[1])
                self.fields[name] = f
                first = first or f.entry
            row += 1
        self.message = ttk.Label(self.body, text="", style="Error.TLabel", wraplength=560)
        self.message.grid(row=row, column=0, columnspan=3, sticky="w", pady=(8, 0))
        buttons = ttk.Frame(self.body)
        buttons.grid(row=row + 1, column=0, columnspan=3, sticky="e", pady=(12, 0))
        self.ok = ttk.Button(buttons, text=ok_text + "（Enter）", style="Danger.TButton" if danger else "Primary.TButton",
                             command=self.submit)
        self.ok.pack(side="right", padx=(8, 0))
        ttk.Button(buttons, text="取消（Esc）", command=self.close).pack(side="right")
        self.top.bind("<Return>", lambda e: self.submit())
        self.place()
        if first is not None:
            first.focus_set()

    def values(self) -> dict[str, str]:
        return {name: f.get() for name, f in self.fields.items()}

    @ui_thread
    def submit(self) -> None:
        if self.closed or str(self.ok.cget("state")) == "disabled":
            return
        result = self._on_submit(self.values())
        if result is None:
            self.close()
        elif result == "pending":
            self.ok.configure(state="disabled")
            self.message.configure(text="正在处理…", style="Muted.TLabel")
        else:
            self.fail(result)

    @ui_thread
    def done(self, _result: Any = None) -> None:
        self.close()

    @ui_thread
    def fail(self, errors: dict[str, str] | str) -> None:
        if self.closed:
            return
        self.ok.configure(state="normal")
        if isinstance(errors, str):
            errors = {"": errors}
        shown = False
        for name, f in self.fields.items():
            f.show_error(errors.get(name))
            shown = shown or name in errors
        rest = [v for k, v in errors.items() if k not in self.fields]
        self.message.configure(text="；".join(rest), style="Error.TLabel")


class _ComboField:
    def __init__(self, name: str, combo: ttk.Combobox, error: ttk.Label) -> None:
        self.name, self.entry, self.error = name, combo, error

    def get(self) -> str:
        return str(self.entry.current())

    def show_error(self, text: str | None) -> None:
        self.error.configure(text=("✗\u00a0" + text) if text else "")


class MessageDialog(Dialog):
    """A notice with one button (Enter or Esc closes it)."""

    def __init__(self, shell: Shell, title: str, message: str, *, tone: str = "info", big: bool = False,
                 width: int = 560) -> None:
        super().__init__(shell, title, width=width)
        fg, bg = {"danger": (RED, RED_BG), "ok": (GREEN, GREEN_BG)}.get(tone, (NEUTRAL, NEUTRAL_BG))
        self.label = tk.Label(self.body, text=message, font=shell.fonts.huge if big else shell.fonts.large,
                              fg=fg, bg=bg, padx=24, pady=18, wraplength=width - 60, justify="center")
        self.label.grid(row=1, column=0, columnspan=3, sticky="nsew")
        btn = ttk.Button(self.body, text="知道了（Enter）", style="Primary.TButton", command=self.close)
        btn.grid(row=2, column=0, columnspan=3, sticky="e", pady=(12, 0))
        self.top.bind("<Return>", lambda e: self.close())
        self.place()
        btn.focus_set()


class ImageDialog(Dialog):
    """A QR code (or any picture) large enough to scan from the car window, with a caption."""

    def __init__(self, shell: Shell, title: str, *, image: tk.PhotoImage | None, caption: str,
                 fallback: str = "") -> None:
        super().__init__(shell, title, width=560)
        self.body.columnconfigure((0, 1, 2), weight=1)
        self.image = image
        if image is not None:
            self.picture = tk.Label(self.body, image=image, bg="#ffffff")
        else:
            self.picture = tk.Label(self.body, text=fallback, font=shell.fonts.base, bg="#ffffff", wraplength=500,
                                    padx=12, pady=24)
        self.picture.grid(row=1, column=0, columnspan=3, pady=(4, 8))
        self.caption = ttk.Label(self.body, text=caption, font=shell.fonts.bold, wraplength=520, justify="center")
        self.caption.grid(row=2, column=0, columnspan=3)
        btn = ttk.Button(self.body, text="关闭（Esc）", command=self.close)
        btn.grid(row=3, column=0, columnspan=3, sticky="e", pady=(12, 0))
        self.top.bind("<Return>", lambda e: self.close())
        self.place()
        btn.focus_set()

    def release(self) -> None:
        self.picture.configure(image="")
        self.image = None


def tree(parent: tk.Misc, columns: Sequence[tuple[str, str, int]], *, height: int = 8,
         stretch: str | None = None) -> ttk.Treeview:
    """A Treeview with headings ``(id, heading, width)`` and a vertical scrollbar, in a frame of its own."""
    frame = ttk.Frame(parent)
    tv = ttk.Treeview(frame, columns=[c[0] for c in columns], show="headings", height=height, selectmode="browse")
    for cid, heading, width in columns:
        tv.heading(cid, text=heading, anchor="w")
        tv.column(cid, width=width, minwidth=40, anchor="w", stretch=(cid == stretch))
    bar = ttk.Scrollbar(frame, orient="vertical", command=tv.yview)
    tv.configure(yscrollcommand=bar.set)
    tv.grid(row=0, column=0, sticky="nsew")
    bar.grid(row=0, column=1, sticky="ns")
    frame.rowconfigure(0, weight=1)
    frame.columnconfigure(0, weight=1)
    tv.frame = frame  # type: ignore[attr-defined]
    return tv


def fill(tv: ttk.Treeview, rows: Sequence[tuple[str, Sequence[Any]]]) -> None:
    """Replace a Treeview's rows with ``(iid, values)``, keeping the selection when the row is still there."""
    selected = tv.selection()
    tv.delete(*tv.get_children())
    for iid, values in rows:
        tv.insert("", "end", iid=iid, values=list(values))
    keep = [s for s in selected if tv.exists(s)]
    if keep:
        tv.selection_set(keep)
