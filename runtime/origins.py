"""Where a vendor's outputs may be fetched from (pure).

A vendor names its output files by URL, in a status it answered or a webhook it signed.
jobline fetches only from the hosts configured for that vendor (``vendors.X.output_hosts``:
its CDN by default): a signed webhook is only as trustworthy as the secret behind it, and
a URL naming ``http://127.0.0.1:…/secret`` or a cloud metadata address must never make
jobline fetch it (server-side request forgery).

An entry is a host name (``replicate.delivery``), a wildcard for its subdomains
(``*.fal.media``: ``v3.fal.media``, not ``fal.media`` itself), an IP address
(``127.0.0.1``) or a network (``10.0.0.0/8``). A URL whose host is an IP address in a
loopback, private, link-local, multicast, reserved or unspecified range is refused unless
an entry names that address or a network holding it; ``localhost`` only if named. Only
``http`` and ``https`` URLs with a host are fetched. (A host *name* is matched, not what
it resolves to.)
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Sequence
from urllib.parse import urlsplit

__all__ = ["refusal_of"]

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def refusal_of(url: str, hosts: Sequence[str]) -> str | None:
    """Why ``url`` may not be fetched for a vendor allowing ``hosts``; None if it may."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return "not a URL"
    if parts.scheme not in ("http", "https") or not host:
        return f"not an http(s) URL with a host: {url[:80]!r}"
    return _host_refusal(host, tuple(hosts))


@functools.lru_cache(maxsize=1024)  # a vendor's outputs come from a few hosts
def _host_refusal(host: str, hosts: tuple[str, ...]) -> str | None:
    """Why a URL on ``host`` may not be fetched for a vendor allowing ``hosts``."""
    address = _address(host)
    if address is not None:
        if any(_holds(entry, address) for entry in hosts):
            return None
        if _internal(address):
            return f"{host} is an internal address, not listed in output_hosts"
        return f"{host} is not one of the vendor's output hosts"
    if any(_matches(entry, host) for entry in hosts):
        return None
    return f"{host} is not one of the vendor's output hosts ({', '.join(hosts) or 'none'})"


def _address(host: str) -> _Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def _internal(address: _Address) -> bool:
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _holds(entry: str, address: _Address) -> bool:
    try:
        return address in ipaddress.ip_network(entry, strict=False)
    except ValueError:
        return False


def _matches(entry: str, host: str) -> bool:
    if entry.startswith("*."):
        return host.endswith(entry[1:]) and len(host) > len(entry) - 1
    return host == entry
