"""Ray on this machine for the harness: a private local Ray, and a multi-node cluster (the
chaos suite's node loss)."""

from __future__ import annotations

from actors.hosting import ray_calls

DEFAULT_HEAD_RESOURCES = {"jobline_ledger": 1.0, "jobline_gateway": 1.0}


# --- local clusters -----------------------------------------------------------------------


def start_local_ray(num_cpus: int | None = None, *, log_to_driver: bool = False) -> bool:
    """A private local Ray for this process (never one found on the machine), offering
    jobline's default ledger and gateway resources; ``log_to_driver`` copies the actors'
    output to this process's.

    Returns False if this process had Ray running already (nothing was started)."""
    if ray_calls.is_connected():
        return False
    ray_calls.start_local(DEFAULT_HEAD_RESOURCES, num_cpus=num_cpus, log_to_driver=log_to_driver)
    return True


def stop_local_ray() -> None:
    ray_calls.shutdown()


class LocalCluster:
    """A multi-node Ray cluster on this machine: a head and worker nodes (chaos: node loss).

    Every node is a set of real Ray processes; removing one kills them, as losing a
    machine would. Run it in a process of its own with ``RAY_TMPDIR`` pointing at a
    private directory: Ray writes the cluster's address there for ``ray.init()`` to find.
    The head offers the ledger's and the gateways' resources.
    """

    def __init__(self, head_cpus: int = 1) -> None:
        self._cluster = ray_calls.start_cluster_here(head_cpus, DEFAULT_HEAD_RESOURCES)
        self._workers: dict[str, ray_calls.Handle] = {}

    @property
    def address(self) -> str:
        return ray_calls.cluster_address(self._cluster)

    def add_worker(self, resources: dict[str, float], num_cpus: int = 1) -> str:
        node_id, node = ray_calls.add_node(self._cluster, num_cpus, resources)
        self._workers[node_id] = node
        return node_id

    def workers(self) -> list[str]:
        return list(self._workers)

    def remove_worker(self, node_id: str) -> None:
        """Kill every process of a worker node at once (no graceful shutdown)."""
        ray_calls.kill_node(self._cluster, self._workers.pop(node_id))

    def shutdown(self) -> None:
        ray_calls.stop_cluster(self._cluster)
