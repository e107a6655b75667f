"""pay_alipay against the PaymentChannel contract: the real python-alipay-sdk talking to the loopback sandbox.

The channel is built through the plugin's factory from ``[plugins.pay_alipay]`` settings, as bootstrap does.
Every request it sends is RSA2-signed by the SDK and verified by the sandbox with the app public key; every reply
and notify is signed by the sandbox's "Alipay" key and verified by the SDK. Alipay signs its notify inside the
form body, so ``unsigned`` drops the ``sign`` field rather than headers.
"""

from __future__ import annotations

import os
import tempfile
import unittest
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

from smartpark.adapters import pay_alipay
from smartpark.config import AppConfig
from smartpark.core.clock import SystemClock
from smartpark.testing.alipay_sandbox import AlipaySandbox
from smartpark.testing.contracts.payment import PaymentChannelContract


def loopback_without_proxy() -> mock._patch[Any]:
    """The SDK's urlopen honours HTTP(S)_PROXY; keep loopback traffic away from any proxy."""
    no_proxy = ",".join(filter(None, [os.environ.get("NO_PROXY", ""), "127.0.0.1", "localhost"]))
    return mock.patch.dict(os.environ, {"NO_PROXY": no_proxy, "no_proxy": no_proxy})


def build_channel(sandbox: AlipaySandbox, data_dir: str, **overrides: Any) -> Any:
    config = pay_alipay.Config.model_validate(sandbox.adapter_settings(**overrides))
    context = SimpleNamespace(data_dir=Path(data_dir), clock=SystemClock(), config=AppConfig(), keyring=None)
    return pay_alipay._factory(config, context)


class TestAlipayContract(PaymentChannelContract, unittest.TestCase):
    sandbox: AlipaySandbox

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        patcher = loopback_without_proxy()
        patcher.start()
        cls.addClassCleanup(patcher.stop)
        cls.sandbox = AlipaySandbox().start()
        cls.addClassCleanup(cls.sandbox.stop)
        cls.data_dir = tempfile.mkdtemp(prefix="alipay-contract-")

    def make_channel(self) -> Any:
        return build_channel(self.sandbox, self.data_dir)

    def pay(self, out_trade_no: str) -> tuple[dict[str, str], bytes]:
        return self.sandbox.pay(out_trade_no)

    def unsigned(self, headers: Any, body: bytes) -> tuple[dict[str, str], bytes]:
        return self.sandbox.strip_sign(headers, body)


if __name__ == "__main__":
    unittest.main()
