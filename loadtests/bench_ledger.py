"""The ledger's group commit against raw SQLite, side by side in one run.

(a) raw: job rows (the ledger's own ``jobs`` table, its indexes and foreign keys)
    inserted with ``executemany`` in transactions of 10,000 rows: the most the disk and
    SQLite do for our rows with no per-operation work at all.
(b) ledger: durable operations per second through ``Ledger`` with group commit:
    ``concurrency`` asyncio tasks each carry jobs through their whole life (open_job,
    start_attempt, mark_processing, complete — four operations, each its own
    idempotent transaction as far as its caller can tell, committed with fsync).

Each side's CPU time (the process's, every thread) is measured too: on a shared machine
the wall-clock rates measure the scheduler as much as the code (the ledger waits for its
thread and an fsync some 40 times more often than the raw side, so every wake-up delayed
by other work counts), while CPU per operation does not depend on who else runs.

Both use a fresh temporary file with the ledger's pragmas (``runtime.ledger_schema.connect``:
WAL, synchronous=FULL, foreign keys on) and the same time-ordered job ids
(``new_job_id``). Each is repeated and the median is reported.

    .venv/bin/python -m loadtests.bench_ledger [--jobs N] [--repeats R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from runtime.ledger import INSERT_JOB, Ledger, new_job_id
from runtime.ledger_schema import connect, migrate
from runtime.models import Complete, CreateAccount, Grant, MarkProcessing, OpenJob, StartAttempt

INPUT = {"prompt": "a lighthouse at dusk, oil on canvas", "width": 1024, "height": 1024}
RAW_BATCH = 10_000


IDS = random.Random(0)


def raw_rows_per_s(path: Path, rows: int) -> float:
    """Job rows inserted per second, ``RAW_BATCH`` rows per transaction."""
    return raw_rows(path, rows)[0]


def raw_rows(path: Path, rows: int) -> tuple[float, float]:
    """(job rows inserted per second, CPU seconds per row), ``RAW_BATCH`` rows per
    transaction."""
    conn = connect(path)
    migrate(conn)
    conn.execute("INSERT INTO accounts (id, created_at) VALUES ('a', 0)")
    now = time.time()
    data = json.dumps(INPUT, separators=(",", ":"))
    values = [
        (new_job_id(now, IDS), "a", "m", data, 5, new_job_id(now, IDS), 0, "v", now, now + 600,
         None, None, now, now)
        for _ in range(rows)
    ]  # fmt: skip
    started, cpu = time.perf_counter(), time.process_time()
    for first in range(0, rows, RAW_BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(INSERT_JOB, values[first : first + RAW_BATCH])
        conn.execute("COMMIT")
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    conn.close()
    return rows / elapsed, cpu / rows


def raw_narrow_rows_per_s(path: Path, rows: int) -> float:
    """For context only: a 5-column table with no secondary index (no ratio uses it)."""
    conn = connect(path)
    conn.execute(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, a TEXT, kind TEXT, amount INT, j TEXT, at REAL)"
    )
    values = [("a", "hold", 5, new_job_id(time.time(), IDS), 0.0) for _ in range(rows)]
    started = time.perf_counter()
    for first in range(0, rows, RAW_BATCH):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO t (a, kind, amount, j, at) VALUES (?, ?, ?, ?, ?)",
            values[first : first + RAW_BATCH],
        )
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return rows / elapsed


async def ledger_ops_per_s(path: Path, jobs: int, concurrency: int) -> tuple[float, float]:
    """(durable operations per second, grouping: operations per transaction)."""
    ops_per_s, grouping, _ = await ledger_ops(path, jobs, concurrency)
    return ops_per_s, grouping


async def ledger_ops(path: Path, jobs: int, concurrency: int) -> tuple[float, float, float]:
    """(durable operations per second, operations per transaction, CPU seconds per
    operation: the process's, the writer thread's included)."""
    ledger = await Ledger.open(path)
    await ledger.execute(CreateAccount("a", "h"))
    await ledger.execute(Grant("a", 10 * jobs, "bench"))
    ids = [new_job_id(time.time(), IDS) for _ in range(jobs)]
    deadline = time.time() + 3600

    async def carry(first: int) -> None:
        for i in range(first, jobs, concurrency):
            job_id = ids[i]
            await ledger.execute(OpenJob(job_id, "a", "m", INPUT, 5, job_id, "v", deadline))
            await ledger.execute(StartAttempt(job_id, 1, "v", 0))
            await ledger.execute(MarkProcessing(job_id, 1, "task-" + job_id))
            await ledger.execute(Complete(job_id, "results/" + job_id))

    before = ledger.stats.batches, ledger.stats.ops
    started, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*[carry(k) for k in range(concurrency)])
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    batches = ledger.stats.batches - before[0]
    ops = ledger.stats.ops - before[1]
    await ledger.close()
    return ops / elapsed, ops / max(batches, 1), cpu / max(ops, 1)


def run(jobs: int = 20_000, repeats: int = 3, concurrency: int = 256) -> dict[str, float]:
    """Measure both sides ``repeats`` times; the medians, as a dict of numbers."""
    raw: list[float] = []
    raw_cpu: list[float] = []
    narrow: list[float] = []
    ledger: list[float] = []
    ledger_cpu: list[float] = []
    grouping: list[float] = []
    with tempfile.TemporaryDirectory(prefix="jobline-bench-") as tmp:
        for r in range(repeats):
            rows_per_s, cpu_per_row = raw_rows(Path(tmp, f"raw{r}.db"), 4 * jobs)
            raw.append(rows_per_s)
            raw_cpu.append(cpu_per_row)
            narrow.append(raw_narrow_rows_per_s(Path(tmp, f"narrow{r}.db"), 4 * jobs))
            ops, group, cpu_per_op = asyncio.run(
                ledger_ops(Path(tmp, f"ledger{r}.db"), jobs, concurrency)
            )
            ledger.append(ops)
            ledger_cpu.append(cpu_per_op)
            grouping.append(group)
    raw_median = statistics.median(raw)
    ledger_median = statistics.median(ledger)
    return {
        "raw_rows_per_s": raw_median,
        "raw_narrow_rows_per_s": statistics.median(narrow),
        "ledger_ops_per_s": ledger_median,
        "ledger_jobs_per_s": ledger_median / 4,
        "ops_per_transaction": statistics.median(grouping),
        "ratio": ledger_median / raw_median,
        # The same, by CPU time: raw rows per CPU second / ledger operations per CPU second.
        "raw_rows_per_cpu_s": 1 / statistics.median(raw_cpu),
        "ledger_ops_per_cpu_s": 1 / statistics.median(ledger_cpu),
        "cpu_ratio": statistics.median(raw_cpu) / statistics.median(ledger_cpu),
        "concurrency": float(concurrency),
        "repeats": float(repeats),
    }


def render(result: dict[str, Any]) -> str:
    rows = [
        (
            "raw SQLite, job rows (executemany, 10k/tx)",
            f"{result['raw_rows_per_s']:>12,.0f} rows/s",
        ),
        ("ledger, durable ops (group commit)", f"{result['ledger_ops_per_s']:>12,.0f} ops/s"),
        ("  = jobs carried open → complete", f"{result['ledger_jobs_per_s']:>12,.0f} jobs/s"),
        ("  ops per transaction (fsync)", f"{result['ops_per_transaction']:>12,.1f}"),
        ("ledger / raw", f"{result['ratio']:>12.1%}"),
        ("ledger / raw, per CPU second", f"{result['cpu_ratio']:>12.1%}"),
        (
            "(context) raw SQLite, 5-column table",
            f"{result['raw_narrow_rows_per_s']:>12,.0f} rows/s",
        ),
    ]
    width = max(len(name) for name, _ in rows)
    title = (
        f"ledger benchmark: medians of {int(result['repeats'])} runs, "
        f"{int(result['concurrency'])} concurrent callers"
    )
    return "\n".join([title, *(f"  {name:<{width}}  {value}" for name, value in rows)])


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000, help="jobs per ledger run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args(argv)
    result = run(args.jobs, args.repeats, args.concurrency)
    print(render(result))
    return result


if __name__ == "__main__":
    main()
