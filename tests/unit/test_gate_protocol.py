"""The gate protocol's framing and message shapes (smartpark.adapters.gate_tcp.protocol): pure, no sockets."""

from __future__ import annotations

import json
import unittest

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smartpark.adapters.gate_tcp import protocol as p

FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])  # bytes: cheap
FUZZ_OBJECTS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SAMPLES = [
    p.request("a1b2c3d4-1", "open", "in-1", "月卡车辆 沪A12345 入场"),
    p.ok_reply("a1b2c3d4-1", p.LaneState(position="moving", target="open", signal=None)),
    p.error_reply("a1b2c3d4-2", "UNKNOWN_LANE", "this controller serves in-1, not in-9"),
    p.hello_event("ctl-1", ["in-1", "out-1"], "v2.3.1", 5.0),
    p.state_event("in-1", p.LaneState(position="open", keep_open=True, signal=2)),
    p.heartbeat_event(),
]


def frame_of_payload(payload: bytes) -> bytes:
    return len(payload).to_bytes(4, "big") + payload


class FramingTests(unittest.TestCase):
    def test_round_trip(self):
        for msg in SAMPLES:
            with self.subTest(msg=msg):
                self.assertEqual(p.decode_frames(p.encode_frame(msg)), [msg])

    def test_frame_layout_is_a_big_endian_length_and_utf8_json(self):
        frame = p.encode_frame({"v": 1, "event": "heartbeat"})
        payload = b'{"v":1,"event":"heartbeat"}'
        self.assertEqual(frame, len(payload).to_bytes(4, "big") + payload)
        chinese = p.encode_frame({"reason": "消防"})
        self.assertIn("消防".encode(), chinese, "UTF-8 on the wire, not \\u escapes")

    def test_several_frames_in_one_read(self):
        data = b"".join(p.encode_frame(m) for m in SAMPLES)
        self.assertEqual(p.FrameDecoder().feed(data), SAMPLES)

    def test_a_frame_split_at_every_byte_boundary(self):
        data = p.encode_frame(SAMPLES[0]) + p.encode_frame(SAMPLES[1])
        for cut in range(len(data) + 1):
            with self.subTest(cut=cut):
                decoder = p.FrameDecoder()
                got = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
                self.assertEqual(got, SAMPLES[:2])
                self.assertEqual(decoder.buffered, 0)

    def test_one_byte_at_a_time(self):
        data = b"".join(p.encode_frame(m) for m in SAMPLES)
        decoder = p.FrameDecoder()
        got = []
        for i in range(len(data)):
            got += decoder.feed(data[i:i + 1])
        self.assertEqual(got, SAMPLES)

    def test_a_partial_frame_waits_for_more(self):
        frame = p.encode_frame(SAMPLES[0])
        decoder = p.FrameDecoder()
        self.assertEqual(decoder.feed(frame[:-1]), [])
        self.assertEqual(decoder.buffered, len(frame) - 1)
        with self.assertRaises(p.ProtocolError):
            p.decode_frames(frame[:-1])  # a buffer of whole frames only

    def test_the_largest_frame_passes(self):
        msg = {"v": 1, "pad": ""}
        msg["pad"] = "x" * (p.MAX_FRAME - len(json.dumps(msg, separators=(",", ":"))))
        frame = p.encode_frame(msg)
        self.assertEqual(len(frame), 4 + p.MAX_FRAME)
        self.assertEqual(p.decode_frames(frame), [msg])

    def test_oversize_frame_is_refused_from_the_length_prefix_alone(self):
        decoder = p.FrameDecoder()
        with self.assertRaises(p.ProtocolError):
            decoder.feed((p.MAX_FRAME + 1).to_bytes(4, "big"))  # no payload needed to know
        with self.assertRaises(p.ProtocolError):
            decoder.feed(p.encode_frame(SAMPLES[0]))  # the stream stays failed: it cannot re-synchronise

    def test_a_protocol_error_carries_the_messages_before_it(self):
        data = p.encode_frame(SAMPLES[3]) + p.encode_frame(SAMPLES[5]) + b"\xff\xff\xff\xffgarbage"
        with self.assertRaises(p.ProtocolError) as caught:
            p.FrameDecoder().feed(data)
        self.assertEqual(caught.exception.messages, [SAMPLES[3], SAMPLES[5]])
        with self.assertRaises(p.ProtocolError) as caught:
            p.FrameDecoder().feed(b"\x00\x00\x00\x02[]")
        self.assertEqual(caught.exception.messages, [])

    def test_encoding_an_oversize_message_is_refused(self):
        with self.assertRaises(p.ProtocolError):
            p.encode_frame({"pad": "x" * p.MAX_FRAME})

    def test_zero_length_frame_is_a_protocol_error(self):
        with self.assertRaises(p.ProtocolError):
            p.FrameDecoder().feed(b"\x00\x00\x00\x00")

    def test_invalid_payloads_are_protocol_errors(self):
        bad = {
            "not JSON": b"open the gate",
            "truncated JSON": b'{"v":1,',
            "array": b"[1,2]",
            "number": b"42",
            "string": b'"hello"',
            "null": b"null",
            "invalid UTF-8": b'{"a":"\xff\xfe"}',
            "NaN": b'{"a":NaN}',
            "Infinity": b'{"a":-Infinity}',
            "deep nesting": b"[" * 50_000 + b"]" * 50_000,
        }
        for name, payload in bad.items():
            with self.subTest(name):
                with self.assertRaises(p.ProtocolError):
                    p.FrameDecoder().feed(frame_of_payload(payload))

    def test_encoding_non_objects_and_unserialisable_values_is_refused(self):
        for value in ([1], "x", {"a": object()}, {"a": float("nan")}):
            with self.subTest(value=value):
                with self.assertRaises(p.ProtocolError):
                    p.encode_frame(value)  # type: ignore[arg-type]

    def test_a_lone_surrogate_from_a_peer_is_re_encoded_escaped(self):
        [msg] = p.decode_frames(frame_of_payload(b'{"lane":"\\ud800"}'))
        self.assertEqual(p.decode_frames(p.encode_frame(msg)), [msg])


class MessageTests(unittest.TestCase):
    def test_request_shape(self):
        self.assertEqual(p.request("x-1", "open", "in-1", "visitor"),
                         {"v": 1, "id": "x-1", "op": "open", "lane": "in-1", "reason": "visitor"})
        self.assertNotIn("reason", p.request("x-1", "close", "in-1"))
        self.assertEqual(len(p.request("x-1", "open", "in-1", "长" * 500)["reason"]), p.MAX_REASON)

    def test_parse_request(self):
        req = p.parse_request(p.request("x-1", "keep_open", "out-1", "消防"))
        self.assertEqual(req, p.Request(id="x-1", op="keep_open", lane="out-1", reason="消防"))
        self.assertEqual(p.parse_request({"v": 1, "id": "x-2", "op": "ping"}).lane, None)

    def test_bad_requests_carry_the_id_when_readable(self):
        cases = {
            "unknown op": ({"v": 1, "id": "x-1", "op": "explode", "lane": "in-1"}, "x-1"),
            "missing lane": ({"v": 1, "id": "x-1", "op": "open"}, "x-1"),
            "bad lane": ({"v": 1, "id": "x-1", "op": "open", "lane": "in 1"}, "x-1"),
            "reason not a string": ({"v": 1, "id": "x-1", "op": "open", "lane": "in-1", "reason": 5}, "x-1"),
            "wrong version": ({"v": 2, "id": "x-1", "op": "open", "lane": "in-1"}, "x-1"),
            "missing version": ({"id": "x-1", "op": "open", "lane": "in-1"}, "x-1"),
            "no id": ({"v": 1, "op": "open", "lane": "in-1"}, None),
            "id not a string": ({"v": 1, "id": 7, "op": "open", "lane": "in-1"}, None),
            "id too long": ({"v": 1, "id": "x" * 65, "op": "open", "lane": "in-1"}, None),
        }
        for name, (msg, rid) in cases.items():
            with self.subTest(name):
                with self.assertRaises(p.BadRequest) as caught:
                    p.parse_request(msg)
                self.assertEqual(caught.exception.request_id, rid)
                self.assertIsInstance(caught.exception, p.ProtocolError)

    def test_parse_replies(self):
        ok = p.parse_incoming(p.ok_reply("x-1", p.LaneState(position="moving", target="open")))
        self.assertIsInstance(ok, p.Reply)
        self.assertTrue(ok.ok)
        self.assertEqual(ok.state, p.LaneState(position="moving", target="open"))
        err = p.parse_incoming(p.error_reply("x-2", "BUSY", "motor cooling down"))
        self.assertEqual((err.ok, err.code, err.message), (False, "BUSY", "motor cooling down"))
        anonymous = p.parse_reply(p.error_reply(None, "BAD_REQUEST", "no id"))
        self.assertIsNone(anonymous.id)

    def test_parse_events(self):
        hello = p.parse_incoming(SAMPLES[3])
        self.assertEqual((hello.event, hello.controller, hello.lanes, hello.fw, hello.heartbeat_s),
                         ("hello", "ctl-1", ("in-1", "out-1"), "v2.3.1", 5.0))
        state = p.parse_incoming(SAMPLES[4])
        self.assertEqual((state.lane, state.state), ("in-1", p.LaneState(position="open", keep_open=True, signal=2)))
        self.assertEqual(p.parse_incoming({"v": 1, "event": "door_opened", "x": 1}).event, "door_opened")

    def test_malformed_incoming_messages_are_protocol_errors(self):
        bad = [
            {"v": 1},
            {"v": 1, "id": "x", "ok": "yes"},
            {"v": 1, "id": "x", "ok": False},
            {"v": 1, "id": "x", "ok": False, "error": {"code": ""}},
            {"v": 1, "id": 5, "ok": True},
            {"v": 1, "id": "x", "ok": True, "state": {"position": "sideways"}},
            {"v": 1, "id": "x", "ok": True, "state": {"position": "open", "keep_open": "no"}},
            {"v": 1, "id": "x", "ok": True, "state": {"position": "moving", "target": "up"}},
            {"v": 1, "id": "x", "ok": True, "state": {"signal": "2"}},
            {"v": 1, "id": "x", "ok": True, "state": [1]},
            {"v": 2, "event": "heartbeat"},
            {"v": True, "event": "heartbeat"},
            {"v": 1, "event": ""},
            {"v": 1, "event": "hello", "lanes": "in-1"},
            {"v": 1, "event": "hello", "lanes": [], "heartbeat_s": -1},
            {"v": 1, "event": "hello", "lanes": [], "fw": 3},
            {"v": 1, "event": "state", "position": "open"},
        ]
        for msg in bad:
            with self.subTest(msg=msg):
                with self.assertRaises(p.ProtocolError):
                    p.parse_incoming(msg)

    def test_lane_state_json(self):
        self.assertEqual(p.LaneState().to_json(), {"position": "unknown", "keep_open": False, "online": True})
        self.assertEqual(p.LaneState(position="moving", target="closed", signal=2).to_json()["target"], "closed")

    def test_request_ids_are_unique_and_prefixed(self):
        a, b = p.RequestIds(), p.RequestIds()
        ids = [a.next() for _ in range(1000)] + [b.next() for _ in range(1000)]
        self.assertEqual(len(set(ids)), 2000)
        self.assertNotEqual(a.prefix, b.prefix)
        self.assertTrue(all(len(i) <= 64 and " " not in i for i in ids))
        self.assertEqual(p.parse_request(p.request(ids[0], "open", "in-1")).id, ids[0])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


class FuzzTests(unittest.TestCase):
    @FUZZ
    @given(st.binary(max_size=300), st.integers(min_value=1, max_value=50))
    def test_random_bytes_raise_nothing_but_protocol_error(self, data, chunk):
        decoder = p.FrameDecoder()
        try:
            for i in range(0, len(data), chunk):
                for msg in decoder.feed(data[i:i + chunk]):
                    self.assertIsInstance(msg, dict)
                    try:
                        p.parse_incoming(msg)
                        p.parse_request(msg)
                    except p.ProtocolError:
                        pass
        except p.ProtocolError:
            pass

    @FUZZ
    @given(st.binary(min_size=1, max_size=300))
    def test_random_payloads_in_valid_frames_raise_nothing_but_protocol_error(self, payload):
        try:
            p.decode_frames(frame_of_payload(payload))
        except p.ProtocolError:
            pass

    @FUZZ_OBJECTS
    @given(st.dictionaries(st.sampled_from(["v", "id", "ok", "op", "lane", "event", "state", "error", "lanes",
                                            "heartbeat_s", "position", "reason", "code"]), json_values, max_size=8))
    def test_random_objects_raise_nothing_but_protocol_error_when_parsed(self, msg):
        for parse in (p.parse_incoming, p.parse_request):
            try:
                parse(msg)
            except p.ProtocolError:
                pass

    @FUZZ_OBJECTS
    @given(st.dictionaries(st.text(max_size=10), json_values, max_size=6))
    def test_any_json_object_round_trips(self, msg):
        self.assertEqual(p.decode_frames(p.encode_frame(msg)), [msg])


if __name__ == "__main__":
    unittest.main()
