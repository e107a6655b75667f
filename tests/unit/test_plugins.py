"""Plugin loading, the allow-list, settings validation, secrets and bootstrap overrides."""

import os
import tempfile
import unittest
from unittest import mock

from pydantic import BaseModel, ConfigDict

from smartpark import hookimpl
from smartpark.bootstrap import bootstrap
from smartpark.config import Secret, config_from_mapping, redact
from smartpark.core.errors import ConfigError
from smartpark.plugins import Plugins
from smartpark.testing.fakes.clock import FakeClock
from smartpark.testing.fakes.devices import FakeGate, FakeRecognizer, FakeSpaceSensor
from smartpark.testing.fakes.notifier import FakeNotifier
from smartpark.testing.fakes.payment import FakePaymentChannel
from smartpark.testing.fakes.store import InMemoryStore
from smartpark.testing.samples import SAMPLE_TIME


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    host: str = "127.0.0.1"
    port: int = 9100
    api_key: Secret | None = None


class DemoPlugin:
    """A plugin object the way a third party writes one."""

    built = []

    @hookimpl
    def register_gates(self, register):
        register.add("demo_gate", self._gate, GateConfig, description="demo gate")

    @hookimpl
    def register_stores(self, register):
        register.add("memory", lambda cfg, ctx: InMemoryStore(), None, description="in memory")

    def _gate(self, config, context):
        gate = FakeGate(lanes=["in-1"])
        self.built.append((config, context))
        return gate


def plugins(*extra):
    return Plugins(load_entry_points=False, extra=extra or (DemoPlugin(),))


_tmp = tempfile.TemporaryDirectory()


def tearDownModule():
    _tmp.cleanup()


def config(enabled, **settings):
    return config_from_mapping({"data_dir": _tmp.name, "plugins": {"enabled": enabled, **settings}})


class PluginManagerTests(unittest.TestCase):
    def test_lists_what_plugins_offer(self):
        p = plugins()
        self.assertEqual(sorted(p.available()), ["demo_gate", "memory"])
        self.assertEqual(p.available()["demo_gate"].kind, "gate")
        rows = p.listing(["memory"], {"demo_gate": {"api_key": {"env": "GATE_KEY"}, "password": "x"}})
        by_name = {r["name"]: r for r in rows}
        self.assertTrue(by_name["memory"]["enabled"])
        self.assertFalse(by_name["demo_gate"]["enabled"])
        self.assertEqual(by_name["demo_gate"]["settings"], {"api_key": "${GATE_KEY}", "password": "******"})

    def test_unknown_plugin_lists_available_names(self):
        with self.assertRaises(ConfigError) as ctx:
            plugins().check_enabled(["memory", "demo_gaet"], {})
        self.assertIn("demo_gaet", ctx.exception.en)
        self.assertIn("demo_gate, memory", ctx.exception.en)
        self.assertIn("未知的插件", ctx.exception.zh)

    def test_bad_setting_names_plugin_key_and_expectation(self):
        with self.assertRaises(ConfigError) as ctx:
            plugins().check_enabled(["demo_gate"], {"demo_gate": {"port": "ninety"}})
        self.assertIn("[plugins.demo_gate] port", ctx.exception.en)
        self.assertIn("integer", ctx.exception.en)
        with self.assertRaises(ConfigError) as ctx:
            plugins().check_enabled(["demo_gate"], {"demo_gate": {"prot": 1}})
        self.assertIn("prot: unknown setting", ctx.exception.en)

    def test_secrets_come_only_from_the_environment(self):
        with self.assertRaises(ConfigError) as ctx:
            plugins().check_enabled(["demo_gate"], {"demo_gate": {"api_key": "plain-text-key"}})
        self.assertIn("env", ctx.exception.en)
        with self.assertRaises(ConfigError) as ctx:
            plugins().check_enabled(["demo_gate"], {"demo_gate": {"api_key": {"env": "SMARTPARK_TEST_UNSET"}}})
        self.assertIn("SMARTPARK_TEST_UNSET is not set", ctx.exception.en)
        with mock.patch.dict(os.environ, {"SMARTPARK_TEST_KEY": "s3cret"}):
            cfg = plugins().check_enabled(["demo_gate"], {"demo_gate": {"api_key": {"env": "SMARTPARK_TEST_KEY"}}})
        self.assertEqual(cfg["demo_gate"].api_key.get_secret_value(), "s3cret")
        self.assertNotIn("s3cret", repr(cfg["demo_gate"]))

    def test_duplicate_names_are_refused(self):
        class Clash:
            @hookimpl
            def register_gates(self, register):
                register.add("demo_gate", lambda c, x: None)

        with self.assertRaises(ConfigError):
            Plugins(load_entry_points=False, extra=(DemoPlugin(), Clash()))

    def test_misspelt_hook_fails_at_start(self):
        class Typo:
            @hookimpl
            def register_gate(self, register):  # missing "s"
                pass

        with self.assertRaises(ConfigError):
            Plugins(load_entry_points=False, extra=(Typo(),))

    def test_enabled_twice_is_refused(self):
        with self.assertRaises(ConfigError):
            plugins().check_enabled(["memory", "memory"], {})

    def test_redact(self):
        self.assertEqual(redact({"host": "h", "private_key_path": "/k.pem", "api_v3_key": "x", "token": {"env": "T"}}),
                         {"host": "h", "private_key_path": "/k.pem", "api_v3_key": "******", "token": "${T}"})


class BootstrapTests(unittest.TestCase):
    def test_builds_only_enabled_adapters(self):
        demo = DemoPlugin()
        demo.built.clear()
        app = bootstrap(config(["memory"]), overrides={"plugins": plugins(demo), "clock": FakeClock(SAMPLE_TIME)})
        self.addCleanup(app.close)
        self.assertIsInstance(app.store, InMemoryStore)
        self.assertEqual(app.gates, {})
        self.assertEqual(demo.built, [])

    def test_enabled_adapter_gets_settings_and_context(self):
        demo = DemoPlugin()
        demo.built.clear()
        app = bootstrap(config(["memory", "demo_gate"], demo_gate={"port": 9200}),
                        overrides={"plugins": plugins(demo)})
        self.addCleanup(app.close)
        self.assertEqual(list(app.gates), ["demo_gate"])
        cfg, ctx = demo.built[0]
        self.assertEqual(cfg.port, 9200)
        self.assertIs(ctx.clock, app.clock)
        self.assertEqual(ctx.config.lot.timezone, "Asia/Shanghai")

    def test_exactly_one_store(self):
        app = bootstrap(config(["demo_gate"]), overrides={"plugins": plugins()})
        with self.assertRaises(ConfigError) as ctx:
            _ = app.store
        self.assertIn("memory", ctx.exception.en)

    def test_overrides_replace_providers_and_unknown_names_fail(self):
        store = InMemoryStore()
        app = bootstrap(config([]), overrides={"store": store, "plugins": plugins()})
        self.assertIs(app.store, store)
        owner = app.residents.register_owner(name="张三", id_number="11010519491231002X", phone="13812345678",
                                             plates=["京A12345"], actor="t")
        self.assertEqual(app.residents.owner_by_plate("京A12345").id, owner.id)
        with self.assertRaises(ConfigError):
            bootstrap(config([]), overrides={"stroe": store})

    def test_bad_lot_settings_name_the_key(self):
        with self.assertRaises(ConfigError) as ctx:
            config_from_mapping({"lot": {"capacity": 0, "timezone": "Mars/Base"}})
        self.assertIn("[lot] capacity", ctx.exception.en)
        self.assertIn("[lot] timezone", ctx.exception.en)
        self.assertIn("Mars/Base", ctx.exception.en)


class EveryPortPlugin:
    """Offers one fake adapter through every hook, as a third-party package could."""

    @hookimpl
    def register_recognizers(self, register):
        register.add("fake_camera", lambda cfg, ctx: FakeRecognizer(clock=ctx.clock), description="fake camera")

    @hookimpl
    def register_gates(self, register):
        register.add("fake_gate", lambda cfg, ctx: FakeGate(lanes=cfg.lanes, clock=ctx.clock), LanesConfig)

    @hookimpl
    def register_sensors(self, register):
        register.add("fake_sensors", lambda cfg, ctx: FakeSpaceSensor(spaces=("B1-001",), clock=ctx.clock))

    @hookimpl
    def register_payment_channels(self, register):
        register.add("fake_pay", lambda cfg, ctx: FakePaymentChannel(name="fake_pay"))

    @hookimpl
    def register_notifiers(self, register):
        register.add("fake_sms", lambda cfg, ctx: FakeNotifier(name="fake_sms", channel="sms"))

    @hookimpl
    def register_stores(self, register):
        register.add("memory", lambda cfg, ctx: InMemoryStore())

    @hookimpl
    def register_frontends(self, register):
        register.add("echo_ui", lambda cfg, ctx: EchoFrontend())


class LanesConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lanes: list[str] = ["in-1", "out-1"]


class EchoFrontend:
    def run(self, app):
        return app.config.lot.name


class EveryHookTests(unittest.TestCase):
    def test_every_kind_is_built_when_enabled(self):
        names = ["memory", "fake_camera", "fake_gate", "fake_sensors", "fake_pay", "fake_sms", "echo_ui"]
        app = bootstrap(config(names, fake_gate={"lanes": ["east-in"]}),
                        overrides={"plugins": Plugins(load_entry_points=False, extra=(EveryPortPlugin(),))})
        self.addCleanup(app.close)
        self.assertIsInstance(app.recognizers["fake_camera"], FakeRecognizer)
        self.assertEqual(app.gates["fake_gate"].lanes(), ["east-in"])
        self.assertIsInstance(app.sensors["fake_sensors"], FakeSpaceSensor)
        self.assertIsInstance(app.payment_channels["fake_pay"], FakePaymentChannel)
        self.assertIsInstance(app.notifiers["fake_sms"], FakeNotifier)
        self.assertEqual(app.frontends["echo_ui"].run(app), "智慧社区停车场")
        self.assertIsInstance(app.store, InMemoryStore)

    def test_close_releases_what_was_built(self):
        released = []

        class RecordingGate(FakeGate):
            def shutdown(self):
                released.append(self.lanes())

        class GatePlugin:
            @hookimpl
            def register_gates(self, register):
                register.add("rec_gate", lambda cfg, ctx: RecordingGate(lanes=["in-9"]))

            @hookimpl
            def register_stores(self, register):
                register.add("memory", lambda cfg, ctx: InMemoryStore())

        app = bootstrap(config(["memory", "rec_gate"]),
                        overrides={"plugins": Plugins(load_entry_points=False, extra=(GatePlugin(),))})
        _ = app.gates  # build it
        app.close()
        self.assertEqual(released, [["in-9"]])
        app.close()  # idempotent
        self.assertEqual(released, [["in-9"]])
