"""``jobline stop`` waits for a local ``serve`` to go: a process that exited counts as gone
even before its parent collects its status (a zombie)."""

from __future__ import annotations

import subprocess
import sys
import time

from actors.lifecycle import _pid_alive


def test_a_running_process_is_alive_and_an_exited_unreaped_one_is_not() -> None:
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    exited = subprocess.Popen([sys.executable, "-c", "pass"])
    try:
        assert _pid_alive(running.pid)
        deadline = time.monotonic() + 10
        while _pid_alive(exited.pid) and time.monotonic() < deadline:
            time.sleep(0.05)  # no wait(): it stays a zombie, as serve under a busy parent
        assert not _pid_alive(exited.pid)
        with open(f"/proc/{exited.pid}/stat") as stat:  # still there, unreaped
            assert stat.read().rsplit(")", 1)[1].split()[0] == "Z"
    finally:
        running.kill()
        running.wait()
        exited.wait()
    assert not _pid_alive(exited.pid)
