"""Calls between roles on one machine over a Unix socket (``actors.hosting.nearby_calls``).

Real abstract Unix sockets on this machine, a plain object standing in for a role; no
Ray is started (``ray_calls.answerable`` maps errors as a Ray call would).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.hosting import nearby_calls, roles
from actors.hosting.nearby_calls import (
    LOOK_AGAIN,
    CallLost,
    NearbyClient,
    NearbyServer,
    NotNearby,
)
from actors.hosting.ray_calls import answerable
from actors.hosting.roles import RemoteProxy
from runtime.errors import ActorCallFailed, InsufficientCredits

pytestmark = pytest.mark.skipif(not nearby_calls.supported(), reason="Linux only")


class Role:
    """Stands in for a role's object: what ``RoleHost.call`` would run."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.release = asyncio.Event()

    async def serve(self, method: str, *args: Any, **kwargs: Any) -> Any:
        self.calls.append((method, args, kwargs))
        if method == "echo":
            return (args, kwargs)
        if method == "short":
            raise InsufficientCredits("acct-1", price=5, available=3)
        if method == "bug":
            raise KeyError("gateway-0")
        if method == "wait":
            await self.release.wait()
            return "released"
        if method == "unpicklable":
            return lambda: None
        raise AttributeError(method)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def served() -> AsyncIterator[tuple[Role, NearbyServer, str]]:
    role = Role()
    actor_id = uuid.uuid4().hex
    server = NearbyServer(actor_id, role.serve, answerable)
    await server.start()
    assert server.serving
    yield role, server, actor_id
    await server.close()


async def test_a_call_and_its_answer_cross_the_socket(served: Any) -> None:
    role, server, actor_id = served
    client = NearbyClient(actor_id)
    answers = await asyncio.gather(*(client.call("echo", (i,), {"k": [i]}) for i in range(50)))
    assert answers == [((i,), {"k": [i]}) for i in range(50)]
    assert client.calls == 50 and server.served == 50
    assert sorted(c[1][0] for c in role.calls) == list(range(50))
    await client.close()


async def test_errors_come_back_as_a_ray_call_would_give_them(served: Any) -> None:
    _, _, actor_id = served
    client = NearbyClient(actor_id)
    with pytest.raises(InsufficientCredits) as short:
        await client.call("short", (), {})
    assert (short.value.available, short.value.price) == (3, 5)
    with pytest.raises(ActorCallFailed, match="bug failed: KeyError"):
        await client.call("bug", (), {})
    with pytest.raises(ActorCallFailed, match="unpicklable failed: answer cannot be pickled"):
        await client.call("unpicklable", (), {})
    assert await client.call("echo", (1,), {}) == ((1,), {})  # the connection survived
    await client.close()


async def test_nobody_serving_means_not_nearby_and_a_later_look() -> None:
    clock = Clock()
    actor_id = uuid.uuid4().hex
    client = NearbyClient(actor_id, now=clock)
    with pytest.raises(NotNearby):
        await client.call("echo", (), {})
    role = Role()
    server = NearbyServer(actor_id, role.serve, answerable)
    await server.start()
    try:
        with pytest.raises(NotNearby):  # it does not look again at once
            await client.call("echo", (), {})
        assert role.calls == []
        clock.now += LOOK_AGAIN
        assert await client.call("echo", (2,), {}) == ((2,), {})
    finally:
        await client.close()
        await server.close()


async def test_a_server_of_another_actor_id_refuses_the_caller(served: Any) -> None:
    role, _, actor_id = served
    reader, writer = await asyncio.open_unix_connection(nearby_calls.address(actor_id))
    other = pickle.dumps((nearby_calls.MAGIC, uuid.uuid4().hex))
    writer.write(len(other).to_bytes(4, "big") + other)
    assert await reader.read() == b""  # closed without an answer
    writer.close()
    assert role.calls == []


async def test_another_users_socket_is_not_believed(
    served: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    role, _, actor_id = served
    other_user = os.getuid() + 1
    monkeypatch.setattr(os, "getuid", lambda: other_user)
    client = NearbyClient(actor_id)
    with pytest.raises(NotNearby, match="another user"):
        await client.call("echo", (), {})
    assert role.calls == []


async def test_calls_in_flight_when_the_actor_dies_are_lost_and_the_next_reconnects() -> None:
    clock = Clock()
    actor_id = uuid.uuid4().hex
    role = Role()
    server = NearbyServer(actor_id, role.serve, answerable)
    await server.start()
    client = NearbyClient(actor_id, now=clock)
    waiting = [asyncio.create_task(client.call("wait", (), {})) for _ in range(3)]
    while len(role.calls) < 3:
        await asyncio.sleep(0.01)
    await server.close()  # the actor's process dies: its connections go with it
    for task in waiting:
        with pytest.raises(CallLost, match="wait"):
            await task
    restarted = NearbyServer(actor_id, Role().serve, answerable)  # a restart keeps the id
    await restarted.start()
    try:
        clock.now += LOOK_AGAIN
        assert await client.call("echo", (3,), {}) == ((3,), {})
    finally:
        await client.close()
        await restarted.close()


async def test_an_argument_pickle_cannot_carry_goes_through_ray(served: Any) -> None:
    role, _, actor_id = served
    client = NearbyClient(actor_id)
    with pytest.raises(NotNearby, match="arguments of echo"):
        await client.call("echo", (lambda: None,), {})
    assert role.calls == []
    await client.close()


async def test_a_caller_that_stops_waiting_leaves_the_connection_usable(served: Any) -> None:
    role, _, actor_id = served
    client = NearbyClient(actor_id)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await client.call("wait", (), {})
    role.release.set()  # its answer arrives for nobody
    counter = itertools.count()
    answers = [await client.call("echo", (next(counter),), {}) for _ in range(3)]
    assert answers == [((0,), {}), ((1,), {}), ((2,), {})]
    await client.close()


class FakeHandle:
    """What ``ray_calls.actor_id`` reads of a Ray actor handle."""

    def __init__(self, actor_id: str) -> None:
        self._actor_id = bytes.fromhex(actor_id)


@pytest.fixture
def through_ray(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, tuple[Any, ...]]]:
    """Calls the proxy sends through Ray (``ray_calls.forward``), answered "via ray"."""
    sent: list[tuple[str, tuple[Any, ...]]] = []

    async def forward(handle: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        sent.append((method, args))
        return "via ray"

    monkeypatch.setattr(roles.ray_calls, "forward", forward)
    return sent


async def test_the_proxy_calls_over_the_socket_when_it_can(
    served: Any, through_ray: list[Any]
) -> None:
    _, _, actor_id = served
    proxy = RemoteProxy(FakeHandle(actor_id), nearby=True, retried=True)
    assert await proxy.echo(1) == ((1,), {})
    assert proxy.nearby_calls == 1 and through_ray == []
    off = RemoteProxy(FakeHandle(actor_id), nearby=False, retried=True)
    assert await off.echo(2) == "via ray"
    assert off.nearby_calls == 0 and through_ray == [("echo", (2,))]


async def test_the_proxy_calls_through_ray_when_nothing_serves_here(through_ray: list[Any]) -> None:
    proxy = RemoteProxy(FakeHandle(uuid.uuid4().hex), nearby=True, retried=False)
    assert await proxy.echo(3) == "via ray"
    assert through_ray == [("echo", (3,))]


@pytest.mark.parametrize("retried", [True, False])
async def test_a_call_lost_with_its_connection_is_sent_again_through_ray_only_if_retried(
    through_ray: list[Any], retried: bool
) -> None:
    actor_id = uuid.uuid4().hex
    role = Role()
    server = NearbyServer(actor_id, role.serve, answerable)
    await server.start()
    proxy = RemoteProxy(FakeHandle(actor_id), nearby=True, retried=retried)
    call = asyncio.create_task(proxy.wait())
    while not role.calls:
        await asyncio.sleep(0.01)
    await server.close()  # the actor died during the call
    if retried:
        assert await call == "via ray"
        assert through_ray == [("wait", ())]
    else:
        with pytest.raises(CallLost):
            await call
        assert through_ray == []
