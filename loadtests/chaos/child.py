"""A jobline runtime in a child process of the chaos harness, driven over stdin/stdout.

    python -m loadtests.chaos.child serve CONFIG_JSON [SEED]     a local Ray of its own
    python -m loadtests.chaos.child cluster CONFIG_JSON [SEED]   a head and two worker nodes

The harness keeps the fake vendors and the load in its own process and runs the runtime
here, so it can SIGKILL the whole thing (this process and every Ray process it started)
or lose a node of a real multi-node cluster without touching the Ray of its own process.
Start it in a new session with ``RAY_TMPDIR`` set to a private directory.

Once every actor is ready it prints ``{"ready": true}``; then it answers one JSON
command per stdin line with one JSON line: ``{"op": "stats"}`` (each processor's
stats), ``{"op": "kill", "role": R}``, ``{"op": "lose-processor-node"}`` (cluster: the
worker node hosting the processors is removed at once), ``{"op": "stop"}``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from runtime.config import JoblineConfig

PROCESSOR_RESOURCE = "jobline_processors"


def main(argv: list[str]) -> int:
    mode, config_path = argv[0], Path(argv[1])
    seed = int(argv[2]) if len(argv) > 2 else 0
    config = JoblineConfig.model_validate_json(config_path.read_text(encoding="utf-8"))
    from actors.hosting import LocalCluster, RayRuntime
    from actors.wiring import processor_role

    cluster: LocalCluster | None = None
    if mode == "cluster":
        cluster = LocalCluster(head_cpus=1)
        for _ in range(2):
            cluster.add_worker({PROCESSOR_RESOURCE: 4})
        ray_config = config.ray.model_copy(
            update={"processor_resources": {PROCESSOR_RESOURCE: 1.0}}
        )
        config = config.model_copy(update={"ray": ray_config})
        runtime = RayRuntime.start(config, address=cluster.address, seed=seed)
    else:
        runtime = RayRuntime.start(config, address="local", seed=seed)
    _answer({"ready": True})

    def run(command: dict[str, Any]) -> Any:
        op = command["op"]
        if op == "stats":
            return {v: runtime.call(processor_role(v), "stats") for v in config.vendors}
        if op == "kill":
            runtime.kill(command["role"])
            return True
        if op == "lose-processor-node" and cluster is not None:
            node = runtime.node_of(processor_role(next(iter(config.vendors))))
            placed = {r: runtime.node_of(r) for r in runtime.roles()}
            cluster.remove_worker(node)
            return {
                "removed": node,
                "roles_there": sorted(r for r, n in placed.items() if n == node),
            }
        raise ValueError(f"unknown command {command!r}")

    for line in sys.stdin:
        command = json.loads(line)
        if command.get("op") == "stop":
            break
        try:
            _answer({"ok": True, "result": run(command)})
        except Exception as exc:  # report it; the harness decides
            _answer({"ok": False, "error": repr(exc)})
    runtime.stop()
    if cluster is not None:
        cluster.shutdown()
    _answer({"stopped": True})
    return 0


def _answer(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
