"""Fault profiles: how a fake vendor behaves on a bad day, as data.

A :class:`FaultProfile` is a frozen pydantic model (unknown keys are errors) that can be
read from TOML or JSON, taken from the presets in ``profiles.toml`` (``calm``, ``flaky``,
``outage``, ``hostile``, ``zero``), and changed while a fake runs through
``POST /_control/profile`` with a full or partial document (:func:`merge_profile`).

Every probability is per event and independent: per request for the route faults, per
task for the task's fate (outcome, cold start, data URIs, payload error, lost answer),
per delivered webhook for the webhook faults.
"""

from __future__ import annotations

import fnmatch
import json
import math
import tomllib
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, Strict, ValidationError, model_validator

T = TypeVar("T")
# A profile is written by hand (TOML, JSON): each key takes only a value of its own type,
# nothing converted (``"yes"`` is no boolean, ``"0.5"`` no rate); an integer is a valid
# float. A tuple is read from an array (a list), its items staying strict.
Array = Annotated[tuple[T, ...], Strict(False)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Distribution(_Strict):
    kind: Literal["fixed", "uniform", "lognormal"] = "fixed"
    seconds: float = Field(default=0.0, ge=0)
    low: float = Field(default=0.0, ge=0)
    high: float = Field(default=0.0, ge=0)
    p50: float = Field(default=0.0, ge=0)
    p99: float = Field(default=0.0, ge=0)
    cap: float = Field(default=3600.0, gt=0)

    @model_validator(mode="after")
    def _consistent(self) -> Distribution:
        if self.kind == "uniform" and self.high < self.low:
            raise ValueError(f"uniform needs high >= low, got {self.low}..{self.high}")
        if self.kind == "lognormal" and not (self.p99 >= self.p50 > 0):
            raise ValueError(f"lognormal needs p99 >= p50 > 0, got {self.p50}/{self.p99}")
        return self

    @property
    def sigma(self) -> float:
        """The lognormal shape: ln(p99 / p50) / z(0.99)."""
        return math.log(self.p99 / self.p50) / 2.3263478740408408


class Latency(Distribution):
    """A duration distribution in seconds.

    ``fixed``: always ``seconds``. ``uniform``: between ``low`` and ``high``.
    ``lognormal``: median ``p50`` and 99th percentile ``p99`` (``p99 >= p50 > 0``).
    Every draw is capped at ``cap`` seconds.
    """


class Size(Distribution):
    """A size distribution in bytes, drawn like :class:`Latency` (``seconds`` is the fixed
    size in bytes; ``cap`` defaults to 256 MiB)."""

    cap: float = Field(default=256 * 1024 * 1024, gt=0)


class RouteFaults(_Strict):
    """Faults for every request on one group of routes; at most one per request:
    ``hang`` (never answered: the client times out), ``reset`` (the connection is
    aborted), ``rate_limited`` (429 with ``Retry-After``), ``server_error`` (one of
    ``server_error_codes``, chosen uniformly). The rates add up to at most 1."""

    hang: float = Field(default=0.0, ge=0, le=1)
    reset: float = Field(default=0.0, ge=0, le=1)
    rate_limited: float = Field(default=0.0, ge=0, le=1)
    server_error: float = Field(default=0.0, ge=0, le=1)
    server_error_codes: Array[int] = Field(default=(500, 502, 503), min_length=1)
    retry_after: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _rates_fit(self) -> RouteFaults:
        total = self.hang + self.reset + self.rate_limited + self.server_error
        if total > 1:
            raise ValueError(
                f"hang + reset + rate_limited + server_error must be <= 1, got {total}"
            )
        return self

    @property
    def any(self) -> bool:
        return bool(self.hang or self.reset or self.rate_limited or self.server_error)


class LostAnswers(_Strict):
    """Submits whose answer is lost **after** the vendor created the task, drawn once per
    created task (at most one): ``hang`` (the answer never comes: the client times out,
    the connection is dropped after ``hang_for``), ``server_error`` (a 5xx, one of
    ``server_error_codes``, though the task runs), ``cut_off`` (the status line and half
    the body are sent, then the connection is aborted). The task runs on, billed, with
    nobody knowing its id: the case a client must treat as *in doubt*."""

    hang: float = Field(default=0.0, ge=0, le=1)
    server_error: float = Field(default=0.0, ge=0, le=1)
    cut_off: float = Field(default=0.0, ge=0, le=1)
    server_error_codes: Array[int] = Field(default=(500, 502, 503, 504), min_length=1)

    @model_validator(mode="after")
    def _rates_fit(self) -> LostAnswers:
        total = self.hang + self.server_error + self.cut_off
        if total > 1:
            raise ValueError(f"hang + server_error + cut_off must be <= 1, got {total}")
        return self

    @property
    def any(self) -> bool:
        return bool(self.hang or self.server_error or self.cut_off)


class Refusal(_Strict):
    """An account-level refusal: while set, every submit (for ``models``, glob patterns;
    empty: every model) is refused with ``status`` and the vendor's own body:

    - 401: the key is no longer valid (every route refuses, like a revoked key);
    - 402: billing required (replicate: "Billing required");
    - 403: the account is locked (fal: "User is locked. Reason: Exhausted balance. ...");
      status reads, results and cancels still work, as they do at fal;
    - 404: the model is gone (removed or renamed).
    """

    status: Literal[401, 402, 403, 404]
    models: Array[str] = ()


class OutputSpec(_Strict):
    """What a task of a model produces, as real bytes served by the fake.

    ``kind``: ``image`` (PNG), ``video`` (MP4), ``audio`` (WAV), ``json`` (a JSON result
    with no files), ``text`` (plain text, as language models answer). ``count`` outputs
    (a uniform integer in ``count..count_max`` when that is set; images only). ``size``:
    the bytes of a video or audio file (images are small PNGs whatever it says).
    ``key``: fal's result key for the file (default by kind: ``images``, ``video``,
    ``audio``); any other name gives a ``{url, content_type, file_name, file_size}``
    object under that key. ``as_list``: replicate's ``output`` as a list of URLs (default:
    a list for images, one string for other kinds).
    """

    kind: Literal["image", "video", "audio", "json", "text"] = "image"
    count: int = Field(default=1, ge=1, le=16)
    count_max: int | None = Field(default=None, ge=1, le=16)
    size: Size = Size(kind="fixed", seconds=256 * 1024)
    key: str | None = None
    as_list: bool | None = None

    @model_validator(mode="after")
    def _count_range(self) -> OutputSpec:
        if self.count_max is not None and self.count_max < self.count:
            raise ValueError(f"count_max must be >= count, got {self.count}..{self.count_max}")
        return self


class WebhookFaults(_Strict):
    """Faults drawn for every webhook event the fake delivers.

    ``lost``: never sent. ``duplicated``: sent twice (same id, same body).
    ``delayed``: sent after an extra ``delay``. ``bad_signature``: signed with a key that
    is not the vendor's (a forgery). ``stale``: correctly signed with a timestamp
    ``stale_by`` seconds in the past (a replay). ``out_of_order`` is drawn once per task:
    its progress event (replicate's ``start``, a ``processing`` prediction, or
    ``starting`` if it never ran) is held back and sent after the final one, subscribed or
    not. fal sends no progress event, so ``out_of_order`` does not apply to it.

    A final event that is not delivered (an error status, no answer within ``timeout``) is
    sent again up to ``retries`` times, ``retry_backoff`` seconds after the first failure,
    doubling up to ``retry_backoff_cap``; each attempt is signed afresh. fal retries a
    webhook 10 times over about 2 hours, replicate a terminal one for about a minute
    (progress events are not retried): the defaults are bounded for tests.
    """

    lost: float = Field(default=0.0, ge=0, le=1)
    duplicated: float = Field(default=0.0, ge=0, le=1)
    delayed: float = Field(default=0.0, ge=0, le=1)
    delay: Latency = Latency(kind="fixed", seconds=2.0)
    out_of_order: float = Field(default=0.0, ge=0, le=1)
    bad_signature: float = Field(default=0.0, ge=0, le=1)
    stale: float = Field(default=0.0, ge=0, le=1)
    stale_by: float = Field(default=900.0, ge=0)
    timeout: float = Field(default=5.0, gt=0)  # per delivery attempt
    retries: int = Field(default=0, ge=0)  # further attempts after a failed delivery
    retry_backoff: float = Field(default=0.5, ge=0)
    retry_backoff_cap: float = Field(default=10.0, ge=0)


class Outage(_Strict):
    """Periodic outage windows: every ``every`` seconds (from the fake's start, first
    window beginning at ``first_at``, default ``every - duration``) the whole API answers
    503 for ``duration`` seconds. ``every = 0`` turns periodic outages off; an outage can
    also be started on demand with ``POST /_control/outage``."""

    every: float = Field(default=0.0, ge=0)
    duration: float = Field(default=0.0, ge=0)
    first_at: float | None = Field(default=None, ge=0)
    retry_after: float | None = Field(default=None, ge=0)

    def active_until(self, elapsed: float) -> float | None:
        """If ``elapsed`` seconds after start falls in a window, the elapsed time it ends."""
        if self.every <= 0 or self.duration <= 0:
            return None
        first = self.first_at if self.first_at is not None else max(self.every - self.duration, 0)
        if elapsed < first:
            return None
        start = first + ((elapsed - first) // self.every) * self.every
        end = start + self.duration
        return end if elapsed < end else None


class FaultProfile(_Strict):
    """Everything that makes a fake vendor slow or wrong. The defaults are a perfect
    vendor with zero latency, one small PNG per task."""

    description: str = ""
    # task timeline: queued (starting / IN_QUEUE) -> running (processing / IN_PROGRESS) -> end
    queue_delay: Latency = Latency()
    run_time: Latency = Latency()
    # a cold start (a new worker boots: replicate's long "starting", fal's long IN_QUEUE)
    # adds cold_start_time to the queue time of that share of tasks
    cold_start: float = Field(default=0.0, ge=0, le=1)
    cold_start_time: Latency = Latency(kind="uniform", low=5.0, high=30.0)
    # task outcomes, drawn once per task at creation
    failure: float = Field(default=0.0, ge=0, le=1)  # vendor-side failure, worth a retry
    rejection: float = Field(default=0.0, ge=0, le=1)  # permanent: content rejected
    never_finish: float = Field(default=0.0, ge=0, le=1)  # runs until canceled
    # the vendor fails a task older than this itself (a fal app's request timeout; a
    # replicate ``Cancel-After`` does the same per prediction); None: no limit
    max_task_time: float | None = Field(default=None, gt=0)
    # in-flight tasks = created and not ended; past the limit a submit gets 429
    concurrency_limit: int | None = Field(default=None, ge=1)
    concurrency_retry_after: float = Field(default=1.0, ge=0)
    # outputs: by model name, glob patterns, the most specific match wins ("*": the rest)
    outputs: dict[str, OutputSpec] = Field(default_factory=lambda: {"*": OutputSpec()})
    # a share of successful tasks answers with data: URIs instead of file URLs (fal's
    # sync_mode, replicate's sync API); fal's sync_mode input asks for them always
    data_uri: float = Field(default=0.0, ge=0, le=1)
    # fal: a share of successful webhooks carries payload null + payload_error (fal
    # could not serialize the result; it exists at response_url)
    payload_error: float = Field(default=0.0, ge=0, le=1)
    # replicate: the size of a prediction's logs (they travel in every webhook body)
    logs: Size = Size(kind="fixed", seconds=200)
    # account-level: every submit refused (see Refusal); None: the account is fine
    refusal: Refusal | None = None
    # submits whose answer is lost after the task was created
    lost_answers: LostAnswers = LostAnswers()
    # per-request faults, by route group
    submit: RouteFaults = RouteFaults()  # create a task
    status: RouteFaults = RouteFaults()  # read a task: replicate GET, fal status and result
    cancel: RouteFaults = RouteFaults()
    download: RouteFaults = RouteFaults()  # output files
    jwks: RouteFaults = RouteFaults()  # fal's public key set
    webhooks: WebhookFaults = WebhookFaults()
    outage: Outage = Outage()
    hang_for: float = Field(default=600.0, gt=0)  # a hung request is dropped after this

    @model_validator(mode="after")
    def _outcomes_fit(self) -> FaultProfile:
        total = self.failure + self.rejection + self.never_finish
        if total > 1:
            raise ValueError(f"failure + rejection + never_finish must be <= 1, got {total}")
        if not self.outputs:
            raise ValueError('outputs needs at least one pattern (e.g. "*")')
        return self

    def output_spec(self, model: str) -> OutputSpec:
        """The output spec of the most specific pattern matching ``model`` (the one with
        the most characters that are not wildcards); the default image if none does."""
        matches = [p for p in self.outputs if fnmatch.fnmatchcase(model, p)]
        if not matches:
            return OutputSpec()
        best = max(matches, key=lambda p: (len(p.replace("*", "").replace("?", "")), p))
        return self.outputs[best]

    def refuses(self, model: str) -> Refusal | None:
        refusal = self.refusal
        if refusal is None:
            return None
        if refusal.models and not any(fnmatch.fnmatchcase(model, p) for p in refusal.models):
            return None
        return refusal


class ProfileError(ValueError):
    """A profile document is wrong: one line per wrong key, ``source: key: reason``."""


# A value of the wrong type, as the document's author wrote it (TOML or JSON words).
_WANTED = {
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
    "tuple_type": "must be an array",
    "dict_type": "must be a table (an object)",
    "model_type": "must be a table (an object)",
}


def validate_profile(raw: Any, source: str = "profile") -> FaultProfile:
    """``raw`` (a parsed TOML or JSON document) as a profile; ProfileError naming every
    wrong key (``source: submit.hang: must be a number, got 'often'``)."""
    try:
        return FaultProfile.model_validate(raw)
    except ValidationError as exc:
        lines = [f"{source}: {_key(error['loc'])}: {_reason(error)}" for error in exc.errors()]
        raise ProfileError("\n".join(lines)) from None


def _key(loc: tuple[int | str, ...]) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")


def _reason(error: Any) -> str:
    kind, got, ctx = error["type"], error.get("input"), error.get("ctx") or {}
    if kind in _WANTED:
        return f"{_WANTED[kind]}, got {got!r}"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, got {got!r}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    return f"{error['msg'].lower()}, got {got!r}"


def merge_profile(base: FaultProfile, patch: Mapping[str, Any]) -> FaultProfile:
    """``base`` with the keys of ``patch`` (nested tables merged key by key) replaced;
    ProfileError naming every wrong key."""
    return validate_profile(_deep_merge(base.model_dump(), patch))


def _deep_merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in patch.items():
        current = merged.get(key)
        if isinstance(current, dict) and isinstance(value, Mapping):
            merged[key] = _deep_merge(current, value)
        else:
            merged[key] = value
    return merged


def preset_names() -> list[str]:
    return sorted(_presets())


def preset(name: str) -> FaultProfile:
    presets = _presets()
    if name not in presets:
        raise KeyError(f"unknown fault profile {name!r} (presets: {', '.join(sorted(presets))})")
    return validate_profile(presets[name], f"profiles.toml: {name}")


def load_profile(name_or_path: str | Path) -> FaultProfile:
    """A preset by name, or a profile file: ``.toml`` or ``.json``.

    A TOML file holds either the profile's keys at top level, or one table per named
    profile (like ``profiles.toml``) of which it must hold exactly one.
    """
    if isinstance(name_or_path, str) and name_or_path in _presets():
        return preset(name_or_path)
    path = Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: no such file, and not a preset ({', '.join(preset_names())})"
        )
    text = path.read_text(encoding="utf-8")
    raw: dict[str, Any] = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    fields = FaultProfile.model_fields
    if raw and all(isinstance(v, dict) for v in raw.values()) and not set(raw) & set(fields):
        if len(raw) != 1:
            raise ValueError(f"{path}: holds profiles {sorted(raw)}; name one of them instead")
        (raw,) = raw.values()
    return validate_profile(raw, str(path))


def _presets() -> dict[str, dict[str, Any]]:
    text = resources.files("vendors_fake").joinpath("profiles.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)
