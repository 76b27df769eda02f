"""`jobline serve` on one machine, as systemd runs it: its own Ray, back under a supervisor
after the whole runtime was SIGKILLed, one per ledger, stopped into one file, its logs
naming their roles, never a secret.

`serve` runs as a subprocess in a directory of its own, with a relative ledger path
(resolved there, once) and a private Ray temporary directory (its logs are searched).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from loadtests.testbed import ROOT_CONFIG
from tests.cluster.raystart import VENV_BIN, free_ports

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(600)]

JOBLINE = VENV_BIN / "jobline"
SECRETS = {
    "JOBLINE_ADMIN_TOKEN": "admin-51f0c2aa-never-print-me",
    "FAL_KEY": "fal-key-0b77e3c4-never-print-me",
    "REPLICATE_API_TOKEN": "r8_tok-5d2a9c10-never-print-me",
    "REPLICATE_WEBHOOK_SECRET": "whsec_bG9jYWwtbmV2ZXItcHJpbnQtdGhpcy1zZWNyZXQ=",
}
ROLES = {"app", "serve", "ledger", "sweeper", "processor-fal", "processor-replicate"}


def run(root: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    started = time.monotonic()
    try:
        return _run(root, *args, timeout=timeout)
    finally:
        print(f"jobline {' '.join(args)}: {time.monotonic() - started:.1f}s")


def _run(root: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(JOBLINE), *args],
        cwd=root / "work",
        env=environment(root),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def environment(root: Path) -> dict[str, str]:
    return {**os.environ, **SECRETS, "RAY_TMPDIR": str(root), "PYTHONUNBUFFERED": "1"}


@pytest.fixture(name="root")
def root_fixture() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="jl-", dir="/tmp"))  # short: Ray's socket paths
    (root / "work").mkdir()
    (port,) = free_ports(1)
    text = ROOT_CONFIG.read_text()
    text = text.replace("port = 8080", f"port = {port}").replace(":8080", f":{port}")
    text = text.replace('# file = "data/jobline.jsonl"', 'file = "data/jobline.jsonl"')
    (root / "work" / "jobline.toml").write_text(text)
    (root / "port").write_text(str(port))
    yield root
    shutil.rmtree(root, ignore_errors=True)


def admin(url: str, body: dict[str, Any]) -> int:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={
            "Authorization": f"Bearer {SECRETS['JOBLINE_ADMIN_TOKEN']}",
            "Content-Type": "application/json",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        return int(answer.status)


def start_serve(root: Path, attempt: int) -> subprocess.Popen[bytes]:
    """`jobline serve` as a supervisor (systemd's Restart=always) starts it; ready."""
    out = (root / f"serve-{attempt}.out").open("w")
    err = (root / f"serve-{attempt}.err").open("w")
    serve = subprocess.Popen(
        [str(JOBLINE), "serve"],
        cwd=root / "work",
        env=environment(root),
        stdout=out,
        stderr=err,
        start_new_session=True,  # serve and its Ray: one process group, killed as one
    )
    out.close()
    err.close()
    started = time.monotonic()
    while "all ready" not in (root / f"serve-{attempt}.out").read_text():
        assert serve.poll() is None, (root / f"serve-{attempt}.err").read_text()
        assert time.monotonic() < started + 240, "serve never got ready"
        time.sleep(0.3)
    print(f"serve {attempt} ready in {time.monotonic() - started:.1f}s")
    return serve


def test_serve_comes_back_under_a_supervisor_stops_into_one_file_and_prints_no_secret(
    root: Path,
) -> None:
    work = root / "work"
    accounts = f"http://127.0.0.1:{(root / 'port').read_text()}/v1/accounts"
    serve = start_serve(root, 1)
    try:
        for i in range(3):
            assert admin(accounts, {"name": f"before {i}"}) == 201
        # The whole runtime is SIGKILLed (serve and every Ray process): a supervisor
        # (systemd's Restart=always) starts serve again, on the same ledger.
        os.killpg(serve.pid, signal.SIGKILL)
        assert serve.wait(timeout=60) == -signal.SIGKILL
        serve = start_serve(root, 2)
        printed_first = (root / "serve-1.out").read_text()
        assert "ledger created at" in printed_first
        second = run(root, "serve")
        assert second.returncode == 3
        assert "already runs on this machine with this ledger" in second.stderr
        status = run(root, "status", "--json")
        assert status.returncode == 0, status.stderr
        rows = {row["role"]: row for row in json.loads(status.stdout)}
        database = work / "data" / "jobline.db"  # resolved against serve's directory
        assert rows["ledger"]["detail"] == str(database)
        for i in range(2):
            assert admin(accounts, {"name": f"after {i}"}) == 201
        stop = run(root, "stop")
        assert stop.returncode == 0, stop.stderr
        assert serve.wait(timeout=120) == 0  # serve ends by itself once its app stopped
    finally:
        if serve.poll() is None:
            serve.send_signal(signal.SIGTERM)
            serve.wait(timeout=120)
    printed = (root / "serve-2.out").read_text()
    for line in (
        "ledger opened at",
        "ready: 6 roles",
        "gateway-1 ready on node",
        "app 'jobline' stopped",
    ):
        assert line in printed, f"{line!r} not in serve's output:\n{printed}"
    assert not database.with_name("jobline.db-wal").exists()
    copy = root / "copy.db"
    shutil.copyfile(database, copy)  # the .db alone
    with sqlite3.connect(copy) as conn:
        assert conn.execute("SELECT COUNT(*) FROM accounts").fetchone() == (5,)
    lines = [
        json.loads(line) for line in (work / "data" / "jobline.jsonl").read_text().splitlines()
    ]
    assert {line["role"] for line in lines} == ROLES | {"gateway-0", "gateway-1"}
    ready = {line["role"] for line in lines if line["msg"].startswith(f"{line['role']} ready")}
    assert ready == ROLES - {"app", "serve"} | {"gateway-0", "gateway-1"}
    assert all(line["role"] in ROLES or line["role"].startswith("gateway-") for line in lines)
    outputs = [second.stderr, status.stdout, stop.stderr]
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix != ".db"]
    assert any("session_" in str(p) for p in files)  # Ray's own logs are searched too
    texts = outputs + [p.read_text(errors="replace") for p in files]
    assert "RoleHost" not in (work / "data" / "jobline.jsonl").read_text()
    assert [name for name, value in SECRETS.items() if any(value in t for t in texts)] == []
