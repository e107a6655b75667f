"""Receipts (:class:`smartpark.core.receipts.Receipt`) as PNG and PDF, each with a QR code of the verify link.

* :func:`render_png` draws with Pillow and an installed CJK font (Noto Sans CJK SC from ``fonts-noto-cjk``, found
  by ``fc-match`` or at the usual paths). No CJK font: :class:`FontMissing` with the package to install. Set
  ``SMARTPARK_CJK_FONT`` to a font file to choose one.
* :func:`render_pdf` uses reportlab's built-in CID font ``STSong-Light`` (the PDF viewer supplies the glyphs), so
  no font file is needed. Text that is plain ASCII (amounts, numbers, the verification code) is set in Helvetica,
  which keeps it extractable as ordinary text.
* :func:`qr_svg` is the same QR code for an HTML page (inline SVG, no image request).

Both layouts read the rows from :meth:`Receipt.lines`, so the page, the picture, the PDF and the booth show the
same receipt.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import segno

from smartpark.core.errors import ConfigError

__all__ = ["FontMissing", "cjk_font", "qr_svg", "render_pdf", "render_png"]

FONT_ENV = "SMARTPARK_CJK_FONT"
_KNOWN_FONTS = (
    ("/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc", 2),  # Debian/Ubuntu fonts-noto-cjk (index 2 = SC)
    ("/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc", 2),  # Fedora/Arch
    ("/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc", 2),
    ("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc", 0),
    ("/System/Library/Fonts/PingFang.ttc", 0),
    ("C:/Windows/Fonts/msyh.ttc", 0),
)
PNG_WIDTH = 640
_INK, _MUTED, _ACCENT, _RULE = (20, 24, 32), (96, 104, 116), (18, 120, 72), (205, 210, 218)


class FontMissing(ConfigError):
    """No CJK font to draw a receipt picture with."""


@functools.cache
def cjk_font() -> tuple[str, int]:
    """``(path, face index)`` of a font with Simplified Chinese glyphs; :class:`FontMissing` when there is none."""
    chosen = os.environ.get(FONT_ENV, "").strip()
    if chosen:
        if not Path(chosen).is_file():
            raise FontMissing(f"环境变量 {FONT_ENV} 指定的字体文件不存在：{chosen}", f"{FONT_ENV}={chosen} is not a file")
        return chosen, 0
    fc = shutil.which("fc-match")
    if fc:
        try:
            out = subprocess.run([fc, "-f", "%{file}|%{index}|%{lang}", "sans-serif:lang=zh-cn"], capture_output=True,
                                 text=True, timeout=10, check=False).stdout
            path, _, rest = out.partition("|")
            index, _, langs = rest.partition("|")
            if path and Path(path).is_file() and "zh-cn" in langs.split("|"):
                return path, int(index or 0)
        except (OSError, ValueError, subprocess.SubprocessError):
            pass
    for path, index in _KNOWN_FONTS:
        if Path(path).is_file():
            return path, index
    raise FontMissing("找不到中文字体，无法生成收据图片；请安装 fonts-noto-cjk",
                      "no CJK font found to draw the receipt: install fonts-noto-cjk (Debian/Ubuntu: "
                      f"apt-get install fonts-noto-cjk) or set {FONT_ENV} to a .ttf/.ttc/.otf file")


def _qr(receipt: Any) -> segno.QRCode:
    return segno.make(receipt.verify_url, error="m", micro=False)


def qr_svg(url: str, *, scale: int = 5, title: str = "二维码") -> str:
    """An inline ``<svg>`` QR code of ``url`` (no XML declaration), for HTML pages."""
    out = io.BytesIO()
    segno.make(url, error="m", micro=False).save(out, kind="svg", scale=scale, border=2, xmldecl=False,
                                                 svgns=True, title=title, dark="#000", light="#fff")
    return out.getvalue().decode("utf-8")


# == PNG =====================================================================================================
def render_png(receipt: Any, *, width: int = PNG_WIDTH) -> bytes:
    """The receipt as a PNG picture: title, the rows, the QR code of the verify link."""
    from PIL import Image, ImageDraw, ImageFont

    path, index = cjk_font()

    def font(size: int) -> Any:
        return ImageFont.truetype(path, size, index=index)

    title_f, head_f, body_f, small_f = font(30), font(24), font(22), font(17)
    rows = receipt.lines()
    margin, row_h = 36, 40
    qr_buf = io.BytesIO()
    _qr(receipt).save(qr_buf, kind="png", scale=5, border=2)
    qr_img = Image.open(io.BytesIO(qr_buf.getvalue())).convert("RGB")
    height = margin + 48 + 40 + 20 + row_h * len(rows) + 24 + qr_img.height + 70
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    y = margin
    draw.text((width // 2, y), receipt.lot_name, font=title_f, fill=_INK, anchor="mt")
    y += 48
    draw.text((width // 2, y), "停车缴费电子凭证", font=head_f, fill=_ACCENT, anchor="mt")
    y += 40
    draw.line((margin, y, width - margin, y), fill=_RULE, width=2)
    y += 20
    for label, value in rows:
        draw.text((margin, y), label, font=body_f, fill=_MUTED)
        draw.text((width - margin, y), value, font=body_f, fill=_INK, anchor="ra")
        y += row_h
    y += 4
    draw.line((margin, y, width - margin, y), fill=_RULE, width=2)
    y += 20
    img.paste(qr_img, ((width - qr_img.width) // 2, y))
    y += qr_img.height + 12
    draw.text((width // 2, y), "扫码或访问本停车场网站“验证凭证”页面核验真伪", font=small_f, fill=_MUTED, anchor="mt")
    out = io.BytesIO()
    img.save(out, format="PNG", optimize=True)
    return out.getvalue()


# == PDF =====================================================================================================
_CID_FONT = "STSong-Light"


@functools.cache
def _register_cid_font() -> str:
    from reportlab.pdfbase import pdfmetrics
    from reportlab.pdfbase.cidfonts import UnicodeCIDFont

    pdfmetrics.registerFont(UnicodeCIDFont(_CID_FONT))
    return _CID_FONT


def render_pdf(receipt: Any) -> bytes:
    """The receipt as a one-page PDF (A6 portrait), with the verify link's QR code drawn as vectors."""
    from reportlab.lib.pagesizes import A6
    from reportlab.lib.units import mm
    from reportlab.pdfgen import canvas

    cjk = _register_cid_font()
    out = io.BytesIO()
    width, height = A6
    c = canvas.Canvas(out, pagesize=A6, pageCompression=1, invariant=1)
    c.setTitle(f"停车缴费电子凭证 {receipt.receipt_no}")
    c.setAuthor(receipt.lot_name)
    c.setSubject(f"verification code {receipt.code}")
    margin = 8 * mm
    y = height - 12 * mm

    def text(x: float, y: float, value: str, size: float, *, right: bool = False, centre: bool = False,
             colour: tuple[float, float, float] = (0.08, 0.09, 0.12)) -> None:
        name = "Helvetica" if _latin(value) else cjk
        c.setFont(name, size)
        c.setFillColorRGB(*colour)
        if centre:
            c.drawCentredString(x, y, value)
        elif right:
            c.drawRightString(x, y, value)
        else:
            c.drawString(x, y, value)

    text(width / 2, y, receipt.lot_name, 13, centre=True)
    y -= 7 * mm
    text(width / 2, y, "停车缴费电子凭证", 11, centre=True, colour=(0.07, 0.47, 0.28))
    y -= 4 * mm
    c.setStrokeColorRGB(0.8, 0.82, 0.85)
    c.line(margin, y, width - margin, y)
    y -= 6 * mm
    for label, value in receipt.lines():
        text(margin, y, label, 8.5, colour=(0.38, 0.41, 0.45))
        size = 8.5 if c.stringWidth(value, "Helvetica" if _latin(value) else cjk, 8.5) < width - 2 * margin - 60 \
            else 6.5
        text(width - margin, y, value, size, right=True)
        y -= 5.6 * mm
    c.line(margin, y + 2 * mm, width - margin, y + 2 * mm)
    # the QR code as filled squares (crisp at any zoom, no image)
    matrix = [list(row) for row in _qr(receipt).matrix]
    module = 1.0 * mm
    side = len(matrix) * module
    left, top = (width - side) / 2, y - 1 * mm
    c.setFillColorRGB(0, 0, 0)
    for r, row in enumerate(matrix):
        for col, dark in enumerate(row):
            if dark:
                c.rect(left + col * module, top - (r + 1) * module, module, module, stroke=0, fill=1)
    y = top - side - 4 * mm
    text(width / 2, y, "扫码核验真伪", 7, centre=True, colour=(0.38, 0.41, 0.45))
    c.showPage()
    c.save()
    return out.getvalue()


def _latin(value: str) -> bool:
    """Text Helvetica can set (WinAnsi: ASCII plus ¥ and a few signs), kept extractable as plain text."""
    try:
        value.encode("cp1252")
    except UnicodeEncodeError:
        return False
    return True
