"""deploy/README.md's ledger backup, run as the guide shows it, on a ledger being written.

The field case (issue 14): after a stop, ``jobline.db`` was 4 KB beside a 23.6 MB WAL,
and copying the ``.db`` alone lost everything. The guide's online backup must hold every
committed transaction while the ledger stays open, and ``jobline check`` must pass on it.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from runtime.ledger import Ledger
from runtime.models import CreateAccount, Grant, OpenJob
from tests.ledger_ops import apply_op

ROOT = Path(__file__).resolve().parents[2]
JOBLINE = Path(sys.executable).parent / "jobline"
LIVE = "/var/lib/jobline/jobline.db"


def guide_backup_command() -> str:
    """The backup line of deploy/README.md, exactly as an operator copies it."""
    guide = (ROOT / "deploy" / "README.md").read_text()
    (line,) = [row for row in guide.splitlines() if row.startswith("python3 -c 'import sqlite3")]
    return line


def jobs_in(path: Path) -> int:
    with sqlite3.connect(path) as conn:
        (count,) = conn.execute("SELECT count(*) FROM jobs").fetchone()
    return int(count)


def copy_naively_and_back_up(live: Path, into: Path) -> Path:
    """Copy ``jobline.db`` alone (the issue's mistake), then run the guide's backup."""
    assert Path(f"{live}-wal").stat().st_size > 0  # the jobs are still in the WAL
    naive = into / "copied.db"
    shutil.copyfile(live, naive)
    with sqlite3.connect(naive) as conn:
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    assert tables == 0 or jobs_in(naive) < 20  # the copy lost committed transactions

    backups = into / "backups"
    backups.mkdir()
    command = guide_backup_command().replace(LIVE, str(live))
    command = command.replace("/var/backups/jobline/", f"{backups}/")
    done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    (backup,) = backups.iterdir()
    return backup


def jobline_check(database: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(JOBLINE), "check", "--database", str(database)],
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_the_guides_online_backup_keeps_what_the_wal_holds(tmp_path: Path) -> None:
    live = tmp_path / "jobline.db"
    ledger = await Ledger.open(live, time.time)
    try:
        await apply_op(ledger, CreateAccount("acct", "hash-acct"))
        await apply_op(ledger, Grant("acct", 1000, "initial"))
        for i in range(20):
            op = OpenJob(f"job-{i}", "acct", "flux", {"prompt": "x"}, 5, f"t-{i}", "fal", 1e12)
            (await ledger.execute(op)).unwrap()
        backup = await asyncio.to_thread(copy_naively_and_back_up, live, tmp_path)
    finally:
        await ledger.close()
    assert jobs_in(backup) == 20
    checked = await asyncio.to_thread(jobline_check, backup)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "0 violation(s)" in checked.stdout
