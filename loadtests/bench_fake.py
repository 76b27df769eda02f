"""How many status polls per second one fake vendor process answers.

The fake runs in its own process (one core); the load comes from another: ``wrk`` when it
is installed (``apt-get install wrk``), else a few processes of a lean keep-alive HTTP/1.1
client written on asyncio protocols. The fake first gets ``tasks`` tasks; the load then
polls their status URLs round-robin, with the headers jobline sends (auth, trace id).

    python -m loadtests.bench_fake --shape replicate --seconds 5
    python -m loadtests.bench_fake --shape fal --tool python --min-rps 5000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

Tool = Literal["auto", "wrk", "python"]
API_KEY = "bench-key"
ROOT = Path(__file__).resolve().parent.parent


def bench_status_polls(
    shape: Literal["replicate", "fal"] = "replicate",
    seconds: float = 5.0,
    connections: int = 64,
    tasks: int = 100,
    tool: Tool = "auto",
    processes: int | None = None,
    profile: str = "zero",
) -> dict[str, Any]:
    """Start a fake in a subprocess, poll it for ``seconds``, return the numbers."""
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loadtests.bench_fake",
            "serve",
            "--shape",
            shape,
            "--tasks",
            str(tasks),
            "--profile",
            profile,
        ],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        ready = json.loads(server.stdout.readline())
        urls: list[str] = ready["status_urls"]
        headers = {
            "Authorization": ("Key " if shape == "fal" else "Bearer ") + API_KEY,
            "X-Jobline-Trace-Id": "bench",
        }
        use_wrk = tool == "wrk" or (tool == "auto" and shutil.which("wrk") is not None)
        if use_wrk:
            result = _run_wrk(urls, headers, seconds, connections)
        else:
            result = _run_python(urls, headers, seconds, connections, processes)
        result.update(shape=shape, seconds=seconds, connections=connections, tasks=tasks)
        return result
    finally:
        server.terminate()
        server.wait(10)


# --- the server side ------------------------------------------------------------------


async def _serve(shape: Literal["replicate", "fal"], tasks: int, profile_name: str) -> None:
    import aiohttp

    from vendors_fake import FakeVendor, FaultProfile, load_profile

    profile = load_profile(profile_name)
    # Tasks are made under a perfect profile (no 429s, no limit); the polls meet the real one.
    async with FakeVendor(shape, FaultProfile(), api_key=API_KEY) as fake:
        auth = ("Key " if shape == "fal" else "Bearer ") + API_KEY
        status_urls = []
        async with aiohttp.ClientSession(headers={"Authorization": auth}) as http:
            for i in range(tasks):
                body: dict[str, Any] = {"input": {"prompt": f"bench {i}"}, "version": "v"}
                url = f"{fake.url}/v1/predictions"
                if shape == "fal":
                    url, body = f"{fake.url}/fal-ai/flux/dev", body["input"]
                async with http.post(url, json=body) as response:
                    created = await response.json()
                status_urls.append(
                    created["status_url"] if shape == "fal" else created["urls"]["get"]
                )
        fake.set_profile(profile)
        print(json.dumps({"url": fake.url, "status_urls": status_urls}), flush=True)
        # run until the parent closes our stdin (or terminates us)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)


# --- wrk ------------------------------------------------------------------------------

_WRK_SCRIPT = """
local paths = {%s}
local i = 0
request = function()
  i = i %% #paths + 1
  return wrk.format("GET", paths[i])
end
"""


def _run_wrk(
    urls: list[str], headers: dict[str, str], seconds: float, connections: int
) -> dict[str, Any]:
    paths = ", ".join(json.dumps(urlsplit(u).path) for u in urls)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT % paths)
    try:
        command = ["wrk", "-t1", f"-c{connections}", f"-d{max(int(seconds), 1)}s", "--latency"]
        for name, value in headers.items():
            command += ["-H", f"{name}: {value}"]
        command += ["-s", script.name, urls[0]]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "tool": "wrk",
        "requests": requests,
        "requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),  # type: ignore[union-attr]
        "errors": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": socket_errors.group(1).strip() if socket_errors else "",
        "latency_p50_ms": _wrk_latency(out, "50%"),
        "latency_p99_ms": _wrk_latency(out, "99%"),
    }


def _wrk_latency(out: str, percentile: str) -> float | None:
    match = re.search(rf"^\s+{re.escape(percentile)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if match is None:
        return None
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]
    return round(float(match.group(1)) * scale, 3)


# --- the Python load generator --------------------------------------------------------


class _PollConnection(asyncio.Protocol):
    """One keep-alive connection sending GETs back to back and counting the answers."""

    def __init__(self, requests: list[bytes], counts: dict[str, int], stop_at: float) -> None:
        self.requests = requests
        self.counts = counts
        self.stop_at = stop_at
        self.buffer = b""
        self.i = 0
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self._send()

    def _send(self) -> None:
        assert self.transport is not None
        self.i = (self.i + 1) % len(self.requests)
        self.transport.write(self.requests[self.i])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end]
            length_at = head.lower().find(b"content-length:")
            length = 0
            if length_at >= 0:
                length = int(head[length_at + 15 : head.find(b"\r\n", length_at)])
            if len(self.buffer) < end + 4 + length:
                return
            self.counts["ok" if head[9:10] == b"2" else "errors"] += 1  # any 2xx
            self.buffer = self.buffer[end + 4 + length :]
            if time.monotonic() >= self.stop_at:
                assert self.transport is not None
                self.transport.close()
                return
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def _poll_for(
    urls: list[str], headers: dict[str, str], seconds: float, connections: int
) -> dict[str, int]:
    parts = urlsplit(urls[0])
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    return await _send_for(host, port, get_requests(urls, headers), seconds, connections)


def get_requests(urls: list[str], headers: dict[str, str]) -> list[bytes]:
    """Raw keep-alive HTTP/1.1 GETs of ``urls`` (one host) with ``headers``."""
    parts = urlsplit(urls[0])
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    extra = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    return [
        f"GET {urlsplit(u).path} HTTP/1.1\r\nHost: {host}:{port}\r\n{extra}\r\n".encode()
        for u in urls
    ]


async def _send_for(
    host: str, port: int, requests: list[bytes], seconds: float, connections: int
) -> dict[str, int]:
    counts = {"ok": 0, "errors": 0}
    started = time.monotonic()
    stop_at = started + seconds
    loop = asyncio.get_running_loop()
    protocols = []
    for _ in range(connections):
        _, protocol = await loop.create_connection(
            lambda: _PollConnection(requests, counts, stop_at), host, port
        )
        protocols.append(protocol)
    await asyncio.gather(*(p.done for p in protocols))
    counts["elapsed_us"] = int((time.monotonic() - started) * 1e6)
    return counts


def _load_worker(
    host: str, port: int, requests: list[bytes], seconds: float, connections: int, out: Any
) -> None:
    out.send(asyncio.run(_send_for(host, port, requests, seconds, connections)))


def _run_python(
    urls: list[str],
    headers: dict[str, str],
    seconds: float,
    connections: int,
    processes: int | None,
) -> dict[str, Any]:
    parts = urlsplit(urls[0])
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    return run_requests(host, port, get_requests(urls, headers), seconds, connections, processes)


def run_requests(
    host: str,
    port: int,
    requests: list[bytes],
    seconds: float,
    connections: int,
    processes: int | None = None,
) -> dict[str, Any]:
    """Send ``requests`` round-robin on ``connections`` keep-alive connections, back to
    back, from ``processes`` load processes, for ``seconds``; count 2xx and the rest."""
    workers = processes or max((os.cpu_count() or 2) - 1, 1)
    context = multiprocessing.get_context("spawn")
    pipes, children = [], []
    per_worker = max(connections // workers, 1)
    for _ in range(workers):
        receive, send = context.Pipe(duplex=False)
        child = context.Process(
            target=_load_worker, args=(host, port, requests, seconds, per_worker, send)
        )
        child.start()
        pipes.append(receive)
        children.append(child)
    totals = {"ok": 0, "errors": 0}
    elapsed = 0.0  # the longest worker's time from its first connection to its last answer
    for receive in pipes:
        counts = receive.recv()
        totals["ok"] += counts["ok"]
        totals["errors"] += counts["errors"]
        elapsed = max(elapsed, counts["elapsed_us"] / 1e6)
    for child in children:
        child.join()
    requests_done = totals["ok"] + totals["errors"]
    return {
        "tool": f"python x{workers}",
        "requests": requests_done,
        "requests_per_s": round(requests_done / elapsed, 1),
        "ok_per_s": round(totals["ok"] / elapsed, 1),
        "errors": totals["errors"],
    }


# --- command line ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.bench_fake", description=__doc__)
    parser.add_argument("command", nargs="?", default="bench", choices=["bench", "serve"])
    parser.add_argument("--shape", choices=["replicate", "fal"], default="replicate")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto")
    parser.add_argument("--processes", type=int, default=None, help="python load processes")
    parser.add_argument("--profile", default="zero", help="the fake's fault profile")
    parser.add_argument("--min-rps", type=float, default=0.0, help="fail below this rate")
    args = parser.parse_args(argv)
    if args.command == "serve":
        asyncio.run(_serve(args.shape, args.tasks, args.profile))
        return 0
    result = bench_status_polls(
        args.shape,
        args.seconds,
        args.connections,
        args.tasks,
        args.tool,
        args.processes,
        args.profile,
    )
    print(
        f"one fake vendor process ({args.shape}, profile {args.profile}): "
        f"{result['requests_per_s']:,.0f} status polls/s "
        f"({result['requests']:,} in {args.seconds:g}s, {result['errors']} errors, "
        f"load: {result['tool']}, {args.connections} connections)"
    )
    print(json.dumps(result))
    return 0 if result["requests_per_s"] >= args.min_rps else 1


if __name__ == "__main__":
    raise SystemExit(main())
