"""Unit tests run without Ray and without sockets: ``ray.init`` is refused outright."""

from __future__ import annotations

from typing import Any

import pytest


@pytest.fixture(autouse=True)
def disallow_ray_init(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any ``ray.init`` in a unit test raises (as Ray Serve's own unit tests do)."""
    import ray

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("unit tests must not start Ray: move this test to tests/integration")

    monkeypatch.setattr(ray, "init", refuse)
