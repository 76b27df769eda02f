"""Case 5 (issue 13): the sweeper's periodic reads are bounded and its gauges come from
counters, not from loading rows (a real ledger; the sweeper as the wiring builds it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, cast

from actors.sweeper import Sweeper
from actors.wiring import SWEEPER, Ports, Wiring, build_role
from loadtests.testbed import ROOT_CONFIG
from runtime.config import load_config
from runtime.ledger import Ledger
from runtime.models import CreateAccount, Fail, OpenJob, Redrive
from runtime.ports import LedgerPort, ProcessorPort
from tests.ledger_ops import apply_op

LIST_CAP = 1000  # the most rows any one periodic read may return


class RecordingLedger:
    """The ledger, remembering every read the sweeper makes and its limit."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._ledger, name)

        async def call(*args: Any, **kwargs: Any) -> Any:
            self.calls.append((name, kwargs.get("limit")))
            return await method(*args, **kwargs)

        return call

    async def check_invariants(self) -> int:
        return 0


async def test_the_sweeper_counts_dead_letters_without_reading_them(tmp_path: Path) -> None:
    config = load_config(ROOT_CONFIG)
    ledger = await Ledger.open(tmp_path / "ledger.db")
    try:
        await apply_op(ledger, CreateAccount("acct", "hash", credits=10_000))
        now = time.time()
        for i in range(300):
            job = OpenJob(f"job-{i}", "acct", "flux-schnell", {}, 1, "t", "fal", now + 900)
            await apply_op(ledger, job)
            await apply_op(ledger, Fail(job.job_id, "boom"))
        await apply_op(ledger, Redrive("job-0", "job-0b", "t", now + 900))
        recording = RecordingLedger(ledger)
        ports = Ports(
            ledger=lambda: cast(LedgerPort, recording),
            processor=lambda vendor: cast(ProcessorPort, None),  # no job to hand over
            metric_sources=list,
            vendors=list(config.vendors),
        )
        sweeper = cast(Sweeper, build_role(SWEEPER, config, Wiring(seed=0), ports))
        await sweeper.sweep_once()
        [gauge] = [
            sample.value
            for family in sweeper.metrics.collect()
            for sample in family.samples
            if sample.name == "jobline_dead_letters_open"
        ]
        assert gauge == 299
        read = [name for name, _ in recording.calls]
        assert "dead_letters" not in read and "open_dead_letters" in read
        for name, limit in recording.calls:
            if name in ("expired_jobs", "jobs_by_status"):
                assert limit is None or limit <= LIST_CAP  # None: the ledger's default cap
        await sweeper.stop()
    finally:
        await ledger.close()
