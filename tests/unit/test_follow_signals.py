"""``jobline serve`` following the app's notices (actors/lifecycle.py ``_follow``,
``RayRuntime.notices``): each look waits up to ``FOLLOW_WAIT`` s for a notice (one call
to the app every few seconds while nothing happens), and a Ctrl-C still ends the look it
waits in within ``GIVE_UP_EVERY`` s, so a stop does not wait for the look.

Ray's calls are replaced by plain functions (a reply that never comes: ``wait`` sleeps
its timeout out and raises ``NoReply``, as ``ray.get`` does); the signal is a real SIGINT
to this process.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from actors import lifecycle
from actors.hosting import ray_calls
from actors.hosting.app import FOLLOWER_SEEN
from actors.hosting.runtime import GIVE_UP_EVERY, RayRuntime
from runtime.config import load_config
from tests.unit.test_app_status import ROOT


class SilentApp:
    """An app with no notice to give: the calls sent to it, and each wait for a reply."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, tuple[Any, ...]]] = []
        self.waits: list[float] = []

    def send(self, handle: Any, method: str, *args: Any) -> str:
        self.sent.append((method, args))
        return "reply"

    def wait(self, reply: Any, timeout: float) -> Any:
        self.waits.append(timeout)
        time.sleep(timeout)
        raise ray_calls.NoReply("no reply yet")


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[SilentApp]:
    silent = SilentApp()
    monkeypatch.setattr(ray_calls, "send", silent.send)
    monkeypatch.setattr(ray_calls, "wait", silent.wait)
    before = {n: signal.getsignal(n) for n in (signal.SIGINT, signal.SIGTERM)}
    yield silent
    for number, handler in before.items():
        signal.signal(number, handler)


def runtime() -> RayRuntime:
    return RayRuntime(load_config(ROOT / "jobline.toml"), app="the-app", owns_ray=True)


def test_a_look_asks_the_app_once_and_gives_up_within_a_second_when_told(
    app: SilentApp,
) -> None:
    asks: list[float] = []

    def give_up() -> bool:
        asks.append(time.monotonic())
        return len(asks) == 3

    answer = runtime().notices(7, 30.0, "serve", give_up=give_up)
    assert answer == (7, [], False)  # nothing new
    assert app.sent == [("notices", (7, 30.0, "serve"))]  # one call to the app
    assert app.waits == [GIVE_UP_EVERY] * 3  # asked after each second of waiting


def test_a_follower_waits_seconds_per_look_and_a_ctrl_c_ends_the_look(
    app: SilentApp, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert 1.0 < lifecycle.FOLLOW_WAIT < FOLLOWER_SEEN  # a waiting follower still counts
    following = runtime()
    stopped_by: list[str | None] = []

    def stop(follower: str | None = None) -> list[str]:
        stopped_by.append(follower)
        return ["stopped"]

    monkeypatch.setattr(following, "stop", stop)
    timer = threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT))
    started = time.monotonic()
    timer.start()
    code = lifecycle._follow(following)
    took = time.monotonic() - started
    assert code == 0
    assert [method for method, _ in app.sent] == ["notices"]  # one look, cut short
    assert app.sent[0][1][1] == lifecycle.FOLLOW_WAIT
    assert len(stopped_by) == 1 and stopped_by[0] is not None  # it stopped the app
    assert took < lifecycle.FOLLOW_WAIT  # not after the look's whole wait
