"""The in-process event hub: domain events from the bus, fanned out to bounded per-client queues.

The :class:`EventHub` subscribes to the :class:`~smartpark.core.bus.MessageBus` once and hands every event it
carries to each :class:`Subscription` (one per Server-Sent-Events client, one for the booth UI, ...). The bus
calls the hub on the publisher's thread (a device thread, an HTTP worker) right after a use case committed, so
:meth:`EventHub.publish` never blocks: each subscription has a bounded queue and, when a slow client lets it
fill up, the *oldest* event is dropped and :attr:`Subscription.dropped` counts it. A client that sees drops
reloads its state (``GET /api/booth/stays`` ...) instead of trusting its event log.

A subscription is read either by blocking (:meth:`Subscription.get`, for threads such as the Tk poller) or by
draining it after a wake-up callback (:attr:`Subscription.notify`, for the asyncio SSE stream: the callback
does ``loop.call_soon_threadsafe(event.set)``). Every event gets a sequence number; the hub keeps the last
``history`` of them so a client that reconnects with ``Last-Event-ID`` gets what it missed.

:func:`event_to_json` turns an event into JSON-ready data: the class name as ``type``, times in the lot's zone
(ISO 8601 with offset) and, beside every ``*_fen`` amount, a ``*_display`` string such as ``"¥3.00"``. Events
carry masked values only (see :mod:`smartpark.core.events`), so the output is safe to show.
"""

from __future__ import annotations

import collections
import enum
import itertools
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import datetime, tzinfo
from typing import Any

import attrs

from smartpark.core import events as ev
from smartpark.core.values import Money

log = logging.getLogger(__name__)

#: What the booth and the SSE stream receive by default.
DEFAULT_EVENT_TYPES: tuple[type[ev.Event], ...] = ev.ATTENDANT_EVENTS


@attrs.frozen
class Envelope:
    """One event as the hub delivers it: its sequence number (1, 2, ...) and the event."""

    seq: int
    event: ev.Event

    @property
    def type(self) -> str:
        return type(self.event).__name__


class Subscription:
    """One client's bounded queue of :class:`Envelope`; thread-safe."""

    def __init__(self, hub: EventHub, maxsize: int, types: frozenset[type] | None,
                 notify: Callable[[], None] | None) -> None:
        if maxsize < 1:
            raise ValueError("a subscription needs maxsize >= 1")
        self._hub = hub
        self._queue: collections.deque[Envelope] = collections.deque()
        self._cond = threading.Condition()
        self.maxsize = maxsize
        self.types = types
        #: Called (without locks held, on the publisher's thread) after an event was queued or on close.
        self.notify = notify
        #: Events dropped because the queue was full (the oldest go first).
        self.dropped = 0
        self.closed = False

    def wants(self, event: ev.Event) -> bool:
        return self.types is None or isinstance(event, tuple(self.types))

    def _offer(self, envelope: Envelope) -> None:
        with self._cond:
            if self.closed:
                return
            if len(self._queue) >= self.maxsize:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append(envelope)
            self._cond.notify_all()
        self._wake()

    def _wake(self) -> None:
        callback = self.notify
        if callback is not None:
            try:
                callback()
            except Exception:  # noqa: BLE001 - a dead client must not break the publisher
                log.debug("subscription wake-up failed", exc_info=True)

    def get(self, timeout: float | None = None) -> Envelope | None:
        """The next envelope, waiting up to ``timeout`` seconds; ``None`` on timeout or once closed and empty."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._queue or self.closed, timeout=timeout):
                return None
            return self._queue.popleft() if self._queue else None

    def drain(self, limit: int | None = None) -> list[Envelope]:
        """Everything queued now (at most ``limit``), without waiting."""
        with self._cond:
            n = len(self._queue) if limit is None else min(limit, len(self._queue))
            return [self._queue.popleft() for _ in range(n)]

    def __len__(self) -> int:
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Stop receiving; idempotent. Blocked :meth:`get` calls return ``None``."""
        with self._cond:
            if self.closed:
                return
            self.closed = True
            self._cond.notify_all()
        self._hub._forget(self)
        self._wake()

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventHub:
    """Subscribes to the bus and fans events out to :class:`Subscription` queues."""

    def __init__(self, bus: Any, *, types: Iterable[type[ev.Event]] = DEFAULT_EVENT_TYPES,
                 history: int = 200) -> None:
        self._bus = bus
        self._types = tuple(types)
        self._lock = threading.Lock()
        self._subs: list[Subscription] = []
        self._seq = itertools.count(1)
        self._history: collections.deque[Envelope] = collections.deque(maxlen=max(0, history))
        self._attached = False
        self.closed = False
        #: Events published through the hub since it started.
        self.published = 0

    # -- life cycle ----------------------------------------------------------------------------------
    def start(self) -> EventHub:
        """Subscribe to the bus (idempotent)."""
        with self._lock:
            if self._attached:
                return self
            self._attached = True
            self.closed = False
        for t in self._types:
            self._bus.subscribe(t, self.publish)
        return self

    def close(self) -> None:
        """Unsubscribe from the bus and close every subscription (ends SSE streams); idempotent."""
        with self._lock:
            attached, self._attached, self.closed = self._attached, False, True
            subs = list(self._subs)
        if attached:
            for t in self._types:
                self._bus.unsubscribe(t, self.publish)
        for sub in subs:
            sub.close()

    # -- subscribers ---------------------------------------------------------------------------------
    def subscribe(self, *, maxsize: int = 256, types: Iterable[type | str] | None = None,
                  notify: Callable[[], None] | None = None, after: int | None = None) -> Subscription:
        """A new subscription. ``types`` (classes or class names) narrows what it receives; ``after``
        replays the kept history with a sequence number above it (a reconnecting client's Last-Event-ID)."""
        wanted = None if types is None else frozenset(self._resolve(t) for t in types)
        sub = Subscription(self, maxsize, wanted, notify)
        with self._lock:
            if self.closed:
                sub.closed = True
                return sub
            if after is not None:
                for envelope in self._history:
                    if envelope.seq > after and sub.wants(envelope.event):
                        sub._offer(envelope)
            self._subs.append(sub)
        return sub

    def _resolve(self, t: type | str) -> type:
        if isinstance(t, type):
            return t
        for known in self._types:
            if known.__name__ == t:
                return known
        raise ValueError(f"unknown event type {t!r}")

    def _forget(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subs)

    @property
    def type_names(self) -> list[str]:
        return [t.__name__ for t in self._types]

    @property
    def last_seq(self) -> int:
        with self._lock:
            return self._history[-1].seq if self._history else 0

    # -- the bus handler -----------------------------------------------------------------------------
    def publish(self, event: ev.Event) -> None:
        """Queue ``event`` for every interested subscription; never blocks on a client."""
        with self._lock:
            envelope = Envelope(next(self._seq), event)
            self._history.append(envelope)
            self.published += 1
            subs = [s for s in self._subs if s.wants(event)]
        for sub in subs:
            sub._offer(envelope)


# -- JSON -------------------------------------------------------------------------------------------
def to_jsonable(value: Any, tz: tzinfo | None) -> Any:
    """Datetimes in the lot's zone (ISO 8601), enums by value, containers recursively."""
    if isinstance(value, datetime):
        return (value.astimezone(tz) if tz is not None and value.tzinfo is not None else value).isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v, tz) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v, tz) for k, v in value.items()}
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def with_money(data: dict[str, Any]) -> dict[str, Any]:
    """Beside every integer ``*_fen`` field, a ``*_display`` string (``¥3.00``)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        out[k] = v
        if k.endswith("_fen") and isinstance(v, int) and not isinstance(v, bool):
            out[k[:-4] + "_display"] = str(Money(v))
    return out


def event_to_json(event: ev.Event, tz: tzinfo | None = None) -> dict[str, Any]:
    """``{"type": "DecisionRecorded", "at": "...+08:00", ...fields}`` for an attrs event."""
    fields = attrs.asdict(event, recurse=False)
    data = {"type": type(event).__name__, **{k: to_jsonable(v, tz) for k, v in fields.items()}}
    return with_money(data)
