"""``HikvisionRecognizer``: the Recognizer port (and an HttpPushSource) over Hikvision ISAPI events.

Every way in -- the listening-mode HTTP route, the MQTT relay and the arming-mode alert stream -- ends in
:meth:`HikvisionRecognizer.receive` / ``_deliver``: parse (``parse.py``), mark the camera seen, drop
duplicates, save pictures, and hand a :class:`PlateRead` to the sink synchronously on the receiving thread
under the lane's lock, so reads of one lane arrive in order.

paho-mqtt (through ``smartpark.infra.mqtt``) and httpx are imported only when the settings use them.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, tzinfo
from pathlib import Path
from typing import Any

import attrs

from smartpark.core.errors import ValidationError
from smartpark.core.values import Plate
from smartpark.ports.http import HttpReply, HttpRequest, HttpRoute
from smartpark.ports.recognizer import DeviceHealth, PlateRead, RecognizerSink

from . import NAME, CameraConfig, Config
from .parse import AlertStreamParser, HikEvent, MalformedEvent, parse_alert, travel_to_direction

__all__ = ["HikvisionRecognizer", "Outcome"]

log = logging.getLogger(__name__)

_SEEN_IDS = 4096  # event ids remembered per camera
_SAFE_NAME = re.compile(r"[^A-Za-z0-9_-]")
_PNG = b"\x89PNG\r\n\x1a\n"


@attrs.frozen
class Outcome:
    """What became of one payload: the HTTP status to answer and a short text."""

    status: int
    text: str
    delivered: int = 0
    duplicates: int = 0


@attrs.define
class _Camera:
    cfg: CameraConfig
    lane_direction: str
    online: bool = True
    heard: bool = False
    last_seen_mono: float = 0.0
    last_seen_at: datetime | None = None
    changed_at: datetime | None = None
    detail: str = "not heard from yet"
    seen_ids: collections.OrderedDict[str, None] = attrs.field(factory=collections.OrderedDict)
    skew_warned: bool = False


class HikvisionRecognizer:
    """Plate reads and camera health from Hikvision ANPR cameras. See the package README for the settings."""

    name = NAME

    def __init__(self, config: Config, *, lanes: dict[str, str], clock: Any, data_dir: str | Path,
                 tz: tzinfo) -> None:
        self.config = config
        self.clock = clock
        self.tz = tz
        self.data_dir = Path(data_dir)
        self._cameras: dict[str, _Camera] = {
            c.id: _Camera(cfg=c, lane_direction=lanes.get(c.lane, "in")) for c in config.cameras
        }
        self._lane_locks = {lane: threading.RLock() for lane in {c.lane for c in config.cameras}}
        self._health_lock = threading.RLock()
        self._dedupe_lock = threading.Lock()
        # (lane, plate) -> (receive time on the monotonic clock, the read's event time)
        self._recent: dict[tuple[str, str], tuple[float, datetime]] = {}
        self._life_lock = threading.Lock()
        self._sink: RecognizerSink | None = None
        self._stop_event = threading.Event()
        self._threads: list[threading.Thread] = []
        self._streams: list[_AlertStream] = []
        self._mqtt: Any = None
        start = clock.now()
        for cam in self._cameras.values():
            cam.changed_at = start
            cam.last_seen_mono = clock.monotonic()

    # -- Recognizer ---------------------------------------------------------------------------------------------
    def start(self, sink: RecognizerSink) -> None:
        """Begin delivering to ``sink``; starts the health watchdog, the MQTT relay and the alert streams."""
        with self._life_lock:
            if self._sink is not None:
                self._sink = sink  # already running: just a new sink
                return
            self._stop_event = threading.Event()
            now_mono, now = self.clock.monotonic(), self.clock.now()
            with self._health_lock:
                for cam in self._cameras.values():
                    if not cam.heard:  # the silence clock starts now, not when we were built
                        cam.last_seen_mono, cam.changed_at = now_mono, now
            self._sink = sink
            self._threads = []
            self._spawn(self._watchdog, "hikvision-watchdog")
            if self.config.mqtt.enabled:
                self._start_mqtt()
            if self.config.alert_stream.enabled:
                self._start_streams()

    def stop(self) -> None:
        """Stop delivering; idempotent. Returns once no delivery is in flight."""
        with self._life_lock:
            self._sink = None
            self._stop_event.set()
            mqtt, self._mqtt = self._mqtt, None
            streams, self._streams = self._streams, []
            threads, self._threads = self._threads, []
        for stream in streams:
            stream.interrupt()
        if mqtt is not None:
            try:
                mqtt.stop()
            except Exception:  # noqa: BLE001 - stopping must not fail
                log.warning("%s: MQTT relay did not stop cleanly", NAME, exc_info=True)
        for lock in self._lane_locks.values():  # wait for deliveries in flight
            with lock:
                pass
        with self._health_lock:
            pass
        for t in threads:
            if t is not threading.current_thread():
                t.join(timeout=2.0)

    def devices(self) -> list[DeviceHealth]:
        """Per camera: online or not, ``at`` the last message (or our start, when never heard)."""
        with self._health_lock:
            return [
                DeviceHealth(device=cam.cfg.id, kind="camera", online=cam.online,
                             at=cam.last_seen_at or cam.changed_at or self.clock.now(), detail=cam.detail)
                for cam in self._cameras.values()
            ]

    # -- HttpPushSource -----------------------------------------------------------------------------------------
    def http_routes(self) -> list[HttpRoute]:
        return [HttpRoute(method="POST", path=self.config.http_path, handler=self.handle_http,
                          description="Hikvision ISAPI listening host: EventNotificationAlert from the camera")]

    def handle_http(self, request: HttpRequest) -> HttpReply:
        """The listening-mode handler: always answers, never raises."""
        try:
            camera_id = request.path_params.get("camera", "")
            cam = self._cameras.get(camera_id)
            if cam is None:
                return _reply(404, "unknown camera")
            if self.config.check_client_ip and cam.cfg.ip and _host(request.client) != cam.cfg.ip:
                log.warning("camera %s: refused a POST from %s (configured ip %s)", camera_id, request.client,
                            cam.cfg.ip)
                return _reply(403, "not this camera's address")
            outcome = self.receive(camera_id, request.headers.get("content-type", ""), request.body,
                                   source="http")
            return _reply(outcome.status, outcome.text)
        except Exception:  # noqa: BLE001 - a handler answers; our own bug is logged with its traceback
            log.exception("%s: listening handler failed", NAME)
            return _reply(500, "internal error")

    # -- the one path every payload takes -----------------------------------------------------------------------
    def receive(self, camera_id: str, content_type: str, body: bytes, *, source: str = "http",
                ack: Callable[[], None] | None = None) -> Outcome:
        """Parse one payload from camera ``camera_id`` and deliver what it holds. Never raises.

        With ``ack`` (the MQTT relay) and a sink that can take reads for later (``plate_read_deferred``), the
        reads are handed over and ``ack()`` is called once every one of them has been decided; otherwise
        ``ack()`` is called before returning."""
        latch = _Latch(ack)
        try:
            cam = self._cameras.get(camera_id)
            if cam is None:
                return Outcome(404, "unknown camera")
            if self._sink is None:
                return Outcome(503, "not started")
            try:
                events = parse_alert(content_type, body, tz=self.tz, max_bytes=self.config.max_body_bytes)
            except MalformedEvent as e:
                log.warning("camera %s: malformed event via %s (%d bytes): %s", camera_id, source, len(body),
                            e.reason)
                return Outcome(400, f"malformed event: {e.reason}")
            return self._deliver(cam, events, source, latch if ack is not None else None)
        finally:
            latch.release()

    def _deliver(self, cam: _Camera, events: Iterable[HikEvent], source: str,
                 latch: _Latch | None = None) -> Outcome:
        delivered = duplicates = 0
        with self._lane_locks[cam.cfg.lane]:
            sink = self._sink
            if sink is None:
                return Outcome(503, "not started")
            self._mark_seen(cam, source, sink)
            for ev in events:
                if not ev.is_read:
                    continue
                with self._health_lock:
                    if ev.event_id in cam.seen_ids:
                        duplicates += 1
                        continue
                read = self._build_read(cam, ev)
                key = _dedupe_key(read)
                if key and self._is_recent(cam.cfg.lane, key, read.at):
                    self._remember_id(cam, ev.event_id)
                    duplicates += 1
                    log.debug("camera %s: %s again within %s s, dropped", cam.cfg.id, key, self.config.dedupe_seconds)
                    continue
                picture = self._save_pictures(cam, ev, read.at)
                if picture:
                    read = attrs.evolve(read, picture=picture)
                try:
                    deferred = getattr(sink, "plate_read_deferred", None) if latch is not None else None
                    if deferred is not None:
                        deferred(read, latch.hold())
                    else:
                        sink.plate_read(read)
                except Exception:  # noqa: BLE001 - the camera may resend; we did not take the read
                    log.exception("camera %s: the sink refused a read", cam.cfg.id)
                    return Outcome(500, "internal error", delivered, duplicates)
                self._remember_id(cam, ev.event_id)
                if key:
                    self._mark_recent(cam.cfg.lane, key, read.at)
                delivered += 1
        return Outcome(200, "OK", delivered, duplicates)

    # -- building a read ----------------------------------------------------------------------------------------
    def _build_read(self, cam: _Camera, ev: HikEvent) -> PlateRead:
        plate: Plate | None = None
        if ev.plate_text:
            try:
                plate = Plate.parse(ev.plate_text)
            except (ValidationError, TypeError, ValueError):
                plate = None
        return PlateRead(
            lane=cam.cfg.lane,
            raw_text=ev.raw_plate or ev.plate_text,
            plate=plate,
            confidence=ev.confidence if ev.plate_text else 0.0,
            color=ev.color,
            at=self._event_time(cam, ev),
            device=cam.cfg.id,
            direction=travel_to_direction(ev.travel, cam.cfg.forward or cam.lane_direction),
            event_id=ev.event_id or None,
        )

    def _event_time(self, cam: _Camera, ev: HikEvent) -> datetime:
        now = self.clock.now()
        if ev.at is None:
            return now
        at = ev.at.astimezone(UTC)
        skew = self.config.max_clock_skew_seconds
        if skew is None:
            return at
        off = (at - now).total_seconds()
        if abs(off) <= skew or (ev.retransmission and off < 0):
            cam.skew_warned = False
            return at
        if not cam.skew_warned:
            cam.skew_warned = True
            log.warning("camera %s: its clock is off by %+.0f s (it says %s); using the receive time until it is "
                        "set right (NTP on the camera)", cam.cfg.id, off, ev.at.isoformat())
        return now

    def _save_pictures(self, cam: _Camera, ev: HikEvent, at: datetime) -> str | None:
        """Write the pictures as ``<pictures_dir>/YYYY-MM-DD/<camera>-<event id>-<n>.jpg``; the first one's path."""
        if not self.config.save_pictures or not ev.pictures:
            return None
        try:
            folder = self.data_dir / self.config.pictures_dir / at.astimezone(self.tz).strftime("%Y-%m-%d")
            folder.mkdir(parents=True, exist_ok=True, mode=0o750)
            eid = _SAFE_NAME.sub("", ev.event_id)[:64] or hashlib.sha256(ev.event_id.encode()).hexdigest()[:16]
            first: str | None = None
            for n, pic in enumerate(ev.pictures, 1):
                ext = ".png" if pic.data.startswith(_PNG) else ".jpg"
                path = folder / f"{cam.cfg.id}-{eid}-{n}{ext}"
                tmp = folder / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
                try:
                    with os.fdopen(fd, "wb") as f:
                        f.write(pic.data)
                    os.replace(tmp, path)
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                first = first or str(path.resolve())
            return first
        except OSError as e:
            log.error("camera %s: could not save the pictures of event %s: %s", cam.cfg.id, ev.event_id, e)
            return None

    # -- duplicates -----------------------------------------------------------------------------------------------
    def _remember_id(self, cam: _Camera, event_id: str) -> None:
        if not event_id:
            return
        with self._health_lock:
            cam.seen_ids[event_id] = None
            cam.seen_ids.move_to_end(event_id)
            while len(cam.seen_ids) > _SEEN_IDS:
                cam.seen_ids.popitem(last=False)

    def _is_recent(self, lane: str, key: str, at: datetime) -> bool:
        """The same plate on this lane within the window: received within it AND read within it by the event
        times. The second half keeps a backlog (a persistent MQTT session redelivered after an outage, reads
        that arrive in a burst) from merging two real visits of one car that were minutes apart."""
        window = self.config.dedupe_seconds
        if window <= 0:
            return False
        with self._dedupe_lock:
            last = self._recent.get((lane, key))
            return (last is not None and self.clock.monotonic() - last[0] < window
                    and abs((at - last[1]).total_seconds()) < window)

    def _mark_recent(self, lane: str, key: str, at: datetime) -> None:
        now = self.clock.monotonic()
        window = self.config.dedupe_seconds
        with self._dedupe_lock:
            # re-insert so insertion order stays time order, then expire a few from the front (amortised O(1))
            self._recent.pop((lane, key), None)
            self._recent[(lane, key)] = (now, at)
            for old, (t, _) in list(itertools.islice(self._recent.items(), 8)):
                if now - t < window and len(self._recent) <= 100_000:
                    break
                del self._recent[old]

    # -- health -------------------------------------------------------------------------------------------------
    def _mark_seen(self, cam: _Camera, source: str, sink: RecognizerSink) -> None:
        with self._health_lock:
            now = self.clock.now()
            cam.last_seen_mono = self.clock.monotonic()
            cam.last_seen_at = now
            cam.heard = True
            if cam.online:
                cam.detail = f"last message via {source}"
                return
            cam.online, cam.changed_at, cam.detail = True, now, f"back: message via {source}"
            log.info("camera %s is online again (%s)", cam.cfg.id, source)
            self._emit(sink, DeviceHealth(device=cam.cfg.id, kind="camera", online=True, at=now, detail=cam.detail))

    def check_health(self) -> list[DeviceHealth]:
        """Mark cameras silent for longer than their limit offline; returns (and delivers) the changes.

        The watchdog thread calls it every few seconds; tests call it after moving a fake clock.
        """
        changes: list[DeviceHealth] = []
        with self._health_lock:
            sink = self._sink
            if sink is None:
                return changes
            now_mono, now = self.clock.monotonic(), self.clock.now()
            for cam in self._cameras.values():
                limit = self._limit(cam)
                silent = now_mono - cam.last_seen_mono
                if not limit or not cam.online or silent < limit:
                    continue
                cam.online, cam.changed_at = False, now
                cam.detail = f"no message for {silent:.0f} s" if cam.heard else f"never heard in {silent:.0f} s"
                log.warning("camera %s is offline: %s", cam.cfg.id, cam.detail)
                health = DeviceHealth(device=cam.cfg.id, kind="camera", online=False, at=now, detail=cam.detail)
                changes.append(health)
                self._emit(sink, health)
        return changes

    def _limit(self, cam: _Camera) -> float:
        own = cam.cfg.offline_after_seconds
        return own if own is not None else self.config.offline_after_seconds

    @staticmethod
    def _emit(sink: RecognizerSink, health: DeviceHealth) -> None:
        try:
            sink.device_health(health)
        except Exception:  # noqa: BLE001
            log.exception("%s: the sink refused a health change", NAME)

    def _watchdog(self) -> None:
        limits = [self._limit(c) for c in self._cameras.values() if self._limit(c)]
        interval = min(5.0, max(0.2, min(limits) / 4)) if limits else 5.0
        stop = self._stop_event
        while not stop.wait(interval):
            try:
                self.check_health()
            except Exception:  # noqa: BLE001 - the watchdog keeps watching
                log.exception("%s: health check failed", NAME)

    def _spawn(self, target: Any, name: str, *args: Any) -> threading.Thread:
        t = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._threads.append(t)
        t.start()
        return t

    # -- MQTT relay ---------------------------------------------------------------------------------------------
    def _start_mqtt(self) -> None:
        from smartpark.infra.mqtt import BrokerSettings, MqttConnection

        m = self.config.mqtt
        settings = BrokerSettings(host=m.host, port=m.port, username=m.username,
                                  password=m.password.get_secret_value() if m.password else None,
                                  session_expiry=m.session_expiry_s)
        client_id = m.client_id or "smartpark-hik-" + hashlib.sha256(
            f"{socket.gethostname()}|{self.data_dir.resolve()}".encode()).hexdigest()[:12]
        conn = MqttConnection(settings, client_id, on_status=self._mqtt_status, persistent=m.persistent,
                               manual_ack=True)
        share = f"$share/{m.shared_group}/" if m.shared_group else ""
        for cam_id in self._cameras:
            conn.subscribe_deferred(share + self.topic_for(cam_id), self._mqtt_handler(cam_id))
        self._mqtt = conn
        conn.start()

    def topic_for(self, camera_id: str) -> str:
        return self.config.mqtt.topic.replace("{camera}", camera_id)

    def _mqtt_handler(self, camera_id: str) -> Any:
        def handle(topic: str, payload: bytes, ack: Callable[[], None]) -> None:
            # the relay publishes the camera's raw body; MqttConnection gives no properties, so sniff the type;
            # the message is acknowledged (PUBACK) only once its reads are decided: a crash loses none
            self.receive(camera_id, "", payload, source="mqtt", ack=ack)
        return handle

    @staticmethod
    def _mqtt_status(connected: bool, detail: str) -> None:
        log.info("%s: MQTT relay %s (%s)", NAME, "connected" if connected else "disconnected", detail)

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Wait until the MQTT relay is connected (True at once without MQTT)."""
        conn = self._mqtt
        return True if conn is None else bool(conn.wait_connected(timeout))

    # -- alert stream (arming mode) -------------------------------------------------------------------------------
    def _start_streams(self) -> None:
        by_device: dict[tuple[str, int], list[_Camera]] = {}
        for cam in self._cameras.values():
            if cam.cfg.ip:
                by_device.setdefault((cam.cfg.ip, cam.cfg.port), []).append(cam)
        for (ip, port), cams in by_device.items():
            stream = _AlertStream(self, ip, port, cams, self._stop_event)
            self._streams.append(stream)
            self._spawn(stream.run, f"hikvision-stream-{cams[0].cfg.id}")

    def _stream_events(self, cams: list[_Camera], events: Iterable[HikEvent]) -> None:
        for ev in events:
            if ev.is_heartbeat or len(cams) == 1:
                targets = cams if ev.is_heartbeat else cams[:1]
            else:
                targets = [c for c in cams if c.cfg.channel == ev.channel] or [c for c in cams if c.cfg.channel is None]
                targets = targets[:1]
                if not targets:
                    log.warning("camera %s: event for channel %s matches no configured camera", cams[0].cfg.id,
                                ev.channel)
            for cam in targets:
                try:
                    self._deliver(cam, [ev], "stream")
                except Exception:  # noqa: BLE001 - our bug must not drop the stream
                    log.exception("camera %s: delivering a streamed event failed", cam.cfg.id)


class _AlertStream:
    """One device's ``alertStream``: hold it open with Digest auth, parse as it comes, reconnect with backoff."""

    def __init__(self, owner: HikvisionRecognizer, ip: str, port: int, cams: list[_Camera],
                 stop: threading.Event) -> None:
        self.owner, self.cams, self.stop = owner, cams, stop
        cfg = owner.config.alert_stream
        host = f"[{ip}]" if ":" in ip and not ip.startswith("[") else ip
        default_port = 443 if cfg.scheme == "https" else 80
        self.url = f"{cfg.scheme}://{host}{'' if port == default_port else f':{port}'}{cfg.path}"
        self.label = ",".join(c.cfg.id for c in cams)
        self._sock: Any = None
        self._lock = threading.Lock()
        self.connections = 0  # successful connections, for tests and diagnostics

    def interrupt(self) -> None:
        """Wake a blocked read so the thread sees ``stop`` (shutting the socket down is thread-safe)."""
        with self._lock:
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def run(self) -> None:
        cfg = self.owner.config.alert_stream
        delay = cfg.reconnect_min_seconds
        while not self.stop.is_set():
            try:
                got_data = self._once()
            except Exception as e:  # noqa: BLE001 - network trouble: log one line and retry
                if self.stop.is_set():
                    break
                log.warning("camera %s: alert stream %s: %s: %s", self.label, self.url, type(e).__name__, e)
                got_data = False
            if got_data:
                delay = cfg.reconnect_min_seconds
            if self.stop.wait(delay):
                break
            delay = min(delay * 2, max(cfg.reconnect_max_seconds, cfg.reconnect_min_seconds))

    def _once(self) -> bool:
        import httpx

        cfg = self.owner.config.alert_stream
        assert cfg.password is not None
        auth = httpx.DigestAuth(cfg.username, cfg.password.get_secret_value())
        timeout = httpx.Timeout(cfg.read_timeout_seconds, connect=cfg.connect_timeout_seconds)
        got = False
        with httpx.Client(auth=auth, timeout=timeout, verify=cfg.verify_tls) as client:
            with client.stream("GET", self.url, headers={"Accept": "multipart/mixed, application/xml"}) as resp:
                if resp.status_code != 200:
                    log.warning("camera %s: alert stream answered %s", self.label, resp.status_code)
                    return False
                self._remember_socket(resp)
                self.connections += 1
                log.info("camera %s: alert stream open (%s)", self.label, self.url)
                boundary = _boundary_param(resp.headers.get("content-type", ""))
                parser = AlertStreamParser(boundary, tz=self.owner.tz, max_bytes=self.owner.config.max_body_bytes)
                try:
                    for chunk in resp.iter_bytes():
                        if self.stop.is_set():
                            return got
                        events = parser.feed(chunk)
                        self._report(parser)
                        if events:
                            got = True
                            self.owner._stream_events(self.cams, events)
                finally:
                    with self._lock:
                        self._sock = None
                if not self.stop.is_set():
                    self.owner._stream_events(self.cams, parser.flush())
                    log.info("camera %s: alert stream closed by the camera", self.label)
        return got

    def _report(self, parser: AlertStreamParser) -> None:
        for err in parser.errors:
            log.warning("camera %s: malformed part in the alert stream: %s", self.label, err.reason)
        parser.errors.clear()

    def _remember_socket(self, resp: Any) -> None:
        stream = resp.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        with self._lock:
            self._sock = sock
        if self.stop.is_set():
            self.interrupt()


def _boundary_param(content_type: str) -> str | None:
    m = re.search(r"""boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))""", content_type, re.IGNORECASE)
    return (m.group(1) or m.group(2)) if m else None


def _dedupe_key(read: PlateRead) -> str:
    if read.plate is not None:
        return str(read.plate)
    if read.confidence <= 0:
        return ""  # "no plate" reads are different cars: never merged by text
    return re.sub(r"\s+", "", read.raw_text).upper()


def _host(client: str) -> str:
    c = (client or "").strip()
    if c.startswith("["):
        return c[1:].split("]", 1)[0]
    return c.rsplit(":", 1)[0] if c.count(":") == 1 else c


def _reply(status: int, text: str) -> HttpReply:
    return HttpReply(status=status, body=text.encode("utf-8"))


class _Latch:
    """Calls ``ack`` once the payload's handling is over and every read handed over for later is decided."""

    def __init__(self, ack: Callable[[], None] | None) -> None:
        self._ack, self._count, self._lock = ack, 1, threading.Lock()

    def hold(self) -> Callable[[], None]:
        with self._lock:
            self._count += 1
        return self.release

    def release(self) -> None:
        with self._lock:
            self._count -= 1
            fire = self._count == 0
        if fire and self._ack is not None:
            self._ack()
