"""The plugin author kit, proved: the example third-party channel in ``examples/smartpark-pay-unionpay`` is
installed as its own distribution, found through its one entry point, and passes the same PaymentChannel
contract as pay_wechat, pay_alipay and the fake.

``scripts/_venv.sh test`` (so ``scripts/test`` and CI) installs it; by hand:
``pip install -e examples/smartpark-pay-unionpay``. The package's own tests (error kinds, refunds, the notify
route, ``smartpark plugins``, bootstrap) run from its folder; ``test_the_example_s_own_suite_passes`` runs them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import unittest
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

from smartpark.plugins import Plugins
from smartpark.ports.payment import PaymentChannel
from smartpark.testing.contracts.payment import PaymentChannelContract

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "smartpark-pay-unionpay"
HOW = f"install it: pip install -e {EXAMPLE.relative_to(ROOT)} (scripts/_venv.sh test does it for CI)"

try:
    from smartpark_pay_unionpay.testing import UnionPayLoopback
except ImportError as e:  # reported by the tests below (with the fix), not as a collection error
    UnionPayLoopback, MISSING = None, f"the example plugin is not installed ({e}); {HOW}"
else:
    MISSING = ""


class ExampleInstalledTests(unittest.TestCase):
    def test_the_example_is_installed_as_its_own_distribution_with_one_entry_point(self) -> None:
        self.assertFalse(MISSING, MISSING)
        try:
            dist = distribution("smartpark-pay-unionpay")
        except PackageNotFoundError:
            self.fail(f"no distribution smartpark-pay-unionpay; {HOW}")
        points = [ep for ep in dist.entry_points if ep.group == "smartpark"]
        self.assertEqual([(ep.name, ep.value) for ep in points], [("pay_unionpay", "smartpark_pay_unionpay")])

    def test_smartpark_discovers_it_as_a_payment_plugin(self) -> None:
        self.assertFalse(MISSING, MISSING)
        plugins = Plugins()
        self.assertNotIn("pay_unionpay", plugins.broken)
        self.assertIn("pay_unionpay", plugins.available(), f"installed metadata is stale; {HOW}")
        self.assertEqual(plugins.available()["pay_unionpay"].kind, "payment")

    def test_the_example_s_own_suite_passes(self) -> None:
        """Its tests (run from its own folder, with its own pytest settings): error kinds, refunds, closed and
        ignored notifications, the notify route, settings, ``smartpark plugins``, bootstrap, the import rule."""
        self.assertFalse(MISSING, MISSING)
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                                cwd=EXAMPLE, capture_output=True, text=True, timeout=300)
        self.assertEqual(result.returncode, 0, result.stdout[-4000:] + result.stderr[-2000:])
        self.assertIn(" passed", result.stdout)
        self.assertNotIn("skipped", result.stdout)


class TestExamplePluginContract(PaymentChannelContract, unittest.TestCase):
    """Built exactly as bootstrap builds it: entry point -> settings model ({ env = ... } secret) -> factory."""

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        if UnionPayLoopback is None:
            raise AssertionError(MISSING)  # every contract test errors with the fix, never a silent skip
        cls.provider = UnionPayLoopback().start()
        cls.addClassCleanup(cls.provider.stop)
        plugins = Plugins()
        with mock.patch.dict(os.environ, cls.provider.environ()):
            config = plugins.validate_settings("pay_unionpay", cls.provider.plugin_settings())
        context = SimpleNamespace(data_dir=cls.provider.key_dir, clock=None)
        cls.built = plugins.build("pay_unionpay", config, context)
        cls.addClassCleanup(cls.built.release)

    def make_channel(self) -> Any:
        self.assertIsInstance(self.built, PaymentChannel)
        return self.built

    def pay(self, out_trade_no: str) -> tuple[dict[str, str], bytes]:
        return self.provider.pay(out_trade_no)


if __name__ == "__main__":
    unittest.main()
