"""The HTTP server and request-handler base the loopback vendor sandboxes (WeChat Pay, Alipay, Aliyun SMS, WeChat
API, and the example UnionPay provider) run on."""

from __future__ import annotations

import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server for tests: a deep accept backlog (the default 5 drops simultaneous connects, which
    concurrency tests make) and daemon request threads, so a stuck client never keeps a test process alive.

    It keeps the open (kept-alive) connections of :class:`LoopbackHandler`, so :func:`shut` can cut them: a
    sandbox told to stall a request must not leave a client waiting after the test stopped it."""

    request_queue_size = 128
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def track(self, conn: socket.socket) -> None:
        with self._open_lock:
            self._open.add(conn)

    def untrack(self, conn: socket.socket) -> None:
        with self._open_lock:
            self._open.discard(conn)

    def cut_connections(self) -> None:
        """Shut down every connection still open (a client held by a stalled request or keep-alive)."""
        with self._open_lock:
            conns, self._open = list(self._open), set()
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class LoopbackHandler(BaseHTTPRequestHandler):
    """What every sandbox's handler does the same way: HTTP/1.1 keep-alive, ``TCP_NODELAY`` (headers and body leave
    in two writes; without it Nagle and the client's delayed ACK add ~40 ms a reply), its connection tracked by
    the server, a client that went away tolerated, the request body read once, and no request log lines (request
    lines carry phone numbers, app secrets and access tokens)."""

    protocol_version = "HTTP/1.1"
    server: LoopbackHTTPServer

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.track(self.connection)

    def finish(self) -> None:
        self.server.untrack(self.connection)
        try:
            super().finish()
        except OSError:  # the client gave up before we answered
            pass

    def read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass


def serve(server_cls: type[ThreadingHTTPServer], address: tuple[str, int], handler: type,
          name: str) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Start ``server_cls(address, handler)`` on a daemon thread of its own; returns the server and the thread."""
    server = server_cls(address, handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name=name, daemon=True)
    thread.start()
    return server, thread


def shut(server: ThreadingHTTPServer | None, thread: threading.Thread | None) -> None:
    """Stop a server started by :func:`serve` (either may be ``None``: nothing was running) and cut the
    connections it still holds."""
    if server is not None:
        server.shutdown()
        server.server_close()
        if isinstance(server, LoopbackHTTPServer):
            server.cut_connections()
    if thread is not None:
        thread.join(timeout=5)
