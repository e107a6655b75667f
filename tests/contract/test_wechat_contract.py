"""pay_wechat against the PaymentChannel contract: the real ``wechatpayv3`` SDK talking to the loopback sandbox.

Every request the SDK makes is signed with the sandbox's generated merchant key and checked by the sandbox;
every reply is signed with the sandbox's platform key and checked by the SDK. ``pay()`` makes the sandbox
play the payer and returns the encrypted, signed ``TRANSACTION.SUCCESS`` notification WeChat would POST.
The contract's default ``tamper`` (one body byte flipped) and ``unsigned`` (every header dropped) apply.
"""

from __future__ import annotations

import unittest
from types import SimpleNamespace
from typing import Any

from smartpark.adapters import pay_wechat
from smartpark.adapters.pay_wechat.channel import WeChatPayChannel
from smartpark.plugins import Plugins
from smartpark.testing.contracts.payment import PaymentChannelContract
from smartpark.testing.wechatpay_sandbox import WeChatPaySandbox


class TestWeChatPayChannelContract(PaymentChannelContract, unittest.TestCase):
    sandbox: WeChatPaySandbox
    _channel: WeChatPayChannel | None = None

    @classmethod
    def setUpClass(cls) -> None:
        super().setUpClass()
        cls.sandbox = WeChatPaySandbox().start()
        cls.addClassCleanup(cls.sandbox.stop)
        # built the way the service builds it: the plugin's registration, settings model and factory
        cls.plugins = Plugins(load_entry_points=False, extra=(pay_wechat,))

    def make_channel(self) -> Any:
        # one channel per class: it keeps no state between calls, and building one costs ~50 ms (the SDK
        # validates the RSA private key on load)
        cls = type(self)
        if getattr(cls, "_channel", None) is None:
            settings = self.sandbox.plugin_settings("https://smartpark.invalid/pay/wechat/notify")
            config = self.plugins.validate_settings("pay_wechat", settings)
            context = SimpleNamespace(data_dir=self.sandbox.key_dir, clock=None)
            cls._channel = self.plugins.build("pay_wechat", config, context)
        self.assertIsInstance(cls._channel, WeChatPayChannel)
        return cls._channel

    def pay(self, out_trade_no: str) -> tuple[dict[str, str], bytes]:
        return self.sandbox.pay(out_trade_no)


if __name__ == "__main__":
    unittest.main()
