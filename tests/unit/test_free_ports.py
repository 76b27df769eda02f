"""``loadtests.testbed.free_ports``: ports for servers a test starts later."""

from __future__ import annotations

from loadtests.testbed import NAMED_PORTS, free_ports


def test_a_port_handed_out_is_never_handed_out_again_in_this_process() -> None:
    # CI (wave 9): a `ray start` node drew, from the same range, the port already given
    # to the gateway the test started afterwards (free then: nothing bound it yet).
    given = free_ports(3)
    later = [port for _ in range(200) for port in free_ports(5)]
    assert len(set(given + later)) == len(given) + len(later)
    assert all(port in NAMED_PORTS for port in given + later)
