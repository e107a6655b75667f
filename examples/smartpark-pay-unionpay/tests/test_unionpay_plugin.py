"""The package as an installed smartpark plugin: discovered through its entry point, listed by ``smartpark
plugins``, built by ``bootstrap()`` when plugins.toml enables it, and importing only smartpark's public surface."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
import unittest
from importlib.metadata import entry_points
from pathlib import Path

from smartpark.bootstrap import bootstrap
from smartpark.core.errors import ConfigError
from smartpark.plugins import Plugins
from smartpark.ports.payment import PaymentChannel

import smartpark_pay_unionpay as plugin
from smartpark_pay_unionpay.channel import UnionPayChannel
from smartpark_pay_unionpay.testing import UnionPayLoopback

PACKAGE = Path(plugin.__file__).resolve().parent

PLUGINS_TOML = """\
data_dir = "data"

[lot]
name = "示例停车场"

[plugins]
enabled = ["storage_sqlite", "pay_unionpay"]

[plugins.storage_sqlite]
path = "smartpark.db"

[plugins.pay_unionpay]
merchant_id = "{merchant_id}"
api_key = {{ env = "UNIONPAY_API_KEY" }}
provider_public_key_path = "unionpay_public.pem"
gateway = "{gateway}"
notify_url = "https://park.example.com/pay/unionpay/notify"
"""


class PluginTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls) -> None:
        cls.provider = UnionPayLoopback().start()
        cls.addClassCleanup(cls.provider.stop)

    def setUp(self) -> None:
        tmp = tempfile.TemporaryDirectory(prefix="unionpay-plugin-")
        self.addCleanup(tmp.cleanup)
        self.folder = Path(tmp.name)
        (self.folder / "data").mkdir(mode=0o700)
        (self.folder / "data" / "unionpay_public.pem").write_bytes(self.provider.public_key_pem)
        (self.folder / "plugins.toml").write_text(
            PLUGINS_TOML.format(merchant_id=self.provider.merchant_id, gateway=self.provider.base_url),
            encoding="utf-8")
        self.env = {**os.environ, **self.provider.environ(), "COLUMNS": "400", "NO_COLOR": "1"}
        self.env.pop("SMARTPARK_CONFIG", None)
        self.env.pop("SMARTPARK_DATA_KEY", None)

    def test_the_entry_point_names_this_package(self) -> None:
        (ep,) = [ep for ep in entry_points(group="smartpark") if ep.name == "pay_unionpay"]
        self.assertEqual(ep.value, "smartpark_pay_unionpay")
        spec = Plugins().available()[plugin.NAME]
        self.assertEqual((spec.kind, spec.provider, spec.config_model), ("payment", "pay_unionpay", plugin.Config))

    def test_smartpark_plugins_lists_it_enabled_with_the_secret_shown_by_name_only(self) -> None:
        result = subprocess.run([sys.executable, "-m", "smartpark", "plugins"], cwd=self.folder, env=self.env,
                                capture_output=True, text=True, timeout=120)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        line = next((row for row in result.stdout.splitlines() if "pay_unionpay" in row), "")
        self.assertIn("✓", line, result.stdout)
        self.assertIn("银联云闪付 demo", result.stdout)
        self.assertIn("${UNIONPAY_API_KEY}", result.stdout)
        self.assertNotIn(self.provider.api_key, result.stdout + result.stderr)

    def test_bootstrap_builds_it_as_a_payment_channel(self) -> None:
        os.environ.update(self.provider.environ())
        self.addCleanup(os.environ.pop, "UNIONPAY_API_KEY", None)
        with bootstrap(self.folder / "plugins.toml") as app:
            channel = app.payment_channels["pay_unionpay"]
            self.addCleanup(channel.release)
            self.assertIsInstance(channel, UnionPayChannel)
            self.assertIsInstance(channel, PaymentChannel)
            self.assertEqual(channel.name, "pay_unionpay")
            self.assertEqual(channel.notify_url, "https://park.example.com/pay/unionpay/notify")
            self.assertIs(channel.clock, app.clock)
            self.assertEqual(channel.query("UTnever0000").state, "unknown", "it reaches the provider")

    def test_a_secret_written_into_plugins_toml_stops_start_up(self) -> None:
        path = self.folder / "plugins.toml"
        path.write_text(path.read_text(encoding="utf-8").replace('{ env = "UNIONPAY_API_KEY" }', '"0123456789abcdef"'),
                        encoding="utf-8")
        with self.assertRaises(ConfigError) as caught:
            bootstrap(path).payment_channels  # noqa: B018 - building is the test
        self.assertIn("[plugins.pay_unionpay] api_key", caught.exception.en)
        self.assertNotIn("0123456789abcdef", str(caught.exception))

    def test_imports_only_the_public_surface_of_smartpark(self) -> None:
        allowed = {"smartpark.ports", "smartpark.core"}
        for path in sorted(PACKAGE.glob("*.py")):
            permitted = allowed | ({"smartpark.testing"} if path.name == "testing.py" else set())
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
                for name in names:
                    if name == "smartpark" or name.startswith("smartpark."):
                        with self.subTest(file=path.name, module=name):
                            self.assertTrue(any(name == a or name.startswith(a + ".") for a in permitted),
                                            f"{path.name} imports {name}")


if __name__ == "__main__":
    unittest.main()
