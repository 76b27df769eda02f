"""Where each role runs on a cluster (actors.placement): decided from the nodes alone."""

from __future__ import annotations

import pytest

from actors.placement import (
    Node,
    RoleStatus,
    gateway_nodes,
    gateways_to_add,
    ledger_node,
    metric_targets,
    render_status,
    scrape_address,
)
from loadtests.testbed import ROOT_CONFIG
from runtime.config import JoblineConfig, load_config
from runtime.errors import DeploymentError

HEAD = Node("a" * 56, "10.0.0.1", {"jobline_ledger": 1, "CPU": 4}, head=True)
WORKER = Node("b" * 56, "10.0.0.2", {"jobline_gateway": 1, "jobline_processor": 8})
OTHER = Node("c" * 56, "10.0.0.3", {"jobline_gateway": 1})


@pytest.fixture(name="config")
def config_fixture() -> JoblineConfig:
    return load_config(ROOT_CONFIG)


def with_replicas(config: JoblineConfig, replicas: int) -> JoblineConfig:
    gateway = config.gateway.model_copy(update={"replicas": replicas})
    return config.model_copy(update={"gateway": gateway})


def test_the_ledger_goes_to_the_one_node_offering_its_resource(config: JoblineConfig) -> None:
    assert ledger_node([WORKER, HEAD], config) == HEAD


def test_no_ledger_node_says_how_to_offer_one(config: JoblineConfig) -> None:
    with pytest.raises(DeploymentError) as info:
        ledger_node([WORKER], config)
    (line,) = info.value.lines()
    assert "jobline_ledger" in line and "ray start --head --resources" in line


def test_two_ledger_nodes_are_refused_naming_both(config: JoblineConfig) -> None:
    twin = Node("d" * 56, "10.0.0.4", {"jobline_ledger": 1})
    with pytest.raises(DeploymentError) as info:
        ledger_node([HEAD, twin], config)
    assert "10.0.0.1" in str(info.value) and "10.0.0.4" in str(info.value)


def test_a_dead_node_offers_nothing(config: JoblineConfig) -> None:
    dead = Node(HEAD.node_id, HEAD.address, HEAD.resources, alive=False, head=True)
    with pytest.raises(DeploymentError):
        ledger_node([dead, WORKER], config)
    with pytest.raises(DeploymentError, match="jobline_gateway"):
        gateway_nodes([HEAD], config)


def test_every_gateway_node_gets_its_replicas_under_the_lowest_free_names(
    config: JoblineConfig,
) -> None:
    config = with_replicas(config, 2)
    first = gateways_to_add({}, [HEAD, WORKER], config)
    assert first == [("gateway-0", WORKER.node_id), ("gateway-1", WORKER.node_id)]
    placed = dict((role, node) for role, node in first)
    assert gateways_to_add(placed, [HEAD, WORKER], config) == []
    joined = gateways_to_add(placed, [HEAD, WORKER, OTHER], config)
    assert joined == [("gateway-2", OTHER.node_id), ("gateway-3", OTHER.node_id)]
    # gateway-0 went with a lost node; the node that replaces it reuses the name
    survivors = {"gateway-1": WORKER.node_id}
    assert gateways_to_add(survivors, [HEAD, WORKER], config) == [("gateway-0", WORKER.node_id)]


def test_each_role_is_scraped_through_its_own_nodes_gateway_when_there_is_one() -> None:
    gateways = {"gateway-0": (WORKER, "0.0.0.0", 8000)}
    targets = metric_targets({"ledger": HEAD, "gateway-0": WORKER}, gateways)
    assert targets == [
        {
            "targets": ["10.0.0.2:8000"],
            "labels": {"__param_actor": "gateway-0", "role": "gateway-0", "node": "10.0.0.2"},
        },
        {
            "targets": ["10.0.0.2:8000"],  # the head has no gateway: through the first
            "labels": {"__param_actor": "ledger", "role": "ledger", "node": "10.0.0.1"},
        },
    ]
    assert metric_targets({"ledger": HEAD}, {}) == []


def test_a_gateway_bound_to_one_address_is_scraped_there() -> None:
    assert scrape_address("127.0.0.1", 8080, WORKER) == "127.0.0.1:8080"
    assert scrape_address("::", 8080, Node("e", "fd00::2", {})) == "[fd00::2]:8080"


def test_status_shows_every_role_its_node_restarts_and_what_is_wrong() -> None:
    rows = [
        RoleStatus("ledger", "ALIVE", True, HEAD, 0, "/var/lib/jobline/jobline.db"),
        RoleStatus("processor-fal", "RESTARTING", False, WORKER, 3, "", "no answer within 2s"),
    ]
    lines = render_status("jobline", "10.0.0.1:6379", rows)
    assert lines[0] == "app 'jobline' on Ray 10.0.0.1:6379: 2 roles, 1 of 2 ready"
    assert lines[1].split() == ["role", "state", "ready", "node", "restarts", "detail"]
    assert "10.0.0.1 (head aaaaaaaa)" in lines[2] and lines[2].endswith("jobline.db")
    assert "RESTARTING" in lines[3] and " 3 " in lines[3] and "no answer" in lines[3]
    assert rows[1].as_dict()["head"] is False and rows[1].as_dict()["restarts"] == 3
