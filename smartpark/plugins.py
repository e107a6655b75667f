"""The plugin manager: a small typed facade over pluggy.

Nothing else in smartpark touches ``pm.hook``. Plugins are modules named by
entry points in the ``smartpark`` group (in-repo adapters are declared exactly
like third-party ones) or registered directly (tests). Each offers adapters
through the ``register_*`` hooks of :mod:`smartpark.ports.hookspecs`.

Installed does not mean enabled: :meth:`Plugins.build` instantiates only what
``plugins.toml`` lists in ``[plugins] enabled``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib.metadata import entry_points
from types import ModuleType
from typing import Any

import attrs
import pluggy
from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from .config import describe_errors, redact
from .core.errors import ConfigError
from .ports import hookspecs

log = logging.getLogger(__name__)
ENTRY_POINT_GROUP = "smartpark"


@attrs.frozen
class PluginSpec:
    """One adapter a plugin offers."""

    name: str
    kind: str  # "store", "gate", ...
    factory: Callable[[Any, Any], Any]
    config_model: type[BaseModel] | None
    description: str
    provider: str  # the entry point (or module) that registered it


class _Register:
    """The typed ``register`` object handed to each ``register_*`` hook call."""

    def __init__(self, kind: str, provider: str, sink: dict[str, PluginSpec]) -> None:
        self._kind, self._provider, self._sink = kind, provider, sink

    def add(self, name: str, factory: Callable[[Any, Any], Any], config_model: type | None = None, *,
            description: str = "") -> None:
        if not name or not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"插件名称无效：{name!r}", f"invalid plugin name {name!r} from {self._provider}")
        if name in self._sink:
            other = self._sink[name].provider
            raise ConfigError(f"插件名称重复：{name}", f"plugin name {name!r} is offered by both {other} and {self._provider}")
        if config_model is not None and not (isinstance(config_model, type) and issubclass(config_model, BaseModel)):
            raise ConfigError(f"插件 {name} 的配置模型无效", f"plugin {name}: config_model must be a pydantic model")
        self._sink[name] = PluginSpec(name, self._kind, factory, config_model, description, self._provider)


class Plugins:
    """Loads plugins, lists what they offer, validates settings and builds enabled adapters."""

    def __init__(self, *, load_entry_points: bool = True, extra: tuple[ModuleType | object, ...] = ()) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)
        self.broken: dict[str, str] = {}  # entry point name -> why it failed to load
        if load_entry_points:
            for ep in entry_points(group=ENTRY_POINT_GROUP):
                if self._pm.get_plugin(ep.name) is not None:
                    continue
                try:
                    self._pm.register(ep.load(), name=ep.name)
                except Exception as e:  # noqa: BLE001 - a broken plugin must not stop the others
                    self.broken[ep.name] = f"{type(e).__name__}: {e}"
                    log.warning("plugin %s failed to load: %s", ep.name, e)
        for plugin in extra:
            self._pm.register(plugin)
        try:
            self._pm.check_pending()
        except pluggy.PluginValidationError as e:
            raise ConfigError(f"插件实现了不存在的钩子：{e}", f"a plugin implements an unknown hook: {e}") from None
        self._specs = self._collect()

    def _collect(self) -> dict[str, PluginSpec]:
        specs: dict[str, PluginSpec] = {}
        for hook_name, kind in hookspecs.KINDS.items():
            caller = getattr(self._pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                provider = self._pm.get_name(impl.plugin) or getattr(impl.plugin, "__name__", repr(impl.plugin))
                impl.function(register=_Register(kind, provider, specs))
        return specs

    # -- listing -------------------------------------------------------------------------------------
    def available(self) -> dict[str, PluginSpec]:
        return dict(self._specs)

    def of_kind(self, kind: str) -> dict[str, PluginSpec]:
        return {n: s for n, s in self._specs.items() if s.kind == kind}

    def listing(self, enabled: list[str], settings: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
        """Rows for ``smartpark plugins``: every installed adapter, whether enabled, redacted settings."""
        rows = [
            {"name": s.name, "kind": s.kind, "enabled": s.name in enabled, "provider": s.provider,
             "description": s.description, "settings": redact(settings.get(s.name, {}))}
            for s in sorted(self._specs.values(), key=lambda s: (s.kind, s.name))
        ]
        rows += [{"name": n, "kind": "?", "enabled": n in enabled, "provider": n, "description": f"加载失败 / failed: {why}",
                  "settings": {}} for n, why in sorted(self.broken.items())]
        return rows

    # -- enabling ------------------------------------------------------------------------------------
    def check_enabled(self, enabled: list[str], settings: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """Validate the allow-list and each enabled plugin's settings; returns name -> validated config."""
        unknown = [n for n in enabled if n not in self._specs]
        if unknown:
            names = ", ".join(sorted(self._specs)) or "(none)"
            broken = "".join(f"\n  {n}: {why}" for n, why in self.broken.items() if n in unknown)
            raise ConfigError(
                f"未知的插件：{', '.join(unknown)}。可用的插件：{names}{broken}",
                f"unknown plugin(s) enabled in plugins.toml: {', '.join(unknown)}; available: {names}{broken}",
            )
        dupes = {n for n in enabled if enabled.count(n) > 1}
        if dupes:
            raise ConfigError(f"插件重复启用：{', '.join(sorted(dupes))}", f"enabled twice: {', '.join(sorted(dupes))}")
        return {n: self.validate_settings(n, settings.get(n, {})) for n in enabled}

    def validate_settings(self, name: str, raw: dict[str, Any]) -> Any:
        spec = self._specs[name]
        if spec.config_model is None:
            if raw:
                raise ConfigError(f"插件 {name} 不接受任何设置", f"plugin {name} takes no settings (got {sorted(raw)})")
            return None
        try:
            return spec.config_model.model_validate(raw)
        except PydanticValidationError as e:
            detail = describe_errors(e, prefix=f"plugins.{name}")
            raise ConfigError(f"插件 {name} 的设置有误：\n{detail}", f"plugin {name}: invalid settings:\n{detail}") from None

    def build(self, name: str, config: Any, context: Any) -> Any:
        spec = self._specs[name]
        try:
            return spec.factory(config, context)
        except ConfigError:
            raise
        except ImportError as e:
            raise ConfigError(
                f"插件 {name} 缺少依赖：{e.name or e}。请安装对应的扩展（例如 pip install 'smartpark[...]'）",
                f"plugin {name} needs a package that is not installed: {e}",
            ) from e
