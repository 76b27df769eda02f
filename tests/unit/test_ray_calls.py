"""Ray's errors turned into jobline's (``actors.hosting.ray_calls``), without a Ray.

A handle is opaque to jobline: here it is any object whose methods have ``.remote``, and
Ray's report of an error raised in an actor is built as Ray builds it.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest
from ray.exceptions import ActorDiedError, RayTaskError

from actors.hosting import ray_calls
from actors.hosting.cluster import one_line
from runtime.errors import ActorCallFailed, LedgerFault


def reported(raised: BaseException) -> BaseException:
    """What Ray raises in the caller when the actor's method raised ``raised``."""
    traceback = f"Traceback (most recent call last):\n  ...\n{type(raised).__name__}: {raised}"
    return RayTaskError("call", traceback, raised).as_instanceof_cause()


class Method:
    def __init__(self, failure: BaseException) -> None:
        self.failure = failure
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> Awaitable[Any]:
        self.calls.append(args)

        async def reply() -> Any:
            raise self.failure

        return reply()


class RoleHandle:
    def __init__(self, failure: BaseException) -> None:
        self.call = Method(failure)


async def test_a_jobline_error_raised_in_a_role_comes_back_as_itself() -> None:
    handle = RoleHandle(reported(LedgerFault("balance", "disk I/O error")))
    with pytest.raises(LedgerFault) as info:
        await ray_calls.forward(handle, "balance", "acct-1")
    assert type(info.value) is LedgerFault  # not Ray's wrapper, whose text is a traceback
    assert str(info.value) == str(LedgerFault("balance", "disk I/O error"))
    assert handle.call.calls == [("balance", "acct-1")]


async def test_any_other_error_raised_in_a_role_is_an_actor_call_failed() -> None:
    handle = RoleHandle(reported(KeyError("job-7")))
    with pytest.raises(ActorCallFailed) as info:
        await ray_calls.forward(handle, "settle")
    assert (info.value.call, info.value.error) == ("settle", "KeyError")


async def test_ray_failing_to_reach_the_actor_stays_rays_for_the_caller_to_retry() -> None:
    with pytest.raises(ActorDiedError):
        await ray_calls.forward(RoleHandle(ActorDiedError()), "balance")


def test_one_line_is_the_last_line_of_what_the_remote_method_raised() -> None:
    failure = reported(ValueError("while opening\nno such table: jobs"))
    assert ray_calls.remote_cause(failure).__class__ is ValueError
    assert one_line(failure) == "no such table: jobs"
    assert ray_calls.remote_cause(ValueError("here")) is None
