"""The booth's inbox: everything that reaches the Tk main thread from other threads, in one bounded queue.

Three kinds of items arrive, from any thread:

* domain events from the :class:`~smartpark.core.bus.MessageBus` (the bus calls :meth:`Inbox.put` on the
  publisher's thread: a camera's receive thread, an HTTP worker, the booth's own task threads);
* plate reads seen by the device runtime (for the lane's picture), through :class:`ObservingSink`;
* the results of the booth's background tasks (:class:`TaskRunner`: gate actions must not freeze the window).

Nothing here touches Tk. :meth:`Inbox.put` appends under a lock and, when the queue was idle, writes one byte to a
pipe whose read end the Tk main loop watches (``createfilehandler``), so the window wakes within a millisecond
instead of waiting for its next ``after`` poll; the poll still runs as a fallback (and is the only way on
platforms without file handlers). The queue is bounded: past ``maxsize`` the oldest items are dropped and
:attr:`Inbox.dropped` counts them (the window then reloads its state from the services).

Each item is stamped with ``time.perf_counter()`` when queued, so the window can record how long an event
waited before it was drained (:class:`Metrics`).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import attrs

from smartpark.core import events as ev

log = logging.getLogger(__name__)

#: The domain events the booth reacts to.
UI_EVENT_TYPES: tuple[type[ev.Event], ...] = ev.ATTENDANT_EVENTS + (
    ev.AnnouncementPublished,
    ev.AnnouncementDeleted,
    ev.OwnerRegistered,
    ev.OwnerDeleted,
    ev.VisitorRegistered,
    ev.VisitorDeleted,
    ev.BalanceChanged,
    ev.PlateChanged,
    ev.PhoneChanged,
)


@attrs.frozen
class ReadSeen:
    """A plate read as a device delivered it (for the lane's picture and raw text)."""

    read: Any


@attrs.frozen
class TaskDone:
    """A background task finished; its callbacks run on the Tk main thread."""

    future: Future
    on_ok: Callable[[Any], None] | None
    on_error: Callable[[BaseException], None] | None


class Inbox:
    """A bounded, thread-safe queue of ``(queued_at, item)`` with a wake-up pipe."""

    def __init__(self, bus: Any = None, *, types: Iterable[type] = UI_EVENT_TYPES, maxsize: int = 50_000) -> None:
        self._bus = bus
        self._types = tuple(types)
        self._queue: collections.deque[tuple[float, Any]] = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self.maxsize = maxsize
        self.dropped = 0
        self.received = 0
        self.closed = False
        self._r, self._w = os.pipe()
        os.set_blocking(self._r, False)
        os.set_blocking(self._w, False)
        self._attached = False

    # -- life cycle ----------------------------------------------------------------------------------
    def start(self) -> Inbox:
        if self._bus is not None and not self._attached:
            for t in self._types:
                self._bus.subscribe(t, self.put)
            self._attached = True
        return self

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._attached and self._bus is not None:
            for t in self._types:
                try:
                    self._bus.unsubscribe(t, self.put)
                except Exception:  # noqa: BLE001 - shutting down
                    log.debug("unsubscribe failed", exc_info=True)
            self._attached = False
        for fd in (self._r, self._w):
            try:
                os.close(fd)
            except OSError:
                pass

    # -- any thread ----------------------------------------------------------------------------------
    def put(self, item: Any) -> None:
        """Queue ``item`` (an event, a :class:`ReadSeen`, a :class:`TaskDone`); never blocks the caller."""
        stamp = time.perf_counter()
        with self._lock:
            if self.closed:
                return
            if len(self._queue) >= self.maxsize:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((stamp, item))
            self.received += 1
            wake = not self._wake_pending
            self._wake_pending = True
        if wake:
            try:
                os.write(self._w, b"!")
            except (BlockingIOError, OSError):  # a full pipe already means "wake up"; a closed one: shutting down
                pass

    # -- the Tk main thread ------------------------------------------------------------------------------
    def fileno(self) -> int:
        """The read end of the wake-up pipe (readable when items arrived after the queue was drained)."""
        return self._r

    def clear_wake(self) -> None:
        try:
            while os.read(self._r, 4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def take(self, limit: int) -> list[tuple[float, Any]]:
        """Up to ``limit`` items, oldest first, without waiting."""
        with self._lock:
            n = min(limit, len(self._queue))
            items = [self._queue.popleft() for _ in range(n)]
            if not self._queue:
                self._wake_pending = False
            return items

    def __len__(self) -> int:
        with self._lock:
            return len(self._queue)


class ObservingSink:
    """Wraps the device runtime's sink: every plate read is shown to the booth, then handled as before."""

    def __init__(self, inner: Any, inbox: Inbox) -> None:
        self._inner = inner
        self._inbox = inbox

    def plate_read(self, read: Any) -> None:
        self._inbox.put(ReadSeen(read))
        self._inner.plate_read(read)

    def __getattr__(self, name: str) -> Any:  # device_health, space_reading, lane_lock, ...
        return getattr(self._inner, name)


class TaskRunner:
    """Runs slow calls (gate commands) off the Tk thread; results come back through the inbox."""

    def __init__(self, inbox: Inbox, workers: int = 3) -> None:
        self._inbox = inbox
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="booth-task")
        self.pending = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], Any], on_ok: Callable[[Any], None] | None = None,
               on_error: Callable[[BaseException], None] | None = None) -> Future:
        with self._lock:
            self.pending += 1
        future = self._pool.submit(fn)
        future.add_done_callback(lambda f: self._done(f, on_ok, on_error))
        return future

    def _done(self, future: Future, on_ok: Any, on_error: Any) -> None:
        with self._lock:
            self.pending -= 1
        self._inbox.put(TaskDone(future, on_ok, on_error))

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


class Metrics:
    """How fast the window drains its inbox: per-event latency (queued → applied) and per-tick work."""

    def __init__(self, keep: int = 100_000) -> None:
        self.latencies_ms: collections.deque[float] = collections.deque(maxlen=keep)
        self.tick_ms: collections.deque[float] = collections.deque(maxlen=keep)
        self.tick_sizes: collections.deque[int] = collections.deque(maxlen=keep)
        self.events = 0

    def reset(self) -> None:
        self.latencies_ms.clear()
        self.tick_ms.clear()
        self.tick_sizes.clear()
        self.events = 0

    def record(self, stamps: list[float], started: float, finished: float) -> None:
        self.tick_ms.append((finished - started) * 1000)
        self.tick_sizes.append(len(stamps))
        self.latencies_ms.extend((finished - s) * 1000 for s in stamps)
        self.events += len(stamps)

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] if lat else 0.0

        return {"events": float(self.events), "ticks": float(len(self.tick_ms)),
                "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99), "max_ms": lat[-1] if lat else 0.0,
                "max_tick_ms": max(self.tick_ms, default=0.0), "max_batch": float(max(self.tick_sizes, default=0))}
