"""A notifier that records messages instead of sending them.

``FakeNotifier`` implements :class:`~smartpark.ports.notifier.Notifier`. By
default every message with a non-empty recipient is SENT with a fresh
``vendor_message_id``. :meth:`FakeNotifier.script` queues the next results so a
test can play flow control (FAILED, retry later) or a permanent refusal
(REJECTED); :meth:`FakeNotifier.reject` makes one recipient always refused.
"""

from __future__ import annotations

import itertools
import threading
from collections import deque
from collections.abc import Iterable

import attrs

from ...ports.notifier import DeliveryResult, DeliveryStatus, Message

__all__ = ["FakeNotifier"]

_DEFAULT_CODES = {
    DeliveryStatus.SENT: "OK",
    DeliveryStatus.FAILED: "FAKE_FLOW_CONTROL",
    DeliveryStatus.REJECTED: "FAKE_REJECTED",
}


class FakeNotifier:
    """A :class:`~smartpark.ports.notifier.Notifier` for tests.

    :attr:`sent` lists the messages the fake accepted (status SENT), in order;
    :attr:`attempts` lists every ``(message, result)`` pair, whatever the result.
    """

    def __init__(self, name: str = "fake", channel: str = "sms", *, rejected: Iterable[str] = ()) -> None:
        self.name = name
        self.channel = channel
        self._lock = threading.Lock()
        self._script: deque[DeliveryResult] = deque()
        self._rejected = set(rejected)
        self._ids = itertools.count(1)
        #: Messages accepted (SENT), in order.
        self.sent: list[Message] = []
        #: Every send() call with its result, in order.
        self.attempts: list[tuple[Message, DeliveryResult]] = []

    # -- Notifier ----------------------------------------------------------------------
    def send(self, message: Message) -> DeliveryResult:
        """Record ``message`` and return the next result.

        An empty (or blank) recipient, or one passed to :meth:`reject`, is
        REJECTED without using up a scripted result. Otherwise the next
        scripted result is returned, or SENT when the script is empty.
        """
        with self._lock:
            recipient = message.recipient if isinstance(message.recipient, str) else ""
            if not recipient.strip():
                result = DeliveryResult(
                    status=DeliveryStatus.REJECTED, vendor_code="FAKE_EMPTY_RECIPIENT", detail="empty recipient"
                )
            elif recipient in self._rejected:
                result = DeliveryResult(
                    status=DeliveryStatus.REJECTED,
                    vendor_code="FAKE_RECIPIENT_REJECTED",
                    detail=f"recipient {recipient!r} refused",
                )
            elif self._script:
                result = self._script.popleft()
            else:
                result = DeliveryResult(status=DeliveryStatus.SENT, vendor_code="OK")
            if result.status is DeliveryStatus.SENT and not result.vendor_message_id:
                result = attrs.evolve(result, vendor_message_id=f"{self.name}-msg-{next(self._ids)}")
            self.attempts.append((message, result))
            if result.status is DeliveryStatus.SENT:
                self.sent.append(message)
            return result

    # -- driving it -----------------------------------------------------------------------
    def script(self, *results: DeliveryStatus | DeliveryResult) -> None:
        """Queue the results of the next sends, in order (appended to any queued ones).

        A bare :class:`DeliveryStatus` gets a vendor code of its own
        (``"OK"``, ``"FAKE_FLOW_CONTROL"``, ``"FAKE_REJECTED"``); pass a
        :class:`DeliveryResult` for a specific code, e.g.
        ``DeliveryResult(status=DeliveryStatus.FAILED, vendor_code="isv.BUSINESS_LIMIT_CONTROL")``.
        """
        queued = []
        for item in results:
            if isinstance(item, DeliveryResult):
                queued.append(item)
            elif isinstance(item, DeliveryStatus):
                queued.append(DeliveryResult(status=item, vendor_code=_DEFAULT_CODES[item]))
            else:
                raise TypeError(f"script() takes DeliveryStatus or DeliveryResult values, got {item!r}")
        with self._lock:
            self._script.extend(queued)

    def reject(self, recipient: str) -> None:
        """Make every message to ``recipient`` REJECTED (a bad number, a user not following)."""
        with self._lock:
            self._rejected.add(recipient)

    @property
    def pending_script(self) -> int:
        """How many scripted results are still queued."""
        with self._lock:
            return len(self._script)

    def sent_to(self, recipient: str) -> list[Message]:
        """The accepted messages addressed to ``recipient``."""
        with self._lock:
            return [m for m in self.sent if m.recipient == recipient]

    def __repr__(self) -> str:
        return f"FakeNotifier(name={self.name!r}, channel={self.channel!r}, sent={len(self.sent)})"
