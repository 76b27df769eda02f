"""What every section of jobline.toml shares: the section base (unknown keys refused,
every value of its own TOML type, every number finite and bounded), the two types that
TOML has no word for (a path, an array read into a tuple) and the URL check."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Strict, field_validator

# The most credits one grant may add (the API's cap, ``runtime.api.bodies``): a price
# above it can never be paid. It is also every other number's bound (bytes, counts,
# seconds: 10^12 s is 30,000 years), well inside SQLite's 64-bit integers.
MAX_CREDITS = 10**12
# The slowest submit rate an account may be given, or 0 (no limit): one submit per ~17
# minutes. Slower ones made a Retry-After hundreds of digits long (5e-324/s: infinite).
MIN_SUBMIT_RATE = 0.001

T = TypeVar("T")
# A section is strict (``Section``): each key takes only a value of its own TOML type, so
# ``true`` is no price and ``"yes"`` no boolean. Two types TOML writes as something else
# are read leniently, their items staying strict: a path is a TOML string, and a tuple a
# TOML array (a list).
FilePath = Annotated[Path, Strict(False)]
Array = Annotated[tuple[T, ...], Strict(False)]


def submit_rate(value: float) -> float:
    """``value`` if it is 0 (no limit) or at least ``MIN_SUBMIT_RATE``; else ValueError."""
    if 0 < value < MIN_SUBMIT_RATE:
        raise ValueError(f"must be 0 (no limit) or at least {MIN_SUBMIT_RATE:g}, got {value!r}")
    return value


def http_url(value: str, *, empty_ok: bool = False, empty_means: str = "") -> str:
    """``value`` without a trailing slash if it is an http(s) URL with a host (or empty,
    when ``empty_ok``; ``empty_means`` says what empty stands for in the error).
    ValueError saying what is wrong otherwise."""
    if not value and empty_ok:
        return value
    wanted = "an http:// or https:// URL with a host"
    if empty_ok:
        wanted = f"empty{f' ({empty_means})' if empty_means else ''} or {wanted}"
    try:
        parts = urlsplit(value)
        port_ok = parts.port is None or parts.port > 0
    except ValueError:  # a port that is no number, a malformed IPv6 host
        parts, port_ok = None, False
    if (
        parts is None
        or not port_ok
        or parts.scheme not in ("http", "https")
        or not parts.hostname
        or any(c.isspace() for c in value)
    ):
        raise ValueError(f"must be {wanted}, got {value!r}")
    return value.rstrip("/")


class Section(BaseModel):
    """A table of jobline.toml: unknown keys are refused, and so is a value of the wrong
    TOML type (strict mode: no ``"8"`` for 8, no ``1`` or ``"yes"`` for true, no ``true``
    for a number); an integer is a valid float (``interval = 15``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    @field_validator("*")
    @classmethod
    def _bounded_number(cls, value: Any) -> Any:
        """Every number in the file is finite (TOML has ``inf`` and ``nan``) and at most
        ``MAX_CREDITS``: a larger one is a typo, and SQLite cannot hold some of them."""
        if isinstance(value, bool) or not isinstance(value, int | float):
            return value
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"must be a finite number, got {value!r}")
        if abs(value) > MAX_CREDITS:
            raise ValueError(f"must be at most {MAX_CREDITS:_}, got {value!r}")
        return value
