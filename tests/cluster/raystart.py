"""Real Ray clusters started the way an operator starts them: ``ray start`` on this machine.

Each node is a ``ray start --block`` process of its own, in its own working directory and
process group, started with its own free ports and Ray token authentication, in a
private temporary directory (``--temp-dir``; ``RAY_TMPDIR`` points ``--address auto`` at
it). A node is lost by killing its process group, as losing the machine would kill it;
``ray stop`` is never run (it stops every Ray of the user, other tests' too).

Ray gives every node the machine's own address (not 127.0.0.1: Ray replaces a loopback
``--node-ip-address`` with a reachable one); jobline's own servers here (gateways, the
fake vendors, the S3 server, Prometheus) listen on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from loadtests.testbed import WORKER_PORT_WINDOWS, free_ports

VENV_BIN = Path(sys.executable).parent
READY_LINE = "Ray runtime started"
START_TIMEOUT = 180.0  # seconds: a loaded 2-core machine starts a node in 10-60 s


def _listens(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class RayNode:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    cwd: Path
    metrics_port: int  # Ray's metrics agent on this node

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """Every process of the node at once, no goodbye (a lost machine); also what a
        `ray start` that ended by itself left behind in its process group."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


class RayStartCluster:
    """A head and worker nodes started with ``ray start`` under ``root``."""

    def __init__(self, root: Path, node_env: Mapping[str, str]) -> None:
        self.root = root
        self.temp_dir = root / "ray"
        self.token_path = root / "ray-token"
        self.token_path.write_text(secrets.token_hex(32))
        self.token_path.chmod(0o600)
        home = root / "home"
        home.mkdir(exist_ok=True)
        # What every Ray process and every process joining the cluster needs; jobline on
        # the nodes' PATH (as a virtualenv's `ray start` has it) for `ray job submit`.
        self.ray_env = {
            "RAY_TMPDIR": str(root),
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.token_path),
            "HOME": str(home),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '/usr/bin:/bin')}",
            "PYTHONUNBUFFERED": "1",
        }
        self.node_env = {**os.environ, **node_env, **self.ray_env}
        self.nodes: list[RayNode] = []
        # Each node started gets the next window, from a random one on.
        self._windows = itertools.count(secrets.randbelow(len(WORKER_PORT_WINDOWS)))
        self.gcs_port = 0
        self.dashboard_port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def add_worker(self, name: str, resources: Mapping[str, float]) -> RayNode:
        return self._start(name, [f"--address={self.address}"], resources)

    def start(
        self,
        head: Mapping[str, float],
        workers: Mapping[str, Mapping[str, float]],
        attempts: int = 3,
    ) -> None:
        """The head, then every worker as soon as the head's GCS listens (a worker's
        `ray start` waits for the rest of the head by itself). A `ray start` that gives up
        by itself (on a loaded machine its head may not find its own GCS in time) is
        started again, with every node, on fresh ports."""
        for attempt in range(1, attempts + 1):
            try:
                self._start_all(head, workers)
                return
            except RuntimeError:
                for node in self.nodes:
                    node.kill()
                self.nodes.clear()
                if attempt == attempts:
                    raise

    def _start_all(
        self, head: Mapping[str, float], workers: Mapping[str, Mapping[str, float]]
    ) -> None:
        self.gcs_port, self.dashboard_port, client = free_ports(3)
        head_node = self._launch(
            "head",
            [
                "--head",
                f"--port={self.gcs_port}",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}",
                f"--ray-client-server-port={client}",
            ],
            head,
        )
        deadline = time.monotonic() + START_TIMEOUT
        while not _listens(self.gcs_port):
            self._check(head_node, deadline)
            time.sleep(0.2)
        started = [head_node]
        started += [
            self._launch(name, [f"--address={self.address}"], r) for name, r in workers.items()
        ]
        for node in started:
            self._wait_ready(node, deadline)

    def _start(self, name: str, role_args: list[str], resources: Mapping[str, float]) -> RayNode:
        node = self._launch(name, role_args, resources)
        self._wait_ready(node, time.monotonic() + START_TIMEOUT)
        return node

    def _launch(self, name: str, role_args: list[str], resources: Mapping[str, float]) -> RayNode:
        node_manager, object_manager, agent, agent_grpc, runtime_env, metrics = free_ports(6)
        low = WORKER_PORT_WINDOWS[next(self._windows) % len(WORKER_PORT_WINDOWS)]
        cwd = self.root / f"node-{name}"
        cwd.mkdir(exist_ok=True)
        log = self.root / f"node-{name}.log"
        command = [
            str(VENV_BIN / "ray"),
            "start",
            "--block",
            *role_args,
            f"--node-manager-port={node_manager}",
            f"--object-manager-port={object_manager}",
            f"--dashboard-agent-listen-port={agent}",
            f"--dashboard-agent-grpc-port={agent_grpc}",
            f"--runtime-env-agent-port={runtime_env}",
            f"--metrics-export-port={metrics}",
            f"--min-worker-port={low}",
            f"--max-worker-port={low + 99}",
            f"--temp-dir={self.temp_dir}",
            "--num-cpus=1",
            "--object-store-memory=80000000",
            f"--resources={json.dumps(dict(resources))}",
            "--disable-usage-stats",
        ]
        with log.open("wb") as out:
            process = subprocess.Popen(
                command,
                cwd=cwd,
                env=self.node_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: killed as one
            )
        node = RayNode(name, process, log, cwd, metrics)
        self.nodes.append(node)
        return node

    def _wait_ready(self, node: RayNode, deadline: float) -> None:
        while READY_LINE not in node.log.read_text(errors="replace"):
            self._check(node, deadline)
            time.sleep(0.2)

    @staticmethod
    def _check(node: RayNode, deadline: float) -> None:
        if not node.alive():
            raise RuntimeError(f"ray start ({node.name}) ended:\n{node.log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"ray start ({node.name}) not ready:\n{node.log.read_text()[-3000:]}"
            )

    def ray(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """The ``ray`` command of this virtualenv, joined to this cluster."""
        return subprocess.run(
            [str(VENV_BIN / "ray"), *args],
            env={**os.environ, **self.ray_env},
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def shutdown(self) -> None:
        for node in reversed(self.nodes):
            with contextlib.suppress(ProcessLookupError, subprocess.TimeoutExpired):
                node.kill()
