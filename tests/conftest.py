"""Session-wide set-up: the development secrets, one local Ray for the whole session, and
the longest test files first.

Nothing runs at import: the secrets go into the environment in ``pytest_configure``
(before any test, and before Ray starts its workers, which copy the environment), and
Ray starts on the first test that asks for ``ray_session`` (it takes ~5 s).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

# The files that take longest, longest first (seconds from `--durations` and --junitxml:
# two workers on this shared machine at load 5-20, 2026-11-30). `make test` hands whole
# files to its two workers in collection order (`--dist loadfile --no-loadscope-reorder`;
# xdist's default order puts the files with fewest tests last, and so a one-test file of
# a minute). Starting these first leaves the short files for the end, where they fill
# both workers until the last one is done.
LONGEST_FILES = (
    "tests/chaos/test_chaos.py",  # ~240 s: a runtime per scenario, chaos under load
    "tests/cluster/test_ray_start.py",  # ~170 s: a two-node `ray start` cluster
    "tests/integration/test_runtime_ray.py",  # ~150 s: runtimes on Ray
    "tests/chaos/test_simulation.py",  # ~110 s: simulated runs, CPU-bound
    "tests/browser/test_console.py",  # ~60 s: Chromium per test
    "tests/cluster/test_serve_local.py",  # ~55 s: `jobline serve` twice, its own Ray
    "tests/integration/test_lifecycle_ray.py",  # ~45 s
    "tests/integration/test_processor_field_cases.py",  # ~45 s
    "tests/chaos/test_fuzz.py",  # ~40 s
    "tests/integration/test_prometheus.py",  # ~35 s: the real Prometheus
    "tests/integration/test_fair_share.py",  # ~30 s
    "tests/integration/test_flood.py",  # ~30 s: Locust against jobline on Ray
    "tests/integration/test_processor.py",  # ~30 s
    "tests/browser/test_console_ray.py",  # ~25 s
    "tests/integration/test_loadtest.py",  # ~20 s
    "tests/integration/test_packaging.py",  # ~20 s: builds and installs the wheel
    "tests/integration/test_tracing.py",  # ~20 s
)


def pytest_configure(config: pytest.Config) -> None:
    from loadtests.testbed import ROOT_CONFIG, ensure_dev_secrets
    from runtime.config import load_config

    ensure_dev_secrets(load_config(ROOT_CONFIG))


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files of ``LONGEST_FILES`` first, in its order; every other file after them,
    in collection order (the tests of a file keep their order)."""
    rank = {path: i for i, path in enumerate(LONGEST_FILES)}

    def key(item: pytest.Item) -> int:
        return rank.get(item.nodeid.split("::", 1)[0], len(rank))

    items.sort(key=key)  # stable


@pytest.fixture(scope="session")
def ray_session() -> Iterator[None]:
    """A private local Ray offering jobline's ledger and gateway resources (the actors'
    output copied here with ``JOBLINE_TEST_RAY_LOGS=1``)."""
    from actors.hosting import start_local_ray, stop_local_ray

    start_local_ray(num_cpus=2, log_to_driver=os.environ.get("JOBLINE_TEST_RAY_LOGS") == "1")
    yield
    stop_local_ray()
