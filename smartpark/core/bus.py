"""A small synchronous message bus: services publish events after commit, handlers react.

Two kinds of handlers:

* ``subscribe``: called after the use case committed. A failing handler is
  logged and does not stop the others or undo the use case.
* ``subscribe_in_transaction``: called with the use case's unit of work *before*
  it commits (``stage``). Durable reactions (outbox messages) are written here,
  so they commit or roll back with the fact that caused them. A failing
  transactional handler fails the use case: nothing half-done is kept.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from .events import Event

log = logging.getLogger(__name__)

Handler = Callable[[Event], None]
TxHandler = Callable[[Any, Event], None]


class MessageBus:
    def __init__(self) -> None:
        self._handlers: dict[type[Event], list[Handler]] = defaultdict(list)
        self._tx_handlers: dict[type[Event], list[TxHandler]] = defaultdict(list)
        self._lock = threading.Lock()

    def subscribe(self, event_type: type[Event], handler: Handler) -> None:
        """Call ``handler`` for every published event of ``event_type`` (or a subclass)."""
        with self._lock:
            self._handlers[event_type].append(handler)

    def unsubscribe(self, event_type: type[Event], handler: Handler) -> None:
        with self._lock:
            if handler in self._handlers.get(event_type, []):
                self._handlers[event_type].remove(handler)

    def subscribe_in_transaction(self, event_type: type[Event], handler: TxHandler) -> None:
        """Call ``handler(uow, event)`` inside the unit of work that produced the event, before it commits."""
        with self._lock:
            self._tx_handlers[event_type].append(handler)

    def stage(self, uow: Any, events: Iterable[Event]) -> None:
        """Run the transactional handlers for ``events`` in ``uow`` (call just before the block ends)."""
        if not self._tx_handlers:
            return
        for event in events:
            with self._lock:
                handlers = [h for t, hs in self._tx_handlers.items() if isinstance(event, t) for h in hs]
            for handler in handlers:
                handler(uow, event)

    def publish(self, events: Iterable[Event]) -> None:
        for event in events:
            with self._lock:
                handlers = [h for t, hs in self._handlers.items() if isinstance(event, t) for h in hs]
            for handler in handlers:
                try:
                    handler(event)
                except Exception:  # noqa: BLE001 - a handler's failure must not undo a committed use case
                    log.exception("event handler %r failed for %s", handler, type(event).__name__)
