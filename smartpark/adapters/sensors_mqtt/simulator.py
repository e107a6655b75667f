"""A simulated sensor device speaking the documented topics: for tests, the benchmark and bench-top trials.

It is an ordinary MQTT client (:class:`~smartpark.infra.mqtt.MqttConnection`, clean session) with ``offline`` as
its retained Last Will on its status topic, like a real sensor node::

    node = SimulatedSensor(BrokerSettings(), device="node-7", lot="main")
    node.start()                       # connects, publishes "online" (retained)
    node.report("B1-001", True)        # {"occupied": true, "device": "node-7"} on .../spaces/B1-001/state
    node.report("B1-002", False, fmt="bare")   # "0"
    node.heartbeat()
    node.kill()                        # drops the TCP connection without DISCONNECT: the broker sends the Will
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime

from ...infra.mqtt import BrokerSettings, MqttConnection
from .sensor import DEFAULT_DEVICE_PREFIX, DEFAULT_TOPIC_PREFIX, Topics

__all__ = ["SimulatedSensor"]


class SimulatedSensor:
    def __init__(self, broker: BrokerSettings | None = None, *, device: str = "sim-1", lot: str = "main",
                 topic_prefix: str = DEFAULT_TOPIC_PREFIX, device_prefix: str = DEFAULT_DEVICE_PREFIX,
                 client_id: str | None = None, last_will: bool = True, publish_timeout_s: float = 5.0) -> None:
        self.device = device
        self.topics = Topics.for_lot(lot, topic_prefix, device_prefix)
        self.publish_timeout_s = publish_timeout_s
        will = (self.topics.status(device), b"offline", True) if last_will else None
        self.conn = MqttConnection(broker or BrokerSettings(), client_id or f"sim-{device}-{uuid.uuid4().hex[:8]}",
                                   will=will, persistent=False)
        self._touched: set[str] = set()  # retained topics we wrote, cleared by clear_retained()
        self._killed = False

    # -- lifecycle ----------------------------------------------------------------------------------------------------
    def start(self, *, announce: bool = True, wait_s: float = 5.0) -> SimulatedSensor:
        if not self.conn.start(wait=wait_s):
            raise OSError(f"simulated sensor {self.device}: no broker at {self.conn.settings.host}:"
                          f"{self.conn.settings.port}")
        if announce:
            self.set_status(True)
        return self

    def stop(self) -> None:
        """A clean disconnect: the broker does not send the Will. Idempotent; nothing to do after :meth:`kill`."""
        if not self._killed:
            self.conn.stop()

    def kill(self) -> None:
        """Drop the connection abruptly (no DISCONNECT), as a node losing power: the broker publishes the Will."""
        self._killed = True
        self.conn.client.loop_stop()
        sock = self.conn.client.socket()
        if sock is not None:
            sock.close()

    # -- messages -----------------------------------------------------------------------------------------------------
    def report(self, space: str, occupied: bool, *, fmt: str = "json", ts: datetime | None = None,
               device: str | None = None, retain: bool = False) -> None:
        """Publish a state: ``fmt`` is ``json`` (with ``device``, and ``ts`` when given), ``bare`` (1/0) or
        ``words`` (occupied/free)."""
        if fmt == "json":
            doc: dict[str, object] = {"occupied": bool(occupied), "device": device or self.device}
            if ts is not None:
                doc["ts"] = ts.isoformat()
            payload = json.dumps(doc).encode()
        elif fmt == "bare":
            payload = b"1" if occupied else b"0"
        elif fmt == "words":
            payload = b"occupied" if occupied else b"free"
        else:
            raise ValueError(f"unknown format {fmt!r}")
        self.publish_state_raw(space, payload, retain=retain)

    def publish_state_raw(self, space: str, payload: bytes, *, retain: bool = False) -> None:
        self._publish(self.topics.state(space), payload, retain=retain)

    def set_status(self, online: bool) -> None:
        self._publish(self.topics.status(self.device), b"online" if online else b"offline", retain=True)

    def heartbeat(self, payload: bytes = b"") -> None:
        self._publish(self.topics.heartbeat(self.device), payload or b"{}")

    def clear_retained(self) -> None:
        """Remove the retained messages this simulator (and its Will) left on the broker.

        After :meth:`kill`, use a fresh simulator for the same device: ``SimulatedSensor(..., device=d,
        last_will=False).start(announce=False).clear_retained()``.
        """
        self._touched.add(self.topics.status(self.device))
        for topic in sorted(self._touched):
            self._publish(topic, b"", retain=True)
        self._touched.clear()

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        if retain:
            self._touched.add(topic)
        info = self.conn.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(self.publish_timeout_s)
        if not info.is_published():
            raise OSError(f"simulated sensor {self.device}: {topic} not acknowledged in {self.publish_timeout_s} s")
