"""The composition root: ``bootstrap(config, overrides=...) -> App``.

A dependency-injector container builds everything: the clock, the data key ring,
the enabled adapters (through :class:`smartpark.plugins.Plugins`), the message
bus and the services. The core never sees the container, pluggy or
``plugins.toml``; it receives port instances. Tests pass ``overrides`` (fakes)
for any provider by name: ``clock``, ``store``, ``keyring``, ``plugins``, ...
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
from dependency_injector import containers, providers

from .config import AppConfig, config_from_mapping, load_config
from .core.bus import MessageBus
from .core.clock import SystemClock
from .core.delivery import DeliveryPolicy, OutboxWorker, parse_quiet_hours
from .core.errors import ConfigError
from .core.gate import GateRules, Lane, ParkingService, RegistrationLinks
from .core.notify import Attendant, NotificationPlanner, NotificationService, NotifyPolicy
from .core.owner_login import OwnerLoginService
from .core.payservice import PaymentService, PaymentSettings
from .core.receipts import ReceiptService
from .core.services import AnnouncementService, AuditService, BalanceService, ResidentService
from .core.tariff import TariffSet
from .plugins import Plugins
from .security import KeyRing

log = logging.getLogger(__name__)


@attrs.frozen
class PluginContext:
    """What an adapter factory receives besides its own validated settings."""

    data_dir: Path
    keyring: KeyRing
    clock: Any
    config: AppConfig

    @property
    def timezone(self) -> ZoneInfo:
        return ZoneInfo(self.config.lot.timezone)


def _enabled_configs(plugins: Plugins, config: AppConfig) -> dict[str, Any]:
    return plugins.check_enabled(config.plugins.enabled, config.plugins.configured())


#: Per kind, the method that releases an adapter's resources.
_RELEASE = {"store": "close", "gate": "shutdown", "recognizer": "stop", "sensor": "stop", "notifier": "close"}


def _build_kind(plugins: Plugins, enabled: dict[str, Any], context: PluginContext, closers: list,
                kind: str) -> dict[str, Any]:
    built = {name: plugins.build(name, cfg, context) for name, cfg in enabled.items()
             if plugins.available()[name].kind == kind}
    closers.extend(getattr(a, _RELEASE.get(kind, ""), None) for a in built.values())
    return built


def _build_store(plugins: Plugins, enabled: dict[str, Any], context: PluginContext, closers: list) -> Any:
    stores = [n for n in enabled if plugins.available()[n].kind == "store"]
    if len(stores) != 1:
        offered = ", ".join(sorted(plugins.of_kind("store"))) or "(none)"
        raise ConfigError(
            f"必须且只能启用一个存储插件（当前：{', '.join(stores) or '无'}；可用：{offered}）",
            f"exactly one store plugin must be enabled (enabled: {stores or 'none'}; available: {offered})",
        )
    store = plugins.build(stores[0], enabled[stores[0]], context)
    closers.append(store.close)
    store.migrate()
    return store


def _gate_rules(c: AppConfig) -> GateRules:
    g = c.gate
    return GateRules(
        capacity=c.lot.capacity,
        lanes=tuple(Lane(id=lane.id, name=lane.name, direction=lane.direction) for lane in c.lot.lanes),
        min_confidence=g.min_confidence, owners_enter_when_full=g.owners_enter_when_full,
        owner_short_balance=g.owner_short_balance, repeat_window=timedelta(seconds=g.repeat_window_seconds),
        registration_ttl=timedelta(minutes=g.registration_ttl_minutes), public_url=g.public_url,
        unpaid_order_ttl=timedelta(minutes=g.unpaid_order_ttl_minutes),
    )


def _payment_settings(c: AppConfig) -> PaymentSettings:
    return PaymentSettings(public_url=c.gate.public_url, timezone=c.lot.timezone)


def _tariffs(c: AppConfig) -> TariffSet:
    try:
        return TariffSet.from_config(c.tariff, timezone=c.lot.timezone)
    except ValueError as e:
        zh, en = getattr(e, "zh", str(e)), getattr(e, "en", str(e))
        raise ConfigError(f"[tariff] 设置有误：{zh}", f"invalid [tariff] settings: {en}") from None


def _links(keyring: KeyRing, rules: GateRules) -> RegistrationLinks:
    key = keyring.purpose_key(b"smartpark registration links v1")
    return RegistrationLinks(key, rules.public_url, rules.registration_ttl)


def _receipts(store: Any, clock: Any, keyring: KeyRing, c: AppConfig) -> ReceiptService:
    """Receipt verification codes: an HMAC key of their own, derived like the links' key (never the data key)."""
    key = keyring.purpose_key(b"smartpark receipts v1")
    return ReceiptService(store, clock, key, c.lot.name, c.gate.public_url, timezone=c.lot.timezone)


def _owner_login(store: Any, clock: Any, keyring: KeyRing, policy: NotifyPolicy) -> OwnerLoginService:
    """The owners' page sign-in (SMS codes, sessions): an HMAC key of its own, derived like the receipts' key."""
    key = keyring.purpose_key(b"smartpark owner login v1")
    return OwnerLoginService(store, clock, key, policy)


def _notifier_channels(notifiers: Any) -> frozenset[str] | None:
    """The channels of the enabled notifiers (built on first use); None when they cannot be built."""
    try:
        return frozenset(getattr(n, "channel", "") for n in notifiers().values()) - {""}
    except Exception:  # noqa: BLE001 - a broken notifier setting must not fail the use case that queues a message
        log.exception("could not build the notifiers; notifications are queued on every channel")
        return None


def _notify_policy(c: AppConfig, tariffs: TariffSet, notifiers: Any) -> NotifyPolicy:
    n, visitor = c.notifications, tariffs.visitor
    return NotifyPolicy(
        enabled=n.enabled, prefer=n.prefer, overtime_lead=timedelta(minutes=n.overtime_lead_minutes),
        max_stay=timedelta(minutes=n.max_stay_minutes) if n.max_stay_minutes else None,
        free_minutes=None if visitor.is_free else visitor.free_minutes, low_balance_fen=n.low_balance_fen,
        attendants=tuple(Attendant(name=a.name, phone=a.phone, openid=a.openid) for a in n.attendants),
        public_url=c.gate.public_url, lot_name=c.lot.name, capacity=c.lot.capacity,
        timezone=ZoneInfo(c.lot.timezone), templates=dict(n.templates), channels=_notifier_channels(notifiers),
    )


def _receipt_link(receipts: ReceiptService) -> Any:
    """``(uow, order_id) -> (url, code)`` for the payment-success message, inside the payment's transaction."""

    def link(uow: Any, order_id: str) -> tuple[str, str]:
        receipt = receipts.for_order_in(uow, order_id)
        return receipt.verify_url, receipt.code

    return link


def _subscribe_notifications(container: Container) -> None:
    """Subscribe the planner's transactional handlers on the bus. The planner (and the notifiers, for their
    channels) is built on the first event, not here: bootstrapping stays free of adapter side effects."""
    if not container.config().notifications.enabled:
        return

    def handle(uow: Any, event: Any) -> None:
        container.notification_planner().handle(uow, event)

    for event_type in NotificationPlanner.EVENT_TYPES:
        container.bus().subscribe_in_transaction(event_type, handle)


def _delivery_policy(c: AppConfig, notifiers: dict[str, Any]) -> DeliveryPolicy:
    """How the outbox worker delivers: ``[notifications]`` settings; the claim lease outlasts the slowest send."""
    n = c.notifications
    slowest = max((float(getattr(x, "timeout_seconds", 10.0)) for x in notifiers.values()), default=10.0)
    return DeliveryPolicy(
        quiet_hours=parse_quiet_hours(n.quiet_hours), timezone=ZoneInfo(c.lot.timezone),
        rate_limit_per_hour=n.rate_limit_per_hour, fallback_to_sms=n.fallback_to_sms,
        lease=timedelta(seconds=2 * slowest + 5),
    )


def _gate_lookup(gates: dict[str, Any]) -> Any:
    """lane id -> the enabled gate adapter that serves it."""
    by_lane = {lane: gate for gate in gates.values() for lane in gate.lanes()}
    return by_lane.get


def _make_dir(path: Path) -> Path:
    """The data folder holds the key file and the database: only its owner may enter it."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


class Container(containers.DeclarativeContainer):
    config = providers.Dependency(instance_of=AppConfig)
    data_dir = providers.Singleton(lambda c: _make_dir(c.data_dir), config)
    clock = providers.Singleton(SystemClock)
    keyring = providers.Singleton(lambda c, _d: KeyRing.from_env_or_file(c.key_file), config, data_dir)
    plugins = providers.Singleton(Plugins)
    enabled = providers.Singleton(_enabled_configs, plugins, config)
    context = providers.Singleton(PluginContext, data_dir=data_dir, keyring=keyring, clock=clock, config=config)
    #: release callbacks of every adapter built from a plugin, run by App.close in reverse order
    closers = providers.Singleton(list)
    store = providers.Singleton(_build_store, plugins, enabled, context, closers)
    gates = providers.Singleton(_build_kind, plugins, enabled, context, closers, "gate")
    recognizers = providers.Singleton(_build_kind, plugins, enabled, context, closers, "recognizer")
    sensors = providers.Singleton(_build_kind, plugins, enabled, context, closers, "sensor")
    payment_channels = providers.Singleton(_build_kind, plugins, enabled, context, closers, "payment")
    notifiers = providers.Singleton(_build_kind, plugins, enabled, context, closers, "notifier")
    frontends = providers.Singleton(_build_kind, plugins, enabled, context, closers, "frontend")
    bus = providers.Singleton(MessageBus)
    residents = providers.Singleton(
        ResidentService, store, clock, bus,
        visitor_valid_for=providers.Callable(lambda c: timedelta(days=c.privacy.visitor_valid_days), config),
        visitor_retention=providers.Callable(lambda c: timedelta(days=c.privacy.visitor_retention_days), config),
    )
    announcements = providers.Singleton(AnnouncementService, store, clock, bus)
    balances = providers.Singleton(BalanceService, store, clock, bus)
    audit = providers.Singleton(AuditService, store, clock, bus)
    gate_rules = providers.Singleton(_gate_rules, config)
    tariffs = providers.Singleton(_tariffs, config)
    links = providers.Singleton(_links, keyring, gate_rules)
    receipts = providers.Singleton(_receipts, store, clock, keyring, config)
    gate_lookup = providers.Singleton(_gate_lookup, gates)
    notify_policy = providers.Singleton(_notify_policy, config, tariffs, notifiers.provider)
    notification_planner = providers.Singleton(NotificationPlanner, clock=clock, policy=notify_policy,
                                               receipt_link=providers.Singleton(_receipt_link, receipts))
    notifications = providers.Singleton(NotificationService, store, clock, notification_planner)
    owner_login = providers.Singleton(_owner_login, store, clock, keyring, notify_policy)
    delivery_policy = providers.Singleton(_delivery_policy, config, notifiers)
    outbox_worker = providers.Singleton(OutboxWorker, store, clock, notifiers, delivery_policy)
    parking = providers.Singleton(ParkingService, store, clock, bus, rules=gate_rules, tariffs=tariffs,
                                  gates=gate_lookup, links=links, residents=residents)
    payment_settings = providers.Singleton(_payment_settings, config)
    payments = providers.Singleton(PaymentService, store, clock, bus, parking=parking, channels=payment_channels,
                                   settings=payment_settings)


@attrs.define
class App:
    """Everything a driving adapter (CLI, service, booth UI) needs, built once."""

    container: Container

    config = property(lambda self: self.container.config())
    clock = property(lambda self: self.container.clock())
    keyring = property(lambda self: self.container.keyring())
    plugins = property(lambda self: self.container.plugins())
    store = property(lambda self: self.container.store())
    bus = property(lambda self: self.container.bus())
    residents = property(lambda self: self.container.residents())
    announcements = property(lambda self: self.container.announcements())
    balances = property(lambda self: self.container.balances())
    audit = property(lambda self: self.container.audit())
    parking = property(lambda self: self.container.parking())
    payments = property(lambda self: self.container.payments())
    notifications = property(lambda self: self.container.notifications())
    outbox_worker = property(lambda self: self.container.outbox_worker())
    receipts = property(lambda self: self.container.receipts())
    owner_login = property(lambda self: self.container.owner_login())
    tariffs = property(lambda self: self.container.tariffs())
    gates = property(lambda self: self.container.gates())
    recognizers = property(lambda self: self.container.recognizers())
    sensors = property(lambda self: self.container.sensors())
    payment_channels = property(lambda self: self.container.payment_channels())
    notifiers = property(lambda self: self.container.notifiers())
    frontends = property(lambda self: self.container.frontends())

    @property
    def timezone(self) -> ZoneInfo:
        return ZoneInfo(self.config.lot.timezone)

    def close(self) -> None:
        """Release every adapter built from a plugin, newest first (overrides belong to the caller)."""
        closers = self.container.closers()
        while closers:
            _quietly(closers.pop())

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _quietly(fn: Any) -> None:
    if fn is None:
        return
    try:
        fn()
    except Exception:  # noqa: BLE001 - shutting down: keep closing the rest
        log.exception("error while closing %r", fn)


def bootstrap(config: AppConfig | Mapping[str, Any] | str | Path | None = None, *,
              overrides: Mapping[str, Any] | None = None) -> App:
    """Build the application from a config (object, mapping, or path to plugins.toml).

    ``overrides`` replaces providers by name with ready instances, e.g.
    ``bootstrap(cfg, overrides={"store": InMemoryStore(), "clock": FakeClock()})``.
    """
    if isinstance(config, AppConfig):
        cfg = config
    elif isinstance(config, Mapping):
        cfg = config_from_mapping(dict(config))
    else:
        cfg = load_config(config)
    container = Container(config=cfg)
    for name, instance in (overrides or {}).items():
        provider = getattr(container, name, None)
        if not isinstance(provider, providers.Provider):
            known = ", ".join(sorted(container.providers))
            raise ConfigError(f"无法覆盖未知组件 {name}", f"cannot override unknown provider {name!r}; known: {known}")
        provider.override(providers.Object(instance))
    _subscribe_notifications(container)
    return App(container)
