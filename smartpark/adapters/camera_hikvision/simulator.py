"""A Hikvision ANPR camera simulator: real ISAPI ``EventNotificationAlert`` payloads, sent the two ways cameras do.

Used by ``smartpark demo``, ``smartpark camera-sim`` and the gate-latency benchmark. A payload is built from
the captured sample of a Chinese traffic camera (``tests/fixtures/hikvision/anpr_3_cn_multipart_capture.txt``,
its XML part copied below as :data:`CN_TEMPLATE`, the Go-literal tab indent removed) with the plate (with the
colour word in front, as these cameras send it: ``蓝京A12345``), time, plate colour, confidence, direction and a
fresh event id (``UUID``) substituted, and sent as

* **listening mode**: an HTTP POST of ``multipart/form-data`` -- the XML part ``anpr.xml`` and small generated
  JPEG pictures (``licensePlatePicture.jpg``, ``detectionPicture.jpg``) -- to the service's camera route
  (``/devices/hikvision/{camera}``), as the camera's "HTTP listening host" setting does; or
* **MQTT relay**: the same raw body published with QoS 1 on ``smartpark/cameras/{camera}/events``, as an edge
  bridge relays it.

The JPEGs are real baseline JPEGs (JFIF, YCbCr 4:4:4, one flat colour per 8x8 block), encoded here with the
standard library: a blocky plate of the right colour with a white border and character-like marks, and a
grey scene with the plate in it. Their comment segment names the plate, so no two pictures are the same.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import re
import struct
import sys
import threading
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, tzinfo
from typing import Any
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

import attrs

__all__ = [
    "CN_TEMPLATE", "AlertPayload", "CameraSimulator", "build_alert", "build_alert_xml", "detection_picture",
    "main", "make_jpeg", "plate_picture",
]

#: The XML part of the captured multipart POST (fixture ``anpr_3_cn_multipart_capture.txt``), tab indent removed.
CN_TEMPLATE = """<?xml version="1.0" encoding="utf-8"?>
<EventNotificationAlert version="2.0" xmlns="http://www.isapi.org/ver20/XMLSchema">
<ipAddress>192.168.100.248</ipAddress>
<ipv6Address>::</ipv6Address>
<portNo>20480</portNo>
<protocol>HTTP</protocol>
<macAddress>44:a6:42:f7:3a:21</macAddress>
<channelID>1</channelID>
<dateTime>2034-01-04T15:57:03+08:00</dateTime>
<activePostCount>17</activePostCount>
<eventType>ANPR</eventType>
<eventState>active</eventState>
<eventDescription>ANPR</eventDescription>
<channelName>IP CAPTURE CAMERA</channelName>
<deviceID>123456789</deviceID>
<ANPR>
<country>59</country>
<licensePlate>蓝苏A8HK52</licensePlate>
<line>1</line>
<direction>reverse</direction>
<confidenceLevel>78</confidenceLevel>
<plateType>92TypeCivil</plateType>
<plateColor>blue</plateColor>
<licenseBright>0</licenseBright>
<pilotsafebelt>unknown</pilotsafebelt>
<vicepilotsafebelt>unknown</vicepilotsafebelt>
<pilotsunvisor>unknown</pilotsunvisor>
<vicepilotsunvisor>unknown</vicepilotsunvisor>
<envprosign>unknown</envprosign>
<dangmark>unknown</dangmark>
<uphone>unknown</uphone>
<pendant>unknown</pendant>
<tissueBox>unknown</tissueBox>
<frontChild>unknown</frontChild>
<label>unknown</label>
<smoking>unknown</smoking>
<decoration>unknown</decoration>
<plateCharBelieve>99,99,99,99,99,99,99</plateCharBelieve>
<speedLimit>0</speedLimit>
<illegalInfo>
<illegalCode>0</illegalCode>
<illegalName>正常</illegalName>
<illegalDescription>正常</illegalDescription>
</illegalInfo>
<vehicleType>buggy</vehicleType>
<featurePicFileName>1</featurePicFileName>
<detectDir>2</detectDir>
<relaLaneDirectionType>0</relaLaneDirectionType>
<detectType>3</detectType>
<barrierGateCtrlType>0</barrierGateCtrlType>
<alarmDataType>0</alarmDataType>
<dwIllegalTime>0</dwIllegalTime>
<vehicleInfo>
<index>563</index>
<vehicleType>1</vehicleType>
<colorDepth>0</colorDepth>
<color>unknown</color>
<speed>0</speed>
<length>0</length>
<vehicleLogoRecog>0</vehicleLogoRecog>
<vehileSubLogoRecog>0</vehileSubLogoRecog>
<vehileModel>0</vehileModel>
<CarWindowFeature>
<tempPlate>unknown</tempPlate>
<passCard>unknown</passCard>
<carCard>unknown</carCard>
</CarWindowFeature>
<CarBodyFeature>
<sparetire>unknown</sparetire>
<rack>unknown</rack>
<sunRoof>unknown</sunRoof>
<words>unknown</words>
</CarBodyFeature>
<vehicleUseType>unknown</vehicleUseType>
</vehicleInfo>
<pictureInfoList>
<pictureInfo>
<fileName>licensePlatePicture.jpg</fileName>
<type>licensePlatePicture</type>
<dataType>0</dataType>
</pictureInfo>
<pictureInfo>
<fileName>detectionPicture.jpg</fileName>
<type>detectionPicture</type>
<dataType>0</dataType>
<plateRect>
<X>375</X>
<Y>645</Y>
<width>227</width>
<height>118</height>
</plateRect>
<vehicelRect>
<X>241</X>
<Y>86</Y>
<width>547</width>
<height>765</height>
</vehicelRect>
<PilotRect>
<x>0</x>
<y>0</y>
<width>0</width>
<height>0</height>
</PilotRect>
<VicepilotRect>
<x>0</x>
<y>0</y>
<width>0</width>
<height>0</height>
</VicepilotRect>
<VehicelWindowRect>
<x>0</x>
<y>0</y>
<width>0</width>
<height>0</height>
</VehicelWindowRect>
<capturePicSecurityCode></capturePicSecurityCode>
</pictureInfo>
</pictureInfoList>
<listType>temporary</listType>
</ANPR>
<UUID>46dd0716-1dd2-11b2-821f-8ba17e6f56b7</UUID>
<picNum>2</picNum>
<pilotStandardSafebelt>unknown</pilotStandardSafebelt>
<vicepilotStandardSafebelt>unknown</vicepilotStandardSafebelt>
<VehicleGATInfo>
<palteTypeByGAT>2</palteTypeByGAT>
<plateColorByGAT>2</plateColorByGAT>
<vehicleTypeByGAT>H20</vehicleTypeByGAT>
<colorByGAT>K</colorByGAT>
</VehicleGATInfo>
</EventNotificationAlert>
"""

DEFAULT_TOPIC = "smartpark/cameras/{camera}/events"
DEFAULT_HTTP_PATH = "/devices/hikvision/{camera}"

#: The colour word Chinese cameras put in front of the plate text, and the plate-colour code of VehicleGATInfo.
_COLOUR_WORD = {"blue": "蓝", "yellow": "黄", "green": "绿", "white": "白", "black": "黑"}
_COLOUR_GAT = {"white": "0", "yellow": "1", "blue": "2", "black": "3", "green": "5"}
# plate background and character colours (RGB)
_PLATE_RGB = {"blue": ((0, 72, 168), (255, 255, 255)), "yellow": ((246, 190, 0), (20, 20, 20)),
              "green": ((96, 200, 120), (20, 20, 20)), "white": ((240, 240, 240), (20, 20, 20)),
              "black": ((20, 20, 20), (255, 255, 255))}
_POST_COUNT = itertools.count(1)


def default_colour(plate: str) -> str:
    """The usual plate colour for ``plate``: green for new-energy plates (8 characters), else blue."""
    return "green" if len(plate) == 8 else "blue"


# ---------------------------------------------------------------------------------------------------------------
# the XML and the multipart body
# ---------------------------------------------------------------------------------------------------------------
def _sub(xml: str, tag: str, value: str) -> str:
    """Replace the text of the first ``<tag>`` (any namespace prefix) with ``value`` (escaped)."""
    pattern = re.compile(rf"(<(?:\w+:)?{tag}>)[^<]*(</(?:\w+:)?{tag}>)")
    new, n = pattern.subn(lambda m: m.group(1) + escape(value) + m.group(2), xml, count=1)
    if not n:
        raise ValueError(f"the template has no <{tag}> element")
    return new


def build_alert_xml(plate: str, *, at: datetime | None = None, color: str | None = None, confidence: float = 0.98,
                    direction: str = "forward", event_id: str | None = None, tz: tzinfo | str = "Asia/Shanghai",
                    template: str = CN_TEMPLATE, colour_prefix: bool = True, ip: str | None = None) -> tuple[str, bytes]:
    """One ``EventNotificationAlert`` for ``plate``; returns (event id, UTF-8 XML).

    ``at`` is the camera's time (default: now), written with the lot's UTC offset as the cameras do;
    ``confidence`` is 0..1 (``confidenceLevel`` 0..100); ``direction`` is ``forward`` (approaching the camera,
    the lane's own direction) or ``reverse``; ``event_id`` defaults to a fresh UUID. ``plate=""`` is a vehicle
    with no readable plate (``无车牌``, confidence 0).
    """
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    when = (at or datetime.now(UTC)).astimezone(zone)
    colour = color or (default_colour(plate) if plate else "unknown")
    eid = event_id or str(uuid.uuid4())
    if plate:
        text = (_COLOUR_WORD.get(colour, "") if colour_prefix else "") + plate
        level = max(0, min(100, round(confidence * 100)))
    else:
        text, level = "无车牌", 0
    xml = template
    for tag, value in (
        ("dateTime", when.isoformat(timespec="seconds")),
        ("activePostCount", str(next(_POST_COUNT))),
        ("licensePlate", text),
        ("direction", direction),
        ("confidenceLevel", str(level)),
        ("plateColor", colour),
        ("plateCharBelieve", ",".join([str(max(level, 1))] * max(len(plate), 1))),
        ("UUID", eid),
    ):
        xml = _sub(xml, tag, value)
    if ip:
        xml = _sub(xml, "ipAddress", ip)
    if colour in _COLOUR_GAT and "plateColorByGAT" in xml:
        xml = _sub(xml, "plateColorByGAT", _COLOUR_GAT[colour])
    return eid, xml.encode("utf-8")


@attrs.frozen
class AlertPayload:
    """A payload as the camera sends it: ``content_type`` is the HTTP header (MQTT carries the body alone)."""

    content_type: str
    body: bytes
    event_id: str
    plate: str

    def __len__(self) -> int:
        return len(self.body)


def multipart(parts: Sequence[tuple[str, str, bytes]], boundary: str | None = None) -> tuple[str, bytes]:
    """(content type, body) of a ``multipart/form-data`` body of (name, content type, data) parts, CRLF line ends,
    with the ``Content-Length`` part headers Hikvision firmware writes."""
    b = boundary or "-------------------------" + uuid.uuid4().hex[:13]
    out = bytearray()
    for name, ctype, data in parts:
        out += (f"--{b}\r\nContent-Disposition: form-data; name=\"{name}\";filename=\"{name}\"\r\n"
                f"Content-Type: {ctype}\r\nContent-Length: {len(data)}\r\n\r\n").encode("ascii")
        out += data + b"\r\n"
    out += f"--{b}--\r\n".encode("ascii")
    return f"multipart/form-data; boundary={b}", bytes(out)


def build_alert(plate: str, *, pictures: bool = True, **kwargs: Any) -> AlertPayload:
    """The listening-mode POST body: the XML part ``anpr.xml`` plus (``pictures``) two generated JPEGs.

    ``kwargs`` are those of :func:`build_alert_xml`.
    """
    eid, xml = build_alert_xml(plate, **kwargs)
    parts = [("anpr.xml", 'application/xml; charset="UTF-8"', xml)]
    if pictures:
        colour = kwargs.get("color") or (default_colour(plate) if plate else "blue")
        parts.append(("licensePlatePicture.jpg", "image/jpeg", plate_picture(plate, colour, eid)))
        parts.append(("detectionPicture.jpg", "image/jpeg", detection_picture(plate, colour, eid)))
    ctype, body = multipart(parts)
    return AlertPayload(ctype, body, eid, plate)


# ---------------------------------------------------------------------------------------------------------------
# a small baseline JPEG encoder (DC only: each 8x8 block is one flat colour)
# ---------------------------------------------------------------------------------------------------------------
# ITU-T T.81 Annex K.3, table K.3: luminance DC differences
_DC_BITS = (0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0)
_DC_VALS = tuple(range(12))
# A two-symbol AC table: EOB (0x00) and ZRL (0xF0); only EOB is used
_AC_BITS = (0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
_AC_VALS = (0x00, 0xF0)


def _huffman_codes(bits: Sequence[int], vals: Sequence[int]) -> dict[int, tuple[int, int]]:
    codes, code, k = {}, 0, 0
    for length in range(1, 17):
        for _ in range(bits[length - 1]):
            codes[vals[k]] = (code, length)
            code, k = code + 1, k + 1
        code <<= 1
    return codes


_DC_CODES = _huffman_codes(_DC_BITS, _DC_VALS)
_EOB = _huffman_codes(_AC_BITS, _AC_VALS)[0x00]


class _BitWriter:
    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.n = 0

    def put(self, value: int, length: int) -> None:
        self.acc = (self.acc << length) | (value & ((1 << length) - 1))
        self.n += length
        while self.n >= 8:
            self.n -= 8
            byte = (self.acc >> self.n) & 0xFF
            self.out.append(byte)
            if byte == 0xFF:
                self.out.append(0x00)  # byte stuffing
        self.acc &= (1 << self.n) - 1

    def flush(self) -> bytes:
        if self.n:
            self.put((1 << (8 - self.n)) - 1, 8 - self.n)  # pad with 1 bits
        return bytes(self.out)


def _segment(marker: int, payload: bytes) -> bytes:
    return struct.pack(">HH", 0xFF00 | marker, len(payload) + 2) + payload


def make_jpeg(width: int, height: int, colour_at: Callable[[int, int], tuple[int, int, int]],
              comment: str = "") -> bytes:
    """A baseline JPEG ``width`` x ``height`` (multiples of 8) where block (bx, by) has ``colour_at(bx, by)`` (RGB)."""
    if width % 8 or height % 8 or not 0 < width <= 4096 or not 0 < height <= 4096:
        raise ValueError("width and height must be multiples of 8, at most 4096")
    bw = _BitWriter()
    prev = [0, 0, 0]
    for by in range(height // 8):
        for bx in range(width // 8):
            r, g, b = colour_at(bx, by)
            ycc = (0.299 * r + 0.587 * g + 0.114 * b,
                   128 - 0.168736 * r - 0.331264 * g + 0.5 * b,
                   128 + 0.5 * r - 0.418688 * g - 0.081312 * b)
            for c, value in enumerate(ycc):
                # a flat block's DC coefficient is 8 x (value - 128); quantised by 8 it is value - 128
                dc = max(-127, min(127, round(value) - 128))
                diff, prev[c] = dc - prev[c], dc
                size = abs(diff).bit_length()
                code, length = _DC_CODES[size]
                bw.put(code, length)
                if size:
                    bw.put(diff if diff > 0 else diff + (1 << size) - 1, size)
                bw.put(*_EOB)
    scan = bw.flush()

    def dht(cls_id: int, bits: Sequence[int], vals: Sequence[int]) -> bytes:
        return bytes([cls_id]) + bytes(bits) + bytes(vals)

    quant = bytes([0]) + bytes([8] + [1] * 63)
    sof = struct.pack(">BHHB", 8, height, width, 3) + bytes([1, 0x11, 0, 2, 0x11, 0, 3, 0x11, 0])
    sos = bytes([3, 1, 0x00, 2, 0x00, 3, 0x00, 0, 63, 0])
    out = bytearray(b"\xff\xd8")
    out += _segment(0xE0, b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00")
    if comment:
        out += _segment(0xFE, comment.encode("utf-8")[:60000])
    out += _segment(0xDB, quant)
    out += _segment(0xC0, sof)
    out += _segment(0xC4, dht(0x00, _DC_BITS, _DC_VALS) + dht(0x10, _AC_BITS, _AC_VALS))
    out += _segment(0xDA, sos)
    out += scan + b"\xff\xd9"
    return bytes(out)


def _glyph_bits(plate: str) -> list[int]:
    """Seven 3x4 "characters" (12 bits each), derived from the plate text: marks, not a font."""
    digest = hashlib.sha256(plate.encode("utf-8")).digest()
    return [int.from_bytes(digest[2 * i:2 * i + 2], "big") & 0xFFF for i in range(8)]


def plate_picture(plate: str, colour: str = "blue", event_id: str = "") -> bytes:
    """A 208 x 64 close-up of the plate: its colour, a border and blocky character marks."""
    bg, fg = _PLATE_RGB.get(colour, _PLATE_RGB["blue"])
    glyphs = _glyph_bits(plate)

    def at(bx: int, by: int) -> tuple[int, int, int]:
        if bx in (0, 25) or by in (0, 7):
            return (235, 235, 235)  # the frame around the plate
        if by in (1, 6) or bx in (1, 24):
            return bg
        i, col = divmod(bx - 2, 3)  # seven characters of 3 blocks (2 marks + a gap)
        if col == 2 or i >= 7:
            return bg
        bit = (by - 2) * 2 + col  # 4 rows x 2 columns
        return fg if (glyphs[i] >> bit) & 1 else bg

    return make_jpeg(208, 64, at, f"smartpark camera simulator: licensePlatePicture {plate} {event_id}")


def detection_picture(plate: str, colour: str = "blue", event_id: str = "") -> bytes:
    """A 320 x 192 scene: road, a car body and the plate on it."""
    bg, _ = _PLATE_RGB.get(colour, _PLATE_RGB["blue"])
    shade = int(hashlib.sha256(plate.encode("utf-8")).hexdigest()[:2], 16) // 2

    def at(bx: int, by: int) -> tuple[int, int, int]:
        if 14 <= bx <= 25 and by == 17:
            return bg  # the plate
        if 10 <= bx <= 29 and 6 <= by <= 20:
            return (60 + shade, 60 + shade, 70 + shade)  # the car
        return (110, 112, 115) if by > 14 else (150, 160, 170)  # road and sky

    return make_jpeg(320, 192, at, f"smartpark camera simulator: detectionPicture {plate} {event_id}")


# ---------------------------------------------------------------------------------------------------------------
# the camera
# ---------------------------------------------------------------------------------------------------------------
@attrs.frozen
class Sent:
    """What became of one payload: ``via`` "http" (with the status and reply text) or "mqtt"."""

    via: str
    payload: AlertPayload
    status: int | None = None
    text: str = ""
    target: str = ""


class CameraSimulator:
    """One simulated ANPR camera ``camera_id``.

    ``url``: the listening-mode address to POST to (the service's ``/devices/hikvision/{camera}`` route);
    ``mqtt``: (host, port) of the broker to publish the relay payloads on ``topic``. ``clock``: where the camera's
    time comes from (an object with ``now()``; default the system clock). Thread-safe.
    """

    def __init__(self, camera_id: str, *, url: str | None = None, mqtt: tuple[str, int] | None = None,
                 topic: str = DEFAULT_TOPIC, tz: tzinfo | str = "Asia/Shanghai", clock: Any = None,
                 pictures: bool = True, http_timeout: float = 10.0) -> None:
        self.camera_id = camera_id
        self.url = url.replace("{camera}", camera_id) if url else None
        self.mqtt_address = mqtt
        self.topic = topic.replace("{camera}", camera_id)
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.clock = clock
        self.pictures = pictures
        self.http_timeout = http_timeout
        self._mqtt: Any = None
        self._http: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CameraSimulator({self.camera_id}, url={self.url}, mqtt={self.mqtt_address})"

    # -- payloads ----------------------------------------------------------------------------------------------
    def read(self, plate: str, **kwargs: Any) -> AlertPayload:
        """A payload for a car with ``plate`` passing now (by ``clock``); ``kwargs`` as :func:`build_alert_xml`."""
        kwargs.setdefault("at", self.clock.now() if self.clock is not None else datetime.now(UTC))
        kwargs.setdefault("tz", self.tz)
        kwargs.setdefault("pictures", self.pictures)
        return build_alert(plate, **kwargs)

    # -- sending -----------------------------------------------------------------------------------------------
    def post(self, payload: AlertPayload | bytes, content_type: str | None = None, url: str | None = None) -> Sent:
        """POST a payload (or raw bytes: anything a broken camera might send) to the listening URL."""
        import httpx

        target = url or self.url
        if not target:
            raise ValueError(f"camera {self.camera_id}: no listening URL to POST to")
        if isinstance(payload, AlertPayload):
            body, ctype = payload.body, content_type or payload.content_type
        else:
            body, ctype = bytes(payload), content_type or "application/xml"
            payload = AlertPayload(ctype, body, "", "")
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(timeout=self.http_timeout)
            client = self._http
        reply = client.post(target, content=body, headers={"Content-Type": ctype})
        return Sent("http", payload, reply.status_code, reply.text.strip(), target)

    def publish(self, payload: AlertPayload | bytes, *, timeout: float = 5.0) -> Sent:
        """Publish the raw body on the relay topic with QoS 1 and wait for the broker's PUBACK."""
        conn = self._connection(timeout)
        body = payload.body if isinstance(payload, AlertPayload) else bytes(payload)
        if not isinstance(payload, AlertPayload):
            payload = AlertPayload("", body, "", "")
        info = conn.publish(self.topic, body, qos=1)
        info.wait_for_publish(timeout)
        if not info.is_published():
            raise TimeoutError(f"camera {self.camera_id}: the broker did not acknowledge within {timeout:g} s")
        return Sent("mqtt", payload, None, "", self.topic)

    def send(self, plate: str, *, via: str | None = None, **kwargs: Any) -> Sent:
        """Build a read of ``plate`` and send it ``via`` "mqtt" or "http" (default: MQTT when configured)."""
        how = via or ("mqtt" if self.mqtt_address else "http")
        payload = self.read(plate, **kwargs)
        return self.publish(payload) if how == "mqtt" else self.post(payload)

    def _connection(self, timeout: float) -> Any:
        with self._lock:
            if self._mqtt is None:
                if self.mqtt_address is None:
                    raise ValueError(f"camera {self.camera_id}: no MQTT broker configured")
                from smartpark.infra.mqtt import BrokerSettings, MqttConnection

                host, port = self.mqtt_address
                conn = MqttConnection(BrokerSettings(host=host, port=port),
                                      f"camsim-{self.camera_id}-{uuid.uuid4().hex[:6]}", persistent=False)
                conn.client.max_inflight_messages_set(1000)
                conn.client.max_queued_messages_set(0)
                if not conn.start(wait=timeout):
                    conn.stop()
                    raise ConnectionError(f"camera {self.camera_id}: MQTT broker {host}:{port} did not answer")
                self._mqtt = conn
            return self._mqtt

    def close(self) -> None:
        with self._lock:
            mqtt, self._mqtt = self._mqtt, None
            http, self._http = self._http, None
        if mqtt is not None:
            mqtt.stop()
        if http is not None:
            http.close()

    def __enter__(self) -> CameraSimulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m smartpark.adapters.camera_hikvision.simulator --camera cam-in-1 --plate 京A12345 --url URL``."""
    ap = argparse.ArgumentParser(prog="python -m smartpark.adapters.camera_hikvision.simulator",
                                 description="海康威视车牌识别摄像机模拟器 / Hikvision ANPR camera simulator")
    ap.add_argument("--camera", required=True, help="camera id (as in [plugins.camera_hikvision] cameras)")
    ap.add_argument("--plate", required=True, help="plate text, e.g. 京A12345 ('' for no readable plate)")
    ap.add_argument("--url", help="listening URL to POST to (http://HOST:PORT/devices/hikvision/{camera})")
    ap.add_argument("--mqtt", metavar="HOST:PORT", help="publish on the relay topic at this broker instead")
    ap.add_argument("--topic", default=DEFAULT_TOPIC)
    ap.add_argument("--color", choices=sorted(_COLOUR_WORD), help="plate colour (default: by plate)")
    ap.add_argument("--confidence", type=float, default=0.98, help="0..1 (default 0.98)")
    ap.add_argument("--direction", choices=("forward", "reverse"), default="forward")
    args = ap.parse_args(argv)
    mqtt = None
    if args.mqtt:
        from smartpark.infra.broker import parse_address

        mqtt = parse_address(args.mqtt)
    elif not args.url:
        ap.error("give --url or --mqtt")
    with CameraSimulator(args.camera, url=args.url, mqtt=mqtt, topic=args.topic) as cam:
        sent = cam.send(args.plate, via="mqtt" if mqtt else "http", color=args.color, confidence=args.confidence,
                        direction=args.direction)
    print(describe(sent))
    return 0 if sent.via == "mqtt" or (sent.status or 500) < 300 else 1


def describe(sent: Sent) -> str:
    """One line: what was sent where, and the answer."""
    what = f"{len(sent.payload.body)} 字节（事件 {sent.payload.event_id or '—'}）"
    if sent.via == "mqtt":
        return f"已发布到 MQTT 主题 {sent.target}：{what} / published on {sent.target} (QoS 1, acknowledged)"
    return f"已 POST 到 {sent.target}：{what} → HTTP {sent.status} {sent.text} / posted, answered {sent.status}"


if __name__ == "__main__":
    sys.exit(main())
