"""The chaos scenarios: each a seeded fault schedule over a load, with what it promises.

A scenario names the fake vendors' profile (a patch on the ``calm`` preset), config
overrides (short timings so a run takes seconds), the load, where the runtime runs
(``shared``: the harness's Ray; ``child``: a process of its own that can be SIGKILLed;
``cluster``: a three-node Ray cluster in a child process) and its fault schedule: an
async function of a :class:`ChaosContext` that waits for the load to be under way and
breaks things, drawing every choice from ``ctx.rng``.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from loadtests.chaos.checks import Expectations
from loadtests.chaos.load import TERMINAL, Load, LoadSpec
from loadtests.chaos.report import ScenarioReport
from loadtests.chaos.stage import Hosting, Stage
from runtime.config import JoblineConfig
from runtime.models import Violation

FAST: dict[str, dict[str, Any]] = {
    "retry": {"base": 0.05, "cap": 0.4},
    "sweeper": {"interval": 1.0},
    "circuit": {"cooldown": 2.0},
    "vendors.fal": {"poll_interval": 0.3, "stuck_after": 8.0},
    "vendors.replicate": {"poll_interval": 0.3, "stuck_after": 8.0},
}


MiB = 1024 * 1024
# The flaky preset's vendor behaviours (vendors_fake/profiles.toml), at higher rates so
# that a run of 60 jobs meets each of them several times.
PAID_WORK_PROFILE: dict[str, Any] = {
    "run_time": {"kind": "uniform", "low": 0.3, "high": 1.5},
    "cold_start": 0.1,
    "cold_start_time": {"kind": "uniform", "low": 1.0, "high": 3.0},
    "failure": 0.03,
    "lost_answers": {"hang": 0.04, "server_error": 0.04, "cut_off": 0.04},
    "hang_for": 3.0,
    "data_uri": 0.15,
    "payload_error": 0.15,
    "logs": {"kind": "lognormal", "p50": 2048, "p99": 262144},
    "download": {"server_error": 0.05},
    "webhooks": {
        "lost": 0.05,
        "delayed": 0.1,
        "delay": {"kind": "uniform", "low": 0.3, "high": 2.0},
        "retries": 3,
    },
    "outputs": {
        "*": {"kind": "image", "count": 1, "count_max": 4},
        "*video*": {"kind": "video", "size": {"kind": "uniform", "low": MiB, "high": 4 * MiB}},
    },
}


@dataclass
class ChaosContext:
    """What a fault schedule works with."""

    config: JoblineConfig
    fakes: Any  # vendors_fake.runner.FakeVendorSet (same process)
    stage: Stage
    load: Load
    rng: random.Random
    http: aiohttp.ClientSession
    report: ScenarioReport
    started: float = field(default_factory=time.monotonic)
    findings: list[Violation] = field(default_factory=list)  # what the schedule itself saw

    def note(self, what: str) -> None:
        self.report.faults.append(f"{time.monotonic() - self.started:.1f}s {what}")

    async def mid_load(self, share: float) -> None:
        await self.load.wait_accepted(share)

    def load_running(self) -> bool:
        """True until every client has its job's end (or gave up)."""
        for job in self.load.jobs:
            if job.job_id is None and job.refused is None and not job.answers.get("gave_up"):
                return True
            if job.job_id is not None and not (job.observed and job.observed[-1] in TERMINAL):
                return True
        return False

    async def kill(self, role: str) -> None:
        self.note(f"kill {role}")
        await self.stage.kill(role)

    async def fake_control(self, vendor: str, path: str, body: Mapping[str, Any]) -> None:
        url = f"{self.fakes.urls[vendor]}/_control/{path}"
        async with self.http.post(url, json=dict(body)) as response:
            response.raise_for_status()

    async def sleep(self, low: float, high: float) -> None:
        await asyncio.sleep(self.rng.uniform(low, high))


FaultSchedule = Callable[[ChaosContext], Coroutine[Any, Any, None]]


async def no_faults(ctx: ChaosContext) -> None:
    return None


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    faults: FaultSchedule = no_faults
    profile: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    load: LoadSpec = field(default_factory=LoadSpec)
    hosting: Hosting = "shared"
    credits: int | None = None  # None: plenty
    expect: Expectations = field(default_factory=Expectations)
    quiet_timeout: float = 90.0


# --- fault schedules ------------------------------------------------------------------------


async def vendor_outage(ctx: ChaosContext) -> None:
    await ctx.mid_load(0.3)
    duration = round(ctx.rng.uniform(3.0, 6.0), 1)
    ctx.note(f"fal outage {duration}s")
    await ctx.fake_control("fal", "outage", {"duration": duration})


async def rate_limited(ctx: ChaosContext) -> None:
    await ctx.mid_load(0.2)
    window = round(ctx.rng.uniform(3.0, 5.0), 1)
    only_429 = {"rate_limited": 1.0, "retry_after": 1.0}
    ctx.note(f"fal answers only 429 (Retry-After 1) for {window}s")
    await ctx.fake_control("fal", "profile", {"submit": only_429, "status": only_429})
    await asyncio.sleep(window)
    clear = {"rate_limited": 0.0}
    await ctx.fake_control("fal", "profile", {"submit": clear, "status": clear})
    ctx.note("fal answers again")


async def processor_kills(ctx: ChaosContext) -> None:
    await ctx.mid_load(0.15)
    for _ in range(5):
        if not ctx.load_running():
            return
        await ctx.kill(ctx.rng.choice(["processor-fal", "processor-replicate"]))
        await ctx.sleep(1.5, 3.0)


async def ledger_kills(ctx: ChaosContext) -> None:
    await ctx.mid_load(0.2)
    for _ in range(3):
        if not ctx.load_running():
            return
        await ctx.kill("ledger")
        await ctx.sleep(2.0, 4.0)


async def gateway_kills(ctx: ChaosContext) -> None:
    await ctx.mid_load(0.1)
    replicas = ctx.config.gateway.replicas
    for _ in range(4):
        if not ctx.load_running():
            return
        await ctx.kill(f"gateway-{ctx.rng.randrange(replicas)}")
        await ctx.sleep(1.0, 2.5)


async def webhook_storm(ctx: ChaosContext) -> None:
    """Besides the hostile profile's own faults: forged, replayed, stale and contradicting
    webhooks for real tasks, sent by the harness while the jobs run and after they end."""
    await ctx.mid_load(0.3)
    sent = 0
    for _ in range(8):
        sent += await _inject_webhooks(ctx, after_end=False)
        await ctx.sleep(0.3, 0.8)
    while ctx.load_running():
        await asyncio.sleep(0.3)
    sent += await _inject_webhooks(ctx, after_end=True)
    ctx.note(f"{sent} forged, replayed, stale or contradicting webhooks sent")


async def _inject_webhooks(ctx: ChaosContext, *, after_end: bool) -> int:
    sent = 0
    for name, fake in ctx.fakes.vendors.items():
        tasks = [t for t in fake.tasks.values() if t.phase.ended and t.webhook_url]
        if not tasks:
            continue
        for task in ctx.rng.sample(tasks, min(len(tasks), 6)):
            # Signed in the vendor's own scheme by the fake itself (Standard Webhooks for
            # replicate, ED25519 for fal), or by a forger's key.
            now = int(time.time())
            real = fake.signed_webhook(task)
            deliveries = [
                fake.signed_webhook(
                    task, msg_id=f"msg_forged_{ctx.rng.getrandbits(48):x}", forged=True
                ),
                real,  # a replay of the real one
                fake.signed_webhook(
                    task, msg_id=f"msg_stale_{ctx.rng.getrandbits(48):x}", timestamp=now - 3600
                ),
            ]
            if after_end:  # the vendor changing its mind about a task that ended: ignored
                deliveries.append(
                    fake.signed_webhook(
                        task,
                        msg_id=f"msg_late_{ctx.rng.getrandbits(48):x}",
                        body=_contradict(name, real[1]),
                    )
                )
            for signed, payload in deliveries:
                headers = {**signed, "Content-Type": "application/json"}
                try:
                    async with ctx.http.post(
                        str(task.webhook_url), data=payload, headers=headers
                    ) as response:
                        await response.read()
                    sent += 1
                except (aiohttp.ClientError, TimeoutError):
                    pass
    return sent


def _contradict(vendor: str, body: bytes) -> bytes:
    data = json.loads(body)
    if "request_id" in data:  # fal
        ok = data.get("status") == "OK"
        data.update(status="ERROR" if ok else "OK", error="changed my mind" if ok else None)
    else:
        ok = data.get("status") == "succeeded"
        data.update(status="failed" if ok else "succeeded", error="changed my mind")
    return json.dumps(data).encode()


async def cancel_storm(ctx: ChaosContext) -> None:
    ctx.note(f"clients cancel {ctx.load.spec.cancel_rate:.0%} of jobs as they finish")


async def whole_runtime_sigkill(ctx: ChaosContext) -> None:
    from loadtests.chaos.stage import ChildRuntime

    stage = ctx.stage
    assert isinstance(stage, ChildRuntime)
    await ctx.mid_load(0.4)
    await ctx.sleep(0.0, 1.0)
    ctx.note("SIGKILL the whole runtime (every Ray process)")
    await stage.sigkill()
    await ctx.sleep(0.5, 2.0)
    ctx.note("restart on the same database")
    await stage.restart()
    ctx.note("runtime back")


async def lose_processor_node(ctx: ChaosContext) -> None:
    from loadtests.chaos.stage import ChildRuntime

    stage = ctx.stage
    assert isinstance(stage, ChildRuntime)
    await ctx.mid_load(0.4)
    await ctx.sleep(0.0, 1.0)
    removed = await stage.lose_processor_node()
    ctx.note(f"node {removed['removed'][:8]} removed with {', '.join(removed['roles_there'])}")


async def refusals_and_kills(ctx: ChaosContext) -> None:
    """fal refuses the account for a while (403 "User is locked"), then processors are
    killed again and again, while the profile loses submit answers, drops payloads,
    sends data URIs, several images, videos of megabytes and cold starts."""
    await ctx.mid_load(0.4)
    ctx.note("fal refuses the account (403, locked balance)")
    await ctx.fake_control("fal", "profile", {"refusal": {"status": 403}})
    await ctx.sleep(1.0, 2.0)
    await ctx.fake_control("fal", "profile", {"refusal": None})
    ctx.note("fal serves the account again")
    for _ in range(3):
        if not ctx.load_running():
            return
        await ctx.kill(ctx.rng.choice(["processor-fal", "processor-replicate"]))
        await ctx.sleep(1.5, 3.0)


async def hostile_input(ctx: ChaosContext) -> None:
    """The API fuzzer (``loadtests.chaos.fuzz``) against the gateway while the load runs."""
    try:
        from loadtests.chaos.fuzz import fuzz_api
    except ImportError as exc:  # the fuzzer is optional (it needs Hypothesis)
        ctx.findings.append(Violation("fuzz", "set-up", f"the fuzzer cannot run: {exc}"))
        return
    base_url = ctx.config.gateway.public_url
    admin_token = ctx.config.gateway.admin_token() or ""
    keys = []
    for name in ("fuzz-a", "fuzz-b"):
        async with ctx.http.post(
            f"{base_url}/v1/accounts",
            json={"name": name, "credits": 100_000},
            headers={"Authorization": f"Bearer {admin_token}"},
        ) as response:
            keys.append((await response.json())["api_key"])
    await ctx.mid_load(0.2)
    ctx.note("fuzzing the API")
    report = await fuzz_api(
        base_url, keys[0], keys[1], admin_token, seed=ctx.rng.randrange(2**31), examples=8
    )
    ctx.note(f"fuzz: {report.total} hostile requests, {len(report.problems)} problems")
    ctx.findings.extend(Violation("fuzz", p.category or "-", str(p)) for p in report.problems)


# --- the scenarios --------------------------------------------------------------------------

_SCENARIOS = [
    Scenario(
        "vendor-outage",
        "fal answers 503 for a few seconds mid-load: jobs fail over, one charge each",
        vendor_outage,
        load=LoadSpec(jobs=60),
    ),
    Scenario(
        "rate-limited",
        "fal answers only 429 + Retry-After for a while: backoff honoured, limit held",
        rate_limited,
        overrides={"retry": {"base": 0.05, "cap": 2.0}},
        load=LoadSpec(jobs=50, models=("flux-schnell",)),
        expect=Expectations(retry_after=1.0),
    ),
    Scenario(
        "vendor-hang",
        "fal hangs on some submits and polls: timeouts, retries, no slot leaked",
        profile={
            "submit": {"hang": 0.25},
            "status": {"hang": 0.2},
            "hang_for": 4.0,
        },
        overrides={
            "vendors.fal": {"submit_timeout": 1.0, "poll_timeout": 1.0, "poll_interval": 0.3},
        },
        load=LoadSpec(jobs=40, models=("flux-schnell",)),
    ),
    Scenario(
        "webhook-storm",
        "duplicated, late, reordered, forged, replayed and contradicting webhooks",
        webhook_storm,
        profile={
            "run_time": {"kind": "uniform", "low": 0.2, "high": 1.0},
            "webhooks": {
                "lost": 0.1,
                "duplicated": 0.3,
                "delayed": 0.3,
                "delay": {"kind": "uniform", "low": 0.5, "high": 3.0},
                "out_of_order": 0.3,
                "bad_signature": 0.2,
                "stale": 0.1,
            },
            "failure": 0.05,
        },
        load=LoadSpec(jobs=50),
    ),
    Scenario(
        "processor-kill",
        "vendor processors killed again and again under load",
        processor_kills,
        profile={"run_time": {"kind": "uniform", "low": 0.3, "high": 1.5}},
        load=LoadSpec(jobs=60, spread=5.0),
    ),
    Scenario(
        "ledger-kill",
        "the ledger actor killed during group commits",
        ledger_kills,
        load=LoadSpec(jobs=60, spread=6.0),
    ),
    Scenario(
        "gateway-kill",
        "gateway replicas killed during submits; clients retry with their keys",
        gateway_kills,
        load=LoadSpec(jobs=60, spread=6.0, replay_rate=0.3),
    ),
    Scenario(
        "sweeper-race",
        "lost and late webhooks, short stuck_after: the sweeper races webhooks and polls",
        profile={
            "run_time": {"kind": "uniform", "low": 0.3, "high": 3.0},
            "webhooks": {
                "lost": 0.4,
                "delayed": 0.5,
                "delay": {"kind": "uniform", "low": 1.0, "high": 4.0},
            },
        },
        overrides={
            "sweeper": {"interval": 0.5},
            "vendors.fal": {"stuck_after": 2.0, "poll_interval": 1.0},
            "vendors.replicate": {"stuck_after": 2.0, "poll_interval": 1.0},
        },
        load=LoadSpec(jobs=50),
    ),
    Scenario(
        "deadline-race",
        "deadlines shorter than slow tasks: the sweeper expires jobs the processor still runs",
        profile={
            "run_time": {"kind": "uniform", "low": 1.0, "high": 9.0},
            "webhooks": {
                "lost": 0.3,
                "delayed": 0.5,
                "delay": {"kind": "uniform", "low": 0.5, "high": 3.0},
            },
        },
        overrides={"sweeper": {"interval": 0.5, "job_deadline": 8.0}},
        load=LoadSpec(jobs=50, spread=2.0),
    ),
    Scenario(
        "cancel-race",
        "clients cancel jobs just as they complete",
        cancel_storm,
        load=LoadSpec(jobs=60, cancel_rate=0.6, cancel_delay=(0.2, 1.2)),
    ),
    Scenario(
        "account-cap",
        "more concurrent submits than the account may have in flight: 429, retried, one job each",
        overrides={"gateway": {"max_jobs_in_flight_per_account": 8}},
        load=LoadSpec(jobs=50, concurrency=50, spread=0.5, replay_rate=0.3),
    ),
    Scenario(
        "credit-exhaustion",
        "an account funded for exactly N jobs, 3N concurrent submits: exactly N accepted",
        credits=10 * 3,
        load=LoadSpec(jobs=30, models=("flux-schnell",), concurrency=30, spread=0.2),
        expect=Expectations(exactly_accepted=10),
    ),
    Scenario(
        "sigkill-restart",
        "the whole runtime SIGKILLed mid-load, restarted on the same database",
        whole_runtime_sigkill,
        profile={"run_time": {"kind": "uniform", "low": 0.5, "high": 2.0}},
        load=LoadSpec(jobs=50, spread=6.0, give_up_after=180.0),
        hosting="child",
        quiet_timeout=120.0,
    ),
    Scenario(
        "node-loss",
        "a three-node Ray cluster loses the worker node running the processors",
        lose_processor_node,
        profile={"run_time": {"kind": "uniform", "low": 0.5, "high": 2.0}},
        load=LoadSpec(jobs=50, spread=6.0),
        hosting="cluster",
        quiet_timeout=120.0,
    ),
    Scenario(
        "stuck-tasks",
        "vendor tasks that never finish and cancels that fail: given up, canceled, retried",
        profile={"never_finish": 0.2, "cancel": {"server_error": 0.5}},
        overrides={"models.flux-schnell": {"max_run_time": 2.0}},
        load=LoadSpec(jobs=40, models=("flux-schnell",), spread=1.0),
    ),
    Scenario(
        "cancel-under-kills",
        "clients cancel long and endless tasks while the processors are killed",
        processor_kills,
        # An endless task ends at the vendor's own limit (max_task_time: replicate's
        # Cancel-After, a fal app's request timeout), which jobline is told: a task whose
        # id a killed processor never recorded keeps a slot until then.
        profile={
            "never_finish": 0.1,
            "run_time": {"kind": "uniform", "low": 0.5, "high": 3.0},
            "max_task_time": 8.0,
        },
        overrides={
            "vendors.fal": {"max_task_time": 8.0},
            "vendors.replicate": {"max_task_time": 8.0},
            "models.flux-schnell": {"max_run_time": 4.0},
            "models.sdxl": {"max_run_time": 4.0},
        },
        load=LoadSpec(jobs=50, spread=4.0, cancel_rate=0.4, cancel_delay=(0.3, 3.0)),
    ),
    Scenario(
        "paid-work",
        "real vendors' ways under load and processor kills: lost submit answers, payload "
        "errors, data URIs, several outputs, videos, cold starts, a locked account; no paid "
        "work thrown away (I7) but late orphans",
        refusals_and_kills,
        profile=PAID_WORK_PROFILE,
        overrides={
            "circuit": {"refused_cooldown": 2.0},
            "vendors.fal": {"submit_timeout": 2.0, "orphan_wait": 15.0},
            "vendors.replicate": {"submit_timeout": 2.0},
        },
        load=LoadSpec(jobs=60, models=("flux-schnell", "sdxl", "video-short"), spread=8.0),
        expect=Expectations(no_waste=True),
        quiet_timeout=120.0,
    ),
    Scenario(
        "fuzz",
        "hostile input (the API fuzzer) while jobs run; its problems are violations",
        hostile_input,
        load=LoadSpec(jobs=30, spread=6.0),
        quiet_timeout=120.0,
    ),
]
SCENARIOS: dict[str, Scenario] = {s.name: s for s in _SCENARIOS}
QUICK = (
    "processor-kill",
    "webhook-storm",
    "credit-exhaustion",
    "cancel-under-kills",
    "paid-work",
)  # the subset in `make test`
