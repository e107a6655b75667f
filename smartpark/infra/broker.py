"""An embedded MQTT broker for when the configured one is unreachable (the demo, benchmarks, a laptop).

:func:`ensure_broker` checks the configured broker (``127.0.0.1:1883`` by default) and, when nothing answers
there, starts :class:`EmbeddedBroker` on ``127.0.0.1:<free port>`` in a background thread and says so (a log
warning and :attr:`BrokerChoice.note`, in Chinese and English). Production sites run Mosquitto (or EMQX);
this is a fallback so that ``smartpark demo`` works on a machine with nothing but Python.

Why not amqtt: amqtt (0.12) speaks MQTT 3.1.1 only and answers an MQTT 5 CONNECT with "unacceptable protocol
version", while every client here (:class:`smartpark.infra.mqtt.MqttConnection`) speaks MQTT 5 (session
expiry, persistent sessions). So the fallback is this small broker, standard library only (asyncio), which
accepts both MQTT 3.1.1 and MQTT 5 clients on the loopback interface:

* CONNECT/CONNACK (clean or persistent sessions; a persistent session keeps its subscriptions and queues QoS 1
  messages while its client is away), client take-over, keep-alive, Last Will;
* PUBLISH QoS 0/1 (QoS 2 from a publisher is accepted with the PUBREC/PUBREL/PUBCOMP handshake and delivered
  at most QoS 1), retained messages, PUBACK;
* SUBSCRIBE/UNSUBSCRIBE with ``+``/``#`` wildcards and ``$share/<group>/`` filters (each group member gets the
  messages: no load balancing), PINGREQ, DISCONNECT;
* ``TCP_NODELAY`` on every connection (see ARCHITECTURE §7: Nagle plus delayed ACKs costs 40-80 ms a hop).

Not implemented: authentication (it binds to loopback only by default), QoS 2 delivery, MQTT 5 topic aliases,
message expiry and other v5 properties (ignored), retransmission of unacknowledged messages (loopback does
not lose packets; a client that reconnects gets what its persistent session queued while it was away).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import logging
import socket
import struct
import sys
import threading
from collections.abc import Sequence

import attrs

__all__ = ["BrokerChoice", "EmbeddedBroker", "ensure_broker", "parse_address", "reachable", "topic_matches"]

log = logging.getLogger(__name__)

_QUEUE_LIMIT = 10_000  # QoS 1 messages kept per persistent session while its client is away
_MAX_PACKET = 16 * 1024 * 1024

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14


# -- reachability --------------------------------------------------------------------------------------------
def parse_address(text: str, default_port: int = 1883) -> tuple[str, int]:
    """``"host:port"``, ``"host"`` or ``"[::1]:1883"`` -> (host, port)."""
    text = (text or "").strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else default_port
    if text.count(":") == 1:
        host, port = text.split(":")
        return host or "127.0.0.1", int(port)
    return text or "127.0.0.1", default_port


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when an MQTT broker answers a CONNECT at ``host:port`` (a bare open port is not enough)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            # CONNECT, MQTT 3.1.1, clean session, keep-alive 5 s, empty client id (the broker assigns one)
            s.sendall(bytes([0x10, 12, 0, 4]) + b"MQTT" + bytes([4, 0x02, 0, 5, 0, 0]))
            reply = s.recv(4)
            ok = len(reply) >= 4 and reply[0] == 0x20
            with contextlib.suppress(OSError):
                s.sendall(bytes([0xE0, 0]))
            return ok
    except (OSError, ValueError):
        return False


@attrs.frozen
class BrokerChoice:
    """Where to find the broker: the configured one, or the embedded one started in its place."""

    host: str
    port: int
    embedded: EmbeddedBroker | None
    note: str  # Chinese, then English

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        """Stop the embedded broker, if one was started (the configured one is not ours to stop)."""
        if self.embedded is not None:
            self.embedded.stop()


def ensure_broker(host: str = "127.0.0.1", port: int = 1883, *, timeout: float = 0.5) -> BrokerChoice:
    """The configured broker if it answers, else an :class:`EmbeddedBroker` on 127.0.0.1:<free port>."""
    if reachable(host, port, timeout):
        return BrokerChoice(host, port, None, f"使用已配置的 MQTT 服务器 {host}:{port} / using the configured "
                                              f"MQTT broker {host}:{port}")
    broker = EmbeddedBroker().start()
    note = (f"MQTT 服务器 {host}:{port} 无法连接，已启动内置 MQTT 服务器 {broker.host}:{broker.port} / "
            f"the MQTT broker {host}:{port} is unreachable; started the embedded broker on "
            f"{broker.host}:{broker.port}")
    log.warning(note)
    return BrokerChoice(broker.host, broker.port, broker, note)


# -- topics --------------------------------------------------------------------------------------------------
def topic_matches(pattern: str, topic: str) -> bool:
    """MQTT filter matching (``+`` one level, ``#`` the rest); ``$`` topics are not matched by a leading wildcard."""
    if pattern.startswith("$share/"):
        parts = pattern.split("/", 2)
        pattern = parts[2] if len(parts) == 3 else ""
    if topic.startswith("$") and pattern[:1] in ("+", "#"):
        return False
    p, t = pattern.split("/"), topic.split("/")
    for i, level in enumerate(p):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(p) == len(t)


# -- packets -------------------------------------------------------------------------------------------------
def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(kind: int, flags: int, body: bytes) -> bytes:
    return bytes([(kind << 4) | flags]) + _varint(len(body)) + body


def _utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    return struct.pack("!H", len(raw)) + raw


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def u8(self) -> int:
        self.pos += 1
        return self.data[self.pos - 1]

    def u16(self) -> int:
        self.pos += 2
        return struct.unpack_from("!H", self.data, self.pos - 2)[0]

    def varint(self) -> int:
        mult = value = 0
        for _ in range(4):
            b = self.u8()
            value += (b & 0x7F) << mult
            if not b & 0x80:
                return value
            mult += 7
        raise ValueError("malformed variable byte integer")

    def raw(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError("packet too short")
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def binary(self) -> bytes:
        return self.raw(self.u16())

    def text(self) -> str:
        return self.binary().decode("utf-8")

    def skip_properties(self) -> None:
        self.raw(self.varint())

    def rest(self) -> bytes:
        return self.data[self.pos:]

    @property
    def left(self) -> int:
        return len(self.data) - self.pos


@attrs.define(eq=False)
class _Session:
    client_id: str
    persistent: bool
    subs: dict[str, int] = attrs.field(factory=dict)  # filter -> granted QoS
    queue: collections.deque = attrs.field(factory=lambda: collections.deque(maxlen=_QUEUE_LIMIT))
    conn: _Connection | None = None
    next_id: int = 0
    #: QoS 1 messages sent but not yet acknowledged: sent again when a persistent session resumes
    inflight: dict[int, tuple[str, bytes, int]] = attrs.field(factory=dict)

    def packet_id(self) -> int:
        self.next_id = self.next_id % 65535 + 1
        return self.next_id


class _Connection:
    def __init__(self, broker: EmbeddedBroker, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.broker, self.reader, self.writer = broker, reader, writer
        self.session: _Session | None = None
        self.level = 4
        self.keepalive = 0
        self.will: tuple[str, bytes, int, bool] | None = None
        self.closed = False

    def send(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self.writer.close()

    async def read_packet(self) -> tuple[int, int, bytes]:
        head = await self.reader.readexactly(1)
        mult = length = 0
        for _ in range(4):
            b = (await self.reader.readexactly(1))[0]
            length += (b & 0x7F) << mult
            if not b & 0x80:
                break
            mult += 7
        else:
            raise ValueError("malformed remaining length")
        if length > _MAX_PACKET:
            raise ValueError(f"packet of {length} bytes is too large")
        body = await self.reader.readexactly(length) if length else b""
        return head[0] >> 4, head[0] & 0x0F, body


class EmbeddedBroker:
    """A small MQTT 3.1.1/5 broker on its own thread and event loop. ``port=0`` picks a free port."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self._sessions: dict[str, _Session] = {}
        self._retained: dict[str, tuple[bytes, int]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.base_events.Server | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stopped: asyncio.Event | None = None
        self.messages = 0  # PUBLISH packets received, for diagnostics

    # -- life cycle ------------------------------------------------------------------------------------------
    def start(self, timeout: float = 5.0) -> EmbeddedBroker:
        self._thread = threading.Thread(target=self._run, name="smartpark-mqtt-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the embedded MQTT broker did not start")
        if self._error is not None:
            raise self._error
        log.info("embedded MQTT broker listening on %s:%s", self.host, self.port)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        loop, self._loop = self._loop, None
        if loop is None or self._stopped is None:
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(timeout)
        log.info("embedded MQTT broker on %s:%s stopped", self.host, self.port)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def __enter__(self) -> EmbeddedBroker:
        return self if self._loop is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedBroker({self.host}:{self.port})"

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._main(loop))
        except BaseException as e:  # noqa: BLE001 - reported to start()
            self._error = e
            self._ready.set()
        finally:
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _main(self, loop: asyncio.AbstractEventLoop) -> None:
        self._stopped = asyncio.Event()
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]
        self._loop = loop
        self._ready.set()
        await self._stopped.wait()
        self._server.close()
        for session in list(self._sessions.values()):
            if session.conn is not None:
                session.conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)

    # -- one client --------------------------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = _Connection(self, reader, writer)
        clean_exit = False
        try:
            kind, _flags, body = await asyncio.wait_for(conn.read_packet(), 10)
            if kind != CONNECT or not self._connect(conn, body):
                return
            while not conn.closed:
                timeout = conn.keepalive * 1.5 if conn.keepalive else None
                kind, flags, body = await asyncio.wait_for(conn.read_packet(), timeout)
                if kind == DISCONNECT:
                    clean_exit = True
                    return
                self._dispatch(conn, kind, flags, body)
                if writer.transport.get_write_buffer_size() > 1 << 20:
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, OSError):
            pass
        except (ValueError, UnicodeDecodeError, IndexError, struct.error) as e:
            log.warning("embedded broker: protocol error from %s: %s", conn.session.client_id if conn.session
                        else writer.get_extra_info("peername"), e)
        finally:
            self._gone(conn, clean_exit)

    def _connect(self, conn: _Connection, body: bytes) -> bool:
        r = _Reader(body)
        name, level = r.text(), r.u8()
        if name not in ("MQTT", "MQIsdp") or level not in (3, 4, 5):
            conn.send(_packet(CONNACK, 0, bytes([0, 0x01])))  # unacceptable protocol version
            conn.close()
            return False
        conn.level = level
        flags, conn.keepalive = r.u8(), r.u16()
        if level == 5:
            r.skip_properties()
        client_id = r.text()
        will = None
        if flags & 0x04:
            if level == 5:
                r.skip_properties()
            will_topic, will_payload = r.text(), r.binary()
            will = (will_topic, will_payload, (flags >> 3) & 0x03, bool(flags & 0x20))
        clean = bool(flags & 0x02)
        if not client_id:
            client_id = f"auto-{id(conn):x}"
            clean = True
        conn.will = will
        old = self._sessions.get(client_id)
        if old is not None and old.conn is not None:  # take-over: the newest connection wins
            old.conn.will = None
            old.conn.close()
            old.conn = None
        present = old is not None and not clean and old.persistent
        session = old if present else _Session(client_id, persistent=not clean)
        session.persistent = not clean
        session.conn = conn
        conn.session = session
        self._sessions[client_id] = session
        props = b"\x00" if level == 5 else b""
        conn.send(_packet(CONNACK, 0, bytes([1 if present else 0, 0]) + props))
        if not present:
            session.inflight.clear()
        for pid, (topic, payload, qos) in list(session.inflight.items()):
            self._send_publish(session, pid, topic, payload, qos, dup=True)
        while session.queue:
            topic, payload, qos = session.queue.popleft()
            self._deliver(session, topic, payload, qos, retain=False)
        return True

    def _gone(self, conn: _Connection, clean_exit: bool) -> None:
        session = conn.session
        conn.close()
        if session is None or session.conn is not conn:
            return
        session.conn = None
        if not clean_exit and conn.will is not None:
            topic, payload, qos, retain = conn.will
            self._publish(topic, payload, min(qos, 1), retain)
        if not session.persistent:
            self._sessions.pop(session.client_id, None)

    def _dispatch(self, conn: _Connection, kind: int, flags: int, body: bytes) -> None:
        session = conn.session
        assert session is not None
        if kind == PUBLISH:
            qos, retain = (flags >> 1) & 0x03, bool(flags & 0x01)
            r = _Reader(body)
            topic = r.text()
            pid = r.u16() if qos else 0
            if conn.level == 5:
                r.skip_properties()
            payload = r.rest()
            if qos == 1:
                conn.send(_packet(PUBACK, 0, struct.pack("!H", pid)))
            elif qos == 2:
                conn.send(_packet(PUBREC, 0, struct.pack("!H", pid)))
            self.messages += 1
            self._publish(topic, payload, min(qos, 1), retain)
        elif kind == PUBREL:
            conn.send(_packet(PUBCOMP, 0, body[:2]))
        elif kind == SUBSCRIBE:
            r = _Reader(body)
            pid = r.u16()
            if conn.level == 5:
                r.skip_properties()
            codes, new = bytearray(), []
            while r.left:
                flt, options = r.text(), r.u8()
                granted = min(options & 0x03, 1)
                session.subs[flt] = granted
                codes.append(granted)
                new.append(flt)
            props = b"\x00" if conn.level == 5 else b""
            conn.send(_packet(SUBACK, 0, struct.pack("!H", pid) + props + bytes(codes)))
            for topic, (payload, qos) in list(self._retained.items()):
                for flt in new:
                    if topic_matches(flt, topic):
                        self._deliver(session, topic, payload, min(qos, session.subs[flt]), retain=True)
                        break
        elif kind == UNSUBSCRIBE:
            r = _Reader(body)
            pid = r.u16()
            if conn.level == 5:
                r.skip_properties()
            n = 0
            while r.left:
                session.subs.pop(r.text(), None)
                n += 1
            tail = b"\x00" + bytes(n) if conn.level == 5 else b""
            conn.send(_packet(UNSUBACK, 0, struct.pack("!H", pid) + tail))
        elif kind == PINGREQ:
            conn.send(_packet(PINGRESP, 0, b""))
        elif kind == PUBACK and conn.session is not None and len(body) >= 2:
            conn.session.inflight.pop(struct.unpack("!H", body[:2])[0], None)
        # PUBREC / PUBCOMP from subscribers: nothing to do (we send at most QoS 1)

    # -- routing -----------------------------------------------------------------------------------------------
    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if retain:
            if payload:
                self._retained[topic] = (payload, qos)
            else:
                self._retained.pop(topic, None)
        for session in list(self._sessions.values()):
            granted = -1
            for flt, q in session.subs.items():
                if q > granted and topic_matches(flt, topic):
                    granted = q
            if granted < 0:
                continue
            eff = min(qos, granted)
            if session.conn is None:
                if session.persistent and eff > 0:
                    session.queue.append((topic, payload, eff))
                continue
            self._deliver(session, topic, payload, eff, retain=False)

    def _deliver(self, session: _Session, topic: str, payload: bytes, qos: int, *, retain: bool) -> None:
        if session.conn is None:
            return
        pid = session.packet_id() if qos else 0
        if qos and session.persistent:
            session.inflight[pid] = (topic, payload, qos)
        self._send_publish(session, pid, topic, payload, qos, retain=retain)

    def _send_publish(self, session: _Session, pid: int, topic: str, payload: bytes, qos: int, *,
                      retain: bool = False, dup: bool = False) -> None:
        conn = session.conn
        if conn is None:
            return
        head = _utf8(topic)
        if qos:
            head += struct.pack("!H", pid)
        if conn.level == 5:
            head += b"\x00"
        flags = (0x08 if dup else 0) | (qos << 1) | (1 if retain else 0)
        conn.send(_packet(PUBLISH, flags, head + payload))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m smartpark.infra.broker --port 1883``: run the embedded broker until Ctrl-C."""
    ap = argparse.ArgumentParser(prog="python -m smartpark.infra.broker",
                                 description="内置 MQTT 服务器（仅用于演示和测试）/ the embedded MQTT broker (demo, tests)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    args = ap.parse_args(argv)
    broker = EmbeddedBroker(args.host, args.port).start()
    print(f"内置 MQTT 服务器已启动：{broker.host}:{broker.port}（Ctrl-C 停止）/ embedded MQTT broker on "
          f"{broker.host}:{broker.port}", flush=True)
    stop = threading.Event()
    try:
        while not stop.wait(1.0):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
