"""The server-rendered pages' shared parts: the HTML shell, a result card and reading a small form.

The phone pages (``/fee`` and receipts in :mod:`.pay_pages`, ``/owner`` in :mod:`.owner_pages`) are plain HTML
that works without JavaScript; they share the visitor page's look (``visitor.css`` + ``pay.css``).
"""

from __future__ import annotations

from collections.abc import Sequence
from urllib.parse import parse_qs

from fastapi import Request
from fastapi.responses import HTMLResponse

from .http import _PAGE_HEADERS, ApiError, _e

FORM_LIMIT = 4096  # bytes: these forms hold a plate, a phone number, a code or an amount


def page(*, lot_name: str, title: str, heading: str, body: str, asset_version: str, footer: str,
         styles: Sequence[str] = ("visitor.css", "pay.css"), script: bool = False, status: int = 200,
         headers: dict[str, str] | None = None) -> HTMLResponse:
    """One phone page: ``body`` (HTML already escaped by the caller) inside the lot's header and footer."""
    lot = _e(lot_name)
    links = "\n".join(f'<link rel="stylesheet" href="/static/{name}?v={asset_version}">' for name in styles)
    js = f'<script src="/static/pay.js?v={asset_version}"></script>' if script else ""
    text = f"""<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1, viewport-fit=cover">
<meta name="referrer" content="no-referrer">
<meta name="robots" content="noindex, nofollow">
<meta name="format-detection" content="telephone=no">
<title>{_e(title)} · {lot}</title>
<link rel="icon" href="data:,">
{links}
</head>
<body>
<main class="page" id="page">
  <header class="top"><p class="lot">{lot}</p><h1>{_e(heading)}</h1></header>
{body}
  <footer class="foot">{footer}</footer>
</main>
{js}
</body>
</html>"""
    return HTMLResponse(text, status_code=status, headers={**_PAGE_HEADERS, **(headers or {})})


def result(kind: str, title: str, message: str, extra: str = "", *, element_id: str = "result") -> str:
    """A result card (``kind``: ok / error / wait ...) with an escaped title and message; ``extra`` is HTML."""
    return (f'<section class="card result result-{kind}" id="{element_id}" aria-live="polite">'
            f'<div class="result-icon" aria-hidden="true"></div><h2 id="{element_id}-title">{_e(title)}</h2>'
            f'<p class="result-text" id="{element_id}-text">{_e(message)}</p>{extra}</section>')


async def form_fields(request: Request, limit: int = FORM_LIMIT) -> dict[str, str]:
    """A small urlencoded form's fields (first value of each); 413 in Chinese beyond ``limit`` bytes."""
    raw = await request.body()
    if len(raw) > limit:
        raise ApiError(413, "请求内容过大", "form too large")
    parsed = parse_qs(raw.decode("utf-8", "replace"), keep_blank_values=True)
    return {k: v[0] for k, v in parsed.items() if v}
