"""dashboards/ against the real Prometheus (the Debian package ``prometheus``).

A jobline on local Ray serves a short, faulty load (retries, a vendor outage with
failovers, permanent rejections, forged webhooks) while Prometheus scrapes the
gateway's /metrics every second through dashboards/prometheus.yml (only the target and
intervals changed). Then every query of every dashboard panel must return data, and
every alert expression must be valid and name series that exist.

Prometheus is installed by ``make prometheus`` (which .ci/run calls). Without it the
test is skipped on a developer's machine and fails in CI (``CI`` set).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from loadtests.testbed import Testbed, free_port
from runtime.webhooks import signed_headers
from tests.unit.test_dashboards import (
    BOARDS,
    DASHBOARDS,
    alert_rules,
    load_board,
    metrics_in,
    panels,
)
from vendors_fake.profile import merge_profile, preset

SUBSTITUTIONS = {  # what Grafana puts in place of its variables, as plain PromQL
    "$__rate_interval": "1m",
    "$__range": "5m",
    '=~"$model"': '=~".*"',
    '=~"$vendor"': '=~".*"',
}
FAST: dict[str, dict[str, Any]] = {
    "retry": {"base": 0.05, "cap": 0.3},
    "sweeper": {"interval": 1.0},
    "circuit": {"cooldown": 2.0},
    "vendors.fal": {"poll_interval": 0.3},
    "vendors.replicate": {"poll_interval": 0.3},
}
FAULTY = {
    "run_time": {"kind": "uniform", "low": 0.1, "high": 0.8},
    "failure": 0.1,
    "rejection": 0.15,
    "submit": {"rate_limited": 0.1, "server_error": 0.05, "retry_after": 0.2},
    "webhooks": {"lost": 0.1, "bad_signature": 0.2},
}


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed (`make prometheus` installs the Debian package)"
        if os.environ.get("CI"):
            pytest.fail(f"{reason}; CI must run the Prometheus tests")
        pytest.skip(reason)
    return path


def promtool(*args: str) -> None:
    done = subprocess.run(
        [binary("promtool"), *args], cwd=DASHBOARDS, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_accepts_the_config_and_rules() -> None:
    promtool("check", "config", "prometheus.yml")
    promtool("check", "rules", "alerts.yml")


def test_the_alerts_fire_when_they_should_and_only_then() -> None:
    promtool("test", "rules", "alerts_test.yml")


# --- a real Prometheus scraping a real jobline --------------------------------------------


@dataclass
class Prometheus:
    url: str
    http: aiohttp.ClientSession

    async def query(self, expr: str) -> list[dict[str, Any]]:
        async with self.http.post(f"{self.url}/api/v1/query", data={"query": expr}) as response:
            body = await response.json()
        assert response.status == 200 and body["status"] == "success", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def get(self, path: str) -> Any:
        async with self.http.get(f"{self.url}{path}") as response:
            assert response.status == 200, await response.text()
            return (await response.json())["data"]


def prometheus_config(gateway: str, rules: Path) -> dict[str, Any]:
    """dashboards/prometheus.yml, scraping ``gateway`` every second."""
    config: dict[str, Any] = yaml.safe_load((DASHBOARDS / "prometheus.yml").read_text())
    config["global"] |= {"scrape_interval": "1s", "evaluation_interval": "1s"}
    config["rule_files"] = [str(rules)]
    (job,) = config["scrape_configs"]
    job |= {"scrape_interval": "1s", "scrape_timeout": "1s"}
    job["static_configs"][0]["targets"] = [gateway]
    return config


@contextlib.contextmanager
def running_prometheus(tmp: Path, gateway: str) -> Iterator[str]:
    tmp.mkdir()
    config = tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(gateway, DASHBOARDS / "alerts.yml")))
    address = f"127.0.0.1:{free_port()}"
    log = (tmp / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address={address}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield f"http://{address}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        await asyncio.sleep(0.25)


@pytest.fixture
async def scraped(tmp_path: Path, ray_session: Any) -> AsyncIterator[tuple[Testbed, Prometheus]]:
    binary("prometheus")
    profile = merge_profile(preset("calm"), FAULTY)
    async with (
        Testbed(tmp_path / "jobline", profile=profile, overrides=FAST) as tb,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http,
    ):
        gateway = f"127.0.0.1:{tb.config.gateway.port}"
        with running_prometheus(tmp_path / "prometheus", gateway) as url:
            prometheus = Prometheus(url, http)

            async def ready() -> bool:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}/-/ready") as response:
                        return response.status == 200
                return False

            await wait_until(ready, 30, "Prometheus ready")
            yield tb, prometheus


async def forge_webhook(tb: Testbed) -> None:
    body = b'{"id": "forged", "status": "succeeded", "output": null}'
    headers = signed_headers("whsec_Zm9yZ2VkLXNlY3JldA==", "msg_forged", int(time.time()), body)
    url = f"{tb.client.base_url}/v1/webhooks/replicate"
    async with tb.client.http.post(url, data=body, headers=headers) as response:
        assert response.status == 401


async def run_load(tb: Testbed) -> None:
    """A few dozen jobs through retries, an outage of fal (failovers), rejections."""
    tb.fakes["fal"].start_outage(3.0)

    async def submit(model: str, i: int) -> str:
        status, job = await tb.client.submit(model, {"prompt": f"load {i}"})
        assert status == 202, job
        return str(job["id"])

    models = ["flux-schnell"] * 16 + ["sdxl"] * 16 + ["video-short"] * 4
    ids = await asyncio.gather(*(submit(model, i) for i, model in enumerate(models)))
    await forge_webhook(tb)
    jobs = await tb.client.wait_all(list(ids), timeout=60)
    statuses = {job["status"] for job in jobs.values()}
    assert "completed" in statuses and "failed" in statuses, statuses


def substitute(expr: str) -> str:
    for variable, value in SUBSTITUTIONS.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable left in {expr!r}"
    return expr


def label_values_query(definition: str) -> str:
    """Grafana's ``label_values(metric, label)`` as the PromQL that answers it."""
    metric, label = definition.removeprefix("label_values(").removesuffix(")").split(", ")
    return f"count by ({label}) ({metric})"


@pytest.mark.ray
async def test_every_dashboard_query_and_alert_on_a_real_prometheus(
    scraped: tuple[Testbed, Prometheus],
) -> None:
    tb, prometheus = scraped
    await run_load(tb)

    async def every_actor_scraped() -> bool:
        # One target, and every actor's series in it: the gateway collects them over Ray.
        counted = await prometheus.query("count by (actor) (jobline_actor_up)")
        actors = {sample["metric"]["actor"] for sample in counted}
        expected = {"ledger", "sweeper", "processor-fal", "processor-replicate"}
        expected |= {f"gateway-{i}" for i in range(tb.config.gateway.replicas)}
        return actors == expected and bool(await prometheus.query("jobline_failovers_total"))

    await wait_until(every_actor_scraped, 20, "every actor's metrics in Prometheus")
    await asyncio.sleep(2.5)  # a few more scrapes after the last job ended, for rate()
    targets = (await prometheus.get("/api/v1/targets"))["activeTargets"]
    assert [t["health"] for t in targets] == ["up"], targets

    empty = []
    for path in BOARDS:
        board = load_board(path)
        for panel in panels(board):
            for target in panel.get("targets", []):
                if not await prometheus.query(substitute(target["expr"])):
                    empty.append(f"{path.name}: {panel['title']}: {target['expr']}")
        for variable in board["templating"]["list"]:
            if variable["type"] == "query":
                query = label_values_query(variable["definition"])
                if not await prometheus.query(query):
                    empty.append(f"{path.name}: variable {variable['name']}: {query}")
    assert empty == [], "dashboard queries without data:\n" + "\n".join(empty)

    missing = []
    for rule in alert_rules():
        await prometheus.query(rule["expr"])  # valid PromQL (may be empty: nothing is wrong)
        for metric in metrics_in(rule["expr"]):
            if not await prometheus.query(f"count({metric})"):
                missing.append(f"{rule['alert']}: {metric}")
    assert missing == [], "alert rules naming series that do not exist: " + json.dumps(missing)

    async def rules_evaluated() -> bool:
        groups = (await prometheus.get("/api/v1/rules"))["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return len(rules) == len(alert_rules()) and all(r["evaluationTime"] > 0 for r in rules)

    await wait_until(rules_evaluated, 10, "Prometheus evaluated every rule")
    groups = (await prometheus.get("/api/v1/rules"))["groups"]
    unhealthy = [
        (r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"
    ]
    assert unhealthy == []
    violations = await prometheus.query("max(jobline_invariant_violations)")
    assert violations[0]["value"][1] == "0"
