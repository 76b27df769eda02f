"""The simulation's clients: one per arrival of the traffic model, speaking the HTTP API.

A client submits its job with an ``Idempotency-Key`` and, on ``429``, ``503`` or a gateway
that is restarting, sends the same request again after ``Retry-After``; some clients send
it again later anyway, or cancel their job (the traffic model says which). What they see
is checked as they see it: a key always names the same job (I5), a job of another account
is ``404`` and a forged webhook is refused (I6: probed every ``PROBE_EVERY`` jobs).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

from loadtests.sim.traffic import Arrival, Traffic
from loadtests.sim.world import ADMIN_TOKEN, ActorDown, World

MAX_TRIES = 8
PROBE_EVERY = 97  # jobs between two isolation probes
PROBE_AMONG = 50  # a probe asks for one of the latest jobs of another account
RETRY_STATUSES = frozenset({429, 503})


@dataclass
class ClientCounts:
    submitted: int = 0  # first submits sent
    accepted: int = 0  # jobs that got a 202
    repeats: int = 0  # submits sent again with the same key
    refused: dict[int, int] = field(default_factory=dict)  # final status -> jobs
    gave_up: int = 0  # no answer after every try
    cancels: int = 0
    cancel_answers: dict[int, int] = field(default_factory=dict)
    probes: int = 0


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    key: str


class Clients:
    def __init__(self, world: World, traffic: Traffic, rng: random.Random) -> None:
        self.world = world
        self.traffic = traffic
        self.rng = rng
        self.accounts: list[Account] = []
        self.counts = ClientCounts()
        self.jobs: dict[str, str] = {}  # idempotency key -> the job id it named (while its
        # client may still send it again)
        # (job id, account index) of the latest jobs, for the probes
        self.job_accounts: deque[tuple[str, int]] = deque(maxlen=PROBE_AMONG)
        self._tasks: set[asyncio.Task[None]] = set()

    async def create_accounts(self) -> None:
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"}
        for i in range(self.traffic.accounts):
            body = json.dumps({"name": f"sim-{i}", "credits": self.traffic.credits}).encode()
            reply = await self.world.http("POST", "/v1/accounts", admin, body)
            if reply.status != 201:
                raise RuntimeError(f"creating account {i}: {reply.status} {reply.body!r}")
            answer = reply.json()
            self.accounts.append(Account(answer["account_id"], answer["api_key"]))

    async def run(self, arrivals: Iterator[Arrival], on_arrival: object = None) -> None:
        """Start each client at its arrival time; return once every client is done."""
        clock = self.world.clock
        for arrival in arrivals:
            wait = arrival.at - clock.elapsed()
            if wait > 0:
                await clock.sleep(wait)
            task = asyncio.get_running_loop().create_task(self._client(arrival))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        while self._tasks:
            await asyncio.gather(*list(self._tasks))

    async def _client(self, arrival: Arrival) -> None:
        account = self.accounts[arrival.account]
        key = f"sim-{arrival.index}"
        body = json.dumps({"model": arrival.model, "input": arrival.input}).encode()
        self.counts.submitted += 1
        try:
            await self._follow(arrival, account, key, body)
        finally:
            self.jobs.pop(key, None)  # the only client that sends it is done

    async def _follow(self, arrival: Arrival, account: Account, key: str, body: bytes) -> None:
        job_id = await self._submit(account, key, body, arrival.index)
        if job_id is None:
            return
        self.counts.accepted += 1
        self.job_accounts.append((job_id, arrival.account))
        if arrival.index % PROBE_EVERY == PROBE_EVERY - 1:
            await self._probe(arrival.account)
        later = sorted(
            (after, what)
            for after, what in ((arrival.repeat_after, "repeat"), (arrival.cancel_after, "cancel"))
            if after is not None
        )
        clock = self.world.clock
        started = clock.elapsed()
        for after, what in later:
            await clock.sleep(started + after - clock.elapsed())
            if what == "repeat":
                self.counts.repeats += 1
                await self._submit(account, key, body, arrival.index)
            else:
                await self._cancel(account, job_id)

    async def _submit(self, account: Account, key: str, body: bytes, index: int) -> str | None:
        headers = {
            "Authorization": f"Bearer {account.key}",
            "Idempotency-Key": key,
            "Content-Type": "application/json",
        }
        status = 0
        for _ in range(MAX_TRIES):
            try:
                reply = await self.world.http("POST", "/v1/jobs", headers, body)
            except ActorDown:
                self.world.trace.add("submit", index, "gateway-down")
                await self.world.clock.sleep(1.0)
                continue
            status = reply.status
            if status == 202:
                job_id: str = reply.json()["id"]
                self.world.trace.add("submit", index, status, job_id)
                known = self.jobs.setdefault(key, job_id)
                if known != job_id:
                    self.world.watch.violation("I5", key, f"answered {known}, then {job_id}")
                return job_id
            self.world.trace.add("submit", index, status)
            if status not in RETRY_STATUSES:
                break
            await self.world.clock.sleep(_retry_after(reply.headers.get("Retry-After")))
        if status:
            self.counts.refused[status] = self.counts.refused.get(status, 0) + 1
        else:
            self.counts.gave_up += 1
        return None

    async def _cancel(self, account: Account, job_id: str) -> None:
        self.counts.cancels += 1
        headers = {"Authorization": f"Bearer {account.key}"}
        for _ in range(MAX_TRIES):
            try:
                reply = await self.world.http("POST", f"/v1/jobs/{job_id}/cancel", headers)
            except ActorDown:
                await self.world.clock.sleep(1.0)
                continue
            self.world.trace.add("cancel", job_id, reply.status)
            if reply.status not in RETRY_STATUSES:
                answers = self.counts.cancel_answers
                answers[reply.status] = answers.get(reply.status, 0) + 1
                if reply.status not in (200, 409):
                    self.world.watch.violation("I6", job_id, f"own cancel answered {reply.status}")
                return
            await self.world.clock.sleep(_retry_after(reply.headers.get("Retry-After")))

    async def _probe(self, me: int) -> None:
        """I6: another account's job is not found; a forged webhook changes nothing."""
        others = [(job, owner) for job, owner in self.job_accounts if owner != me]
        if not others:
            return
        self.counts.probes += 1
        job_id, _ = others[-1]
        headers = {"Authorization": f"Bearer {self.accounts[me].key}"}
        for path in (f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/cancel"):
            method = "GET" if path.endswith(job_id) else "POST"
            try:
                reply = await self.world.http(method, path, headers)
            except ActorDown:
                return
            if reply.status not in (404, 503):
                self.world.watch.violation(
                    "I6", job_id, f"{method} by another account answered {reply.status}"
                )
        vendor = self.rng.choice(sorted(self.world.config.vendors))
        forged = {
            "webhook-id": f"msg_forged_{job_id}",
            "webhook-timestamp": str(int(self.world.clock.time())),
            "webhook-signature": "v1,Zm9yZ2Vk",
            "X-Fal-Webhook-Request-Id": job_id,
            "X-Fal-Webhook-User-Id": "forger",
            "X-Fal-Webhook-Timestamp": str(int(self.world.clock.time())),
            "X-Fal-Webhook-Signature": "00" * 64,
            "Content-Type": "application/json",
        }
        body = json.dumps({"id": job_id, "request_id": job_id, "status": "succeeded"}).encode()
        try:
            reply = await self.world.http("POST", f"/v1/webhooks/{vendor}", forged, body)
        except ActorDown:
            return
        self.world.trace.add("probe", job_id, reply.status)
        if reply.status < 400:
            self.world.watch.violation("I6", vendor, f"a forged webhook answered {reply.status}")


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value or 1.0), 0.1), 60.0)
    except ValueError:
        return 1.0
