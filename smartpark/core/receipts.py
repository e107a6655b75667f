"""Electronic receipts (电子凭证) for paid orders, with a verification code that cannot be forged.

A :class:`Receipt` is what a visitor takes away for a paid order, whatever the channel (WeChat Pay, Alipay,
cash, prepaid balance): the lot, the plate (masked), the stay's entry and exit (or 在场 while the car is still
inside), the duration, the amount, the channel, the provider's transaction id, the payment time, the amount
refunded since, a receipt number and a **verification code**.

The code is ``HMAC-SHA256(key, canonical fields)`` truncated to 60 bits and written as 12 base32 characters in
three groups (``7KQ2-MX4D-A9...``); base32 has no 0/1/8/9, so a code read aloud or typed from paper with
``O``/``I``/``B`` confusions is normalised before it is compared. The canonical fields are the payment facts
that never change once the order is paid: receipt number, full plate, entry time, amount, channel, transaction
id and payment time. The exit time and the refunded amount are left out on purpose: they change after the
receipt was printed (the car leaves, an attendant refunds), and a genuine receipt must stay verifiable;
:meth:`ReceiptService.verify` answers with the *current* receipt, so whoever checks sees the refund.

:meth:`ReceiptService.verify` recomputes the code from the store, so a receipt whose number, amount, plate or
code was altered does not verify. The key comes from the composition root (derived from the data key ring);
the core only holds bytes. Standard library and attrs only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import attrs

from .errors import NotFound, ValidationError
from .parking import OrderState
from .values import Money

__all__ = ["CHANNEL_ZH", "Receipt", "ReceiptService", "normalise_code"]

#: Display names of payment channels; an unknown (third-party) channel shows its own name.
CHANNEL_ZH = {"wechat": "微信支付", "alipay": "支付宝", "cash": "现金", "balance": "余额"}

_CODE_CHARS = 12  # 60 bits
_GROUP = 4
_B32 = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CONFUSABLE = str.maketrans({"0": "O", "1": "I", "8": "B"})


def normalise_code(code: str) -> str:
    """Upper case, separators and spaces removed, ``0``/``1``/``8`` read as ``O``/``I``/``B``."""
    text = "".join(ch for ch in (code or "").upper() if ch.isalnum())
    return text.translate(_CONFUSABLE)


def _group(raw: str) -> str:
    return "-".join(raw[i:i + _GROUP] for i in range(0, len(raw), _GROUP))


@attrs.frozen(kw_only=True)
class Receipt:
    """One paid order as the visitor's receipt. Times are timezone-aware (UTC); ``timezone`` shows them."""

    receipt_no: str
    order_id: str
    lot_name: str
    plate: str  # masked: 京A***45
    entered_at: datetime | None
    exited_at: datetime | None  # None: the car is still inside (在场)
    minutes: int
    amount_fen: int
    channel: str
    transaction_id: str
    paid_at: datetime
    refunded_fen: int
    code: str  # 4-4-4 base32
    verify_url: str
    timezone: str = "Asia/Shanghai"

    @property
    def channel_zh(self) -> str:
        return CHANNEL_ZH.get(self.channel, self.channel)

    @property
    def inside(self) -> bool:
        return self.exited_at is None

    @property
    def amount(self) -> Money:
        return Money(self.amount_fen)

    @property
    def refunded(self) -> Money:
        return Money(self.refunded_fen)

    @property
    def fully_refunded(self) -> bool:
        return self.refunded_fen >= self.amount_fen

    def local(self, at: datetime | None) -> str:
        """``2025-01-06 09:05`` in the lot's zone (``—`` for none)."""
        if at is None:
            return "—"
        zone: tzinfo = ZoneInfo(self.timezone)
        return at.astimezone(zone).strftime("%Y-%m-%d %H:%M")

    @property
    def duration_zh(self) -> str:
        h, m = divmod(max(0, self.minutes), 60)
        return f"{h} 小时 {m:02d} 分" if h else f"{m} 分钟"

    def lines(self) -> list[tuple[str, str]]:
        """The receipt as ``(label, value)`` rows in Chinese, in print order (pages, PNG, PDF and booth)."""
        rows = [
            ("停车场", self.lot_name),
            ("车牌", self.plate),
            ("入场时间", self.local(self.entered_at)),
            ("出场时间", "在场" if self.inside else self.local(self.exited_at)),
            ("停车时长", self.duration_zh),
            ("实付金额", str(self.amount)),
            ("支付方式", self.channel_zh),
            ("交易单号", self.transaction_id or "—"),
            ("支付时间", self.local(self.paid_at)),
        ]
        if self.refunded_fen:
            rows.append(("已退款", str(self.refunded) + ("（全额退款）" if self.fully_refunded else "")))
        rows += [("凭证号", self.receipt_no), ("验证码", self.code)]
        return rows

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO 8601 in the lot's zone, money in fen and as display text."""
        zone = ZoneInfo(self.timezone)

        def iso(at: datetime | None) -> str | None:
            return at.astimezone(zone).isoformat() if at is not None else None

        return {
            "receipt_no": self.receipt_no, "order_id": self.order_id, "lot_name": self.lot_name,
            "plate": self.plate, "entered_at": iso(self.entered_at), "exited_at": iso(self.exited_at),
            "inside": self.inside, "minutes": self.minutes, "amount_fen": self.amount_fen,
            "amount_display": str(self.amount), "channel": self.channel, "channel_display": self.channel_zh,
            "transaction_id": self.transaction_id, "paid_at": iso(self.paid_at),
            "refunded_fen": self.refunded_fen, "refunded_display": str(self.refunded), "code": self.code,
            "verify_url": self.verify_url,
        }


class ReceiptService:
    """Receipts for paid orders and their verification (``app.receipts``)."""

    def __init__(self, store: Any, clock: Any, key: bytes, lot_name: str, public_url: str, *,
                 timezone: str = "Asia/Shanghai") -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise ValueError("receipt key too short")
        self._store, self._clock, self._key = store, clock, key
        self._lot_name, self._base, self._tz = lot_name, public_url.rstrip("/"), timezone
        ZoneInfo(timezone)  # fail at start-up on a bad zone, not on the first receipt

    # -- queries ---------------------------------------------------------------------------------------
    def for_order(self, order_id: str) -> Receipt:
        """The receipt of a paid (or since refunded) order; ``NotFound`` / ``ValidationError`` otherwise."""
        with self._store.unit_of_work() as uow:
            return self.for_order_in(uow, order_id)

    def for_order_in(self, uow: Any, order_id: str) -> Receipt:
        """:meth:`for_order` inside the caller's unit of work (e.g. the payment-success message, written in the
        transaction that marks the order paid)."""
        order = uow.orders.get(order_id) if order_id else None
        if order is None:
            raise NotFound(f"找不到订单 {order_id}", f"no order {order_id}")
        if order.paid_at is None or order.state not in (OrderState.PAID, OrderState.REFUNDED):
            raise ValidationError("该订单尚未支付，暂无电子凭证", f"order {order_id} is not paid: no receipt yet",
                                  field="order_id")
        return self._build(uow, order)

    def verify(self, receipt_no: str, code: str) -> Receipt | None:
        """The current receipt when ``code`` is the genuine code of ``receipt_no``; ``None`` otherwise."""
        given = normalise_code(code)
        receipt_no = "".join((receipt_no or "").split())  # typed from paper: spaces and line breaks dropped
        if len(given) != _CODE_CHARS or not set(given) <= _B32 or not _plausible_no(receipt_no):
            return None
        for number in dict.fromkeys((receipt_no, receipt_no.lower())):  # order ids are lower-case hex
            try:
                receipt = self.for_order(number)
            except (NotFound, ValidationError):
                continue
            return receipt if hmac.compare_digest(normalise_code(receipt.code), given) else None
        return None

    def ticket(self, value: str) -> str:
        """A short unforgeable tag for ``value`` (e.g. a payment's out_trade_no shown to one visitor): links that
        carry it cannot be guessed from the value alone."""
        mac = hmac.new(self._key, b"smartpark ticket v1\x1f" + value.encode("utf-8"), hashlib.sha256).digest()
        return base64.b32encode(mac).decode("ascii")[:16].lower()

    def check_ticket(self, value: str, ticket: str) -> bool:
        return hmac.compare_digest(self.ticket(value), (ticket or "").strip().lower())

    def verify_url(self, receipt_no: str, code: str) -> str:
        return f"{self._base}/receipt/{receipt_no}?code={code}"

    # -- internals -------------------------------------------------------------------------------------
    def _build(self, uow: Any, order: Any) -> Receipt:
        session = uow.sessions.get(order.session_id)
        refunded = order.refunded_fen
        if order.out_trade_no:
            attempt = uow.payments.by_out_trade_no(order.out_trade_no)
            if attempt is not None:
                refunded = max(refunded, attempt.refunded_fen)
        entered = session.entered_at if session is not None else None
        exited = session.exited_at if session is not None else None
        until = exited or order.covers_until or order.paid_at
        minutes = max(0, int((until - entered).total_seconds() // 60)) if entered is not None else 0
        code = self._code(order, entered)
        return Receipt(receipt_no=order.id, order_id=order.id, lot_name=self._lot_name, plate=order.plate.masked,
                       entered_at=entered, exited_at=exited, minutes=minutes, amount_fen=order.amount_fen,
                       channel=order.channel or "", transaction_id=order.transaction_id or "",
                       paid_at=order.paid_at, refunded_fen=min(refunded, order.amount_fen), code=code,
                       verify_url=self.verify_url(order.id, code), timezone=self._tz)

    def _code(self, order: Any, entered: datetime | None) -> str:
        fields = ["smartpark receipt v1", order.id, str(order.plate), _ts(entered), str(order.amount_fen),
                  order.channel or "", order.transaction_id or "", _ts(order.paid_at)]
        message = "\x1f".join(fields).encode("utf-8")
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return _group(base64.b32encode(digest).decode("ascii")[:_CODE_CHARS])


def _ts(at: datetime | None) -> str:
    """Microseconds since the epoch: the same instant gives the same text whatever zone it is stored in."""
    if at is None:
        return ""
    return str((at - _EPOCH) // timedelta(microseconds=1))


def _plausible_no(receipt_no: str) -> bool:
    return isinstance(receipt_no, str) and 0 < len(receipt_no) <= 64 and receipt_no.isalnum()
