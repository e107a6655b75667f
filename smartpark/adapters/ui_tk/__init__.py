"""The ``ui_tk`` plugin: the attendant booth (值班岗亭), a Tk window run by ``smartpark ui`` (see README.md).

A driving adapter (a *frontend*): :meth:`BoothFrontend.run` opens :class:`~.app.BoothApp` over the in-process
core, connects the device runtime so plate reads arrive live, and returns when the attendant quits.
Importing this module does not import Tk (``smartpark plugins`` works on a machine without it).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from smartpark import hookimpl

__all__ = ["BoothFrontend", "Config", "register_frontends"]

log = logging.getLogger(__name__)


class Config(BaseModel):
    """Settings under ``[plugins.ui_tk]`` in plugins.toml."""

    model_config = ConfigDict(extra="forbid")

    font_size: int = Field(16, ge=14, le=40, description="Base font size in points (readable from a metre away).")
    refresh_ms: int = Field(100, ge=10, le=2000,
                            description="Poll interval of the event queue (events also wake the window at once).")
    start_runtime: bool = Field(True, description="Start the device runtime (cameras, gates, sensors) with the window.")
    fullscreen: bool = Field(False, description="Open full screen (the booth's own monitor).")
    screenshot_dir: Path | None = Field(None, description="Where BoothApp.screenshot() writes booth-<name>.png.")


class BoothFrontend:
    """What the plugin builds: ``run(app, runtime=...)`` shows the booth until the attendant quits."""

    def __init__(self, config: Config | None = None, context: Any = None) -> None:
        self.config = config or Config()
        self.context = context

    def run(self, app: Any, *, runtime: Any = None, actor: str | None = None) -> None:
        """Open the window and run the Tk main loop; then stop the runtime and close the app.

        ``runtime`` is the device runtime (an object with ``dispatcher``, ``start()`` and ``stop()``, such as
        the service's ``Runtime``): the caller builds it because adapters do not import each other.
        """
        from .app import BoothApp

        if runtime is None and self.config.start_runtime:
            log.warning("no device runtime given: the booth shows what the services publish, but no device "
                        "adapter is started")
        booth = BoothApp(app, self.config, runtime=runtime, actor=actor)
        try:
            booth.mainloop()
        finally:
            booth.close()
            app.close()


@hookimpl
def register_frontends(register: Any) -> None:
    register.add("ui_tk", _factory, Config,
                 description="值班岗亭界面（Tk）：车道、业主、访客、缴费、公告、车位 / attendant booth window (Tk)")


def _factory(config: Config, context: Any) -> BoothFrontend:
    return BoothFrontend(config, context)
