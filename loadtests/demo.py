"""``jobline demo``: the main job on the embedded defaults, with one screen of results.

Starts the fake vendors of jobline.toml (``flaky`` preset) on free ports, the runtime
on a local Ray, creates an account, submits a few hundred jobs through the HTTP API
(mixed models, some repeated Idempotency-Keys, some cancels, and mid-run an outage of
the vendor first on most routes, lasting until its circuit opens and a little after, so
that failover shows), waits for every job to end, and prints what happened and
whether the ledger's invariants held. Exits 1 if any invariant failed.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from tqdm import tqdm

from loadtests.chaos.checks import paid_work
from loadtests.chaos.report import PaidWork
from loadtests.testbed import ensure_dev_secrets, local_config
from runtime.config import JoblineConfig, load_config
from runtime.invariants import check_invariants

TERMINAL = {"completed", "failed", "canceled"}
PROMPTS = ["a red fox", "a lighthouse at dusk", "a bowl of ramen", "a paper crane", "rain"]
OUTAGE_LONGEST = 30.0  # s: the outage ends then even if the vendor's circuit never opened
OUTAGE_AFTER_OPEN = 3.0  # s the outage goes on after the circuit opened: jobs fail over


@dataclass
class Submitted:
    job_id: str
    model: str
    submitted_at: float
    replayed: bool = False
    canceled: bool = False


@dataclass
class DemoLoad:
    base_url: str
    api_key: str
    rng: random.Random
    jobs: dict[str, Submitted] = field(default_factory=dict)
    final: dict[str, dict[str, Any]] = field(default_factory=dict)
    duplicates: int = 0
    cancels_sent: int = 0
    rejected: Counter[int] = field(default_factory=Counter)
    outage: float = 0.0  # s the outage lasted
    circuit_opened: float | None = None  # s into the outage the vendor's circuit opened

    def headers(self, key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if key:
            headers["Idempotency-Key"] = key
        return headers


async def run_demo(config_path: Path, *, jobs: int, profile: str, seed: int, data: Path) -> int:
    from actors.hosting import RayRuntime
    from vendors_fake.profile import load_profile
    from vendors_fake.runner import start_fake_vendors

    base = load_config(config_path)
    ensure_dev_secrets(base)
    await asyncio.to_thread(shutil.rmtree, data, True)
    await asyncio.to_thread(data.mkdir, parents=True)
    # The fakes count but do not enforce the limit, so the report shows jobline's own restraint.
    fault_profile = load_profile(profile).model_copy(update={"concurrency_limit": 10_000})
    fakes = await start_fake_vendors(base, fault_profile, ports="free", seed=seed)
    config = local_config(base, data, fakes.urls, overrides={"sweeper": {"interval": 5.0}})
    print(f"fake vendors ({profile}): " + ", ".join(f"{n} {u}" for n, u in fakes.urls.items()))
    print("starting the runtime on a local Ray ...", flush=True)
    started = time.monotonic()
    runtime = await asyncio.to_thread(RayRuntime.start, config, seed=seed)
    print(f"runtime up in {time.monotonic() - started:.1f}s at {config.gateway.public_url}")
    try:
        return await _drive(config, runtime, fakes, jobs=jobs, seed=seed)
    finally:
        await asyncio.to_thread(runtime.stop)
        await fakes.stop()


async def _drive(config: JoblineConfig, runtime: Any, fakes: Any, *, jobs: int, seed: int) -> int:
    base_url = config.gateway.public_url
    admin = {"Authorization": f"Bearer {config.gateway.admin_token()}"}
    models = list(config.models)
    price = max(m.price for m in config.models.values())
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base_url}/v1/accounts",
            json={"name": "demo", "credits": price * jobs * 2},
            headers=admin,
        ) as response:
            account = await response.json()
        load = DemoLoad(base_url, account["api_key"], random.Random(seed))
        started = time.monotonic()
        outage_vendor = _outage_target(config)
        submit = asyncio.create_task(_submit_all(http, load, models, jobs))
        outage = asyncio.create_task(
            _outage_midway(http, fakes, runtime, outage_vendor, load, jobs)
        )
        await submit
        await _wait_all(http, load, jobs)
        outage.cancel()
        elapsed = time.monotonic() - started
        dead = await _get(http, f"{base_url}/v1/admin/dead-letters", admin)
        entries = await _statement(http, base_url, load.headers())
        credits = await _get(http, f"{base_url}/v1/credits", load.headers())
    fake_stats = {name: fakes[name].snapshot() for name in config.vendors}
    processor_stats = {name: runtime.call(f"processor-{name}", "stats") for name in config.vendors}
    violations = check_invariants(config.storage.database)
    work = paid_work(config, fake_stats, processor_stats)
    _report(
        config,
        load,
        elapsed,
        dead,
        entries,
        credits,
        fake_stats,
        processor_stats,
        violations,
        outage_vendor,
        work,
    )
    return 1 if violations else 0


def _outage_target(config: JoblineConfig) -> str:
    """The vendor first on the most routes: its outage makes failover visible."""
    firsts = Counter(m.route[0].vendor for m in config.models.values() if len(m.route) > 1)
    return firsts.most_common(1)[0][0] if firsts else next(iter(config.vendors))


async def _submit_all(
    http: aiohttp.ClientSession, load: DemoLoad, models: list[str], total: int
) -> None:
    gate = asyncio.Semaphore(32)
    keys: list[tuple[str, dict[str, Any]]] = []

    async def one(i: int) -> None:
        async with gate:
            if keys and load.rng.random() < 0.08:  # a client retrying: same key, same body
                key, body = load.rng.choice(keys)
                replay = True
            else:
                model = models[i % len(models)]
                body = {"model": model, "input": {"prompt": f"{load.rng.choice(PROMPTS)} #{i}"}}
                key = f"demo-{i}"
                keys.append((key, body))
                replay = False
            async with http.post(
                f"{load.base_url}/v1/jobs", json=body, headers=load.headers(key)
            ) as response:
                answer = await response.json()
            if response.status != 202:
                load.rejected[response.status] += 1
                return
            if replay:
                load.duplicates += 1
                return
            load.jobs[answer["id"]] = Submitted(answer["id"], body["model"], time.time())
            if load.rng.random() < 0.05:
                await asyncio.sleep(load.rng.uniform(0, 0.5))
                await http.post(
                    f"{load.base_url}/v1/jobs/{answer['id']}/cancel", headers=load.headers()
                )
                load.cancels_sent += 1

    await asyncio.gather(*(one(i) for i in range(total)))


async def _outage_midway(
    http: aiohttp.ClientSession, fakes: Any, runtime: Any, vendor: str, load: DemoLoad, total: int
) -> None:
    """Once a third of the jobs are in and ``vendor`` runs some of them: it answers 503
    until its circuit opened (its processor's stats) and ``OUTAGE_AFTER_OPEN`` s more, at
    most ``OUTAGE_LONGEST``."""
    while len(load.jobs) < total // 3 or not fakes[vendor].snapshot()["tasks"]["in_flight"]:
        await asyncio.sleep(0.1)
    control = f"{fakes.urls[vendor]}/_control/outage"
    async with http.post(control, json={"duration": OUTAGE_LONGEST}):
        pass
    began = time.monotonic()
    try:
        while time.monotonic() - began < OUTAGE_LONGEST:
            stats = await asyncio.to_thread(runtime.call, f"processor-{vendor}", "stats")
            if stats["circuit"] != "closed":
                load.circuit_opened = time.monotonic() - began
                await asyncio.sleep(OUTAGE_AFTER_OPEN)
                break
            await asyncio.sleep(0.5)
    finally:
        load.outage = time.monotonic() - began
        async with http.post(control, json={"duration": 0}):
            pass


async def _wait_all(http: aiohttp.ClientSession, load: DemoLoad, total: int) -> None:
    gate = asyncio.Semaphore(32)

    async def poll(job_id: str) -> None:
        async with (
            gate,
            http.get(f"{load.base_url}/v1/jobs/{job_id}", headers=load.headers()) as response,
        ):
            job = await response.json()
        if job.get("status") in TERMINAL:
            load.final[job_id] = job

    # On a terminal, a progress bar (tqdm); elsewhere (a file, CI's log) nothing.
    with tqdm(total=len(load.jobs), unit="job", desc="ended", disable=None) as bar:
        while True:
            pending = [j for j in load.jobs if j not in load.final]
            bar.total = len(load.jobs)
            bar.update(len(load.final) - bar.n)
            by_status = Counter(job["status"] for job in load.final.values())
            bar.set_postfix_str("  ".join(f"{s} {n}" for s, n in sorted(by_status.items())))
            if not pending:
                break
            await asyncio.gather(*(poll(j) for j in pending))
            await asyncio.sleep(0.5)


async def _get(http: aiohttp.ClientSession, url: str, headers: dict[str, str]) -> Any:
    async with http.get(url, headers=headers) as response:
        return await response.json()


async def _statement(
    http: aiohttp.ClientSession, base_url: str, headers: dict[str, str]
) -> list[dict[str, Any]]:
    """Every credit entry of the account, a page at a time."""
    entries: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = await _get(http, f"{base_url}/v1/credits/entries?limit=200{cursor}", headers)
        entries += page["entries"]
        if not page.get("next_cursor"):
            return entries
        cursor = f"&cursor={page['next_cursor']}"


def _report(
    config: JoblineConfig,
    load: DemoLoad,
    elapsed: float,
    dead: Any,
    entries: Any,
    credits: Any,
    fake_stats: dict[str, dict[str, Any]],
    processor_stats: dict[str, dict[str, Any]],
    violations: list[Any],
    outage_vendor: str,
    work: list[PaidWork],
) -> None:
    by_status = Counter(job["status"] for job in load.final.values())
    latencies = sorted(
        job["updated_at"] - job["created_at"]
        for job in load.final.values()
        if job["status"] == "completed"
    )
    kinds = Counter(e["kind"] for e in entries)
    retries = sum(s["retries"] for s in processor_stats.values())
    failovers = sum(s["failovers"] for s in processor_stats.values())
    lines = [
        "",
        f"jobline demo: {len(load.jobs)} jobs in {elapsed:.1f}s "
        f"({load.duplicates} duplicate submits answered with the same job, "
        f"{load.cancels_sent} cancels sent, an outage of {outage_vendor} mid-run)",
        f"  outage of {outage_vendor}: {load.outage:.1f}s, "
        + (
            f"its circuit opened after {load.circuit_opened:.1f}s"
            if load.circuit_opened is not None
            else "its circuit never opened"
        ),
        "",
        "  jobs by final status   "
        + "  ".join(f"{s} {by_status.get(s, 0)}" for s in ("completed", "failed", "canceled")),
        f"  retries                {retries}",
        f"  failovers              {failovers}",
        f"  dead letters           {len(dead.get('dead_letters', dead))}",
        f"  refunds (releases)     {kinds.get('release', 0)}   captures {kinds.get('capture', 0)}"
        f"   holds {kinds.get('hold', 0)}",
        f"  credits                balance {credits['balance']}  held {credits['held']}"
        f"  available {credits['available']}",
    ]
    if latencies:
        p50 = statistics.median(latencies)
        p95 = latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))]
        lines.append(f"  end-to-end latency     p50 {p50:.2f}s  p95 {p95:.2f}s (completed jobs)")
    lines.append("  highest in flight      (as counted by the fake vendor)")
    for name, stats in fake_stats.items():
        limit = config.vendors[name].concurrency
        highest = stats["tasks"]["max_in_flight"]
        mark = "ok" if highest <= limit else "EXCEEDED"
        lines.append(f"    {name:<12} {highest:>3} / limit {limit:<3} {mark}")
    doubt: Counter[str] = Counter()
    for stats in processor_stats.values():
        doubt.update(stats.get("in_doubt") or {})
    lines.append(
        f"  submits in doubt       adopted {doubt['adopted']}  not created "
        f"{doubt['not_created']}  orphaned {doubt['orphaned']} (submit answers lost; orphaned: "
        "no task showed itself in time)"
    )
    lines.append("  wasted vendor work     (billed tasks whose output was thrown away)")
    lines.extend(_paid_work_line(w, processor_stats.get(w.vendor, {})) for w in work)
    if load.rejected:
        lines.append(f"  submits refused        {dict(load.rejected)}")
    verdict = "all held" if not violations else f"{len(violations)} VIOLATION(S)"
    lines.append(f"  invariants I1 I2 I5    {verdict}")
    lines.extend(f"    {v}" for v in violations[:20])
    print("\n".join(lines))


def _paid_work_line(work: PaidWork, stats: dict[str, Any]) -> str:
    """One vendor's waste next to the fake's own billable and delivered counts."""
    own = stats.get("wasted") or {}
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(own.items()) if n)
    wasted = work.wasted - work.late_orphans
    return (
        f"    {work.vendor:<12} {wasted} wasted + {work.late_orphans} late orphans "
        f"(fake: billable {work.billable}, delivered {work.delivered}; "
        f"jobline: {reasons or 'none'})"
    )
