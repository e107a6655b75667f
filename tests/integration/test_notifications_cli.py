"""``smartpark notifications list|retry|send`` in-process (CliRunner) on the SQLite store and the SMS sandbox."""

from __future__ import annotations

import os
import tempfile
import unittest
from pathlib import Path

from typer.testing import CliRunner

from smartpark import cli
from smartpark.bootstrap import bootstrap
from smartpark.core.outbox import MessageState, OutboxMessage
from smartpark.testing.aliyun_sms_sandbox import AliyunSmsSandbox
from smartpark.testing.toml_writer import to_toml

SECRET_ENV = "SMARTPARK_TEST_CLI_SMS_SECRET"
ENV = {"SMARTPARK_CONFIG": None, "SMARTPARK_DATA_KEY": None, "FORCE_COLOR": None, "NO_COLOR": "1", "COLUMNS": "250"}


class NotificationsCliTest(unittest.TestCase):
    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="smartpark-notify-cli-")
        self.addCleanup(tmp.cleanup)
        self.dir = Path(tmp.name)
        self.sandbox = AliyunSmsSandbox().start()
        self.addCleanup(self.sandbox.stop)
        os.environ[SECRET_ENV] = self.sandbox.access_key_secret
        self.addCleanup(os.environ.pop, SECRET_ENV, None)
        self.config = self.dir / "plugins.toml"
        self.config.write_text(to_toml({
            "data_dir": "data",
            "notifications": {"quiet_hours": "", "rate_limit_per_hour": 0},
            "plugins": {
                "enabled": ["storage_sqlite", "sms_aliyun"],
                "sms_aliyun": {"access_key_id": self.sandbox.access_key_id, "access_key_secret": {"env": SECRET_ENV},
                               "sign_name": "测试小区", "endpoint": self.sandbox.endpoint, "protocol": "http",
                               "templates": {"entry_reminder": "SMS_465000001"}},
            },
        }), encoding="utf-8")
        self.runner = CliRunner()

    def cli(self, *args: str, code: int = 0) -> str:
        result = self.runner.invoke(cli.app, ["--config", str(self.config), "--actor", "test:cli", *args],
                                    env={**ENV, SECRET_ENV: self.sandbox.access_key_secret})
        self.assertEqual(code, result.exit_code, f"{args}: {result.output}\n{result.exception!r}")
        return result.output

    def queue(self, *phones: str, channel: str = "sms") -> list[str]:
        app = bootstrap(self.config)
        try:
            ids = []
            with app.store.unit_of_work() as uow:
                for i, phone in enumerate(phones):
                    m = OutboxMessage.create(dedupe_key=f"cli:{channel}:{i}", kind="entry_reminder",
                                             recipient_kind="owner", recipient_id=f"owner-{i}", channel=channel,
                                             address=phone, params={"plate": "京A12345"}, text="您的车辆已入场",
                                             at=app.clock.now())
                    uow.outbox.add(m)
                    ids.append(m.id)
            return ids
        finally:
            app.close()

    def state(self, message_id: str) -> MessageState:
        app = bootstrap(self.config)
        try:
            with app.store.unit_of_work() as uow:
                return uow.outbox.get(message_id).state
        finally:
            app.close()

    def test_send_list_and_retry(self) -> None:
        ok, bad, wechat = self.queue("13800138000", "13900000000") + self.queue("oUpF8uMuAJO_M2pxb1Q9zNjWeS6o",
                                                                                  channel="wechat")
        self.sandbox.set_number_rule("13900000000", "isv.MOBILE_NUMBER_ILLEGAL")
        out = self.cli("notifications", "send")
        self.assertIn("已发送 1 条", out)
        self.assertEqual(["13800138000"], [s.phone for s in self.sandbox.accepted])
        self.assertEqual(MessageState.SENT, self.state(ok))
        self.assertEqual(MessageState.FAILED, self.state(bad))
        self.assertEqual(MessageState.FAILED, self.state(wechat))  # no wechat notifier enabled

        listing = self.cli("notifications", "list", "--state", "failed")
        self.assertIn(bad, listing)
        self.assertIn(wechat, listing)
        self.assertNotIn(ok, listing)
        self.assertIn("isv.MOBILE_NUMBER_ILLEGAL", listing)
        self.assertIn("139****0000", listing)
        self.assertNotIn("13900000000", listing)
        self.assertIn("未启用「wechat」", listing)
        everything = self.cli("notifications", "list")
        self.assertIn("已发送", everything)
        self.assertIn("发送失败", everything)

        self.sandbox.clear_number_rules()
        self.assertIn("已重新排队", self.cli("notifications", "retry", bad))
        self.assertEqual(MessageState.PENDING, self.state(bad))
        self.assertIn("notification.retry", self.cli("audit", "log", "--subject", f"outbox:{bad}"))
        self.cli("notifications", "send")
        self.assertEqual(MessageState.SENT, self.state(bad))

    def test_retry_refuses_unknown_and_sent_messages(self) -> None:
        (ok,) = self.queue("13800138000")
        self.cli("notifications", "send")
        self.assertIn("只有发送失败或已取消的消息可以重发", self.cli("notifications", "retry", ok, code=5))
        self.cli("notifications", "retry", "0" * 32, code=4)
        self.cli("notifications", "list", "--state", "bogus", code=1)


if __name__ == "__main__":
    unittest.main()
