"""The app's status while its reconciler removes roles, and its notices while it stops
(actors/hosting/app.py).

Ray's calls are replaced by plain functions here: what is tested is the app's own
bookkeeping when a lost node's gateways are removed in the middle of a status call (CI
saw ``KeyError: 'gateway-0'`` from ``jobline status`` right after a worker node was lost),
and what a follower (``jobline serve``, ``jobline logs -f``) reads while the app stops (CI
saw a local serve end without the app's last notice).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actors.hosting import ray_calls
from actors.hosting.app import FOLLOWERS_ANSWERED, JoblineApp
from actors.placement import Node
from actors.wiring import Customization
from runtime.config import load_config

ROOT = Path(__file__).resolve().parents[2]
HEAD = Node(node_id="aa" * 14, address="127.0.0.1", resources={}, head=True)


class FakeRay:
    """Actor state reads that block until the test lets them go (Ray's state API is a
    blocking call the app makes in a thread), and ``ready`` answers at once."""

    def __init__(self) -> None:
        self.reading = threading.Event()
        self.go_on = threading.Event()

    def actor_state(self, handle: Any) -> ray_calls.ActorState:
        self.reading.set()
        assert self.go_on.wait(10), "the test never let the state read go on"
        return ray_calls.ActorState(state="ALIVE", node_id=HEAD.node_id)

    async def send(self, handle: Any, method: str, *args: Any) -> dict[str, Any]:
        assert method == "ready"
        return {"detail": f"{handle}:8000"}


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeRay]:
    fake = FakeRay()
    monkeypatch.setattr(ray_calls, "restarted", lambda: False)
    monkeypatch.setattr(ray_calls, "nodes", lambda: [HEAD])
    monkeypatch.setattr(ray_calls, "actor_state", fake.actor_state)
    monkeypatch.setattr(ray_calls, "send", fake.send)
    monkeypatch.setattr(ray_calls, "kill", lambda handle, restart=False: None)
    before = list(logging.getLogger("jobline").handlers)
    yield fake
    fake.go_on.set()
    logging.getLogger("jobline").handlers[:] = before


async def status_while_a_gateway_is_removed(fake: FakeRay) -> list[str]:
    app = JoblineApp(load_config(ROOT / "jobline.toml"), None, Customization(), {}, None)
    for role in ("ledger", "sweeper", "gateway-0", "gateway-1"):
        app._handles[role] = f"handle-{role}"
    status = asyncio.get_running_loop().create_task(app.status())
    while not fake.reading.is_set():
        await asyncio.sleep(0.01)
    await app._kill(["gateway-0"])  # what _reconcile does for a lost node's gateway
    fake.go_on.set()
    rows = await status
    assert all(row.ready and row.error == "" for row in rows), rows
    return [row.role for row in rows]


def test_status_answers_for_the_roles_it_started_with_when_one_is_removed_meanwhile(
    fake_ray: FakeRay,
) -> None:
    roles = asyncio.run(status_while_a_gateway_is_removed(fake_ray))
    assert roles == ["ledger", "sweeper", "gateway-0", "gateway-1"]


async def follow_while_stopping(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stop the app while a follower reads its notices the way ``jobline serve`` does
    (until an answer says stopped); what the follower printed."""
    app = JoblineApp(load_config(ROOT / "jobline.toml"), None, Customization(), {}, None)
    for role in ("ledger", "sweeper", "gateway-0"):
        app._handles[role] = f"handle-{role}"

    async def send(handle: Any, method: str, *args: Any) -> None:
        assert (method, args) == ("call", ("stop",))

    async def slow_targets(where: dict[str, Node]) -> None:
        await asyncio.sleep(0.3)  # the targets file written in a thread: the loop turns

    monkeypatch.setattr(ray_calls, "send", send)
    monkeypatch.setattr(app, "_write_targets", slow_targets)
    printed: list[str] = []

    async def follow() -> None:
        after, stopped = 0, False
        while not stopped:
            after, lines, stopped = await app.notices(after, 0.05)
            printed.extend(line["msg"] for line in lines)

    follower = asyncio.get_running_loop().create_task(follow())
    await app.stop()
    await asyncio.wait_for(follower, 5)
    return printed


def test_a_follower_reads_the_apps_last_notice_before_it_is_told_the_app_stopped(
    fake_ray: FakeRay, monkeypatch: pytest.MonkeyPatch
) -> None:
    printed = asyncio.run(follow_while_stopping(monkeypatch))
    assert printed[0].startswith("stopping: draining 1 gateways"), printed
    assert printed[-1] == f"app {load_config(ROOT / 'jobline.toml').ray.namespace!r} stopped"


async def stop_with_a_waiting_follower(monkeypatch: pytest.MonkeyPatch) -> list[str] | None:
    """What a follower reading like ``jobline serve`` (waiting 5 s at a time, its calls
    50 ms apart, until told the app stopped) had printed when ``stop`` returned: ``jobline
    stop`` removes the app right then (None: it did not have the last notice yet)."""
    app = JoblineApp(load_config(ROOT / "jobline.toml"), None, Customization(), {}, None)
    app._handles["ledger"] = "handle-ledger"

    async def send(handle: Any, method: str, *args: Any) -> None:
        assert (method, args) == ("call", ("stop",))

    monkeypatch.setattr(ray_calls, "send", send)
    printed: list[str] = []

    async def follow() -> None:
        after, stopped = 0, False
        while not stopped:
            after, lines, stopped = await app.notices(after, 5.0, "serve")
            printed.extend(line["msg"] for line in lines)
            await asyncio.sleep(0.05)  # the answer's way back and the next call's: remote

    follower = asyncio.get_running_loop().create_task(follow())
    await asyncio.sleep(0.1)  # the follower waits
    await app.stop()
    done = printed[-1:] == [f"app {app._namespace!r} stopped"]
    follower.cancel()
    return printed if done else None


def test_stop_returns_only_once_a_waiting_follower_has_the_last_notice(
    fake_ray: FakeRay, monkeypatch: pytest.MonkeyPatch
) -> None:
    printed = asyncio.run(stop_with_a_waiting_follower(monkeypatch))
    assert printed is not None, "stop returned before the follower had the last notice"


async def stop_by_its_own_follower(monkeypatch: pytest.MonkeyPatch) -> float:
    """How long a stop takes when the one stopping the app is its only follower (serve on
    Ctrl-C: it is not reading notices while it stops the app)."""
    app = JoblineApp(load_config(ROOT / "jobline.toml"), None, Customization(), {}, None)

    async def send(handle: Any, method: str, *args: Any) -> None:
        raise AssertionError("no role to stop")

    monkeypatch.setattr(ray_calls, "send", send)
    await app.notices(0, 0, "serve")
    started = asyncio.get_running_loop().time()
    await app.stop("serve")
    return asyncio.get_running_loop().time() - started


def test_a_stop_does_not_wait_for_the_follower_that_stops_the_app(
    fake_ray: FakeRay, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert asyncio.run(stop_by_its_own_follower(monkeypatch)) < FOLLOWERS_ANSWERED


async def reconcile_once(
    monkeypatch: pytest.MonkeyPatch, targets_file: Path | None, dead: str | None = None
) -> tuple[list[str], list[str], list[str]]:
    """One look of the reconciler at four roles (``dead``'s Ray record DEAD): the roles
    whose state it read, the roles left, and the notices it logged."""
    config = load_config(ROOT / "jobline.toml")
    config = config.model_copy(
        update={"metrics": config.metrics.model_copy(update={"targets_file": targets_file})}
    )
    app = JoblineApp(config, None, Customization(), {}, None)
    for role in ("ledger", "sweeper", "gateway-0", "gateway-1"):
        app._handles[role] = role
    read: list[str] = []

    def actor_state(handle: Any) -> ray_calls.ActorState:
        read.append(handle)
        return ray_calls.ActorState(state="DEAD" if handle == dead else "ALIVE", node_id="")

    monkeypatch.setattr(ray_calls, "actor_state", actor_state)
    monkeypatch.setattr(ray_calls, "nodes", lambda: [])  # no node: no gateway to add
    await app._reconcile()
    _, lines, _ = await app.notices(0, 0)
    return read, list(app._handles), [line["msg"] for line in lines]


def test_the_reconciler_reads_only_the_gateways_states_unless_it_writes_targets(
    fake_ray: FakeRay, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Ray restarts the other roles itself: without a targets file their states are unused.
    read, roles, _ = asyncio.run(reconcile_once(monkeypatch, None))
    assert sorted(read) == ["gateway-0", "gateway-1"]
    assert roles == ["ledger", "sweeper", "gateway-0", "gateway-1"]
    read, _, _ = asyncio.run(reconcile_once(monkeypatch, tmp_path / "targets.json"))
    assert sorted(read) == ["gateway-0", "gateway-1", "ledger", "sweeper"]


def test_the_reconciler_still_removes_a_dead_gateway_and_says_so(
    fake_ray: FakeRay, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, roles, notices = asyncio.run(reconcile_once(monkeypatch, None, dead="gateway-1"))
    assert roles == ["ledger", "sweeper", "gateway-0"]
    assert notices == ["gateway-1 is gone with its node"]
