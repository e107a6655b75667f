"""The contract every :class:`~smartpark.ports.notifier.Notifier` adapter passes.

Usage::

    class TestAliyunSms(NotifierContract, unittest.TestCase):
        def make_notifier(self):
            return AliyunSmsNotifier(config_pointing_at(self.loopback))   # maps "contract_test"

        def accepted_recipient(self):
            return "13800138000"

        def expect_rejected_recipient(self):
            return "10000000000"            # the loopback answers isv.MOBILE_NUMBER_ILLEGAL

        def arrange_temporary_failure(self):
            self.loopback.answer_next("isv.BUSINESS_LIMIT_CONTROL")
            return True
"""

from __future__ import annotations

import unittest
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ...ports.notifier import DeliveryResult, DeliveryStatus, Message, Notifier

if TYPE_CHECKING:  # type checkers see the TestCase API; at run time this is a plain mixin
    _Base = unittest.TestCase
else:
    _Base = object

__all__ = ["NotifierContract"]


class NotifierContract(_Base):
    """Abstract tests for a :class:`Notifier`. Mix into a ``unittest.TestCase``.

    Hooks for the subclass:

    * ``make_notifier()`` (required) -- the notifier under test, talking to a
      provider the test controls, configured for the logical template named
      by ``template`` (class attribute, default ``"contract_test"``) with the
      parameters in ``params``. ``setUp`` builds it as ``self.notifier``
      (override ``setUp`` only with a ``super().setUp()`` call).
    * ``accepted_recipient()`` (required) -- a recipient (phone number,
      openid) the provider accepts.
    * ``expect_rejected_recipient()`` (optional) -- a recipient the provider
      refuses permanently; return None (the default) to skip that test.
    * ``arrange_temporary_failure()`` (optional) -- make the provider fail
      the next send temporarily (flow control, a 5xx) and return True; the
      default returns False and the test is skipped.
    """

    template: str = "contract_test"
    params: Mapping[str, str] = {"plate": "京A***45", "minutes": "30"}

    notifier: Any

    # -- hooks ----------------------------------------------------------------------
    def make_notifier(self) -> Notifier:
        raise NotImplementedError("NotifierContract subclasses implement make_notifier()")

    def accepted_recipient(self) -> str:
        raise NotImplementedError("NotifierContract subclasses implement accepted_recipient()")

    def expect_rejected_recipient(self) -> str | None:
        return None

    def arrange_temporary_failure(self) -> bool:
        return False

    # -- fixtures ---------------------------------------------------------------------
    def setUp(self) -> None:
        super().setUp()
        self.notifier = self.make_notifier()

    def message(self, recipient: str | None = None) -> Message:
        """A fresh message for ``recipient`` (default: the accepted one)."""
        params = dict(self.params)
        return Message(
            id=f"ct-{uuid.uuid4().hex[:16]}",
            recipient=self.accepted_recipient() if recipient is None else recipient,
            template=self.template,
            params=params,
            text="您的车辆 " + " ".join(params.values()),
        )

    def _assert_result(self, result: Any) -> None:
        self.assertIsInstance(result, DeliveryResult)
        self.assertIsInstance(result.status, DeliveryStatus)
        self.assertIsInstance(result.vendor_code, str)
        self.assertIsInstance(result.vendor_message_id, str)
        self.assertIsInstance(result.detail, str)

    # -- tests ----------------------------------------------------------------------------
    def test_is_a_notifier(self) -> None:
        self.assertIsInstance(self.notifier, Notifier)
        self.assertIsInstance(self.notifier.name, str)
        self.assertTrue(self.notifier.name)
        self.assertIsInstance(self.notifier.channel, str)
        self.assertTrue(self.notifier.channel)

    def test_send_returns_a_delivery_result(self) -> None:
        self._assert_result(self.notifier.send(self.message()))

    def test_successful_send_has_a_vendor_message_id(self) -> None:
        result = self.notifier.send(self.message())
        self._assert_result(result)
        self.assertIs(result.status, DeliveryStatus.SENT)
        self.assertTrue(result.vendor_message_id, "a sent message carries the provider's message id")

    def test_each_message_is_sent(self) -> None:
        results = [self.notifier.send(self.message()) for _ in range(3)]
        self.assertEqual([r.status for r in results], [DeliveryStatus.SENT] * 3)

    def test_rejected_recipient_is_rejected_permanently(self) -> None:
        recipient = self.expect_rejected_recipient()
        if recipient is None:
            self.skipTest("no recipient this provider rejects (expect_rejected_recipient() returns None)")
        result = self.notifier.send(self.message(recipient))
        self._assert_result(result)
        self.assertIs(result.status, DeliveryStatus.REJECTED)
        self.assertTrue(result.vendor_code or result.detail, "a rejection says why")

    def test_temporary_failure_is_failed_not_rejected(self) -> None:
        if not self.arrange_temporary_failure():
            self.skipTest("the provider cannot be made to fail temporarily (arrange_temporary_failure())")
        result = self.notifier.send(self.message())
        self._assert_result(result)
        self.assertIs(result.status, DeliveryStatus.FAILED)
        self.assertTrue(result.vendor_code or result.detail, "a failure says why")

    def test_send_works_again_after_a_temporary_failure(self) -> None:
        if not self.arrange_temporary_failure():
            self.skipTest("the provider cannot be made to fail temporarily (arrange_temporary_failure())")
        self.notifier.send(self.message())
        self.assertIs(self.notifier.send(self.message()).status, DeliveryStatus.SENT)
