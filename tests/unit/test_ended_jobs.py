"""A gateway's memory of ended jobs: only ended jobs, and a body only for the very job
kept (an ended job never changes, so its rendered answer never does either)."""

from __future__ import annotations

import dataclasses
import json

from runtime.api.context import EndedJobs
from runtime.models import Job
from runtime.states import JobStatus


def job(job_id: str, status: JobStatus, **changes: object) -> Job:
    base = Job(
        id=job_id,
        account_id="acct_1",
        model="flux-schnell",
        input={"prompt": "a fox"},
        status=status,
        cost=10,
        trace_id="0" * 31 + "1",
        route_position=0,
        vendor="fal",
        vendor_task_id=None,
        attempts=1,
        vendor_attempts=1,
        not_before=0.0,
        deadline=100.0,
        result_key=None,
        error=None,
        idempotency_key=None,
        redriven_from=None,
        created_at=1.0,
        updated_at=2.0,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def test_a_job_not_ended_is_never_kept_nor_given_a_body() -> None:
    ended = EndedJobs()
    for status in (JobStatus.QUEUED, JobStatus.PROCESSING):
        live = job("job_live", status)
        ended.keep(live)
        assert ended.get("job_live") is None
        assert ended.body(live) is None
    assert len(ended) == 0


def test_an_ended_job_s_body_is_its_api_answer_rendered_once() -> None:
    ended = EndedJobs()
    done = job("job_1", JobStatus.FAILED, error="vendor refused")
    ended.keep(done)
    body = ended.body(done)
    assert body is not None and json.loads(body) == done.to_api()
    assert ended.body(done) is body  # the same bytes, not rendered again


def test_a_body_is_only_for_the_job_object_kept() -> None:
    """Another copy under the same id (e.g. a live read racing the end) gets no body, and
    keeping a new copy drops the old copy's body."""
    ended = EndedJobs()
    first = job("job_1", JobStatus.CANCELED)
    ended.keep(first)
    assert ended.body(first) is not None
    other = job("job_1", JobStatus.QUEUED)
    assert ended.body(other) is None
    again = job("job_1", JobStatus.CANCELED, updated_at=3.0)
    ended.keep(again)
    assert ended.body(first) is None
    body = ended.body(again)
    assert body is not None and json.loads(body)["updated_at"] == 3.0


def test_a_job_pushed_out_takes_its_body_with_it() -> None:
    ended = EndedJobs(capacity=2)
    jobs = [job(f"job_{n}", JobStatus.CANCELED) for n in range(3)]
    for each in jobs:
        ended.keep(each)
        ended.body(each)
    assert ended.get("job_0") is None and ended.body(jobs[0]) is None
    assert len(ended._bodies) == 2  # no body outlives its job: memory stays bounded
