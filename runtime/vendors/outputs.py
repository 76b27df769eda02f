"""Every output of a vendor's result, found under any key; ``data:`` URIs decoded.

Pure functions over parsed JSON. The rules, from the vendors' documentation:

- a file is a string that is an ``http(s)`` URL or a ``data:`` URI, or an object with
  such a ``url`` (fal's ``{url, content_type, file_name, file_size}``); it is found at
  any depth, under any key (fal: ``images`` lists, ``video``, ``audio``, a model's own
  keys; replicate: the ``output`` string, list or object);
- a result that also holds values that are no files (a seed, a caption, scores) is kept
  whole as one JSON output as well;
- replicate's language models answer a list of strings, which its documentation says to
  concatenate: one text output; a plain string that is no URL is one text output.

``data:`` URIs follow RFC 2397: ``data:[<media type>][;base64],<data>``; without a
media type it is ``text/plain;charset=US-ASCII``.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

from runtime.vendors.base import Output

JSON_TYPE = "application/json"
TEXT_TYPE = "text/plain; charset=utf-8"


def _is_file_ref(value: str) -> bool:
    return value.startswith(("https://", "http://", "data:"))


def _file(ref: str, key: str | None, meta: dict[str, Any] | None = None) -> Output:
    meta = meta or {}
    content_type = meta.get("content_type")
    if not isinstance(content_type, str) or not content_type:
        content_type = data_uri_type(ref) if ref.startswith("data:") else None
    name, size = meta.get("file_name"), meta.get("file_size")
    return Output(
        "data" if ref.startswith("data:") else "url",
        ref,
        content_type,
        key,
        name if isinstance(name, str) else None,
        size if isinstance(size, int) and not isinstance(size, bool) and size >= 0 else None,
    )


def find_outputs(result: Any, key: str | None = None) -> tuple[Output, ...]:
    """Every output of a result: its files (at any depth), then, if it holds other values,
    the whole result as JSON; a string or a list of strings that are no files is text."""
    if isinstance(result, str):
        if _is_file_ref(result):
            return (_file(result, key),)
        return (Output("text", result, TEXT_TYPE, key),)
    if (
        isinstance(result, list)
        and result
        and all(isinstance(item, str) for item in result)
        and not any(_is_file_ref(item) for item in result)
    ):
        return (Output("text", "".join(result), TEXT_TYPE, key),)
    files: list[Output] = []
    has_values = False

    def walk(value: Any, where: str | None) -> None:
        nonlocal has_values
        if isinstance(value, str):
            if _is_file_ref(value):
                files.append(_file(value, where))
            else:
                has_values = True
        elif isinstance(value, dict):
            url = value.get("url")
            if isinstance(url, str) and _is_file_ref(url):
                files.append(_file(url, where, value))
                return
            for name, item in value.items():
                walk(item, f"{where}.{name}" if where else str(name))
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{where or ''}[{i}]")
        elif value is not None:
            has_values = True  # a number or a boolean

    walk(result, key)
    if has_values:
        text = json.dumps(result, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        files.append(Output("json", text, JSON_TYPE, key))
    return tuple(files)


def data_uri_type(uri: str) -> str:
    """The media type a ``data:`` URI declares (RFC 2397's default if none)."""
    end = uri.find(",", 5)  # the header only: the data may be megabytes
    header = uri[5:] if end < 0 else uri[5:end]
    media = header.removesuffix(";base64").strip()
    return media or "text/plain;charset=US-ASCII"


def decode_data_uri(uri: str) -> tuple[str, bytes]:
    """(media type, bytes) of a ``data:`` URI; ``ValueError`` if it is not one."""
    end = uri.find(",", 5) if uri.startswith("data:") else -1
    if end < 0:
        raise ValueError("not a data: URI (data:[<media type>][;base64],<data>)")
    header, payload = uri[5:end], uri[end + 1 :]
    if header.endswith(";base64"):
        try:  # the usual payload, one run of padded base64: decoded as it is, no copies
            data = binascii.a2b_base64(payload, strict_mode=True)
        except ValueError:  # escapes, line breaks, no padding, or not base64 at all
            data = _lenient_base64(payload)
    else:
        data = unquote_to_bytes(payload)
    return data_uri_type(uri), data


def _lenient_base64(payload: str) -> bytes:
    """A data URI's base64 with its percent escapes decoded, whitespace dropped and any
    missing padding added; ``ValueError`` if it is not base64 even then."""
    # Whitespace dropped as re's \s+ would drop it (the same characters: str.isspace),
    # ~18x faster on a 400 kB payload.
    text = "".join(unquote(payload).split())
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"data: URI with invalid base64: {exc}") from None
