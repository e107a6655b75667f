"""Screenshots of the booth window as PNG, with the standard library only.

X11: ``xwd`` (Debian package ``x11-apps``) dumps the screen in XWD format; :func:`xwd_to_png` converts it
(TrueColor, 24/32 bits per pixel) and crops it to the window. No ImageMagick or Pillow is needed.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

_HEADER = struct.Struct(">25I")


class ScreenshotError(RuntimeError):
    pass


def capture_x11(display: str, box: tuple[int, int, int, int], path: Path, *, timeout: float = 20.0) -> Path:
    """Write the screen area ``box`` = (x, y, width, height) of ``display`` to ``path`` as PNG."""
    xwd = shutil.which("xwd")
    if xwd is None:
        raise ScreenshotError("xwd 未安装（Debian 软件包 x11-apps）/ xwd is missing: apt-get install x11-apps")
    out = subprocess.run([xwd, "-root", "-silent", "-display", display], capture_output=True, timeout=timeout,
                         check=False)
    if out.returncode != 0:
        raise ScreenshotError(f"xwd failed: {out.stderr.decode(errors='replace').strip()}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(xwd_to_png(out.stdout, box))
    return path


def xwd_to_png(data: bytes, box: tuple[int, int, int, int] | None = None) -> bytes:
    """Convert an XWD (X Window Dump, version 7, ZPixmap, TrueColor) image to PNG, optionally cropped."""
    if len(data) < _HEADER.size:
        raise ScreenshotError("not an XWD image")
    (header_size, version, fmt, _depth, width, height, _xoff, byte_order, _unit, _bit_order, _pad, bpp,
     bytes_per_line, _visual, red_mask, green_mask, blue_mask, _bits_rgb, _cmap_entries, ncolors,
     *_rest) = _HEADER.unpack_from(data)
    if version != 7 or fmt != 2 or bpp not in (24, 32):
        raise ScreenshotError(f"unsupported XWD image (version {version}, format {fmt}, {bpp} bits per pixel)")
    start = header_size + ncolors * 12
    x, y, w, h = box if box is not None else (0, 0, width, height)
    x, y = max(0, x), max(0, y)
    w, h = min(w, width - x), min(h, height - y)
    step = bpp // 8
    order = "little" if byte_order == 0 else "big"
    fast = (step == 4 and order == "little" and (red_mask, green_mask, blue_mask) == (0xFF0000, 0xFF00, 0xFF))
    rows = []
    for row in range(y, y + h):
        off = start + row * bytes_per_line + x * step
        line = data[off:off + w * step]
        rgb = bytearray(w * 3)
        if fast:  # B, G, R, X in memory
            rgb[0::3], rgb[1::3], rgb[2::3] = line[2::4], line[1::4], line[0::4]
        else:
            for i in range(w):
                px = int.from_bytes(line[i * step:(i + 1) * step], order)
                rgb[i * 3:i * 3 + 3] = bytes((_channel(px, red_mask), _channel(px, green_mask),
                                              _channel(px, blue_mask)))
        rows.append(b"\x00" + bytes(rgb))
    return _png(w, h, b"".join(rows))


def _channel(px: int, mask: int) -> int:
    if not mask:
        return 0
    shift = (mask & -mask).bit_length() - 1
    value = (px & mask) >> shift
    bits = (mask >> shift).bit_length()
    return value * 255 // ((1 << bits) - 1)


def _png(width: int, height: int, raw: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")
