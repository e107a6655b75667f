"""A crash between "payment callback received" and "gate opened" loses nothing.

Everything is real: `smartpark serve` as a separate process (SQLite, gate_tcp, camera_hikvision in listening
mode, pay_wechat on the real wechatpayv3 SDK), the TCP gate simulator, and the loopback WeChat Pay sandbox that
signs its notification and POSTs it to the service's public notify URL.

1. A visitor is held at the exit for payment; the order is paid by WeChat Pay QR in the sandbox.
2. The gate controller stops answering (the simulator swallows every request), so after the service committed
   the payment it hangs on the gate command -- and is killed with ``kill -9`` right there.
3. After the restart: the order is PAID once, one attempt PAID, WeChat's resend of the notification is absorbed,
   and the next read of the plate at the exit opens the gate. No second charge, no refund.
4. The CLI's daily report agrees with the sandbox (exit 0); a payment the sandbox took but we never heard of
   makes it fail (exit 6). A partial refund through the CLI goes through the SDK.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from smartpark.adapters.gate_tcp.simulator import GateSimulator
from smartpark.bootstrap import bootstrap
from smartpark.core.parking import OrderState
from smartpark.core.payments import AttemptState
from smartpark.testing.harness import anpr_alert, free_port, wait_for
from smartpark.testing.samples import sample_id_number, sample_phone
from smartpark.testing.toml_writer import to_toml
from smartpark.testing.wechatpay_sandbox import WeChatPaySandbox

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hikvision"
PLATE = "沪D20001"
KEY_ENV = "SMARTPARK_TEST_WECHATPAY_KEY"


class PaidLot:
    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="smartpark-paycrash-")
        self.root = Path(self.dir.name)
        self.wechat = WeChatPaySandbox(self.root / "wechatpay").start()
        self.sim = GateSimulator(lanes=("in-1", "out-1"), heartbeat_s=0.3, move_time_s=0.01).start()
        self.http_port = free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "SMARTPARK_CONFIG": str(self.root / "plugins.toml"),
                    KEY_ENV: self.wechat.apiv3_key}
        for name in ("SMARTPARK_DATA_KEY", "SMARTPARK_DATA_INDEX_KID"):
            self.env.pop(name, None)
        os.environ[KEY_ENV] = self.wechat.apiv3_key  # for the in-process bootstraps that read the records
        config = {
            "data_dir": "data",
            "lot": {"name": "支付崩溃测试小区", "capacity": 50, "timezone": "Asia/Shanghai",
                    "lanes": [{"id": "in-1", "name": "入口", "direction": "in"},
                              {"id": "out-1", "name": "出口", "direction": "out"}]},
            "gate": {"repeat_window_seconds": 2, "public_url": self.url},  # a paid car: the grace window
            "tariff": {"free_minutes": 0, "unit_minutes": 60, "unit_fee": 500},
            "plugins": {
                "enabled": ["storage_sqlite", "gate_tcp", "camera_hikvision", "pay_wechat", "service"],
                "service": {"host": "127.0.0.1", "port": self.http_port},
                "gate_tcp": {"controllers": [{"id": "sim", "host": "127.0.0.1", "port": self.sim.port,
                                              "lanes": ["in-1", "out-1"]}],
                             "open_deadline_s": 60.0, "reply_timeout_s": 0.5, "heartbeat_s": 0.3},
                "camera_hikvision": {"cameras": [{"id": "cam-in", "lane": "in-1"}, {"id": "cam-out", "lane": "out-1"}],
                                     "save_pictures": False, "offline_after_seconds": 0, "dedupe_seconds": 0},
                "pay_wechat": self.wechat.plugin_settings(api_v3_key_env=KEY_ENV),
            },
        }
        (self.root / "plugins.toml").write_text(to_toml(config), encoding="utf-8")
        self.proc: subprocess.Popen | None = None
        self.log = self.root / "service.log"
        app = self.app()
        try:
            app.residents.register_visitor(name="访客", id_number=str(sample_id_number(21, area="310101")),
                                           phone="13900000021", plate=PLATE, consent=True, actor="test")
            self.owner_id = app.residents.register_owner(name="业主", id_number=str(sample_id_number(22)),
                                                         phone=str(sample_phone(22)), plates=["京A22222"],
                                                         actor="test").id
        finally:
            app.close()

    def app(self):
        return bootstrap(self.root / "plugins.toml")

    # -- the service process ------------------------------------------------------------------------------
    def start(self) -> None:
        out = self.log.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "smartpark", "serve"], cwd=self.root, env=self.env,
                                     stdout=out, stderr=subprocess.STDOUT)
        wait_for(self.healthy, 60, f"the service to answer /healthz (log: {self.log})")

    def healthy(self) -> bool:
        if self.proc and self.proc.poll() is not None:
            raise AssertionError(f"the service exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=1)
            conn.request("GET", "/healthz")
            return conn.getresponse().status in (200, 503)
        except OSError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def close(self) -> None:
        try:
            if self.proc and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        finally:
            os.environ.pop(KEY_ENV, None)
            self.sim.stop()
            self.wechat.stop()
            self.dir.cleanup()

    def camera(self, camera: str, event_id: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        conn.request("POST", f"/devices/hikvision/{camera}", body=alert(PLATE, event_id),
                     headers={"Content-Type": "application/xml"})
        return conn.getresponse().status

    def opens(self, lane: str) -> int:
        return len(self.sim.executed("open", lane))

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "smartpark", *args], cwd=self.root, env=self.env,
                              capture_output=True, text=True, timeout=120)


class PaymentCrashTest(unittest.TestCase):
    def test_kill_9_between_callback_and_gate_loses_nothing(self) -> None:
        lot = PaidLot()
        self.addCleanup(lot.close)
        lot.start()
        self.assertEqual(lot.camera("cam-in", "ev-in"), 200)
        wait_for(lambda: lot.opens("in-1") == 1, 10, "the entry to open")
        self.assertEqual(lot.camera("cam-out", "ev-out-1"), 200)
        app = lot.app()
        try:
            held = app.parking.recent_decisions("out-1", 1)[0]
            self.assertEqual(held.reason, "payment_required")
            order_id = held.order_id
            view = app.payments.pay_order(order_id, "wechat", actor="booth:test")  # the QR at the exit
        finally:
            app.close()
        self.assertTrue(view.code_url.startswith("weixin://wxpay/"), view.code_url)
        no = view.out_trade_no

        # the controller stops answering: every request is swallowed
        lot.sim.drop_next(1_000_000)
        received = len(lot.sim.received)
        delivery = lot.wechat.pay_and_notify(no)  # the payer pays; WeChat notifies the service
        self.assertEqual((delivery.status, json.loads(delivery.body)), (200, {"code": "SUCCESS"}),
                         lot.log.read_text()[-3000:])
        wait_for(lambda: any(m.get("op") == "open" and m.get("lane") == "out-1"
                             for m in lot.sim.received[received:]), 10, "the service to send the open command")
        lot.kill9()  # ... and dies while waiting for the barrier
        self.assertEqual(lot.opens("out-1"), 0)

        lot.sim.drop_next(0)  # the controller is back
        app = lot.app()
        try:
            with app.store.unit_of_work() as uow:
                order = uow.orders.get(order_id)
                attempt = uow.payments.by_out_trade_no(no)
                self.assertEqual(order.state, OrderState.PAID)  # committed before the gate command
                self.assertEqual(attempt.state, AttemptState.PAID)
                self.assertIsNone(uow.sessions.open_by_plate(order.plate))
        finally:
            app.close()

        time.sleep(2.5)  # longer than the repeat window: only the paid grace window lets the car out now
        lot.start()
        # WeChat did not get its answer in time on some attempt: it resends the same notification -> absorbed
        headers, body = lot.wechat.notification(no)
        self.assertEqual(lot.wechat.deliver(headers, body, lot.url + "/pay/wechat/notify").status, 200)
        # the driver is still at the barrier; the camera reads the plate again -> it opens
        self.assertEqual(lot.camera("cam-out", "ev-out-2"), 200)
        wait_for(lambda: lot.opens("out-1") == 1, 15, "the exit to open after the restart")

        app = lot.app()
        try:
            d = app.parking.recent_decisions("out-1", 1)[0]
            self.assertEqual((d.outcome.value, d.reason), ("open", "repeat_read"))
            with app.store.unit_of_work() as uow:
                orders = uow.orders.for_session(order.session_id)
                attempts = uow.payments.for_subject(order_id)
                paid_audit = [e for e in uow.audit.for_subject(f"payment:{no}") if e.action == "payment.paid"]
                self.assertEqual(uow.payments.refunds_for(no), [])
            self.assertEqual([(o.state, o.amount_fen) for o in orders], [(OrderState.PAID, 500)])
            self.assertEqual([(a.state, a.refunded_fen) for a in attempts], [(AttemptState.PAID, 0)])
            self.assertEqual(len(paid_audit), 1)
            self.assertEqual(app.parking.occupancy().occupied, 0)
        finally:
            app.close()
        self.assertEqual(lot.wechat.orders(), [no])  # one charge at WeChat Pay

        # the daily report agrees with the sandbox
        today = datetime.now(ZoneInfo("Asia/Shanghai")).date().isoformat()
        r = lot.cli("report", "payments", "--date", today)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("一致", r.stdout)
        self.assertIn("wechat", r.stdout)

        # a partial refund through the CLI (the SDK asks the sandbox; WeChat answers PROCESSING)
        r = lot.cli("--actor", "admin", "refund", no, "1.00", "--reason", "测试退款", "--yes")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("退款单号", r.stdout)

        r = lot.cli("pay", "status", no)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("已支付", r.stdout)
        self.assertIn("已退款 ¥1.00", r.stdout)
        r = lot.cli("pay", "order", order_id, "--channel", "wechat")  # paying twice for one stay: refused
        self.assertEqual(r.returncode, 5, r.stdout + r.stderr)
        self.assertIn("已支付", r.stderr)

        # a top-up (QR printed by the CLI) paid at WeChat whose notification never arrived: the report lists it
        r = lot.cli("pay", "topup", lot.owner_id, "20", "--channel", "wechat")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn("weixin://wxpay/", r.stdout)
        lost_no = re.search(r"商户订单号：(\S+)", r.stdout).group(1)
        app = lot.app()
        try:
            lost = app.payments.status(lost_no)
        finally:
            app.close()
        self.assertEqual((lost.amount_fen, lost.purpose), (2000, "topup"))
        lot.wechat.pay(lost.out_trade_no)
        r = lot.cli("report", "payments", "--date", today)
        self.assertEqual(r.returncode, 6, r.stdout + r.stderr)
        self.assertIn(lost.out_trade_no, r.stdout)
        # reconciliation (what the service runs every 30 s) finds it once it is a minute old; run it by hand now
        r = lot.cli("pay", "reconcile")
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)


if __name__ == "__main__":
    unittest.main()


def alert(plate: str, event_id: str) -> bytes:
    return anpr_alert(FIXTURES / "anpr_1.xml", plate, event_id)
