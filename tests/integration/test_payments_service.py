"""Payments through the real headless service: real SDKs (wechatpayv3, python-alipay-sdk) against the loopback
sandboxes, signatures checked both ways, callbacks POSTed over HTTP to the service's notify routes.

The lot is real too: SQLite in a temporary folder, ``gate_tcp`` against its TCP simulator, ``camera_hikvision``
in listening mode (a plate read is a POST of an ISAPI alert). Time is the system clock (WeChat refuses
notifications signed far from our clock), so the tariff charges from the first minute.

Each refused callback is checked to change nothing: order and attempt unchanged (state and version), no gate
command. The answers are the ones docs/payments.md documents: not genuine -> 400 (WeChat) / ``fail`` (Alipay);
genuine but not matching our order (wrong amount, unknown order) -> 500; replay -> 200, nothing changes.
"""

from __future__ import annotations

import base64
import http.client
import json
import tempfile
import unittest
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from smartpark.adapters import camera_hikvision, gate_tcp, pay_alipay, pay_wechat
from smartpark.adapters import service as service_plugin
from smartpark.adapters.gate_tcp.simulator import GateSimulator
from smartpark.adapters.service import Config as ServiceConfig
from smartpark.adapters.service import start_in_thread
from smartpark.adapters.service.auth import create_token
from smartpark.bootstrap import bootstrap
from smartpark.core.parking import OrderState
from smartpark.core.payments import AttemptState
from smartpark.plugins import Plugins
from smartpark.testing.alipay_sandbox import AlipaySandbox
from smartpark.testing.harness import anpr_alert, free_port
from smartpark.testing.samples import sample_id_number, sample_phone
from smartpark.testing.wechatpay_sandbox import WeChatPaySandbox, new_rsa_key

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "hikvision"
_n = iter(range(1, 1_000_000))


def plugins() -> Plugins:
    found = Plugins()
    wanted = {"gate_tcp": gate_tcp, "camera_hikvision": camera_hikvision, "service": service_plugin,
              "pay_wechat": pay_wechat, "pay_alipay": pay_alipay}
    extra = tuple(module for name, module in wanted.items() if name not in found.available())
    return Plugins(extra=extra) if extra else found


def alert(plate: str) -> bytes:
    return anpr_alert(FIXTURES / "anpr_1.xml", plate, f"pay-event-{next(_n):06d}")


class Lot:
    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory(prefix="smartpark-pay-")
        self.wechat = WeChatPaySandbox().start()
        self.alipay = AlipaySandbox().start()
        self.sim = GateSimulator(lanes=("in-1", "out-1"), heartbeat_s=0.5).start()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "data_dir": self.dir.name,
            "lot": {"name": "支付测试小区", "capacity": 100, "timezone": "Asia/Shanghai",
                    "lanes": [{"id": "in-1", "name": "入口", "direction": "in"},
                              {"id": "out-1", "name": "出口", "direction": "out"}]},
            "tariff": {"free_minutes": 0, "unit_minutes": 60, "unit_fee": 300},
            "gate": {"public_url": self.url},
            "plugins": {
                "enabled": ["storage_sqlite", "gate_tcp", "camera_hikvision", "pay_wechat", "pay_alipay"],
                "gate_tcp": {"controllers": [{"id": "sim", "host": "127.0.0.1", "port": self.sim.port,
                                              "lanes": ["in-1", "out-1"]}]},
                "camera_hikvision": {"cameras": [{"id": "cam-in", "lane": "in-1"}, {"id": "cam-out", "lane": "out-1"}],
                                     "save_pictures": False, "offline_after_seconds": 0},
                "pay_wechat": self.wechat.plugin_settings(),
                "pay_alipay": self.alipay.adapter_settings(),
            },
        }
        self.app = bootstrap(config, overrides={"plugins": plugins()})
        self.handle = start_in_thread(self.app, ServiceConfig(max_body_bytes=100_000), port=self.port)

    def close(self) -> None:
        self.handle.stop()
        self.app.close()
        self.sim.stop()
        self.alipay.stop()
        self.wechat.stop()
        self.dir.cleanup()

    def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("POST", path, body=body, headers=headers)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def waiting_car(self, plate: str, n: int) -> str:
        """A registered visitor drives in and up to the exit: held there for payment; returns the order id."""
        self.app.residents.register_visitor(name="访客", id_number=str(sample_id_number(n, area="310101")),
                                            phone=f"139{n:08d}", plate=plate, consent=True, actor="test")
        status, _ = self.post("/devices/hikvision/cam-in", alert(plate), {"Content-Type": "application/xml"})
        assert status == 200
        status, _ = self.post("/devices/hikvision/cam-out", alert(plate), {"Content-Type": "application/xml"})
        assert status == 200
        d = self.app.parking.recent_decisions("out-1", 1)[0]
        assert d.reason == "payment_required", d
        return d.order_id

    def opens(self) -> int:
        return len(self.sim.executed("open", "out-1"))

    def state(self, order_id: str, out_trade_no: str) -> tuple[Any, ...]:
        with self.app.store.unit_of_work() as uow:
            o, a = uow.orders.get(order_id), uow.payments.by_out_trade_no(out_trade_no)
        return o.state, o.version, a.state, a.version


class PaymentsThroughTheServiceTest(unittest.TestCase):
    lot: Lot

    @classmethod
    def setUpClass(cls) -> None:
        cls.lot = Lot()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.lot.close()

    def wechat_resource(self, out_trade_no: str, amount: int, **changes: Any) -> dict[str, Any]:
        w = self.lot.wechat
        resource = {"mchid": w.mchid, "appid": w.appid, "out_trade_no": out_trade_no,
                    "transaction_id": "4200000000000000000000000001", "trade_type": "NATIVE",
                    "trade_state": "SUCCESS", "trade_state_desc": "支付成功", "bank_type": "OTHERS",
                    "success_time": datetime.now(UTC).astimezone().isoformat(timespec="seconds"),
                    "payer": {"openid": "oTest"}, "amount": {"total": amount, "payer_total": amount,
                                                             "currency": "CNY", "payer_currency": "CNY"}}
        resource.update(changes)
        return resource

    def assert_unchanged(self, before: tuple, order_id: str, no: str, opens: int) -> None:
        self.assertEqual(self.lot.state(order_id, no), before)
        self.assertEqual(self.lot.opens(), opens)

    # -- WeChat Pay ------------------------------------------------------------------------------------------
    def test_wechat_refusals_then_the_genuine_callback_opens_the_exit(self) -> None:
        lot = self.lot
        order_id = lot.waiting_car("沪C10001", 11)
        view = lot.app.payments.pay_order(order_id, "wechat", actor="booth")
        self.assertTrue(view.code_url.startswith("weixin://"), view.code_url)
        no, amount = view.out_trade_no, view.amount_fen
        opens = lot.opens()
        before = lot.state(order_id, no)
        self.assertEqual(before[0], OrderState.PAYING)
        path = "/pay/wechat/notify"

        # forged: signed with a key that is not the platform key -> 400, nothing changes
        forged = lot.wechat.make_notification(self.wechat_resource(no, amount), signing_key=new_rsa_key())
        status, body = lot.post(path, forged[1], forged[0])
        self.assertEqual(status, 400, body)
        self.assert_unchanged(before, order_id, no, opens)

        # tampered: a genuine notification whose ciphertext was altered in transit -> 400
        headers, genuine_body = lot.wechat.make_notification(self.wechat_resource(no, amount))
        envelope = json.loads(genuine_body)
        raw = bytearray(base64.b64decode(envelope["resource"]["ciphertext"]))
        raw[5] ^= 0x01
        envelope["resource"]["ciphertext"] = base64.b64encode(bytes(raw)).decode()
        status, body = lot.post(path, json.dumps(envelope, separators=(",", ":")).encode(), headers)
        self.assertEqual(status, 400, body)
        self.assert_unchanged(before, order_id, no, opens)

        # wrong amount, genuinely signed (the channel passes it on; the service compares it with the attempt)
        h, b = lot.wechat.make_notification(self.wechat_resource(no, 1))
        status, body = lot.post(path, b, h)
        self.assertEqual(status, 500, body)
        self.assert_unchanged(before, order_id, no, opens)

        # unknown order, genuinely signed
        h, b = lot.wechat.make_notification(self.wechat_resource("SPUNKNOWN0000000001", amount))
        self.assertEqual(lot.post(path, b, h)[0], 500)
        self.assert_unchanged(before, order_id, no, opens)

        # an old notification replayed (signed an hour ago) -> 400
        h, b = lot.wechat.make_notification(self.wechat_resource(no, amount),
                                            timestamp=int(datetime.now(UTC).timestamp()) - 3600)
        self.assertEqual(lot.post(path, b, h)[0], 400)
        self.assert_unchanged(before, order_id, no, opens)
        with lot.app.store.unit_of_work() as uow:
            reasons = [e.details["reason"] for e in uow.audit.for_subject(f"payment:{no}")
                       if e.action == "payment.rejected"]
        self.assertEqual(reasons, ["amount_mismatch"])

        # the payer pays: WeChat's signed notification reaches the service -> 200 SUCCESS, the exit opens
        delivery = lot.wechat.pay_and_notify(no)
        self.assertEqual((delivery.status, json.loads(delivery.body)), (200, {"code": "SUCCESS"}))
        self.assertTrue(lot.sim.wait_for(lambda: lot.opens() == opens + 1, 5), "the exit did not open")
        paid = lot.state(order_id, no)
        self.assertEqual((paid[0], paid[2]), (OrderState.PAID, AttemptState.PAID))
        self.assertEqual(lot.app.payments.status(no).state, "paid")

        # WeChat resends the same notification (its retry schedule: same id, signed again): 200, nothing changes
        h, b = lot.wechat.notification(no)
        again = lot.wechat.deliver(h, b, lot.url + path)
        self.assertEqual(again.status, 200)
        self.assert_unchanged(paid, order_id, no, opens + 1)
        with lot.app.store.unit_of_work() as uow:
            self.assertIsNone(uow.sessions.open_by_plate(uow.orders.get(order_id).plate))  # the stay ended

    # -- Alipay ----------------------------------------------------------------------------------------------
    def test_alipay_refusals_then_the_genuine_notify_opens_the_exit(self) -> None:
        lot = self.lot
        order_id = lot.waiting_car("沪C10002", 12)
        view = lot.app.payments.pay_order(order_id, "alipay", actor="booth")
        self.assertTrue(view.code_url.startswith("https://qr.alipay"), view.code_url)
        no = view.out_trade_no
        opens, before = lot.opens(), lot.state(order_id, no)
        path = "/pay/alipay/notify"
        lot.alipay.scan(no)
        headers, body = lot.alipay.signed_notify(no)
        for forged in (lot.alipay.forge_bad_sign(headers, body),  # forged signature
                       lot.alipay.forge_fields(headers, body, total_amount="0.01"),  # tampered after signing
                       lot.alipay.strip_sign(headers, body)):  # unsigned
            status, answer = lot.post(path, forged[1], forged[0])
            self.assertNotEqual(answer, b"success")
            self.assert_unchanged(before, order_id, no, opens)
        # genuinely signed but for another amount: refused by the service (500), nothing changes
        h, b = lot.alipay.signed_notify(no, total_amount="0.01", receipt_amount="0.01", buyer_pay_amount="0.01",
                                        invoice_amount="0.01")
        status, answer = lot.post(path, b, h)
        self.assertEqual(status, 500, answer)
        self.assert_unchanged(before, order_id, no, opens)

        delivery = lot.alipay.pay_and_notify(no)
        self.assertEqual((delivery.status, delivery.body), (200, b"success"))
        self.assertTrue(lot.sim.wait_for(lambda: lot.opens() == opens + 1, 5), "the exit did not open")
        paid = lot.state(order_id, no)
        self.assertEqual((paid[0], paid[2]), (OrderState.PAID, AttemptState.PAID))
        resent = lot.alipay.deliver(*lot.alipay.resend(no), lot.url + path)  # Alipay resends: absorbed
        self.assertEqual((resent.status, resent.body), (200, b"success"))
        self.assert_unchanged(paid, order_id, no, opens + 1)

    # -- paying twice ------------------------------------------------------------------------------------------
    def test_a_second_payment_for_the_same_stay_is_refunded(self) -> None:
        lot = self.lot
        order_id = lot.waiting_car("沪C10003", 13)
        by_wechat = lot.app.payments.pay_order(order_id, "wechat", actor="booth")
        by_alipay = lot.app.payments.pay_order(order_id, "alipay", actor="visitor")
        # the visitor pays the Alipay QR too; its notify is still on the way when WeChat's arrives
        alipay_notify = lot.alipay.pay(by_alipay.out_trade_no)
        self.assertEqual(lot.wechat.pay_and_notify(by_wechat.out_trade_no).status, 200)
        self.assertEqual(lot.app.payments.status(by_alipay.out_trade_no).state, "paying")  # Alipay refused the close
        delivery = lot.alipay.deliver(*alipay_notify, lot.url + "/pay/alipay/notify")
        self.assertEqual((delivery.status, delivery.body), (200, b"success"))
        refunded = lot.app.payments.status(by_alipay.out_trade_no)
        self.assertEqual((refunded.state, refunded.refunded_fen), ("paid", refunded.amount_fen))
        refunds = lot.app.payments.refunds_for(by_alipay.out_trade_no)
        self.assertEqual([(r.amount_fen, r.state.value) for r in refunds], [(refunded.amount_fen, "succeeded")])
        self.assertEqual(lot.app.payment_channels["pay_alipay"].query(by_alipay.out_trade_no).state, "refunded")
        with lot.app.store.unit_of_work() as uow:
            order = uow.orders.get(order_id)
            self.assertEqual((order.state, order.out_trade_no), (OrderState.PAID, by_wechat.out_trade_no))

    def test_refund_through_the_wechat_sdk(self) -> None:
        lot = self.lot
        order_id = lot.waiting_car("沪C10004", 14)
        view = lot.app.payments.pay_order(order_id, "wechat", actor="booth")
        self.assertEqual(lot.wechat.pay_and_notify(view.out_trade_no).status, 200)
        refund = lot.app.payments.refund(view.out_trade_no, 100, reason="测试部分退款", actor="admin")
        self.assertEqual(refund.state.value, "processing")  # WeChat answers PROCESSING ...
        lot.wechat.complete_refund(refund.out_refund_no, lot.url + "/pay/wechat/notify")  # ... then notifies
        self.assertEqual(lot.app.payments.refunds_for(view.out_trade_no)[0].state.value, "succeeded")
        with lot.app.store.unit_of_work() as uow:
            order = uow.orders.get(order_id)
        self.assertEqual((order.state, order.refunded_fen), (OrderState.PAID, 100))


    # -- reconciliation ---------------------------------------------------------------------------------------
    def test_reconciliation_applies_a_lost_notification_and_closes_an_expired_qr(self) -> None:
        lot = self.lot
        self.assertIn("reconcile payments", [job[0] for job in lot.handle.runtime.providers._jobs])
        for name in ("pay_wechat", "pay_alipay"):
            self.assertEqual(lot.app.payment_channels[name].on_payment, lot.app.payments.handle_event)
        order_id = lot.waiting_car("沪C10005", 15)
        lost = lot.app.payments.pay_order(order_id, "wechat", actor="booth")
        lot.wechat.pay(lost.out_trade_no)  # paid at WeChat; the notification never arrives
        other = lot.waiting_car("沪C10006", 16)
        expired = lot.app.payments.pay_order(other, "alipay", actor="booth")  # nobody scans it
        opens = lot.opens()
        summary = lot.app.payments.reconcile(now=datetime.now(UTC) + timedelta(minutes=20))
        self.assertEqual((summary.applied, summary.closed, summary.errors), (1, 1, 0), summary)
        self.assertTrue(lot.sim.wait_for(lambda: lot.opens() == opens + 1, 5), "the exit did not open")
        self.assertEqual(lot.app.payments.status(lost.out_trade_no).state, "paid")
        self.assertEqual(lot.app.payments.status(expired.out_trade_no).state, "closed")
        with lot.app.store.unit_of_work() as uow:
            self.assertEqual(uow.orders.get(order_id).state, OrderState.PAID)
            self.assertEqual(uow.orders.get(other).state, OrderState.CLOSED)

    # -- top-ups through the booth API ---------------------------------------------------------------------
    def test_owner_top_up_through_the_booth_api_and_alipay(self) -> None:
        lot = self.lot
        owner = lot.app.residents.register_owner(name="业主", id_number=str(sample_id_number(31)),
                                                 phone=str(sample_phone(31)), plates=["京A31313"], actor="test")
        token = create_token(lot.app.store, lot.app.clock, "booth-pay", actor="test")
        auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        status, body = lot.post(f"/api/booth/owners/{owner.id}/topup", b'{"amount_fen": 0, "channel": "alipay"}', auth)
        self.assertEqual(status, 422, body)
        status, body = lot.post(f"/api/booth/owners/{owner.id}/topup",
                                json.dumps({"amount_fen": 5000, "channel": "alipay"}).encode(), auth)
        self.assertEqual(status, 200, body)
        payment = json.loads(body)["payment"]
        self.assertEqual((payment["amount_fen"], payment["state"], payment["owner_id"]), (5000, "paying", owner.id))
        delivery = lot.alipay.pay_and_notify(payment["out_trade_no"])
        self.assertEqual((delivery.status, delivery.body), (200, b"success"))
        self.assertEqual(lot.app.balances.view(owner.id).balance.fen, 5000)
        lot.alipay.deliver(*lot.alipay.resend(payment["out_trade_no"]), lot.url + "/pay/alipay/notify")
        self.assertEqual(lot.app.balances.view(owner.id).balance.fen, 5000)  # once
        refund = lot.app.payments.refund(payment["out_trade_no"], 1500, reason="业主申请退回", actor="admin")
        self.assertEqual(refund.amount_fen, 1500)
        view = lot.app.balances.view(owner.id)
        self.assertEqual(view.balance.fen, 3500)
        self.assertEqual([e.kind for e in view.recent], ["refund", "topup"])


if __name__ == "__main__":
    unittest.main()
