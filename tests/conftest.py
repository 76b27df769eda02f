"""Session-wide fixtures: one local Ray for the whole test session (it takes ~5 s to start)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from runtime.config import load_config
from runtime.testbed import ROOT_CONFIG, ensure_dev_secrets

# Secrets must be in the environment before Ray starts its workers.
ensure_dev_secrets(load_config(ROOT_CONFIG))


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=os.environ.get("JOBLINE_TEST_RAY_LOGS") == "1",
            namespace="jobline-tests",
        )
    yield ray
    ray.shutdown()
