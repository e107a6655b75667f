"""What goes into the notifications outbox: events and the clock turned into Chinese messages, once per fact.

The app is built by ``bootstrap`` on fakes (InMemoryStore, FakeClock, FakeGate, FakeNotifier), so these tests also
prove the wiring: the planner's handlers are subscribed in transaction when the app is built.
"""

import tempfile
import time
import unittest
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from smartpark.adapters.service.runtime import Runtime
from smartpark.bootstrap import bootstrap
from smartpark.core import events as ev
from smartpark.core.bus import MessageBus
from smartpark.core.entities import Owner
from smartpark.core.errors import ConfigError, ValidationError
from smartpark.core.notify import DEFAULT_TEMPLATES, NotificationPlanner, NotificationService, NotifyPolicy
from smartpark.core.outbox import MessageState
from smartpark.core.values import Money, Plate
from smartpark.ports.recognizer import DeviceHealth, PlateRead
from smartpark.testing.fakes import FakeClock, FakeGate, FakeNotifier, InMemoryStore
from smartpark.testing.samples import sample_id_number, sample_phone, sample_plate

SH = ZoneInfo("Asia/Shanghai")
START = datetime(2024, 5, 1, 9, 30, tzinfo=SH)
IN, OUT = "in-1", "out-1"
TARIFF = {"free_minutes": 30, "unit_minutes": 60, "unit_fee": 300, "daily_cap": 3000, "grace_minutes": 15}
VISITOR_PHONE = "13900000009"
OPENID = "oUpF8uMuAJO_M2pxb1Q9zNjWeS7p"


def read(lane, plate):
    return PlateRead(lane=lane, raw_text=plate, plate=Plate.parse(plate), confidence=0.97, color="blue", at=START,
                     device=f"cam-{lane}")


class PlannerTestCase(unittest.TestCase):
    capacity = 10
    tariff = TARIFF
    notifications: dict = {}
    channels = ("sms", "wechat")

    def setUp(self):
        tmp = tempfile.TemporaryDirectory()
        self.addCleanup(tmp.cleanup)
        self.clock = FakeClock(START)
        self.store = InMemoryStore()
        self.gate = FakeGate(lanes=[IN, OUT], clock=self.clock)
        config = {"data_dir": tmp.name, "lot": {"name": "阳光花园停车场", "capacity": self.capacity},
                  "gate": {"public_url": "https://park.example.com/"}, "tariff": self.tariff,
                  "plugins": {"enabled": []}, "notifications": self.notifications}
        notifiers = {c: FakeNotifier(name=c, channel=c) for c in self.channels}
        self.app = bootstrap(config, overrides={"store": self.store, "clock": self.clock, "gates": {"g": self.gate},
                                                "recognizers": {}, "sensors": {}, "notifiers": notifiers})
        self.addCleanup(self.app.close)
        self.parking, self.residents = self.app.parking, self.app.residents

    # -- helpers --------------------------------------------------------------------------------------------
    def owner(self, n, plate=None, *, openid=None, opt_out=False):
        o = self.residents.register_owner(name=f"业主{n}", id_number=str(sample_id_number(n)),
                                          phone=str(sample_phone(n)), plates=[plate or str(sample_plate(n))],
                                          actor="t")
        if openid or opt_out:
            o = self.residents.set_owner_preferences(o.id, actor="t", wechat_openid=openid,
                                                     lot_full_opt_out=opt_out or None)
        return o

    def visitor(self, plate="沪B88888", phone=VISITOR_PHONE, n=9):
        return self.residents.register_visitor(name="访客", id_number=str(sample_id_number(n, area="310101")),
                                               phone=phone, plate=plate, consent=True, actor="t")

    def messages(self, kind=None):
        with self.store.unit_of_work() as uow:
            return sorted(uow.outbox.list(kind=kind, limit=100_000), key=lambda m: (m.created_at, m.dedupe_key))

    def kinds(self):
        return [m.kind for m in self.messages()]


class EntryReminderTests(PlannerTestCase):
    def test_a_visitor_is_told_their_free_time_on_entry(self):
        visitor = self.visitor()
        d = self.parking.handle_read(read(IN, "沪B88888"))
        [m] = self.messages()
        self.assertEqual(m.kind, "entry_reminder")
        self.assertEqual(m.text, "您的车辆 沪B***88 已于 09:30 入场，免费停车 30 分钟，请于 10:00 前离场。")
        self.assertEqual((m.channel, m.address, m.recipient_kind, m.recipient_id),
                         ("sms", VISITOR_PHONE, "visitor", visitor.id))
        self.assertEqual(m.dedupe_key, f"entry:{d.session_id}")
        self.assertEqual(m.params, {"lot": "阳光花园停车场", "plate": "沪B***88", "time": "09:30", "free_minutes": "30",
                                    "free_until": "10:00"})
        self.assertEqual((m.state, m.urgent), (MessageState.PENDING, True))  # here now: quiet hours do not hold it

    def test_owners_and_repeat_reads_get_no_entry_message(self):
        self.owner(1, "京A12345", openid=OPENID)
        self.parking.handle_read(read(IN, "京A12345"))
        self.visitor()
        self.parking.handle_read(read(IN, "沪B88888"))
        self.parking.handle_read(read(IN, "沪B88888"))  # a repeat read re-opens; no second stay, no second message
        self.assertEqual(self.kinds(), ["entry_reminder"])


class EntryWithoutFreeTimeTests(PlannerTestCase):
    tariff = dict(TARIFF, free_minutes=0)

    def test_no_free_time_says_so(self):
        self.visitor()
        self.parking.handle_read(read(IN, "沪B88888"))
        [m] = self.messages()
        self.assertEqual((m.kind, m.text), ("entry_notice", "您的车辆 沪B***88 已于 09:30 入场，停车按标准收费，离场时缴费。"))
        self.assertEqual(self.app.notifications.check_overtime(START + timedelta(hours=5)), 0)


class OvertimeTests(PlannerTestCase):
    notifications = {"overtime_lead_minutes": 10}

    def test_the_warning_fires_at_the_lead_time_once_per_stay(self):
        self.visitor()
        d = self.parking.handle_read(read(IN, "沪B88888"))
        jobs = self.app.notifications
        self.clock.advance(minutes=19, seconds=59)
        self.assertEqual(jobs.check_overtime(), 0)  # 09:49:59: not yet
        self.clock.advance(seconds=1)
        self.assertEqual(jobs.check_overtime(), 1)  # 09:50: lead time reached
        self.assertEqual(jobs.check_overtime(), 0)  # run twice: still one
        self.clock.advance(minutes=5)
        self.assertEqual(jobs.check_overtime(), 0)  # further on: still one
        [m] = self.messages("overtime_warning")
        self.assertEqual(m.text, "您的车辆 沪B***88 免费停车将于 10:00 结束（还剩 10 分钟），超时将按标准收费。")
        self.assertEqual((m.dedupe_key, m.channel, m.address), (f"overtime:{d.session_id}", "sms", VISITOR_PHONE))
        self.assertEqual(m.created_at, START + timedelta(minutes=20))

    def test_an_exited_stay_an_owner_and_a_stay_past_its_free_time_get_none(self):
        self.visitor("沪B88888", n=8)
        self.visitor("沪B77777", phone="13900000007", n=7)
        self.owner(1, "京A12345")
        self.parking.handle_read(read(IN, "沪B88888"))
        self.parking.handle_read(read(IN, "京A12345"))
        self.clock.advance(minutes=5)
        self.parking.handle_read(read(IN, "沪B77777"))  # entered 09:35: warned from 09:55
        self.clock.advance(minutes=10)
        self.parking.handle_read(read(OUT, "沪B88888"))  # left at 09:45, in its free time
        self.clock.set(START + timedelta(minutes=52))
        self.assertEqual(self.app.notifications.check_overtime(), 0)
        self.clock.set(START + timedelta(minutes=70))  # the job was down 09:52-10:10: 沪B77777's free time is over
        self.assertEqual(self.app.notifications.check_overtime(), 0)
        self.assertEqual(self.messages("overtime_warning"), [])

    def test_many_open_stays_are_paged(self):
        for n in range(1, 11):  # the lot's capacity
            self.visitor(f"沪B{n:05d}", phone=f"139{n:08d}", n=n)
            self.parking.handle_read(read(IN, f"沪B{n:05d}"))
        self.clock.advance(minutes=21)
        with self.store.unit_of_work() as uow:
            self.assertEqual(self.app.notifications.planner.check_overtime(uow, self.clock.now(), page=3), 10)


class MaxStayTests(PlannerTestCase):
    notifications = {"overtime_lead_minutes": 10, "max_stay_minutes": 120}

    def test_the_maximum_stay_is_warned_once(self):
        self.visitor()
        d = self.parking.handle_read(read(IN, "沪B88888"))
        self.clock.advance(minutes=109)
        self.app.notifications.check_overtime()
        self.assertEqual(self.messages("max_stay_warning"), [])
        for _ in range(2):
            self.clock.advance(minutes=1)
            self.app.notifications.check_overtime()
        self.clock.advance(minutes=30)  # past the maximum: not repeated
        self.app.notifications.check_overtime()
        [m] = self.messages("max_stay_warning")
        self.assertEqual(m.text, "您的车辆 沪B***88 将于 11:30 达到最长停放时间（120 分钟），请及时驶离。")
        self.assertEqual(m.dedupe_key, f"maxstay:{d.session_id}")


class PaymentTests(PlannerTestCase):
    def test_payment_success_carries_the_amount_and_the_receipt_link(self):
        self.visitor()
        self.parking.handle_read(read(IN, "沪B88888"))
        self.clock.advance(minutes=95)  # 2 started hours: ¥6.00
        d = self.parking.handle_read(read(OUT, "沪B88888"))
        self.parking.settle_cash(d.order_id, actor="booth:王")
        self.parking.settle_cash(d.order_id, actor="booth:王")  # a repeat changes nothing
        [m] = self.messages("payment_success")
        receipt = self.app.receipts.for_order(d.order_id)
        url = f"https://park.example.com/receipt/{d.order_id}?code={receipt.code}"
        self.assertEqual(receipt.verify_url, url)  # the link the receipt page accepts (the code is required there)
        self.assertEqual(m.text, f"您已成功支付停车费 6.00 元（车辆 沪B***88，11:05），电子收据：{url}")
        self.assertEqual((m.dedupe_key, m.channel, m.address), (f"paid:{d.order_id}", "sms", VISITOR_PHONE))
        self.assertEqual((m.params["order_id"], m.params["receipt_code"], m.params["amount"]),
                         (d.order_id, receipt.code, "6.00"))
        self.assertNotIn("receipt_url", m.params)  # Aliyun refuses URLs in parameters: the text has it, not the params

    def test_a_broken_receipt_link_does_not_undo_the_payment(self):
        self.visitor()
        self.parking.handle_read(read(IN, "沪B88888"))
        self.clock.advance(minutes=95)
        d = self.parking.handle_read(read(OUT, "沪B88888"))

        def broken(uow, order_id):
            raise RuntimeError("receipt key missing")

        self.app.notifications.planner._receipt_link = broken
        with self.assertLogs("smartpark.core.notify", "ERROR"):
            self.assertTrue(self.parking.settle_cash(d.order_id, actor="booth:王").gate_ok)
        [m] = self.messages("payment_success")
        self.assertTrue(m.text.endswith(f"电子收据：https://park.example.com/receipt/{d.order_id}"))


class LotFullTests(PlannerTestCase):
    capacity = 2

    def test_once_to_each_owner_not_opted_out_and_again_only_after_room(self):
        o1 = self.owner(1, "京A11111", openid=OPENID)
        o2 = self.owner(2, "京A22222")
        self.owner(3, "京A33333", opt_out=True)
        o4 = self.owner(4, "京A44444")
        self.parking.handle_read(read(IN, "京A11111"))
        self.parking.handle_read(read(IN, "京A22222"))  # full: the transition is recorded, the fan-out is a job
        self.assertEqual(self.messages("lot_full"), [])
        for plate in ["京A33333", "京A44444"]:  # owners still enter beyond capacity; visitors are refused
            self.parking.handle_read(read(IN, plate))
        self.visitor()
        self.parking.handle_read(read(IN, "沪B88888"))
        self.assertEqual(self.app.notifications.expand_lot_full(), 3)
        self.assertEqual(self.app.notifications.expand_lot_full(), 0)
        first = self.messages("lot_full")
        self.assertEqual(sorted(m.recipient_id for m in first), sorted([o1.id, o2.id, o4.id]))
        by_owner = {m.recipient_id: m for m in first}
        self.assertEqual((by_owner[o1.id].channel, by_owner[o1.id].address), ("wechat", OPENID))
        self.assertEqual((by_owner[o2.id].channel, by_owner[o2.id].address), ("sms", str(sample_phone(2))))
        self.assertEqual(by_owner[o2.id].text, "阳光花园停车场车库已满（09:30），请暂缓驶入或改停他处。")
        self.assertEqual(by_owner[o2.id].dedupe_key, f"lotfull:1:{o2.id}")
        # cars leave until there is room, then the lot fills again: a second round
        for plate in ["京A11111", "京A22222", "京A33333"]:
            self.parking.handle_read(read(OUT, plate))
        self.parking.handle_read(read(IN, "京A11111"))
        self.assertEqual(self.app.notifications.expand_lot_full(), 3)
        second = [m for m in self.messages("lot_full") if m not in first]
        self.assertEqual(sorted(m.recipient_id for m in second), sorted([o1.id, o2.id, o4.id]))
        self.assertTrue(all(m.dedupe_key.startswith("lotfull:2:") for m in second))

    def test_room_again_before_the_fan_out_tells_nobody(self):
        self.owner(1, "京A11111")
        self.owner(2, "京A22222")
        self.parking.handle_read(read(IN, "京A11111"))
        self.parking.handle_read(read(IN, "京A22222"))
        self.parking.handle_read(read(OUT, "京A22222"))
        self.assertEqual(self.app.notifications.expand_lot_full(), 0)
        self.assertEqual(self.messages("lot_full"), [])

    def test_the_fan_out_pages_in_batches_without_repeats(self):
        owners = [self.owner(n) for n in range(1, 12)]
        for n in (1, 2):
            self.parking.handle_read(read(IN, str(sample_plate(n))))
        service = self.app.notifications
        with self.store.unit_of_work() as uow:
            self.assertEqual(service.planner.expand_lot_full(uow, batch=4, overlap=1), (4, False))
        self.residents.delete_owner(owners[0].id, actor="t", reason="搬走")  # shifts the pages by one
        self.assertEqual(service.expand_lot_full(batch=4), 7)
        self.assertEqual(sorted(m.recipient_id for m in self.messages("lot_full")), sorted(o.id for o in owners))


class LotFullCostTests(unittest.TestCase):
    """2,000 owners: what the car that fills the lot pays, and what the fan-out costs (printed, see the docs)."""

    def test_two_thousand_owners(self):
        store, clock = InMemoryStore(), FakeClock(START)
        with store.unit_of_work() as uow:
            for n in range(1, 2001):
                uow.owners.add(Owner.register(name=f"业主{n}", id_number=sample_id_number(n), phone=sample_phone(n),
                                              plates=[sample_plate(n)], created_at=START, lot_full_opt_out=n % 10 == 0))
        planner = NotificationPlanner(clock=clock, policy=NotifyPolicy(lot_name="阳光花园停车场", timezone=SH))
        bus = MessageBus()
        planner.subscribe(bus)
        service = NotificationService(store, clock, planner)
        t = time.perf_counter()
        with store.unit_of_work() as uow:  # the transaction of the car that fills the lot
            uow.lot.set("full", "1")
            bus.stage(uow, [ev.LotFull(at=clock.now(), occupied=200, capacity=200)])
        in_gate = time.perf_counter() - t
        t = time.perf_counter()
        queued = service.expand_lot_full()
        fan_out = time.perf_counter() - t
        self.assertEqual(queued, 1800)
        with store.unit_of_work() as uow:  # the inline alternative: all 2,000 in one transaction
            uow.lot.set("notify.lot_full.pending", f"9|0|{clock.now().isoformat()}")
        t = time.perf_counter()
        with store.unit_of_work() as uow:
            self.assertEqual(planner.expand_lot_full(uow, batch=2000)[0], 1800)
        inline = time.perf_counter() - t
        print(f"\nlot full, 2,000 owners on InMemoryStore: gate transaction {in_gate * 1000:.2f} ms; "
              f"fan-out in batches of 200 {fan_out * 1000:.0f} ms; all in one transaction {inline * 1000:.0f} ms")
        self.assertLess(in_gate, 0.05)


class AttendantAlarmTests(PlannerTestCase):
    notifications = {"attendants": [{"name": "张师傅", "phone": "13800000001"},
                                    {"name": "李师傅", "phone": "13800000002", "openid": OPENID}],
                     "quiet_hours": "22:00-07:00"}

    def test_device_transitions_and_gate_failures_are_urgent_alarms(self):
        at = self.clock.now()
        self.parking.device_health(DeviceHealth(device="cam-in-1", kind="camera", online=False, at=at,
                                                detail="心跳超时"))
        self.parking.device_health(DeviceHealth(device="cam-in-1", kind="camera", online=False, at=at,
                                                detail="心跳超时"))  # no transition: nothing new
        offline = self.messages("device_offline")
        self.assertEqual(len(offline), 2)
        self.assertTrue(all(m.urgent and m.recipient_kind == "attendant" for m in offline))
        by_name = {m.recipient_id: m for m in offline}
        self.assertEqual((by_name["张师傅"].channel, by_name["张师傅"].address), ("sms", "13800000001"))
        self.assertEqual((by_name["李师傅"].channel, by_name["李师傅"].address), ("wechat", OPENID))
        self.assertEqual(by_name["张师傅"].text, "【设备告警】cam-in-1（摄像机）于 05-01 09:30 离线：心跳超时，请尽快检查。")
        self.clock.advance(minutes=3)
        self.parking.device_health(DeviceHealth(device="cam-in-1", kind="camera", online=True, at=self.clock.now()))
        online = self.messages("device_online")
        self.assertEqual(len(online), 2)
        self.assertEqual(online[0].text, "【设备恢复】cam-in-1（摄像机）已于 05-01 09:33 恢复在线。")
        self.owner(1, "京A12345")
        self.gate.set_offline(IN)
        self.parking.handle_read(read(IN, "京A12345"))
        failed = self.messages("gate_failed")
        self.assertEqual(len(failed), 2)
        self.assertTrue(all(m.urgent for m in failed))
        self.assertTrue(failed[0].text.startswith("【道闸故障】车道 in-1 的道闸于 05-01 09:33 无响应："))


class BalanceTests(PlannerTestCase):
    tariff = dict(TARIFF, owner={"free_minutes": 0, "unit_minutes": 60, "unit_fee": 300})

    def test_low_balance_then_arrears_once_per_ledger_entry(self):
        o = self.owner(1, "京A12345")
        self.app.balances.post(o.id, Money(2500), kind="topup", ref="t1", actor="t")
        self.assertEqual(self.messages(), [])  # a top-up is never a reminder
        self.parking.handle_read(read(IN, "京A12345"))
        self.clock.advance(minutes=30)
        self.parking.handle_read(read(OUT, "京A12345"))  # ¥3: 22.00 left, above 20.00
        self.assertEqual(self.messages(), [])
        self.clock.advance(minutes=5)
        self.parking.handle_read(read(IN, "京A12345"))
        self.clock.advance(minutes=30)
        d = self.parking.handle_read(read(OUT, "京A12345"))  # 19.00 left
        [low] = self.messages("low_balance")
        self.assertEqual(low.text, "您的停车账户余额为 19.00 元，已低于 20.00 元，请及时充值。")
        self.assertEqual((low.dedupe_key, low.recipient_id), (f"balance:stay:{d.session_id}", o.id))
        self.app.balances.post(o.id, Money(-2000), kind="adjust", ref="adj-1", actor="t")  # -1.00
        [arrears] = self.messages("arrears")
        self.assertEqual(arrears.text, "您的停车账户已欠费 1.00 元，请尽快充值。")
        self.assertEqual(arrears.dedupe_key, "balance:adj-1")
        self.app.balances.post(o.id, Money(-2000), kind="adjust", ref="adj-1", actor="t")  # the same ref again
        self.assertEqual(len(self.messages("arrears")), 1)
        self.app.balances.post(o.id, Money(-100), kind="refund", ref="r-1", actor="t")  # a refund asked for: none
        self.assertEqual(len(self.messages("arrears")), 1)


class TransactionTests(PlannerTestCase):
    def test_a_use_case_that_fails_after_staging_leaves_no_message(self):
        self.visitor()

        def boom(uow, event):
            raise RuntimeError("the use case fails after the planner wrote its message")

        self.app.bus.subscribe_in_transaction(ev.VehicleEntered, boom)  # runs after the planner's handler
        with self.assertRaises(RuntimeError):
            self.parking.handle_read(read(IN, "沪B88888"))
        self.assertEqual(self.messages(), [])
        self.assertEqual(self.parking.occupancy().occupied, 0)  # and no stay either: one transaction

    def test_the_same_fact_twice_queues_one_message(self):
        self.visitor()
        self.parking.handle_read(read(IN, "沪B88888"))
        [m] = self.messages()
        with self.store.unit_of_work() as uow:
            session = uow.sessions.list_open()[0]
            again = ev.VehicleEntered(at=self.clock.now(), session_id=session.id, lane=IN, plate="沪B***88",
                                      holder_kind="visitor", holder_id=session.holder_id)
            self.app.notifications.planner.handle(uow, again)
        self.assertEqual(self.messages(), [m])


class DisabledTests(PlannerTestCase):
    notifications = {"enabled": False}
    capacity = 1

    def test_nothing_is_queued_and_no_job_runs(self):
        self.visitor()
        self.parking.handle_read(read(IN, "沪B88888"))  # fills the lot too
        self.clock.advance(minutes=25)
        self.assertEqual(self.app.notifications.check_overtime(), 0)
        self.assertEqual(self.app.notifications.expand_lot_full(), 0)
        self.assertEqual(self.messages(), [])
        runtime = Runtime(self.app)
        runtime.start()
        self.addCleanup(runtime.stop)
        self.assertNotIn("overtime warnings", [job[0] for job in runtime.jobs._jobs])


class RuntimeJobTests(PlannerTestCase):
    def test_the_service_runs_the_overtime_check_and_the_fan_out(self):
        runtime = Runtime(self.app)
        runtime.start()
        self.addCleanup(runtime.stop)
        names = [job[0] for job in runtime.jobs._jobs]
        self.assertIn("overtime warnings", names)
        self.assertIn("lot-full notifications", names)
        self.visitor()
        self.parking.handle_read(read(IN, "沪B88888"))
        self.clock.advance(minutes=21)
        runtime.jobs.run_due()
        self.assertEqual(len(self.messages("overtime_warning")), 1)


class PreferSmsTests(PlannerTestCase):
    notifications = {"prefer": "sms", "templates": {"lot_full": "【{lot}】已满，当前共 {capacity} 个车位。"}}
    capacity = 1

    def test_prefer_sms_and_a_lot_template(self):
        self.owner(1, "京A11111", openid=OPENID)
        self.parking.handle_read(read(IN, "京A11111"))
        self.app.notifications.expand_lot_full()
        [m] = self.messages("lot_full")
        self.assertEqual((m.channel, m.address, m.text), ("sms", str(sample_phone(1)), "【阳光花园停车场】已满，当前共 1 个车位。"))


class OwnChannelTests(PlannerTestCase):
    """An owner's own choice of first channel wins over the lot's ``prefer`` (which is "wechat" here)."""

    capacity = 2

    def test_each_owner_is_told_on_the_channel_they_chose(self):
        auto = self.owner(1, "京A11111", openid=OPENID)
        sms = self.owner(2, "京A22222", openid=OPENID.replace("o", "p", 1))
        self.residents.set_owner_preferences(sms.id, actor="业主本人", notify_channel="sms")
        self.parking.handle_read(read(IN, "京A11111"))
        self.parking.handle_read(read(IN, "京A22222"))
        self.app.notifications.expand_lot_full()
        channels = {m.recipient_id: (m.channel, m.address) for m in self.messages("lot_full")}
        self.assertEqual(channels, {auto.id: ("wechat", OPENID), sms.id: ("sms", str(sample_phone(2)))})
        with self.store.unit_of_work() as uow:
            [entry] = uow.audit.for_subject(f"owner:{sms.id}", limit=1)
        self.assertEqual((entry.action, entry.details["notify_channel"]), ("owner.preferences", "sms"))

    def test_an_unknown_channel_is_refused_in_chinese(self):
        o = self.owner(1, "京A11111")
        with self.assertRaises(ValidationError) as e:
            self.residents.set_owner_preferences(o.id, actor="t", notify_channel="email")
        self.assertIn("通知方式", e.exception.zh)


class OnlyWeChatTests(PlannerTestCase):
    channels = ("wechat",)

    def test_owners_with_an_openid_get_wechat_visitors_are_skipped_with_a_log_line(self):
        self.owner(1, "京A11111", openid=OPENID)
        self.visitor()
        with self.assertLogs("smartpark.core.notify", "WARNING") as logs:
            self.parking.handle_read(read(IN, "沪B88888"))
        self.assertIn("no enabled notifier", logs.output[0])
        self.assertEqual(self.messages(), [])


class NoNotifierTests(PlannerTestCase):
    channels = ()

    def test_nothing_is_queued_when_no_notifier_is_enabled(self):
        self.visitor()
        with self.assertLogs("smartpark.core.notify", "WARNING"):
            self.parking.handle_read(read(IN, "沪B88888"))
        self.assertEqual(self.messages(), [])


class ConfigTests(unittest.TestCase):
    def test_bad_settings_name_the_key(self):
        for bad, words in [({"quiet_hours": "22-7"}, "quiet_hours"),
                           ({"templates": {"lot_full": "{plate}"}}, "unknown placeholder"),
                           ({"templates": {"lot_ful": "x"}}, "unknown message kind"),
                           ({"attendants": [{"name": "张"}]}, "phone or an openid"),
                           ({"prefer": "email"}, "prefer")]:
            with self.subTest(bad=bad), self.assertRaises(ConfigError) as caught:
                bootstrap({"notifications": bad})
            self.assertIn(words, caught.exception.en)

    def test_every_default_template_uses_only_its_placeholders(self):
        from smartpark.core.notify import template_problems

        self.assertEqual(template_problems(DEFAULT_TEMPLATES), [])
