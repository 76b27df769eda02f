"""A webhook about a task its processor follows costs no ledger call of its own: its
receipt is written in the same call (one batch, one transaction) as the write it brought
about, and a repeat is still applied at most once."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, cast

import pytest

from runtime.ledger import Ledger
from runtime.models import Complete, LedgerOp, Outcome, RecordWebhook
from runtime.ports import LedgerPort
from tests.integration.processor_rig import Rig

SLOW_POLLS = {"vendors.fal": {"poll_interval": 30.0}}  # the webhook is what ends the wait


class RecordedLedger:
    """The rig's ledger, keeping the operations of every ``execute_many`` call."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.calls: list[list[LedgerOp]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    async def execute_many(self, ops: Sequence[LedgerOp]) -> list[Outcome]:
        self.calls.append(list(ops))
        return await self._ledger.execute_many(ops)


async def _with_recorded_ledger(rig: Rig) -> RecordedLedger:
    recorded = RecordedLedger(rig.ledger)
    await rig.processors["fal"].stop()
    rig.processors["fal"] = rig.make_processor("fal", ledger=cast(LedgerPort, recorded))
    await rig.processors["fal"].start()
    return recorded


def _receipts(rig: Rig) -> set[tuple[str, str]]:
    with sqlite3.connect(rig.ledger.path) as conn:
        return {
            (r[0], r[1]) for r in conn.execute("SELECT vendor, webhook_id FROM webhook_receipts")
        }


@pytest.mark.overrides(SLOW_POLLS)
@pytest.mark.profile(
    {"run_time": {"kind": "fixed", "seconds": 0.3}, "webhooks": {"duplicated": 1.0}}
)
async def test_a_followed_tasks_webhook_rides_with_the_complete_and_its_repeat_is_dropped(
    rig: Rig,
) -> None:
    recorded = await _with_recorded_ledger(rig)
    jobs = await rig.open("flux-schnell", n=3)
    await rig.dispatch(jobs)
    done = await rig.wait(jobs, timeout=20)  # long before the first poll: by webhook
    assert [job.status.value for job in done] == ["completed"] * 3

    ids = {webhook_id for webhook_id, _ in rig.answers}
    assert len(ids) == 3 and _receipts(rig) == {("fal", i) for i in ids}
    for webhook_id in ids:  # sent twice each: taken once, then a duplicate or recorded
        answers = [a for w, a in rig.answers if w == webhook_id]
        assert answers.count("taken") == 1 and len(answers) == 2
    # Every receipt went in the call of its job's Complete: none cost a call of its own.
    for call in recorded.calls:
        receipts = [op for op in call if isinstance(op, RecordWebhook)]
        completes = [op for op in call if isinstance(op, Complete)]
        assert len(receipts) <= len(completes), call
    assert sum(isinstance(op, RecordWebhook) for c in recorded.calls for op in c) == 3

    # The processor has let the jobs go: a repeat now is not taken there, and the
    # ledger (where the gateway records what is not taken) knows it already.
    event = rig.relayed[0]
    assert await rig.processors["fal"].take_webhooks([event]) == [""]
    (outcome,) = await rig.ledger.execute_many([RecordWebhook("fal", event.webhook_id)])
    assert outcome.unwrap() is False
