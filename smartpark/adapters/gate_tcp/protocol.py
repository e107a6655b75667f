"""The smartpark gate protocol, version 1: framing and message shapes (pure: no sockets, no threads, no clock).

The full specification is ``docs/gate-protocol.md``. In short:

* a frame is a 4-byte big-endian unsigned payload length followed by that many bytes of UTF-8 JSON, one object;
  the payload is 1..:data:`MAX_FRAME` bytes; anything else is a :class:`ProtocolError` and the connection closes;
* we send requests ``{"v":1,"id":..,"op":..,"lane":..,"reason":..}``; the controller answers each with a reply
  ``{"v":1,"id":..,"ok":true,"state":{..}}`` or ``{"v":1,"id":..,"ok":false,"error":{"code":..,"message":..}}``;
* the controller also pushes events: ``hello`` (first frame), ``state`` (arm position changed), ``heartbeat``.

Both the adapter (:mod:`.client`) and the simulator (:mod:`.simulator`) use this module, so they cannot drift
apart. Every function that reads bytes or decoded JSON from the peer raises only :class:`ProtocolError`.
"""

from __future__ import annotations

import json
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "COMMAND_OPS", "ERROR_CODES", "HEADER_SIZE", "MAX_FRAME", "MAX_REASON", "OPS", "POSITIONS", "VERSION",
    "BadRequest", "Event", "FrameDecoder", "LaneState", "ProtocolError", "Reply", "Request", "RequestIds",
    "decode_frames", "encode_frame", "error_reply", "heartbeat_event", "hello_event", "ok_reply", "parse_event",
    "parse_incoming", "parse_reply", "parse_request", "request", "state_event",
]

#: The protocol version this module speaks (the ``v`` member of every message).
VERSION = 1
#: Size of the length prefix.
HEADER_SIZE = 4
#: Largest payload (the JSON bytes after the prefix) either side accepts: 64 KiB.
MAX_FRAME = 64 * 1024
#: Longest ``reason`` a controller must accept; the client truncates longer ones.
MAX_REASON = 200
#: Longest request id.
MAX_ID = 64

#: Commands change the barrier: they are de-duplicated by request id (idempotent retries).
COMMAND_OPS = ("open", "close", "keep_open", "release")
#: Every request operation.
OPS = COMMAND_OPS + ("status", "ping")
#: Arm positions in a state object. ``moving`` carries a ``target``.
POSITIONS = ("open", "closed", "moving", "unknown")
#: Error codes a controller may return (``ok: false``); see docs/gate-protocol.md for what each means.
ERROR_CODES = ("BAD_REQUEST", "UNKNOWN_LANE", "LANE_OFFLINE", "KEEP_OPEN", "BUSY", "FAULT")
#: Unsolicited events.
EVENTS = ("hello", "state", "heartbeat")

LANE_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,32}")
_ID_PATTERN = re.compile(r"[\x21-\x7e]{1,64}")  # printable ASCII, no spaces


class ProtocolError(ValueError):
    """The peer broke the framing or sent something that is not a protocol message.

    After a framing error the byte stream cannot be re-synchronised: close the connection. When the error
    comes from :meth:`FrameDecoder.feed`, ``messages`` holds the whole messages that came before it in the same
    read, so a caller can still act on them (in order) before closing.
    """

    messages: list[dict[str, Any]] = []


class BadRequest(ProtocolError):
    """A well-framed request that is not valid; the controller answers ``BAD_REQUEST``.

    ``request_id`` is the request's id when one could be read (the reply carries it), else ``None``.
    """

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


# ---------------------------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def encode_frame(message: dict[str, Any]) -> bytes:
    """One frame: the length prefix and the compact UTF-8 JSON of ``message``.

    Raises :class:`ProtocolError` when ``message`` is not a JSON-serialisable object or its JSON exceeds
    :data:`MAX_FRAME` bytes.
    """
    if not isinstance(message, dict):
        raise ProtocolError(f"a frame holds a JSON object, not {type(message).__name__}")
    try:
        text = json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        try:
            payload = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate (from a peer's "\ud800" escape): keep it escaped
            payload = json.dumps(message, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")
    except (TypeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"message is not serialisable as JSON: {e}") from None
    if len(payload) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(payload)} bytes exceeds the {MAX_FRAME}-byte limit")
    return len(payload).to_bytes(HEADER_SIZE, "big") + payload


def _decode_payload(payload: bytes) -> dict[str, Any]:
    try:
        value = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise ProtocolError(f"payload is not UTF-8 JSON: {e}") from None
    if not isinstance(value, dict):
        raise ProtocolError(f"payload is JSON {type(value).__name__}, not an object")
    return value


class FrameDecoder:
    """Incremental decoder: feed it bytes as ``recv`` returns them, get whole messages back.

    A frame may arrive split across any number of ``feed`` calls, and one call may complete several frames.
    An oversize length is refused as soon as the 4-byte prefix is in, before its payload is read. A
    :class:`ProtocolError` carries (``messages``) the messages decoded before it in the same call. After a
    :class:`ProtocolError` the decoder stays failed (every later ``feed`` raises): the stream cannot be
    re-synchronised, so the connection must be closed.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._max = max_frame
        self._error: ProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[dict[str, Any]]:
        if self._error is not None:
            raise ProtocolError(f"stream already failed: {self._error}")
        self._buf += data
        out: list[dict[str, Any]] = []
        try:
            while len(self._buf) >= HEADER_SIZE:
                length = int.from_bytes(self._buf[:HEADER_SIZE], "big")
                if length == 0:
                    raise ProtocolError("empty frame (length 0)")
                if length > self._max:
                    raise ProtocolError(f"frame length {length} exceeds the {self._max}-byte limit")
                end = HEADER_SIZE + length
                if len(self._buf) < end:
                    break
                payload = bytes(self._buf[HEADER_SIZE:end])
                del self._buf[:end]
                out.append(_decode_payload(payload))
        except ProtocolError as e:
            self._error = e
            self._buf.clear()
            e.messages = out
            raise
        return out


def decode_frames(data: bytes) -> list[dict[str, Any]]:
    """Decode a buffer that holds whole frames only (tests, tools); a trailing partial frame is an error."""
    decoder = FrameDecoder()
    messages = decoder.feed(data)
    if decoder.buffered:
        raise ProtocolError(f"{decoder.buffered} trailing bytes do not make a whole frame")
    return messages


# ---------------------------------------------------------------------------------------------------------------
# Messages
# ---------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LaneState:
    """A lane's barrier as the controller reports it (the ``state`` object)."""

    position: str = "unknown"  # one of POSITIONS
    keep_open: bool = False
    online: bool = True  # False: the controller cannot reach this lane's barrier (Hikvision status 0)
    target: str | None = None  # "open" | "closed" while position is "moving"
    signal: int | None = None  # the vendor's raw status code, informational (Hikvision: 0 none, 1 closed, 2 open)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"position": self.position}
        if self.target is not None:
            out["target"] = self.target
        out["keep_open"] = self.keep_open
        out["online"] = self.online
        if self.signal is not None:
            out["signal"] = self.signal
        return out


@dataclass(frozen=True)
class Request:
    id: str
    op: str
    lane: str | None  # None only for "ping"
    reason: str = ""

    def to_json(self) -> dict[str, Any]:
        return request(self.id, self.op, self.lane, self.reason)


@dataclass(frozen=True)
class Reply:
    id: str | None  # None only in a BAD_REQUEST answer to a request without a readable id
    ok: bool
    state: LaneState | None = None
    code: str = ""  # when not ok
    message: str = ""
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


@dataclass(frozen=True)
class Event:
    event: str  # "hello" | "state" | "heartbeat" | a name this version does not know
    lane: str | None = None  # state
    state: LaneState | None = None  # state
    controller: str = ""  # hello
    lanes: tuple[str, ...] = ()  # hello
    fw: str = ""  # hello
    heartbeat_s: float | None = None  # hello
    raw: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)


def request(request_id: str, op: str, lane: str | None, reason: str = "") -> dict[str, Any]:
    """A request object; ``reason`` is dropped when empty and truncated to :data:`MAX_REASON` characters."""
    msg: dict[str, Any] = {"v": VERSION, "id": request_id, "op": op}
    if lane is not None:
        msg["lane"] = lane
    if reason:
        msg["reason"] = reason[:MAX_REASON]
    return msg


def ok_reply(request_id: str, state: LaneState | None = None, **extra: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"v": VERSION, "id": request_id, "ok": True}
    if state is not None:
        msg["state"] = state.to_json()
    msg.update(extra)
    return msg


def error_reply(request_id: str | None, code: str, message: str = "") -> dict[str, Any]:
    return {"v": VERSION, "id": request_id, "ok": False, "error": {"code": code, "message": message}}


def hello_event(controller: str, lanes: Iterable[str], fw: str, heartbeat_s: float) -> dict[str, Any]:
    return {"v": VERSION, "event": "hello", "controller": controller, "lanes": list(lanes), "fw": fw,
            "heartbeat_s": heartbeat_s}


def state_event(lane: str, state: LaneState) -> dict[str, Any]:
    return {"v": VERSION, "event": "state", "lane": lane, **state.to_json()}


def heartbeat_event() -> dict[str, Any]:
    return {"v": VERSION, "event": "heartbeat"}


# -- parsing (what the peer sent) ---------------------------------------------------------------------------------


def _check_version(msg: dict[str, Any]) -> None:
    v = msg.get("v")
    if type(v) is not int:
        raise ProtocolError(f"missing or non-integer protocol version 'v': {v!r}")
    if v != VERSION:
        raise ProtocolError(f"unsupported protocol version {v} (this side speaks {VERSION})")


def _opt_str(msg: dict[str, Any], key: str, default: str = "") -> str:
    value = msg.get(key, default)
    if value is None:
        return default
    if not isinstance(value, str):
        raise ProtocolError(f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _parse_state(obj: Any) -> LaneState:
    if not isinstance(obj, dict):
        raise ProtocolError(f"'state' must be an object, got {type(obj).__name__}")
    position = obj.get("position", "unknown")
    if position not in POSITIONS:
        raise ProtocolError(f"unknown arm position {position!r}; expected one of {', '.join(POSITIONS)}")
    keep_open = obj.get("keep_open", False)
    online = obj.get("online", True)
    if not isinstance(keep_open, bool) or not isinstance(online, bool):
        raise ProtocolError("'keep_open' and 'online' must be booleans")
    target = obj.get("target")
    if target is not None and target not in ("open", "closed"):
        raise ProtocolError(f"'target' must be \"open\" or \"closed\", got {target!r}")
    signal = obj.get("signal")
    if signal is not None and type(signal) is not int:
        raise ProtocolError(f"'signal' must be an integer, got {signal!r}")
    return LaneState(position=position, keep_open=keep_open, online=online, target=target, signal=signal)


def parse_request(msg: dict[str, Any]) -> Request:
    """Validate a request (controller side). Raises :class:`BadRequest`, carrying the id when readable."""
    raw_id = msg.get("id")
    rid = raw_id if isinstance(raw_id, str) and _ID_PATTERN.fullmatch(raw_id) else None
    try:
        _check_version(msg)
    except ProtocolError as e:
        raise BadRequest(str(e), rid) from None
    if rid is None:
        raise BadRequest(f"'id' must be 1-{MAX_ID} printable ASCII characters without spaces, got {raw_id!r}")
    op = msg.get("op")
    if op not in OPS:
        raise BadRequest(f"unknown op {op!r}; expected one of {', '.join(OPS)}", rid)
    lane = msg.get("lane")
    if op != "ping" or lane is not None:
        if not isinstance(lane, str) or not LANE_PATTERN.fullmatch(lane):
            raise BadRequest(f"'lane' must be 1-32 characters of A-Z a-z 0-9 _ -, got {lane!r}", rid)
    reason = msg.get("reason", "")
    if reason is None:
        reason = ""
    if not isinstance(reason, str):
        raise BadRequest("'reason' must be a string", rid)
    return Request(id=rid, op=op, lane=lane, reason=reason[:MAX_REASON])


def parse_reply(msg: dict[str, Any]) -> Reply:
    """Validate a reply (client side)."""
    _check_version(msg)
    rid = msg.get("id")
    if rid is not None and not isinstance(rid, str):
        raise ProtocolError(f"reply 'id' must be a string or null, got {type(rid).__name__}")
    ok = msg.get("ok")
    if not isinstance(ok, bool):
        raise ProtocolError("reply 'ok' must be a boolean")
    if ok:
        state = _parse_state(msg["state"]) if msg.get("state") is not None else None
        return Reply(id=rid, ok=True, state=state, raw=msg)
    error = msg.get("error")
    if not isinstance(error, dict):
        raise ProtocolError("a reply with ok=false carries an 'error' object")
    code = error.get("code")
    if not isinstance(code, str) or not code:
        raise ProtocolError("'error.code' must be a non-empty string")
    return Reply(id=rid, ok=False, code=code, message=_opt_str(error, "message"), raw=msg)


def parse_event(msg: dict[str, Any]) -> Event:
    """Validate an event (client side). An event name this version does not know is returned, not refused."""
    _check_version(msg)
    name = msg.get("event")
    if not isinstance(name, str) or not name:
        raise ProtocolError("'event' must be a non-empty string")
    if name == "hello":
        lanes = msg.get("lanes")
        if not isinstance(lanes, list) or not all(isinstance(x, str) for x in lanes):
            raise ProtocolError("hello 'lanes' must be a list of strings")
        hb = msg.get("heartbeat_s")
        if hb is not None and (type(hb) not in (int, float) or not 0 < hb <= 3600):
            raise ProtocolError(f"hello 'heartbeat_s' must be a number in (0, 3600], got {hb!r}")
        return Event(event=name, controller=_opt_str(msg, "controller"), lanes=tuple(lanes), fw=_opt_str(msg, "fw"),
                     heartbeat_s=float(hb) if hb is not None else None, raw=msg)
    if name == "state":
        lane = msg.get("lane")
        if not isinstance(lane, str) or not lane:
            raise ProtocolError("state event 'lane' must be a non-empty string")
        return Event(event=name, lane=lane, state=_parse_state(msg), raw=msg)
    return Event(event=name, raw=msg)


def parse_incoming(msg: dict[str, Any]) -> Reply | Event:
    """Classify a message the controller sent: an :class:`Event` (has ``event``) or a :class:`Reply`."""
    if "event" in msg:
        return parse_event(msg)
    if "ok" in msg:
        return parse_reply(msg)
    raise ProtocolError("message is neither an event (no 'event') nor a reply (no 'ok')")


# ---------------------------------------------------------------------------------------------------------------
# Request ids
# ---------------------------------------------------------------------------------------------------------------


class RequestIds:
    """Request ids ``"<prefix>-<n>"``: a random 8-hex-digit prefix per instance and a counter.

    The prefix makes ids unique across reconnects and restarts of our process, which the controller's
    de-duplication (keyed by id, across connections) relies on. Thread-safe.
    """

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix if prefix is not None else secrets.token_hex(4)
        self._n = 0
        self._lock = threading.Lock()

    def next(self) -> str:
        with self._lock:
            self._n += 1
            return f"{self.prefix}-{self._n}"
