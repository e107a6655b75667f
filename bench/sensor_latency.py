"""Latency of sensors_mqtt: sensor publish -> ``sink.space_reading``, beside the raw broker round trip.

Publishes N state messages at a steady rate through the real broker to a running MqttSpaceSensor (default
settings: QoS 1, persistent session, 2 s debounce; each message is a new space, so each takes the leading-edge
path) and measures publish -> sink. In the same run, with the same client library (MqttConnection over paho) and
the same publisher, it measures the raw round trip: publish -> a plain subscriber's callback. It prints both and
their ratio, and exits 1 if the adapter's p99 is over the budget (50 ms) or a message was lost.

    python bench/sensor_latency.py [--n 2000] [--rate 500] [--host 127.0.0.1] [--port 1883] [--budget-ms 50]
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from smartpark.adapters.sensors_mqtt.sensor import MqttSpaceSensor  # noqa: E402
from smartpark.infra.mqtt import BrokerSettings, MqttConnection  # noqa: E402


class Arrivals:
    """Arrival times by key, with a wait for the expected count."""

    def __init__(self) -> None:
        self.at: dict[str, float] = {}
        self._cond = threading.Condition()

    def record(self, key: str) -> None:
        now = time.perf_counter()
        with self._cond:
            self.at.setdefault(key, now)
            self._cond.notify_all()

    def wait(self, count: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: len(self.at) >= count, timeout)


class TimingSink:
    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals

    def space_reading(self, reading) -> None:
        self.arrivals.record(reading.space)

    def device_health(self, health) -> None:
        pass


def publish_steadily(pub: MqttConnection, messages: list[tuple[str, str, bytes]], rate: float) -> dict[str, float]:
    """Publish (key, topic, payload) at ``rate`` per second; return the send time of each key."""
    sent: dict[str, float] = {}
    interval = 1.0 / rate
    start = time.perf_counter()
    for i, (key, topic, payload) in enumerate(messages):
        delay = start + i * interval - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        sent[key] = time.perf_counter()
        pub.publish(topic, payload, qos=1)
    return sent


def latencies_ms(sent: dict[str, float], arrived: dict[str, float]) -> list[float]:
    return sorted((arrived[k] - sent[k]) * 1000.0 for k in sent if k in arrived)


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100.0 * (len(values) - 1))))
    return values[k]


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": pct(values, 50), "p99": pct(values, 99), "max": values[-1] if values else float("nan"),
            "mean": statistics.fmean(values) if values else float("nan")}


class GcPauses:
    """Collector pauses during the run: a full (generation 2) collection stops every thread for milliseconds and
    shows up as the max of whichever measurement it lands in."""

    def __init__(self) -> None:
        self.pauses: list[tuple[int, float]] = []
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.pauses.append((info["generation"], (time.perf_counter() - self._t0) * 1000.0))

    def describe(self) -> str:
        if not self.pauses:
            return "none"
        gen, longest = max(self.pauses, key=lambda p: p[1])
        full = sum(1 for g, _ in self.pauses if g == 2)
        return f"{len(self.pauses)} collections, {full} full; longest {longest:.3f} ms (generation {gen})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="messages per measurement")
    ap.add_argument("--rate", type=float, default=500.0, help="messages per second")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--budget-ms", type=float, default=50.0, help="fail if the adapter's p99 is above this")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)  # the clients' connect/disconnect notices are not results

    broker = BrokerSettings(host=args.host, port=args.port)
    run = uuid.uuid4().hex[:10]
    lot = f"bench{run}"
    payload = json.dumps({"occupied": True, "device": "bench-node"}).encode()

    pub = MqttConnection(broker, f"bench-pub-{run}", persistent=False)
    raw_arrivals, sensor_arrivals = Arrivals(), Arrivals()
    raw_prefix = f"smartpark/{lot}/raw"
    raw_sub = MqttConnection(broker, f"bench-raw-{run}", persistent=False)
    raw_sub.subscribe(f"{raw_prefix}/+", lambda topic, _payload: raw_arrivals.record(topic.rsplit("/", 1)[1]))
    sensor = MqttSpaceSensor(broker, lot=lot, client_id=f"bench-sensor-{run}")  # default debounce and timers
    try:
        if not (pub.start(wait=5) and raw_sub.start(wait=5)):
            print(f"no MQTT broker at {args.host}:{args.port}", file=sys.stderr)
            return 2
        sensor.start(TimingSink(sensor_arrivals))
        if not sensor.connected:
            print("the sensor adapter did not connect", file=sys.stderr)
            return 2
        time.sleep(0.2)  # let the raw subscription's SUBACK land

        def raw_msgs(tag: str, n: int):
            return [(f"{tag}{i:05d}", f"{raw_prefix}/{tag}{i:05d}", payload) for i in range(n)]

        def sensor_msgs(tag: str, n: int):
            return [(f"{tag}{i:05d}", sensor.topics.state(f"{tag}{i:05d}"), payload) for i in range(n)]

        # Warm up both paths (connections, code paths), then measure: raw, adapter.
        warm = 100
        publish_steadily(pub, raw_msgs("w", warm), args.rate)
        publish_steadily(pub, sensor_msgs("w", warm), args.rate)
        raw_arrivals.wait(warm, 5)
        sensor_arrivals.wait(warm, 5)
        raw_arrivals.at.clear()
        sensor_arrivals.at.clear()

        gc_pauses = GcPauses()
        gc.callbacks.append(gc_pauses)
        raw_sent = publish_steadily(pub, raw_msgs("r", args.n), args.rate)
        raw_arrivals.wait(args.n, 10)
        sensor_sent = publish_steadily(pub, sensor_msgs("s", args.n), args.rate)
        sensor_arrivals.wait(args.n, 10)
        gc.callbacks.remove(gc_pauses)
    finally:
        sensor.stop()
        raw_sub.stop()
        pub.stop()
        cleanup = MqttConnection(broker, f"bench-sensor-{run}", persistent=False)  # drop the persistent session
        cleanup.start(wait=3)
        cleanup.stop()

    raw = latencies_ms(raw_sent, raw_arrivals.at)
    adp = latencies_ms(sensor_sent, sensor_arrivals.at)
    r, a = summary(raw), summary(adp)
    lost_raw, lost_adp = args.n - len(raw), args.n - len(adp)

    print(f"sensors_mqtt latency: {args.n} QoS 1 messages at {args.rate:.0f}/s via {args.host}:{args.port}")
    print(f"{'':28} {'p50 ms':>9} {'p99 ms':>9} {'max ms':>9} {'mean ms':>9} {'lost':>6}")
    print(f"{'raw broker round trip':28} {r['p50']:9.3f} {r['p99']:9.3f} {r['max']:9.3f} {r['mean']:9.3f} {lost_raw:6d}")
    print(f"{'publish -> sink (adapter)':28} {a['p50']:9.3f} {a['p99']:9.3f} {a['max']:9.3f} {a['mean']:9.3f} "
          f"{lost_adp:6d}")
    print(f"{'ratio adapter / raw':28} {a['p50'] / r['p50']:9.2f} {a['p99'] / r['p99']:9.2f} "
          f"{a['max'] / r['max']:9.2f} {a['mean'] / r['mean']:9.2f}")
    print(f"adapter overhead p50: {a['p50'] - r['p50']:+.3f} ms; budget p99 <= {args.budget_ms:.0f} ms")
    print(f"garbage collector during both measurements: {gc_pauses.describe()}")

    if lost_adp or lost_raw:
        print(f"FAIL: lost messages (raw {lost_raw}, adapter {lost_adp})", file=sys.stderr)
        return 1
    if a["p99"] > args.budget_ms:
        print(f"FAIL: adapter p99 {a['p99']:.3f} ms > {args.budget_ms:.0f} ms", file=sys.stderr)
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
