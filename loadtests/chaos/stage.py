"""Where a scenario's runtime runs, and the hands that break it.

- ``SharedRay``: on the Ray of the harness process (one Ray for many scenarios, like the
  test session's); actors are killed through ``actors.hosting``.
- ``ChildRuntime``: in a child process (``loadtests.chaos.child``) with a Ray of its own,
  a local one or a three-node cluster, for the scenarios that kill everything at once
  or lose a node. The child runs in its own session with a private ``RAY_TMPDIR``, so
  a SIGKILL of its process group takes every Ray process it started and nothing else,
  and no ``ray.init()`` elsewhere on the machine ever finds its cluster.

Neither imports ray: ``actors.hosting`` does, imported when a stage starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Literal, Protocol

from loadtests.chaos.broken import broken_build
from runtime.config import JoblineConfig

Hosting = Literal["shared", "child", "cluster"]
CHILD_READY_TIMEOUT = 180.0


class Stage(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def kill(self, role: str) -> None: ...
    async def processor_stats(self) -> dict[str, dict[str, Any]]: ...


class SharedRay:
    def __init__(self, config: JoblineConfig, seed: int, broken: frozenset[str]) -> None:
        self.config = config
        self.seed = seed
        self.customization = broken_build(broken)
        self.runtime: Any = None

    async def start(self) -> None:
        from actors.hosting import RayRuntime

        self.runtime = await asyncio.to_thread(
            RayRuntime.start, self.config, seed=self.seed, customization=self.customization
        )

    async def stop(self) -> None:
        if self.runtime is not None:
            await asyncio.to_thread(self.runtime.stop)
            self.runtime = None

    async def kill(self, role: str) -> None:
        await asyncio.to_thread(self.runtime.kill, role)

    async def processor_stats(self) -> dict[str, dict[str, Any]]:
        def stats() -> dict[str, dict[str, Any]]:
            return {
                v: self.runtime.call(f"processor-{v}", "stats", timeout=30)
                for v in self.config.vendors
            }

        return await asyncio.to_thread(stats)


class ChildRuntime:
    """The runtime in a child process; ``sigkill`` and ``restart`` act on all of it."""

    def __init__(self, config: JoblineConfig, seed: int, mode: Literal["serve", "cluster"]):
        self.config = config
        self.seed = seed
        self.mode = mode
        data = Path(config.storage.database).parent
        self._config_file = data / "chaos-config.json"
        self._log = data / "child.log"
        # Short: Ray's unix sockets live below it (a path is at most 107 bytes).
        self._ray_tmp = Path(tempfile.mkdtemp(prefix="jlc-", dir="/tmp"))
        self._proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()
        self.starts = 0

    async def start(self) -> None:
        self._config_file.write_text(self.config.model_dump_json(), encoding="utf-8")
        env = {**os.environ, "RAY_TMPDIR": str(self._ray_tmp), "PYTHONUNBUFFERED": "1"}
        env.pop("RAY_ADDRESS", None)
        log = await asyncio.to_thread(self._log.open, "ab")
        with log:
            self._proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "loadtests.chaos.child",
                self.mode,
                str(self._config_file),
                str(self.seed),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        self.starts += 1
        try:
            ready = await asyncio.wait_for(self._read(), CHILD_READY_TIMEOUT)
        except BaseException:
            await self.sigkill()
            raise
        if not ready.get("ready"):
            raise RuntimeError(f"the runtime child did not start: {ready} (see {self._log})")

    async def _read(self) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdout is not None
        while True:
            line = await self._proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the runtime child exited (see {self._log})")
            text = line.decode().strip()
            if text.startswith("{"):
                with contextlib.suppress(json.JSONDecodeError):
                    message: dict[str, Any] = json.loads(text)
                    return message

    async def command(self, op: str, timeout: float = 120.0, **args: Any) -> Any:
        async with self._lock:
            proc = self._proc
            assert proc is not None and proc.stdin is not None
            proc.stdin.write((json.dumps({"op": op, **args}) + "\n").encode())
            await proc.stdin.drain()
            answer = await asyncio.wait_for(self._read(), timeout)
        if not answer.get("ok"):
            raise RuntimeError(f"child command {op} failed: {answer.get('error')}")
        return answer.get("result")

    async def kill(self, role: str) -> None:
        await self.command("kill", role=role)

    async def processor_stats(self) -> dict[str, dict[str, Any]]:
        stats: dict[str, dict[str, Any]] = await self.command("stats")
        return stats

    async def lose_processor_node(self) -> dict[str, Any]:
        result: dict[str, Any] = await self.command("lose-processor-node", timeout=180)
        return result

    async def sigkill(self) -> None:
        """SIGKILL the child and every process it started (its session), nothing else."""
        proc, self._proc = self._proc, None
        if proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        for pid in self._stragglers():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _stragglers(self) -> list[int]:
        """Processes still running with our private Ray directory on their command line."""
        marker = str(self._ray_tmp).encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes()
                environ = (entry / "environ").read_bytes()
            except OSError:
                continue
            if marker in cmdline or marker in environ:
                found.append(int(entry.name))
        return [pid for pid in found if pid != os.getpid()]

    async def restart(self) -> None:
        await self.start()

    async def stop(self) -> None:
        proc = self._proc
        if proc is not None and proc.returncode is None:
            assert proc.stdin is not None
            with contextlib.suppress(Exception):
                proc.stdin.write(b'{"op": "stop"}\n')
                await proc.stdin.drain()
                await asyncio.wait_for(proc.wait(), 60)
        await self.sigkill()
        shutil.rmtree(self._ray_tmp, ignore_errors=True)
