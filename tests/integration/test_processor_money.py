"""Money on the real processor (``processor_rig``): what each vendor attempt costs the
operator (recorded per attempt, billed even when the job is refunded, exported), and the
refund policy (an input rejection keeps the fee and counts against the throttle)."""

from __future__ import annotations

import sqlite3

import pytest

from runtime.config import RouteStep
from runtime.errors import AccountThrottled
from runtime.models import FEE_NOTE, REFUND_LESS_FEE_NOTE
from runtime.states import JobStatus
from tests.integration.processor_rig import Rig, until


def charges(rig: Rig) -> list[tuple[str, int, str, str, int]]:
    with sqlite3.connect(rig.ledger.path) as conn:
        return conn.execute(
            "SELECT job_id, attempt, vendor, outcome, cost_micros FROM vendor_charges "
            "ORDER BY job_id, attempt"
        ).fetchall()


def samples(rig: Rig, vendor: str, name: str) -> dict[tuple[str, ...], float]:
    return {
        tuple(v for k, v in sorted(dict(sample.labels).items()) if k != "actor"): sample.value
        for family in rig.processors[vendor].metrics.collect()
        for sample in family.samples
        if sample.name == name and sample.value
    }


async def test_a_completed_job_records_what_its_attempt_cost(rig: Rig) -> None:
    jobs = await rig.open("flux-schnell", 2)
    await rig.dispatch(jobs)
    done = await rig.wait(jobs)
    assert {job.status for job in done} == {JobStatus.COMPLETED}
    cost = rig.config.models["flux-schnell"].route[0].cost_micros
    assert charges(rig) == sorted((job.id, 1, "fal", "succeeded", cost) for job in jobs)
    spent = samples(rig, "fal", "jobline_vendor_cost_total")
    assert spent == {("flux-schnell", "succeeded", "fal"): pytest.approx(2 * cost / 1e6)}


@pytest.mark.profile({"failure": 1.0})
async def test_a_failed_attempt_is_billed_and_the_retry_billed_again(rig: Rig) -> None:
    # video-short runs on replicate only: the first task fails at the vendor, the retry
    # succeeds; both ran, so both are billed, though the client pays once.
    [job] = await rig.open("video-short")
    await rig.dispatch([job])
    await until(lambda: any(c[3] == "failed" for c in charges(rig)))
    rig.fakes["replicate"].update_profile({"failure": 0.0})
    [done] = await rig.wait([job])
    assert done.status is JobStatus.COMPLETED
    cost = rig.config.models["video-short"].route[0].cost_micros
    outcomes = [(attempt, outcome) for _, attempt, _, outcome, _ in charges(rig)]
    assert outcomes[-1] == (done.attempts, "succeeded")
    assert {outcome for _, outcome in outcomes[:-1]} == {"failed"}
    assert all(c[4] == cost for c in charges(rig))
    assert (await rig.ledger.balance("acct")).balance == 10_000 - done.cost


@pytest.mark.profile({"rejection": 1.0})
@pytest.mark.overrides(
    {
        "refunds": {"input_rejected_fee_share": 0.34},
        "throttle": {"input_rejections": 3, "window": 600.0, "duration": 300.0},
    }
)
async def test_an_input_rejection_keeps_the_fee_is_billed_and_throttles_the_account(
    rig: Rig,
) -> None:
    jobs = await rig.open("flux-schnell", 3)  # price 3: a fee of 1 (0.34, rounded down)
    await rig.dispatch(jobs)
    done = await rig.wait(jobs)  # also checks I1 and I2 on the ledger file
    assert {job.status for job in done} == {JobStatus.FAILED}
    with sqlite3.connect(rig.ledger.path) as conn:
        settled = conn.execute(
            "SELECT job_id, kind, amount, note FROM credit_entries "
            "WHERE kind IN ('capture', 'release') ORDER BY job_id, kind"
        ).fetchall()
    assert settled == sorted(
        row
        for job in jobs
        for row in (
            (job.id, "capture", 1, FEE_NOTE),
            (job.id, "release", 2, REFUND_LESS_FEE_NOTE),
        )
    )
    assert (await rig.ledger.balance("acct")).available == 10_000 - 3
    assert {c[3] for c in charges(rig)} == {"rejected"}  # the vendor ran them: billed
    fees = samples(rig, "fal", "jobline_credits_total")
    assert fees[("fee",)] == 3 and fees[("released",)] == 6
    with pytest.raises(AccountThrottled):
        await rig.open("flux-schnell")


@pytest.mark.profile({"rejection": 1.0})
async def test_by_default_an_input_rejection_is_refunded_in_full(rig: Rig) -> None:
    jobs = await rig.open("flux-schnell", 2)
    await rig.dispatch(jobs)
    await rig.wait(jobs)
    assert (await rig.ledger.balance("acct")).available == 10_000
    assert samples(rig, "fal", "jobline_input_rejections_total") == {("flux-schnell",): 2}


@pytest.mark.overrides(
    {
        "refunds": {"input_rejected_fee_share": 0.34},
        "throttle": {"input_rejections": 1, "window": 600.0, "duration": 300.0},
        "models.flux-schnell": {
            "route": [RouteStep(vendor="fal", model="fal-ai/flux schnell", cost=0.003)]
        },
    }
)
async def test_a_vendor_model_name_that_cannot_exist_is_a_config_error_refunded_in_full(
    rig: Rig,
) -> None:
    # issue 13's leftover: the adapter refused the configured name as the job's input
    # (VendorInputRejected), so the user paid the input-rejected fee and was throttled
    # for the operator's typo.
    jobs = await rig.open("flux-schnell", 2)
    await rig.dispatch(jobs)
    done = await rig.wait(jobs)
    assert {job.status for job in done} == {JobStatus.FAILED}
    assert (await rig.ledger.balance("acct")).available == 10_000  # no fee kept
    with sqlite3.connect(rig.ledger.path) as conn:
        errors = [e for (e,) in conn.execute("SELECT error FROM dead_letters")]
    assert len(errors) == 2 and all(e.startswith("config error: ") for e in errors), errors
    assert charges(rig) == []  # nothing reached the vendor
    assert samples(rig, "fal", "jobline_config_errors_total") == {("flux-schnell", "fal"): 2}
    assert samples(rig, "fal", "jobline_input_rejections_total") == {}
    await rig.open("flux-schnell")  # not throttled
