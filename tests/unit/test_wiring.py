"""The wiring's parts: per-role random generators, and the harness's customizations."""

from __future__ import annotations

import pickle
from typing import cast

import pytest

from actors.wiring import Customization, Wiring, all_roles
from loadtests.chaos.broken import DoubleSubmit, broken_build
from loadtests.testbed import ROOT_CONFIG
from runtime.config import load_config
from runtime.vendors import VendorClient


def draws(wiring: Wiring, role: str) -> list[float]:
    rng = wiring.rng(role)
    return [rng.random() for _ in range(3)]


def test_a_seed_gives_each_role_its_own_stream_and_the_same_one_every_time() -> None:
    seeded = Wiring(seed=7)
    assert draws(seeded, "processor-fal") == draws(Wiring(seed=7), "processor-fal")
    assert draws(seeded, "processor-fal") != draws(seeded, "processor-replicate")
    assert draws(seeded, "processor-fal") != draws(Wiring(seed=8), "processor-fal")


def test_without_a_seed_every_generator_starts_somewhere_new() -> None:
    assert draws(Wiring(), "gateway-0") != draws(Wiring(), "gateway-0")


def test_the_products_customization_changes_nothing() -> None:
    config = load_config(ROOT_CONFIG)
    fal = config.vendors["fal"]
    assert Customization().slot_limit(fal) == fal.concurrency
    assert all_roles(config)[0] == "ledger"
    assert all_roles(config, gateways=1)[-1] == "gateway-0"


def test_a_broken_build_pickles_and_changes_only_what_it_names() -> None:
    config = load_config(ROOT_CONFIG)
    fal = config.vendors["fal"]
    client = cast(VendorClient, object())
    no_limit = broken_build(["ignore-slot-limit"])
    assert no_limit is not None and pickle.loads(pickle.dumps(no_limit)) == no_limit
    assert no_limit.slot_limit(fal) > 1000 * fal.concurrency
    assert no_limit.vendor_client(client) is client
    twice = broken_build(["double-submit"])
    assert twice is not None and twice.slot_limit(fal) == fal.concurrency
    assert isinstance(twice.vendor_client(client), DoubleSubmit)
    assert broken_build([]) is None
    with pytest.raises(ValueError, match="unknown broken builds"):
        broken_build(["ignore-the-ledger"])


def test_the_wiring_chooses_the_ledgers_mode_and_the_tracers() -> None:
    """A simulation wires an inline, in-memory ledger and no-op tracing; the runtime's
    defaults are a threaded, durable ledger and the configured tracing."""
    from opentelemetry.trace import INVALID_SPAN, NoOpTracerProvider

    from actors.ledger import CreditLedger
    from actors.wiring import LEDGER, Ports, build_role
    from runtime.ledger import THREADED, LedgerMode
    from runtime.tracing import JobTracer, tracer_for

    assert Wiring().ledger_mode == THREADED and not THREADED.inline and THREADED.durable
    assert Wiring().tracers is tracer_for
    config = load_config(ROOT_CONFIG)
    mode = LedgerMode(inline=True, durable=False, memory=True)
    ports = Ports(lambda: None, lambda _: None, lambda: [], [])  # type: ignore[arg-type,return-value]
    ledger = build_role(LEDGER, config, Wiring(ledger_mode=mode), ports)
    assert isinstance(ledger, CreditLedger) and ledger._mode == mode
    off = JobTracer("processor-fal", NoOpTracerProvider())
    with off.span("vendor.submit", "0" * 31 + "1", job_id="j") as span:
        assert span is INVALID_SPAN
    with off.root("submit", "not a trace id") as root:
        assert root is INVALID_SPAN
