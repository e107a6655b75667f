"""The ``smartpark`` command, end to end on the real SQLite store.

Most tests drive the typer app in-process with ``CliRunner`` in a temporary folder
(``--config`` points at it); a few run the real console entry point as a subprocess
(``python -m smartpark``), as an integrator would.
"""

from __future__ import annotations

import base64
import json
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import typing
import unittest
from pathlib import Path
from unittest import mock

from typer.testing import CliRunner

from smartpark import cli
from smartpark.core.services import ResidentService

# Valid, made-up values (correct ID check characters).
ID_1, PHONE_1 = "110105198001011238", "13800138000"
ID_2, PHONE_2 = "310115198506152343", "13900139000"
ID_3, PHONE_3 = "440305199002033457", "13700137000"
ID_4, PHONE_4 = "110108197511114565", "13600136000"
BAD_ID = "110108197511114566"  # wrong check character
OWNER_ID = re.compile(r"编号 ([0-9a-f]{32})")

#: Environment for every run: no inherited config or key, no colours.
CLEAN_ENV: dict[str, str | None] = {"SMARTPARK_CONFIG": None, "SMARTPARK_DATA_KEY": None, "FORCE_COLOR": None,
                                    "NO_COLOR": "1", "COLUMNS": "200"}


def drop_audit_triggers_and_edit(db: Path, seq: int = 2) -> int:
    """What someone holding the database file can do: drop the append-only triggers and edit a row."""
    con = sqlite3.connect(db)
    try:
        for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit_log'"):
            con.execute(f'DROP TRIGGER "{name}"')
        changed = con.execute("UPDATE audit_log SET actor = 'x' WHERE seq = ?", (seq,)).rowcount
        con.commit()
        return changed
    finally:
        con.close()


def raw_db_bytes(folder: Path) -> bytes:
    files = [p for p in (folder / "data").iterdir() if p.name.endswith((".db", ".db-wal", ".db-shm"))]
    assert any(p.name.endswith(".db") for p in files), files
    return b"".join(p.read_bytes() for p in files)


class CliCase(unittest.TestCase):
    """A fresh folder with an initialised plugins.toml per test."""

    initialise = True

    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="smartpark-cli-")
        self.addCleanup(self._tmp.cleanup)
        self.dir = Path(self._tmp.name)
        self.config = self.dir / "plugins.toml"
        self.runner = CliRunner()
        if self.initialise:
            self.run_ok("init", str(self.dir))

    def run_cli(self, *args: str, input: str | None = None, env: dict[str, str | None] | None = None,
                config: Path | None = None) -> typing.Any:
        argv = ["--config", str(config or self.config), "--actor", "test:cli", *args]
        return self.runner.invoke(cli.app, argv, input=input, env={**CLEAN_ENV, **(env or {})})

    def run_ok(self, *args: str, **kw: typing.Any) -> typing.Any:
        result = self.run_cli(*args, **kw)
        self.assertEqual(result.exit_code, 0, f"{args}: {result.output}\n{result.exception!r}")
        return result

    def add_owner(self, name: str = "张伟", id_number: str = ID_1, phone: str = PHONE_1,
                  plates: tuple[str, ...] = ("京A12345",), **kw: typing.Any) -> str:
        args = ["owner", "add", "--name", name, "--id-number", id_number, "--phone", phone]
        for p in plates:
            args += ["--plate", p]
        result = self.run_ok(*args, **kw)
        match = OWNER_ID.search(result.output)
        assert match, result.output
        return match.group(1)


class FrontendFallbackTest(CliCase):
    def test_a_frontend_not_enabled_is_built_anyway_and_the_note_says_so(self) -> None:
        from smartpark.bootstrap import bootstrap

        with bootstrap(self.config) as app:
            for name, module, factory in (("service", "smartpark.adapters.service", "ServiceFrontend"),
                                          ("ui_tk", "smartpark.adapters.ui_tk", "BoothFrontend")):
                frontend, note = cli._frontend(app, name, module, factory)
                self.assertEqual(type(frontend).__name__, factory)
                self.assertIn(f"enabled 中没有 {name}，已按默认设置启动", note)
                self.assertIn(f"{name} is not enabled in plugins.toml", note)


class InitTest(CliCase):
    initialise = False

    def test_init_creates_config_key_and_database(self) -> None:
        result = self.run_ok("init", str(self.dir))
        self.assertEqual(self.config.read_text(encoding="utf-8"),
                         (Path(cli.__file__).parent / "resources" / "plugins.toml").read_text(encoding="utf-8"))
        key = self.dir / "data" / "smartpark.key"
        self.assertTrue(key.exists())
        self.assertEqual(key.stat().st_mode & 0o777, 0o600)
        self.assertTrue((self.dir / "data" / "smartpark.db").exists())
        self.assertIn("已创建数据密钥文件", result.output)
        self.assertIn("下一步", result.output)

    def test_init_refuses_to_overwrite_without_force(self) -> None:
        self.run_ok("init", str(self.dir))
        self.config.write_text(self.config.read_text(encoding="utf-8") + "\n# mine\n", encoding="utf-8")
        result = self.run_cli("init", str(self.dir))
        self.assertEqual(result.exit_code, cli.EXIT_CONFLICT, result.output)
        self.assertIn("已存在", result.output)
        self.assertIn("# mine", self.config.read_text(encoding="utf-8"))
        result = self.run_ok("init", str(self.dir), "--force")
        self.assertNotIn("# mine", self.config.read_text(encoding="utf-8"))
        self.assertIn("沿用已有的数据密钥文件", result.output)

    def test_init_with_key_from_environment_creates_no_key_file(self) -> None:
        key = base64.urlsafe_b64encode(os.urandom(32)).decode()
        result = self.run_ok("init", str(self.dir), env={"SMARTPARK_DATA_KEY": key})
        self.assertIn("SMARTPARK_DATA_KEY", result.output)
        self.assertFalse((self.dir / "data" / "smartpark.key").exists())

    def test_init_with_a_bad_key_is_a_configuration_error_and_leaves_no_config(self) -> None:
        result = self.run_cli("init", str(self.dir), env={"SMARTPARK_DATA_KEY": "not-a-key"})
        self.assertEqual(result.exit_code, cli.EXIT_CONFIG, result.output)
        self.assertIn("错误：SMARTPARK_DATA_KEY 中的密钥无效", result.stderr)
        self.assertFalse(self.config.exists())

    def test_config_may_name_the_folder(self) -> None:
        self.run_ok("init", str(self.dir))
        self.assertIn("暂无业主", self.run_ok("owner", "list", config=self.dir).output)

    def test_missing_config_is_a_configuration_error(self) -> None:
        result = self.run_cli("owner", "list")
        self.assertEqual(result.exit_code, cli.EXIT_CONFIG, result.output)
        self.assertIn("错误：找不到配置文件", result.output)
        self.assertIn("smartpark init", result.output)


class OwnerCommandsTest(CliCase):
    def test_add_show_list_masked(self) -> None:
        owner_id = self.add_owner(plates=("京A12345", "京AD12345"))
        for query in ("京A12345", PHONE_1, ID_1, owner_id, "张"):
            out = self.run_ok("owner", "show", query).output
            self.assertIn(owner_id, out, query)
            self.assertIn("110105********1238", out)
            self.assertIn("138****8000", out)
            self.assertIn("京A***45", out)
            self.assertNotIn(ID_1, out.replace("110105********1238", ""))
            self.assertNotIn(PHONE_1, out)
        out = self.run_ok("owner", "list").output
        self.assertIn("共 1 位", out)
        self.assertIn(owner_id, out)

    def test_notification_preferences_are_changed_audited_and_shown(self) -> None:
        owner_id = self.add_owner()
        out = self.run_ok("owner", "prefs", owner_id, "--no-lot-full-notice", "--channel", "sms").output
        self.assertIn("车库已满通知不接收，首选短信，微信未绑定", out)
        self.assertIn("不接收", self.run_ok("owner", "show", owner_id).output)
        out = self.run_ok("owner", "prefs", owner_id, "--lot-full-notice", "--wechat-openid",
                          "oUpF8uMuAJO_M2pxb1Q9zNjWeS7p").output
        self.assertIn("车库已满通知接收，首选短信，微信已绑定", out)
        self.assertIn("owner.preferences", self.run_ok("audit", "log", "--subject", f"owner:{owner_id}").output)
        nothing = self.run_cli("owner", "prefs", owner_id)
        self.assertEqual(nothing.exit_code, cli.EXIT_VALIDATION, nothing.output)
        self.assertIn("请至少指定一项", nothing.stderr)
        bad = self.run_cli("owner", "prefs", owner_id, "--channel", "email")
        self.assertNotEqual(bad.exit_code, 0)

    def test_show_unknown_is_not_found(self) -> None:
        result = self.run_cli("owner", "show", "京Z99999")
        self.assertEqual(result.exit_code, cli.EXIT_NOT_FOUND, result.output)
        self.assertIn("错误：没有找到", result.stderr)

    def test_bad_id_number_exits_1_in_chinese_and_saves_nothing(self) -> None:
        result = self.run_cli("owner", "add", "--name", "王强", "--id-number", BAD_ID, "--phone", PHONE_4,
                              "--plate", "京B54321")
        self.assertEqual(result.exit_code, cli.EXIT_VALIDATION, result.output)
        self.assertIn("错误：身份证号校验位错误", result.stderr)
        self.assertIn("check character", result.stderr)  # the English text too, for support
        self.assertNotIn("Traceback", result.output)
        self.assertIn("暂无业主", self.run_ok("owner", "list").output)

    def test_plate_taken_exits_5(self) -> None:
        self.add_owner()
        result = self.run_cli("owner", "add", "--name", "王强", "--id-number", ID_4, "--phone", PHONE_4,
                              "--plate", "京A12345")
        self.assertEqual(result.exit_code, cli.EXIT_CONFLICT, result.output)
        self.assertIn("已登记在其他业主名下", result.stderr)

    def test_usage_error_exits_2(self) -> None:
        result = self.run_cli("owner", "add", "--name", "王强")
        self.assertEqual(result.exit_code, cli.EXIT_USAGE, result.output)

    def test_plate_changes_phone_id_number_and_reveal_are_audited(self) -> None:
        owner_id = self.add_owner()
        self.run_ok("owner", "change-plate", owner_id, "京A12345", "京A12346", "--reason", "换车")
        self.run_ok("owner", "add-plate", owner_id, "沪B67890", "--reason", "第二辆车")
        self.run_ok("owner", "remove-plate", owner_id, "京A12346", "--reason", "卖车")
        self.run_ok("owner", "change-phone", owner_id, PHONE_2, "--reason", "换号")
        self.run_ok("owner", "change-id-number", owner_id, ID_2, "--reason", "录入错误")
        out = self.run_ok("owner", "reveal", owner_id, "--field", "phone", "--reason", "联系挪车").stdout
        self.assertEqual(out.strip(), PHONE_2)
        out = self.run_ok("owner", "reveal", owner_id, "--field", "id_number", "--reason", "核对").stdout
        self.assertEqual(out.strip(), ID_2)
        self.assertIn("沪B***90", self.run_ok("owner", "show", owner_id).output)
        log = self.run_ok("audit", "log", "--subject", f"owner:{owner_id}").output
        for action in ("owner.change_plate", "owner.add_plate", "owner.remove_plate", "owner.change_phone",
                       "owner.change_id_number", "sensitive.reveal"):
            self.assertIn(action, log)
        self.assertIn("test:cli", log)
        self.assertNotIn(PHONE_2, log)
        # a missing reason is refused by the parser
        self.assertEqual(self.run_cli("owner", "change-phone", owner_id, PHONE_1).exit_code, cli.EXIT_USAGE)
        self.assertIn("审计日志完整", self.run_ok("audit", "verify").output)

    def test_reveal_of_unknown_owner_is_not_found(self) -> None:
        result = self.run_cli("owner", "reveal", "0" * 32, "--field", "phone", "--reason", "x")
        self.assertEqual(result.exit_code, cli.EXIT_NOT_FOUND, result.output)

    def test_balance(self) -> None:
        owner_id = self.add_owner()
        out = self.run_ok("owner", "balance", owner_id).output
        self.assertIn("余额：¥0.00", out)
        self.assertIn("最近缴费：—", out)
        self.assertEqual(self.run_cli("owner", "balance", "0" * 32).exit_code, cli.EXIT_NOT_FOUND)
        # a top-up through the service (the CLI has no payment command) shows in the ledger
        from smartpark.bootstrap import bootstrap
        from smartpark.core.values import Money

        with mock.patch.dict(os.environ):
            for name in ("SMARTPARK_DATA_KEY", "SMARTPARK_CONFIG"):
                os.environ.pop(name, None)  # the key file this folder's init created
            with bootstrap(self.config) as app:
                app.balances.post(owner_id, Money(5000), kind="topup", ref="wx-0001", actor="test", note="微信充值")
        out = self.run_ok("owner", "balance", owner_id).output
        self.assertIn("余额：¥50.00", out)
        self.assertRegex(out, r"最近缴费：\d{4}-\d\d-\d\d \d\d:\d\d")
        self.assertIn("充值", out)
        self.assertIn("wx-0001", out)

    def test_delete_needs_confirmation(self) -> None:
        owner_id = self.add_owner()
        result = self.run_cli("owner", "delete", owner_id, "--reason", "搬走")  # no input at all
        self.assertEqual(result.exit_code, cli.EXIT_VALIDATION, result.output)
        self.assertIn("--yes", result.output)
        result = self.run_cli("owner", "delete", owner_id, "--reason", "搬走", input="n\n")
        self.assertEqual(result.exit_code, cli.EXIT_VALIDATION, result.output)
        self.assertIn(owner_id, self.run_ok("owner", "list").output)
        self.run_ok("owner", "delete", owner_id, "--reason", "搬走", input="y\n")
        self.assertIn("暂无业主", self.run_ok("owner", "list").output)
        owner_id = self.add_owner()
        self.run_ok("owner", "delete", owner_id, "--reason", "搬走", "--yes")
        self.assertIn("暂无业主", self.run_ok("owner", "list").output)


class VisitorCommandsTest(CliCase):
    VISITOR = ("--name", "赵敏", "--id-number", ID_3, "--phone", PHONE_3, "--plate", "粤B12345")

    def test_consent_is_required(self) -> None:
        result = self.run_cli("visitor", "add", *self.VISITOR)
        self.assertEqual(result.exit_code, cli.EXIT_VALIDATION, result.output)
        self.assertIn("请阅读并同意《个人信息处理说明》", result.stderr)
        self.assertIn("暂无访客", self.run_ok("visitor", "list").output)

    def test_add_show_list_delete(self) -> None:
        out = self.run_ok("visitor", "add", *self.VISITOR, "--consent").output
        visitor_id = OWNER_ID.search(out).group(1)
        for query in ("粤B12345", PHONE_3, visitor_id):
            out = self.run_ok("visitor", "show", query).output
            self.assertIn("粤B***45", out)
            self.assertIn("137****7000", out)
            self.assertNotIn(ID_3, out)
        self.assertIn(visitor_id, self.run_ok("visitor", "list").output)
        again = self.run_ok("visitor", "add", *self.VISITOR, "--consent").output
        self.assertIn("续期", again)
        self.assertIn(visitor_id, again)
        self.assertEqual(self.run_cli("visitor", "delete", visitor_id, "--reason", "离开").exit_code,
                         cli.EXIT_VALIDATION)
        self.run_ok("visitor", "delete", visitor_id, "--reason", "离开", "--yes")
        self.assertIn("暂无访客", self.run_ok("visitor", "list").output)
        self.assertEqual(self.run_cli("visitor", "show", "粤B12345").exit_code, cli.EXIT_NOT_FOUND)

    def test_purge_reports_a_count(self) -> None:
        self.run_ok("visitor", "add", *self.VISITOR, "--consent")
        out = self.run_ok("purge").output
        self.assertIn("共清理 0 条", out)


class AnnouncementCommandsTest(CliCase):
    def test_publish_list_delete(self) -> None:
        out = self.run_ok("announce", "publish", "--title", "地库消防检查", "--body", "周六上午 B2 区暂停使用",
                          "--until", "2099-01-01 08:00").output
        ann_id = OWNER_ID.search(out).group(1)
        self.assertIn("至 2099-01-01 08:00", out)  # a naive time is in the lot's zone and shown in it
        self.run_ok("announce", "publish", "--title", "将来的公告", "--body", "内容",
                    "--from", "2098-01-01T00:00+08:00")
        current = self.run_ok("announce", "list").output
        self.assertIn("地库消防检查", current)
        self.assertNotIn("将来的公告", current)
        everything = self.run_ok("announce", "list", "--all").output
        self.assertIn("将来的公告", everything)
        self.assertIn("未生效", everything)
        self.run_ok("announce", "delete", ann_id)
        self.assertIn("当前没有生效的公告", self.run_ok("announce", "list").output)
        self.assertEqual(self.run_cli("announce", "delete", ann_id).exit_code, cli.EXIT_NOT_FOUND)

    def test_bad_time_is_a_validation_error(self) -> None:
        result = self.run_cli("announce", "publish", "--title", "t", "--body", "b", "--from", "明天")
        self.assertEqual(result.exit_code, cli.EXIT_VALIDATION, result.output)
        self.assertIn("格式不正确", result.stderr)


class ExportImportTest(CliCase):
    def populate(self) -> None:
        self.add_owner(plates=("京A12345", "京AD12345"))
        self.add_owner("李娜", ID_2, PHONE_2, ("沪B67890",))
        self.run_ok("visitor", "add", "--name", "赵敏", "--id-number", ID_3, "--phone", PHONE_3, "--plate", "粤B12345",
                    "--consent")

    def test_export_is_masked_by_default(self) -> None:
        self.populate()
        data = json.loads(self.run_ok("export").stdout)
        text = json.dumps(data, ensure_ascii=False)
        self.assertTrue(data["masked"])
        self.assertEqual(len(data["owners"]), 2)
        for full in (ID_1, ID_2, ID_3, PHONE_1, PHONE_2, PHONE_3, "京A12345", "粤B12345"):
            self.assertNotIn(full, text)
        self.assertIn("110105********1238", text)
        out_file = self.dir / "masked.json"
        self.run_ok("export", "-o", str(out_file))
        raw = out_file.read_text(encoding="utf-8")
        self.assertIn("张伟", raw)  # UTF-8, not \\u escapes
        self.assertNotIn(ID_1, raw)
        # a masked export cannot be imported
        result = self.run_cli("import", str(out_file))
        self.assertNotEqual(result.exit_code, 0)
        self.assertIn("脱敏", result.output)

    def test_sensitive_export_needs_a_reason(self) -> None:
        self.populate()
        self.assertEqual(self.run_cli("export", "--include-sensitive").exit_code, cli.EXIT_USAGE)

    def test_sensitive_export_round_trips_into_a_fresh_folder(self) -> None:
        self.populate()
        dump = self.dir / "full.json"
        self.run_ok("export", "-o", str(dump), "--include-sensitive", "--reason", "迁移到新服务器")
        self.assertEqual(dump.stat().st_mode & 0o777, 0o600)
        self.assertIn(ID_1, dump.read_text(encoding="utf-8"))
        self.assertIn("residents.export_sensitive", self.run_ok("audit", "log").output)

        with tempfile.TemporaryDirectory() as other:
            other_cfg = Path(other) / "plugins.toml"
            self.run_ok("init", other)
            out = self.run_ok("import", str(dump), config=other_cfg).output
            self.assertIn("已导入 2 位业主、1 位访客", out)
            again = json.loads(
                self.run_ok("export", "--include-sensitive", "--reason", "核对", config=other_cfg).stdout)
            before = json.loads(dump.read_text(encoding="utf-8"))
            for key in ("owners", "visitors"):
                strip = [{k: v for k, v in r.items() if k != "valid_until"} for r in before[key]]
                self.assertEqual(strip, [{k: v for k, v in r.items() if k != "valid_until"} for r in again[key]])
            # importing the same file again clashes with what is there: refused, nothing written
            result = self.run_cli("import", str(dump), config=other_cfg)
            self.assertNotEqual(result.exit_code, 0)
            self.assertIn("共 2 位", self.run_ok("owner", "list", config=other_cfg).output)

    def test_import_with_a_bad_third_record_names_it_and_writes_nothing(self) -> None:
        self.populate()
        dump = self.dir / "full.json"
        self.run_ok("export", "-o", str(dump), "--include-sensitive", "--reason", "迁移")
        data = json.loads(dump.read_text(encoding="utf-8"))
        data["visitors"][0]["id_number"] = BAD_ID  # record 3: owners first, then visitors
        dump.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
        with tempfile.TemporaryDirectory() as other:
            other_cfg = Path(other) / "plugins.toml"
            self.run_ok("init", other)
            result = self.run_cli("import", str(dump), config=other_cfg)
            self.assertEqual(result.exit_code, cli.EXIT_VALIDATION, result.output)
            self.assertIn("第 3 条", result.output)
            self.assertIn("身份证号校验位错误", result.output)
            self.assertIn("未写入任何数据", result.output)
            self.assertIn("暂无业主", self.run_ok("owner", "list", config=other_cfg).output)
            self.assertIn("暂无访客", self.run_ok("visitor", "list", config=other_cfg).output)

    def test_import_of_a_file_that_is_not_json(self) -> None:
        bad = self.dir / "bad.json"
        bad.write_text("{not json", encoding="utf-8")
        result = self.run_cli("import", str(bad))
        self.assertEqual(result.exit_code, cli.EXIT_VALIDATION, result.output)
        self.assertIn("不是有效的 JSON", result.stderr)
        self.assertEqual(self.run_cli("import", str(self.dir / "missing.json")).exit_code, cli.EXIT_NOT_FOUND)


class AuditCommandsTest(CliCase):
    def test_verify_finds_an_edited_record(self) -> None:
        self.add_owner()
        self.add_owner("李娜", ID_2, PHONE_2, ("沪B67890",))
        self.assertIn("审计日志完整（共 2 条）", self.run_ok("audit", "verify").output)
        self.assertEqual(drop_audit_triggers_and_edit(self.dir / "data" / "smartpark.db"), 1)
        result = self.run_cli("audit", "verify")
        self.assertEqual(result.exit_code, cli.EXIT_INTEGRITY, result.output)
        self.assertIn("第 2 条", result.stderr)
        self.assertIn("被修改", result.stderr)


class ConfigErrorsTest(CliCase):
    def test_unknown_plugin_lists_the_available_names(self) -> None:
        text = self.config.read_text(encoding="utf-8").replace(
            'enabled = ["storage_sqlite"]', 'enabled = ["storage_sqlite", "no_such_plugin"]')
        self.config.write_text(text, encoding="utf-8")
        for args in (("owner", "list"), ("plugins",)):
            result = self.run_cli(*args)
            self.assertEqual(result.exit_code, cli.EXIT_CONFIG, result.output)
            self.assertIn("未知的插件：no_such_plugin", result.stderr)
            self.assertIn("storage_sqlite", result.stderr)

    def test_bad_setting_names_the_plugin_and_key(self) -> None:
        text = self.config.read_text(encoding="utf-8").replace(
            'path = "smartpark.db"', 'path = "smartpark.db"\nfoo = 1')
        self.config.write_text(text, encoding="utf-8")
        result = self.run_cli("owner", "list")
        self.assertEqual(result.exit_code, cli.EXIT_CONFIG, result.output)
        self.assertIn("[plugins.storage_sqlite] foo", result.stderr)

    def test_literal_secret_in_settings_is_refused(self) -> None:
        # sensors_mqtt's broker password is a Secret setting: only { env = "NAME" } is accepted.
        name, key = "sensors_mqtt", "password"
        text = self.config.read_text(encoding="utf-8").replace(
            'enabled = ["storage_sqlite"]', f'enabled = ["storage_sqlite", "{name}"]')
        text += f'\n[plugins.{name}]\n{key} = "literal-secret-value"\n'
        self.config.write_text(text, encoding="utf-8")
        result = self.run_cli("owner", "list")
        self.assertEqual(result.exit_code, cli.EXIT_CONFIG, result.output)
        self.assertIn("never written in plugins.toml", result.stderr)
        self.assertNotIn("literal-secret-value", self.run_cli("plugins").output)


class PluginsCommandTest(CliCase):
    def test_lists_storage_sqlite_as_enabled(self) -> None:
        out = self.run_ok("plugins").output
        row = next(line for line in out.splitlines() if "storage_sqlite" in line)
        self.assertIn("✓", row)
        self.assertIn("存储", row)
        self.assertIn("path = smartpark.db", row)
        self.assertIn("已启用 1 个", out)

    def test_lists_plugins_that_failed_to_load(self) -> None:
        from importlib.metadata import EntryPoint

        from smartpark import plugins as plugins_module

        real = plugins_module.entry_points
        broken = EntryPoint(name="broken_plugin", value="smartpark_no_such_module_for_tests", group="smartpark")
        with mock.patch.object(plugins_module, "entry_points",
                               side_effect=lambda group: [*real(group=group), broken]):
            out = self.run_ok("plugins").output
        row = next(line for line in out.splitlines() if "broken_plugin" in line)
        self.assertIn("加载失败", row)
        self.assertIn("ModuleNotFoundError", row)
        self.assertIn("加载失败 1 个", out)

    def test_works_without_a_config_file(self) -> None:
        out = self.run_ok("plugins", config=self.dir / "nowhere" / "plugins.toml").output
        self.assertIn("没有启用任何插件", out)
        row = next(line for line in out.splitlines() if "storage_sqlite" in line)
        self.assertNotIn("✓", row)


class ErrorHandlingTest(CliCase):
    def test_unexpected_errors_show_a_traceback_only_with_debug(self) -> None:
        with mock.patch.object(ResidentService, "list_owners", side_effect=RuntimeError("boom")):
            result = self.run_cli("owner", "list")
            self.assertEqual(result.exit_code, cli.EXIT_INTERNAL, result.output)
            self.assertIn("内部错误：RuntimeError: boom", result.stderr)
            self.assertNotIn("Traceback", result.output)
            result = self.runner.invoke(cli.app, ["--debug", "--config", str(self.config), "owner", "list"],
                                        env=CLEAN_ENV)
            self.assertEqual(result.exit_code, cli.EXIT_INTERNAL, result.output)
            self.assertIn("Traceback", result.stderr)

    def test_interrupt_exits_130(self) -> None:
        with mock.patch.object(ResidentService, "list_owners", side_effect=KeyboardInterrupt):
            result = self.run_cli("owner", "list")
        self.assertEqual(result.exit_code, cli.EXIT_INTERRUPTED, result.output)


class DemoTest(unittest.TestCase):
    def test_demo_exits_0_with_its_summary(self) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            keep = Path(tmp) / "demo"
            result = CliRunner().invoke(cli.app, ["demo", "--records", "--keep", str(keep)], env=CLEAN_ENV)
            self.assertEqual(result.exit_code, 0, result.output)
            self.assertIn("演示小结", result.output)
            self.assertRegex(result.output, r"步骤：(\d+)/\1 符合预期")
            self.assertIn("第 2 条", result.output)
            self.assertNotIn("✗", result.output)
            self.assertTrue((keep / "plugins.toml").exists())


class ConsoleScriptTest(unittest.TestCase):
    """The real entry point in a subprocess, in an empty folder (the issue's "Done when")."""

    def setUp(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="smartpark-cli-proc-")
        self.addCleanup(self._tmp.cleanup)
        self.dir = Path(self._tmp.name)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SMARTPARK_")}
        self.env.update({"NO_COLOR": "1", "COLUMNS": "200", "PYTHONIOENCODING": "utf-8"})

    def smartpark(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "smartpark", *args], cwd=self.dir, env=self.env,
                              capture_output=True, text=True, encoding="utf-8", timeout=60, stdin=subprocess.DEVNULL)

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self.smartpark(*args)
        self.assertEqual(proc.returncode, 0, f"{args}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def test_init_add_show_and_nothing_plain_on_disk(self) -> None:
        self.ok("init")
        self.ok("owner", "add", "--name", "张伟", "--id-number", ID_1, "--phone", PHONE_1,
                "--plate", "京A12345", "--plate", "京AD12345")
        shown = self.ok("owner", "show", "京A12345").stdout
        self.assertIn("张伟", shown)
        self.assertIn("110105********1238", shown)
        raw = raw_db_bytes(self.dir)
        for plain in (ID_1, PHONE_1, "京A12345", "京AD12345"):
            self.assertNotIn(plain.encode("utf-8"), raw, plain)

    def test_audit_verify_then_tamper_exits_6_naming_record_2(self) -> None:
        self.ok("init")
        self.ok("owner", "add", "--name", "张伟", "--id-number", ID_1, "--phone", PHONE_1, "--plate", "京A12345")
        self.ok("owner", "add", "--name", "李娜", "--id-number", ID_2, "--phone", PHONE_2, "--plate", "沪B67890")
        self.assertIn("审计日志完整（共 2 条）", self.ok("audit", "verify").stdout)
        self.assertEqual(drop_audit_triggers_and_edit(self.dir / "data" / "smartpark.db", seq=2), 1)
        proc = self.smartpark("audit", "verify")
        self.assertEqual(proc.returncode, 6, proc.stdout + proc.stderr)
        self.assertIn("第 2 条", proc.stderr)
        self.assertIn("record 2", proc.stderr)
        self.assertNotIn("Traceback", proc.stderr)


if __name__ == "__main__":
    unittest.main()
