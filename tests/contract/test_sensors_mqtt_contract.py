"""sensors_mqtt passes the SpaceSensor contract against the real Mosquitto at 127.0.0.1:1883.

``report()`` publishes a real MQTT message from a second client (a simulated sensor node); each test uses its
own lot id, so topic prefixes never collide, and removes the retained messages and the persistent session it made.
The adapter is built through the plugin's own hook and factory, as ``bootstrap()`` builds it.
"""

from __future__ import annotations

import types
import unittest
import uuid
from typing import Any

from pydantic import ValidationError

import smartpark.adapters.sensors_mqtt as plugin
from smartpark.adapters.sensors_mqtt.sensor import MqttSpaceSensor
from smartpark.adapters.sensors_mqtt.simulator import SimulatedSensor
from smartpark.infra.mqtt import BrokerSettings, MqttConnection
from smartpark.testing.contracts.sensor import SpaceSensorContract
from smartpark.testing.fakes.clock import FakeClock

BROKER = BrokerSettings(host="127.0.0.1", port=1883)


def broker_up() -> bool:
    conn = MqttConnection(BROKER, persistent=False)
    try:
        return conn.start(wait=3.0)
    finally:
        conn.stop()


def build_via_plugin(settings: dict[str, Any], clock: Any) -> MqttSpaceSensor:
    """What bootstrap() does: the hook offers (name, factory, Config); settings are validated; the factory builds."""
    offered: dict[str, tuple[Any, Any]] = {}

    class Register:
        def add(self, name, factory, config_model=None, *, description=""):
            offered[name] = (factory, config_model)

    plugin.register_sensors(register=Register())
    factory, config_model = offered["sensors_mqtt"]
    context = types.SimpleNamespace(clock=clock, timezone=None, data_dir=None, config=None)
    return factory(config_model.model_validate(settings), context)


def forget_session(client_id: str) -> None:
    """Drop a persistent session the test made (connect with a clean start and no expiry)."""
    conn = MqttConnection(BROKER, client_id, persistent=False)
    try:
        conn.start(wait=3.0)
    finally:
        conn.stop()


@unittest.skipUnless(broker_up(), "needs Mosquitto on 127.0.0.1:1883")
class TestMqttSpaceSensor(SpaceSensorContract, unittest.TestCase):
    space_ids = ("B1-001", "B1-002")
    device = "node-7"

    def setUp(self) -> None:
        self.lot = f"t{uuid.uuid4().hex[:12]}"
        self.client_id = f"smartpark-test-{self.lot}"
        self.node = SimulatedSensor(BROKER, device=self.device, lot=self.lot).start(announce=False)
        self.addCleanup(self._clean_broker)
        super().setUp()

    def _clean_broker(self) -> None:
        self.node.clear_retained()
        self.node.stop()
        forget_session(self.client_id)

    # -- hooks ------------------------------------------------------------------------------------------------------
    def make_sensor(self) -> MqttSpaceSensor:
        # The contract reports changes back to back, and checks each arrives: debounce off (min_hold_ms=0);
        # the debounce has its own tests (unit and integration).
        return build_via_plugin({"lot": self.lot, "client_id": self.client_id, "min_hold_ms": 0,
                                 "session_expiry_s": 60}, FakeClock())

    def report(self, space: str, occupied: bool) -> None:
        self.node.report(space, occupied)

    def set_device_online(self, device: str, online: bool) -> None:
        self.assertEqual(device, self.device)
        self.node.set_status(online)


@unittest.skipUnless(broker_up(), "needs Mosquitto on 127.0.0.1:1883")
class TestMqttSpaceSensorBarePayloads(TestMqttSpaceSensor):
    """The same contract with sensors that send bare ``1``/``0``: the space id is then the device id."""

    def report(self, space: str, occupied: bool) -> None:
        self.node.report(space, occupied, fmt="bare")

    def set_device_online(self, device: str, online: bool) -> None:
        self.assertEqual(device, self.space_ids[0])
        node = SimulatedSensor(BROKER, device=device, lot=self.lot, last_will=False).start(announce=False)
        try:
            node.set_status(online)
            if online:
                node.clear_retained()
        finally:
            node.stop()


class PluginTests(unittest.TestCase):
    def test_the_hook_offers_sensors_mqtt_with_a_strict_config(self) -> None:
        offered = {}

        class Register:
            def add(self, name, factory, config_model=None, *, description=""):
                offered[name] = (factory, config_model, description)

        plugin.register_sensors(register=Register())
        self.assertEqual(list(offered), ["sensors_mqtt"])
        _, config_model, description = offered["sensors_mqtt"]
        self.assertIs(config_model, plugin.Config)
        self.assertTrue(description)

    def test_defaults(self) -> None:
        cfg = plugin.Config()
        self.assertEqual((cfg.host, cfg.port, cfg.min_hold_ms, cfg.stale_after_s, cfg.device_offline_after_s),
                         ("127.0.0.1", 1883, 2000, 600, 900))
        sensor = build_via_plugin({}, FakeClock())
        self.assertEqual(sensor.name, "sensors_mqtt")
        self.assertEqual(sensor.topics.state("A-1"), "smartpark/main/spaces/A-1/state")
        self.assertRegex(sensor.client_id, r"^smartpark-sensors-main-[0-9a-f]{10}$")
        self.assertEqual(sensor.client_id, build_via_plugin({}, FakeClock()).client_id, "stable")
        self.assertEqual(sensor.tracker.min_hold_s, 2.0)
        self.assertEqual(sensor.spaces(), {})

    def test_settings_reach_the_adapter(self) -> None:
        clock = FakeClock()
        sensor = build_via_plugin({"lot": "east", "topic_prefix": "site/{lot}/bays", "device_prefix": "site/nodes",
                                   "spaces": ["E-1", "E-2"], "only_known_spaces": True, "min_hold_ms": 500,
                                   "stale_after_s": 120, "device_offline_after_s": 0, "client_id": "svc-1"}, clock)
        self.assertIs(sensor.clock, clock)
        self.assertEqual((sensor.topics.spaces, sensor.topics.sensors, sensor.client_id),
                         ("site/east/bays", "site/nodes", "svc-1"))
        self.assertEqual(sensor.spaces(), {"E-1": None, "E-2": None})
        self.assertEqual((sensor.tracker.min_hold_s, sensor.tracker.stale_after_s,
                          sensor.tracker.device_offline_after_s), (0.5, 120, 0))

    def test_bad_settings_are_refused_naming_the_key(self) -> None:
        for settings, key in [({"min_hold_ms": -1}, "min_hold_ms"), ({"lot": "a/b"}, "lot"),
                              ({"topic_prefix": "a/#"}, "topic_prefix"), ({"device_prefix": "a//b"}, "device_prefix"),
                              ({"spaces": ["ok", "not/ok"]}, "spaces"), ({"spaces": ["x", "x"]}, "spaces"),
                              ({"only_known_spaces": True}, "only_known_spaces"), ({"port": 0}, "port"),
                              ({"hots": "x"}, "hots"), ({"password": "plain-text"}, "password")]:
            with self.subTest(settings=settings):
                with self.assertRaises(ValidationError) as ctx:
                    plugin.Config.model_validate(settings)
                self.assertIn(key, str(ctx.exception))

    def test_the_password_comes_from_the_environment(self) -> None:
        import os
        from unittest import mock

        with mock.patch.dict(os.environ, {"SP_TEST_MQTT_PASSWORD": "s3cret"}):
            sensor = build_via_plugin({"username": "park", "password": {"env": "SP_TEST_MQTT_PASSWORD"}}, FakeClock())
        self.assertEqual((sensor.broker.username, sensor.broker.password), ("park", "s3cret"))


if __name__ == "__main__":
    unittest.main()
