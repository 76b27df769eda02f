"""The Ray jobline starts itself runs only the parts of Ray it uses (issue 16): no log
monitor when nothing reads the workers' output through Ray (``log_to_driver`` off, the
test session's default), and the dashboard agent's slower timers in every Ray process's
environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from actors.hosting import ray_calls

pytestmark = pytest.mark.ray


def descendants(pid: int) -> dict[int, str]:
    """Every process started (directly or not) by ``pid``: its command line."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            commands[int(entry.name)] = (
                (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            )
        except OSError:
            continue
        parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, its_parent in parents.items():
            if its_parent == parent and child not in found:
                found[child] = commands.get(child, "")
                frontier.append(child)
    return found


@pytest.mark.skipif(
    os.environ.get("JOBLINE_TEST_RAY_LOGS") == "1", reason="the actors' output is copied here"
)
def test_the_ray_jobline_starts_runs_no_log_monitor(ray_session: Any) -> None:
    ours = descendants(os.getpid())
    assert any("raylet" in command for command in ours.values())  # Ray runs, started here
    assert not [command for command in ours.values() if "log_monitor" in command]
    (agent,) = [pid for pid, command in ours.items() if "dashboard/agent.py" in command]
    environment = Path(f"/proc/{agent}/environ").read_bytes().split(b"\0")
    for name, value in ray_calls.RAY_PROCESS_ENV.items():
        assert f"{name}={value}".encode() in environment  # the agent's slower timers
