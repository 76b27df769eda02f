"""Many tenants on one jobline (issue 13), measured side by side in one run (``make bench``).

One Testbed (jobline on a local Ray, two gateway replicas, the sweeper every second)
serves two measurements, each next to the same read without the trouble:

- hostile clients: another account's ``GET /v1/credits`` latency (p50, p99) alone, then
  while 32 clients send wrong API keys (a new key per request, each client 20 requests
  a second: the same offered load whatever the answers cost), then while 16 clients read
  one account's 6,000-entry statement back to back (all of it: every page, where it is
  paged; after a 429 they wait its ``Retry-After``, the attackers do not). The load comes
  from another process (``paced_load``).
- bounded reads: a status read (``GET /v1/jobs/{id}``) on an almost empty ledger, then
  with 100,000 dead letters and 1,000,000 statement entries, while the sweeper runs its
  periodic reads every second and ``/metrics`` is scraped every second.

The data is written into the ledger's SQLite file directly, in consistent transactions
(each job with its hold, its settlement and its history), so the invariant checker the
ledger runs finds nothing wrong. Only the HTTP API is used otherwise, so the same file
measures an older jobline too (its numbers are the "before" of the issue's report).

    python -m loadtests.bench_tenants [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import secrets
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp

from loadtests.testbed import Testbed

WRONG_KEY_CLIENTS = 32
WRONG_KEY_INTERVAL = 0.05  # seconds between one client's requests
STATEMENT_CLIENTS = 16
STATEMENT_ENTRIES = 6_000
CHUNK = 20_000  # jobs per transaction while filling the ledger


# --- latency ------------------------------------------------------------------------------


async def latencies(
    http: aiohttp.ClientSession, url: str, headers: dict[str, str], seconds: float
) -> dict[str, Any]:
    """One request after the other for ``seconds``: p50, p99 (ms) and the answers."""
    taken: list[float] = []
    statuses: dict[int, int] = {}
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        async with http.get(url, headers=headers) as response:
            await response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
        taken.append(time.perf_counter() - started)
    return {
        "p50_ms": 1000 * statistics.median(taken),
        "p99_ms": 1000 * _percentile(taken, 99),
        "requests": len(taken),
        "statuses": statuses,
    }


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def under_load(
    measure: Callable[[], Awaitable[dict[str, Any]]],
    port: int,
    requests: list[bytes],
    clients: int,
    interval: float,
    seconds: float,
    honor_retry_after: bool,
) -> dict[str, Any]:
    """``measure()`` while another process sends ``requests`` (``paced_load``)."""
    load = asyncio.create_task(
        asyncio.to_thread(
            paced_load, port, requests, clients, interval, seconds + 3.0, honor_retry_after
        )
    )
    await asyncio.sleep(2.0)  # the load process starts (spawn) and connects
    result = await measure()
    result["load"] = await load
    return result


def paced_load(
    port: int,
    requests: list[bytes],
    clients: int,
    interval: float,
    seconds: float,
    honor_retry_after: bool,
) -> dict[str, Any]:
    """``clients`` keep-alive connections in a process of their own, each sending the next
    of ``requests`` every ``interval`` seconds (0: as soon as the answer is in; after a
    429, ``Retry-After`` later if ``honor_retry_after``), for ``seconds``; the answers by
    status, and requests per second."""
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    args = (port, requests, clients, interval, seconds, honor_retry_after, send)
    child = context.Process(target=_paced_worker, args=args)
    child.start()
    result: dict[str, Any] = receive.recv()
    child.join()
    return result


def _retry_after(head: bytes) -> float:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"retry-after":
            return float(value)
    return 0.0


def _paced_worker(
    port: int,
    requests: list[bytes],
    clients: int,
    interval: float,
    seconds: float,
    honor_retry_after: bool,
    send: Connection,
) -> None:
    statuses: dict[int, int] = {}

    async def client(first: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        i = first
        while loop.time() < end:
            tick = loop.time()
            writer.write(requests[i % len(requests)])
            i += clients
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            wait = tick + interval - loop.time()
            if status == 429 and honor_retry_after:
                wait = max(wait, _retry_after(head))
            await asyncio.sleep(max(0.0, wait))
        writer.close()

    async def run() -> float:
        started = time.monotonic()
        await asyncio.gather(*(client(i) for i in range(clients)), return_exceptions=True)
        return time.monotonic() - started

    elapsed = asyncio.run(run())
    total = sum(statuses.values())
    send.send({"statuses": statuses, "requests_per_s": total / elapsed, "clients": clients})


def raw_get(port: int, path: str, api_key: str) -> bytes:
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {api_key}\r\n\r\n"
    ).encode()


# --- filling the ledger -------------------------------------------------------------------


def fill(db: Path, account_id: str, completed: int, failed: int, *, grant: int = 0) -> None:
    """Settled jobs of ``account_id`` straight into the ledger file: each completed job a
    hold and a capture, each failed one a hold, a release and a dead letter; each one
    history row; the account's cached balance (and the counters, where there are) too."""
    conn = sqlite3.connect(db, timeout=30.0, isolation_level=None)
    try:
        counters = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'ledger_counters'"
        ).fetchone()
        if grant:
            with _transaction(conn):
                conn.execute(
                    "INSERT INTO credit_entries (account_id, kind, amount, ref, created_at) "
                    "VALUES (?, 'grant', ?, ?, ?)",
                    (account_id, grant, f"{account_id}:bench-{uuid.uuid4().hex}", time.time()),
                )
                conn.execute(
                    "UPDATE accounts SET balance = balance + ? WHERE id = ?", (grant, account_id)
                )
        for status, total in (("completed", completed), ("failed", failed)):
            for start in range(0, total, CHUNK):
                n = min(CHUNK, total - start)
                with _transaction(conn):
                    _insert_jobs(conn, account_id, status, n)
                    if status == "completed":
                        conn.execute(
                            "UPDATE accounts SET balance = balance - ? WHERE id = ?",
                            (n, account_id),
                        )
                    if counters:
                        conn.execute(
                            "UPDATE ledger_counters SET n = n + ? WHERE name = ?",
                            (n, f"jobs_{status}"),
                        )
                        if status == "failed":
                            conn.execute(
                                "UPDATE ledger_counters SET n = n + ? "
                                "WHERE name = 'dead_letters_open'",
                                (n,),
                            )
    finally:
        conn.close()


class _transaction:
    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *_: object) -> None:
        self.conn.execute("COMMIT" if kind is None else "ROLLBACK")


def _insert_jobs(conn: sqlite3.Connection, account_id: str, status: str, n: int) -> None:
    now = time.time()
    ids = [f"job_bench{uuid.uuid4().hex}" for _ in range(n)]
    conn.executemany(
        "INSERT INTO jobs (id, account_id, model, input, status, cost, trace_id, "
        "route_position, vendor, vendor_task_id, attempts, vendor_attempts, not_before, "
        "deadline, result_key, error, created_at, updated_at) VALUES "
        "(?, ?, 'flux-schnell', '{}', ?, 1, 'bench', 0, 'fal', 'task', 1, 1, ?, ?, ?, ?, ?, ?)",
        [
            (
                job_id,
                account_id,
                status,
                now,
                now + 900,
                f"{job_id}.png" if status == "completed" else None,
                None if status == "completed" else "bench: failed",
                now,
                now,
            )
            for job_id in ids
        ],
    )
    settle = "capture" if status == "completed" else "release"
    conn.executemany(
        "INSERT INTO credit_entries (account_id, kind, amount, job_id, created_at) "
        "VALUES (?, ?, 1, ?, ?)",
        [(account_id, kind, job_id, now) for job_id in ids for kind in ("hold", settle)],
    )
    conn.executemany(
        "INSERT INTO job_history (job_id, account_id, status, at) VALUES (?, ?, ?, ?)",
        [(job_id, account_id, status, now) for job_id in ids],
    )
    if status == "failed":
        conn.executemany(
            "INSERT INTO dead_letters (job_id, account_id, model, vendor, error, attempts, "
            "trace_id, created_at) VALUES (?, ?, 'flux-schnell', 'fal', 'bench', 1, 'bench', ?)",
            [(job_id, account_id, now) for job_id in ids],
        )


# --- the two measurements -----------------------------------------------------------------


async def hostile(tb: Testbed, http: aiohttp.ClientSession, seconds: float) -> dict[str, Any]:
    base, port = tb.client.base_url, int(tb.config.gateway.port)
    _, other_key = await tb.client.create_account(1_000, name="bystander")
    heavy_id, heavy_key = await tb.client.create_account(0, name="heavy")
    await asyncio.to_thread(
        fill, tb.config.storage.database, heavy_id, STATEMENT_ENTRIES // 2, 0, grant=10**6
    )
    bystander = {"Authorization": f"Bearer {other_key}"}
    credits = f"{base}/v1/credits"

    async def measure() -> dict[str, Any]:
        return await latencies(http, credits, bystander, seconds)

    await measure()  # warm: the bystander's key is cached, connections are open
    result: dict[str, Any] = {"alone": await measure()}
    wrong = [raw_get(port, "/v1/credits", "jl_" + secrets.token_urlsafe(32)) for _ in range(8000)]
    result["wrong_keys"] = await under_load(  # attackers: they ignore Retry-After
        measure, port, wrong, WRONG_KEY_CLIENTS, WRONG_KEY_INTERVAL, seconds, False
    )
    pages = await statement_pages(http, base, heavy_key)
    readers = [raw_get(port, path, heavy_key) for path in pages]
    result["statement_readers"] = await under_load(  # clients: they honour it
        measure, port, readers, STATEMENT_CLIENTS, 0.0, seconds, True
    )
    result["statement_pages"] = len(pages)
    return result


async def statement_pages(http: aiohttp.ClientSession, base: str, api_key: str) -> list[str]:
    """The paths that read a whole statement: every page where it is paged, else one."""
    headers = {"Authorization": f"Bearer {api_key}"}
    paths = ["/v1/credits/entries?limit=200"]
    while True:
        async with http.get(base + paths[-1], headers=headers) as response:
            body = await response.json()
        cursor = body.get("next_cursor")
        if not cursor:
            return paths
        paths.append(f"/v1/credits/entries?limit=200&cursor={cursor}")


async def bounded_reads(
    tb: Testbed, http: aiohttp.ClientSession, entries: int, dead: int, seconds: float
) -> dict[str, Any]:
    base = tb.client.base_url
    status, job = await tb.client.submit("flux-schnell", {"prompt": "bench status reads"})
    assert status == 202, job
    url = f"{base}/v1/jobs/{job['id']}"
    auth = {"Authorization": f"Bearer {tb.client.api_key}"}

    async def measure() -> dict[str, Any]:
        scraper = asyncio.create_task(scrape(http, f"{base}/metrics"))
        try:
            return await latencies(http, url, auth, seconds)
        finally:
            scraper.cancel()

    await measure()
    result: dict[str, Any] = {"empty": await measure()}
    completed = (entries - 2 * dead) // 2
    started = time.monotonic()
    await asyncio.to_thread(
        fill, tb.config.storage.database, tb.account_id, completed, dead, grant=10**9
    )
    result["fill_s"] = time.monotonic() - started
    await asyncio.sleep(2.0)  # a sweep or two on the full ledger
    result["full"] = await measure()
    result.update(entries=entries, dead_letters=dead)
    return result


async def scrape(http: aiohttp.ClientSession, url: str, every: float = 1.0) -> None:
    while True:
        async with http.get(url) as response:
            await response.read()
        await asyncio.sleep(every)


# --- all of it ----------------------------------------------------------------------------


async def run(quick: bool = False) -> dict[str, Any]:
    seconds = 3.0 if quick else 10.0
    entries, dead = (100_000, 10_000) if quick else (1_000_000, 100_000)
    with tempfile.TemporaryDirectory(prefix="jobline-bench-tenants-") as tmp:
        bed = Testbed(Path(tmp), overrides={"sweeper": {"interval": 1.0}})
        async with bed as tb, aiohttp.ClientSession() as http:
            print("  hostile clients: wrong keys, statement readers ...", flush=True)
            results = {"hostile": await hostile(tb, http, seconds)}
            print(f"  bounded reads: {entries:,} entries, {dead:,} dead letters ...", flush=True)
            results["bounded_reads"] = await bounded_reads(tb, http, entries, dead, seconds)
    return results


def render(results: dict[str, Any]) -> str:
    h, b = results["hostile"], results["bounded_reads"]
    rows = [("measure", "p50", "p99", "p99 vs alone")]

    def row(label: str, r: dict[str, Any], base: dict[str, Any]) -> None:
        ratio = r["p99_ms"] / base["p99_ms"] if base["p99_ms"] else float("nan")
        rows.append((label, f"{r['p50_ms']:.1f} ms", f"{r['p99_ms']:.1f} ms", f"{ratio:.2f}x"))

    row("another account's GET /v1/credits, alone", h["alone"], h["alone"])
    row(f"  while {WRONG_KEY_CLIENTS} clients send wrong keys", h["wrong_keys"], h["alone"])
    row(
        f"  while {STATEMENT_CLIENTS} clients read a {STATEMENT_ENTRIES:,}-entry statement",
        h["statement_readers"],
        h["alone"],
    )
    row("status read, near-empty ledger", b["empty"], b["empty"])
    row(
        f"  with {b['dead_letters']:,} dead letters, {b['entries']:,} entries",
        b["full"],
        b["empty"],
    )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(r)).rstrip() for r in rows]
    for name in ("wrong_keys", "statement_readers"):
        load = h[name]["load"]
        answers = ", ".join(f"{n:,} x {s}" for s, n in sorted(load["statuses"].items()))
        lines.append(
            f"  ({name.replace('_', ' ')}: {load['requests_per_s']:,.0f} requests/s; "
            f"answers {answers})"
        )
    lines.append(f"  (filling the ledger took {b['fill_s']:.0f}s)")
    return "\n".join("  " + line for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_tenants", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller data, shorter windows")
    parser.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = parser.parse_args(argv)
    results = asyncio.run(run(quick=args.quick))
    print(render(results))
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
