"""HTTP push: adapters that receive HTTP requests (camera listening mode, payment callbacks).

An adapter that implements :class:`HttpPushSource` lists its routes; the headless service mounts them and
hands each request over as a plain :class:`HttpRequest`, so adapters stay free of any web framework. Handlers
must answer quickly (hand slow work to a queue) and must never raise on bad input: they answer it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

import attrs


@attrs.frozen(kw_only=True)
class HttpRequest:
    method: str
    path: str
    path_params: Mapping[str, str]
    query: Mapping[str, str]
    headers: Mapping[str, str]  # lower-case names
    body: bytes
    client: str = ""  # the peer address


@attrs.frozen(kw_only=True)
class HttpReply:
    status: int = 200
    content_type: str = "text/plain; charset=utf-8"
    body: bytes = b""


@attrs.frozen(kw_only=True)
class HttpRoute:
    method: str  # "POST", "GET", ...
    path: str  # a path template such as "/devices/hikvision/{camera}"; {name} segments become path_params
    handler: Callable[[HttpRequest], HttpReply]
    description: str = ""


@runtime_checkable
class HttpPushSource(Protocol):
    def http_routes(self) -> list[HttpRoute]: ...
