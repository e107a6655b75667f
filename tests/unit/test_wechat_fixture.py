"""A real WeChat Pay v3 notification through the pay_wechat adapter's decrypt-and-parse step.

The sample (``tests/fixtures/wechatpay/``, see its README) is a genuine ``TRANSACTION.SUCCESS`` notification
whose APIv3 key was published with it, but not the platform certificate that signed it. Its signature
therefore CANNOT be checked here: these tests call the step that runs after verification --
``WeChatPayChannel.open_notification`` (AEAD_AES_256_GCM decryption with the APIv3 key, through the SDK's
own ``aes_decrypt``) and ``WeChatPayChannel.notification_event`` (the mapping to a ``PaymentEvent`` with the
merchant/app checks) -- directly, and check that the full ``parse_callback``, which verifies first, refuses
the sample because our (generated) platform key did not sign it.
"""

from __future__ import annotations

import base64
import json
import unittest
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from smartpark.adapters.pay_wechat.channel import WeChatPayChannel
from smartpark.ports.payment import CallbackRejected, PaymentEvent
from smartpark.testing.fakes.clock import FakeClock
from smartpark.testing.wechatpay_sandbox import new_rsa_key

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "wechatpay"
HEADERS = json.loads((FIXTURES / "notify_real_native_1.headers.json").read_text(encoding="utf-8"))
BODY = (FIXTURES / "notify_real_native_1.body.json").read_bytes()
DECRYPTED = json.loads((FIXTURES / "notify_real_native_1.decrypted.json").read_text(encoding="utf-8"))
PUBLISHED_APIV3_KEY = "6ea12a184b53a3a5f33f1123b6ea9867"  # published with the sample; not a key of ours
SENT_AT = datetime.fromtimestamp(int(HEADERS["Wechatpay-Timestamp"]), UTC)


class RealNotificationTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        key = new_rsa_key()  # one generated key plays merchant and platform key; neither signed the sample
        cls.merchant_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
        cls.platform_pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo)
        cls.default = cls.build()

    def channel(self, **kw: str) -> WeChatPayChannel:
        channel = self.build(**kw) if kw else self.default
        channel.clock = FakeClock(SENT_AT)
        return channel

    @classmethod
    def build(cls, *, mchid: str = DECRYPTED["mchid"], appid: str = DECRYPTED["appid"],
              api_v3_key: str = PUBLISHED_APIV3_KEY) -> WeChatPayChannel:
        return WeChatPayChannel(
            mchid=mchid, appid=appid, api_v3_key=api_v3_key, private_key_pem=cls.merchant_pem,
            cert_serial_no="0123456789ABCDEF0123456789ABCDEF01234567", platform_public_key_pem=cls.platform_pem,
            # the sample was signed with a platform certificate of this serial; we only hold a key of our own
            platform_public_key_id=HEADERS["Wechatpay-Serial"],
            notify_url="https://smartpark.invalid/pay/wechat/notify",
        )

    def test_the_resource_decrypts_to_the_published_order(self) -> None:
        opened = self.channel().open_notification(BODY)
        self.assertEqual(opened["resource"], DECRYPTED)
        self.assertEqual(opened["id"], "db7c08f8-be04-5c9b-b022-ba3d384ed1c9")
        self.assertEqual(opened["event_type"], "TRANSACTION.SUCCESS")

    def test_it_parses_to_the_paid_event_of_that_order(self) -> None:
        channel = self.channel()
        event = channel.notification_event(channel.open_notification(BODY))
        self.assertEqual(event, PaymentEvent(
            channel="pay_wechat",
            out_trade_no="native3000chi20230511100017",
            state="paid",
            amount_fen=1,
            transaction_id="4200001841202305111695101523",
            at=datetime(2023, 5, 11, 10, 0, 40, tzinfo=timezone(timedelta(hours=8))),
            notify_id="db7c08f8-be04-5c9b-b022-ba3d384ed1c9",
        ))
        self.assertEqual(event.at, datetime(2023, 5, 11, 2, 0, 40, tzinfo=UTC))

    def test_the_full_path_refuses_it_because_we_cannot_verify_its_signature(self) -> None:
        with self.assertRaises(CallbackRejected) as caught:
            self.channel().parse_callback(HEADERS, BODY)
        self.assertEqual(caught.exception.reason, "bad signature")

    def test_it_is_refused_as_stale_by_a_clock_of_today(self) -> None:
        channel = self.channel()
        channel.clock = FakeClock(SENT_AT + timedelta(days=1))
        with self.assertRaises(CallbackRejected) as caught:
            channel.parse_callback(HEADERS, BODY)
        self.assertIn("away from our clock", caught.exception.reason)

    def test_another_apiv3_key_does_not_decrypt_it(self) -> None:
        with self.assertRaises(CallbackRejected) as caught:
            self.channel(api_v3_key="0" * 32).open_notification(BODY)
        self.assertIn("does not decrypt", caught.exception.reason)

    def test_a_flipped_ciphertext_bit_does_not_decrypt(self) -> None:
        envelope = json.loads(BODY)
        raw = bytearray(base64.b64decode(envelope["resource"]["ciphertext"]))
        raw[10] ^= 0x80
        envelope["resource"]["ciphertext"] = base64.b64encode(bytes(raw)).decode("ascii")
        with self.assertRaises(CallbackRejected):
            self.channel().open_notification(json.dumps(envelope).encode("utf-8"))

    def test_changed_associated_data_does_not_decrypt(self) -> None:
        envelope = json.loads(BODY)
        envelope["resource"]["associated_data"] = "refund"
        with self.assertRaises(CallbackRejected):
            self.channel().open_notification(json.dumps(envelope).encode("utf-8"))

    def test_another_merchant_or_app_is_refused_after_decryption(self) -> None:
        for channel in (self.channel(mchid="1900000109"), self.channel(appid="wx0000000000000000")):
            with self.subTest(mchid=channel.mchid, appid=channel.appid):
                with self.assertRaises(CallbackRejected) as caught:
                    channel.notification_event(channel.open_notification(BODY))
                self.assertIn("not ours", caught.exception.reason)


if __name__ == "__main__":
    unittest.main()
