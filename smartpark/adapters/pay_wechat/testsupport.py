"""Test support of the ``pay_wechat`` adapter: the ONE place that points the SDK at another gateway.

``wechatpayv3`` 2.0.4 hard-codes ``https://api.mch.weixin.qq.com`` in ``Core.__init__`` (``core.py`` line 23,
``self._gate_way = ...``) and offers no parameter for it. Loopback tests (``smartpark.testing.wechatpay_sandbox``)
reach the SDK by setting the instance's ``_core._gate_way`` after construction -- here and nowhere else.
Production code paths never call this; the ``gateway`` setting of the plugin (documented as for tests only)
is the only caller in the adapter.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

__all__ = ["use_gateway"]


def use_gateway(sdk: Any, gateway: str) -> None:
    """Send every request of the ``wechatpayv3.WeChatPay`` instance ``sdk`` to ``gateway`` (``http://127.0.0.1:PORT``).

    Only the base URL changes: the SDK still signs every request with the merchant key and still verifies every
    2xx reply against the platform public key, so a loopback server must speak the real protocol.
    """
    parts = urlsplit(gateway)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
        raise ValueError(f"gateway must be a base URL such as http://127.0.0.1:8000, not {gateway!r}")
    core = getattr(sdk, "_core", None)
    if core is None or not hasattr(core, "_gate_way"):
        raise TypeError("not a wechatpayv3.WeChatPay instance (no _core._gate_way): has the SDK changed?")
    log.warning("WeChat Pay requests go to the test gateway %s, not to WeChat Pay", gateway)
    core._gate_way = gateway.rstrip("/")
