"""The flooding-tenant Locust scenario, run for real (Locust in a subprocess) against the
whole runtime in this process: both runs happen, the quiet tenants' jobs all complete,
the flooder's jobs are accepted up to its cap, and the ledger's invariants hold.
Latency figures are ``python -m loadtests.flood``'s to report, never asserted here."""

from __future__ import annotations

from pathlib import Path

from loadtests.flood import JOB_ROW, flood, flood_testbed, read_rows


async def test_a_flooding_tenant_next_to_quiet_ones_runs_and_the_money_holds(
    tmp_path: Path,
) -> None:
    async with flood_testbed(tmp_path / "data", slots=2, mode="in-process") as tb:
        report = await flood(
            tb, tmp_path / "out", duration=6, tenants=2, flooders=3, flood_cap=40,
            quiet_timeout=60,
        )  # fmt: skip
    assert report.exits == {"baseline": 0, "flood": 0}, (tmp_path / "out").glob("*/locust.log")
    assert report.baseline.requests > 0 and report.baseline.failures == 0
    assert report.flood.requests > 0 and report.flood.failures == 0
    assert report.flooder_accepted > 0
    assert report.flooder_refused > 0  # its in-flight cap answered 429, and it waited
    assert report.quiet and report.violations == []
    # Where the quiet tenants' time went, from the ledger: every completed job of theirs.
    assert report.phases["baseline"].jobs >= report.baseline.requests
    assert report.phases["flood"].jobs >= report.flood.requests
    assert 0 < report.phases["flood"].at_vendor[0] <= report.phases["flood"].at_vendor[1]
    assert report.ok
    # The baseline ran the quiet tenants alone: no flood request in it.
    assert set(read_rows(tmp_path / "out" / "baseline")) >= {JOB_ROW}
    assert not any(name.startswith("flood") for name in read_rows(tmp_path / "out" / "baseline"))
