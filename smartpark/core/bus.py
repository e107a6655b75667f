"""A small synchronous message bus: services publish events after commit, handlers react.

A failing handler is logged and does not stop the others or undo the use case:
the use case has already committed. Durable reactions (messages, payments) are
written to the store's outbox by their handlers and sent by workers.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable

from .events import Event

log = logging.getLogger(__name__)

Handler = Callable[[Event], None]


class MessageBus:
    def __init__(self) -> None:
        self._handlers: dict[type[Event], list[Handler]] = defaultdict(list)
        self._lock = threading.Lock()

    def subscribe(self, event_type: type[Event], handler: Handler) -> None:
        """Call ``handler`` for every published event of ``event_type`` (or a subclass)."""
        with self._lock:
            self._handlers[event_type].append(handler)

    def unsubscribe(self, event_type: type[Event], handler: Handler) -> None:
        with self._lock:
            if handler in self._handlers.get(event_type, []):
                self._handlers[event_type].remove(handler)

    def publish(self, events: Iterable[Event]) -> None:
        for event in events:
            with self._lock:
                handlers = [h for t, hs in self._handlers.items() if isinstance(event, t) for h in hs]
            for handler in handlers:
                try:
                    handler(event)
                except Exception:  # noqa: BLE001 - a handler's failure must not undo a committed use case
                    log.exception("event handler %r failed for %s", handler, type(event).__name__)
