"""The contract every :class:`~smartpark.ports.payment.PaymentChannel` passes.

Usage::

    class TestWechatPay(PaymentChannelContract, unittest.TestCase):
        def make_channel(self):
            return WechatPayChannel(config_pointing_at(self.loopback))

        def pay(self, out_trade_no):
            # the loopback provider marks the order paid and builds the
            # notification it would POST to our notify_url
            return self.loopback.pay_and_notify(out_trade_no)
"""

from __future__ import annotations

import unittest
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from ...core.errors import SmartparkError
from ...ports.payment import (
    CallbackRejected,
    CallbackReply,
    PaymentChannel,
    PaymentEvent,
    PaymentIntent,
    PaymentQuery,
    PaymentRequest,
    RefundResult,
)

if TYPE_CHECKING:  # type checkers see the TestCase API; at run time this is a plain mixin
    _Base = unittest.TestCase
else:
    _Base = object

__all__ = ["PaymentChannelContract"]


class PaymentChannelContract(_Base):
    """Abstract tests for a :class:`PaymentChannel`. Mix into a ``unittest.TestCase``.

    Hooks for the subclass:

    * ``make_channel()`` (required) -- the channel under test, talking to a
      provider the test controls (a loopback server, or the fake's memory).
      ``setUp`` builds it as ``self.channel`` (override ``setUp`` only with a
      ``super().setUp()`` call).
    * ``pay(out_trade_no) -> (headers, body)`` (required) -- make the provider
      see the payer pay the order, and return the callback it sends to
      ``notify_url`` (HTTP headers and raw body bytes).
    * ``tamper(headers, body) -> (headers, body)`` (optional) -- spoil a
      genuine callback; the default flips one byte in the middle of the body.
    * ``unsigned(headers, body) -> (headers, body)`` (optional) -- the callback
      with its signature removed; the default drops every header. A provider
      that signs inside the body (Alipay's ``sign`` field) overrides it.
    * ``new_out_trade_no()`` (optional) -- a fresh order number the provider
      accepts (default: ``"CT"`` + 24 hex digits).
    * ``amount_fen`` (class attribute, default 1250) -- the order amount used.

    A refund that exceeds the paid amount must fail: by raising
    :class:`ValueError` or a :class:`~smartpark.core.errors.SmartparkError`,
    or by returning a :class:`RefundResult` whose state is ``"failed"``.

    What the core relies on beyond the types: each payment's callback has its
    own ``notify_id`` and a resend keeps it (the core records each
    ``(channel, notify_id)`` once); a refund sent again with the same
    ``out_refund_no`` and amount is the same refund (the core resends refunds
    still processing). ``docs/writing-a-payment-plugin.md`` explains the port;
    ``examples/smartpark-pay-unionpay`` is a third-party channel, with its own
    loopback provider, that passes this suite.
    """

    amount_fen: int = 1250

    channel: Any

    # -- hooks ----------------------------------------------------------------------
    def make_channel(self) -> PaymentChannel:
        raise NotImplementedError("PaymentChannelContract subclasses implement make_channel()")

    def pay(self, out_trade_no: str) -> tuple[Mapping[str, str], bytes]:
        raise NotImplementedError("PaymentChannelContract subclasses implement pay(out_trade_no)")

    def tamper(self, headers: Mapping[str, str], body: bytes) -> tuple[Mapping[str, str], bytes]:
        if not body:
            return headers, b"x"
        data = bytearray(body)
        i = len(data) // 2
        data[i] ^= 0x01
        return headers, bytes(data)

    def unsigned(self, headers: Mapping[str, str], body: bytes) -> tuple[Mapping[str, str], bytes]:
        return {}, body

    def new_out_trade_no(self) -> str:
        return "CT" + uuid.uuid4().hex[:24]

    # -- fixtures -----------------------------------------------------------------------
    def setUp(self) -> None:
        super().setUp()
        self.channel = self.make_channel()

    def _request(self, out_trade_no: str | None = None, amount_fen: int | None = None) -> PaymentRequest:
        return PaymentRequest(
            out_trade_no=out_trade_no or self.new_out_trade_no(),
            amount_fen=self.amount_fen if amount_fen is None else amount_fen,
            description="停车费 contract test",
            expires_at=datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=15),
            notify_url="https://smartpark.invalid/pay/notify",
        )

    def _created(self) -> PaymentRequest:
        request = self._request()
        self.channel.create(request)
        return request

    def _paid(self) -> tuple[PaymentRequest, Mapping[str, str], bytes]:
        request = self._created()
        headers, body = self.pay(request.out_trade_no)
        return request, headers, body

    # -- tests ------------------------------------------------------------------------------
    def test_is_a_payment_channel(self) -> None:
        self.assertIsInstance(self.channel, PaymentChannel)
        self.assertIsInstance(self.channel.name, str)
        self.assertTrue(self.channel.name)

    def test_create_returns_a_code_url_for_the_order(self) -> None:
        request = self._request()
        intent = self.channel.create(request)
        self.assertIsInstance(intent, PaymentIntent)
        self.assertEqual(intent.out_trade_no, request.out_trade_no)
        self.assertEqual(intent.channel, self.channel.name)
        self.assertIsInstance(intent.code_url, str)
        self.assertTrue(intent.code_url, "a payment intent carries what the QR code encodes")
        self.assertIsInstance(intent.expires_at, datetime)
        self.assertIsNotNone(intent.expires_at.tzinfo)

    def test_query_before_payment_is_pending(self) -> None:
        request = self._created()
        query = self.channel.query(request.out_trade_no)
        self.assertIsInstance(query, PaymentQuery)
        self.assertEqual(query.out_trade_no, request.out_trade_no)
        self.assertEqual(query.state, "pending")

    def test_callback_after_payment_parses_to_a_paid_event(self) -> None:
        request, headers, body = self._paid()
        event = self.channel.parse_callback(headers, body)
        self.assertIsInstance(event, PaymentEvent)
        self.assertEqual(event.channel, self.channel.name)
        self.assertEqual(event.out_trade_no, request.out_trade_no)
        self.assertEqual(event.state, "paid")
        self.assertEqual(event.amount_fen, request.amount_fen)
        self.assertIsInstance(event.amount_fen, int)
        self.assertTrue(event.transaction_id)
        self.assertTrue(event.notify_id)
        self.assertIsInstance(event.at, datetime)
        self.assertIsNotNone(event.at.tzinfo, "event times are timezone-aware")

    def test_query_after_payment_is_paid(self) -> None:
        request, headers, body = self._paid()
        event = self.channel.parse_callback(headers, body)
        query = self.channel.query(request.out_trade_no)
        self.assertEqual(query.state, "paid")
        self.assertEqual(query.amount_fen, request.amount_fen)
        self.assertEqual(query.transaction_id, event.transaction_id)

    def test_tampered_callback_is_rejected(self) -> None:
        _, headers, body = self._paid()
        bad_headers, bad_body = self.tamper(headers, body)
        self.assertNotEqual((dict(bad_headers), bad_body), (dict(headers), body), "tamper() changed nothing")
        with self.assertRaises(CallbackRejected):
            self.channel.parse_callback(bad_headers, bad_body)

    def test_unsigned_callback_is_rejected(self) -> None:
        _, headers, body = self._paid()
        with self.assertRaises(CallbackRejected):
            self.channel.parse_callback(*self.unsigned(headers, body))

    def test_garbage_callback_is_rejected(self) -> None:
        _, headers, _ = self._paid()
        for garbage in (b"", b"not a callback", b"{}", b"\xff\xfe\x00"):
            with self.subTest(body=garbage):
                with self.assertRaises(CallbackRejected):
                    self.channel.parse_callback(headers, garbage)

    def test_the_same_callback_twice_parses_to_the_same_notification(self) -> None:
        """Providers resend; the channel reports each copy, the service de-duplicates by notify_id."""
        _, headers, body = self._paid()
        first = self.channel.parse_callback(headers, body)
        second = self.channel.parse_callback(headers, body)
        self.assertEqual(first.notify_id, second.notify_id)
        self.assertEqual(first.out_trade_no, second.out_trade_no)
        self.assertEqual(first.amount_fen, second.amount_fen)

    def test_each_payment_has_its_own_notify_id(self) -> None:
        """The core drops a callback whose (channel, notify_id) it has seen: shared ids would lose payments."""
        first_request, first_headers, first_body = self._paid()
        second_request, second_headers, second_body = self._paid()
        first = self.channel.parse_callback(first_headers, first_body)
        second = self.channel.parse_callback(second_headers, second_body)
        self.assertEqual((first.out_trade_no, second.out_trade_no),
                         (first_request.out_trade_no, second_request.out_trade_no))
        self.assertNotEqual(first.notify_id, second.notify_id)
        self.assertNotEqual(first.transaction_id, second.transaction_id)

    def test_a_refund_sent_again_is_the_same_refund(self) -> None:
        """Retried with the same out_refund_no and amount, a refund is not paid out twice."""
        request, headers, body = self._paid()
        self.channel.parse_callback(headers, body)
        part = request.amount_fen // 2
        rest = request.amount_fen - part
        out_refund_no = "R" + request.out_trade_no
        for _ in range(2):
            result = self.channel.refund(request.out_trade_no, out_refund_no, part, request.amount_fen)
            self.assertEqual((result.out_refund_no, result.amount_fen), (out_refund_no, part))
            self.assertIn(result.state, ("succeeded", "processing"))
        # had the repeat refunded again, nothing (or less than ``rest``) would be left to refund
        final = self.channel.refund(request.out_trade_no, "S" + request.out_trade_no, rest, request.amount_fen)
        self.assertEqual(final.amount_fen, rest)
        self.assertIn(final.state, ("succeeded", "processing"))

    def test_partial_refund_of_a_paid_order(self) -> None:
        request, headers, body = self._paid()
        self.channel.parse_callback(headers, body)
        part = request.amount_fen // 2
        result = self.channel.refund(request.out_trade_no, "R" + request.out_trade_no, part, request.amount_fen)
        self.assertIsInstance(result, RefundResult)
        self.assertEqual(result.out_refund_no, "R" + request.out_trade_no)
        self.assertEqual(result.amount_fen, part)
        self.assertIn(result.state, ("succeeded", "processing"))

    def test_refund_of_more_than_paid_fails(self) -> None:
        request, headers, body = self._paid()
        self.channel.parse_callback(headers, body)
        try:
            result = self.channel.refund(
                request.out_trade_no, "R" + request.out_trade_no, request.amount_fen + 1, request.amount_fen
            )
        except (ValueError, SmartparkError):
            return
        self.assertIsInstance(result, RefundResult)
        self.assertEqual(result.state, "failed", "a refund above the paid amount must not succeed")

    def test_close_makes_query_closed(self) -> None:
        request = self._created()
        self.channel.close(request.out_trade_no)
        self.assertEqual(self.channel.query(request.out_trade_no).state, "closed")

    def test_callback_reply(self) -> None:
        accepted = self.channel.callback_reply(True)
        rejected = self.channel.callback_reply(False)
        for reply in (accepted, rejected):
            self.assertIsInstance(reply, CallbackReply)
            self.assertIsInstance(reply.status, int)
            self.assertIsInstance(reply.content_type, str)
            self.assertIsInstance(reply.body, bytes)
        self.assertTrue(200 <= accepted.status < 300, f"an accepted callback is answered 2xx, not {accepted.status}")
        self.assertNotEqual(
            (rejected.status, rejected.body),
            (accepted.status, accepted.body),
            "the provider must be able to tell a rejection from an acceptance",
        )
