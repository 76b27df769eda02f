"""Fault schedules: what breaks, where and when, on virtual time.

The faults are the chaos suite's, acted out in one process:

    outage        the vendor answers every request 503 (with Retry-After) for a while
    slowdown      the vendor's queue and run times grow tenfold
    storm-429     most submits (and some status reads) answer 429 with Retry-After
    webhooks      webhooks lost, duplicated, late, reordered, forged and replayed
    lost-answers  submits whose answer is lost after the task was created (hang, 5xx, cut)
    hangs         requests the vendor never answers (the client's timeout ends them)
    crash         an actor dies: its in-memory state is dropped, it is unreachable for a
                  while, then a fresh object is built by the wiring and started (it
                  reloads from the ledger, as a Ray restart does)
    ledger-down   every ledger call fails (nothing written) for a while
    ledger-lost   ledger writes commit, but their answer is lost (the caller sees an error)
    ledger-flaky  a third of the ledger's write batches fail (nothing written; reads work),
                  as a disk that errs now and then

A fault is written ``kind:target@at+length`` (seconds of virtual time; ``target`` is a
vendor, a role such as ``processor-fal``, ``sweeper``, ``gateway-0``, ``ledger``, or
``ledger`` for the ledger faults); a schedule is a comma-separated list of them, e.g.
``outage:fal@20+15,crash:processor-replicate@35+2``. :func:`draw_schedule` draws one from
a seed, so ``--explore`` can run thousands of them and replay any one exactly.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

VENDOR_FAULTS = ("outage", "slowdown", "storm-429", "webhooks", "lost-answers", "hangs")
ROLE_FAULTS = ("crash",)
LEDGER_FAULTS = ("ledger-down", "ledger-lost", "ledger-flaky")
KINDS = (*VENDOR_FAULTS, *ROLE_FAULTS, *LEDGER_FAULTS)

# Each vendor fault's change to the vendor's fault profile while it lasts.
PATCHES: dict[str, dict[str, Any]] = {
    "slowdown": {
        "queue_delay": {"kind": "uniform", "low": 1.0, "high": 5.0},
        "run_time": {"kind": "lognormal", "p50": 5.0, "p99": 40.0, "cap": 90.0},
    },
    "storm-429": {
        "submit": {"rate_limited": 0.9, "retry_after": 3.0},
        "status": {"rate_limited": 0.3, "retry_after": 2.0},
    },
    "webhooks": {
        "webhooks": {
            "lost": 0.3,
            "duplicated": 0.3,
            "delayed": 0.3,
            "delay": {"kind": "uniform", "low": 1.0, "high": 30.0},
            "out_of_order": 0.3,
            "bad_signature": 0.1,
            "stale": 0.1,
        }
    },
    "lost-answers": {"lost_answers": {"hang": 0.1, "server_error": 0.1, "cut_off": 0.1}},
    "hangs": {"submit": {"hang": 0.1}, "status": {"hang": 0.2}, "cancel": {"hang": 0.3}},
}

# The per-request rates of a profile's route groups (submit, status, cancel, download) and
# of its lost answers; each group's add up to at most 1.
RATES = frozenset({"hang", "reset", "rate_limited", "server_error", "cut_off"})


def fitted(current: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``patch`` made to fit over ``current`` (a profile as a dict): in each group of
    per-request rates the patch sets, the rates it leaves alone are scaled down so the
    group still adds up to at most 1. Two faults at once (a 429 storm during hangs, on a
    vendor that already fails some submits) each take the rate they name, and what was
    there before shares the rest; merged as they are, the profile would be refused."""
    out = dict(patch)
    for group, values in patch.items():
        before = current.get(group)
        if not isinstance(values, dict) or not isinstance(before, dict):
            continue
        named = {k: float(v) for k, v in values.items() if k in RATES}
        left = {k: float(v) for k, v in before.items() if k in RATES and k not in named}
        room = max(0.0, 1.0 - sum(named.values()))
        if sum(left.values()) > room:
            scale = room / sum(left.values())
            out[group] = {
                **values,
                **{k: math.floor(v * scale * 1e9) / 1e9 for k, v in left.items()},
            }
    return out


_FAULT = re.compile(
    r"(?P<kind>[a-z0-9-]+):(?P<target>[A-Za-z0-9_.-]+)@(?P<at>[0-9.]+)(?:\+(?P<length>[0-9.]+))?"
)


@dataclass(frozen=True, slots=True)
class Fault:
    kind: str
    target: str
    at: float  # virtual seconds from the start
    length: float = 0.0

    def __str__(self) -> str:
        return f"{self.kind}:{self.target}@{self.at:g}+{self.length:g}"


def format_schedule(faults: Sequence[Fault]) -> str:
    return ",".join(str(fault) for fault in faults)


def parse_schedule(spec: str, vendors: Sequence[str], roles: Sequence[str]) -> list[Fault]:
    """A schedule from its text (see the module docstring; ``none``: no faults); ValueError
    naming what is wrong."""
    if spec.strip() == "none":
        return []
    faults = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        match = _FAULT.fullmatch(part)
        if match is None:
            raise ValueError(f"{part!r}: a fault is kind:target@at+length, e.g. outage:fal@20+15")
        kind, target = match["kind"], match["target"]
        if kind not in KINDS:
            raise ValueError(f"{part!r}: unknown fault {kind!r} (known: {', '.join(KINDS)})")
        allowed = vendors if kind in VENDOR_FAULTS else roles if kind == "crash" else ["ledger"]
        if target not in allowed:
            raise ValueError(f"{part!r}: {kind} needs one of {', '.join(allowed)}")
        faults.append(Fault(kind, target, float(match["at"]), float(match["length"] or 0)))
    return sorted(faults, key=lambda fault: fault.at)


def draw_schedule(
    rng: random.Random,
    vendors: Sequence[str],
    roles: Sequence[str],
    span: float,
    count: tuple[int, int] = (1, 4),
) -> list[Fault]:
    """A few faults at random moments of the first ``span`` virtual seconds."""
    faults = []
    for _ in range(rng.randint(*count)):
        kind = rng.choice(KINDS)
        if kind in VENDOR_FAULTS:
            target = rng.choice(list(vendors))
        elif kind == "crash":
            target = rng.choice(list(roles))
        else:
            target = "ledger"
        at = round(rng.uniform(0.0, span), 1)
        length = round(rng.uniform(1.0, 5.0 if kind == "crash" else 30.0), 1)
        faults.append(Fault(kind, target, at, length))
    return sorted(faults, key=lambda fault: fault.at)
