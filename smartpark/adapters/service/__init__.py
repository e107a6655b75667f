"""The ``service`` plugin: the headless service run by ``smartpark serve`` (see README.md).

It is a driving adapter (a *frontend*): :class:`ServiceFrontend.run` starts the :class:`Runtime` (device
adapters, lane dispatcher, jobs), the :class:`EventHub` and the HTTP server (FastAPI on uvicorn): health, the
adapters' HTTP routes (camera push, payment callbacks), the visitor registration page and the attendant API.
:func:`start_in_thread` runs the same server on a free port inside the current process (tests, the demo).
"""

from __future__ import annotations

import contextlib
import gc
import logging
import signal
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from smartpark import hookimpl

from .events import EventHub
from .runtime import Runtime

__all__ = ["Config", "ServiceFrontend", "ServiceHandle", "register_frontends", "start_in_thread"]

log = logging.getLogger(__name__)
MiB = 1024 * 1024


class Config(BaseModel):
    """Settings under ``[plugins.service]`` in plugins.toml."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field("127.0.0.1", min_length=1, description="Address to listen on (0.0.0.0 for every interface).")
    port: int = Field(8080, ge=0, le=65535, description="TCP port; 0 picks a free one.")
    max_body_bytes: int = Field(8 * MiB, ge=1024, le=256 * MiB,
                                description="Largest request body of an adapter route (camera pictures).")
    max_api_body_bytes: int = Field(64 * 1024, ge=1024, le=8 * MiB,
                                    description="Largest request body of the JSON API and the visitor page.")
    event_queue_size: int = Field(256, ge=1, le=100_000,
                                  description="Events kept per event-stream client; beyond it the oldest are dropped.")
    sse_keepalive_seconds: float = Field(15.0, gt=0, le=300, description="Keep-alive comment interval of /events.")
    health_timeout_seconds: float = Field(3.0, gt=0, le=60, description="/healthz answers 503 past this.")
    graceful_timeout_seconds: float = Field(5.0, gt=0, le=120,
                                            description="How long a stop waits for open requests to finish.")
    access_log: bool = Field(False, description="Log every request (visitor-link tokens are redacted).")
    forwarded_allow_ips: str = Field("127.0.0.1", description="Reverse proxies trusted for X-Forwarded-For/-Proto "
                                                              "(comma-separated, or * for any).")


class _Server:
    """Built lazily so that importing the plugin (``smartpark plugins``) does not import uvicorn."""

    @staticmethod
    def make(config: Any, on_shutdown: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            """uvicorn's server, with three changes: it ends open event streams before the graceful shutdown
            waits for connections, it logs where it listens in Chinese and English, and it does not re-raise the
            stop signal afterwards (uvicorn does, which for SIGTERM kills the process before the runtime is
            stopped and the store closed)."""

            stop_signal: int | None = None

            def handle_exit(self, sig: int, frame: Any) -> None:
                self.stop_signal = self.stop_signal or sig
                super().handle_exit(sig, frame)

            @contextlib.contextmanager
            def capture_signals(self) -> Iterator[None]:
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                previous = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

            async def startup(self, sockets: Any = None) -> None:
                await super().startup(sockets=sockets)
                if self.started:
                    url = _url(self)
                    log.info("智慧社区停车场服务已启动：%s（Ctrl-C 停止）/ smartpark service listening on %s", url, url)

            async def shutdown(self, sockets: Any = None) -> None:
                log.info("正在停止服务… / stopping the service")
                on_shutdown()
                await super().shutdown(sockets=sockets)

        return Server(config)


def _url(server: Any) -> str:
    for s in getattr(server, "servers", []):
        for sock in getattr(s, "sockets", []) or []:
            host, port = sock.getsockname()[:2]
            return f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    cfg = server.config
    return f"http://{cfg.host}:{cfg.port}"


def _settings(config: Config) -> Any:
    from .http import Settings

    return Settings(**config.model_dump())


def _uvicorn_config(api: Any, config: Config, *, host: str, port: int) -> Any:
    import uvicorn

    if config.access_log:
        from .http import RedactVisitorLinks

        access = logging.getLogger("uvicorn.access")
        if not any(isinstance(f, RedactVisitorLinks) for f in access.filters):
            access.addFilter(RedactVisitorLinks())
    return uvicorn.Config(api, host=host, port=port, log_config=None, access_log=config.access_log,
                          proxy_headers=True, forwarded_allow_ips=config.forwarded_allow_ips,
                          timeout_graceful_shutdown=config.graceful_timeout_seconds, server_header=False,
                          lifespan="off", ws="none")


class ServiceFrontend:
    """What the plugin builds: ``run(app)`` serves until SIGTERM/SIGINT, then stops everything cleanly."""

    def __init__(self, config: Config | None = None, context: Any = None) -> None:
        self.config = config or Config()
        self.context = context
        #: The signal that stopped the last :meth:`run` (``None`` when it stopped otherwise).
        self.stop_signal: int | None = None

    def run(self, app: Any, *, host: str | None = None, port: int | None = None) -> int | None:
        """Serve until stopped; then the graceful HTTP shutdown, ``Runtime.stop()`` and ``app.close()``.

        Returns the signal number that stopped it, if any.
        """
        from .http import create_api

        hub = EventHub(app.bus).start()
        runtime = Runtime(app)
        try:
            runtime.start()
            api = create_api(app, runtime, hub, _settings(self.config))
            # Everything built so far lives as long as the process: move it out of the collector's way, so a
            # full collection (tens of ms over the start-up heap) does not land inside a gate decision.
            gc.collect()
            gc.freeze()
            server = _Server.make(_uvicorn_config(api, self.config, host=host or self.config.host,
                                                  port=self.config.port if port is None else port), hub.close)
            try:
                server.run()
            except SystemExit:  # uvicorn exits when it cannot bind; say why, with the CLI's exit code
                server.started = False
            self.stop_signal = server.stop_signal
            if not server.started and server.stop_signal is None:
                from smartpark.core.errors import ConfigError

                where = f"{host or self.config.host}:{self.config.port if port is None else port}"
                raise ConfigError(f"HTTP 服务无法在 {where} 启动（端口被占用或无权限？）",
                                  f"the HTTP server could not start on {where} (port in use or not permitted?)")
        finally:
            hub.close()
            runtime.stop()
            app.close()
            log.info("服务已停止 / the service stopped")
        return self.stop_signal


class ServiceHandle:
    """A running in-process server (from :func:`start_in_thread`)."""

    def __init__(self, app: Any, runtime: Runtime, hub: EventHub, api: Any, server: Any, thread: threading.Thread,
                 url: str, *, close_app: bool) -> None:
        self.app, self.runtime, self.hub, self.api, self.server = app, runtime, hub, api, server
        self.thread, self.url, self._close_app = thread, url, close_app
        self._stopped = False

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def stop(self, timeout: float = 10.0) -> None:
        """Graceful shutdown, then ``Runtime.stop()`` (and ``app.close()`` if asked); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)
        self.hub.close()
        self.runtime.stop()
        if self._close_app:
            self.app.close()

    def __enter__(self) -> ServiceHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_in_thread(app: Any, config: Config | None = None, *, host: str = "127.0.0.1", port: int = 0,
                    start_runtime: bool = True, close_app: bool = False, timeout: float = 10.0) -> ServiceHandle:
    """Run the real server (runtime, hub, uvicorn) on ``host:port`` (0: a free port) in a daemon thread."""
    from .http import create_api

    config = config or Config()
    hub = EventHub(app.bus).start()
    runtime = Runtime(app)
    if start_runtime:
        runtime.start()
    try:
        api = create_api(app, runtime, hub, _settings(config))
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        server = _Server.make(_uvicorn_config(api, config, host=host, port=sock.getsockname()[1]), hub.close)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="smartpark-http", daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                raise RuntimeError("the HTTP server did not start")
            time.sleep(0.01)
    except BaseException:
        hub.close()
        runtime.stop()
        raise
    bound = sock.getsockname()
    url = f"http://{'[' + bound[0] + ']' if ':' in bound[0] else bound[0]}:{bound[1]}"
    return ServiceHandle(app, runtime, hub, api, server, thread, url, close_app=close_app)


@hookimpl
def register_frontends(register: Any) -> None:
    register.add("service", _factory, Config,
                 description="无界面服务：HTTP 接口、访客登记页、设备接入 / headless service: HTTP API, visitor page, devices")


def _factory(config: Config, context: Any) -> ServiceFrontend:
    return ServiceFrontend(config, context)
