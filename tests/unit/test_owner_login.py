"""The owners' page sign-in: one-time SMS codes and signed sessions (smartpark.core.owner_login), on fakes."""

from __future__ import annotations

import unittest
from datetime import timedelta

from smartpark.core.errors import ValidationError
from smartpark.core.notify import NotifyPolicy
from smartpark.core.owner_login import STATE_PREFIX, OwnerLoginService
from smartpark.testing.fakes import FakeClock, InMemoryStore
from smartpark.testing.samples import sample_owner, sample_phone

KEY = b"k" * 32
UNKNOWN = "13912345678"


class OwnerLoginTest(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = FakeClock()
        self.store = InMemoryStore()
        self.owner = sample_owner(1)
        with self.store.unit_of_work() as uow:
            uow.owners.add(self.owner)
        self.phone = str(sample_phone(1))
        self.login = OwnerLoginService(self.store, self.clock, KEY, NotifyPolicy(lot_name="阳光花园停车场"))

    def messages(self) -> list:
        with self.store.unit_of_work() as uow:
            return uow.outbox.list(kind="login_code")

    def last_code(self) -> str:
        return self.messages()[0].params["code"]

    # -- codes ----------------------------------------------------------------------------------------------
    def test_the_right_code_signs_in_once(self) -> None:
        answer = self.login.request_code(self.phone)
        self.assertTrue(answer.accepted)
        (m,) = self.messages()
        code = m.params["code"]
        self.assertRegex(code, r"^\d{6}$")
        self.assertEqual((m.channel, m.address, m.recipient_id, m.urgent), ("sms", self.phone, self.owner.id, True))
        self.assertEqual(m.text, "您的登录验证码为 ******，5 分钟内有效。如非本人操作请忽略。")  # attendants see this
        self.assertEqual(m.params, {"code": code, "minutes": "5"})
        result = self.login.verify(" " + self.phone, code)
        self.assertTrue(result.ok)
        self.assertEqual(result.owner_id, self.owner.id)
        again = self.login.verify(self.phone, code)
        self.assertFalse(again.ok, "a code is used up by a successful sign-in")

    def test_only_a_keyed_hash_of_the_code_and_no_number_is_stored(self) -> None:
        self.login.request_code(self.phone)
        code = self.last_code()
        with self.store.unit_of_work() as uow:
            name = STATE_PREFIX + self.login.blind(sample_phone(1))
            raw = uow.lot.get(name)
        self.assertIsNotNone(raw)
        self.assertNotIn(code, raw.replace(self.clock.now().isoformat(), ""))
        self.assertNotIn(self.phone, raw)
        self.assertNotIn(self.phone, name)
        other = OwnerLoginService(self.store, self.clock, b"x" * 32)
        self.assertNotEqual(other.blind(sample_phone(1)), self.login.blind(sample_phone(1)))

    def test_five_wrong_codes_void_the_code(self) -> None:
        self.login.request_code(self.phone)
        code = self.last_code()
        wrong = f"{(int(code) + 1) % 10 ** 6:06d}"
        for left in (4, 3, 2, 1):
            result = self.login.verify(self.phone, wrong)
            self.assertFalse(result.ok)
            self.assertEqual(result.tries_left, left)
            self.assertIn(f"还可尝试 {left} 次", result.zh)
        last = self.login.verify(self.phone, wrong)
        self.assertEqual((last.ok, last.tries_left), (False, 0))
        self.assertIn("错误次数过多", last.zh)
        locked = self.login.verify(self.phone, code)
        self.assertFalse(locked.ok, "the right code no longer works after 5 wrong tries")
        self.assertIn("错误次数过多", locked.zh)
        # a new code (after the resend interval) works again
        self.clock.advance(seconds=60)
        self.assertTrue(self.login.request_code(self.phone).accepted)
        self.assertTrue(self.login.verify(self.phone, self.last_code()).ok)

    def test_a_code_expires_after_five_minutes(self) -> None:
        self.login.request_code(self.phone)
        code = self.last_code()
        self.clock.advance(minutes=5)
        result = self.login.verify(self.phone, code)
        self.assertFalse(result.ok)
        self.assertIn("过期", result.zh)

    def test_a_code_just_before_expiry_works(self) -> None:
        self.login.request_code(self.phone)
        self.clock.advance(seconds=299)
        self.assertTrue(self.login.verify(self.phone, self.last_code()).ok)

    def test_resend_limits(self) -> None:
        self.assertTrue(self.login.request_code(self.phone).accepted)
        self.clock.advance(seconds=20)
        too_soon = self.login.request_code(self.phone)
        self.assertFalse(too_soon.accepted)
        self.assertEqual(too_soon.retry_after, 40)
        self.assertIn("40 秒后", too_soon.zh)
        self.assertEqual(len(self.messages()), 1)
        for _ in range(4):
            self.clock.advance(seconds=60)
            self.assertTrue(self.login.request_code(self.phone).accepted)
        self.assertEqual(len(self.messages()), 5)
        self.clock.advance(seconds=60)
        hourly = self.login.request_code(self.phone)  # 5 in the last hour: wait until the first is an hour old
        self.assertFalse(hourly.accepted)
        self.assertEqual(hourly.retry_after, 3600 - 20 - 5 * 60)
        self.assertIn("分钟后", hourly.zh)
        self.clock.advance(seconds=hourly.retry_after)
        self.assertTrue(self.login.request_code(self.phone).accepted)
        self.assertEqual(len(self.messages()), 6)
        # the latest code is the valid one
        self.assertTrue(self.login.verify(self.phone, self.last_code()).ok)

    def test_an_unknown_number_gets_the_same_answer_and_no_message(self) -> None:
        known = self.login.request_code(self.phone)
        unknown = self.login.request_code(UNKNOWN)
        self.assertEqual(known, unknown)
        self.assertEqual(len(self.messages()), 1)
        # the same limits apply, so they do not tell an owner's number either
        self.clock.advance(seconds=10)
        self.assertEqual(self.login.request_code(self.phone), self.login.request_code(UNKNOWN))
        # and any code is simply wrong, with the same countdown
        result = self.login.verify(UNKNOWN, "123456")
        self.assertFalse(result.ok)
        self.assertEqual(result.tries_left, 4)

    def test_a_number_that_never_asked_is_refused(self) -> None:
        result = self.login.verify(self.phone, "123456")
        self.assertFalse(result.ok)
        self.assertIn("重新获取", result.zh)
        self.assertFalse(self.login.verify("12", "123456").ok)

    def test_a_malformed_number_is_a_validation_error(self) -> None:
        with self.assertRaises(ValidationError):
            self.login.request_code("1234")
        self.assertEqual(self.messages(), [])

    def test_without_an_sms_notifier_there_is_no_sign_in(self) -> None:
        login = OwnerLoginService(self.store, self.clock, KEY, NotifyPolicy(channels=frozenset({"wechat"})))
        self.assertFalse(login.available)
        with self.assertRaises(ValidationError) as caught:
            login.request_code(self.phone)
        self.assertIn("暂未开通", caught.exception.zh)

    # -- sessions ---------------------------------------------------------------------------------------------
    def test_sessions_are_signed_and_expire_after_thirty_minutes(self) -> None:
        token = self.login.session_token(self.owner.id)
        self.assertEqual(self.login.check_session(token), self.owner.id)
        owner_id, expires, generation, signature = token.split(".")
        for forged in (f"{owner_id}.{int(expires) + 3600}.{generation}.{signature}",
                       f"someoneelse.{expires}.{generation}.{signature}",
                       f"{owner_id}.{expires}.{generation}.{signature[:-2]}AA", "", "a.b.c", None):
            self.assertIsNone(self.login.check_session(forged), forged)
        other = OwnerLoginService(self.store, self.clock, b"x" * 32)
        self.assertIsNone(other.check_session(token), "another key does not accept the session")
        self.clock.advance(minutes=29)
        self.assertEqual(self.login.check_session(token), self.owner.id)
        self.clock.advance(minutes=1)
        self.assertIsNone(self.login.check_session(token))

    def test_signing_out_voids_earlier_sessions(self) -> None:
        token = self.login.session_token(self.owner.id)
        self.login.end_session(self.owner.id)
        self.assertIsNone(self.login.check_session(token))
        fresh = self.login.session_token(self.owner.id)
        self.assertEqual(self.login.check_session(fresh), self.owner.id)

    def test_form_tokens_are_bound_to_the_session(self) -> None:
        a = self.login.session_token(self.owner.id)
        self.clock.advance(seconds=1)
        b = self.login.session_token(self.owner.id)
        self.assertTrue(self.login.check_form_token(a, self.login.form_token(a)))
        self.assertFalse(self.login.check_form_token(a, self.login.form_token(b)))
        self.assertFalse(self.login.check_form_token(a, ""))


class OwnerLoginWiringTest(unittest.TestCase):
    def test_bootstrap_wires_the_service_with_a_derived_key(self) -> None:
        import tempfile

        from smartpark.bootstrap import bootstrap
        from smartpark.testing.fakes import FakeNotifier

        with tempfile.TemporaryDirectory() as tmp:
            clock = FakeClock()
            app = bootstrap({"data_dir": tmp, "lot": {"name": "测试停车场"}, "plugins": {"enabled": []}},
                            overrides={"store": InMemoryStore(), "clock": clock,
                                       "notifiers": {"sms": FakeNotifier(name="sms", channel="sms")}})
            try:
                owner = app.residents.register_owner(name="王小明", id_number="440305199002033457",
                                                     phone="13800138000", plates=["粤B12345"], actor="test")
                self.assertTrue(app.owner_login.available)
                self.assertTrue(app.owner_login.request_code("13800138000").accepted)
                app.outbox_worker.run_once()
                (sent,) = app.notifiers["sms"].sent
                self.assertEqual(sent.template, "login_code")
                self.assertIn("测试停车场", app.owner_login.notify.lot_name)
                self.assertTrue(app.owner_login.verify("13800138000", sent.params["code"]).ok)
                token = app.owner_login.session_token(owner.id)
                self.assertEqual(app.owner_login.check_session(token), owner.id)
                clock.advance(timedelta(minutes=31))
                self.assertIsNone(app.owner_login.check_session(token))
            finally:
                app.close()


if __name__ == "__main__":
    unittest.main()
