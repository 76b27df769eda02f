"""A driver that stays joined to a test cluster and answers ``status`` on request.

    python -m tests.cluster.observer CONFIG

Each line on stdin (``status``) gets one JSON line back: the app's roles as ``jobline
status --json`` prints them, or ``{"error": ...}`` while the app does not run. A test
that polls the cluster's state many times would otherwise pay for a new process, an
import of Ray and a join every time; ``jobline status`` itself is run by the tests too.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from actors.hosting import RayRuntime, connect
from runtime.config import load_config
from runtime.errors import DeploymentError


def main(config_path: str) -> int:
    config = load_config(Path(config_path))
    connect(config)
    for line in sys.stdin:
        if line.strip() != "status":
            continue
        try:
            rows = [row.as_dict() for row in RayRuntime.attach(config).status()]
            answer: object = rows
        except DeploymentError as exc:
            answer = {"error": str(exc)}
        except Exception as exc:  # a role or node on its way out: ask again
            answer = {"error": f"{type(exc).__name__}: {exc}"}
        sys.__stdout__.write(json.dumps(answer) + "\n")  # type: ignore[union-attr]
        sys.__stdout__.flush()  # type: ignore[union-attr]
    return 0


if __name__ == "__main__":
    sys.stdout = sys.stderr  # Ray's own printing stays out of the answers
    sys.exit(main(sys.argv[1]))
