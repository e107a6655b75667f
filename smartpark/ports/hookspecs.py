"""The pluggy hook specifications of smartpark: one ``register_*`` hook per port.

A plugin (an in-repo adapter or a third-party package) is a module named by an
entry point in the ``smartpark`` group. It implements any of these hooks with
``@smartpark.hookimpl`` and calls ``register.add(name, factory, config_model)``:

* ``name`` is what ``plugins.toml`` enables (``[plugins] enabled = ["name"]``)
  and where its settings go (``[plugins.name]``);
* ``config_model`` is a pydantic model (``extra="forbid"``) that validates those
  settings;
* ``factory(config, context)`` builds the adapter from the validated settings and a
  :class:`PluginContext` (clock, data folder, lot settings) when the plugin is enabled.

Installing a plugin never enables it: ``plugins.toml`` is an allow-list.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import pluggy

PROJECT = "smartpark"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


class Register(Protocol):
    """What a ``register_*`` hook receives."""

    def add(self, name: str, factory: Callable[[Any, Any], Any], config_model: type | None = None, *,
            description: str = "") -> None:
        """Offer an adapter under ``name``; ``factory(config, context)`` builds it when enabled."""
        ...


@hookspec
def register_recognizers(register: Register) -> None:
    """Offer plate recognizers (ANPR camera integrations) -> ``smartpark.ports.Recognizer``."""


@hookspec
def register_gates(register: Register) -> None:
    """Offer barrier gate controllers -> ``smartpark.ports.Gate``."""


@hookspec
def register_sensors(register: Register) -> None:
    """Offer parking-space occupancy sensors -> ``smartpark.ports.SpaceSensor``."""


@hookspec
def register_payment_channels(register: Register) -> None:
    """Offer online payment channels -> ``smartpark.ports.PaymentChannel``."""


@hookspec
def register_notifiers(register: Register) -> None:
    """Offer message channels (SMS, WeChat, ...) -> ``smartpark.ports.Notifier``."""


@hookspec
def register_stores(register: Register) -> None:
    """Offer storage back ends -> ``smartpark.ports.Store``. Exactly one store is enabled."""


@hookspec
def register_frontends(register: Register) -> None:
    """Offer driving adapters (booth UI, headless service): ``factory(config, context)`` returns an
    object with ``run(app)``, started by ``smartpark ui`` / ``smartpark serve``."""


#: hook name -> (port kind, what the kind is called in listings)
KINDS: dict[str, str] = {
    "register_recognizers": "recognizer",
    "register_gates": "gate",
    "register_sensors": "sensor",
    "register_payment_channels": "payment",
    "register_notifiers": "notifier",
    "register_stores": "store",
    "register_frontends": "frontend",
}
