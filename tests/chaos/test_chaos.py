"""The chaos suite inside ``make test``: a short subset, and proof that its checks can fail.

The whole suite (every scenario, three seeds) is ``make chaos``. Here a few scenarios run
with one seed on the session's Ray, and one runs against a deliberately broken build (a
processor that ignores its vendor's concurrency limit) to show the suite reports it.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from loadtests.chaos.checks import (
    LedgerJob,
    backoff_honoured,
    clients_against_ledger,
    paid_work_kept,
    wasted_work,
)
from loadtests.chaos.harness import run_scenario
from loadtests.chaos.load import ClientJob, Load, LoadSpec
from loadtests.chaos.scenarios import QUICK

pytestmark = pytest.mark.ray


@pytest.mark.parametrize("name", QUICK)
async def test_quick_scenario_holds_every_invariant(
    name: str, tmp_path: Path, ray_session: Any
) -> None:
    report = await run_scenario(name, 1, data=tmp_path)
    assert report.passed, report.render()
    assert report.accepted > 0
    assert report.completed + report.failed + report.canceled == report.accepted


async def test_a_processor_ignoring_its_slot_limit_is_reported(
    tmp_path: Path, ray_session: Any
) -> None:
    report = await run_scenario(
        "credit-exhaustion", 1, data=tmp_path, broken=frozenset({"ignore-slot-limit"})
    )
    assert not report.passed
    i4 = [v for v in report.violations if v.startswith("I4 fal")]
    assert i4, report.render()
    assert "limit 8" in i4[0]
    assert "--seed 1 --broken ignore-slot-limit" in report.replay
    assert "replay" in report.render()


async def test_a_processor_starting_tasks_twice_is_reported(
    tmp_path: Path, ray_session: Any
) -> None:
    report = await run_scenario(
        "credit-exhaustion", 2, data=tmp_path, broken=frozenset({"double-submit"})
    )
    assert not report.passed
    twice = [v for v in report.violations if "vendor tasks started for one attempt" in v]
    assert len(twice) == report.accepted, report.render()
    assert all(v.startswith("I5 job_") for v in twice)


def test_a_retry_sooner_than_retry_after_is_reported() -> None:
    history = [
        ("j1", "queued", 10.0, "opened"),
        ("j1", "queued", 10.1, "retry: fal: submit: HTTP 429: Request was throttled"),
        ("j1", "processing", 10.4, "fal task t (attempt 2)"),
        ("j2", "queued", 10.0, "opened"),
        ("j2", "queued", 10.1, "retry: fal: submit: HTTP 429: Request was throttled"),
        ("j2", "processing", 11.2, "fal task u (attempt 2)"),
        ("j3", "queued", 10.1, "retry: fal: submit: HTTP 429: Request was throttled"),
        ("j3", "queued", 10.2, "retry: failover from fal: circuit open"),
    ]
    found = list(backoff_honoured(history, 1.0))
    assert [v.subject for v in found] == ["j1"]


def test_paid_work_thrown_away_is_reported_and_late_orphans_apart() -> None:
    """I7 from the fakes' counts: a task that succeeded while its job was open and was
    not delivered breaks it; the client's cancels, the vendor's failures, tasks ending
    after their job and orphans whose answer was lost do not (orphans are counted apart);
    a task canceled after it started breaks it only where a scenario expects no waste."""
    jobs = {
        "j1": LedgerJob("j1", "completed", "fal", "t2", 2, 3),
        "j2": LedgerJob("j2", "canceled", "fal", "t3", 1, 3),
        "j3": LedgerJob("j3", "failed", "fal", None, 2, 3),
    }
    ends = {"j1": 10.0, "j2": 10.0, "j3": 10.0}

    def task(job: str, status: str, *, delivered: bool = False, **more: Any) -> dict[str, Any]:
        info = {"job_id": job, "attempt": "1", "billable": True, "delivered": delivered}
        return info | {"status": status, "ended_at": 5.0, "answer_lost": None} | more

    tasks = {
        "t1": task("j1", "succeeded"),  # thrown away: I7
        "t2": task("j1", "succeeded", delivered=True),
        "t3": task("j2", "canceled"),  # the client's cancel
        "t4": task("j1", "succeeded", answer_lost="hang"),  # a late orphan
        "t5": task("j3", "canceled"),  # canceled after it started: waste
        "t6": task("j3", "failed"),  # the vendor's failure
        "t7": task("j1", "succeeded", ended_at=12.0),  # after its job ended
        "t8": task("j1", "succeeded", billable=False),
    }
    fakes = {"fal": {"tasks": {"billable": 7, "delivered": 1}, "task_info": tasks}}
    assert [v.subject for v in paid_work_kept(fakes, jobs, ends)] == ["fal/t1"]
    strict = paid_work_kept(fakes, jobs, ends, strict=True)
    assert [v.subject for v in strict] == ["fal/t1", "fal/t5"]
    waste = wasted_work(fakes, jobs, ends)["fal"]
    assert (waste.billable, waste.delivered, waste.wasted, waste.late_orphans) == (7, 1, 3, 1)


def test_what_clients_saw_is_checked_against_the_ledger() -> None:
    load = Load("http://127.0.0.1:9", "key", LoadSpec(jobs=0), random.Random(0), "t")
    seen = {
        "moved": ["queued", "completed", "failed"],  # a terminal status changed
        "lost": ["queued"],  # answered 202, not in the ledger
        "open": ["queued", "processing"],  # never ended
        "fine": ["queued", "processing", "completed"],
    }
    for job_id, statuses in seen.items():
        client = ClientJob(f"key-{job_id}", {}, job_id=job_id)
        for status in statuses:
            client.observe(status)
        load.jobs.append(client)
    ledger = {
        "moved": LedgerJob("moved", "failed", "fal", "t1", 1, 3),
        "open": LedgerJob("open", "processing", "fal", "t2", 1, 3),
        "fine": LedgerJob("fine", "completed", "fal", "t3", 1, 3),
    }
    found = {(v.invariant, v.subject) for v in clients_against_ledger(load, ledger)}
    assert found == {("I5", "moved"), ("I3", "lost"), ("I3", "open")}
