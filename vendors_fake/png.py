"""Real output bytes: a small valid PNG derived from a task's input.

The fakes serve ``expected_png(input)`` at a task's output URL, so a test can check that
the result jobline stored is the right one for the job.
"""

from __future__ import annotations

import hashlib
import json
import struct
import zlib
from typing import Any

SIDE = 8  # pixels; the image is SIDE x SIDE, 8-bit RGB
# An input's canonical JSON: json.dumps(input, sort_keys=True, separators=(",", ":"),
# ensure_ascii=False), with one encoder for all (json.dumps makes one at each call).
CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def expected_png(input: dict[str, Any]) -> bytes:
    """The PNG a fake vendor produces for ``input``: pixels from a hash of its JSON."""
    return png_of_canonical(CANONICAL.encode(input))


def png_of_canonical(canonical: str) -> bytes:
    """``expected_png`` of the input whose canonical JSON (sorted keys, no spaces, not
    ASCII-escaped) is ``canonical``."""
    pixels = hashlib.shake_256(canonical.encode()).digest(SIDE * SIDE * 3)
    return encode_png(SIDE, SIDE, pixels)


def encode_png(width: int, height: int, rgb: bytes) -> bytes:
    """Encode raw 8-bit RGB rows (``width * height * 3`` bytes) as a PNG."""
    row = width * 3
    if len(rgb) != row * height:
        raise ValueError(f"expected {row * height} bytes of RGB, got {len(rgb)}")
    # Each scanline starts with its filter type; 0 = none.
    raw = b"".join(b"\x00" + rgb[y * row : (y + 1) * row] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit, truecolour
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 9))
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)
