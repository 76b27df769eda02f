"""Locust: quiet tenants next to a flooding one (``python -m loadtests.flood`` runs it).

Two kinds of client, each an account of its own:

- ``QuietTenant``: one per quiet account (``fixed_count``: the number of tenants in the
  target). Every ``TENANT_PACE`` seconds it submits one job and polls it every
  ``TENANT_POLL`` seconds until it ends; ``tenant: submit to end`` times the whole job
  (its p95 is the figure: a flood must not move it).
- ``Flooder``: the flooding account, as many users as ``-u`` leaves over. Each submits
  jobs back to back, never reads them, and waits out each ``429``'s ``Retry-After``
  (its in-flight cap and submit rate, ``PUT /v1/accounts/{id}/limits``).

Run only ``QuietTenant`` for the baseline (user classes are Locust's positional
arguments). The target comes from the JSON file named by ``JOBLINE_LOADTEST_TARGET``:
``{"tenants": ["<api key>", ...], "flooder": "<api key>", "model": "<model>"}``::

    JOBLINE_LOADTEST_TARGET=flood.json locust -f loadtests/locust_flood.py --headless \\
        --host http://127.0.0.1:8080 -u 11 -t 60s QuietTenant Flooder
"""

from __future__ import annotations

import itertools
import json
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

from locust import FastHttpUser, constant, constant_pacing, task

TARGET_ENV = "JOBLINE_LOADTEST_TARGET"
TENANT_PACE = 2.0  # seconds between a quiet tenant's submits
TENANT_POLL = 0.1  # seconds between its status reads
JOB_PATIENCE = 120.0
RETRY_AFTER_CAP = 5.0
REFUSED_ROW = "flood: refused (429)"
TERMINAL = frozenset({"completed", "failed", "canceled", "expired"})


@dataclass(frozen=True)
class FloodTarget:
    tenants: list[str]  # the quiet accounts' API keys
    flooder: str
    model: str

    @classmethod
    def load(cls) -> FloodTarget:
        path = os.environ.get(TARGET_ENV)
        if not path:
            raise SystemExit(f"{TARGET_ENV} must name the target JSON file (see the docstring)")
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
        return cls(list(data["tenants"]), str(data["flooder"]), str(data["model"]))


TARGET = FloodTarget.load() if os.environ.get(TARGET_ENV) else None
_tenant_seq = itertools.count()


def _target() -> FloodTarget:
    if TARGET is None:
        raise SystemExit(f"{TARGET_ENV} must name the target JSON file")
    return TARGET


class QuietTenant(FastHttpUser):
    """One quiet account: a job every TENANT_PACE seconds, followed to its end."""

    fixed_count = len(TARGET.tenants) if TARGET is not None else 1
    wait_time = constant_pacing(TENANT_PACE)

    def on_start(self) -> None:
        target = _target()
        key = target.tenants[next(_tenant_seq) % len(target.tenants)]
        self.auth = {"Authorization": f"Bearer {key}"}
        self.body = {"model": target.model, "input": {"prompt": ""}}

    @task
    def one_job(self) -> None:
        started = time.perf_counter()
        body = {**self.body, "input": {"prompt": f"tenant {uuid.uuid4().hex[:12]}"}}
        with self.client.post(
            "/v1/jobs", json=body, headers=self.auth, name="tenant: POST /v1/jobs",
            catch_response=True,
        ) as response:  # fmt: skip
            if response.status_code != 202:
                response.failure(f"HTTP {response.status_code}")
                return
            job = response.json()
        error: Exception | None = None
        give_up_at = time.monotonic() + JOB_PATIENCE
        while job["status"] not in TERMINAL:
            if time.monotonic() > give_up_at:
                error = TimeoutError(f"job {job['id']} still {job['status']}")
                break
            time.sleep(TENANT_POLL)  # gevent's sleep: locust patches time
            with self.client.get(
                f"/v1/jobs/{job['id']}", headers=self.auth, name="tenant: GET /v1/jobs/{id}",
                catch_response=True,
            ) as response:  # fmt: skip
                if response.status_code != 200:
                    response.failure(f"HTTP {response.status_code}")
                    continue
                job = response.json()
        if error is None and job["status"] != "completed":
            error = RuntimeError(f"job {job['id']} {job['status']}")
        self.environment.events.request.fire(
            request_type="JOB",
            name="tenant: submit to end",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=0,
            exception=error,
            context={},
        )


class Flooder(FastHttpUser):
    """The flooding account: submits back to back, honouring 429's Retry-After."""

    wait_time = constant(0)

    def on_start(self) -> None:
        target = _target()
        self.auth = {"Authorization": f"Bearer {target.flooder}"}
        self.model = target.model

    @task
    def flood(self) -> None:
        body: dict[str, Any] = {"model": self.model, "input": {"prompt": uuid.uuid4().hex}}
        with self.client.post(
            "/v1/jobs", json=body, headers=self.auth, name="flood: POST /v1/jobs",
            catch_response=True,
        ) as response:  # fmt: skip
            if response.status_code == 202:
                return
            if response.status_code == 429:  # its limits at work: not a failure
                response.success()
                self.environment.events.request.fire(
                    request_type="429",
                    name=REFUSED_ROW,
                    response_time=0,
                    response_length=0,
                    exception=None,
                    context={},
                )
                raw = (response.headers or {}).get("Retry-After", "1")
                try:
                    time.sleep(min(float(raw), RETRY_AFTER_CAP))
                except ValueError:
                    time.sleep(1.0)
                return
            response.failure(f"HTTP {response.status_code}")
