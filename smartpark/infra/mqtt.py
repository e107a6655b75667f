"""MQTT client set-up shared by every adapter that talks to the broker (paho-mqtt 2.x).

What this gets right once, so adapters do not each get it wrong:

* MQTT v5 with a persistent session (``clean_start=False`` and a session expiry), QoS 1 subscriptions that are
  re-made on every (re)connect, and automatic reconnects with backoff;
* ``TCP_NODELAY`` on the client socket: paho leaves Nagle's algorithm on, and every hop then waits on delayed
  ACKs (44-88 ms instead of 0.5 ms per round trip on loopback);
* a broker that is down at start is not fatal: the client keeps trying and reports through ``on_status``.
"""

from __future__ import annotations

import logging
import socket
import threading
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

log = logging.getLogger(__name__)

MessageHandler = Callable[[str, bytes], None]
#: A handler that takes over the acknowledgement: ``handler(topic, payload, ack)``; call ``ack()`` once the
#: message has been dealt with (with ``manual_ack=True`` the broker redelivers what was never acknowledged).
DeferredHandler = Callable[[str, bytes, Callable[[], None]], None]


@attrs.frozen
class BrokerSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = None
    keepalive: int = 30
    session_expiry: int = 3600  # seconds the broker keeps our session (and queued QoS 1 messages) while we are away


def set_nodelay(sock: Any) -> None:
    """Turn Nagle's algorithm off on a client socket (ignored for non-TCP sockets)."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass


class MqttConnection:
    """One paho client with its own network thread, persistent session and re-subscription on reconnect.

    ``subscribe(topic, handler)`` may be called before or after ``start()``; handlers run on paho's network
    thread and must be quick (hand work to a queue).
    """

    def __init__(self, settings: BrokerSettings, client_id: str | None = None, *,
                 on_status: Callable[[bool, str], None] | None = None,
                 will: tuple[str, bytes, bool] | None = None, persistent: bool = True,
                 manual_ack: bool = False) -> None:
        self.settings = settings
        self.client_id = client_id or f"smartpark-{uuid.uuid4().hex[:12]}"
        self._subs: dict[str, tuple[int, MessageHandler]] = {}
        self._deferred: dict[str, DeferredHandler] = {}
        self._manual_ack = manual_ack
        self._routes: dict[str, list[MessageHandler]] = {}  # topic -> matching handlers (cleared on subscribe)
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self._pending_subs: set[int] = set()
        self._stopping = False
        self._on_status = on_status
        self._persistent = persistent
        c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv5,
                        manual_ack=manual_ack)
        if settings.username:
            c.username_pw_set(settings.username, settings.password)
        if will:
            c.will_set(will[0], will[1], qos=1, retain=will[2])
        c.reconnect_delay_set(min_delay=1, max_delay=10)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_subscribe = self._on_subscribe
        c.on_socket_open = lambda client, userdata, sock: set_nodelay(sock)
        self.client = c

    # -- lifecycle -----------------------------------------------------------------------------------
    def start(self, wait: float = 0.0) -> bool:
        """Connect in the background (a broker that is down is retried); optionally wait for the connection."""
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.settings.session_expiry if self._persistent else 0
        self.client.connect_async(self.settings.host, self.settings.port, keepalive=self.settings.keepalive,
                                  clean_start=not self._persistent, properties=props)
        self.client.loop_start()
        return self._connected.wait(wait) if wait else self._connected.is_set()

    def stop(self) -> None:
        self._stopping = True
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()
            self._connected.clear()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait until the broker has acknowledged every subscription made on the current connection."""
        return self._connected.wait(timeout) and self._subscribed.wait(timeout)

    # -- pub/sub -------------------------------------------------------------------------------------
    def subscribe(self, topic: str, handler: MessageHandler, qos: int = 1) -> None:
        with self._lock:
            self._subs[topic] = (qos, handler)
            if handler is not _noop:
                self._deferred.pop(topic, None)
            self._routes.clear()
        if self.connected:
            self._track(self.client.subscribe(topic, options=SubscribeOptions(qos=qos)))

    def subscribe_deferred(self, topic: str, handler: DeferredHandler, qos: int = 1) -> None:
        """Like :meth:`subscribe`, but the handler acknowledges the message itself, later, by calling ``ack()``
        (needs ``manual_ack=True``): a message is acknowledged only once its work is done."""
        if not self._manual_ack:
            raise ValueError("subscribe_deferred needs MqttConnection(manual_ack=True)")
        with self._lock:
            self._deferred[topic] = handler
        self.subscribe(topic, _noop, qos)

    def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False) -> mqtt.MQTTMessageInfo:
        return self.client.publish(topic, payload, qos=qos, retain=retain)

    # -- paho callbacks (network thread) -----------------------------------------------------------
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if getattr(reason, "is_failure", False):
            log.warning("MQTT %s: connection to %s:%s refused: %s", self.client_id, self.settings.host,
                        self.settings.port, reason)
            return
        with self._lock:
            subs = list(self._subs.items())
        self._subscribed.clear()
        for topic, (qos, _) in subs:
            self._track(client.subscribe(topic, options=SubscribeOptions(qos=qos)))
        if not subs:
            self._subscribed.set()
        self._connected.set()
        log.info("MQTT %s connected to %s:%s", self.client_id, self.settings.host, self.settings.port)
        if self._on_status:
            self._on_status(True, "connected")

    def _track(self, result: tuple[int, int | None]) -> None:
        rc, mid = result
        if rc == mqtt.MQTT_ERR_SUCCESS and mid is not None:
            with self._lock:
                self._pending_subs.add(mid)
                self._subscribed.clear()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        with self._lock:
            self._pending_subs.discard(mid)
            done = not self._pending_subs
        if done:
            self._subscribed.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        was = self._connected.is_set()
        self._connected.clear()
        if was and self._stopping:
            log.info("MQTT %s disconnected", self.client_id)
        elif was:
            log.warning("MQTT %s disconnected from %s:%s: %s", self.client_id, self.settings.host,
                        self.settings.port, reason)
            if self._on_status:
                self._on_status(False, str(reason))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        handlers = self._routes.get(msg.topic)
        if handlers is None:
            with self._lock:
                handlers = [self._deferred.get(t) or h for t, (_, h) in self._subs.items()
                            if mqtt.topic_matches_sub(_strip_share(t), msg.topic)]
                if len(self._routes) > 10_000:  # topics come from publishers: keep the cache bounded
                    self._routes.clear()
                self._routes[msg.topic] = handlers
        deferred = None
        for handler in handlers:
            if handler in self._deferred.values():
                deferred = handler
                continue
            try:
                handler(msg.topic, msg.payload)
            except Exception:  # noqa: BLE001 - one bad message must not stop the network thread
                log.exception("MQTT handler failed for topic %s", msg.topic)
        if not self._manual_ack:
            return
        ack = _Ack(client, msg.mid, msg.qos)
        if deferred is None:
            ack()
            return
        try:
            deferred(msg.topic, msg.payload, ack)
        except Exception:  # noqa: BLE001
            log.exception("MQTT handler failed for topic %s", msg.topic)
            ack()


class _Ack:
    """Acknowledge one message, once (QoS 0 needs none)."""

    __slots__ = ("_client", "_mid", "_qos", "_done")

    def __init__(self, client: mqtt.Client, mid: int, qos: int) -> None:
        self._client, self._mid, self._qos, self._done = client, mid, qos, False

    def __call__(self) -> None:
        if self._done:
            return
        self._done = True
        if self._qos:
            self._client.ack(self._mid, self._qos)


def _noop(topic: str, payload: bytes) -> None:
    pass


def _strip_share(topic: str) -> str:
    """``$share/group/a/b`` matches messages published on ``a/b``."""
    if topic.startswith("$share/"):
        return topic.split("/", 2)[2]
    return topic
