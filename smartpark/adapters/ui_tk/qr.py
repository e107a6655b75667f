"""QR codes for the lane (visitor registration link, payment link) as PNG bytes, with ``segno`` if installed.

``segno`` is pure Python; without it the booth shows the link as text and says how to get the QR code.
"""

from __future__ import annotations

import io

try:
    import segno  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the machine
    segno = None

MISSING = "未安装 segno，无法显示二维码（pip install segno）。请让访客在手机浏览器中打开：\n{url}"


def available() -> bool:
    return segno is not None


def qr_png(url: str, *, scale: int = 8, border: int = 3) -> bytes | None:
    """The QR code of ``url`` as PNG (dark on white, error correction M), or ``None`` without segno."""
    if segno is None:
        return None
    code = segno.make(url, error="m", micro=False)
    out = io.BytesIO()
    code.save(out, kind="png", scale=scale, border=border, dark="#000000", light="#ffffff")
    return out.getvalue()
