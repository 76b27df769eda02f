"""Where each role runs on a Ray cluster, decided from the nodes Ray reports. No Ray here:
``actors.hosting`` asks Ray for the nodes and applies these decisions.

- **ledger**: the one alive node offering the custom resource ``[ray] ledger_resource``
  (the head by default): its database is a file on that node's disk, so no other node
  may ever open it. No node, or two, stops the deployment with a message saying so.
- **gateways**: ``[gateway] replicas`` on every alive node offering ``[ray]
  gateway_resource``, each binding ``[gateway] host`` there; a node that joins later gets
  its gateways, a lost node's gateways go with it.
- **processors**: wherever Ray finds ``[ray] processor_resources`` (Ray restarts them on
  another such node when theirs is lost).
- **sweeper** and the app's own actor: beside the ledger.

Also here: the Prometheus targets (one per role, scraped through a gateway) and the
table ``jobline status`` prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from actors.wiring import gateway_role
from runtime.config import JoblineConfig
from runtime.errors import DeploymentError

ANY_HOST = frozenset({"0.0.0.0", "::", ""})


@dataclass(frozen=True, slots=True)
class Node:
    """One Ray node as Ray reports it."""

    node_id: str  # hex
    address: str  # the node's IP, as Ray knows it
    resources: Mapping[str, float]
    alive: bool = True
    head: bool = False

    @property
    def label(self) -> str:
        return f"{self.address} ({'head' if self.head else 'worker'} {self.node_id[:8]})"

    def offers(self, resource: str) -> bool:
        return self.alive and self.resources.get(resource, 0.0) > 0


def nodes_offering(nodes: Iterable[Node], resource: str) -> list[Node]:
    """The alive nodes offering ``resource``: the head first, then by address and id."""
    found = [node for node in nodes if node.offers(resource)]
    return sorted(found, key=lambda n: (not n.head, n.address, n.node_id))


def ledger_node(nodes: Sequence[Node], config: JoblineConfig) -> Node:
    resource = config.ray.ledger_resource
    found = nodes_offering(nodes, resource)
    if not found:
        raise DeploymentError(
            (
                f"no node of the Ray cluster offers the custom resource {resource!r} for "
                f"the ledger: start its node (the head) with "
                f"`ray start --head --resources='{{\"{resource}\": 1}}'`",
            )
        )
    if len(found) > 1:
        where = ", ".join(node.label for node in found)
        raise DeploymentError(
            (
                f"{len(found)} nodes offer {resource!r} ({where}): the ledger's database "
                "lives on one node's disk, so offer that resource on exactly one node",
            )
        )
    return found[0]


def gateway_nodes(nodes: Sequence[Node], config: JoblineConfig) -> list[Node]:
    resource = config.ray.gateway_resource
    found = nodes_offering(nodes, resource)
    if not found:
        raise DeploymentError(
            (
                f"no node of the Ray cluster offers the custom resource {resource!r} for "
                f"the gateways: start the nodes that serve clients with "
                f"`ray start ... --resources='{{\"{resource}\": 1}}'`",
            )
        )
    return found


def gateways_to_add(
    placed: Mapping[str, str], nodes: Sequence[Node], config: JoblineConfig
) -> list[tuple[str, str]]:
    """``(role, node id)`` for every gateway missing on a gateway node.

    ``placed`` maps each live gateway role to its node id; new roles take the lowest
    free indices (``gateway-0``, ``gateway-1``, ...)."""
    replicas = config.gateway.replicas
    used = set(placed)
    index = 0
    added = []
    for node in nodes_offering(nodes, config.ray.gateway_resource):
        have = sum(1 for node_id in placed.values() if node_id == node.node_id)
        for _ in range(replicas - have):
            while gateway_role(index) in used:
                index += 1
            used.add(gateway_role(index))
            added.append((gateway_role(index), node.node_id))
    return added


def scrape_address(host: str, port: int, node: Node) -> str:
    """Where a gateway bound to ``host``:``port`` on ``node`` is reached."""
    reachable = node.address if host in ANY_HOST else host
    return f"[{reachable}]:{port}" if ":" in reachable else f"{reachable}:{port}"


def metric_targets(
    roles: Mapping[str, Node], gateways: Mapping[str, tuple[Node, str, int]]
) -> list[dict[str, Any]]:
    """A Prometheus ``file_sd`` document: one target per role, scraped with
    ``/metrics?actor=ROLE`` through the gateway on the role's own node, or the first
    gateway where its node has none. Labels: ``role`` and ``node`` (the node's address).
    No gateway: no targets."""
    if not gateways:
        return []
    first = sorted(gateways)[0]
    targets = []
    for role, node in sorted(roles.items()):
        local = sorted(g for g, (n, _, _) in gateways.items() if n.node_id == node.node_id)
        gateway_node, host, port = gateways[local[0] if local else first]
        targets.append(
            {
                "targets": [scrape_address(host, port, gateway_node)],
                "labels": {"__param_actor": role, "role": role, "node": node.address},
            }
        )
    return targets


# --- jobline status -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RoleStatus:
    """One role as ``jobline status`` shows it."""

    role: str
    state: str  # Ray's actor state: ALIVE, RESTARTING, PENDING_CREATION, DEAD
    ready: bool
    node: Node | None
    restarts: int
    detail: str = ""  # the ledger's path, a gateway's address
    error: str = ""  # why it is not ready

    def as_dict(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "state": self.state,
            "ready": self.ready,
            "node": None if self.node is None else self.node.address,
            "node_id": None if self.node is None else self.node.node_id,
            "head": None if self.node is None else self.node.head,
            "restarts": self.restarts,
            "detail": self.detail,
            "error": self.error,
        }


def render_status(app: str, cluster: str, rows: Sequence[RoleStatus]) -> list[str]:
    """The lines of ``jobline status``: a summary, then one row per role."""
    ready = sum(1 for row in rows if row.ready)
    verdict = "all ready" if rows and ready == len(rows) else f"{ready} of {len(rows)} ready"
    lines = [f"app {app!r} on Ray {cluster}: {len(rows)} roles, {verdict}"]
    header = ("role", "state", "ready", "node", "restarts", "detail")
    table = [header] + [
        (
            row.role,
            row.state,
            "yes" if row.ready else "no",
            "-" if row.node is None else row.node.label,
            str(row.restarts),
            row.detail if row.ready or not row.error else f"{row.detail} {row.error}".strip(),
        )
        for row in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(len(header) - 1)]
    for r in table:
        cells = [cell.ljust(width) for cell, width in zip(r[:-1], widths, strict=True)]
        lines.append("  ".join([*cells, r[-1]]).rstrip())
    return lines
