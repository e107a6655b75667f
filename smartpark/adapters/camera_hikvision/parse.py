"""Pure parsing of Hikvision ISAPI event payloads (no I/O, no threads).

Camera input is untrusted input. Everything here:

* caps the body size (``max_bytes``, 5 MiB by default) and the number of parts and pictures;
* parses XML with the standard library's expat only after refusing any DTD (so no entity declarations, no
  entity expansion and no external references can exist; the same rule as defusedxml's, 3x faster);
* matches element names namespace-agnostically and case-insensitively (``hikvision.com/ver20``,
  ``isapi.org/ver20``, none, ...);
* raises nothing but :class:`MalformedEvent` (a ``ValueError`` with a short ``reason``).

Entry points:

* :func:`parse_alert` -- one HTTP listening POST, one MQTT relay payload, or one bare XML/JSON document:
  ``multipart/form-data`` / ``multipart/mixed`` with an XML (or JSON) part and picture parts,
  ``application/xml`` / ``text/xml``, the ``heartBeat`` / keep-alive messages of the alert stream, JSON
  events and a small JSON relay envelope (``{"content_type": ..., "body": ..., "encoding": "base64"}``).
* :class:`AlertStreamParser` -- the same, fed incrementally from the arming-mode ``alertStream``.
* :func:`parse_plates_pull` -- the answer to ``POST /ISAPI/Traffic/channels/<n>/vehicleDetect/plates``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

import attrs

from smartpark.core.values import PROVINCES

__all__ = [
    "DEFAULT_MAX_BYTES",
    "AlertStreamParser",
    "HikEvent",
    "HikPicture",
    "MalformedEvent",
    "attach_pictures",
    "normalise_color",
    "parse_alert",
    "parse_plates_pull",
    "split_color_prefix",
    "travel_to_direction",
]

DEFAULT_MAX_BYTES = 5 * 1024 * 1024
#: Naive camera times are read in this zone unless the caller passes the lot's zone.
DEFAULT_TZ: tzinfo = ZoneInfo("Asia/Shanghai")

MAX_PARTS = 32  # parts in one multipart body
MAX_PICTURES = 16  # pictures kept per event
MAX_HEADER_BYTES = 16 * 1024  # header block of one part
MAX_HEADERS = 50
MAX_JSON_DEPTH = 64
MAX_JSON_NODES = 100_000
MAX_TEXT = 64  # characters kept of a plate text or an id from the camera

# Texts a camera sends when it saw a vehicle but read no plate.
NO_PLATE_TEXTS = frozenset({"", "unknown", "无车牌", "无牌", "无牌车", "未识别", "none", "null", "noplate"})

_PROVINCE_SET = frozenset(PROVINCES)
# Colour words Chinese cameras put in front of the plate. Longest first.
_COLOUR_PREFIXES: tuple[tuple[str, str], ...] = (
    ("渐变绿", "green"),  # large new-energy plates (yellow-green gradient)
    ("黄绿", "green"),
    ("蓝", "blue"),
    ("黄", "yellow"),
    ("绿", "green"),
    ("白", "white"),
    ("黑", "black"),
)
_COLOUR_WORDS: tuple[tuple[str, str], ...] = (
    # order matters: "yellowGreen" is a new-energy plate, so green wins over yellow
    ("green", "green"),
    ("绿", "green"),
    ("blue", "blue"),
    ("蓝", "blue"),
    ("yellow", "yellow"),
    ("黄", "yellow"),
    ("white", "white"),
    ("白", "white"),
    ("black", "black"),
    ("黑", "black"),
)
_FORWARD = frozenset({"forward", "positive", "approach", "approaching"})
_REVERSE = frozenset({"reverse", "negative", "back", "backward", "leave", "leaving", "away"})


class MalformedEvent(ValueError):
    """The payload is not a usable Hikvision event; ``reason`` says why (short, safe to log and to answer)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@attrs.frozen(kw_only=True)
class HikPicture:
    """One picture part. ``filename`` is what the camera sent: never use it as a path."""

    filename: str
    content_type: str
    data: bytes = attrs.field(repr=lambda b: f"<{len(b)} bytes>")
    kind: str = ""  # pictureInfo/type when the XML names this file (licensePlatePicture, vehiclePicture, ...)


@attrs.frozen(kw_only=True)
class HikEvent:
    """One ``EventNotificationAlert`` (or one plate of a pull answer), in plain values.

    ``kind`` is ``"ANPR"``, ``"vehicleDetection"``, ``"heartbeat"`` or ``"other"`` (any other alarm: the camera
    is alive but there is no plate read). ``plate_text`` has the colour prefix removed and is ``""`` when no
    plate was read (``confidence`` is then 0); ``raw_plate`` is the text as sent. ``travel`` is the camera's
    own ``"forward"`` / ``"reverse"`` (see :func:`travel_to_direction`). ``at`` is aware, or ``None`` when the
    event carried no usable time.
    """

    kind: str
    event_type: str = ""
    event_state: str = ""
    channel: int | None = None
    ip: str | None = None
    mac: str | None = None
    device_id: str | None = None
    channel_name: str | None = None
    at: datetime | None = None
    raw_plate: str = ""
    plate_text: str = ""
    color: str | None = None
    confidence: float = 0.0
    travel: str | None = None
    line: int | None = None
    event_id: str = ""
    retransmission: bool = False
    picture_names: tuple[str, ...] = ()  # pictureInfo/fileName, in the XML's order
    picture_types: tuple[str, ...] = ()  # pictureInfo/type, parallel to picture_names
    pictures: tuple[HikPicture, ...] = ()

    @property
    def is_heartbeat(self) -> bool:
        return self.kind == "heartbeat"

    @property
    def is_read(self) -> bool:
        """True for plate reads (including "saw a vehicle, read no plate")."""
        return self.kind in ("ANPR", "vehicleDetection")


# ---------------------------------------------------------------------------------------------------------------
# small value helpers (public: the recognizer and tests use them)
# ---------------------------------------------------------------------------------------------------------------


def normalise_color(value: str | None) -> str | None:
    """``plateColor`` (``blue``, ``yellowGreen``, ``蓝``...) -> blue/yellow/green/white/black, else ``None``."""
    if not value:
        return None
    v = value.strip().lower()
    for word, colour in _COLOUR_WORDS:
        if word in v:
            return colour
    return None


def split_color_prefix(text: str) -> tuple[str | None, str]:
    """Split a colour word sent in front of a plate: ``蓝苏A8HK52`` -> ``("blue", "苏A8HK52")``.

    蓝/黄/绿/白 never start a plate, so they are a prefix whenever something follows. 黑 is also the
    Heilongjiang province: it is a colour only when what follows starts with a province itself
    (``黑黑A12345`` -> black + ``黑A12345``; ``黑A12345`` stays a Heilongjiang plate).
    """
    for prefix, colour in _COLOUR_PREFIXES:
        if text.startswith(prefix) and len(text) > len(prefix):
            rest = text[len(prefix):]
            if prefix == "黑" and rest[0] not in _PROVINCE_SET:
                continue
            return colour, rest
    return None, text


def travel_to_direction(travel: str | None, forward_is: str | None = "in") -> str | None:
    """Map the camera's ``forward``/``reverse`` to ``"in"``/``"out"``.

    ``forward_is`` says where a vehicle the camera reports as ``forward`` (approaching the camera) is going;
    ``reverse`` is the other way. ``None`` for an unknown travel or when ``forward_is`` is ``None``.
    """
    if travel not in ("forward", "reverse") or forward_is not in ("in", "out"):
        return None
    if travel == "forward":
        return forward_is
    return "out" if forward_is == "in" else "in"


def _clean_text(value: str | None, limit: int = MAX_TEXT) -> str:
    """Strip whitespace and control/format characters (RTL overrides, NULs...), cap the length."""
    if not value:
        return ""
    if value.isprintable():  # no Cc/Cf/Cs/Co/Cn (nor separators other than space): nothing to drop
        return value.strip()[:limit]
    kept = "".join(ch for ch in value.strip() if unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Co", "Cn"))
    return kept.strip()[:limit]


_SAFE_ID = re.compile(r"[^A-Za-z0-9._:-]")


def _clean_id(value: str | None) -> str:
    return _SAFE_ID.sub("", value or "")[:128]


_COMPACT_TIME = re.compile(r"^(\d{4})(\d{2})(\d{2})T?(\d{2})(\d{2})(\d{2})(\d{0,6})")


def _parse_time(value: str | None, tz: tzinfo) -> datetime | None:
    """ISO 8601 with or without offset, or Hikvision's compact ``20230811134900555`` / ``20200424T1616270000``."""
    text = (value or "").strip()
    if not text or len(text) > 64:
        return None
    dt: datetime | None = None
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        m = _COMPACT_TIME.match(text)
        if m:
            y, mo, d, h, mi, s, frac = m.groups()
            try:
                micro = int((frac + "000000")[:6]) if frac else 0
                if len(frac) > 3:  # "0000" after the seconds in pull answers: not a fraction we can trust
                    micro = int((frac[:3] + "000")[:6])
                dt = datetime(int(y), int(mo), int(d), int(h), int(mi), int(s), micro)
            except ValueError:
                return None
    if dt is None:
        return None
    try:
        if dt.tzinfo is None or dt.utcoffset() is None:
            dt = dt.replace(tzinfo=tz)
        dt.astimezone(UTC)  # offsets that overflow near datetime.min/max
    except (OverflowError, ValueError):
        return None
    return dt


def _int(value: str | None) -> int | None:
    text = (value or "").strip()
    if text.isascii() and text.isdigit() and len(text) <= 9:
        return int(text)
    return None


def _float(value: str | None) -> float | None:
    text = (value or "").strip()
    if not text or len(text) > 32:
        return None
    try:
        f = float(text)
    except ValueError:
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


# ---------------------------------------------------------------------------------------------------------------
# XML / JSON documents -> a namespace-free element tree
# ---------------------------------------------------------------------------------------------------------------

_XML_DECL = re.compile(rb"^<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"'][^>]*\?>")
_NATIVE_XML_ENCODINGS = frozenset({"utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1", "latin-1", "latin1",
                                   "utf-16", "utf16"})


def _load_xml(data: bytes) -> ET.Element:
    data = data.lstrip(b"\xef\xbb\xbf").strip()
    if not data:
        raise MalformedEvent("empty XML document")
    source: bytes | str = data
    m = _XML_DECL.match(data)
    if m:
        enc = m.group(1).decode("ascii").lower()
        if enc not in _NATIVE_XML_ENCODINGS:
            # expat cannot read multi-byte encodings such as GB2312: decode here and drop the declaration
            codec = "gb18030" if enc in ("gb2312", "gbk", "gb18030", "cp936") else enc
            try:
                source = data[m.end():].decode(codec)
            except (LookupError, UnicodeDecodeError):
                raise MalformedEvent(f"XML in an unreadable encoding {enc!r}") from None
    root = _safe_fromstring(source)
    for el in root.iter():
        if isinstance(el.tag, str) and "}" in el.tag:
            el.tag = el.tag.rsplit("}", 1)[1]
    return root


def _json_to_tree(value: object, tag: str = "root") -> ET.Element:
    """A JSON value as an element tree (objects -> children, lists -> repeated children), iteratively."""
    root = ET.Element(tag)
    stack: list[tuple[ET.Element, object, int]] = [(root, value, 0)]
    nodes = 0
    while stack:
        el, val, depth = stack.pop()
        nodes += 1
        if nodes > MAX_JSON_NODES or depth > MAX_JSON_DEPTH:
            raise MalformedEvent("JSON document too large or too deep")
        if isinstance(val, dict):
            for k, v in val.items():
                items = v if isinstance(v, list) else [v]
                for item in items:
                    child = ET.SubElement(el, str(k)[:64])
                    stack.append((child, item, depth + 1))
        elif isinstance(val, list):
            for item in val:
                child = ET.SubElement(el, "item")
                stack.append((child, item, depth + 1))
        elif val is None:
            el.text = ""
        elif isinstance(val, bool):
            el.text = "true" if val else "false"
        else:
            el.text = str(val)
    return root  # children are appended when their parent is visited, so document order is kept


def _load_json(data: bytes) -> object:
    try:
        return json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise MalformedEvent("JSON does not parse") from None


class _Doc:
    """Name lookups over one event tree: case-insensitive, in document order, optionally scoped."""

    def __init__(self, root: ET.Element) -> None:
        self.root = root
        self._index: dict[str, list[ET.Element]] = {}
        for el in root.iter():
            if isinstance(el.tag, str):
                self._index.setdefault(el.tag.lower(), []).append(el)
        self._top: dict[str, str] = {}
        for child in root:
            if isinstance(child.tag, str) and len(child) == 0:
                self._top.setdefault(child.tag.lower(), child.text or "")
        anpr = [el for el in self._index.get("anpr", []) if len(el)]
        self.anpr = anpr[0] if anpr else None
        self._anpr_ids = {id(el) for el in self.anpr.iter()} if self.anpr is not None else set()

    def text(self, *names: str, scoped: bool = False) -> str | None:
        """The text of the first element named ``names[0]`` (else ``names[1]``...); ANPR-scoped first when asked."""
        for name in names:
            els = self._index.get(name.lower(), [])
            if scoped and self.anpr is not None:
                inside = [e for e in els if id(e) in self._anpr_ids]
                els = inside or els
            for el in els:
                if len(el) == 0:
                    return el.text or ""
        return None

    def top(self, *names: str) -> str | None:
        """A direct child of the root first (``dateTime``, ``UUID``...), else anywhere."""
        for name in names:
            found = self._top.get(name.lower())
            if found is not None:
                return found
        return self.text(*names)

    def all(self, name: str) -> list[ET.Element]:
        return list(self._index.get(name.lower(), []))


def _local(tag: object) -> str:
    return tag.lower() if isinstance(tag, str) else ""


def _event_from_doc(doc: _Doc, tz: tzinfo, pictures: Iterable[HikPicture] = ()) -> HikEvent:
    event_type = _clean_text(doc.top("eventType"))
    et = event_type.lower()
    state = _clean_text(doc.top("eventState", "activeState"))
    at = _parse_time(doc.top("dateTime"), tz)
    channel = _int(doc.top("channelID", "dynChannelID", "channelId", "channel"))
    common = dict(
        event_type=event_type,
        event_state=state,
        channel=channel,
        ip=_clean_text(doc.top("ipAddress")) or None,
        mac=_clean_text(doc.top("macAddress")) or None,
        device_id=_clean_text(doc.top("deviceID", "deviceId")) or None,
        channel_name=_clean_text(doc.top("channelName")) or None,
        at=at,
    )
    if et == "heartbeat" or (et == "videoloss" and state.lower() == "inactive"):
        return HikEvent(kind="heartbeat", **common)

    plate_field = doc.text("licensePlate", "plateNumber", "originalLicensePlate", scoped=True)
    is_plate_event = et in ("anpr", "vehicledetection") or plate_field is not None
    if not is_plate_event or (plate_field is None and state.lower() == "inactive"):
        return HikEvent(kind="other", **common)
    kind = "vehicleDetection" if et == "vehicledetection" else "ANPR"

    raw = _clean_text(plate_field)
    if not raw:  # an empty licensePlate: some firmware fills only originalLicensePlate
        raw = _clean_text(doc.text("originalLicensePlate", scoped=True))
    prefix_colour, text = split_color_prefix(raw)
    if text.lower() in NO_PLATE_TEXTS:
        text = ""
    colour = normalise_color(doc.text("plateColor", scoped=True)) or prefix_colour

    confidence = 0.0
    if text:
        level = _float(doc.text("confidenceLevel", "confidence", scoped=True))
        if level is None:
            # no overall level: the mean of the per-character levels, else "the camera accepted it"
            chars = [_float(c) for c in (doc.text("plateCharBelieve", scoped=True) or "").split(",")]
            known = [c for c in chars if c is not None]
            level = sum(known) / len(known) if known else 100.0
        confidence = min(1.0, max(0.0, level / 100.0))

    travel_raw = _clean_text(doc.text("direction", scoped=True)).lower()
    travel = "forward" if travel_raw in _FORWARD else "reverse" if travel_raw in _REVERSE else None

    names: list[str] = []
    types: list[str] = []
    pids: list[str] = []
    for info in doc.all("pictureInfo")[:MAX_PICTURES]:
        fields = {_local(c.tag): _clean_text(c.text, 128) for c in info if len(c) == 0}
        if fields.get("filename"):
            names.append(fields["filename"])
            types.append(fields.get("type", ""))
        if fields.get("pid"):
            pids.append(fields["pid"])

    event_id = _clean_id(doc.top("UUID", "eventId", "eventID", "picName")) or (_clean_id(pids[0]) if pids else "")
    if not event_id:
        key = "|".join([str(channel), (doc.top("dateTime") or "").strip(), raw, common["mac"] or "",
                        common["ip"] or ""])
        event_id = "h-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]

    retrans = (doc.top("isDataRetransmission") or "").strip().lower() == "true"
    event = HikEvent(
        kind=kind,
        raw_plate=raw,
        plate_text=text,
        color=colour,
        confidence=confidence,
        travel=travel,
        line=_int(doc.text("line", "laneNo", scoped=True)),
        event_id=event_id,
        retransmission=retrans,
        picture_names=tuple(names),
        picture_types=tuple(types),
        **common,
    )
    return attach_pictures(event, pictures)


def attach_pictures(event: HikEvent, pictures: Iterable[HikPicture]) -> HikEvent:
    """Add picture parts to ``event`` (at most MAX_PICTURES), typed from the XML's pictureInfo by file name."""
    types = {n.lower(): t for n, t in zip(event.picture_names, event.picture_types, strict=False)}
    room = MAX_PICTURES - len(event.pictures)
    added = tuple(attrs.evolve(p, kind=types.get(p.filename.lower(), p.kind)) for p in list(pictures)[:max(0, room)])
    return attrs.evolve(event, pictures=event.pictures + added) if added else event


def _events_from_xml(data: bytes, tz: tzinfo, pictures: Iterable[HikPicture] = ()) -> list[HikEvent]:
    root = _load_xml(data)
    name = _local(root.tag)
    if name == "plates":
        return _plates_from_root(root, tz)
    if name != "eventnotificationalert":
        raise MalformedEvent(f"not an EventNotificationAlert: <{str(root.tag)[:40]}>")
    return [_event_from_doc(_Doc(root), tz, pictures)]


def _events_from_json(data: bytes, tz: tzinfo, max_bytes: int, pictures: Iterable[HikPicture] = (), *,
                      envelope_ok: bool = True) -> list[HikEvent]:
    value = _load_json(data)
    if isinstance(value, dict) and envelope_ok and isinstance(value.get("body"), str) and "eventType" not in value:
        # relay envelope: {"content_type": "...", "body": "...", "encoding": "base64" | "utf-8"}
        ctype = value.get("content_type", value.get("contentType", ""))
        ctype = ctype if isinstance(ctype, str) else ""
        if str(value.get("encoding", "")).lower() in ("base64", "b64"):
            try:
                inner = base64.b64decode(value["body"], validate=True)
            except (binascii.Error, ValueError):
                raise MalformedEvent("relay envelope body is not base64") from None
        else:
            inner = value["body"].encode("utf-8", "surrogatepass")
        return _parse(ctype, inner, tz, max_bytes, envelope_ok=False)
    items = value if isinstance(value, list) else [value]
    events = []
    for item in items[:MAX_PARTS]:
        if not isinstance(item, dict):
            raise MalformedEvent("JSON event is not an object")
        if "EventNotificationAlert" in item and isinstance(item["EventNotificationAlert"], dict):
            item = item["EventNotificationAlert"]
        if "eventType" not in item:
            raise MalformedEvent("JSON object has no eventType")
        events.append(_event_from_doc(_Doc(_json_to_tree(item, "EventNotificationAlert")), tz, pictures))
    if not events:
        raise MalformedEvent("JSON holds no event")
    return events


# ---------------------------------------------------------------------------------------------------------------
# multipart
# ---------------------------------------------------------------------------------------------------------------


@attrs.frozen
class _Part:
    headers: dict[str, str]
    data: bytes

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def disposition(self, param: str) -> str:
        return _header_params(self.headers.get("content-disposition", "")).get(param, "")

    @property
    def filename(self) -> str:
        return self.disposition("filename") or self.disposition("name")

    def is_xml(self) -> bool:
        if "xml" in self.content_type:
            return True
        if self.filename.lower().endswith(".xml"):
            return True
        return not self.content_type and self.data.lstrip()[:1] == b"<"

    def is_json(self) -> bool:
        if "json" in self.content_type or self.filename.lower().endswith(".json"):
            return True
        return not self.content_type and self.data.lstrip()[:1] == b"{"

    def is_picture(self) -> bool:
        if self.content_type.startswith("image/"):
            return True
        if self.filename.lower().endswith((".jpg", ".jpeg", ".png", ".bmp")):
            return True
        return self.data[:3] == b"\xff\xd8\xff" or self.data[:8] == b"\x89PNG\r\n\x1a\n"


_PARAM = re.compile(r"""([A-Za-z0-9_*.-]+)\s*=\s*(?:"([^"]*)"|([^;\s]*))""")


def _header_params(value: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for m in _PARAM.finditer(value):
        out.setdefault(m.group(1).lower(), m.group(2) if m.group(2) is not None else m.group(3))
    return out


def _parse_part(raw: bytes) -> _Part | None:
    """Headers up to the first blank line, then the body. ``None`` when the part has no header/body split."""
    headers: dict[str, str] = {}
    pos = 0
    count = 0
    while True:
        nl = raw.find(b"\n", pos)
        if nl < 0 or nl > MAX_HEADER_BYTES:
            return None
        line = raw[pos:nl].strip()
        pos = nl + 1
        if not line:
            return _Part(headers, raw[pos:])
        count += 1
        if count > MAX_HEADERS:
            return None
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.decode("utf-8", "replace").strip().lower()] = value.decode("utf-8", "replace").strip()


def _delimiter(boundary: bytes, *, stream: bool = False) -> re.Pattern[bytes]:
    """A delimiter line; tolerant of LF-only line ends and of indentation (seen in captured bodies).

    A whole body may end right after a delimiter; in a stream the line end must have arrived (else a delimiter
    cut between two chunks would be taken too early).
    """
    end = rb"\r?\n" if stream else rb"(?:\r?\n|\Z)"
    return re.compile(rb"(?:\A|\r?\n)[ \t]*--" + re.escape(boundary) + rb"(--)?[ \t]*" + end)


def _split_multipart(body: bytes, boundary: bytes) -> list[_Part]:
    matches = list(_delimiter(boundary).finditer(body))
    if not matches:
        raise MalformedEvent("multipart boundary not found in the body")
    parts: list[_Part] = []
    for i, m in enumerate(matches):
        if m.group(1):  # closing delimiter
            break
        end = matches[i + 1].start() if i + 1 < len(matches) else None
        chunk = body[m.end():end] if end is not None else body[m.end():].rstrip(b"\r\n\t ")
        if not chunk.strip() and end is None:
            break
        part = _parse_part(chunk)
        if part is not None:
            parts.append(part)
        if len(parts) > MAX_PARTS:
            raise MalformedEvent(f"more than {MAX_PARTS} parts")
    return parts


def _boundary_from(content_type: str, body: bytes) -> bytes:
    b = _header_params(content_type).get("boundary", "")
    if not b:
        first = body.lstrip(b" \t\r\n").split(b"\n", 1)[0].strip()
        if not first.startswith(b"--"):
            raise MalformedEvent("multipart body without a boundary")
        boundary = first[2:]
        if boundary.endswith(b"--"):
            boundary = boundary[:-2]
    else:
        boundary = b.encode("latin-1", "replace")
    if not boundary or len(boundary) > 200:
        raise MalformedEvent("multipart boundary missing or too long")
    return boundary


def _events_from_parts(parts: list[_Part], tz: tzinfo, max_bytes: int) -> list[HikEvent]:
    docs = [p for p in parts if p.is_xml() or p.is_json()]
    if not docs:
        raise MalformedEvent("multipart body has no XML part")
    doc_ids = {id(p) for p in docs}
    pictures = [
        HikPicture(filename=_clean_text(p.filename, 128), content_type=p.content_type, data=p.data)
        for p in parts
        if id(p) not in doc_ids and p.is_picture() and p.data.strip()
    ]
    events: list[HikEvent] = []
    for i, part in enumerate(docs):
        pics = pictures if i == 0 else ()
        if part.is_xml():
            events.extend(_events_from_xml(part.data, tz, pics))
        else:
            events.extend(_events_from_json(part.data, tz, max_bytes, pics, envelope_ok=False))
    return events


# ---------------------------------------------------------------------------------------------------------------
# entry points
# ---------------------------------------------------------------------------------------------------------------


def _sniff(body: bytes) -> str:
    head = body.lstrip(b"\xef\xbb\xbf \t\r\n")[:2]
    if head == b"--":
        return "multipart"
    if head[:1] == b"<":
        return "xml"
    if head[:1] in (b"{", b"["):
        return "json"
    raise MalformedEvent("unrecognised payload (not multipart, XML or JSON)")


def _parse(content_type: str, body: bytes, tz: tzinfo, max_bytes: int, *, envelope_ok: bool = True) -> list[HikEvent]:
    if len(body) > max_bytes:
        raise MalformedEvent(f"body too large ({len(body)} bytes > {max_bytes})")
    if not body.strip():
        raise MalformedEvent("empty body")
    ctype = (content_type or "").strip()
    main = ctype.split(";")[0].strip().lower()
    if main.startswith("multipart/"):
        kind = "multipart"
    elif "xml" in main:
        kind = "xml"
    elif "json" in main:
        kind = "json"
    else:
        kind = _sniff(body)
        if kind == "multipart" and not main.startswith("multipart/"):
            ctype = ""  # a sniffed body: take the boundary from its first line
    if kind == "multipart":
        parts = _split_multipart(body, _boundary_from(ctype, body))
        return _events_from_parts(parts, tz, max_bytes)
    if kind == "xml":
        return _events_from_xml(body, tz)
    return _events_from_json(body, tz, max_bytes, envelope_ok=envelope_ok)


def parse_alert(content_type: str, body: bytes, *, tz: tzinfo | None = None,
                max_bytes: int = DEFAULT_MAX_BYTES) -> list[HikEvent]:
    """Parse one alert payload into events (usually one); raise only :class:`MalformedEvent`.

    ``content_type`` is the HTTP ``Content-Type`` (or ``""`` to sniff: ``--`` starts a multipart body whose
    boundary is its first line, ``<`` XML, ``{`` JSON). ``tz`` is the zone of naive camera times (the lot's).
    """
    zone = tz or DEFAULT_TZ
    try:
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise MalformedEvent("body is not bytes")
        return _parse(content_type if isinstance(content_type, str) else "", bytes(body), zone, max_bytes)
    except MalformedEvent:
        raise
    except RecursionError:
        raise MalformedEvent("payload nested too deeply") from None
    except Exception as e:  # noqa: BLE001 - the promise: camera input never raises anything else
        raise MalformedEvent(f"unparseable payload ({type(e).__name__})") from None


def _plates_from_root(root: ET.Element, tz: tzinfo) -> list[HikEvent]:
    events = []
    for plate in root.iter():
        if _local(plate.tag) != "plate" or len(plate) == 0:
            continue
        fields = {_local(c.tag): (c.text or "") for c in plate if len(c) == 0}
        raw = _clean_text(fields.get("platenumber") or fields.get("licenseplate"))
        colour, text = split_color_prefix(raw)
        if text.lower() in NO_PLATE_TEXTS:
            text = ""
        travel_raw = _clean_text(fields.get("direction")).lower()
        at = _parse_time(fields.get("capturetime"), tz)
        event_id = _clean_id(fields.get("picname"))
        if not event_id:
            key = "|".join([fields.get("capturetime", ""), raw, fields.get("laneno", "")])
            event_id = "h-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:24]
        events.append(HikEvent(
            kind="ANPR",
            event_type="plates",
            at=at,
            raw_plate=raw,
            plate_text=text,
            color=normalise_color(fields.get("platecolor")) or colour,
            confidence=1.0 if text else 0.0,  # the pull answer carries no confidence: the camera accepted the read
            travel="forward" if travel_raw in _FORWARD else "reverse" if travel_raw in _REVERSE else None,
            line=_int(fields.get("laneno")),
            event_id=event_id,
        ))
        if len(events) >= 1000:
            break
    return events


def parse_plates_pull(body: bytes, *, tz: tzinfo | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> list[HikEvent]:
    """Parse the answer to ``POST /ISAPI/Traffic/channels/<n>/vehicleDetect/plates`` (``<Plates><Plate>...``)."""
    zone = tz or DEFAULT_TZ
    try:
        if len(body) > max_bytes:
            raise MalformedEvent(f"body too large ({len(body)} bytes > {max_bytes})")
        root = _load_xml(bytes(body))
        if _local(root.tag) != "plates":
            raise MalformedEvent(f"not a Plates answer: <{str(root.tag)[:40]}>")
        return _plates_from_root(root, zone)
    except MalformedEvent:
        raise
    except Exception as e:  # noqa: BLE001
        raise MalformedEvent(f"unparseable plates answer ({type(e).__name__})") from None


# ---------------------------------------------------------------------------------------------------------------
# the arming-mode alert stream, incrementally
# ---------------------------------------------------------------------------------------------------------------


class AlertStreamParser:
    """Parse ``GET /ISAPI/Event/notification/alertStream`` as it arrives.

    ``feed(chunk)`` returns the events completed so far; bad parts are reported through ``errors`` (a list
    of :class:`MalformedEvent`, drained by the caller) and never stop the stream. A part ends at the next
    delimiter, or as soon as its ``Content-Length`` bytes are in (when no delimiter hides inside them). A
    plate event waits for its pictures (``picNum``) until the next XML part, the next heartbeat, or
    :meth:`flush`.
    """

    def __init__(self, boundary: str | bytes | None = None, *, tz: tzinfo | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.tz = tz or DEFAULT_TZ
        self.max_bytes = max_bytes
        self._boundary = boundary.encode("latin-1") if isinstance(boundary, str) else boundary
        self._delim: re.Pattern[bytes] | None = _delimiter(self._boundary, stream=True) if self._boundary else None
        self._buf = bytearray()
        self._scan_from = 0  # where the next delimiter search in the current part may start
        self._in_part = False  # past a delimiter, reading a part
        self._pending: HikEvent | None = None
        self._pending_pics: list[HikPicture] = []
        self._expected_pics = 0
        self.errors: list[MalformedEvent] = []

    def feed(self, chunk: bytes) -> list[HikEvent]:
        self._buf += chunk
        out: list[HikEvent] = []
        while True:
            if self._delim is None:
                if not self._learn_boundary():
                    break
            if not self._in_part:
                m = self._delim.search(self._buf)
                if m is None:
                    # keep only what could still be the start of a delimiter
                    keep = len(self._boundary or b"") + 8
                    if len(self._buf) > keep:
                        del self._buf[: len(self._buf) - keep]
                    break
                if m.group(1):  # closing delimiter: whatever follows is epilogue
                    del self._buf[: m.end()]
                    out.extend(self.flush())
                    continue
                del self._buf[: m.end()]
                self._in_part = True
                self._scan_from = 0
            raw = self._take_part()
            if raw is None:
                if len(self._buf) > self.max_bytes:
                    self.errors.append(MalformedEvent("alert stream part too large; skipped"))
                    self._buf.clear()
                    self._in_part = False
                break
            self._in_part = False
            out.extend(self._handle_part(raw))
        return out

    def flush(self) -> list[HikEvent]:
        """Emit a plate event still waiting for pictures (end of stream, or before a new event)."""
        if self._pending is None:
            return []
        ev = attach_pictures(self._pending, self._pending_pics)
        self._pending, self._pending_pics, self._expected_pics = None, [], 0
        return [ev]

    # -- internals ----------------------------------------------------------------------------------------------
    def _learn_boundary(self) -> bool:
        data = bytes(self._buf).lstrip(b" \t\r\n")
        if b"\n" not in data:
            if len(data) > 512:
                self.errors.append(MalformedEvent("alert stream does not start with a boundary"))
                self._buf.clear()
            return False
        first = data.split(b"\n", 1)[0].strip()
        if not first.startswith(b"--") or len(first) < 3 or len(first) > 202:
            self.errors.append(MalformedEvent("alert stream does not start with a boundary"))
            self._buf.clear()
            return False
        self._boundary = first[2:]
        self._delim = _delimiter(self._boundary, stream=True)
        return True

    def _take_part(self) -> bytes | None:
        assert self._delim is not None
        m = self._delim.search(self._buf, self._scan_from)
        if m is None:
            self._scan_from = max(0, len(self._buf) - len(self._boundary or b"") - 16)
            # no delimiter yet: a part whose Content-Length bytes are all in need not wait for the next one
            header_end = _BLANK_LINE.search(self._buf, 0, MAX_HEADER_BYTES + 4)
            if header_end is None:
                return None
            headers = _parse_part(bytes(self._buf[: header_end.end()]))
            length = _int(headers.headers.get("content-length")) if headers is not None else None
            if length is None or len(self._buf) < header_end.end() + length:
                return None
            body_end = header_end.end() + length
            raw = bytes(self._buf[:body_end])
            del self._buf[:body_end]
            return raw
        raw = bytes(self._buf[: m.start()])
        # leave the delimiter in the buffer: the outer loop consumes it
        del self._buf[: m.start()]
        return raw

    def _handle_part(self, raw: bytes) -> list[HikEvent]:
        part = _parse_part(raw)
        if part is None or not part.data.strip():
            return []
        out: list[HikEvent] = []
        if part.is_xml() or part.is_json():
            try:
                events = (_events_from_xml(part.data, self.tz) if part.is_xml()
                          else _events_from_json(part.data, self.tz, self.max_bytes, envelope_ok=False))
            except MalformedEvent as e:
                self.errors.append(e)
                return self.flush()
            except Exception as e:  # noqa: BLE001 - a bad part never stops the stream
                self.errors.append(MalformedEvent(f"unparseable part ({type(e).__name__})"))
                return self.flush()
            for ev in events:
                out.extend(self.flush())
                expected = len(ev.picture_names) if ev.is_read else 0
                if expected:
                    self._pending, self._expected_pics = ev, min(expected, MAX_PICTURES)
                else:
                    out.append(ev)
        elif part.is_picture() and self._pending is not None:
            self._pending_pics.append(HikPicture(filename=_clean_text(part.filename, 128),
                                                 content_type=part.content_type, data=part.data))
            if len(self._pending_pics) >= self._expected_pics:
                out.extend(self.flush())
        return out


_BLANK_LINE = re.compile(rb"\n[ \t]*\r?\n")


_DTD = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY|ELEMENT|ATTLIST|NOTATION)", re.IGNORECASE)


def _safe_fromstring(source: bytes | str) -> ET.Element:
    """Parse untrusted XML: no DTD of any kind (hence no entity expansion, no external entities)."""
    raw = source.encode("utf-8", "replace") if isinstance(source, str) else source
    if b"\x00" in raw[:4096] or raw[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise MalformedEvent("XML refused: UTF-16/32 documents are not accepted")
    if _DTD.search(raw):
        raise MalformedEvent("XML refused: DTDs and entity declarations are not accepted")
    try:
        return ET.fromstring(source)
    except ET.ParseError as e:
        raise MalformedEvent(f"XML does not parse: {e}"[:160]) from None
    except (ValueError, LookupError, UnicodeError) as e:
        raise MalformedEvent(f"XML does not parse: {type(e).__name__}") from None

