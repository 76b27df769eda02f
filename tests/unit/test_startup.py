"""What `jobline serve` checks before Ray starts, and the ledger actor's opening and closing.

Every problem is named at once, one line each, never with a secret's value; the
command exits in about the time Python takes to start (no Ray is imported).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from actors.hosting import start_with_retries
from actors.ledger import CreditLedger
from loadtests.testbed import ROOT_CONFIG
from runtime.clock import SYSTEM_CLOCK
from runtime.config import parse_config
from runtime.errors import ConfigError, DeploymentError, LedgerMissing
from runtime.models import CreateAccount
from runtime.startup import ledger_problems, missing_environment, path_problems, resolve_paths
from runtime.telemetry import JsonFormatter, Metrics, configure_logging, is_notice, readable
from tests.unit.test_config import default_raw
from tests.unit.test_invariants import foreign_files

JOBLINE = Path(sys.executable).parent / "jobline"
SECRET_NAMES = (
    "JOBLINE_ADMIN_TOKEN",
    "FAL_KEY",
    "REPLICATE_API_TOKEN",
    "REPLICATE_WEBHOOK_SECRET",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
)


def with_s3(raw: dict[str, Any]) -> dict[str, Any]:
    raw["storage"] = {
        **raw["storage"],
        "result_store": "s3",
        "s3": {"bucket": "jobline-results", "endpoint_url": "http://127.0.0.1:9"},
    }
    return raw


# --- the config: every wrong key at once --------------------------------------------------


def test_a_config_with_several_wrong_keys_names_every_one() -> None:
    raw = default_raw()
    raw["vendors"]["fal"]["concurrency"] = 0
    raw["gateway"]["prot"] = 8080
    raw["retry"]["factor"] = 0.5
    raw["models"]["sdxl"]["route"][0]["vendor"] = "runway"  # checked once the rest is valid
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="jobline.toml")
    assert info.value.lines() == [
        "jobline.toml: gateway.prot: unknown key",
        "jobline.toml: retry.factor: must be ≥ 1.0, got 0.5",
        "jobline.toml: vendors.fal.concurrency: must be ≥ 1, got 0",
    ]
    raw["vendors"]["fal"]["concurrency"] = 8
    del raw["gateway"]["prot"]
    raw["retry"]["factor"] = 2
    raw["models"]["flux-schnell"]["route"][1]["vendor"] = "midjourney"
    with pytest.raises(ConfigError) as info:
        parse_config(raw, source="jobline.toml")
    assert [key for key, _ in info.value.problems] == [
        "models.flux-schnell.route[1].vendor",
        "models.sdxl.route[0].vendor",
    ]


def test_cluster_placement_keys_are_validated() -> None:
    raw = default_raw()
    raw["ray"]["ledger_resource"] = "CPU"
    raw["ray"]["start_attempts"] = 0
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert [key for key, _ in info.value.problems] == ["ray.ledger_resource", "ray.start_attempts"]


# --- the environment and the paths --------------------------------------------------------


def test_every_missing_secret_is_named_once_with_the_key_that_names_it() -> None:
    config = parse_config(with_s3(default_raw()))
    lines = missing_environment(config, {"FAL_KEY": "set", "REPLICATE_API_TOKEN": ""})
    assert lines == [
        "JOBLINE_ADMIN_TOKEN is not set (gateway.admin_token_env names it)",
        "REPLICATE_API_TOKEN is not set (vendors.replicate.api_key_env names it)",
        "REPLICATE_WEBHOOK_SECRET is not set (vendors.replicate.webhook_secret_env names it)",
        "AWS_ACCESS_KEY_ID is not set (storage.s3.access_key_id_env names it)",
        "AWS_SECRET_ACCESS_KEY is not set (storage.s3.secret_access_key_env names it)",
    ]
    everything = {name: "x" for name in SECRET_NAMES}
    assert missing_environment(config, everything) == []


def test_relative_paths_are_refused_for_a_cluster_and_resolved_once_on_one_machine(
    tmp_path: Path,
) -> None:
    raw = default_raw()
    raw["logging"] = {"file": "logs/jobline.jsonl"}
    config = parse_config(raw)
    assert [key for key, _ in path_problems(config)] == [
        "storage.database",
        "storage.results",
        "logging.file",
    ]
    resolved = resolve_paths(config, tmp_path)
    assert resolved.storage.database == tmp_path / "data" / "jobline.db"
    assert resolved.logging.file == tmp_path / "logs" / "jobline.jsonl"
    assert path_problems(resolved) == []
    assert resolve_paths(resolved, Path("/elsewhere")) == resolved


# --- the command: fast, every line at once ------------------------------------------------


def run_serve(tmp_path: Path, *args: str, config: Path = ROOT_CONFIG) -> tuple[int, str, float]:
    env = {k: v for k, v in os.environ.items() if k not in SECRET_NAMES}
    started = time.monotonic()
    done = subprocess.run(
        [str(JOBLINE), "--config", str(config), "serve", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return done.returncode, done.stdout + done.stderr, time.monotonic() - started


def test_serve_names_every_missing_variable_at_once_and_exits_before_ray(tmp_path: Path) -> None:
    code, output, seconds = run_serve(tmp_path)
    assert code == 2
    lines = output.strip().splitlines()
    assert lines == [
        "jobline: JOBLINE_ADMIN_TOKEN is not set (gateway.admin_token_env names it)",
        "jobline: FAL_KEY is not set (vendors.fal.api_key_env names it)",
        "jobline: REPLICATE_API_TOKEN is not set (vendors.replicate.api_key_env names it)",
        "jobline: REPLICATE_WEBHOOK_SECRET is not set "
        "(vendors.replicate.webhook_secret_env names it)",
    ]
    assert seconds < 10  # about Python's own start-up; Ray is never imported
    assert not (tmp_path / "data").exists()


def test_serve_names_every_wrong_key_of_the_file(tmp_path: Path) -> None:
    text = ROOT_CONFIG.read_text()
    text = text.replace("concurrency = 8", "concurrency = 0").replace("base = 1.0", "base = -1")
    text = text.replace('result_store = "directory"', 'result_store = "ftp"')
    broken = tmp_path / "jobline.toml"
    broken.write_text(text)
    code, output, _ = run_serve(tmp_path, config=broken)
    assert code == 2
    assert output.strip().splitlines() == [
        f"jobline: {broken}: storage.result_store: must be one of 'directory' or 's3', got 'ftp'",
        f"jobline: {broken}: retry.base: must be > 0.0, got -1",
        f"jobline: {broken}: vendors.fal.concurrency: must be ≥ 1, got 0",
    ]


def test_serve_dev_prints_the_admin_token_it_made_up(tmp_path: Path) -> None:
    code, output, _ = run_serve(tmp_path, "--dev", "--detach")
    assert code == 2  # --detach wants a cluster: the checks stop it before Ray
    (line,) = [line for line in output.splitlines() if "admin token" in line]
    token = line.rsplit(" ", 1)[1]
    assert line.startswith("jobline: --dev: JOBLINE_ADMIN_TOKEN was not set") and len(token) >= 24
    assert "--detach needs a Ray cluster" in output


def test_a_relative_path_is_refused_before_joining_a_cluster(tmp_path: Path) -> None:
    code, output, _ = run_serve(tmp_path, "--address", "127.0.0.1:9")
    assert code == 2
    assert f"{ROOT_CONFIG}: storage.database: must be an absolute path on a Ray cluster" in output
    assert "storage.results" in output


# --- Ray start-up: retried when it timed out ----------------------------------------------


def test_a_start_up_that_timed_out_is_tried_again_and_other_failures_are_not() -> None:
    calls: list[str] = []
    slept: list[float] = []

    def flaky() -> None:
        calls.append("start")
        if calls.count("start") < 3:
            raise TimeoutError("The current node timed out during startup")

    start_with_retries(flaky, 3, sleep=slept.append, cleanup=lambda: calls.append("cleanup"))
    assert calls == ["start", "cleanup", "start", "cleanup", "start"]
    assert slept == [2.0, 4.0]

    def refused() -> None:
        raise ValueError("bad address 'nowhere'")

    with pytest.raises(DeploymentError) as info:
        start_with_retries(refused, 3, sleep=slept.append, cleanup=lambda: None)
    assert info.value.lines() == ["Ray did not start: bad address 'nowhere'"]

    def always_late() -> None:
        raise ConnectionError("Failed to connect to GCS: timed out")

    with pytest.raises(DeploymentError, match="after 2 attempts: Failed to connect"):
        start_with_retries(always_late, 2, sleep=slept.append, cleanup=lambda: None)


# --- the ledger actor: never a second, empty ledger; closed into one file ----------------


async def test_a_ledger_that_must_exist_refuses_to_create_one(tmp_path: Path) -> None:
    path = tmp_path / "jobline.db"
    ledger = CreditLedger(path, SYSTEM_CLOCK, Metrics("ledger"), must_exist="it was there")
    with pytest.raises(LedgerMissing) as info:
        await ledger.start()
    assert str(info.value).startswith(f"the ledger {path} does not exist, but it was there")
    assert not path.exists() and not tmp_path.joinpath("jobline.db-wal").exists()


async def test_stop_lets_writes_land_and_leaves_everything_in_the_db_file(tmp_path: Path) -> None:
    path = tmp_path / "jobline.db"
    ledger = CreditLedger(path, SYSTEM_CLOCK, Metrics("ledger"))
    await ledger.start()
    ops = [CreateAccount(f"acct_{i}", f"hash_{i}", f"account {i}") for i in range(50)]
    # submitted, not yet answered, when the stop comes
    pending = asyncio.ensure_future(ledger.execute_many(ops))
    await asyncio.sleep(0)
    await ledger.stop()
    assert all(outcome.error is None for outcome in await pending)
    assert not tmp_path.joinpath("jobline.db-wal").exists()
    copy = tmp_path / "copy" / "jobline.db"
    copy.parent.mkdir()
    shutil.copyfile(path, copy)  # the .db file alone
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT COUNT(*) FROM accounts").fetchone() == (50,)


# --- logs: every line names its role; notices read as text --------------------------------


def test_every_json_line_names_its_role_and_notices_read_as_one_line(tmp_path: Path) -> None:
    file = tmp_path / "logs" / "jobline.jsonl"
    configure_logging(role="processor-fal", file=file)
    log = logging.getLogger("jobline.processor")
    log.info("slot taken", extra={"job_id": "job_1"})
    log.warning("job failed", extra={"job_id": "job_2", "vendor": "fal", "error": "422 nope"})
    log.info("circuit closed", extra={"vendor": "fal", "notice": True})
    configure_logging()  # back to stderr only, for the tests after this one

    lines = [json.loads(line) for line in file.read_text().splitlines()]
    assert [line["role"] for line in lines] == ["processor-fal"] * 3
    assert [line.get("notice", False) for line in lines] == [False, True, True]
    text = readable(lines[1])
    assert text.endswith("processor-fal  WARNING job failed (job job_2, vendor fal): 422 nope")
    assert readable(lines[2]).endswith("processor-fal  circuit closed (vendor fal)")
    record = logging.LogRecord("jobline.x", logging.INFO, "", 0, "m", None, None)
    assert not is_notice(record)
    assert JsonFormatter("ledger").as_dict(record)["role"] == "ledger"


def test_a_json_line_is_the_fields_as_json_and_a_value_json_lacks_reads_as_its_text() -> None:
    record = logging.LogRecord("jobline.gateway", logging.INFO, "", 0, "job opened", None, None)
    record.job_id, record.attempt = "job_é1", 2  # a non-ASCII id is escaped, as json.dumps does
    record.error = ValueError("bad input")  # no JSON type: its str()
    line = JsonFormatter("gateway-0").format(record)
    assert line == json.dumps(JsonFormatter("gateway-0").as_dict(record), default=str)
    assert json.loads(line)["error"] == "bad input"
    assert "\\u00e9" in line and "\n" not in line  # one ASCII line


# --- the ledger file: checked before Ray starts -------------------------------------------


def test_a_file_that_is_not_a_ledger_is_named_in_one_line(tmp_path: Path) -> None:
    for what, path in foreign_files(tmp_path).items():
        raw = default_raw()
        raw["storage"] = {**raw["storage"], "database": str(path)}
        (line,) = ledger_problems(parse_config(raw))
        assert line.startswith(f"{path}: "), what
        assert ("not a jobline ledger" in line) or ("unknown to this jobline" in line), what


def test_a_missing_ledger_that_must_exist_is_named_and_a_missing_one_may_be_created(
    tmp_path: Path,
) -> None:
    raw = default_raw()
    raw["storage"] = {**raw["storage"], "database": str(tmp_path / "gone.db")}
    assert ledger_problems(parse_config(raw)) == []  # create_ledger defaults to true
    raw["storage"]["create_ledger"] = False
    (line,) = ledger_problems(parse_config(raw))
    assert line.startswith(f"the ledger {tmp_path / 'gone.db'} does not exist")


def test_serve_refuses_a_missing_ledger_before_ray_starts(tmp_path: Path) -> None:
    text = ROOT_CONFIG.read_text().replace("create_ledger = true", "create_ledger = false", 1)
    config = tmp_path / "jobline.toml"
    config.write_text(text)
    env = {**os.environ, **{name: "x" for name in SECRET_NAMES}}
    started = time.monotonic()
    done = subprocess.run(
        [str(JOBLINE), "--config", str(config), "serve"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 2, done.stdout + done.stderr
    assert "does not exist, but [storage] create_ledger is false" in done.stderr
    assert "Traceback" not in done.stderr
    assert seconds < 10  # about Python's own start-up; Ray is never imported
