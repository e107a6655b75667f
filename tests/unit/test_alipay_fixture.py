"""A REAL production Alipay notify, verified with Alipay's published public key through the adapter's own path.

``tests/fixtures/alipay/notify_trade_success_1.form`` was signed by Alipay (RSA2); ``notify_pubkey_v1.pem`` is the
public key published with it (see the folder's README). ``AlipayChannel.parse_callback`` must accept it as is and
refuse it as soon as anything in it changes. Also here: the exact fen <-> yuan conversions, and a fuzz of the
callback parser (anything the internet sends is answered with CallbackRejected, never another exception).
"""

from __future__ import annotations

import json
import unittest
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlencode

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from smartpark.adapters.pay_alipay.channel import AlipayChannel, fen_to_yuan, yuan_to_fen
from smartpark.ports.payment import CallbackRejected, PaymentEvent

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "alipay"
FORM = (FIXTURES / "notify_trade_success_1.form").read_bytes()
FIELDS = json.loads((FIXTURES / "notify_trade_success_1.json").read_text(encoding="utf-8"))
ALIPAY_PUBLIC_KEY = (FIXTURES / "notify_pubkey_v1.pem").read_text(encoding="ascii")
APP_ID = "2019073166072302"
HEADERS = {"content-type": "application/x-www-form-urlencoded; charset=utf-8"}
# any app key will do: verifying a notify uses only the Alipay public key
APP_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode("ascii")


def channel(app_id: str = APP_ID, seller_id: str | None = None) -> AlipayChannel:
    return AlipayChannel(app_id=app_id, app_private_key=APP_KEY, alipay_public_key=ALIPAY_PUBLIC_KEY,
                         seller_id=seller_id)


def form(fields: dict[str, str]) -> bytes:
    return urlencode(list(fields.items())).encode("ascii")


class RealNotifyTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.channel = channel()

    def rejected(self, body: bytes, ch: AlipayChannel | None = None) -> str:
        with self.assertRaises(CallbackRejected) as caught:
            (ch or self.channel).parse_callback(HEADERS, body)
        return caught.exception.reason

    def test_the_json_is_the_decoded_form(self) -> None:
        self.assertEqual(dict(parse_qsl(FORM.decode("ascii"), keep_blank_values=True, strict_parsing=True)), FIELDS)

    def test_verifies_and_parses(self) -> None:
        event = self.channel.parse_callback(HEADERS, FORM)
        self.assertEqual(event, PaymentEvent(
            channel="pay_alipay", out_trade_no="20190815155618536-564-57", state="paid", amount_fen=10,
            transaction_id="2019081522001468450512505578", notify_id="2019081500222155624068450559358070",
            at=datetime(2019, 8, 15, 7, 56, 24, tzinfo=UTC)))  # gmt_payment 15:56:24 Beijing time
        self.assertEqual(event.at.utcoffset().total_seconds(), 0)

    def test_verification_is_over_the_decoded_sorted_fields(self) -> None:
        """Field order and percent-encoding style do not matter; the values do."""
        shuffled = dict(reversed(list(FIELDS.items())))
        self.assertEqual(self.channel.parse_callback(HEADERS, form(shuffled)).amount_fen, 10)
        spaced = "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in FIELDS.items()).encode("ascii")  # %20
        self.assertEqual(self.channel.parse_callback(HEADERS, spaced).amount_fen, 10)

    def test_changing_the_amount_fails(self) -> None:
        for amount in ("0.11", "1.00", "10.00", "0.01", "0.1"):  # "0.1" is the same money but not what was signed
            with self.subTest(total_amount=amount):
                self.assertIn("signature", self.rejected(form({**FIELDS, "total_amount": amount})))

    def test_changing_any_field_fails(self) -> None:
        for key, value in FIELDS.items():
            if key == "sign":
                continue
            changed = value[:-1] + ("1" if value[-1:] != "1" else "2") if value else "x"
            with self.subTest(changed=key):
                self.rejected(form({**FIELDS, key: changed}))
            with self.subTest(removed=key):
                self.rejected(form({k: v for k, v in FIELDS.items() if k != key}))
        with self.subTest(added="refund_fee"):
            self.rejected(form({**FIELDS, "refund_fee": "0.10"}))

    def test_changing_the_signature_fails(self) -> None:
        sign = FIELDS["sign"]
        for bad in (sign[:10] + ("A" if sign[10] != "A" else "B") + sign[11:], sign[:-4], "", sign + "AAAA"):
            with self.subTest(sign=bad[-12:]):
                self.rejected(form({**FIELDS, "sign": bad}))
        self.rejected(form({k: v for k, v in FIELDS.items() if k != "sign"}))

    def test_one_flipped_byte_fails(self) -> None:
        for i in range(0, len(FORM), 7):
            body = bytearray(FORM)
            body[i] ^= 0x01
            with self.subTest(offset=i):
                self.rejected(bytes(body))

    def test_genuine_but_for_another_app_or_seller(self) -> None:
        self.assertIn("app_id", self.rejected(FORM, channel(app_id="2019073166079999")))
        self.assertIn("seller_id", self.rejected(FORM, channel(seller_id="2088000000000001")))
        self.assertEqual(channel(seller_id="2088531891668739").parse_callback(HEADERS, FORM).amount_fen, 10)

    def test_a_different_alipay_key_does_not_verify_it(self) -> None:
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode("ascii")
        ch = AlipayChannel(app_id=APP_ID, app_private_key=APP_KEY, alipay_public_key=other)
        self.assertIn("signature", self.rejected(FORM, ch))

    def test_the_json_form_of_it_is_not_a_notify(self) -> None:
        self.rejected((FIXTURES / "notify_trade_success_1.json").read_bytes())

    def test_the_sdk_verify_directly(self) -> None:
        """The SDK's own call, as the adapter makes it: sign removed, sign_type popped by verify()."""
        data = dict(FIELDS)
        sign = data.pop("sign")
        self.assertTrue(self.channel._client.verify(dict(data), sign))
        self.assertFalse(self.channel._client.verify({**data, "total_amount": "0.11"}, sign))


class MoneyTests(unittest.TestCase):
    def test_fen_to_yuan(self) -> None:
        for fen, yuan in ((0, "0.00"), (1, "0.01"), (10, "0.10"), (99, "0.99"), (100, "1.00"), (1250, "12.50"),
                          (100_000_000_00, "100000000.00")):
            self.assertEqual(fen_to_yuan(fen), yuan)
        for bad in (-1, 12.5, True, "1250", None, Decimal("1250")):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                fen_to_yuan(bad)  # type: ignore[arg-type]

    def test_yuan_to_fen(self) -> None:
        for yuan, fen in (("0.10", 10), ("0.1", 10), ("12.50", 1250), ("12.5", 1250), ("12", 1200), ("0", 0),
                          ("007.01", 701), ("100000000.00", 100_000_000_00)):
            self.assertEqual(yuan_to_fen(yuan), fen)
        for bad in ("12.505", "12.", ".5", "-1.00", "+1", "1e3", " 1", "1 ", "１２", "١٢", "1,00", "", "0x1",
                    "NaN", "inf", "1" * 13, "1_000", 12.5, 1250, None, b"12.50"):
            with self.subTest(bad=bad), self.assertRaises(ValueError):
                yuan_to_fen(bad)

    @given(st.integers(min_value=0, max_value=10**14 - 1))
    def test_round_trip(self, fen: int) -> None:
        self.assertEqual(yuan_to_fen(fen_to_yuan(fen)), fen)

    @given(st.from_regex(r"\A[0-9]{1,12}(\.[0-9]{1,2})?\Z"))
    def test_agrees_with_decimal(self, text: str) -> None:
        self.assertEqual(yuan_to_fen(text), int(Decimal(text) * 100))


class FuzzTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.channel = channel()

    @settings(max_examples=200, deadline=None)
    @given(st.binary(max_size=2048))
    def test_random_bytes(self, body: bytes) -> None:
        with self.assertRaises(CallbackRejected):
            self.channel.parse_callback(HEADERS, body)

    @settings(max_examples=200, deadline=None)
    @given(st.dictionaries(st.sampled_from(sorted(FIELDS)), st.text(max_size=40), max_size=8))
    def test_fields_replaced_with_anything(self, changes: dict[str, str]) -> None:
        fields = {**FIELDS, **changes}
        body = form(fields)
        if fields == FIELDS:
            self.assertEqual(self.channel.parse_callback(HEADERS, body).amount_fen, 10)
        else:
            with self.assertRaises(CallbackRejected):
                self.channel.parse_callback(HEADERS, body)


if __name__ == "__main__":
    unittest.main()
