"""Session-wide set-up: the development secrets, and one local Ray for the whole session.

Nothing runs at import: the secrets go into the environment in ``pytest_configure``
(before any test, and before Ray starts its workers, which copy the environment), and
Ray starts on the first test that asks for ``ray_session`` (it takes ~5 s).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest


def pytest_configure(config: pytest.Config) -> None:
    from loadtests.testbed import ROOT_CONFIG, ensure_dev_secrets
    from runtime.config import load_config

    ensure_dev_secrets(load_config(ROOT_CONFIG))


@pytest.fixture(scope="session")
def ray_session() -> Iterator[Any]:
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=2,
            # jobline places its ledger and gateways on the nodes offering these.
            resources={"jobline_ledger": 1, "jobline_gateway": 1},
            include_dashboard=False,
            logging_level="ERROR",
            log_to_driver=os.environ.get("JOBLINE_TEST_RAY_LOGS") == "1",
            namespace="jobline-tests",
        )
    yield ray
    ray.shutdown()
