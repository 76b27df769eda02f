"""Storing outputs: CPU per output through ``LocalResultStore.put_stream`` against plain
durable writes, side by side in one run (``make bench``).

A processor stores every output of a job it finishes (``actors.finishing``), through the
result store's streaming put on its event loop. This measures that path alone, in this
process, with ``time.process_time`` (every thread's CPU: the event loop's and the worker
threads'), so it is far steadier than a whole run on a shared machine:

- **image, one at a time**: the fake vendors' output (a 268-byte PNG, one chunk, as a
  small download arrives), one output stored after the other;
- **image, 16 at once**: the same, 16 stores in flight (a processor finishing a backlog);
- **video**: 4 MiB in the HTTP client's 64 KiB chunks, one at a time;
- **image, read back**: each stored image opened, read and closed, one at a time (what
  the gateway does to serve ``GET /v1/jobs/{id}/result``);
- **floor**: the same durable writes (a temporary file written, fsynced, renamed into a
  directory that exists, the directory fsynced), by plain synchronous code, one thread.

Each case stores fresh keys into a fresh temporary directory; the median of ``repeats``
runs is reported, with the wall time per output (mostly the disk's fsyncs).

    .venv/bin/python -m loadtests.bench_store [--outputs N] [--repeats R]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from runtime.results import LocalResultStore
from vendors_fake.png import expected_png

IMAGE = expected_png({"prompt": "a lighthouse at dusk"})
VIDEO = os.urandom(4 * 1024 * 1024)
HTTP_CHUNK = 64 * 1024  # what the vendor client's download yields (runtime.vendors.http)


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def _store(root: Path, outputs: int, at_once: int, data: bytes) -> tuple[float, float]:
    store = LocalResultStore(root)
    gate = asyncio.Semaphore(at_once)

    async def one(n: int) -> None:
        async with gate:
            key = f"job_{n:08d}.bin"
            await store.put_stream(key, _chunks(data, HTTP_CHUNK), "image/png", len(data))

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(outputs)))
    return time.process_time() - cpu, time.perf_counter() - wall


async def _read_back(root: Path, outputs: int) -> tuple[float, float]:
    store = LocalResultStore(root)
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(outputs):
        async with await store.open(f"job_{n:08d}.bin") as result:
            async for _ in result.chunks:
                pass
    return time.process_time() - cpu, time.perf_counter() - wall


def _floor(root: Path, outputs: int, data: bytes) -> tuple[float, float]:
    """The same durable writes with nothing around them (one directory, made first)."""
    root.mkdir(parents=True)
    cpu, wall = time.process_time(), time.perf_counter()
    for n in range(outputs):
        tmp, path = f"{root}/.job_{n:08d}.tmp", f"{root}/job_{n:08d}.bin"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        directory = os.open(root, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    return time.process_time() - cpu, time.perf_counter() - wall


CASES = {  # name: (outputs as a share of --outputs, in flight, bytes)
    "image, one at a time": (1.0, 1, IMAGE),
    "image, 16 at once": (1.0, 16, IMAGE),
    "video 4 MiB, one at a time": (0.05, 1, VIDEO),
}


def run(outputs: int = 2_000, repeats: int = 3) -> dict[str, Any]:
    """Per case: median CPU µs and wall ms per output, and the floor's for the image."""
    samples: dict[str, list[tuple[float, float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="jobline-bench-store-") as tmp:
        for repeat in range(repeats):
            for name, (share, at_once, data) in CASES.items():
                count = max(1, int(outputs * share))
                root = Path(tmp) / f"{repeat}-{len(samples.get(name, []))}-{hash(name)}"
                cpu, wall = asyncio.run(_store(root, count, at_once, data))
                samples.setdefault(name, []).append((cpu, wall, count))
                if name == "image, one at a time":
                    cpu, wall = asyncio.run(_read_back(root, count))
                    samples.setdefault("image, read back", []).append((cpu, wall, count))
            root = Path(tmp) / f"{repeat}-floor"
            cpu, wall = _floor(root, outputs, IMAGE)
            samples.setdefault("floor: plain durable writes, image", []).append(
                (cpu, wall, outputs)
            )
    return {
        "outputs": outputs,
        "repeats": repeats,
        "cases": {
            name: {
                "cpu_us_per_output": statistics.median(c / n * 1e6 for c, _, n in runs),
                "wall_ms_per_output": statistics.median(w / n * 1e3 for _, w, n in runs),
            }
            for name, runs in samples.items()
        },
    }


def render(result: dict[str, Any]) -> str:
    cases = result["cases"]
    width = max(len(name) for name in cases)
    lines = [
        f"result store: medians of {result['repeats']} runs, {result['outputs']} images a run",
        f"  {'':<{width}}  {'CPU µs/output':>14}  {'wall ms/output':>14}",
    ]
    for name, case in cases.items():
        cpu, wall = case["cpu_us_per_output"], case["wall_ms_per_output"]
        lines.append(f"  {name:<{width}}  {cpu:>14,.0f}  {wall:>14.2f}")
    floor = cases["floor: plain durable writes, image"]["cpu_us_per_output"]
    image = cases["image, one at a time"]["cpu_us_per_output"]
    lines.append(f"  image one at a time / floor, CPU: {image / floor:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--outputs", type=int, default=2_000, help="images per case and run")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(render(run(args.outputs, args.repeats)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
