"""The load of a chaos scenario: clients driving the real HTTP API the way real clients do.

Every job is one client: it submits with its own ``Idempotency-Key`` and, on anything
that is not an answer (a reset connection, a timeout, a 5xx, a 429), submits again with
the same key and body until it gets one. Some clients submit once more after their
``202`` (a retry after a lost answer) and must get the same job back. Some cancel.
Then each follows its job by polling (every status it sees is recorded) until the job
is terminal; a few follow it over server-sent events as well. What the clients saw is
the evidence for the checks that do not trust the ledger: every ``202`` job must be in
it, and no terminal status may ever change.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

TERMINAL = frozenset({"completed", "failed", "canceled"})
PROMPTS = ("a red fox", "a lighthouse at dusk", "a bowl of ramen", "a paper crane", "rain")


@dataclass
class ClientJob:
    """One client's job as the client saw it."""

    key: str
    body: dict[str, Any]
    job_id: str | None = None
    answers: Counter[str] = field(default_factory=Counter)  # HTTP status or error kind
    observed: list[str] = field(default_factory=list)  # statuses seen, in order (changes only)
    events: list[str] = field(default_factory=list)  # SSE statuses, in order
    cancel_sent: bool = False
    refused: int | None = None  # a final 4xx answer (402, 422, ...)

    def observe(self, status: str) -> None:
        if not self.observed or self.observed[-1] != status:
            self.observed.append(status)


@dataclass
class LoadSpec:
    jobs: int = 60
    models: Sequence[str] = ("flux-schnell", "sdxl")
    concurrency: int = 24  # clients submitting at once
    spread: float = 3.0  # seconds over which the submits start
    replay_rate: float = 0.1  # submit again with the same key after the 202
    cancel_rate: float = 0.0
    cancel_delay: tuple[float, float] = (0.0, 1.0)
    sse_sample: int = 3  # jobs also followed over server-sent events
    poll_interval: float = 0.5
    give_up_after: float = 120.0  # a client stops retrying its submit after this


@dataclass
class Load:
    base_url: str
    api_key: str
    spec: LoadSpec
    rng: random.Random
    tag: str
    jobs: list[ClientJob] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # contradictions the clients saw
    accepted_event: asyncio.Event = field(default_factory=asyncio.Event)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        for i in range(self.spec.jobs):
            model = self.spec.models[i % len(self.spec.models)]
            prompt = f"{self.rng.choice(PROMPTS)} #{i}"
            self.jobs.append(
                ClientJob(f"{self.tag}-{i}", {"model": model, "input": {"prompt": prompt}})
            )

    @property
    def accepted(self) -> list[ClientJob]:
        return [j for j in self.jobs if j.job_id is not None]

    def accepted_count(self) -> int:
        return sum(1 for j in self.jobs if j.job_id is not None)

    async def wait_accepted(self, share: float, timeout: float = 60.0) -> None:
        """Until ``share`` of the jobs got their 202 (or ``timeout``): 'mid-load'."""
        target = max(1, int(share * len(self.jobs)))
        deadline = time.monotonic() + timeout
        while self.accepted_count() < target and time.monotonic() < deadline:
            if all(j.job_id is not None or j.refused is not None for j in self.jobs):
                return
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()

    # --- the clients ------------------------------------------------------------------------

    async def run(self, http: aiohttp.ClientSession) -> None:
        """Submit every job and follow it until terminal (or until :meth:`stop`)."""
        gate = asyncio.Semaphore(self.spec.concurrency)
        plans = [
            (
                self.rng.uniform(0, self.spec.spread),
                self.rng.random() < self.spec.replay_rate,
                self.rng.random() < self.spec.cancel_rate,
                self.rng.uniform(*self.spec.cancel_delay),
                i < self.spec.sse_sample,
            )
            for i in range(len(self.jobs))
        ]
        await asyncio.gather(
            *(
                self._client(http, gate, job, *plan)
                for job, plan in zip(self.jobs, plans, strict=True)
            )
        )

    async def _client(
        self,
        http: aiohttp.ClientSession,
        gate: asyncio.Semaphore,
        job: ClientJob,
        start_in: float,
        replay: bool,
        cancel: bool,
        cancel_delay: float,
        sse: bool,
    ) -> None:
        await asyncio.sleep(start_in)
        async with gate:
            await self._submit(http, job)
            if job.job_id is not None and replay:
                first = job.job_id
                await self._submit(http, job)
                if job.job_id != first:
                    self.problems.append(
                        f"I5 key {job.key}: a replayed submit answered {job.job_id}, not {first}"
                    )
        if job.job_id is None:
            return
        self.accepted_event.set()
        follow = [self._poll(http, job)]
        if sse:
            follow.append(self._follow_events(http, job))
        if cancel:
            follow.append(self._cancel(http, job, cancel_delay))
        await asyncio.gather(*follow)

    def _headers(self, key: str | None = None) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {self.api_key}"}
        if key is not None:
            headers["Idempotency-Key"] = key
        return headers

    async def _submit(self, http: aiohttp.ClientSession, job: ClientJob) -> None:
        deadline = time.monotonic() + self.spec.give_up_after
        tries = 0
        while time.monotonic() < deadline and not self._stop.is_set():
            tries += 1
            wait = min(0.1 * 2**tries, 1.0) * self.rng.uniform(0.5, 1.0)
            try:
                async with http.post(
                    self.base_url + "/v1/jobs", json=job.body, headers=self._headers(job.key)
                ) as response:
                    status = response.status
                    job.answers[str(status)] += 1
                    answer: Any = await response.json(content_type=None)
                    if status == 429:
                        wait = min(float(response.headers.get("Retry-After", "1")), 2.0)
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
                job.answers[type(exc).__name__] += 1
                await asyncio.sleep(wait)
                continue
            if status == 202:
                job_id = str(answer["id"])
                if job.job_id is not None and job.job_id != job_id:
                    self.problems.append(
                        f"I5 key {job.key}: answered with two jobs, {job.job_id} and {job_id}"
                    )
                job.job_id = job.job_id or job_id
                job.observe(str(answer["status"]))
                return
            if status == 429 or status >= 500:
                await asyncio.sleep(wait)
                continue
            job.refused = status
            return
        job.answers["gave_up"] += 1

    async def _poll(self, http: aiohttp.ClientSession, job: ClientJob) -> None:
        while not self._stop.is_set():
            await self.observe(http, job)
            if job.observed and job.observed[-1] in TERMINAL:
                return
            await asyncio.sleep(self.spec.poll_interval * self.rng.uniform(0.8, 1.2))

    async def observe(self, http: aiohttp.ClientSession, job: ClientJob) -> None:
        """One GET of the job; records its status (errors are ignored: try again later)."""
        assert job.job_id is not None
        try:
            async with http.get(
                f"{self.base_url}/v1/jobs/{job.job_id}", headers=self._headers()
            ) as response:
                if response.status != 200:
                    if response.status == 404:
                        self.problems.append(f"I3 job {job.job_id}: 404 after its 202")
                    return
                body = await response.json()
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError):
            return
        job.observe(str(body["status"]))

    async def observe_all(self, http: aiohttp.ClientSession) -> None:
        gate = asyncio.Semaphore(16)

        async def one(job: ClientJob) -> None:
            async with gate:
                await self.observe(http, job)

        await asyncio.gather(*(one(j) for j in self.accepted))

    async def _cancel(self, http: aiohttp.ClientSession, job: ClientJob, delay: float) -> None:
        await asyncio.sleep(delay)
        for _ in range(20):
            try:
                async with http.post(
                    f"{self.base_url}/v1/jobs/{job.job_id}/cancel", headers=self._headers()
                ) as response:
                    await response.read()
                    job.cancel_sent = True
                    if response.status < 500:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)

    async def _follow_events(self, http: aiohttp.ClientSession, job: ClientJob) -> None:
        """Server-sent events until the terminal one; reconnects with Last-Event-ID."""
        last_id = ""
        while not self._stop.is_set():
            headers = self._headers()
            if last_id:
                headers["Last-Event-ID"] = last_id
            try:
                async with http.get(
                    f"{self.base_url}/v1/jobs/{job.job_id}/events",
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_read=30),
                ) as response:
                    if response.status != 200:
                        await asyncio.sleep(0.5)
                        continue
                    async for raw in response.content:
                        line = raw.decode().strip()
                        if line.startswith("id:"):
                            last_id = line[3:].strip()
                        elif line.startswith("data:"):
                            data = json.loads(line[5:])
                            job.events.append(str(data["status"]))
                            if data["status"] in TERMINAL:
                                return
            except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError, ValueError):
                pass
            if job.events and job.events[-1] in TERMINAL:
                return
            await asyncio.sleep(0.3)
