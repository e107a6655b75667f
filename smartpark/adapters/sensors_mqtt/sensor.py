"""Per-space occupancy sensors over MQTT -> :class:`smartpark.ports.sensor.SpaceSensor`.

Three layers, each testable alone:

* :func:`parse_state` / :func:`parse_status` -- the payload formats, parsed defensively (a bad payload raises
  :class:`PayloadError`; it never changes state);
* :class:`OccupancyTracker` -- the debounce / staleness / device-health state machine. Pure: no I/O, no threads,
  time only from the :class:`~smartpark.ports.clock.Clock` it is given. It returns what to deliver;
* :class:`MqttSpaceSensor` -- the adapter: an :class:`~smartpark.infra.mqtt.MqttConnection` (QoS 1, persistent
  session, TCP_NODELAY), the tracker behind a lock, and a timer thread that calls :meth:`check_timers`.

The receive path is parse + dict update + sink callback on the MQTT network thread; nothing else.
See README.md for the topics, payloads and semantics.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any

import attrs

from ...core.clock import SystemClock
from ...infra.mqtt import BrokerSettings, MqttConnection
from ...ports.clock import Clock
from ...ports.recognizer import DeviceHealth
from ...ports.sensor import SensorSink, SpaceReading

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DEVICE_PREFIX",
    "DEFAULT_TOPIC_PREFIX",
    "MAX_PAYLOAD_BYTES",
    "MqttSpaceSensor",
    "OccupancyTracker",
    "PayloadError",
    "StateMessage",
    "Topics",
    "check_prefix",
    "is_valid_id",
    "parse_state",
    "parse_status",
]

DEFAULT_TOPIC_PREFIX = "smartpark/{lot}/spaces"
DEFAULT_DEVICE_PREFIX = "smartpark/{lot}/sensors"
#: Larger payloads are refused unread: no sensor needs more, and the topic is untrusted input.
MAX_PAYLOAD_BYTES = 4096
#: Longest space or device id accepted (a topic level).
MAX_ID_LENGTH = 64
#: At most this many spaces and devices are tracked: ids come from topics, which anyone allowed to publish can
#: invent; a residential car park has a few thousand spaces at most.
MAX_SPACES = 20_000
MAX_DEVICES = 20_000
#: Timestamps further in the past than this are not believed (a device clock reset to 1970/2000): the receive
#: time is used instead. A timestamp in the future is clamped to the receive time.
MAX_TS_AGE = timedelta(days=1)

_BARE = {"1": True, "occupied": True, "0": False, "free": False}
_STATUS = {"online": True, "offline": False}
_KIND = "sensor"


# ---------------------------------------------------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------------------------------------------------


def is_valid_id(value: str) -> bool:
    """A space, device or lot id: one topic level of 1-64 printable characters, no / + #, no outer spaces."""
    return (0 < len(value) <= MAX_ID_LENGTH and value.strip() == value
            and not any(c in "/+#" or not c.isprintable() for c in value))


def check_prefix(prefix: str, what: str = "prefix") -> str:
    """A topic prefix: levels separated by '/', no empty level, no wildcard. Raises ValueError, else returns it."""
    if not prefix or prefix.startswith("/") or prefix.endswith("/") or "//" in prefix:
        raise ValueError(f"{what} {prefix!r}: expected topic levels separated by '/', with no empty level")
    if any(c in prefix for c in "+#\x00"):
        raise ValueError(f"{what} {prefix!r}: wildcards (+, #) are not allowed")
    return prefix


@attrs.frozen
class Topics:
    """The adapter's topic names. ``{lot}`` in a prefix is replaced by ``lot``."""

    spaces: str  # e.g. smartpark/main/spaces
    sensors: str  # e.g. smartpark/main/sensors

    @classmethod
    def for_lot(cls, lot: str = "main", topic_prefix: str = DEFAULT_TOPIC_PREFIX,
                device_prefix: str = DEFAULT_DEVICE_PREFIX) -> Topics:
        if not is_valid_id(lot):
            raise ValueError(f"lot {lot!r}: expected 1-{MAX_ID_LENGTH} printable characters without / + #")
        return cls(check_prefix(topic_prefix.replace("{lot}", lot), "topic_prefix"),
                   check_prefix(device_prefix.replace("{lot}", lot), "device_prefix"))

    # -- names -------------------------------------------------------------------------------------------------------
    def state(self, space: str) -> str:
        return f"{self.spaces}/{space}/state"

    def status(self, device: str) -> str:
        return f"{self.sensors}/{device}/status"

    def heartbeat(self, device: str) -> str:
        return f"{self.sensors}/{device}/heartbeat"

    # -- subscriptions -----------------------------------------------------------------------------------------------
    @property
    def state_filter(self) -> str:
        return f"{self.spaces}/+/state"

    @property
    def status_filter(self) -> str:
        return f"{self.sensors}/+/status"

    @property
    def heartbeat_filter(self) -> str:
        return f"{self.sensors}/+/heartbeat"

    @staticmethod
    def middle_level(topic: str, prefix: str, suffix: str) -> str | None:
        """``prefix/<x>/suffix`` -> ``x``, or None when the topic is not of that shape."""
        head, tail = prefix + "/", "/" + suffix
        if not (topic.startswith(head) and topic.endswith(tail)) or len(topic) <= len(head) + len(tail):
            return None
        level = topic[len(head):-len(tail)]
        return level if "/" not in level else None


# ---------------------------------------------------------------------------------------------------------------------
# Payloads
# ---------------------------------------------------------------------------------------------------------------------


class PayloadError(ValueError):
    """A payload that does not follow the documented format; the message is the reason, for the log."""


@attrs.frozen
class StateMessage:
    occupied: bool
    ts: datetime | None = None  # aware; None when the payload had none
    device: str | None = None


def _text(payload: bytes) -> str:
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(f"payload of {len(payload)} bytes (more than {MAX_PAYLOAD_BYTES})")
    try:
        return payload.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise PayloadError("payload is not UTF-8") from None


def parse_state(payload: bytes, tz: tzinfo = UTC) -> StateMessage:
    """Parse a ``.../{space}/state`` payload.

    Accepted: the bare strings ``1``, ``0``, ``occupied``, ``free`` (any case, surrounding white space ignored), or
    a JSON object ``{"occupied": true|false, "ts": "<ISO 8601>", "device": "<id>"}`` where ``ts`` and ``device``
    are optional and other keys are ignored. A ``ts`` without an offset is taken in ``tz``. Anything else raises
    :class:`PayloadError`.
    """
    text = _text(payload)
    bare = _BARE.get(text.lower())
    if bare is not None:
        return StateMessage(bare)
    if not text.startswith("{"):
        shown = text if len(text) <= 40 else text[:40] + "..."
        raise PayloadError(f"expected 1/0/occupied/free or a JSON object, got {shown!r}")
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:
        raise PayloadError(f"invalid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise PayloadError("expected a JSON object")
    occupied = doc.get("occupied")
    if type(occupied) is not bool:
        raise PayloadError(f'"occupied" must be true or false, got {occupied!r}')
    ts = doc.get("ts")
    when: datetime | None = None
    if ts is not None:
        if not isinstance(ts, str):
            raise PayloadError(f'"ts" must be an ISO 8601 string, got {ts!r}')
        try:
            when = datetime.fromisoformat(ts)
        except ValueError:
            raise PayloadError(f'"ts" is not an ISO 8601 time: {ts[:40]!r}') from None
        if when.tzinfo is None or when.utcoffset() is None:
            when = when.replace(tzinfo=tz)
        when = when.astimezone(UTC)
    device = doc.get("device")
    if device is not None and not (isinstance(device, str) and is_valid_id(device)):
        raise PayloadError(f'"device" must be 1-{MAX_ID_LENGTH} printable characters without / + #, got {device!r}')
    return StateMessage(occupied, when, device)


def parse_status(payload: bytes) -> bool | None:
    """Parse a ``.../{device}/status`` payload: ``online`` -> True, ``offline`` -> False (any case).

    An empty payload (a retained status being cleared) gives None; anything else raises :class:`PayloadError`.
    """
    text = _text(payload).lower()
    if not text:
        return None
    if text not in _STATUS:
        raise PayloadError(f"expected online or offline, got {text[:40]!r}")
    return _STATUS[text]


# ---------------------------------------------------------------------------------------------------------------------
# The state machine
# ---------------------------------------------------------------------------------------------------------------------

Output = SpaceReading | DeviceHealth


@attrs.define
class _Space:
    reported: bool | None = None  # the state last delivered (what spaces() shows)
    reported_mono: float | None = None
    raw: bool | None = None  # the state last received
    raw_at: datetime | None = None  # when ``raw`` began (the message's ts, or its receive time)
    raw_device: str = ""
    changed_mono: float | None = None  # when ``raw`` last changed
    heard_mono: float | None = None  # when any state message last arrived
    pending: bool = False  # a trailing edge is due once ``raw`` is stable for the hold time
    stale_logged: bool = False


@attrs.define
class _Device:
    health: DeviceHealth  # the last health reported
    heard_mono: float
    offline_by_status: bool = False

    @property
    def online(self) -> bool:
        return self.health.online


class OccupancyTracker:
    """Debounce, staleness and device health for a set of spaces. Not thread-safe: the caller serialises.

    Each ``on_*`` method and :meth:`check_timers` returns the readings and health changes to deliver, in order.

    * **Debounce.** A change of a space's state is reported at once (leading edge) unless the space changed, or was
      reported, less than ``min_hold_s`` ago; then it is reported only once the state has been stable for
      ``min_hold_s`` (trailing edge, by :meth:`check_timers`), and not at all if it settled back on the reported
      state. Repeats of the current state are not reported. So ordinary transitions are not delayed, and a flapping
      sensor yields at most one report per hold window. ``min_hold_s=0`` reports every change.
    * **Staleness.** A space not heard from for ``stale_after_s`` shows ``None`` in :meth:`spaces`; its next message
      is reported at once even if the state is the same. ``0`` disables it.
    * **Device health.** A device is online from its first message. It goes offline on an ``offline`` status (a
      Last Will) or when nothing (state, status, heartbeat) came from it for ``device_offline_after_s`` (``0``:
      never). After an ``offline`` status only an ``online`` status or a heartbeat brings it back (a retained
      state message is no proof of life); after a timeout any message does. Changes only are reported.
    """

    def __init__(self, clock: Clock, *, min_hold_s: float = 2.0, stale_after_s: float = 600.0,
                 device_offline_after_s: float = 900.0, spaces: Iterable[str] = (),
                 only_known_spaces: bool = False) -> None:
        if min(min_hold_s, stale_after_s, device_offline_after_s) < 0:
            raise ValueError("min_hold_s, stale_after_s and device_offline_after_s must be >= 0")
        self.clock = clock
        self.min_hold_s = float(min_hold_s)
        self.stale_after_s = float(stale_after_s)
        self.device_offline_after_s = float(device_offline_after_s)
        self._spaces: dict[str, _Space] = {s: _Space() for s in spaces}
        self._only_known = only_known_spaces
        self._pending: set[str] = set()
        self._devices: dict[str, _Device] = {}

    # -- queries ------------------------------------------------------------------------------------------------------
    def spaces(self) -> dict[str, bool | None]:
        now = self.clock.monotonic()
        return {name: (None if self._is_stale(sp, now) else sp.reported) for name, sp in self._spaces.items()}

    def devices(self) -> list[DeviceHealth]:
        """The last health reported for every device heard of, sorted by device."""
        return [self._devices[name].health for name in sorted(self._devices)]

    def accepts(self, space: str) -> bool:
        """Whether a state for ``space`` is taken: a known space, or a new one unless only known spaces are taken
        or :data:`MAX_SPACES` are already tracked (space ids come from untrusted topics)."""
        return space in self._spaces or (not self._only_known and len(self._spaces) < MAX_SPACES)

    # -- inputs -------------------------------------------------------------------------------------------------------
    def on_state(self, space: str, occupied: bool, *, device: str, at: datetime | None = None) -> list[Output]:
        """A state message for ``space`` from ``device``; ``at`` is the message's own time (default: now)."""
        if not self.accepts(space):
            raise KeyError(space)
        now = self.clock.monotonic()
        out = self._heard(device, now, "state message", proof_of_life=False)
        sp = self._spaces.get(space)
        if sp is None:
            sp = self._spaces[space] = _Space()
        was_stale = self._is_stale(sp, now)
        sp.heard_mono, sp.stale_logged = now, False
        if occupied == sp.raw and not was_stale:
            return out  # a repeat: refreshes staleness only
        sp.raw, sp.raw_at, sp.raw_device = occupied, self._believable(at), device
        quiet_since = max((t for t in (sp.changed_mono, sp.reported_mono) if t is not None), default=None)
        sp.changed_mono = now
        if was_stale or quiet_since is None or now - quiet_since >= self.min_hold_s:
            out.append(self._report(space, sp, now))
        else:
            sp.pending = True
            self._pending.add(space)
        return out

    def on_status(self, device: str, online: bool) -> list[Output]:
        now = self.clock.monotonic()
        if online:
            return self._heard(device, now, "status online", proof_of_life=True)
        d = self._devices.get(device)
        if d is not None and not d.online:
            d.offline_by_status = True
            return []
        if d is None and len(self._devices) >= MAX_DEVICES:
            log.warning("device %s ignored: already tracking %d devices", device, MAX_DEVICES)
            return []
        health = self._health(device, False, "status offline (Last Will or shutdown)")
        self._devices[device] = _Device(health, heard_mono=now, offline_by_status=True)
        return [health]

    def on_heartbeat(self, device: str) -> list[Output]:
        return self._heard(device, self.clock.monotonic(), "heartbeat", proof_of_life=True)

    def check_timers(self) -> list[Output]:
        """Trailing-edge reports that are due, devices that went quiet; logs spaces that went stale."""
        now = self.clock.monotonic()
        out: list[Output] = []
        for space in sorted(self._pending):
            sp = self._spaces[space]
            if sp.changed_mono is not None and now - sp.changed_mono >= self.min_hold_s:
                self._pending.discard(space)
                sp.pending = False
                if sp.raw is not None and sp.raw != sp.reported:
                    out.append(self._report(space, sp, now))
        if self.stale_after_s:
            for space, sp in self._spaces.items():
                if not sp.stale_logged and self._is_stale(sp, now):
                    sp.stale_logged = True
                    log.info("space %s: no message for %.0f s, state unknown", space, now - (sp.heard_mono or now))
        if self.device_offline_after_s:
            for device, d in self._devices.items():
                if d.online and now - d.heard_mono >= self.device_offline_after_s:
                    d.health = self._health(device, False, f"no message for {now - d.heard_mono:.0f} s")
                    out.append(d.health)
        return out

    # -- internals ----------------------------------------------------------------------------------------------------
    def _is_stale(self, sp: _Space, now: float) -> bool:
        return bool(self.stale_after_s) and sp.heard_mono is not None and now - sp.heard_mono >= self.stale_after_s

    def _believable(self, at: datetime | None) -> datetime:
        now = self.clock.now()
        if at is None or at > now:
            return now
        if now - at > MAX_TS_AGE:
            log.debug("timestamp %s is more than %s old; using the receive time", at.isoformat(), MAX_TS_AGE)
            return now
        return at

    def _report(self, space: str, sp: _Space, now: float) -> SpaceReading:
        assert sp.raw is not None
        sp.reported, sp.reported_mono, sp.pending = sp.raw, now, False
        self._pending.discard(space)
        return SpaceReading(space=space, occupied=sp.raw, at=sp.raw_at or self.clock.now(), device=sp.raw_device)

    def _heard(self, device: str, now: float, via: str, *, proof_of_life: bool) -> list[Output]:
        d = self._devices.get(device)
        if d is None:
            if len(self._devices) >= MAX_DEVICES:
                log.warning("device %s ignored: already tracking %d devices", device, MAX_DEVICES)
                return []
            health = self._health(device, True, f"first seen ({via})")
            self._devices[device] = _Device(health, heard_mono=now)
            return [health]
        d.heard_mono = now
        if d.online or (d.offline_by_status and not proof_of_life):
            return []
        d.health, d.offline_by_status = self._health(device, True, via), False
        return [d.health]

    def _health(self, device: str, online: bool, detail: str) -> DeviceHealth:
        return DeviceHealth(device=device, kind=_KIND, online=online, at=self.clock.now(), detail=detail)


# ---------------------------------------------------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------------------------------------------------


class _RateLimitedLog:
    """Warn about bad payloads per topic at most once per ``every_s`` (a broken sensor must not flood the log)."""

    MAX_TOPICS = 1000

    def __init__(self, clock: Clock, every_s: float = 60.0) -> None:
        self.clock, self.every_s = clock, every_s
        self._last: dict[str, tuple[float, int]] = {}

    def warn(self, topic: str, reason: str) -> None:
        now = self.clock.monotonic()
        last, suppressed = self._last.get(topic, (None, 0))
        if last is not None and now - last < self.every_s:
            self._last[topic] = (last, suppressed + 1)
            return
        if len(self._last) >= self.MAX_TOPICS:
            self._last.clear()
        self._last[topic] = (now, 0)
        more = f" ({suppressed} more since the last warning)" if suppressed else ""
        log.warning("ignored a bad payload on %s: %s%s", topic, reason, more)


class MqttSpaceSensor:
    """The :class:`~smartpark.ports.sensor.SpaceSensor` adapter for MQTT occupancy sensors.

    ``start(sink)`` connects (QoS 1 subscriptions on a persistent session named ``client_id``) and waits up to
    ``connect_wait_s`` for the subscriptions to be acknowledged; a broker that is down is not fatal (the client keeps
    trying). Deliveries run on the MQTT network thread (messages) and on the timer thread (trailing edges, device
    time-outs), serialised so one space's readings arrive in order. ``stop()`` stops deliveries at once; the
    broker keeps the session, and the QoS 1 messages published meanwhile arrive at the next start.
    """

    def __init__(self, broker: BrokerSettings | None = None, *, name: str = "sensors_mqtt", lot: str = "main",
                 topic_prefix: str = DEFAULT_TOPIC_PREFIX, device_prefix: str = DEFAULT_DEVICE_PREFIX,
                 client_id: str | None = None, spaces: Iterable[str] = (), only_known_spaces: bool = False,
                 min_hold_ms: int = 2000, stale_after_s: float = 600.0, device_offline_after_s: float = 900.0,
                 clock: Clock | None = None, tz: tzinfo = UTC, connect_wait_s: float = 5.0,
                 timer_interval_s: float = 0.1) -> None:
        self.name = name
        self.broker = broker or BrokerSettings()
        self.topics = Topics.for_lot(lot, topic_prefix, device_prefix)
        self.client_id = client_id or f"smartpark-{name}-{lot}"
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.tz = tz
        self.connect_wait_s = connect_wait_s
        self.timer_interval_s = timer_interval_s
        self.tracker = OccupancyTracker(self.clock, min_hold_s=min_hold_ms / 1000.0, stale_after_s=stale_after_s,
                                        device_offline_after_s=device_offline_after_s, spaces=spaces,
                                        only_known_spaces=only_known_spaces)
        #: Bad payloads ignored so far (also logged, rate-limited per topic).
        self.bad_payloads = 0
        self._bad_log = _RateLimitedLog(self.clock)
        # _deliver serialises decide-and-deliver (order per space); _state guards the tracker alone, so spaces()
        # never waits on a sink call.
        self._deliver = threading.RLock()
        self._state = threading.Lock()
        self._sink: SensorSink | None = None
        self._conn: MqttConnection | None = None
        self._timer: threading.Thread | None = None
        self._timer_stop = threading.Event()
        self._subscribed = threading.Event()
        self._subacks = 0

    # -- SpaceSensor --------------------------------------------------------------------------------------------------
    def start(self, sink: SensorSink) -> None:
        """Begin delivering to ``sink``; connect if not connected. Returns once subscribed or ``connect_wait_s``."""
        with self._deliver:
            self._sink = sink
            if self._conn is not None:
                return
            conn = MqttConnection(self.broker, self.client_id, on_status=self._on_status)
            self._subacks = 0
            self._subscribed.clear()
            conn.client.on_subscribe = self._on_suback  # MqttConnection does not report SUBACKs itself
            conn.subscribe(self.topics.state_filter, self._on_state_message, qos=1)
            conn.subscribe(self.topics.status_filter, self._on_status_message, qos=1)
            conn.subscribe(self.topics.heartbeat_filter, self._on_heartbeat_message, qos=1)
            self._conn = conn
            self._timer_stop.clear()
            self._timer = threading.Thread(target=self._run_timer, name=f"{self.name}-timers", daemon=True)
            self._timer.start()
            conn.start()
        if not self._subscribed.wait(self.connect_wait_s):
            log.warning("%s: not subscribed on %s:%s after %.1f s; still trying in the background", self.name,
                        self.broker.host, self.broker.port, self.connect_wait_s)

    def stop(self) -> None:
        """Stop delivering and disconnect (the broker keeps the session); idempotent."""
        with self._deliver:
            self._sink = None
            conn, self._conn = self._conn, None
            timer, self._timer = self._timer, None
            self._timer_stop.set()
        if conn is not None:
            conn.stop()
        if timer is not None and timer is not threading.current_thread():
            timer.join(timeout=5)

    def spaces(self) -> dict[str, bool | None]:
        with self._state:
            return self.tracker.spaces()

    def devices(self) -> list[DeviceHealth]:
        """The last known health of every sensor device heard of (as ``Recognizer.devices()``)."""
        with self._state:
            return self.tracker.devices()

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and conn.connected

    def check_timers(self) -> None:
        """Deliver due trailing edges and device time-outs (the timer thread calls this; tests call it directly)."""
        self._decide_and_deliver(self.tracker.check_timers)

    # -- receive path (MQTT network thread) ---------------------------------------------------------------------------
    def _on_state_message(self, topic: str, payload: bytes) -> None:
        space = Topics.middle_level(topic, self.topics.spaces, "state")
        if space is None or not is_valid_id(space):
            return self._bad(topic, "the space id in the topic is not valid")
        if not payload:
            return  # a retained state being cleared
        try:
            msg = parse_state(payload, self.tz)
        except PayloadError as e:
            return self._bad(topic, str(e))
        if not self.tracker.accepts(space):
            return self._bad(topic, f"space {space!r} is not in the configured spaces, or too many spaces")
        device = msg.device or space
        self._decide_and_deliver(lambda: self.tracker.on_state(space, msg.occupied, device=device, at=msg.ts))

    def _on_status_message(self, topic: str, payload: bytes) -> None:
        device = Topics.middle_level(topic, self.topics.sensors, "status")
        if device is None or not is_valid_id(device):
            return self._bad(topic, "the device id in the topic is not valid")
        try:
            online = parse_status(payload)
        except PayloadError as e:
            return self._bad(topic, str(e))
        if online is not None:
            self._decide_and_deliver(lambda: self.tracker.on_status(device, online))

    def _on_heartbeat_message(self, topic: str, payload: bytes) -> None:
        device = Topics.middle_level(topic, self.topics.sensors, "heartbeat")
        if device is None or not is_valid_id(device):
            return self._bad(topic, "the device id in the topic is not valid")
        if len(payload) > MAX_PAYLOAD_BYTES:
            return self._bad(topic, f"payload of {len(payload)} bytes (more than {MAX_PAYLOAD_BYTES})")
        self._decide_and_deliver(lambda: self.tracker.on_heartbeat(device))

    def _decide_and_deliver(self, decide: Any) -> None:
        with self._deliver:
            if self._sink is None:
                return  # stopped: nothing is delivered, and the state is not advanced either
            with self._state:
                outputs = decide()
            sink = self._sink
            for item in outputs:
                try:
                    if isinstance(item, SpaceReading):
                        sink.space_reading(item)
                    else:
                        sink.device_health(item)
                except Exception:  # noqa: BLE001 - a failing sink must not stop the sensor
                    log.exception("%s: the sink failed on %r", self.name, item)

    def _bad(self, topic: str, reason: str) -> None:
        self.bad_payloads += 1
        self._bad_log.warn(topic, reason)

    # -- background -----------------------------------------------------------------------------------------------------
    def _run_timer(self) -> None:
        while not self._timer_stop.wait(self.timer_interval_s):
            try:
                self.check_timers()
            except Exception:  # noqa: BLE001 - keep the timers running
                log.exception("%s: check_timers failed", self.name)

    def _on_suback(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        for rc in reason_codes or ():
            if getattr(rc, "is_failure", False):
                log.error("%s: the broker refused a subscription: %s", self.name, rc)
        self._subacks += 1
        if self._subacks >= 3:
            self._subscribed.set()

    def _on_status(self, connected: bool, detail: str) -> None:
        if not connected and self._conn is not None:  # (None: we are stopping on purpose)
            log.warning("%s: lost the broker (%s); sensors will look stale until it is back", self.name, detail)

    def __repr__(self) -> str:
        return f"MqttSpaceSensor(name={self.name!r}, client_id={self.client_id!r}, prefix={self.topics.spaces!r})"
