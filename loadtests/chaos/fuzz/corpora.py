"""Hand-written hostile values: odd keys, ids, paths, query values and malformed bodies."""

from __future__ import annotations

import codecs
import gzip
import random
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from loadtests.chaos.fuzz.model import JSON

if TYPE_CHECKING:
    pass

# --- the hostile corpora --------------------------------------------------------------------

PRINTABLE = "".join(chr(c) for c in range(0x20, 0x7F))
URLSAFE = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
ODD_CODEPOINTS = (
    *range(0x20, 0x7F),
    0x00,
    0x01,
    0x0A,
    0x7F,
    0x85,
    0xA0,
    0xE9,
    0x202E,
    0x2028,
    0xFEFF,
    0x1F511,
    0x43A,
)

BAD_KEYS: tuple[str | None, ...] = (
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer     ",
    "Basic <api_key>",
    "Token <api_key>",
    "<api_key>",
    "Bearer <api_key:chopped>",
    "Bearer <api_key:extended>",
    "Bearer <api_key:mangled>",
    "Bearer <api_key> <api_key>",
    "Bearer <admin_token>",
    "Bearer jl_",
    "Bearer jl_ключ",
    "Bearer null",
    "Bearer undefined",
    "Bearer%20<api_key>",
    "Bearer " + "x" * 9_000,
)
BAD_ADMIN: tuple[str | None, ...] = (
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer <api_key>",
    "Bearer <other_api_key>",
    "Bearer <admin_token:chopped>",
    "Bearer <admin_token:extended>",
    "Bearer <admin_token:mangled>",
    "Bearer <admin_token> <admin_token>",
    "Basic <admin_token>",
    "Token <admin_token>",
    "<admin_token>",
    "Bearer null",
    "Bearer ключ",
    "Bearer " + "x" * 9_000,
)
ODD_KEYS = (
    "",
    " ",
    "\t",
    "a",
    " a",
    "a ",
    "a b",
    "k" * 255,
    "k" * 256,
    "k" * 1_024,
    "k" * 9_000,
    "ключ",
    "🔑",
    "é",
    "key\x7f",
    "key\x01",
    "key\x00",
    "%00",
    "../../etc/passwd",
    "' OR '1'='1",
    "null",
    "KEY-case",
    "key-case",
    '"quoted"',
    "a,b",
    "a;b=c",
)
ODD_SEGMENTS = (
    "%20",
    "%2e%2e",
    "%2e",
    "%2F",
    "a%2Fb",
    "%00",
    "%0a",
    "%0d%0a",
    "%ff",
    "%C3%A9",
    "%E2%80%AE",
    "%F0%9F%94%91",
    "%25",
    "%zz",
    "*",
    "job_",
    "job_" + "0" * 32,
    "acct_",
    "x" * 2_000,
    "x" * 9_000,
    "%27%20OR%20%271%27%3D%271",
    "1%3B%20DROP%20TABLE%20jobs",
    "null",
    "undefined",
    "-1",
    "0",
    "9" * 30,
    "%7Bid%7D",
)
ODD_QUERY_VALUES = (
    "",
    "0",
    "-1",
    "1.5",
    "1e3",
    "+5",
    " 5",
    "0x10",
    "99999999999999999999",
    "0" * 4_400 + "1",
    "9" * 5_000,
    "١٢",
    "\x00",
    "abc",
    "TRUE",
    "null",
    "%zz",
    "queued,failed",
)
ODD_PATHS = (
    "/v1/jobs/",
    "/v1//jobs",
    "/V1/JOBS",
    "/v1/jobs/x/y/z",
    "/../../etc/passwd",
    "/v1/jobs/%2e%2e/%2e%2e/metrics",
    "/v1/admin/dead-letters/",
    "/v1/admin/%2e%2e/admin/dead-letters",
    "//",
    "/%00",
    "/v1/jobs?limit=1&limit=999999",
    "/v1/jobs?" + "a=1&" * 1_500,
    "/" + "a" * 10_000,
)


def valid_integer(schema: Mapping[str, Any], segment: str) -> bool:
    """Is ``segment`` a value an integer path parameter accepts (not an odd one)?"""
    if schema.get("type") != "integer" or not segment.isdigit() or segment != str(int(segment)):
        return False
    return int(schema.get("minimum", 0)) <= int(segment) <= int(schema.get("maximum", 2**31))


def derived_ids(ids: Sequence[str]) -> Iterator[str]:
    """Near misses of a real id: case, whitespace, a slash, cut short, made longer."""
    for real in ids[:1]:
        for near in (real.upper(), real + " ", " " + real, real + "\n", real[:-1], real + "0"):
            yield quote(near, safe="")
        yield quote(real, safe="") + "%2F"
        yield quote(real, safe="") + "%00"


def random_key(rng: random.Random) -> str:
    length = rng.choice((1, 2, 16, 64, 254, 255, 256, 300))
    alphabet = rng.choice((URLSAFE, PRINTABLE, PRINTABLE + "éключ🔑"))
    return "".join(rng.choice(alphabet) for _ in range(length))


def _gzip_bomb() -> bytes:
    return gzip.compress(b"\0" * (16 << 20), compresslevel=9, mtime=0)


def malformed_bodies(good: bytes) -> Iterator[tuple[bytes, str, list[tuple[str, str]]]]:
    """(body, content type, extra headers) of bodies that are not acceptable JSON requests."""
    plain: list[bytes] = [
        b"",
        b"{",
        b"}",
        b'{"a":',
        good[: len(good) // 2],
        good + b"garbage",
        good + b" " + good,
        b"[]",
        b"null",
        b"0",
        b'"text"',
        b"true",
        b"{'model': 'x'}",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": -Infinity}',
        b'{"a": 1e999}',
        b'{"a": ' + b"9" * 5_000 + b"}",
        b'{"a": "\\ud800"}',
        b'{"a": "\xff\xfe"}',
        codecs.BOM_UTF8 + good,
        b"\x00" * 16,
        b"[" * 50_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'{"a": 1, "a": 2}',
        good.replace(b":", b"=", 1),
    ]
    for body in plain:
        yield body, JSON, []
    for content_type in ("text/plain", "", "application/x-www-form-urlencoded", "a/b/c"):
        yield good, content_type, []
    yield good.decode().encode("utf-16"), JSON + "; charset=utf-16", []
    yield good, JSON + "; charset=ebcdic", []
    for encoding in ("gzip", "deflate", "br", "zstd", "x-unknown"):
        yield b"not compressed", JSON, [("Content-Encoding", encoding)]
    yield _gzip_bomb(), JSON, [("Content-Encoding", "gzip")]


def mutate_bytes(good: bytes, rng: random.Random) -> bytes:
    data = bytearray(good)
    for _ in range(rng.randint(1, 3)):
        if not data:
            break
        at = rng.randrange(len(data))
        action = rng.randrange(4)
        if action == 0:
            del data[at:]
        elif action == 1:
            data[at] = rng.randrange(256)
        elif action == 2:
            data.insert(at, rng.choice(b'{}[]",:\\\x00\xff'))
        else:
            del data[at]
    return bytes(data)
