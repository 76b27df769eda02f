"""The traffic model: who submits what, when, and what clients do besides.

A traffic file (TOML or JSON) holds a :class:`Traffic`; every key has a default, and
``--rate``, ``--duration`` and ``--jobs`` override the file::

    rate = 40.0                 # jobs per second, on average
    shape = "poisson"           # poisson | steady | ramp | spike | wave
    duration = 600.0            # seconds of arrivals (or: jobs = 20000; the first reached ends)
    accounts = 20               # accounts the jobs are spread over, evenly
    credits = 1000000000        # each account's starting credits
    cancel = 0.02               # share of jobs their client cancels ...
    cancel_after = { kind = "uniform", low = 0.5, high = 20.0 }   # ... this long after the 202
    repeat = 0.03               # share of submits sent again with the same Idempotency-Key
    repeat_after = { kind = "uniform", low = 0.0, high = 5.0 }
    [models]                    # the mix, by weight (default: every model of the config alike)
    flux-schnell = 6
    sdxl = 3
    video-short = 1
    [spike]                     # shape = "spike": rate x factor from at to at + length
    at = 120.0
    length = 60.0
    factor = 5.0

``ramp`` rises linearly from 0 to twice ``rate`` over the duration (so the mean is
``rate``); ``wave`` swings between ``rate x (1 - depth)`` and ``rate x (1 + depth)`` over
``period`` seconds. Arrivals are a Poisson process at the shape's rate at each moment
(``steady``: evenly spaced). Every draw comes from the run's seeded generator.
"""

from __future__ import annotations

import json
import math
import random
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from runtime.config import JoblineConfig, validation_problems
from vendors_fake.profile import Latency
from vendors_fake.tasks import chance, draw_latency


class _Strict(BaseModel):
    # Written by hand: each key takes only a value of its own type (no "40" for 40).
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Spike(_Strict):
    at: float = Field(default=60.0, ge=0)
    length: float = Field(default=30.0, gt=0)
    factor: float = Field(default=5.0, gt=0)


class Wave(_Strict):
    period: float = Field(default=600.0, gt=0)
    depth: float = Field(default=0.5, ge=0, le=1)


class Traffic(_Strict):
    description: str = ""
    rate: float = Field(default=40.0, gt=0)
    shape: Literal["poisson", "steady", "ramp", "spike", "wave"] = "poisson"
    duration: float | None = Field(default=None, gt=0)
    jobs: int | None = Field(default=None, ge=1)
    accounts: int = Field(default=20, ge=1)
    credits: int = Field(default=1_000_000_000, ge=0)
    models: dict[str, float] = Field(default_factory=dict)
    cancel: float = Field(default=0.02, ge=0, le=1)
    cancel_after: Latency = Latency(kind="uniform", low=0.5, high=20.0)
    repeat: float = Field(default=0.03, ge=0, le=1)
    repeat_after: Latency = Latency(kind="uniform", low=0.0, high=5.0)
    spike: Spike = Spike()
    wave: Wave = Wave()

    @model_validator(mode="after")
    def _bounded(self) -> Traffic:
        if self.duration is None and self.jobs is None:
            raise ValueError("give duration or jobs (or both): the arrivals must end")
        if any(weight < 0 for weight in self.models.values()):
            raise ValueError("model weights must be >= 0")
        return self

    def rate_at(self, t: float) -> float:
        """Jobs per second at ``t`` seconds into the run."""
        if self.shape == "ramp":
            length = self.duration or self.jobs_length()
            return max(2 * self.rate * min(t / length, 1.0), self.rate / 100)
        if self.shape == "spike":
            spike = self.spike
            return self.rate * (spike.factor if spike.at <= t < spike.at + spike.length else 1.0)
        if self.shape == "wave":
            return self.rate * (1 + self.wave.depth * math.sin(2 * math.pi * t / self.wave.period))
        return self.rate

    def jobs_length(self) -> float:
        """How long the arrivals last at the mean rate (for a ramp bounded by jobs)."""
        return (self.jobs or 1) / self.rate

    def with_overrides(
        self, *, rate: float | None, duration: float | None, jobs: int | None
    ) -> Traffic:
        update: dict[str, Any] = {}
        if rate is not None:
            update["rate"] = rate
        if duration is not None or jobs is not None:
            update["duration"], update["jobs"] = duration, jobs
        return Traffic.model_validate({**self.model_dump(), **update})


def load_traffic(path: str | Path) -> Traffic:
    """A traffic file: TOML, or JSON for a ``.json`` file. ValueError naming every wrong
    key, one line each (``traffic.toml: rate: must be a number, got '40'``)."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    raw: Any = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    try:
        return Traffic.model_validate(raw)
    except ValidationError as exc:
        problems = validation_problems(exc)
        lines = [f"{path}: {key}: {why}" if key else f"{path}: {why}" for key, why in problems]
        raise ValueError("\n".join(lines)) from None


@dataclass(frozen=True, slots=True)
class Arrival:
    """One client's job: when it is submitted, by whom, what, and what else it does."""

    at: float
    index: int
    account: int
    model: str
    input: Mapping[str, Any]
    cancel_after: float | None
    repeat_after: float | None


def check_models(traffic: Traffic, config: JoblineConfig) -> dict[str, float]:
    """The traffic's model weights (every model of the config alike if it names none);
    ``ValueError`` if it names a model the config lacks or gives every model weight 0."""
    weights = traffic.models or {name: 1.0 for name in config.models}
    unknown = sorted(set(weights) - set(config.models))
    if unknown:
        raise ValueError(f"traffic names models the config lacks: {', '.join(unknown)}")
    if not any(weight > 0 for weight in weights.values()):
        raise ValueError("traffic gives every model weight 0: no job could be drawn")
    return weights


def arrivals(traffic: Traffic, config: JoblineConfig, rng: random.Random) -> Iterator[Arrival]:
    """The run's arrivals in time order (see the module docstring)."""
    weights = check_models(traffic, config)
    names = [name for name, weight in weights.items() if weight > 0]
    cumulative = list(_accumulate([weights[name] for name in names]))
    t = 0.0
    index = 0
    while True:
        rate = traffic.rate_at(t)
        t += 1.0 / rate if traffic.shape == "steady" else rng.expovariate(rate)
        if traffic.duration is not None and t >= traffic.duration:
            return
        if traffic.jobs is not None and index >= traffic.jobs:
            return
        model = rng.choices(names, cum_weights=cumulative)[0]
        cancel = draw_latency(traffic.cancel_after, rng) if chance(traffic.cancel, rng) else None
        repeat = draw_latency(traffic.repeat_after, rng) if chance(traffic.repeat, rng) else None
        yield Arrival(
            at=t,
            index=index,
            account=index % traffic.accounts,
            model=model,
            input={"prompt": f"simulated job {index}"},
            cancel_after=cancel,
            repeat_after=repeat,
        )
        index += 1


def _accumulate(weights: list[float]) -> Iterator[float]:
    total = 0.0
    for weight in weights:
        total += weight
        yield total
