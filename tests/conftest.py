"""Session-wide set-up: the development secrets, and one local Ray for the whole session.

Nothing runs at import: the secrets go into the environment in ``pytest_configure``
(before any test, and before Ray starts its workers, which copy the environment), and
Ray starts on the first test that asks for ``ray_session`` (it takes ~5 s).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest


def pytest_configure(config: pytest.Config) -> None:
    from loadtests.testbed import ROOT_CONFIG, ensure_dev_secrets
    from runtime.config import load_config

    ensure_dev_secrets(load_config(ROOT_CONFIG))


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A private local Ray offering jobline's ledger and gateway resources (the actors'
    output copied here with ``JOBLINE_TEST_RAY_LOGS=1``)."""
    from actors.hosting import start_local_ray, stop_local_ray

    start_local_ray(num_cpus=2, log_to_driver=os.environ.get("JOBLINE_TEST_RAY_LOGS") == "1")
    yield
    stop_local_ray()
