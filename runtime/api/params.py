"""Query parameters, parsed strictly: a bad one is a 400 naming it, never a 500."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from runtime.api.errors import bad_request, echo


def only_params(request: web.Request, *known: str) -> Mapping[str, str]:
    """The request's query, once every parameter in it is one of ``known`` and given at
    most once: a parameter a list endpoint does not take (or a repeated one) is a 400
    naming it, never silently ignored."""
    query = request.query
    seen: set[str] = set()
    for name, _ in query.items():  # a multidict: a repeated name comes again
        if name not in known:
            allowed = ", ".join(known) or "none"
            raise bad_request(f"unknown query parameter {echo(name)} (this one takes: {allowed})")
        if name in seen:
            raise bad_request(f"query parameter {name} is given more than once")
        seen.add(name)
    return query


def int_param(query: Mapping[str, str], name: str, default: int, maximum: int) -> int:
    raw = query.get(name)
    if raw is None:
        return default
    digits = raw.lstrip("0") or "0"
    # int() refuses more than 4300 digits (ValueError): parse only what can be in range.
    if (
        not raw.isascii()
        or not raw.isdigit()
        or len(digits) > len(str(maximum))
        or not 1 <= int(digits) <= maximum
    ):
        raise bad_request(f"{name} must be an integer from 1 to {maximum}")
    return int(digits)


def bool_param(query: Mapping[str, str], name: str) -> bool:
    raw = query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise bad_request(f"{name} must be true or false")
    return raw in ("true", "1")
