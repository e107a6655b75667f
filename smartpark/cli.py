"""The ``smartpark`` command (智慧社区停车场服务命令行).

A driving adapter: it parses arguments, calls the use cases of
:mod:`smartpark.core.services` through :func:`smartpark.bootstrap.bootstrap`, and
shows the results in Simplified Chinese. It holds no business rules and no SQL.

Global options (before the command)::

    smartpark [-c PATH] [--actor NAME] [--debug] COMMAND ...

``--config/-c`` defaults to ``$SMARTPARK_CONFIG`` or ``./plugins.toml``; ``--actor``
(who is recorded in the audit log) defaults to ``cli:<os user>``. The application is
built only by commands that need it, and always closed afterwards.

Exit codes (退出码):

====  =====================================================================
0     success / 成功
1     validation error: bad input refused by a domain rule, an import with bad
      records, a deletion that was not confirmed / 输入有误
2     usage error from the command-line parser (unknown option, missing
      argument) / 用法错误
3     configuration error: plugins.toml, plugin settings, the data key / 配置错误
4     not found / 记录不存在
5     conflict with existing data (plate or ID number already registered,
      file already exists) / 与现有数据冲突
6     integrity failure: the audit chain is broken, or stored data does not
      decrypt (tampered with, or the wrong key) / 完整性校验失败
70    internal error (a bug): a traceback is shown only with ``--debug`` / 内部错误
130   interrupted (Ctrl-C) / 已中断
====  =====================================================================

Expected errors print ``错误：<中文说明>`` in red on stderr, followed by the
English text in dim style (for logs and support), and never a traceback.
"""

from __future__ import annotations

import errno
import getpass
import importlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, tzinfo
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .core.errors import ConfigError, Conflict, IntegrityError, NotFound, SmartparkError, ValidationError

if TYPE_CHECKING:
    from .bootstrap import App
    from .core.entities import Announcement, AuditEntry, Owner, Visitor

# -- exit codes ------------------------------------------------------------------------------------
EXIT_OK = 0
EXIT_VALIDATION = 1
EXIT_USAGE = 2
EXIT_CONFIG = 3
EXIT_NOT_FOUND = 4
EXIT_CONFLICT = 5
EXIT_INTEGRITY = 6
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

CONFIG_ENV = "SMARTPARK_CONFIG"
DATA_KEY_ENV = "SMARTPARK_DATA_KEY"
TIME_FORMAT = "%Y-%m-%d %H:%M"


def exit_code_for(err: BaseException) -> int:
    """The documented exit code for an expected error."""
    if isinstance(err, ConfigError):
        return EXIT_CONFIG
    if isinstance(err, NotFound):
        return EXIT_NOT_FOUND
    if isinstance(err, Conflict):
        return EXIT_CONFLICT
    if isinstance(err, IntegrityError) or _is_decryption_error(err):
        return EXIT_INTEGRITY
    return EXIT_VALIDATION


def _is_decryption_error(err: BaseException) -> bool:
    try:
        from .security import DecryptionError
    except Exception:  # noqa: BLE001 - the security module is optional for this check
        return False
    return isinstance(err, DecryptionError)


# -- output ----------------------------------------------------------------------------------------
def _console(stream: Any) -> Console:
    """A console on ``stream``; when it is not a terminal, wide enough that tables and ids are not cut."""
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return Console(file=stream, highlight=False, width=None if tty else 160, soft_wrap=False)


def _out() -> Console:
    return _console(sys.stdout)


def _err() -> Console:
    return _console(sys.stderr)


def _t(value: Any, style: str = "") -> Text:
    """User data as plain text (never interpreted as rich markup)."""
    return Text("" if value is None else str(value), style=style)


def _ok(message: str) -> None:
    _out().print(Text.assemble(("✓ ", "green"), message))


def _note(message: str) -> None:
    _err().print(Text(message, style="dim"))


def print_error(zh: str, en: str | None = None) -> None:
    """``错误：<zh>`` in red on stderr, then the English text dimmed."""
    console = _err()
    console.print(Text(f"错误：{zh}", style="bold red"))
    if en:
        console.print(Text(en, style="dim"))


def _when(at: datetime | None, tz: tzinfo) -> str:
    return "—" if at is None else at.astimezone(tz).strftime(TIME_FORMAT)


# -- global state ----------------------------------------------------------------------------------
def _default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name in some containers
        user = os.environ.get("USER") or str(os.getuid() if hasattr(os, "getuid") else "unknown")
    return f"cli:{user}"


class CliState:
    """What the global options set; builds the application on first use and closes it at the end."""

    def __init__(self, config_path: Path, actor: str, debug: bool) -> None:
        self.config_path = config_path
        self.actor = actor
        self.debug = debug
        self._app: App | None = None

    @property
    def app(self) -> App:
        if self._app is None:
            from .bootstrap import bootstrap

            self._app = bootstrap(self.config_file)
        return self._app

    @property
    def config_file(self) -> Path:
        """``--config`` may name the file or the folder that holds ``plugins.toml``."""
        return self.config_path / "plugins.toml" if self.config_path.is_dir() else self.config_path

    def close(self) -> None:
        if self._app is not None:
            app, self._app = self._app, None
            app.close()


def _state(ctx: typer.Context) -> CliState:
    state = ctx.find_root().obj
    if not isinstance(state, CliState):  # invoked without the root callback (should not happen)
        state = CliState(Path(os.environ.get(CONFIG_ENV) or "plugins.toml"), _default_actor(), False)
        ctx.find_root().obj = state
        ctx.find_root().call_on_close(state.close)
    return state


class _Group(typer.core.TyperGroup):
    """The root group: turns expected errors into a message and an exit code, everywhere below it."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except KeyboardInterrupt:
            _err().print(Text("已中断", style="yellow"))
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except SmartparkError as e:
            print_error(e.zh, e.en)
            raise typer.Exit(exit_code_for(e)) from None
        except OSError as e:  # a path the user gave that cannot be read or written
            if e.errno == errno.EPIPE:  # `smartpark export | head`: let typer end quietly
                raise
            if isinstance(ctx.obj, CliState) and ctx.obj.debug:
                traceback.print_exc(file=sys.stderr)
            where = f" {e.filename}" if e.filename else ""
            print_error(f"无法访问文件{where}：{e.strerror or e}", f"cannot access{where}: {e}")
            raise typer.Exit(EXIT_VALIDATION) from None
        except Exception as e:  # noqa: BLE001 - the last line of defence
            if _is_decryption_error(e):
                print_error("存储的数据无法解密：数据可能被篡改，或使用了错误的数据密钥",
                            f"stored data does not decrypt (tampered with, or the wrong data key): {e}")
                raise typer.Exit(EXIT_INTEGRITY) from None
            debug = isinstance(ctx.obj, CliState) and ctx.obj.debug
            if debug:
                traceback.print_exc(file=sys.stderr)
            print_error(f"内部错误：{type(e).__name__}: {e}" + ("" if debug else "（加 --debug 查看详细信息）"),
                        "internal error; this is a bug: please report it with the output of --debug")
            raise typer.Exit(EXIT_INTERNAL) from None


# -- the command tree ------------------------------------------------------------------------------
HELP = (
    "智慧社区停车场服务命令行 / smartpark command line.\n\n"
    "退出码 / exit codes：0 成功 · 1 输入有误 · 2 用法错误 · 3 配置错误 · 4 不存在 · 5 冲突 · "
    "6 完整性校验失败 · 70 内部错误 · 130 已中断（详见 docs/cli.md）"
)

app = typer.Typer(
    cls=_Group, help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
owner_app = typer.Typer(help="业主管理 / owners (residents)", no_args_is_help=True)
visitor_app = typer.Typer(help="访客管理 / visitors", no_args_is_help=True)
announce_app = typer.Typer(help="公告 / announcements", no_args_is_help=True)
audit_app = typer.Typer(help="审计日志 / the audit log", no_args_is_help=True)
app.add_typer(owner_app, name="owner")
app.add_typer(visitor_app, name="visitor")
app.add_typer(announce_app, name="announce")
app.add_typer(audit_app, name="audit")


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"smartpark {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", envvar=CONFIG_ENV, show_envvar=True,
        help="配置文件路径（默认 ./plugins.toml）/ path of plugins.toml")] = None,
    actor: Annotated[str | None, typer.Option(
        "--actor", help="记入审计日志的操作人（默认 cli:<系统用户>）/ who is recorded in the audit log")] = None,
    debug: Annotated[bool, typer.Option(
        "--debug", help="出现内部错误时显示调用栈 / show tracebacks of internal errors")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="显示版本 / show the version")] = False,
) -> None:
    state = CliState(config or Path("plugins.toml"), actor if actor is not None else _default_actor(), debug)
    ctx.obj = state
    ctx.call_on_close(state.close)


# -- shared pieces ---------------------------------------------------------------------------------
REASON_HELP = "修改原因（记入审计日志）/ reason, recorded in the audit log"
YES_HELP = "不再询问，直接确认 / do not ask for confirmation"


def _confirm(question: str) -> None:
    """Ask; refuse (exit 1) on 'no' or when there is no input to answer from."""
    try:
        answer = typer.confirm(question, default=False)
    except typer.Abort as e:
        _err().print()
        if isinstance(e.__context__, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise ValidationError("未确认，未做任何修改（非交互使用时请加 --yes）",
                              "not confirmed (no input); nothing changed. Pass --yes to confirm non-interactively",
                              field="yes") from None
    if not answer:
        raise ValidationError("已取消，未做任何修改", "cancelled; nothing changed", field="yes")


def _plates(holder: Any) -> str:
    return "、".join(p.masked for p in holder.plates)


def _owners_table(owners: Sequence[Owner], tz: tzinfo, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for name, kw in (("编号", {"no_wrap": True}), ("姓名", {}), ("身份证号", {"no_wrap": True}),
                     ("手机号", {"no_wrap": True}), ("车牌", {}), ("余额", {"justify": "right", "no_wrap": True}),
                     ("车库已满通知", {}), ("登记时间", {"no_wrap": True})):
        table.add_column(name, **kw)
    for o in owners:
        table.add_row(_t(o.id), _t(o.name), _t(o.id_number.masked), _t(o.phone.masked), _t(_plates(o)),
                      _t(o.balance), _t("不接收" if o.lot_full_opt_out else "接收"), _t(_when(o.created_at, tz)))
    return table


def _visitors_table(visitors: Sequence[Visitor], tz: tzinfo, title: str | None = None) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for name in ("编号", "姓名", "身份证号", "手机号", "车牌", "登记有效至", "最近到访", "同意时间"):
        table.add_column(name, no_wrap=name != "姓名")
    for v in visitors:
        table.add_row(_t(v.id), _t(v.name), _t(v.id_number.masked), _t(v.phone.masked), _t(v.plate.masked),
                      _t(_when(v.valid_until, tz)), _t(_when(v.last_seen_at, tz)), _t(_when(v.consent_at, tz)))
    return table


def _lookup(query: str, get: Callable[[str], Any], find: Callable[[str], list[Any]]) -> list[Any]:
    """By id first, then by plate, mobile number, ID number or (owners) part of a name."""
    query = query.strip()
    try:
        return [get(query)]
    except NotFound:
        return find(query)


# -- init ------------------------------------------------------------------------------------------
def _template_text() -> str:
    return resources.files("smartpark").joinpath("resources", "plugins.toml").read_text(encoding="utf-8")


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()} if folder.exists() else set()


def _initialise(config_path: Path) -> dict[str, Any]:
    """Bootstrap once from ``config_path``: data folder, key file, migrated database. Returns what happened."""
    from .bootstrap import bootstrap
    from .config import load_config

    cfg = load_config(config_path)
    before = _files_under(cfg.data_dir)
    dir_existed = cfg.data_dir.exists()
    application = bootstrap(cfg)
    try:
        application.store  # noqa: B018 - builds the key ring, the data folder and the store, and migrates
    finally:
        application.close()
    after = _files_under(cfg.data_dir)
    return {"config": cfg, "data_dir": cfg.data_dir, "data_dir_created": not dir_existed,
            "key_file": cfg.key_file, "key_from_env": bool(os.environ.get(DATA_KEY_ENV, "").strip()),
            "key_created": cfg.key_file in after - before, "new_files": sorted(after - before)}


@app.command("init")
def init_cmd(
    directory: Annotated[Path, typer.Argument(help="目标目录（默认当前目录）/ target folder")] = Path("."),
    force: Annotated[bool, typer.Option(
        "--force", help="覆盖已有的 plugins.toml / overwrite an existing plugins.toml")] = False,
) -> None:
    """初始化：写入 plugins.toml，创建数据目录、数据密钥和数据库 / create plugins.toml, data folder, key, database."""
    target = directory / "plugins.toml"
    if target.exists() and not force:
        raise Conflict(f"{target} 已存在，未做修改；如需覆盖请加 --force",
                       f"{target} already exists; nothing changed (use --force to overwrite)")
    existed = target.exists()
    directory.mkdir(parents=True, exist_ok=True)
    target.write_text(_template_text(), encoding="utf-8")
    try:
        done = _initialise(target)
    except BaseException:
        if not existed:  # leave no half-initialised folder that a second `init` would refuse
            target.unlink(missing_ok=True)
        raise
    _ok(f"已写入配置文件 {target.resolve()}")
    _ok(f"数据目录 {done['data_dir']}" + ("（新建）" if done["data_dir_created"] else "（已存在）"))
    if done["key_from_env"]:
        _ok(f"使用环境变量 {DATA_KEY_ENV} 中的数据密钥（未创建密钥文件）")
    elif done["key_created"]:
        _ok(f"已创建数据密钥文件 {done['key_file']}（权限 0600）——请妥善备份，丢失后加密数据无法恢复")
    else:
        _ok(f"沿用已有的数据密钥文件 {done['key_file']}")
    for f in done["new_files"]:
        if f != done["key_file"]:
            _ok(f"已创建 {f}")
    _ok("数据库已迁移到最新版本")
    prefix = "" if directory.resolve() == Path.cwd().resolve() else f"-c {target} "
    out = _out()
    out.print(Text("\n下一步：", style="bold"))
    out.print(_t(f"  1. 按需编辑 {target}：车场名称、车位数、收费标准、启用的插件"))
    out.print(_t(f"  2. smartpark {prefix}plugins            查看已安装和已启用的插件"))
    out.print(_t(f"  3. smartpark {prefix}owner add --name 张三 --id-number <身份证号> --phone <手机号> "
                 "--plate 京A12345"))
    out.print(_t(f"  4. smartpark {prefix}audit verify       校验审计日志"))


# -- owners ----------------------------------------------------------------------------------------
@owner_app.command("add")
def owner_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="姓名 / name")],
    id_number: Annotated[str, typer.Option("--id-number", help="身份证号（18 位）/ resident ID number")],
    phone: Annotated[str, typer.Option("--phone", help="手机号 / mobile number")],
    plate: Annotated[list[str], typer.Option("--plate", help="车牌，可重复 / plate, repeatable")],
    no_lot_full_notice: Annotated[bool, typer.Option(
        "--no-lot-full-notice", help="不接收车库已满通知 / opt out of lot-full notices")] = False,
) -> None:
    """登记业主 / register an owner."""
    st = _state(ctx)
    owner = st.app.residents.register_owner(name=name, id_number=id_number, phone=phone, plates=plate,
                                            actor=st.actor, lot_full_opt_out=no_lot_full_notice)
    _ok(f"已登记业主 {owner.name}（编号 {owner.id}）")
    _out().print(_owners_table([owner], st.app.timezone))


@owner_app.command("show")
def owner_show(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(
        help="车牌、手机号、身份证号、业主编号或姓名的一部分 / plate, mobile, ID number, owner id or part of a name")],
) -> None:
    """查询业主（显示脱敏信息）/ find owners (masked)."""
    st = _state(ctx)
    r = st.app.residents
    owners = _lookup(query, r.get_owner, r.find_owners)
    if not owners:
        raise NotFound(f"没有找到与“{query}”匹配的业主", f"no owner matches {query!r}")
    _out().print(_owners_table(owners, st.app.timezone, title=f"找到 {len(owners)} 位业主"))


@owner_app.command("list")
def owner_list(
    ctx: typer.Context,
    offset: Annotated[int, typer.Option("--offset", min=0, help="跳过前 N 位 / skip the first N")] = 0,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="最多显示 N 位 / show at most N")] = 50,
) -> None:
    """列出业主（按登记顺序）/ list owners in registration order."""
    st = _state(ctx)
    owners = st.app.residents.list_owners(offset, limit)
    total = st.app.residents.count_owners()
    if not owners:
        _out().print(_t(f"暂无业主（共 {total} 位）"))
        return
    _out().print(_owners_table(owners, st.app.timezone,
                               title=f"业主 第 {offset + 1}–{offset + len(owners)} 位，共 {total} 位"))


@owner_app.command("change-plate")
def owner_change_plate(
    ctx: typer.Context,
    owner_id: Annotated[str, typer.Argument(help="业主（或访客）编号 / owner (or visitor) id")],
    old: Annotated[str, typer.Argument(help="原车牌 / the registered plate")],
    new: Annotated[str, typer.Argument(help="新车牌 / the new plate")],
    reason: Annotated[str, typer.Option("--reason", help=REASON_HELP)],
) -> None:
    """更换车牌（记入审计日志）/ change a plate (audited)."""
    st = _state(ctx)
    holder = st.app.residents.change_plate(owner_id, old, new, reason=reason, actor=st.actor)
    _ok(f"已为 {holder.name} 更换车牌，现有车牌：{_plates(holder)}（已记入审计日志）")


@owner_app.command("add-plate")
def owner_add_plate(
    ctx: typer.Context,
    owner_id: Annotated[str, typer.Argument(help="业主编号 / owner id")],
    plate: Annotated[str, typer.Argument(help="新增车牌 / plate to add")],
    reason: Annotated[str, typer.Option("--reason", help=REASON_HELP)],
) -> None:
    """为业主增加车牌 / add a plate to an owner."""
    st = _state(ctx)
    owner = st.app.residents.add_plate(owner_id, plate, reason=reason, actor=st.actor)
    _ok(f"已为 {owner.name} 增加车牌，现有车牌：{_plates(owner)}（已记入审计日志）")


@owner_app.command("remove-plate")
def owner_remove_plate(
    ctx: typer.Context,
    owner_id: Annotated[str, typer.Argument(help="业主编号 / owner id")],
    plate: Annotated[str, typer.Argument(help="要移除的车牌 / plate to remove")],
    reason: Annotated[str, typer.Option("--reason", help=REASON_HELP)],
) -> None:
    """移除业主的一个车牌 / remove one of an owner's plates."""
    st = _state(ctx)
    owner = st.app.residents.remove_plate(owner_id, plate, reason=reason, actor=st.actor)
    _ok(f"已为 {owner.name} 移除车牌，现有车牌：{_plates(owner)}（已记入审计日志）")


@owner_app.command("change-phone")
def owner_change_phone(
    ctx: typer.Context,
    owner_id: Annotated[str, typer.Argument(help="业主（或访客）编号 / owner (or visitor) id")],
    phone: Annotated[str, typer.Argument(help="新手机号 / the new mobile number")],
    reason: Annotated[str, typer.Option("--reason", help=REASON_HELP)],
) -> None:
    """修改手机号（记入审计日志）/ change the mobile number (audited)."""
    st = _state(ctx)
    holder = st.app.residents.change_phone(owner_id, phone, reason=reason, actor=st.actor)
    _ok(f"已将 {holder.name} 的手机号改为 {holder.phone.masked}（已记入审计日志）")


class NotifyChannel(str, Enum):
    auto = "auto"
    sms = "sms"
    wechat = "wechat"


_CHANNEL_ZH = {"auto": "按停车场设置", "sms": "短信", "wechat": "微信"}


@owner_app.command("prefs")
def owner_prefs(
    ctx: typer.Context,
    owner_id: Annotated[str, typer.Argument(help="业主编号 / owner id")],
    lot_full_notice: Annotated[bool | None, typer.Option(
        "--lot-full-notice/--no-lot-full-notice", help="是否接收车库已满通知 / receive lot-full notices or not")] = None,
    channel: Annotated[NotifyChannel | None, typer.Option(
        "--channel", help="首选通知方式：auto 按停车场设置，sms 短信，wechat 微信 / the first channel")] = None,
    wechat_openid: Annotated[str | None, typer.Option(
        "--wechat-openid", help="绑定的微信 openid（空字符串解除绑定）/ bind a WeChat openid (\"\" unbinds)")] = None,
) -> None:
    """通知偏好：车库已满通知、首选通知方式、微信绑定（记入审计日志）/ notification preferences (audited)."""
    st = _state(ctx)
    if lot_full_notice is None and channel is None and wechat_openid is None:
        raise ValidationError("请至少指定一项要修改的偏好（--lot-full-notice / --channel / --wechat-openid）",
                              "nothing to change: give --lot-full-notice, --channel or --wechat-openid")
    owner = st.app.residents.set_owner_preferences(
        owner_id, actor=st.actor, lot_full_opt_out=None if lot_full_notice is None else not lot_full_notice,
        notify_channel=channel.value if channel is not None else None, wechat_openid=wechat_openid)
    _ok(f"已更新 {owner.name} 的通知偏好：车库已满通知{'不接收' if owner.lot_full_opt_out else '接收'}，"
        f"首选{_CHANNEL_ZH[owner.notify_channel]}，微信{'已绑定' if owner.wechat_openid else '未绑定'}（已记入审计日志）")


@owner_app.command("change-id-number")
def owner_change_id_number(
    ctx: typer.Context,
    owner_id: Annotated[str, typer.Argument(help="业主（或访客）编号 / owner (or visitor) id")],
    id_number: Annotated[str, typer.Argument(metavar="ID", help="新身份证号 / the new ID number")],
    reason: Annotated[str, typer.Option("--reason", help=REASON_HELP)],
) -> None:
    """修改身份证号（记入审计日志）/ change the ID number (audited)."""
    st = _state(ctx)
    holder = st.app.residents.change_id_number(owner_id, id_number, reason=reason, actor=st.actor)
    _ok(f"已将 {holder.name} 的身份证号改为 {holder.id_number.masked}（已记入审计日志）")


class RevealField(str, Enum):
    id_number = "id_number"
    phone = "phone"


@owner_app.command("reveal")
def owner_reveal(
    ctx: typer.Context,
    owner_id: Annotated[str, typer.Argument(help="业主（或访客）编号 / owner (or visitor) id")],
    field: Annotated[RevealField, typer.Option("--field", help="要查看的字段 / the field to reveal")],
    reason: Annotated[str, typer.Option("--reason", help="查看原因（记入审计日志）/ why, recorded in the audit log")],
) -> None:
    """查看完整的身份证号或手机号（记入审计日志）/ show a full ID number or phone (audited)."""
    st = _state(ctx)
    value = st.app.residents.reveal(owner_id, field.value, actor=st.actor, reason=reason)
    typer.echo(value)
    _note(f"已记入审计日志：{st.actor} 查看了 {'身份证号' if field is RevealField.id_number else '手机号'}")


LEDGER_KINDS = {"topup": "充值", "charge": "扣费", "refund": "退款", "adjust": "调整"}


@owner_app.command("balance")
def owner_balance(
    ctx: typer.Context,
    owner_id: Annotated[str, typer.Argument(help="业主编号 / owner id")],
    limit: Annotated[int, typer.Option("--limit", min=1, max=500, help="最近流水条数 / recent entries")] = 20,
) -> None:
    """余额与最近流水 / balance, recent ledger and last payment."""
    st = _state(ctx)
    tz = st.app.timezone
    owner = st.app.residents.get_owner(owner_id)
    view = st.app.balances.view(owner_id, limit)
    out = _out()
    out.print(Text.assemble(("业主：", "bold"), str(owner.name), f"（{_plates(owner)}）"))
    out.print(Text.assemble(("余额：", "bold"), (str(view.balance), "red" if view.balance.is_negative else "")))
    out.print(Text.assemble(("最近缴费：", "bold"), _when(view.last_payment_at, tz)))
    if not view.recent:
        out.print(_t("暂无流水"))
        return
    table = Table(title="最近流水", title_justify="left", header_style="bold")
    for name in ("时间", "类型", "金额", "变动后余额", "流水号", "备注"):
        table.add_column(name, justify="right" if name in ("金额", "变动后余额") else "left")
    for e in view.recent:
        table.add_row(_t(_when(e.at, tz)), _t(LEDGER_KINDS.get(e.kind, e.kind)), _t(e.delta), _t(e.balance_after),
                      _t(e.ref), _t(e.note))
    out.print(table)


@owner_app.command("delete")
def owner_delete(
    ctx: typer.Context,
    owner_id: Annotated[str, typer.Argument(help="业主编号 / owner id")],
    reason: Annotated[str, typer.Option("--reason", help="删除原因（记入审计日志）/ why, recorded in the audit log")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help=YES_HELP)] = False,
) -> None:
    """删除业主（需确认）/ delete an owner (asks first)."""
    st = _state(ctx)
    owner = st.app.residents.get_owner(owner_id)
    if not yes:
        _confirm(f"确定删除业主 {owner.name}（车牌 {_plates(owner)}，余额 {owner.balance}）吗？此操作不可撤销")
    st.app.residents.delete_owner(owner_id, actor=st.actor, reason=reason)
    _ok(f"已删除业主 {owner.name}（编号 {owner_id}，已记入审计日志）")


# -- visitors --------------------------------------------------------------------------------------
@visitor_app.command("add")
def visitor_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Option("--name", help="姓名 / name")],
    id_number: Annotated[str, typer.Option("--id-number", help="身份证号 / resident ID number")],
    phone: Annotated[str, typer.Option("--phone", help="手机号 / mobile number")],
    plate: Annotated[str, typer.Option("--plate", help="车牌 / plate")],
    consent: Annotated[bool, typer.Option(
        "--consent",
        help="访客已阅读并同意《个人信息处理说明》/ the visitor agreed to the personal-information notice")] = False,
) -> None:
    """登记访客（须经访客同意）/ register a visitor (needs consent)."""
    st = _state(ctx)
    visitor = st.app.residents.register_visitor(name=name, id_number=id_number, phone=phone, plate=plate,
                                                consent=consent, actor=st.actor)
    tz = st.app.timezone
    renewed = visitor.created_at != visitor.consent_at  # a returning visitor's registration was renewed
    _ok(f"已{'为再次到访的访客续期' if renewed else '登记访客'} {visitor.name}（编号 {visitor.id}），"
        f"有效期至 {_when(visitor.valid_until, tz)}")
    _out().print(_visitors_table([visitor], tz))


@visitor_app.command("show")
def visitor_show(
    ctx: typer.Context,
    query: Annotated[str, typer.Argument(
        help="车牌、手机号、身份证号或访客编号 / plate, mobile, ID number or visitor id")],
) -> None:
    """查询访客（显示脱敏信息）/ find visitors (masked)."""
    st = _state(ctx)
    r = st.app.residents
    visitors = _lookup(query, r.get_visitor, r.find_visitors)
    if not visitors:
        raise NotFound(f"没有找到与“{query}”匹配的访客", f"no visitor matches {query!r}")
    _out().print(_visitors_table(visitors, st.app.timezone, title=f"找到 {len(visitors)} 位访客"))


@visitor_app.command("list")
def visitor_list(
    ctx: typer.Context,
    offset: Annotated[int, typer.Option("--offset", min=0, help="跳过前 N 位 / skip the first N")] = 0,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000, help="最多显示 N 位 / show at most N")] = 50,
) -> None:
    """列出访客 / list visitors."""
    st = _state(ctx)
    visitors = st.app.residents.list_visitors(offset, limit)
    if not visitors:
        _out().print(_t("暂无访客"))
        return
    _out().print(_visitors_table(visitors, st.app.timezone, title=f"访客 第 {offset + 1}–{offset + len(visitors)} 位"))


@visitor_app.command("delete")
def visitor_delete(
    ctx: typer.Context,
    visitor_id: Annotated[str, typer.Argument(help="访客编号 / visitor id")],
    reason: Annotated[str, typer.Option("--reason", help="删除原因（记入审计日志）/ why, recorded in the audit log")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help=YES_HELP)] = False,
) -> None:
    """删除访客（需确认）/ delete a visitor (asks first)."""
    st = _state(ctx)
    visitor = st.app.residents.get_visitor(visitor_id)
    if not yes:
        _confirm(f"确定删除访客 {visitor.name}（车牌 {visitor.plate.masked}）吗？此操作不可撤销")
    st.app.residents.delete_visitor(visitor_id, actor=st.actor, reason=reason)
    _ok(f"已删除访客 {visitor.name}（编号 {visitor_id}，已记入审计日志）")


# -- announcements ---------------------------------------------------------------------------------
def _parse_time(text: str | None, tz: tzinfo, option: str) -> datetime | None:
    """ISO 8601; a time without an offset is in the lot's time zone."""
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValidationError(f"{option} 的时间“{text}”格式不正确，应为如 2024-05-01 08:00 或 2024-05-01T08:00+08:00",
                              f"{option}: {text!r} is not an ISO 8601 time such as 2024-05-01T08:00",
                              field=option) from None
    return at.replace(tzinfo=tz) if at.tzinfo is None else at


def _announcement_state(a: Announcement, now: datetime) -> str:
    if a.is_current(now):
        return "生效中"
    return "未生效" if now < a.valid_from else "已过期"


@announce_app.command("publish")
def announce_publish(
    ctx: typer.Context,
    title: Annotated[str, typer.Option("--title", help="标题（1–60 字）/ title")],
    body: Annotated[str, typer.Option("--body", help="内容（1–2000 字）/ text")],
    valid_from: Annotated[str | None, typer.Option(
        "--from",
        help="生效时间，ISO 格式，不带时区时按车场时区（默认现在）/ start, ISO 8601; naive = lot time zone")] = None,
    valid_until: Annotated[str | None, typer.Option(
        "--until", help="截止时间，ISO 格式（默认长期有效）/ end, ISO 8601")] = None,
) -> None:
    """发布公告 / publish an announcement."""
    st = _state(ctx)
    tz = st.app.timezone
    a = st.app.announcements.publish(title=title, body=body, actor=st.actor,
                                     valid_from=_parse_time(valid_from, tz, "--from"),
                                     valid_until=_parse_time(valid_until, tz, "--until"))
    until = _when(a.valid_until, tz) if a.valid_until else "长期有效"
    _ok(f"已发布公告“{a.title}”（编号 {a.id}），{_when(a.valid_from, tz)} 起至 {until}")


@announce_app.command("list")
def announce_list(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option(
        "--all", help="包括未生效和已过期的公告 / include future and expired ones")] = False,
) -> None:
    """列出公告（默认只列当前生效的）/ list announcements (current ones by default)."""
    st = _state(ctx)
    tz = st.app.timezone
    items = st.app.announcements.list() if all_ else st.app.announcements.current()
    if not items:
        _out().print(_t("暂无公告" if all_ else "当前没有生效的公告"))
        return
    now = st.app.clock.now()
    table = Table(title=("全部公告" if all_ else "当前公告") + f"（{len(items)} 条）", title_justify="left",
                  header_style="bold")
    for name in ("编号", "标题", "内容", "生效时间", "截止时间", "状态", "发布人"):
        table.add_column(name, no_wrap=name in ("编号", "生效时间", "截止时间", "状态"))
    for a in items:
        table.add_row(_t(a.id), _t(a.title), _t(a.body), _t(_when(a.valid_from, tz)),
                      _t(_when(a.valid_until, tz) if a.valid_until else "长期"), _t(_announcement_state(a, now)),
                      _t(a.created_by))
    _out().print(table)


@announce_app.command("delete")
def announce_delete(
    ctx: typer.Context,
    announcement_id: Annotated[str, typer.Argument(metavar="ID", help="公告编号 / announcement id")],
) -> None:
    """删除公告 / delete an announcement."""
    st = _state(ctx)
    st.app.announcements.delete(announcement_id, actor=st.actor)
    _ok(f"已删除公告 {announcement_id}")


# -- export / import / purge -----------------------------------------------------------------------
def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to a file only its owner may read (it holds full personal data)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    if os.name == "posix":
        os.chmod(path, 0o600)


@app.command("export")
def export_cmd(
    ctx: typer.Context,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="输出文件（默认标准输出）/ output file (default stdout)")] = None,
    include_sensitive: Annotated[bool, typer.Option(
        "--include-sensitive",
        help="导出完整的身份证号、手机号和车牌（须填写 --reason，记入审计日志）/ full values (audited)")] = False,
    reason: Annotated[str | None, typer.Option(
        "--reason", help="导出完整信息的原因 / why (with --include-sensitive)")] = None,
) -> None:
    """导出业主和访客（JSON，默认脱敏）/ export owners and visitors as JSON (masked by default)."""
    st = _state(ctx)
    if include_sensitive and not (reason or "").strip():
        raise typer.BadParameter("使用 --include-sensitive 时必须用 --reason 说明导出原因 / "
                                 "--include-sensitive needs --reason",
                                 param_hint="'--reason'")
    data = st.app.residents.export_residents(actor=st.actor, include_sensitive=include_sensitive, reason=reason or "")
    text = json.dumps(data, ensure_ascii=False, indent=2) + "\n"
    summary = f"{len(data['owners'])} 位业主、{len(data['visitors'])} 位访客"
    if output is None:
        sys.stdout.write(text)
        sys.stdout.flush()
        if include_sensitive:
            _note(f"注意：以上输出包含完整的身份证号、手机号和车牌（{summary}，已记入审计日志）")
        return
    if include_sensitive:
        _write_private(output, text)
        _ok(f"已导出 {summary} 到 {output}（含完整敏感信息，文件权限 0600，已记入审计日志）")
    else:
        output.write_text(text, encoding="utf-8")
        _ok(f"已导出 {summary} 到 {output}（已脱敏）")


@app.command("import")
def import_cmd(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(
        metavar="FILE",
        help="由 export --include-sensitive 导出的 JSON 文件，- 表示标准输入 / a full export; - for stdin")],
) -> None:
    """导入业主和访客：全部有效才写入，否则一条也不写 / import owners and visitors: all or nothing."""
    st = _state(ctx)
    try:
        raw = sys.stdin.read() if str(file) == "-" else file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise NotFound(f"找不到文件 {file}", f"file {file} not found") from None
    except UnicodeDecodeError:
        raise ValidationError(f"文件 {file} 不是 UTF-8 文本", f"{file} is not UTF-8 text") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValidationError(f"文件 {file} 不是有效的 JSON（第 {e.lineno} 行第 {e.colno} 列）",
                              f"{file} is not valid JSON: {e}") from None
    report = st.app.residents.import_residents(data, actor=st.actor)
    if not report.ok:
        table = Table(title="导入失败，以下记录有问题（位置从 1 开始，先业主后访客）", title_justify="left",
                      header_style="bold")
        table.add_column("位置", justify="right", no_wrap=True)
        table.add_column("字段", no_wrap=True)
        table.add_column("问题")
        table.add_column("Problem", style="dim")
        for p in report.problems:
            table.add_row(_t("整个文件" if p.position == 0 else f"第 {p.position} 条"), _t(p.field or "—"), _t(p.zh),
                          _t(p.en))
        _err().print(table)
        raise ValidationError(f"导入失败：共 {len(report.problems)} 处问题，未写入任何数据",
                              f"import refused: {len(report.problems)} problem(s); nothing was written")
    _ok(f"已导入 {report.owners} 位业主、{report.visitors} 位访客（已记入审计日志）")


@app.command("purge")
def purge_cmd(ctx: typer.Context) -> None:
    """清理超过保留期的访客记录 / delete visitors past the retention period."""
    st = _state(ctx)
    count = st.app.residents.purge_visitors(actor=st.actor)
    days = st.app.config.privacy.visitor_retention_days
    if count:
        _ok(f"已清理 {count} 条访客记录（超过 {days} 天未到访，已记入审计日志）")
    else:
        _ok(f"没有需要清理的访客记录（保留期 {days} 天），共清理 0 条")


@app.command("migrate")
def migrate_cmd(
    ctx: typer.Context,
    to: str = typer.Option(..., "--to", help="目标 PostgreSQL 连接串（不含密码，密码用 PGPASSWORD）/ target PostgreSQL "
                                               "DSN or URI, without the password (use PGPASSWORD)"),
    schema: str = typer.Option("smartpark", "--schema", help="目标 schema / target schema"),
) -> None:
    """把当前存储全部复制到一个新的空 PostgreSQL 库并校验 / copy everything into a new, empty PostgreSQL store."""
    from .migrate import migrate_store

    st = _state(ctx)
    app = st.app
    cfg = app.plugins.validate_settings("storage_postgres", {"dsn": to, "schema": schema})
    target = app.plugins.build("storage_postgres", cfg, app.container.context())
    try:
        target.migrate()
        report = migrate_store(app.store, target,
                               progress=lambda kind, n: _note(f"已复制 {kind}：{n} 条 / copied {kind}: {n}"))
    finally:
        target.close()
    total = sum(report.counts.values())
    _ok(f"迁移完成：共 {total} 条记录，各类数量一致，审计日志哈希链与源一致（{(report.audit_head or '-')[:12]}…）")
    _note("请在 plugins.toml 中启用 storage_postgres 并停用 storage_sqlite，然后重启服务")


# -- audit -----------------------------------------------------------------------------------------
@audit_app.command("verify")
def audit_verify(ctx: typer.Context) -> None:
    """校验审计日志的哈希链 / check the audit log's hash chain."""
    st = _state(ctx)
    result = st.app.audit.verify()
    if result.ok:
        _ok(f"审计日志完整（共 {result.checked} 条）")
        return
    raise IntegrityError(
        f"审计日志校验失败：第 {result.broken_seq} 条记录有问题——{result.reason_zh}（此前 {result.checked} 条正常）",
        f"audit chain broken at record {result.broken_seq}: {result.reason_en} "
        f"({result.checked} records before it are intact)",
    )


def _details(details: dict[str, Any]) -> str:
    return json.dumps(details, ensure_ascii=False, separators=(", ", ": "), default=str)


@audit_app.command("log")
def audit_log(
    ctx: typer.Context,
    subject: Annotated[str | None, typer.Option(
        "--subject", help="对象，如 owner:<编号> / subject such as owner:<id>")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10000, help="最多显示 N 条 / at most N records")] = 50,
) -> None:
    """查看审计日志 / show audit records."""
    st = _state(ctx)
    tz = st.app.timezone
    entries: Sequence[AuditEntry] = st.app.audit.recent(subject, limit)
    if not entries:
        _out().print(_t("没有审计记录"))
        return
    table = Table(title=f"审计记录（{len(entries)} 条）", title_justify="left", header_style="bold")
    for name in ("序号", "时间", "操作人", "操作", "对象", "详情"):
        table.add_column(name, no_wrap=name in ("序号", "时间"), justify="right" if name == "序号" else "left")
    for e in entries:
        table.add_row(_t(e.seq), _t(_when(e.at, tz)), _t(e.actor), _t(e.action), _t(e.subject), _t(_details(e.details)))
    _out().print(table)


# -- plugins ---------------------------------------------------------------------------------------
KIND_NAMES = {"store": "存储", "gate": "道闸", "recognizer": "车牌识别", "sensor": "车位传感器", "payment": "支付",
              "notifier": "消息通知", "frontend": "前端", "?": "加载失败"}


def _settings_text(settings: dict[str, Any]) -> str:
    return "\n".join(f"{k} = {json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
                     for k, v in settings.items()) or "—"


@app.command("plugins")
def plugins_cmd(ctx: typer.Context) -> None:
    """列出已安装的插件及启用状态（设置中的密钥已隐藏）/ list installed plugins, enabled ones, redacted settings."""
    from .config import load_config
    from .plugins import Plugins

    st = _state(ctx)
    if st.config_file.exists():
        cfg = load_config(st.config_file)
        enabled, settings = list(cfg.plugins.enabled), cfg.plugins.configured()
        source = f"配置文件：{cfg.source or st.config_file}"
    else:
        enabled, settings = [], {}
        source = f"未找到配置文件 {st.config_file}：没有启用任何插件（运行 smartpark init 创建）"
    plugins = Plugins()
    rows = plugins.listing(enabled, settings)
    listed = {r["name"] for r in rows}
    rows += [{"name": n, "kind": "?", "enabled": True, "provider": "—", "description": "未安装 / not installed",
              "settings": {}} for n in enabled if n not in listed]
    table = Table(title="插件", title_justify="left", header_style="bold")
    for name in ("名称", "类型", "启用", "提供者", "说明", "设置"):
        table.add_column(name, no_wrap=name in ("名称", "类型", "启用"), justify="center" if name == "启用" else "left")
    for r in rows:
        broken = r["kind"] == "?"
        table.add_row(_t(r["name"], "red" if broken else "bold"),
                      _t(KIND_NAMES.get(r["kind"], r["kind"]), "red" if broken else ""),
                      Text("✓", style="green") if r["enabled"] else _t(""), _t(r["provider"]),
                      _t(r["description"], "red" if broken else ""), _t(_settings_text(r["settings"])))
    out = _out()
    out.print(_t(source))
    out.print(table)
    on = [r["name"] for r in rows if r["enabled"]]
    out.print(_t(f"已安装 {len(plugins.available())} 个，已启用 {len(on)} 个：{'、'.join(on) if on else '无'}"
                 + (f"；加载失败 {len(plugins.broken)} 个" if plugins.broken else "")))
    if enabled:
        plugins.check_enabled(enabled, settings)  # unknown names and bad settings -> ConfigError (exit 3)


# -- demo ------------------------------------------------------------------------------------------
class _StepFailed(Exception):
    """A demo step that did not behave as expected."""


class _Timeline:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.results: list[tuple[str, bool, str]] = []

    def step(self, title: str, fn: Callable[[], str]) -> bool:
        started = time.perf_counter()
        try:
            detail, ok = fn(), True
        except _StepFailed as e:
            detail, ok = str(e), False
        except SmartparkError as e:
            detail, ok = f"意外的错误：{e.zh}", False
        except Exception as e:  # noqa: BLE001 - report and keep going
            detail, ok = f"意外的错误：{type(e).__name__}: {e}", False
        ms = (time.perf_counter() - started) * 1000
        n = len(self.results) + 1
        self.results.append((title, ok, detail))
        self.console.print(Text.assemble(
            ("✓" if ok else "✗", "bold green" if ok else "bold red"), f" {n:>2}. ", (title, "bold"),
            ("  " + detail if detail else "", "" if ok else "red"), (f"  ({ms:.0f} ms)", "dim")))
        return ok

    @property
    def passed(self) -> int:
        return sum(ok for _, ok, _ in self.results)


def _expect_error(kind: type[SmartparkError], fn: Callable[[], Any]) -> SmartparkError:
    try:
        fn()
    except kind as e:
        return e
    raise _StepFailed(f"本应被拒绝（{kind.__name__}），却成功了")


# Demo data: valid, made-up ID numbers (correct check characters) and phones.
_DEMO_OWNERS = [
    {"name": "张伟", "id_number": "110105198001011238", "phone": "13800138000", "plates": ["京A12345", "京AD12345"]},
    {"name": "李娜", "id_number": "310115198506152343", "phone": "13900139000", "plates": ["沪B67890"]},
]
_DEMO_VISITOR = {"name": "赵敏", "id_number": "440305199002033457", "phone": "13700137000", "plate": "粤B12345"}
_DEMO_BAD_ID = "110108197511114566"  # wrong check character (the right one is 5)
_AUDIT_TABLE = "audit_log"


def _sqlite_path(cfg: Any) -> Path:
    """The database file of the embedded store, as its settings name it (relative to the data folder)."""
    raw = Path(cfg.plugins.settings("storage_sqlite").get("path", "smartpark.db"))
    return raw if raw.is_absolute() else cfg.data_dir / raw


def _raw_db_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in (db, Path(f"{db}-wal"), Path(f"{db}-shm")) if p.exists())


def _check_keep(keep: Path | None) -> None:
    """``--keep`` must name an empty or new folder."""
    if keep is not None and keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        raise Conflict(f"目录 {keep} 不是空的；请指定一个空目录或不存在的目录",
                       f"{keep} is not empty; give an empty or new folder")


@app.command("demo")
def demo_cmd(
    keep: Annotated[Path | None, typer.Option(
        "--keep", help="在此目录运行并保留（须为空目录或不存在）/ run in this folder and keep it")] = None,
    broker: Annotated[str | None, typer.Option(
        "--broker", envvar="SMARTPARK_DEMO_BROKER", show_envvar=True,
        help="先尝试的 MQTT 服务器 HOST:PORT（默认 127.0.0.1:1883；无法连接时启动内置服务器）/ "
             "MQTT broker to try first; the embedded one is started when it does not answer")] = None,
    records: Annotated[bool, typer.Option(
        "--records", help="改为演示登记与数据安全（业主、访客、审计、加密）/ the registration and data-security "
                          "walk-through instead")] = False,
) -> None:
    """演示：真实服务上的一天出入口（MQTT、道闸 TCP、访客登记页、岗亭缴费；约数秒）/ a scripted day at the gate.

    退出码 0：全部符合预期；1：有不符合预期的步骤 / exit 0 when every expectation held, 1 otherwise.
    """
    _check_keep(keep)
    if records:
        _records_demo(keep)
        return
    from .demo import run_demo

    code = run_demo(keep=keep, broker=broker, console=_out())
    if code:
        raise typer.Exit(EXIT_VALIDATION)


def _records_demo(keep: Path | None) -> None:
    """``smartpark demo --records``: registration, masking, audited changes, encryption at rest, tamper detection."""
    from .bootstrap import bootstrap

    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        folder = keep.resolve()
    else:
        folder = Path(tempfile.mkdtemp(prefix="smartpark-demo-"))
    out = _out()
    out.print(Panel(Text(f"智慧社区停车场服务 · 演示\n目录：{folder}\n存储：SQLite（内置默认配置）"), expand=False))
    started = time.perf_counter()
    tl = _Timeline(out)
    actor = "demo:物业管理员"
    s: dict[str, Any] = {}

    def app_() -> App:
        if s.get("app") is None:
            s["app"] = bootstrap(s["config_path"])
        return s["app"]

    def close_app() -> None:
        if s.get("app") is not None:
            s.pop("app").close()

    try:
        def init() -> str:
            s["config_path"] = folder / "plugins.toml"
            s["config_path"].write_text(_template_text(), encoding="utf-8")
            done = _initialise(s["config_path"])
            s["cfg"] = done["config"]
            s["db"] = _sqlite_path(done["config"])
            if not s["db"].exists():
                raise _StepFailed(f"数据库文件 {s['db']} 没有创建")
            key = f"环境变量 {DATA_KEY_ENV}" if done["key_from_env"] else f"密钥文件 {done['key_file'].name}（0600）"
            return f"plugins.toml、{key}、数据库 {s['db'].name} 已就绪"
        tl.step("初始化（smartpark init）", init)

        def owners() -> str:
            r = app_().residents
            s["owners"] = [r.register_owner(**o, actor=actor) for o in _DEMO_OWNERS]
            return "；".join(f"{o.name} {_plates(o)}" for o in s["owners"])
        tl.step("登记两位业主（一位有两辆车）", owners)

        def bad_id() -> str:
            r = app_().residents
            before = r.count_owners()
            e = _expect_error(ValidationError, lambda: r.register_owner(
                name="王强", id_number=_DEMO_BAD_ID, phone="13600136000", plates=["京B54321"], actor=actor))
            if r.count_owners() != before:
                raise _StepFailed("被拒绝的登记却保存了数据")
            return f"按预期被拒绝 → 错误：{e.zh}"
        tl.step("身份证号错误的登记", bad_id)

        def taken() -> str:
            r = app_().residents
            e = _expect_error(Conflict, lambda: r.register_owner(
                name="王强", id_number="110108197511114565", phone="13600136000", plates=["京A12345"], actor=actor))
            return f"按预期被拒绝 → 错误：{e.zh}"
        tl.step("登记已被占用的车牌", taken)

        def no_consent() -> str:
            r = app_().residents
            e = _expect_error(ValidationError, lambda: r.register_visitor(**_DEMO_VISITOR, consent=False, actor=actor))
            return f"按预期被拒绝 → 错误：{e.zh}"
        tl.step("访客未同意个人信息处理说明", no_consent)

        def visitor() -> str:
            v = app_().residents.register_visitor(**_DEMO_VISITOR, consent=True, actor=actor)
            return f"{v.name} {v.plate.masked}，有效期至 {_when(v.valid_until, app_().timezone)}"
        tl.step("访客同意后登记", visitor)

        def masked() -> str:
            listed = app_().residents.list_owners()
            text = " ".join(f"{o.name} {o.id_number.masked} {o.phone.masked} {_plates(o)}" for o in listed)
            for o in _DEMO_OWNERS:
                if o["id_number"] in text or o["phone"] in text:
                    raise _StepFailed("列表中出现了完整的身份证号或手机号")
            return text
        tl.step("查看业主（脱敏显示）", masked)

        def change_plate() -> str:
            li = s["owners"][1]
            a = app_()
            a.residents.change_plate(li.id, "沪B67890", "沪B67891", reason="业主换车", actor=actor)
            last = a.audit.recent(f"owner:{li.id}", 1)[-1]
            if last.action != "owner.change_plate":
                raise _StepFailed(f"审计日志最后一条是 {last.action}，不是 owner.change_plate")
            return f"{li.name}：沪B***90 → 沪B***91，审计记录第 {last.seq} 条"
        tl.step("通过审计调用更换车牌", change_plate)

        def reveal() -> str:
            zhang = s["owners"][0]
            a = app_()
            phone = a.residents.reveal(zhang.id, "phone", actor=actor, reason="联系业主挪车")
            last = a.audit.recent(f"owner:{zhang.id}", 1)[-1]
            if phone != _DEMO_OWNERS[0]["phone"] or last.action != "sensitive.reveal":
                raise _StepFailed("查看完整手机号没有得到正确的值或没有记入审计日志")
            return f"{zhang.name} 的完整手机号 {phone}（已记入审计日志第 {last.seq} 条）"
        tl.step("查看完整手机号（记入审计）", reveal)

        def announce() -> str:
            a = app_()
            pub = a.announcements.publish(title="地库消防检查",
                                          body="本周六 9:00–11:00 地库 B2 区暂停使用，请提前挪车。",
                                          actor=actor)
            current = a.announcements.current()
            if pub.id not in {x.id for x in current}:
                raise _StepFailed("刚发布的公告不在当前公告中")
            return f"“{pub.title}”已发布，当前公告 {len(current)} 条"
        tl.step("发布并列出公告", announce)

        def export() -> str:
            data = app_().residents.export_residents(actor=actor)
            text = json.dumps(data, ensure_ascii=False, indent=2)
            (folder / "export-masked.json").write_text(text, encoding="utf-8")
            for o in _DEMO_OWNERS + [_DEMO_VISITOR]:
                if o["id_number"] in text or o["phone"] in text:
                    raise _StepFailed("脱敏导出中出现了完整的身份证号或手机号")
            return (f"{len(data['owners'])} 位业主、{len(data['visitors'])} 位访客 → export-masked.json，"
                    f"身份证号如 {data['owners'][0]['id_number']}")
        tl.step("导出（脱敏）", export)

        def at_rest() -> str:
            raw = _raw_db_bytes(s["db"])
            plain = [v for o in _DEMO_OWNERS + [_DEMO_VISITOR]
                     for v in [o["id_number"], o["phone"], *o.get("plates", [o.get("plate")])] if v]
            found = [v for v in plain if v.encode("utf-8") in raw]
            if found:
                raise _StepFailed(f"数据库文件中出现明文：{', '.join(found)}")
            return f"数据库文件（.db/-wal/-shm，共 {len(raw)} 字节）中没有明文身份证号、手机号或车牌"
        tl.step("检查数据库文件已加密", at_rest)

        def purge() -> str:
            n = app_().residents.purge_visitors(actor=actor)
            return f"清理了 {n} 条超过保留期（{s['cfg'].privacy.visitor_retention_days} 天）的访客记录"
        tl.step("清理过期访客", purge)

        def verify_ok() -> str:
            result = app_().audit.verify()
            if not result.ok:
                raise _StepFailed(f"审计日志校验失败：{result.reason_zh}")
            s["audit_count"] = result.checked
            return f"审计日志完整（共 {result.checked} 条）"
        tl.step("校验审计日志（smartpark audit verify）", verify_ok)

        def refused() -> str:
            close_app()
            con = sqlite3.connect(s["db"])
            try:
                con.execute(f"UPDATE {_AUDIT_TABLE} SET actor = ? WHERE seq = 2", ("mallory",))
                con.commit()
            except sqlite3.DatabaseError as e:
                return f"被数据库拒绝（{e}）：审计日志只能追加"
            finally:
                con.close()
            return "数据库没有阻止修改（没有只追加触发器），下一步的校验仍会发现"
        tl.step("尝试直接改写一条审计记录", refused)

        def tamper() -> str:
            close_app()
            con = sqlite3.connect(s["db"])
            try:
                triggers = [r[0] for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?", (_AUDIT_TABLE,))]
                for name in triggers:
                    con.execute(f'DROP TRIGGER "{name}"')
                changed = con.execute(f"UPDATE {_AUDIT_TABLE} SET actor = ? WHERE seq = 2", ("mallory",)).rowcount
                con.commit()
            finally:
                con.close()
            if changed != 1:
                raise _StepFailed("没有找到第 2 条审计记录")
            return (f"删除触发器 {len(triggers)} 个，再执行 UPDATE {_AUDIT_TABLE} SET actor='mallory' WHERE seq=2")
        tl.step("模拟攻击者：绕过触发器篡改第 2 条审计记录", tamper)

        def verify_broken() -> str:
            result = app_().audit.verify()
            if result.ok or result.broken_seq != 2:
                raise _StepFailed(f"篡改没有被发现（ok={result.ok}, broken_seq={result.broken_seq}）")
            s["broken"] = result
            return f"发现篡改 → 第 {result.broken_seq} 条：{result.reason_zh}"
        tl.step("再次校验：找出被篡改的记录", verify_broken)
    finally:
        close_app()
        if keep is None:
            shutil.rmtree(folder, ignore_errors=True)

    total, passed = len(tl.results), tl.passed
    all_ok = passed == total
    lines = [
        f"步骤：{passed}/{total} 符合预期" + ("" if all_ok else f"（{total - passed} 步不符合）"),
        f"用时：{time.perf_counter() - started:.1f} 秒",
        f"审计记录：篡改前 {s.get('audit_count', '?')} 条，全部校验通过",
        "篡改检测：" + (f"第 {s['broken'].broken_seq} 条被改动，已准确指出" if "broken" in s else "未完成"),
        f"目录：{folder}（" + ("已保留" if keep is not None else "已删除") + "）",
    ]
    out.print(Panel(Text("\n".join(lines)), title="演示小结" + (" ✓" if all_ok else " ✗"),
                    border_style="green" if all_ok else "red", expand=False))
    if not all_ok:
        raise typer.Exit(EXIT_VALIDATION)


# -- serve ---------------------------------------------------------------------------------------
def _setup_logging(debug: bool) -> None:
    import logging

    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, stream=sys.stderr,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _frontend(a: App, name: str, module: str, factory: str) -> tuple[Any, str | None]:
    """The frontend plugin ``name``: as enabled in plugins.toml, else built anyway (and the second value says so).

    ``module``/``factory`` build it when the plugin has no entry point (a source checkout not installed)."""
    frontends = a.frontends
    if name in frontends:
        return frontends[name], None
    settings = a.config.plugins.settings(name)
    how = f"[plugins.{name}] 中的设置" if settings else "默认设置"
    how_en = f"the settings under [plugins.{name}]" if settings else "its default settings"
    plugins = a.plugins
    if name in plugins.available():
        config = plugins.validate_settings(name, settings)
        return plugins.build(name, config, a.container.context()), (
            f"plugins.toml 的 [plugins] enabled 中没有 {name}，已按{how}启动 / "
            f"{name} is not enabled in plugins.toml; started with {how_en}")
    plugin = importlib.import_module(module)
    try:
        config = plugin.Config.model_validate(settings)
    except Exception as e:  # noqa: BLE001 - pydantic's error, shown as a config error
        raise ConfigError(f"插件 {name} 的设置有误：{e}", f"plugin {name}: invalid settings: {e}") from None
    return getattr(plugin, factory)(config), (
        f"{name} 插件未通过入口点注册（请重新安装 smartpark），已按{how}直接启动 / "
        f"the {name} plugin has no entry point (reinstall smartpark); started directly with {how_en}")


@app.command("serve")
def serve_cmd(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(
        "--host", help="监听地址（覆盖 [plugins.service] host）/ address to listen on")] = None,
    port: Annotated[int | None, typer.Option(
        "--port", min=0, max=65535, help="监听端口（覆盖 [plugins.service] port）/ TCP port")] = None,
) -> None:
    """运行无界面服务：HTTP 接口、访客登记页、设备接入（SIGTERM/Ctrl-C 停止）/ run the headless service."""
    import signal

    st = _state(ctx)
    _setup_logging(st.debug)
    a = st.app
    frontend, note = _frontend(a, "service", "smartpark.adapters.service", "ServiceFrontend")
    if note:
        _note(note)
    stopped_by = frontend.run(a, host=host, port=port)
    if stopped_by == signal.SIGINT:
        raise typer.Exit(EXIT_INTERRUPTED)


# -- notifications (the outbox) --------------------------------------------------------------------
notifications_app = typer.Typer(help="通知消息（发件箱）/ notification messages (the outbox)", no_args_is_help=True)
app.add_typer(notifications_app, name="notifications")

_MESSAGE_STATES = ("pending", "sending", "sent", "retrying", "failed", "cancelled")


@notifications_app.command("list")
def notifications_list(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(
        "--state", help="只看此状态 / only this state: " + "|".join(_MESSAGE_STATES))] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="最多显示条数 / at most N")] = 50,
) -> None:
    """列出最近的通知消息（新的在前）/ list recent messages, newest first."""
    from .core.delivery import masked_address, state_zh

    if state is not None and state not in _MESSAGE_STATES:
        raise ValidationError(f"未知状态「{state}」，可选：{'、'.join(_MESSAGE_STATES)}",
                              f"unknown state {state!r}; one of {', '.join(_MESSAGE_STATES)}", field="state")
    st = _state(ctx)
    tz = st.app.timezone
    messages = st.app.outbox_worker.messages(state=state, limit=limit)
    if not messages:
        _out().print(_t("没有符合条件的通知消息"))
        return
    table = Table(title=f"通知消息 共 {len(messages)} 条", title_justify="left", header_style="bold")
    for name in ("编号", "时间", "类型", "渠道", "接收人", "状态", "次数", "服务商代码"):
        table.add_column(name, no_wrap=True)
    table.add_column("说明", overflow="fold", min_width=24)
    for m in messages:
        table.add_row(_t(m.id), _t(_when(m.updated_at or m.created_at, tz)), _t(m.kind), _t(m.channel),
                      _t(masked_address(m)), _t(state_zh(m.state)), _t(m.attempts), _t(m.vendor_code or "—"),
                      _t(m.detail or ""))
    _out().print(table)


@notifications_app.command("retry")
def notifications_retry(
    ctx: typer.Context,
    message_id: Annotated[str, typer.Argument(help="消息编号（notifications list 第一列）/ message id")],
) -> None:
    """重发一条发送失败或已取消的消息（记入审计日志）/ queue a failed or cancelled message again (audited)."""
    st = _state(ctx)
    m = st.app.outbox_worker.retry(message_id, actor=st.actor)
    _ok(f"消息 {m.id} 已重新排队，将由发送任务发出（已记入审计日志）")


@notifications_app.command("send")
def notifications_send(
    ctx: typer.Context,
    loop: Annotated[bool, typer.Option(
        "--loop", help="持续运行，每秒发送到期的消息（SIGTERM/Ctrl-C 停止）/ keep running")] = False,
    interval: Annotated[float, typer.Option(
        "--interval", min=0.05, max=60, help="--loop 时两轮之间的秒数 / seconds between passes")] = 1.0,
) -> None:
    """发送待发送的通知消息，直到没有到期的消息 / send queued messages until none is due (--loop: keep going)."""
    import signal
    import threading

    st = _state(ctx)
    _setup_logging(st.debug)
    worker = st.app.outbox_worker
    if not loop:
        sent = worker.run_until_idle()
        waiting = worker.pending()
        _ok(f"已发送 {sent} 条" + (f"；另有 {waiting} 条尚未到发送时间（等待重试、免打扰或发送中）" if waiting else ""))
        return
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    _note(f"通知发送任务已启动（渠道：{'、'.join(worker.channels) or '无'}），SIGTERM/Ctrl-C 停止 / "
          f"delivering notifications until stopped")
    while not stop.is_set():
        try:
            report = worker.run_once()
        except Exception:  # noqa: BLE001 - a failing pass (database busy, ...) must not end the loop
            import logging

            logging.getLogger(__name__).exception("outbox pass failed")
            report = None
        if report is None or report.worked == 0:
            stop.wait(interval)


# -- attendant API tokens --------------------------------------------------------------------------
token_app = typer.Typer(help="值班员接口令牌（/api/booth）/ attendant API tokens", no_args_is_help=True)
app.add_typer(token_app, name="token")


@token_app.command("create")
def token_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="令牌名称，如 booth-1（记入审计日志为 api:名称）/ token name")],
) -> None:
    """创建令牌（只显示一次；标准输出只有令牌本身）/ create a token (shown once, alone on stdout)."""
    from .adapters.service.auth import create_token

    st = _state(ctx)
    token = create_token(st.app.store, st.app.clock, name, actor=st.actor)
    _err().print(Text.assemble(("✓ ", "green"), f"已创建令牌 {name}：只显示这一次，请妥善保存；"
                               f"请求时使用请求头 Authorization: Bearer <令牌>"))
    typer.echo(token)


@token_app.command("list")
def token_list(ctx: typer.Context) -> None:
    """列出令牌（名称与创建时间）/ list tokens (names and creation times)."""
    from .adapters.service.auth import list_tokens

    st = _state(ctx)
    tokens = list_tokens(st.app.store)
    if not tokens:
        _out().print(_t("暂无令牌（smartpark token create NAME 创建）"))
        return
    table = Table(title=f"值班员接口令牌 共 {len(tokens)} 个", title_justify="left", header_style="bold")
    table.add_column("名称", no_wrap=True)
    table.add_column("创建时间", no_wrap=True)
    for t in tokens:
        table.add_row(_t(t.name), _t(_when(t.created_at, st.app.timezone)))
    _out().print(table)


@token_app.command("revoke")
def token_revoke(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="要吊销的令牌名称 / token name")],
) -> None:
    """吊销令牌（立即失效，记入审计日志）/ revoke a token (refused at once; audited)."""
    from .adapters.service.auth import revoke_token

    st = _state(ctx)
    revoke_token(st.app.store, st.app.clock, name, actor=st.actor)
    _ok(f"已吊销令牌 {name}（已记入审计日志）")


# -- device simulators ---------------------------------------------------------------------------
# -- payments, refunds, the daily payment report --------------------------------------------------
pay_app = typer.Typer(help="在线支付（微信支付、支付宝）/ online payments", no_args_is_help=True)
report_app = typer.Typer(help="报表 / reports", no_args_is_help=True)
app.add_typer(pay_app, name="pay")
app.add_typer(report_app, name="report")

def _money(fen: int) -> Any:
    from .core.values import Money

    return Money(fen)


def _yuan_to_money(text: str) -> Any:
    from .core.values import Money

    return Money.from_yuan(text)


_ATTEMPT_STATE_ZH = {"paying": "支付中", "paid": "已支付", "closed": "已关闭"}


def _print_qr(text: str) -> None:
    """The payment's QR code in the terminal (segno's text rendering), for a phone to scan."""
    try:
        import io

        import segno

        buffer = io.StringIO()
        segno.make(text, error="m").terminal(out=buffer, compact=True)
        _out().print(Text(buffer.getvalue()))
    except ImportError:  # segno not installed: the URL alone still works
        pass


def _payment_lines(v: Any, tz: tzinfo) -> None:
    out = _out()
    what = f"订单 {v.order_id}" if v.order_id else f"业主 {v.subject_id} 充值"
    out.print(Text.assemble(("商户订单号：", "bold"), v.out_trade_no))
    out.print(Text.assemble(("用途：", "bold"), what, "  ", ("渠道：", "bold"), v.channel, "  ",
                            ("金额：", "bold"), str(_money(v.amount_fen))))
    out.print(Text.assemble(("状态：", "bold"), _ATTEMPT_STATE_ZH.get(v.state, v.state),
                            f"（已退款 {_money(v.refunded_fen)}）" if v.refunded_fen else ""))
    if v.state == "paying":
        out.print(Text.assemble(("有效至：", "bold"), _when(v.expires_at, tz)))
    if v.paid_at:
        out.print(Text.assemble(("支付时间：", "bold"), _when(v.paid_at, tz), "  ", ("渠道流水号：", "bold"),
                                v.transaction_id or "—"))


@pay_app.command("order")
def pay_order_cmd(
    ctx: typer.Context,
    order_id: Annotated[str, typer.Argument(help="订单编号 / order id")],
    channel: Annotated[str, typer.Option("--channel", help="支付渠道 / channel: wechat|alipay")] = "wechat",
) -> None:
    """为订单生成支付二维码（新的商户订单号）/ start paying an order: prints the QR code to scan."""
    st = _state(ctx)
    v = st.app.payments.pay_order(order_id, channel, actor=st.actor)
    _print_qr(v.code_url)
    _out().print(Text.assemble(("二维码内容：", "bold"), v.code_url))
    _payment_lines(v, st.app.timezone)


@pay_app.command("topup")
def pay_topup_cmd(
    ctx: typer.Context,
    owner_id: Annotated[str, typer.Argument(help="业主编号 / owner id")],
    amount: Annotated[str, typer.Argument(help="充值金额（元，如 100 或 50.00）/ amount in yuan")],
    channel: Annotated[str, typer.Option("--channel", help="支付渠道 / channel: wechat|alipay")] = "wechat",
) -> None:
    """业主余额充值：生成支付二维码，支付成功后自动入账 / top up an owner's balance."""
    st = _state(ctx)
    v = st.app.payments.start_topup(owner_id, _yuan_to_money(amount).fen, channel, actor=st.actor)
    _print_qr(v.code_url)
    _out().print(Text.assemble(("二维码内容：", "bold"), v.code_url))
    _payment_lines(v, st.app.timezone)


@pay_app.command("status")
def pay_status_cmd(
    ctx: typer.Context,
    out_trade_no: Annotated[str, typer.Argument(help="商户订单号 / out_trade_no")],
) -> None:
    """查询一笔支付（支付中时向渠道核实）/ a payment's state (asks the channel while it is paying)."""
    st = _state(ctx)
    v = st.app.payments.status(out_trade_no)
    _payment_lines(v, st.app.timezone)
    for r in st.app.payments.refunds_for(out_trade_no):
        _out().print(Text.assemble(("退款：", "bold"), f"{r.out_refund_no} {_money(r.amount_fen)} {r.state.value} "
                                   f"{_when(r.created_at, st.app.timezone)} {r.reason}"))


@pay_app.command("reconcile")
def pay_reconcile_cmd(ctx: typer.Context) -> None:
    """立即对账：查询卡在支付中的订单、关闭过期订单、重发未完成的退款 / reconcile now (the service does it every 30 s)."""
    st = _state(ctx)
    s = st.app.payments.reconcile()
    _ok(f"已查询 {s.queried} 笔，入账 {s.applied} 笔，关闭 {s.closed} 笔，重发退款 {s.refunds_retried} 笔"
        + (f"，{s.errors} 笔查询失败" if s.errors else ""))
    if s.errors:
        raise typer.Exit(EXIT_CONFLICT)


@app.command("refund")
def refund_cmd(
    ctx: typer.Context,
    out_trade_no: Annotated[str, typer.Argument(help="商户订单号 / out_trade_no")],
    amount: Annotated[str, typer.Argument(help="退款金额（元）/ amount in yuan")],
    reason: Annotated[str, typer.Option("--reason", help=REASON_HELP)] = "",
    yes: Annotated[bool, typer.Option("--yes", "-y", help=YES_HELP)] = False,
) -> None:
    """退款（部分或全部，记入审计日志）/ refund part or all of a payment (audited)."""
    st = _state(ctx)
    fen = _yuan_to_money(amount).fen
    if not (reason or "").strip():
        raise ValidationError("请用 --reason 填写退款原因", "a reason is required (--reason)", field="reason")
    if not yes:
        _confirm(f"确认退款 {_money(fen)}（商户订单号 {out_trade_no}）？")
    r = st.app.payments.refund(out_trade_no, fen, reason=reason, actor=st.actor)
    state = {"succeeded": "退款成功", "processing": "退款处理中（渠道确认后完成）", "failed": "退款失败，请联系支付渠道"}
    _ok(f"退款单号 {r.out_refund_no}：{_money(r.amount_fen)}，{state.get(r.state.value, r.state.value)}（已记入审计日志）")
    if r.state.value == "failed":
        raise typer.Exit(EXIT_CONFLICT)


@report_app.command("payments")
def report_payments_cmd(
    ctx: typer.Context,
    day: Annotated[str, typer.Option("--date", help="日期（车场所在时区）YYYY-MM-DD，默认昨天 / the local day")] = "",
) -> None:
    """支付对账日报：本系统记录与支付渠道记录逐笔核对；有差异时退出码为 6 / daily payment report (exit 6 on mismatch)."""
    from datetime import date as _date
    from datetime import timedelta as _td

    st = _state(ctx)
    tz = st.app.timezone
    try:
        wanted = _date.fromisoformat(day) if day else (st.app.clock.now().astimezone(tz).date() - _td(days=1))
    except ValueError:
        raise ValidationError(f"日期「{day}」格式不正确，应为 YYYY-MM-DD", f"bad date {day!r}; use YYYY-MM-DD",
                              field="date") from None
    report = st.app.payments.report(wanted)
    table = Table(title=f"支付对账 {wanted.isoformat()}", title_justify="left", header_style="bold")
    for name in ("渠道", "本系统笔数", "本系统金额", "渠道笔数", "渠道金额", "退款笔数", "退款金额"):
        table.add_column(name, justify="left" if name == "渠道" else "right")
    for row in report.channels:
        table.add_row(_t(row.channel), _t(row.ours_count), _t(_money(row.ours_fen)), _t(row.theirs_count),
                      _t(_money(row.theirs_fen)), _t(row.refunds_count), _t(_money(row.refunds_fen)))
    _out().print(table)
    if report.ok:
        _ok("本系统记录与渠道记录一致")
        return
    mismatches = Table(title=f"差异 {len(report.mismatches)} 笔", title_justify="left", header_style="bold")
    for name in ("商户订单号", "渠道", "本系统", "渠道记录"):
        mismatches.add_column(name, no_wrap=True)
    for m in report.mismatches:
        mismatches.add_row(_t(m.out_trade_no), _t(m.channel), _t(m.ours), _t(m.theirs))
    _out().print(mismatches)
    print_error(f"有 {len(report.mismatches)} 笔与渠道记录不符，请核对", f"{len(report.mismatches)} mismatch(es)")
    raise typer.Exit(EXIT_INTEGRITY)


@app.command("gate-sim")
def gate_sim_cmd(
    host: Annotated[str, typer.Option("--host", help="监听地址 / address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="TCP 端口（0 自动选择）/ TCP port")] = 9100,
    lanes: Annotated[str, typer.Option("--lanes", help="车道，逗号分隔 / comma-separated lane ids")] = "in-1,out-1",
    move_time: Annotated[float, typer.Option("--move-time", min=0, help="抬杆/落杆用时（秒）/ arm travel time")] = 1.5,
    heartbeat: Annotated[float, typer.Option("--heartbeat", min=0.1, help="心跳间隔（秒）/ heartbeat interval")] = 5.0,
) -> None:
    """道闸控制器模拟器（智慧停车道闸协议 v1，Ctrl-C 停止）/ a barrier controller simulator over TCP."""
    from .adapters.gate_tcp.simulator import run_forever

    lane_ids = [lane.strip() for lane in lanes.split(",") if lane.strip()]
    if not lane_ids:
        raise ValidationError("请至少指定一个车道（--lanes in-1,out-1）", "--lanes needs at least one lane id",
                              field="lanes")
    try:
        code = run_forever(host, port, lane_ids, move_time_s=move_time, heartbeat_s=heartbeat)
    except (OSError, ValueError) as e:
        raise ValidationError(f"道闸模拟器无法启动：{e}", f"the gate simulator could not start: {e}") from None
    if code:
        raise typer.Exit(code)


def _camera_target(st: CliState, lane: str, camera: str | None) -> tuple[str, dict[str, Any], str]:
    """(camera id, MQTT relay settings, listening URL template) from plugins.toml when there is one."""
    from .config import load_config

    mqtt: dict[str, Any] = {"host": "127.0.0.1", "port": 1883, "topic": "smartpark/cameras/{camera}/events"}
    base, path = "http://127.0.0.1:8080", "/devices/hikvision/{camera}"
    cameras: list[dict[str, Any]] = []
    if st.config_file.exists():
        cfg = load_config(st.config_file)
        hik = cfg.plugins.settings("camera_hikvision")
        cameras = [c for c in hik.get("cameras", []) if isinstance(c, dict)]
        mqtt.update({k: v for k, v in (hik.get("mqtt") or {}).items() if k in ("host", "port", "topic")})
        path = hik.get("http_path", path)
        svc = cfg.plugins.settings("service")
        host = svc.get("host", "127.0.0.1")
        base = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{svc.get('port', 8080)}"
    if camera is None:
        found = [c.get("id") for c in cameras if c.get("lane") == lane]
        camera = str(found[0]) if found else f"cam-{lane}"
    return camera, mqtt, base + path


@app.command("camera-sim")
def camera_sim_cmd(
    ctx: typer.Context,
    plate: Annotated[str, typer.Option("--plate", help="车牌，如 京A12345 / the plate read")],
    lane: Annotated[str, typer.Option("--lane", help="车道（找出该车道的摄像机）/ lane whose camera reads")] = "in-1",
    mqtt: Annotated[bool, typer.Option("--mqtt", help="经 MQTT 转发主题发布 / publish on the MQTT relay topic")] = False,
    url: Annotated[str | None, typer.Option(
        "--url", help="HTTP 监听地址（默认取 plugins.toml 中的服务地址）/ listening URL to POST to")] = None,
    camera: Annotated[str | None, typer.Option("--camera", help="摄像机编号（默认按车道查找）/ camera id")] = None,
    broker: Annotated[str | None, typer.Option(
        "--broker", help="MQTT 服务器 HOST:PORT（默认取 plugins.toml）/ broker for --mqtt")] = None,
    color: Annotated[str | None, typer.Option("--color", help="车牌颜色 blue/yellow/green/white/black")] = None,
    confidence: Annotated[float, typer.Option("--confidence", min=0, max=1, help="置信度 0–1")] = 0.98,
) -> None:
    """摄像机模拟器：发送一条海康 ISAPI 车牌识别报文（HTTP 监听或 MQTT 转发）/ send one ANPR event."""
    from .adapters.camera_hikvision.simulator import CameraSimulator, describe
    from .core.values import Plate
    from .infra.broker import parse_address

    if mqtt and url:
        raise ValidationError("--mqtt 与 --url 只能选一个", "give either --mqtt or --url, not both", field="url")
    if color is not None and color not in ("blue", "yellow", "green", "white", "black"):
        raise ValidationError(f"未知的车牌颜色 {color}", f"unknown plate colour {color!r}", field="color")
    text = str(Plate.parse(plate))
    camera_id, relay, listen = _camera_target(_state(ctx), lane, camera)
    address = parse_address(broker) if broker else (str(relay["host"]), int(relay["port"]))
    sim = CameraSimulator(camera_id, url=url or listen, mqtt=address if mqtt else None, topic=str(relay["topic"]))
    try:
        sent = sim.send(text, via="mqtt" if mqtt else "http", color=color, confidence=confidence)
    except (OSError, TimeoutError) as e:  # broker or service not reachable
        where = f"MQTT {address[0]}:{address[1]}" if mqtt else (url or listen).replace("{camera}", camera_id)
        raise ValidationError(f"发送失败（{where}）：{e}", f"could not send to {where}: {e}") from None
    except Exception as e:  # noqa: BLE001 - httpx errors: the service is not there
        if type(e).__module__.startswith("httpx"):
            where = (url or listen).replace("{camera}", camera_id)
            raise ValidationError(f"发送失败（{where}）：{e}", f"could not post to {where}: {e}") from None
        raise
    finally:
        sim.close()
    _out().print(_t(describe(sent)))
    if sent.via == "http" and (sent.status or 500) >= 300:
        raise typer.Exit(EXIT_VALIDATION)


# -- the attendant booth ---------------------------------------------------------------------------


@app.command("ui")
def ui_cmd(
    ctx: typer.Context,
    fullscreen: Annotated[bool | None, typer.Option(
        "--fullscreen/--windowed",
        help="全屏或窗口（覆盖 plugins.toml 中 ui_tk 的 fullscreen）/ full screen or a window")] = None,
    devices: Annotated[bool | None, typer.Option(
        "--devices/--no-devices",
        help="同时启动设备接入（覆盖 plugins.toml 中 ui_tk 的 start_runtime）/ "
             "start the camera, gate and sensor adapters")] = None,
) -> None:
    """值班岗亭界面（Tk 窗口；关闭窗口或 SIGTERM 退出）/ the attendant booth window."""
    st = _state(ctx)
    _setup_logging(st.debug)
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY"):
        raise ConfigError("没有图形显示（DISPLAY 未设置），无法打开岗亭界面", "no display (DISPLAY is not set); "
                          "the booth needs a graphical session")
    a = st.app
    frontend, note = _frontend(a, "ui_tk", "smartpark.adapters.ui_tk", "BoothFrontend")
    if note:
        _note(note)
    changes = {k: v for k, v in (("fullscreen", fullscreen), ("start_runtime", devices)) if v is not None}
    if changes:
        frontend.config = frontend.config.model_copy(update=changes)
    runtime = None
    if frontend.config.start_runtime:
        from .adapters.service.runtime import Runtime  # the same device runtime as `smartpark serve`

        runtime = Runtime(a)
    # the booth's acts are recorded as booth:<os user> unless --actor named someone
    actor = st.actor if st.actor != _default_actor() else "booth:" + _default_actor().split(":", 1)[1]
    frontend.run(a, runtime=runtime, actor=actor)


# -- entry point -----------------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    """The console script ``smartpark`` (and ``python -m smartpark``)."""
    try:
        app(args=list(argv) if argv is not None else None, prog_name="smartpark")
    except KeyboardInterrupt:
        _err().print(Text("已中断", style="yellow"))
        sys.exit(EXIT_INTERRUPTED)


__all__ = ["app", "main", "exit_code_for", "EXIT_OK", "EXIT_VALIDATION", "EXIT_USAGE", "EXIT_CONFIG",
           "EXIT_NOT_FOUND", "EXIT_CONFLICT", "EXIT_INTEGRITY", "EXIT_INTERNAL", "EXIT_INTERRUPTED"]
