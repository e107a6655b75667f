"""The Hikvision ISAPI parser (smartpark.adapters.camera_hikvision.parse): fixtures, variants, hostile input."""

from __future__ import annotations

import json
import random
import unittest
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartpark.adapters.camera_hikvision.parse import (
    AlertStreamParser,
    HikEvent,
    MalformedEvent,
    normalise_color,
    parse_alert,
    parse_plates_pull,
    split_color_prefix,
    travel_to_direction,
)

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "hikvision"
SHANGHAI = ZoneInfo("Asia/Shanghai")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HIK_NS = b'xmlns="http://www.hikvision.com/ver20/XMLSchema"'
ISAPI_NS = b'xmlns="http://www.isapi.org/ver20/XMLSchema"'


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


ANPR_1 = fixture("anpr_1.xml")
ANPR_2 = fixture("anpr_2_unknown_plate.xml")
ANPR_3 = fixture("anpr_3_cn_multipart_capture.txt")
KEEPALIVE = fixture("alertstream_videoloss_keepalive.xml")
PULL = fixture("plates_pull_response_1.xml")


def clean_multipart(capture: bytes, boundary: bytes = b"-------------------------7e13971310878") -> bytes:
    """The CN capture as a camera sends it on the wire: no indentation, CRLF, a closing delimiter."""
    lines = [line.lstrip(b"\t") for line in capture.split(b"\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    return b"\r\n".join(lines) + b"\r\n--" + boundary + b"--\r\n"


def multipart(parts: list[tuple[bytes, bytes, bytes]], boundary: bytes = b"MIME_boundary") -> tuple[str, bytes]:
    """(name, content type, data) parts -> (content type header, body), CRLF as on the wire."""
    out = b""
    for name, ctype, data in parts:
        out += (b"--" + boundary + b"\r\n"
                + b'Content-Disposition: form-data; name="' + name + b'"; filename="' + name + b'"\r\n'
                + b"Content-Type: " + ctype + b"\r\n"
                + b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data + b"\r\n")
    out += b"--" + boundary + b"--\r\n"
    return f"multipart/form-data; boundary={boundary.decode()}", out


def one(content_type: str, body: bytes, **kw) -> HikEvent:
    events = parse_alert(content_type, body, **kw)
    assert len(events) == 1, events
    return events[0]


class FixtureTests(unittest.TestCase):
    def test_anpr_1_eu_plate(self):
        ev = one("application/xml", ANPR_1)
        self.assertEqual(ev.kind, "ANPR")
        self.assertTrue(ev.is_read)
        self.assertEqual(ev.plate_text, "KH35192")
        self.assertEqual(ev.raw_plate, "KH35192")
        self.assertIsNone(ev.color, "plateColor 'unknown' is no colour")
        self.assertEqual(ev.confidence, 1.0)
        self.assertEqual(ev.at, datetime(2023, 8, 11, 12, 49, tzinfo=UTC))
        self.assertEqual(ev.at.utcoffset(), timedelta(hours=1))
        self.assertEqual(ev.channel, 1)
        self.assertEqual(ev.ip, "10.2.124.188")
        self.assertEqual(ev.mac, "bc:5e:33:62:2a:5c")
        self.assertEqual(ev.travel, "forward")
        self.assertEqual(ev.line, 1)
        self.assertEqual(ev.event_id, "20230811134901822007gWpiNIuI14ikdwfKR5eDCzuV45RubEmi88qaD5w0YTq")
        self.assertEqual(ev.picture_names, ("licensePlatePicture.jpg", "vehiclePicture.jpg"))
        self.assertEqual(ev.picture_types, ("licensePlatePicture", "vehiclePicture"))
        self.assertEqual(ev.pictures, (), "a bare XML body carries no picture bytes")

    def test_anpr_2_unknown_plate(self):
        ev = one("text/xml", ANPR_2)
        self.assertEqual(ev.kind, "ANPR")
        self.assertEqual(ev.plate_text, "")
        self.assertEqual(ev.raw_plate, "unknown")
        self.assertEqual(ev.confidence, 0.0)
        self.assertIsNone(ev.color)
        self.assertEqual(ev.at, datetime(2023, 8, 11, 14, 2, 35, tzinfo=timezone(timedelta(hours=1))))

    def test_anpr_3_cn_multipart_capture_as_stored(self):
        ev = one("multipart/form-data; boundary=-------------------------7e13971310878", ANPR_3)
        self.check_cn(ev)
        self.assertEqual(len(ev.pictures), 1)
        pic = ev.pictures[0]
        self.assertEqual(pic.filename, "licensePlatePicture.jpg")
        self.assertEqual(pic.content_type, "image/jpeg")
        self.assertEqual(pic.kind, "licensePlatePicture")
        self.assertEqual(pic.data.strip(), b"efwefwefwef")

    def test_anpr_3_sniffed_without_content_type(self):
        self.check_cn(one("", ANPR_3))  # the MQTT relay path: boundary from the first line

    def test_anpr_3_clean_crlf_version(self):
        body = clean_multipart(ANPR_3)
        ev = one("multipart/form-data; boundary=\"-------------------------7e13971310878\"", body)
        self.check_cn(ev)
        self.assertEqual(ev.pictures[0].data, b"efwefwefwef")

    def check_cn(self, ev: HikEvent) -> None:
        self.assertEqual(ev.kind, "ANPR")
        self.assertEqual(ev.raw_plate, "蓝苏A8HK52")
        self.assertEqual(ev.plate_text, "苏A8HK52")
        self.assertEqual(ev.color, "blue")
        self.assertAlmostEqual(ev.confidence, 0.78)
        self.assertEqual(ev.travel, "reverse")
        self.assertEqual(ev.at, datetime(2034, 1, 4, 15, 57, 3, tzinfo=SHANGHAI))
        self.assertEqual(ev.at.utcoffset(), timedelta(hours=8))
        self.assertEqual(ev.event_id, "46dd0716-1dd2-11b2-821f-8ba17e6f56b7")
        self.assertEqual(ev.device_id, "123456789")
        self.assertEqual(ev.picture_names, ("licensePlatePicture.jpg", "detectionPicture.jpg"))

    def test_keepalive_is_a_heartbeat(self):
        ev = one("application/xml", KEEPALIVE)
        self.assertEqual(ev.kind, "heartbeat")
        self.assertTrue(ev.is_heartbeat)
        self.assertFalse(ev.is_read)
        self.assertEqual(ev.ip, "192.168.0.45")
        self.assertEqual(ev.at, datetime(2025, 11, 4, 21, 6, 44, tzinfo=UTC))

    def test_heartbeat_event_type_and_active_state_spelling(self):
        hb = KEEPALIVE.replace(b"<eventType>videoloss</eventType>", b"<eventType>heartBeat</eventType>")
        hb = hb.replace(b"<eventState>inactive</eventState>", b"<eventState>active</eventState>")
        self.assertEqual(one("", hb).kind, "heartbeat")
        active_state = KEEPALIVE.replace(b"eventState>", b"activeState>")
        self.assertEqual(one("", active_state).kind, "heartbeat")

    def test_real_videoloss_alarm_is_other_not_heartbeat(self):
        alarm = KEEPALIVE.replace(b"<eventState>inactive", b"<eventState>active")
        ev = one("", alarm)
        self.assertEqual(ev.kind, "other")
        self.assertFalse(ev.is_read)

    def test_plates_pull_response(self):
        events = parse_plates_pull(PULL, tz=SHANGHAI)
        self.assertEqual(len(events), 1)
        ev = events[0]
        self.assertEqual(ev.plate_text, "DK18HVX")
        self.assertEqual(ev.event_id, "202004241616278800")
        self.assertEqual(ev.at, datetime(2020, 4, 24, 16, 16, 27, tzinfo=SHANGHAI))
        self.assertEqual(ev.travel, "forward")
        self.assertEqual(ev.line, 1)
        self.assertEqual(ev.confidence, 1.0)
        with self.assertRaises(MalformedEvent):
            parse_plates_pull(ANPR_1)

    def test_multipart_with_anpr_xml_part_and_pictures(self):
        ctype, body = multipart([
            (b"ANPR.xml", b"application/xml; charset=\"UTF-8\"", ANPR_1),
            (b"licensePlatePicture.jpg", b"image/jpeg", b"\xff\xd8\xff\xe0plate\xff\xd9"),
            (b"vehiclePicture.jpg", b"image/jpeg", b"\xff\xd8\xff\xe0car\r\n\xff\xd9"),
        ])
        ev = one(ctype, body)
        self.assertEqual(ev.plate_text, "KH35192")
        self.assertEqual([p.filename for p in ev.pictures], ["licensePlatePicture.jpg", "vehiclePicture.jpg"])
        self.assertEqual([p.kind for p in ev.pictures], ["licensePlatePicture", "vehiclePicture"])
        self.assertEqual(ev.pictures[1].data, b"\xff\xd8\xff\xe0car\r\n\xff\xd9", "picture bytes kept exactly")

    def test_xml_part_found_by_content_type_or_sniffed(self):
        for name, ctype in ((b"event", b"text/xml"), (b"MoveDetection", b"application/xml"),
                            (b"anpr.xml", b"application/octet-stream")):
            with self.subTest(name=name):
                ctype_header, body = multipart([(b"pic.jpg", b"image/jpeg", b"\xff\xd8\xff"), (name, ctype, ANPR_1)])
                ev = one(ctype_header, body)
                self.assertEqual(ev.plate_text, "KH35192")
                self.assertEqual(len(ev.pictures), 1)

    def test_multipart_mixed(self):
        ctype, body = multipart([(b"anpr.xml", b"application/xml", ANPR_1)])
        self.assertEqual(one(ctype.replace("form-data", "mixed"), body).plate_text, "KH35192")

    def test_json_event_and_relay_envelope(self):
        event = {"ipAddress": "10.0.0.9", "channelID": 2, "dateTime": "2025-01-06T08:00:00+08:00",
                 "eventType": "ANPR", "UUID": "abc-1",
                 "ANPR": {"licensePlate": "黄粤B12345", "confidenceLevel": 91, "direction": "forward",
                          "pictureInfoList": {"pictureInfo": [{"fileName": "a.jpg", "type": "vehiclePicture"}]}}}
        ev = one("application/json", json.dumps(event).encode())
        self.assertEqual((ev.plate_text, ev.color, ev.channel, ev.event_id), ("粤B12345", "yellow", 2, "abc-1"))
        self.assertAlmostEqual(ev.confidence, 0.91)
        self.assertEqual(ev.picture_names, ("a.jpg",))
        self.assertEqual(one("", json.dumps({"EventNotificationAlert": event}).encode()).plate_text, "粤B12345")
        import base64

        ctype, body = multipart([(b"anpr.xml", b"application/xml", ANPR_1)], boundary=b"b0undary")
        envelope = {"content_type": ctype, "body": base64.b64encode(body).decode(), "encoding": "base64"}
        self.assertEqual(one("", json.dumps(envelope).encode()).plate_text, "KH35192")
        plain = {"contentType": "application/xml", "body": ANPR_1.decode()}
        self.assertEqual(one("application/json", json.dumps(plain).encode()).plate_text, "KH35192")


class VariantTests(unittest.TestCase):
    def test_namespaces_hikvision_isapi_none_and_prefixed(self):
        variants = {
            "hikvision": ANPR_1,
            "isapi": ANPR_1.replace(HIK_NS, ISAPI_NS),
            "none": ANPR_1.replace(HIK_NS, b""),
            "other": ANPR_1.replace(HIK_NS, b'xmlns="urn:example:whatever"'),
        }
        for name, body in variants.items():
            with self.subTest(namespace=name):
                ev = one("application/xml", body)
                self.assertEqual((ev.plate_text, ev.channel, ev.travel), ("KH35192", 1, "forward"))
                self.assertEqual(ev.event_id[:8], "20230811")
        prefixed = (b'<?xml version="1.0"?><h:EventNotificationAlert xmlns:h="http://www.isapi.org/ver20/XMLSchema">'
                    b"<h:eventType>ANPR</h:eventType><h:dateTime>2025-01-06T08:00:00+08:00</h:dateTime>"
                    b"<h:ANPR><h:licensePlate>\xe4\xba\xacA12345</h:licensePlate><h:confidenceLevel>80"
                    b"</h:confidenceLevel></h:ANPR></h:EventNotificationAlert>")
        ev = one("", prefixed)
        self.assertEqual((ev.plate_text, ev.confidence), ("京A12345", 0.8))

    def test_cn_keepalive_in_isapi_namespace(self):
        self.assertTrue(one("", KEEPALIVE.replace(HIK_NS, ISAPI_NS)).is_heartbeat)

    def test_naive_time_is_read_in_the_lots_zone(self):
        body = ANPR_1.replace(b"2023-08-11T13:49:00+01:00", b"2023-08-11T13:49:00")
        self.assertEqual(one("", body, tz=SHANGHAI).at, datetime(2023, 8, 11, 13, 49, tzinfo=SHANGHAI))
        utc = ZoneInfo("UTC")
        self.assertEqual(one("", body, tz=utc).at, datetime(2023, 8, 11, 13, 49, tzinfo=utc))
        self.assertEqual(one("", body).at.utcoffset(), timedelta(hours=8), "default zone: Asia/Shanghai")

    def test_times_in_other_shapes(self):
        for text, expect in (
            (b"2023-08-11T13:49:00Z", datetime(2023, 8, 11, 13, 49, tzinfo=UTC)),
            (b"2023-08-11T13:49:00.250+0800", datetime(2023, 8, 11, 5, 49, 0, 250000, tzinfo=UTC)),
            (b"20230811134900555", datetime(2023, 8, 11, 13, 49, 0, 555000, tzinfo=SHANGHAI)),
        ):
            with self.subTest(text=text):
                body = ANPR_1.replace(b"2023-08-11T13:49:00+01:00", text)
                self.assertEqual(one("", body, tz=SHANGHAI).at, expect)
        for bad in (b"", b"yesterday", b"2023-13-45T99:00:00", b"9999-12-31T23:59:59-23:59"):
            with self.subTest(bad=bad):
                self.assertIsNone(one("", ANPR_1.replace(b"2023-08-11T13:49:00+01:00", bad)).at)

    def test_confidence_scaled_clamped_and_defaulted(self):
        for level, expect in ((b"0", 0.0), (b"55", 0.55), (b"100", 1.0), (b"250", 1.0), (b"-3", 0.0)):
            with self.subTest(level=level):
                body = ANPR_1.replace(b"<confidenceLevel>100<", b"<confidenceLevel>" + level + b"<")
                self.assertAlmostEqual(one("", body).confidence, expect)
        no_level = ANPR_1.replace(b"<confidenceLevel>100</confidenceLevel>", b"")
        self.assertAlmostEqual(one("", no_level).confidence, 0.99, msg="mean of plateCharBelieve")
        garbage = ANPR_1.replace(b"<confidenceLevel>100<", b"<confidenceLevel>high<")
        self.assertAlmostEqual(one("", garbage).confidence, 0.99)

    def test_plate_color_element_and_words(self):
        self.assertEqual(one("", ANPR_1.replace(b"<plateColor>unknown", b"<plateColor>yellow")).color, "yellow")
        for word, colour in (("blue", "blue"), ("Yellow", "yellow"), ("yellowGreen", "green"), ("green", "green"),
                             ("white", "white"), ("black", "black"), ("蓝", "blue"), ("unknown", None), ("", None),
                             ("other", None), (None, None)):
            with self.subTest(word=word):
                self.assertEqual(normalise_color(word), colour)

    def test_colour_prefixes(self):
        cases = {
            "蓝苏A8HK52": ("blue", "苏A8HK52"),
            "黄京A12345": ("yellow", "京A12345"),
            "绿粤BD12345": ("green", "粤BD12345"),
            "黄绿粤B12345D": ("green", "粤B12345D"),
            "白WJ粤12345": ("white", "WJ粤12345"),
            "黑A12345": (None, "黑A12345"),  # Heilongjiang, no colour
            "黑黑A12345": ("black", "黑A12345"),  # black + Heilongjiang
            "黑京A12345": ("black", "京A12345"),
            "黑": (None, "黑"),
            "蓝": (None, "蓝"),
            "苏A8HK52": (None, "苏A8HK52"),
            "": (None, ""),
        }
        for text, expect in cases.items():
            with self.subTest(text=text):
                self.assertEqual(split_color_prefix(text), expect)

    def test_colour_prefix_in_a_document(self):
        for text, plate, colour in (("黑A12345", "黑A12345", None), ("黑黑A12345", "黑A12345", "black"),
                                    ("蓝无车牌", "", "blue")):
            with self.subTest(text=text):
                body = ANPR_1.replace(b"KH35192", text.encode())
                ev = one("", body)
                self.assertEqual((ev.plate_text, ev.color, ev.raw_plate), (plate, colour, text))

    def test_no_plate_texts(self):
        for text in ("unknown", "无车牌", "", "  ", "UNKNOWN"):
            with self.subTest(text=text):
                body = ANPR_1.replace(b">KH35192<", b">" + text.encode() + b"<")
                ev = one("", body)
                self.assertEqual(ev.plate_text, "")
                self.assertEqual(ev.confidence, 0.0, "no plate, no confidence, whatever the camera says")
                self.assertTrue(ev.is_read, "a vehicle without a readable plate is still reported")

    def test_original_license_plate_used_when_license_plate_is_missing(self):
        body = ANPR_1.replace(b"<licensePlate>KH35192</licensePlate>", b"")
        body = body.replace(b"<originalLicensePlate>KH35192", b"<originalLicensePlate>\xe8\x93\x9d\xe4\xba\xacA12345")
        ev = one("", body)
        self.assertEqual((ev.plate_text, ev.color), ("京A12345", "blue"))

    def test_direction_words(self):
        for word, travel in ((b"forward", "forward"), (b"reverse", "reverse"), (b"unknown", None), (b"", None)):
            with self.subTest(word=word):
                body = ANPR_1.replace(b"<direction>forward<", b"<direction>" + word + b"<")
                self.assertEqual(one("", body).travel, travel)
        self.assertEqual(travel_to_direction("forward", "in"), "in")
        self.assertEqual(travel_to_direction("reverse", "in"), "out")
        self.assertEqual(travel_to_direction("forward", "out"), "out")
        self.assertEqual(travel_to_direction("reverse", "out"), "in")
        self.assertIsNone(travel_to_direction(None, "in"))
        self.assertIsNone(travel_to_direction("forward", None))

    def test_event_id_fallbacks(self):
        no_uuid = ANPR_1.replace(b"<UUID>20230811134901822007gWpiNIuI14ikdwfKR5eDCzuV45RubEmi88qaD5w0YTq</UUID>", b"")
        self.assertEqual(one("", no_uuid).event_id, "2023081113490182400fSXqc8CQHtdNG", "first picture's pId")
        self.assertEqual(one("", no_uuid.replace(b"<dateTime>", b"<eventId>ev-7</eventId><dateTime>")).event_id,
                         "ev-7")
        bare = (b"<EventNotificationAlert><eventType>ANPR</eventType><channelID>3</channelID>"
                b"<dateTime>2025-01-06T08:00:00+08:00</dateTime><ANPR><licensePlate>\xe4\xba\xacA12345"
                b"</licensePlate></ANPR></EventNotificationAlert>")
        a, b = one("", bare).event_id, one("", bare).event_id
        self.assertTrue(a.startswith("h-"))
        self.assertEqual(a, b, "the hash of channel+time+plate is stable")
        self.assertNotEqual(a, one("", bare.replace(b"<channelID>3", b"<channelID>4")).event_id)
        hostile = no_uuid.replace(b"<dateTime>", b"<UUID>../../etc/passwd;rm -rf</UUID><dateTime>")
        self.assertEqual(one("", hostile).event_id, "....etcpasswdrm-rf")

    def test_control_characters_are_removed_from_texts(self):
        body = ANPR_1.replace(b"KH35192</licensePlate>", "KH\u202e351\u200b92\u0085</licensePlate>".encode())
        body = body.replace(b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>", b"")
        self.assertEqual(one("", body).raw_plate, "KH35192")

    def test_gb2312_declared_documents(self):
        text = ANPR_1.decode().replace('encoding="UTF-8"', 'encoding="GB2312"').replace("KH35192", "蓝京A12345")
        ev = one("application/xml", text.encode("gb2312"))
        self.assertEqual((ev.plate_text, ev.color), ("京A12345", "blue"))

    def test_vehicle_detection_and_other_events(self):
        vd = ANPR_1.replace(b"<eventType>ANPR</eventType>", b"<eventType>vehicleDetection</eventType>")
        self.assertEqual(one("", vd).kind, "vehicleDetection")
        motion = (b"<EventNotificationAlert><eventType>VMD</eventType><eventState>active</eventState>"
                  b"<dateTime>2025-01-06T08:00:00+08:00</dateTime></EventNotificationAlert>")
        ev = one("", motion)
        self.assertEqual(ev.kind, "other")
        self.assertFalse(ev.is_read)


class MalformedTests(unittest.TestCase):
    def assertMalformed(self, content_type: str, body: bytes, **kw) -> MalformedEvent:
        with self.assertRaises(MalformedEvent) as cm:
            parse_alert(content_type, body, **kw)
        self.assertIsInstance(cm.exception, ValueError)
        self.assertTrue(cm.exception.reason)
        self.assertLess(len(cm.exception.reason), 200)
        return cm.exception

    def test_truncated_xml(self):
        for cut in (10, 200, len(ANPR_1) // 2, len(ANPR_1) - 30):
            with self.subTest(cut=cut):
                self.assertMalformed("application/xml", ANPR_1[:cut])

    def test_entity_expansion_and_external_entities_are_refused(self):
        bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
                + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10)
                           for i in range(1, 10))
                + b"]><EventNotificationAlert><eventType>ANPR</eventType><ANPR><licensePlate>&lol9;</licensePlate>"
                  b"</ANPR></EventNotificationAlert>")
        self.assertIn("refused", self.assertMalformed("application/xml", bomb).reason)
        xxe = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
               b"<EventNotificationAlert><eventType>ANPR</eventType><ANPR><licensePlate>&e;</licensePlate></ANPR>"
               b"</EventNotificationAlert>")
        self.assertMalformed("", xxe)
        dtd_only = b'<?xml version="1.0"?><!DOCTYPE EventNotificationAlert><EventNotificationAlert/>'
        self.assertMalformed("", dtd_only)
        # the bomb inside a multipart part is refused the same way
        ctype, body = multipart([(b"anpr.xml", b"application/xml", bomb)])
        self.assertMalformed(ctype, body)

    def test_body_too_large(self):
        big = ANPR_1 + b" " * (6 * 1024 * 1024)
        self.assertIn("too large", self.assertMalformed("application/xml", big).reason)
        self.assertMalformed("", ANPR_1, max_bytes=100)
        self.assertEqual(len(parse_alert("", big, max_bytes=7 * 1024 * 1024)), 1, "the cap is configurable")

    def test_garbage(self):
        for body in (b"", b"   ", b"\x00\x01\x02\xff\xfe", b"hello camera", b"\xff\xd8\xff\xe0JFIF", b"<", b"<<<>>>",
                     b"{", b"[1, 2]", b'{"no": "eventType"}', b"<html><body>hi</body></html>",
                     "蓝苏A8HK52".encode()):
            with self.subTest(body=body[:20]):
                self.assertMalformed("", body)

    def test_multipart_without_xml_part(self):
        ctype, body = multipart([(b"a.jpg", b"image/jpeg", b"\xff\xd8\xff\xd9"), (b"b.jpg", b"image/jpeg", b"\xff\xd8")])
        self.assertIn("no XML part", self.assertMalformed(ctype, body).reason)

    def test_wrong_boundary(self):
        ctype, body = multipart([(b"anpr.xml", b"application/xml", ANPR_1)], boundary=b"right")
        self.assertIn("boundary", self.assertMalformed(ctype.replace("right", "wrong"), body).reason)
        self.assertMalformed("multipart/form-data; boundary=---------------------------7e13971310878", ANPR_3)

    def test_multipart_declared_but_not_multipart(self):
        self.assertMalformed("multipart/form-data", ANPR_1)
        self.assertMalformed("multipart/form-data; boundary=x", b"just text")

    def test_other_xml_roots(self):
        self.assertMalformed("application/xml", b"<ResponseStatus><statusCode>1</statusCode></ResponseStatus>")

    def test_deep_nesting(self):
        deep_json = b'{"eventType": "ANPR", "a": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
        self.assertMalformed("application/json", deep_json)
        deep_xml = (b"<EventNotificationAlert><eventType>ANPR</eventType>" + b"<a>" * 20_000 + b"</a>" * 20_000
                    + b"</EventNotificationAlert>")
        ev = one("", deep_xml)  # expat copes; there is simply no plate
        self.assertEqual(ev.plate_text, "")

    def test_not_bytes(self):
        self.assertMalformed("", "a str")  # type: ignore[arg-type]


class StreamParserTests(unittest.TestCase):
    def stream(self, *docs: tuple[str, bytes], boundary: bytes = b"boundary", content_length: bool = True) -> bytes:
        out = b""
        for ctype, data in docs:
            out += b"--" + boundary + b"\r\nContent-Type: " + ctype.encode() + b"\r\n"
            if content_length:
                out += b"Content-Length: " + str(len(data)).encode() + b"\r\n"
            out += b"\r\n" + data + b"\r\n"
        return out

    def feed_all(self, parser: AlertStreamParser, data: bytes, step: int) -> list[HikEvent]:
        events: list[HikEvent] = []
        for i in range(0, len(data), step):
            events.extend(parser.feed(data[i:i + step]))
        return events

    def test_heartbeats_and_an_event_with_pictures_in_any_chunking(self):
        with_pics = ANPR_1  # names two pictures
        data = self.stream(
            ('application/xml; charset="UTF-8"', KEEPALIVE),
            ('application/xml; charset="UTF-8"', with_pics),
            ("image/jpeg", b"\xff\xd8\xff\xe0one\xff\xd9"),
            ("image/jpeg", b"\xff\xd8\xff\xe0two\xff\xd9"),
            ('application/xml; charset="UTF-8"', KEEPALIVE),
        )
        for step in (1, 7, 64, 1000, len(data)):
            for boundary in ("boundary", None):
                with self.subTest(step=step, boundary=boundary):
                    parser = AlertStreamParser(boundary, tz=SHANGHAI)
                    events = self.feed_all(parser, data, step)
                    self.assertEqual([e.kind for e in events], ["heartbeat", "ANPR", "heartbeat"])
                    self.assertEqual([p.data for p in events[1].pictures],
                                     [b"\xff\xd8\xff\xe0one\xff\xd9", b"\xff\xd8\xff\xe0two\xff\xd9"])
                    self.assertEqual(parser.errors, [])

    def test_parts_with_content_length_are_emitted_without_waiting_for_the_next_delimiter(self):
        parser = AlertStreamParser("boundary")
        events = parser.feed(self.stream(("application/xml", KEEPALIVE)))
        self.assertEqual([e.kind for e in events], ["heartbeat"])
        events = parser.feed(self.stream(("application/xml", ANPR_2)))  # one picture named: it waits for it
        self.assertEqual(events, [])
        events = parser.feed(self.stream(("image/jpeg", b"\xff\xd8\xff\xd9")))
        self.assertEqual([(e.kind, len(e.pictures)) for e in events], [("ANPR", 1)])

    def test_without_content_length_a_part_ends_at_the_next_delimiter(self):
        parser = AlertStreamParser("boundary")
        data = self.stream(("application/xml", KEEPALIVE), content_length=False)
        self.assertEqual(parser.feed(data), [])
        self.assertEqual([e.kind for e in parser.feed(b"--boundary\r\n")], ["heartbeat"])

    def test_wrong_content_length_falls_back_to_the_delimiter(self):
        data = (b"--boundary\r\nContent-Type: application/xml\r\nContent-Length: 99999\r\n\r\n" + KEEPALIVE
                + b"\r\n--boundary\r\nContent-Type: application/xml\r\nContent-Length: 3\r\n\r\n" + KEEPALIVE
                + b"\r\n--boundary\r\n")
        parser = AlertStreamParser("boundary")
        events = parser.feed(data)
        self.assertEqual([e.kind for e in events], ["heartbeat", "heartbeat"])

    def test_a_bad_part_is_reported_and_the_stream_goes_on(self):
        data = self.stream(("application/xml", b"<EventNotificationAlert><broken"), ("application/xml", KEEPALIVE))
        parser = AlertStreamParser("boundary")
        events = parser.feed(data)
        self.assertEqual([e.kind for e in events], ["heartbeat"])
        self.assertEqual(len(parser.errors), 1)
        self.assertIsInstance(parser.errors[0], MalformedEvent)

    def test_flush_emits_an_event_still_waiting_for_pictures(self):
        parser = AlertStreamParser("boundary")
        self.assertEqual(parser.feed(self.stream(("application/xml", ANPR_1))), [])
        flushed = parser.flush()
        self.assertEqual([e.plate_text for e in flushed], ["KH35192"])
        self.assertEqual(parser.flush(), [])

    @FUZZ
    @given(st.binary(max_size=2000), st.integers(1, 64))
    def test_fuzz_stream_never_raises(self, data, step):
        parser = AlertStreamParser(None)
        for i in range(0, len(data), step):
            for ev in parser.feed(data[i:i + step]):
                self.assertIsInstance(ev, HikEvent)
        parser.flush()


class FuzzTests(unittest.TestCase):
    CONTENT_TYPES = ["", "application/xml", "text/xml", "application/json", "multipart/form-data",
                     "multipart/form-data; boundary=-------------------------7e13971310878",
                     "multipart/mixed; boundary=MIME_boundary", "text/plain", "image/jpeg"]

    def check(self, content_type: str, body: bytes) -> None:
        try:
            events = parse_alert(content_type, body, max_bytes=64 * 1024)
        except MalformedEvent:
            return
        for ev in events:
            self.assertIsInstance(ev, HikEvent)
            self.assertTrue(0.0 <= ev.confidence <= 1.0)
            self.assertTrue(ev.at is None or ev.at.utcoffset() is not None)
            if ev.is_read:
                self.assertTrue(ev.event_id)

    @FUZZ
    @given(st.sampled_from(CONTENT_TYPES), st.binary(max_size=4000))
    def test_random_bytes(self, content_type, body):
        self.check(content_type, body)

    @FUZZ
    @given(st.sampled_from(CONTENT_TYPES), st.text(max_size=300))
    def test_random_text(self, content_type, text):
        self.check(content_type, text.encode("utf-8", "surrogatepass"))

    @FUZZ
    @given(st.sampled_from([ANPR_1, ANPR_2, ANPR_3, KEEPALIVE, PULL, clean_multipart(ANPR_3)]),
           st.sampled_from(CONTENT_TYPES), st.randoms(use_true_random=False),
           st.lists(st.tuples(st.sampled_from(["flip", "insert", "delete", "dup", "cut"]), st.integers(0, 10**6),
                              st.binary(min_size=1, max_size=8)), min_size=1, max_size=6))
    def test_mutated_fixtures(self, base, content_type, rnd, mutations):
        body = bytearray(base)
        for op, pos, blob in mutations:
            if not body:
                break
            i = pos % len(body)
            if op == "flip":
                body[i] ^= blob[0] or 1
            elif op == "insert":
                body[i:i] = blob
            elif op == "delete":
                del body[i:i + len(blob) * 8]
            elif op == "dup":
                body[i:i] = body[max(0, i - 200):i]
            else:
                del body[i:]
        self.check(content_type, bytes(body))

    def test_every_fixture_byte_deleted_in_turn_sample(self):
        rnd = random.Random(7)
        for base in (ANPR_3, KEEPALIVE):
            for _ in range(200):
                i = rnd.randrange(len(base))
                self.check("", base[:i] + base[i + 1:])


if __name__ == "__main__":
    unittest.main()
