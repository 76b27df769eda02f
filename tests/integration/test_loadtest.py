"""The Locust scenarios, run for real (a subprocess: Locust patches with gevent) on local Ray.

A few seconds of every client against a Testbed whose fakes enforce the vendors'
limits; then what Locust recorded and what the ledger holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from loadtests.run import loadtest
from loadtests.testbed import Testbed

pytestmark = pytest.mark.ray

SCENARIO_ROUTES = {
    "poll": ["poll: POST /v1/jobs", "poll: GET /v1/jobs/{id}", "poll: GET /v1/jobs/{id}/result"],
    "sse": ["sse: POST /v1/jobs", "sse: GET /v1/jobs/{id}/events", "sse: until terminal"],
    "retry": ["retry: POST /v1/jobs (impatient, timed out)", "retry: POST /v1/jobs"],
    "history": ["history: GET /v1/jobs?status=processing"],
    "webhooks": [
        "webhooks: forged signature",
        "webhooks: stale timestamp",
        "webhooks: signed (first delivery)",
        "webhooks: signed (replayed)",
    ],
}
FAST = {"vendors.fal": {"poll_interval": 0.3}, "vendors.replicate": {"poll_interval": 0.3}}


async def test_every_scenario_runs_and_the_invariants_hold(
    tmp_path: Path, ray_session: Any
) -> None:
    async with Testbed(tmp_path / "data", fake_limit=None, overrides=FAST) as tb:
        report = await loadtest(tb, tmp_path / "out", duration=7, users=6, quiet_timeout=30)
        assert report.locust_exit == 0, (tmp_path / "out" / "locust.log").read_text()[-3000:]

        for scenario, names in SCENARIO_ROUTES.items():
            for name in names:
                row = report.row(name)
                assert row is not None and row.requests > 0, f"{scenario}: no {name!r} requests"
        assert report.failures == [], report.failures
        assert report.total is not None and report.total.failures == 0

        # The forged and stale ones were refused (each row fails unless it got 401) and
        # changed nothing: the gateway counted them as rejections.
        forged = report.row("webhooks: forged signature")
        stale = report.row("webhooks: stale timestamp")
        assert forged is not None and stale is not None
        status, metrics = await tb.client.request("GET", "/metrics")
        assert status == 200
        rejected = _sum_samples(metrics.decode(), "jobline_webhook_rejections_total")
        assert rejected >= forged.requests + stale.requests

        assert report.quiet, report.jobs
        assert report.jobs["completed"] > 0
        assert report.violations == []
        assert report.limits_held, report.vendors
        assert not any(v["duplicate_attempts"] for v in report.vendors.values())
        assert report.ok
        assert (tmp_path / "out" / "report.html").stat().st_size > 0


def _sum_samples(exposition: str, name: str) -> float:
    total = 0.0
    for line in exposition.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            total += float(line.rsplit(" ", 1)[1])
    return total
