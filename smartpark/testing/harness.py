"""Small helpers the end-to-end tests and benchmarks share: free ports, waiting, captured camera alerts.

The alerts start from a *captured* Hikvision ISAPI ANPR event (a real camera's XML, kept in the tests'
fixtures) with only the plate and the event ids replaced, so the service parses what a camera really sends.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")

__all__ = ["anpr_alert", "free_port", "port_open", "wait_for"]


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); ``AssertionError`` naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def anpr_alert(sample: Path, plate: str, event_id: str) -> bytes:
    """The captured ISAPI ANPR event in ``sample`` (whose plate is ``KH35192``) with our plate and event id."""
    xml = sample.read_text(encoding="utf-8")
    xml = xml.replace("<licensePlate>KH35192</licensePlate>", f"<licensePlate>{plate}</licensePlate>")
    xml = re.sub(r"<UUID>[^<]*</UUID>", f"<UUID>{event_id}</UUID>", xml)
    return re.sub(r"<pId>[^<]*</pId>", lambda m: f"<pId>{event_id}-{m.start()}</pId>", xml).encode()
