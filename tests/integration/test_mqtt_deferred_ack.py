"""MqttConnection's deferred acknowledgement on the real Mosquitto: a message is PUBACKed only when its work is
done, so a consumer that stops before then gets it again from its persistent session."""

import threading
import time
import unittest
import uuid

from smartpark.infra.mqtt import BrokerSettings, MqttConnection


class DeferredAckTest(unittest.TestCase):
    def setUp(self):
        self.topic = f"smartpark/test/{uuid.uuid4().hex[:8]}/events"
        self.client_id = f"deferred-{uuid.uuid4().hex[:8]}"
        self.pub = MqttConnection(BrokerSettings(), f"{self.client_id}-pub", persistent=False)
        self.assertTrue(self.pub.start(wait=5))
        self.addCleanup(self.pub.stop)

    def consumer(self, got, acks):
        conn = MqttConnection(BrokerSettings(), self.client_id, persistent=True, manual_ack=True)

        def handle(topic, payload, ack):
            got.append(payload)
            acks.append(ack)

        conn.subscribe_deferred(self.topic, handle)
        conn.start()
        self.assertTrue(conn.wait_subscribed(5))
        return conn

    def wait(self, predicate, timeout=5.0):
        deadline = time.monotonic() + timeout
        while not predicate() and time.monotonic() < deadline:
            time.sleep(0.01)
        return predicate()

    def test_unacknowledged_message_comes_back_and_acknowledged_one_does_not(self):
        got, acks = [], []
        first = self.consumer(got, acks)
        self.pub.publish(self.topic, b"one", qos=1).wait_for_publish(5)
        self.pub.publish(self.topic, b"two", qos=1).wait_for_publish(5)
        self.assertTrue(self.wait(lambda: len(got) == 2), got)
        acks[0]()  # "one" is done; "two" is still being worked on when the consumer goes away
        time.sleep(0.2)
        first.stop()

        got2, acks2 = [], []
        second = self.consumer(got2, acks2)
        self.addCleanup(second.stop)
        self.assertTrue(self.wait(lambda: b"two" in got2), got2)
        self.assertNotIn(b"one", got2)
        for ack in acks2:
            ack()
            ack()  # a second call is harmless

    def test_plain_subscribe_needs_no_manual_ack(self):
        conn = MqttConnection(BrokerSettings(), f"{self.client_id}-plain", persistent=False)
        with self.assertRaises(ValueError):
            conn.subscribe_deferred(self.topic, lambda t, p, a: None)
        done = threading.Event()
        conn.subscribe(self.topic, lambda t, p: done.set())
        conn.start()
        self.addCleanup(conn.stop)
        self.assertTrue(conn.wait_subscribed(5))
        self.pub.publish(self.topic, b"x", qos=1).wait_for_publish(5)
        self.assertTrue(done.wait(5))
