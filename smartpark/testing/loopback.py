"""The HTTP server the loopback vendor sandboxes (WeChat Pay, Alipay, Aliyun SMS, WeChat API) run on."""

from __future__ import annotations

from http.server import ThreadingHTTPServer


class LoopbackHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server for tests: a deep accept backlog (the default 5 drops simultaneous connects, which
    concurrency tests make) and daemon request threads, so a stuck client never keeps a test process alive."""

    request_queue_size = 128
    daemon_threads = True
    allow_reuse_address = True
