"""What the booth screen shows, as plain state that a batch of events updates (no Tk here).

:class:`Board` folds the events of one drain into per-lane state and a few "dirty" flags; the window then
draws each changed lane once and reloads each dirty list once, however many events came in the batch. So 100
reads a second cost one redraw per lane per tick, not 100.
"""

from __future__ import annotations

import collections
from datetime import datetime
from typing import Any

import attrs

from smartpark.core import events as ev

from .inbox import ReadSeen

HOLDER_ZH = {"owner": "业主", "visitor": "访客", "unknown": "未登记", None: ""}
#: Decisions after which the attendant may want to type the plate.
CONFIRMABLE = {"confirm", "registration_required", "exit_without_entry", "wrong_direction", "already_inside",
               "unknown_lane", "gate_failed"}


def mask_raw(text: str | None) -> str:
    """A camera's raw text may be a plate: keep only its first two and last character."""
    text = text or ""
    return text if len(text) <= 3 else text[:2] + "*" * (len(text) - 3) + text[-1]


@attrs.define
class LaneState:
    lane: str
    outcome: str | None = None
    reason: str = ""
    message: str = "等待车辆"
    plate: str | None = None  # masked
    holder: str | None = None
    at: datetime | None = None
    gate_ok: bool | None = None
    order_id: str | None = None  # an exit waiting for payment
    amount_fen: int | None = None
    reg_url: str | None = None  # a visitor waiting to register
    reg_expires: datetime | None = None
    reg_plate: str | None = None
    confirm: bool = False
    confidence: float | None = None
    picture: str | None = None
    read_at: datetime | None = None
    read_raw: str = ""  # masked
    read_device: str = ""
    read_plate: str | None = None  # masked; the plate of the read shown (None: unreadable)
    alert: str = ""
    history: collections.deque = attrs.field(factory=lambda: collections.deque(maxlen=6))
    version: int = 0

    @property
    def needs_confirm(self) -> bool:
        return self.confirm or (self.outcome in ("hold", "refuse") and self.reason in CONFIRMABLE)


class Board:
    """Per-lane state plus what needs reloading; :meth:`apply` takes one inbox item."""

    def __init__(self, lanes: dict[str, str]) -> None:
        """``lanes`` maps a lane id to its name (for the event log)."""
        self.names = dict(lanes)
        self.lanes = {lane: LaneState(lane) for lane in lanes}
        self.log: collections.deque[tuple[datetime | None, str, str]] = collections.deque(maxlen=300)
        self.reset_flags()
        self.full: bool | None = None
        self.devices: dict[str, tuple[str, bool, str]] = {}

    def reset_flags(self) -> None:
        self.dirty_lanes: set[str] = set()
        self.occupancy = False
        self.stays = False
        self.stats = False
        self.devices_changed = False
        self.announcements = False
        self.people = False
        self.balances = False
        self.full_changed = False
        self.log_added = 0

    def _lane(self, lane: str | None) -> LaneState | None:
        if lane is None:
            return None
        state = self.lanes.get(lane)
        if state is None:  # a lane the camera knows and the config does not: show it anyway
            state = self.lanes[lane] = LaneState(lane)
        return state

    def _name(self, lane: str) -> str:
        return self.names.get(lane, lane)

    def _touch(self, state: LaneState) -> None:
        state.version += 1
        self.dirty_lanes.add(state.lane)

    def _note(self, at: datetime | None, text: str, tone: str = "info") -> None:
        self.log.append((at, text, tone))
        self.log_added += 1

    def apply(self, item: Any) -> None:  # noqa: C901 - one branch per event type, flat on purpose
        if isinstance(item, ReadSeen):
            r = item.read
            s = self._lane(r.lane)
            if s is not None:
                s.picture, s.read_at, s.read_device = r.picture, r.at, r.device
                s.read_raw, s.confidence = mask_raw(r.raw_text), r.confidence
                s.read_plate = r.plate.masked if r.plate is not None else None
                self._touch(s)
            return
        if isinstance(item, ev.DecisionRecorded):
            s = self._lane(item.lane)
            assert s is not None
            s.outcome, s.reason, s.message = item.outcome, item.reason, item.message
            s.plate, s.holder, s.at, s.gate_ok = item.plate, item.holder_kind, item.at, item.gate_ok
            s.order_id = s.amount_fen = None
            s.reg_url = s.reg_expires = s.reg_plate = None
            s.confirm, s.alert = item.reason == "confirm", ""
            picture = getattr(item, "picture", None)  # when the core carries the read's picture on the event
            if picture:
                s.picture, s.read_plate = picture, item.plate
            elif item.plate is not None and item.plate != s.read_plate:
                # the last read shown was another car's (this decision came without a device read: a direct
                # call, the attendant's entry): do not show its picture or confidence with this plate
                s.picture = s.read_at = s.confidence = None
                s.read_raw, s.read_device, s.read_plate = "", "", None
            s.history.appendleft((item.at, item.plate or "—", item.message, item.outcome))
            self._touch(s)
            self._note(item.at, f"{self._name(item.lane)} {item.message}", item.outcome)
            return
        if isinstance(item, ev.VisitorRegistrationRequired):
            s = self._lane(item.lane)
            assert s is not None
            s.reg_url, s.reg_expires, s.reg_plate = item.url, item.expires_at, item.plate
            self._touch(s)
            return
        if isinstance(item, ev.ReadNeedsConfirmation):
            s = self._lane(item.lane)
            assert s is not None
            s.confirm, s.confidence, s.read_raw = True, item.confidence, item.raw_text
            if item.picture:
                s.picture = item.picture
            self._touch(s)
            return
        if isinstance(item, ev.PaymentRequired):
            s = self._lane(item.lane)
            if s is not None:
                s.order_id, s.amount_fen = item.order_id, item.amount_fen
                self._touch(s)
            self.stays = True
            return
        if isinstance(item, ev.PaymentSucceeded):
            for s in self.lanes.values():
                if s.order_id == item.order_id:
                    s.order_id = s.amount_fen = None
                    self._touch(s)
            self.stays = self.stats = True
            self._note(item.at, f"收到缴费 ¥{item.amount_fen / 100:.2f}（{_channel(item.channel)}）", "open")
            return
        if isinstance(item, (ev.VehicleEntered, ev.VehicleExited)):
            self.occupancy = self.stays = self.stats = True
            return
        if isinstance(item, ev.LotFull):
            self.full, self.full_changed, self.occupancy = True, True, True
            self._note(item.at, f"车库已满（{item.occupied}/{item.capacity}）", "refuse")
            return
        if isinstance(item, ev.LotAvailable):
            self.full, self.full_changed, self.occupancy = False, True, True
            self._note(item.at, f"车库有空位（{item.occupied}/{item.capacity}）", "open")
            return
        if isinstance(item, (ev.DeviceOffline, ev.DeviceOnline)):
            online = isinstance(item, ev.DeviceOnline)
            self.devices[item.device] = (item.kind, online, getattr(item, "detail", ""))
            self.devices_changed = True
            self._note(item.at, f"设备 {item.device} " + ("恢复在线" if online else f"离线 {getattr(item, 'detail', '')}"),
                       "open" if online else "refuse")
            return
        if isinstance(item, ev.GateFailed):
            s = self._lane(item.lane)
            assert s is not None
            s.alert = "道闸无响应，请检查道闸或手动抬杆"
            self._touch(s)
            self._note(item.at, f"{self._name(item.lane)} 道闸无响应", "refuse")
            return
        if isinstance(item, (ev.Anomaly, ev.EntryRefused, ev.PlateBlockedAlarm)):
            s = self._lane(item.lane)
            text = getattr(item, "message", "") or _refusal(item)
            if s is not None and text and not s.alert and text not in s.message:
                s.alert = text
                self._touch(s)
            if isinstance(item, ev.PlateBlockedAlarm):
                self._note(item.at, f"{self._name(item.lane)} 禁止通行车辆 {item.plate}：{item.reason}", "refuse")
            return
        if isinstance(item, ev.ManualOpen):
            return  # its DecisionRecorded says it
        if isinstance(item, (ev.AnnouncementPublished, ev.AnnouncementDeleted)):
            self.announcements = True
            return
        if isinstance(item, (ev.OwnerRegistered, ev.OwnerDeleted, ev.VisitorRegistered, ev.VisitorDeleted,
                             ev.PlateChanged, ev.PhoneChanged)):
            self.people = True
            return
        if isinstance(item, ev.BalanceChanged):
            self.balances = self.people = True
            return


def _channel(channel: str) -> str:
    return {"cash": "现金", "wechat": "微信支付", "alipay": "支付宝", "balance": "余额"}.get(channel, channel)


def _refusal(item: Any) -> str:
    if isinstance(item, ev.EntryRefused):
        return "车库已满，外来车辆暂停入场" if item.reason == "lot_full" else f"拒绝入场：{item.reason}"
    return ""
