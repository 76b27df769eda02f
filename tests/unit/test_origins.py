"""Outputs are fetched only from the vendor's configured hosts (issue 13, case 12)."""

from __future__ import annotations

import pytest

from runtime.config import DEFAULT_OUTPUT_HOSTS
from runtime.origins import refusal_of

FAL = DEFAULT_OUTPUT_HOSTS["fal"]
REPLICATE = DEFAULT_OUTPUT_HOSTS["replicate"]


@pytest.mark.parametrize(
    ("url", "hosts"),
    [
        ("https://v3.fal.media/files/rabbit/abc.png", FAL),
        ("https://fal.media/files/abc.png", FAL),
        ("https://replicate.delivery/pbxt/abc/out-0.png", REPLICATE),
        ("https://pbxt.replicate.delivery/abc/out-0.png", REPLICATE),
        ("http://127.0.0.1:9101/files/t/out.png", ("127.0.0.1",)),
        ("http://10.1.2.3/files/out.png", ("10.0.0.0/8",)),
    ],
)
def test_configured_hosts_are_fetched(url: str, hosts: tuple[str, ...]) -> None:
    assert refusal_of(url, hosts) is None


@pytest.mark.parametrize(
    ("url", "hosts", "says"),
    [
        ("http://127.0.0.1:8080/secret", REPLICATE, "internal address"),
        ("http://[::1]:8080/secret", FAL, "internal address"),
        ("http://169.254.169.254/latest/meta-data/", FAL, "internal address"),
        ("http://10.0.0.5/admin", FAL, "internal address"),
        ("http://192.168.1.1/", ("127.0.0.1",), "internal address"),
        ("http://localhost:9101/files/x", FAL, "not one of"),
        ("https://evil.example/x.png", FAL, "not one of"),
        ("https://fal.media.evil.example/x.png", FAL, "not one of"),
        ("https://evilfal.media/x.png", FAL, "not one of"),
        ("file:///etc/passwd", FAL, "http(s)"),
        ("gopher://v3.fal.media/x", FAL, "http(s)"),
        ("https:///nohost", FAL, "http(s)"),
    ],
)
def test_everything_else_is_refused(url: str, hosts: tuple[str, ...], says: str) -> None:
    reason = refusal_of(url, hosts)
    assert reason is not None and says in reason


def test_a_wildcard_does_not_match_its_bare_domain_unless_listed() -> None:
    assert refusal_of("https://fal.run/x", ("*.fal.run",)) is not None
    assert refusal_of("https://a.fal.run/x", ("*.fal.run",)) is None


def test_a_host_gets_the_verdict_of_each_vendor_s_own_hosts() -> None:
    """Verdicts are remembered per host and host list: a host one vendor allows is still
    refused for another that does not list it, whichever was asked first."""
    url = "http://127.0.0.1:9101/files/t/out.png"
    for _ in range(2):
        assert refusal_of(url, ("127.0.0.1",)) is None
        assert refusal_of(url, ["127.0.0.1"]) is None  # any sequence, not only a tuple
        reason = refusal_of(url, FAL)
        assert reason is not None and "internal address" in reason
        assert refusal_of(url.replace("/t/", "/u/"), ("127.0.0.0/8",)) is None
