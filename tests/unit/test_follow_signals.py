"""``jobline serve`` following the app's notices (actors/lifecycle.py ``_follow``): each
look waits up to ``FOLLOW_WAIT`` s for a notice (a call every few seconds while nothing
happens), and a Ctrl-C ends the look it waits in, so a stop does not wait for it.

The runtime is a stand-in whose look for notices blocks the way Ray's ``ray.get`` does
(sleeping, taking signals as they come); the signal is a real SIGINT to this process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

import pytest

from actors import lifecycle
from actors.hosting.app import FOLLOWER_SEEN


class Runtime:
    """What ``_follow`` uses of a ``RayRuntime``: notices that never come, and a stop."""

    def __init__(self) -> None:
        self.config = type("Config", (), {"ray": type("Ray", (), {"namespace": "jobline"})})()
        self.owns_ray = True
        self.looks: list[float] = []  # how long each look was allowed to wait
        self.stopped_by: list[str | None] = []

    def notices(self, after: int, wait: float, follower: str | None = None) -> Any:
        self.looks.append(wait)
        time.sleep(wait)  # a blocking wait for the reply, as ray.get's
        return after, [], False

    def stop(self, follower: str | None = None) -> list[str]:
        self.stopped_by.append(follower)
        return ["stopped"]


@pytest.fixture
def restore_signals() -> Any:
    before = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}
    yield
    for number, handler in before.items():
        signal.signal(number, handler)


def test_a_follower_waits_seconds_per_look_and_a_ctrl_c_ends_the_look_at_once(
    restore_signals: Any,
) -> None:
    assert 1.0 < lifecycle.FOLLOW_WAIT < FOLLOWER_SEEN  # a waiting follower still counts
    runtime = Runtime()
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    code = lifecycle._follow(runtime)  # type: ignore[arg-type]
    took = time.monotonic() - started
    assert code == 0
    assert runtime.looks == [lifecycle.FOLLOW_WAIT]  # one look, cut short by the signal
    assert runtime.stopped_by and runtime.stopped_by[0] is not None  # it stopped the app
    assert took < lifecycle.FOLLOW_WAIT  # not after the look's whole wait
