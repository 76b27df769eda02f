"""Ray on this machine for the harness: a private local Ray, and a multi-node cluster (the
chaos suite's node loss)."""

from __future__ import annotations

import logging
from typing import Any

import ray

from runtime.telemetry import get_logger

log = get_logger("hosting")


# --- local clusters -----------------------------------------------------------------------


def start_local_ray(num_cpus: int | None = None) -> bool:
    """A private local Ray for this process (never one found on the machine), offering
    jobline's default ledger and gateway resources.

    Returns False if this process had Ray running already (nothing was started)."""
    if ray.is_initialized():
        return False
    ray.init(
        address="local",
        num_cpus=num_cpus,
        resources=dict(DEFAULT_HEAD_RESOURCES),
        include_dashboard=False,
        logging_level=logging.WARNING,
        log_to_driver=False,
    )
    return True


def stop_local_ray() -> None:
    ray.shutdown()


DEFAULT_HEAD_RESOURCES = {"jobline_ledger": 1.0, "jobline_gateway": 1.0}


class LocalCluster:
    """A multi-node Ray cluster on this machine: a head and worker nodes (chaos: node loss).

    Every node is a set of real Ray processes; removing one kills them, as losing a
    machine would. Run it in a process of its own with ``RAY_TMPDIR`` pointing at a
    private directory: Ray writes the cluster's address there for ``ray.init()`` to find.
    The head offers the ledger's and the gateways' resources.
    """

    def __init__(self, head_cpus: int = 1) -> None:
        from ray.cluster_utils import Cluster

        self._cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": head_cpus,
                "include_dashboard": False,
                "resources": dict(DEFAULT_HEAD_RESOURCES),
            },
        )
        self._workers: dict[str, Any] = {}

    @property
    def address(self) -> str:
        return str(self._cluster.address)

    def add_worker(self, resources: dict[str, float], num_cpus: int = 1) -> str:
        node = self._cluster.add_node(num_cpus=num_cpus, resources=dict(resources))
        node_id = str(node.node_id)
        self._workers[node_id] = node
        return node_id

    def workers(self) -> list[str]:
        return list(self._workers)

    def remove_worker(self, node_id: str) -> None:
        """Kill every process of a worker node at once (no graceful shutdown)."""
        self._cluster.remove_node(self._workers.pop(node_id), allow_graceful=False)

    def shutdown(self) -> None:
        self._cluster.shutdown()  # type: ignore[no-untyped-call]
