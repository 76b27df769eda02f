"""What a role does while nothing happens (actors/hosting/roles.py): nothing on a timer.

Its notices go to the app when one is logged (not on a 0.3 s tick), within the flush
interval of the last send; the roles a gateway's ``/metrics`` asks are looked up when a
scrape needs them (not every 3 s). Ray's calls are replaced by plain functions.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import pytest

from actors.hosting import ray_calls
from actors.hosting.roles import RoleNames, _NoticeForwarder
from runtime.telemetry import JsonFormatter


class App:
    """The app's ``post``: each batch of notices and the loop time it came."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[str]]] = []
        self.arrived = asyncio.Event()

    async def post(self, lines: list[dict[str, Any]]) -> None:
        self.batches.append((asyncio.get_running_loop().time(), [x["msg"] for x in lines]))
        self.arrived.set()


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> App:
    the_app = App()

    async def send(handle: Any, method: str, *args: Any) -> None:
        assert (handle, method) == ("the-app", "post")
        await the_app.post(*args)

    monkeypatch.setattr(ray_calls, "get_actor", lambda name, namespace: "the-app")
    monkeypatch.setattr(ray_calls, "send", send)
    return the_app


def notice(message: str) -> logging.LogRecord:
    record = logging.LogRecord("jobline.test", logging.INFO, __file__, 1, message, (), None)
    record.notice = True
    return record


async def forward(app: App, flush: float) -> tuple[list[tuple[float, list[str]]], int]:
    """A notice, three more at once right after it was sent (one from another thread),
    then none: the batches the app got and when (from the first notice's time), and the
    timers the loop held once everything was sent."""
    forwarder = _NoticeForwarder(JsonFormatter("processor-fal"), "jobline")
    running = asyncio.get_running_loop().create_task(forwarder.run(flush))
    await asyncio.sleep(0.05)  # it waits for a notice
    loop = asyncio.get_running_loop()
    logged = loop.time()
    forwarder.emit(notice("one"))
    await asyncio.wait_for(app.arrived.wait(), 5)
    app.arrived.clear()
    forwarder.emit(notice("two"))
    forwarder.emit(notice("three"))
    other = threading.Thread(target=forwarder.emit, args=(notice("four"),))
    other.start()
    other.join()
    await asyncio.wait_for(app.arrived.wait(), flush + 5)
    await asyncio.sleep(flush * 1.5)  # nothing more to send: nothing is sent
    timers = sum(1 for timer in loop._scheduled if not timer.cancelled())  # type: ignore[attr-defined]
    running.cancel()
    return [(at - logged, lines) for at, lines in app.batches], timers


def test_a_notice_goes_at_once_and_the_next_ones_together_within_the_flush_interval(
    app: App,
) -> None:
    flush = 0.5
    [(first_at, first), (second_at, second)], timers = asyncio.run(forward(app, flush))
    assert first == ["one"]
    assert first_at < flush / 2  # not held for a tick: the old loop sent it after one
    assert second == ["two", "three", "four"]  # one batch, a thread's notice in it
    assert flush <= second_at < flush + 2.0  # bounded by the flush interval (plus load)
    assert timers == 0  # waiting for the next notice, not on a tick


async def refreshes(fresh: float, answers: list[Any]) -> tuple[list[list[str]], int]:
    """``RoleNames.refresh`` at 0, 0.1 s and after ``fresh`` s: the names after each, and
    how often the app was asked. ``answers``: the app's (an exception: raised)."""
    asked = 0

    async def ask() -> list[str]:
        nonlocal asked
        answer = answers[asked]
        asked += 1
        if isinstance(answer, BaseException):
            raise answer
        return list(answer)

    names = RoleNames(["ledger", "gateway-0"], ask, fresh=fresh, timeout=1.0)
    seen = [list(names.names)]
    await names.refresh()
    seen.append(list(names.names))
    await asyncio.sleep(0.1)
    await names.refresh()
    seen.append(list(names.names))
    await asyncio.sleep(fresh)
    await names.refresh()
    seen.append(list(names.names))
    return seen, asked


def test_a_gateway_asks_the_app_for_the_roles_only_when_a_scrape_needs_them() -> None:
    one = ["ledger", "gateway-0", "gateway-1"]
    two = [*one, "gateway-2"]  # a node joined
    seen, asked = asyncio.run(refreshes(0.5, [one, two]))
    assert asked == 2  # once per interval, however many scrapes
    assert seen == [["ledger", "gateway-0"], one, one, two]


def test_the_last_known_roles_stand_when_the_app_does_not_answer() -> None:
    one = ["ledger", "gateway-0", "gateway-1"]
    seen, asked = asyncio.run(refreshes(0.3, [one, ray_calls.ActorNotFound("app", "x")]))
    assert asked == 2 and seen[-1] == one
