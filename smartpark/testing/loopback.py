"""The HTTP server the loopback vendor sandboxes (WeChat Pay, Alipay, Aliyun SMS, WeChat API) run on."""

from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server for tests: a deep accept backlog (the default 5 drops simultaneous connects, which
    concurrency tests make) and daemon request threads, so a stuck client never keeps a test process alive."""

    request_queue_size = 128
    daemon_threads = True
    allow_reuse_address = True


def serve(server_cls: type[ThreadingHTTPServer], address: tuple[str, int], handler: type,
          name: str) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start ``server_cls(address, handler)`` on a daemon thread of its own; returns the server and the thread."""
    server = server_cls(address, handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True)
    thread.start()
    return server, thread


def shut(server: ThreadingHTTPServer | None, thread: threading.Thread | None) -> None:
    """Stop a server started by :func:`serve` (either may be ``None``: nothing was running)."""
    if server is not None:
        server.shutdown()
        server.server_close()
    if thread is not None:
        thread.join(timeout=5)
