"""The simulation's parts on their own: virtual time, fault schedules, the traffic model,
seeds, the in-memory vendor host, percentiles, and the ledger running inline."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import pytest
from yarl import URL

from loadtests.sim.explore import parse_seeds
from loadtests.sim.faults import draw_schedule, fitted, format_schedule, parse_schedule
from loadtests.sim.loop import Deadlock, VirtualClock, VirtualLoop, run_virtual
from loadtests.sim.report import envelope, percentile
from loadtests.sim.results import MemoryResultStore
from loadtests.sim.trace import Trace
from loadtests.sim.traffic import Traffic, arrivals
from loadtests.sim.vendors import Vendors, in_memory_config
from runtime.config import load_config
from runtime.errors import ResultNotFound, VendorTimeout
from runtime.ledger import Ledger, LedgerMode
from runtime.models import CreateAccount, Grant, OpenJob
from vendors_fake import FaultProfile
from vendors_fake.memory import MemoryVendor
from vendors_fake.profile import merge_profile, preset

ROOT = Path(__file__).resolve().parents[2]
VENDORS = ["fal", "replicate"]
ROLES = ["ledger", "sweeper", "processor-fal", "processor-replicate", "gateway-0"]


def test_virtual_time_jumps_to_the_next_timer_and_costs_no_wall_time() -> None:
    async def main() -> tuple[float, float, list[str]]:
        clock = VirtualClock()
        order: list[str] = []

        async def sleeper(name: str, seconds: float) -> None:
            await clock.sleep(seconds)
            order.append(name)

        with pytest.raises(TimeoutError):
            await asyncio.wait_for(clock.sleep(3600), timeout=600)
        await asyncio.gather(sleeper("late", 90.0), sleeper("early", 30.0))
        return clock.elapsed(), clock.time() - clock.epoch, order

    started = time.perf_counter()
    elapsed, since_epoch, order = run_virtual(main())
    assert elapsed == pytest.approx(690.0) and since_epoch == pytest.approx(690.0)
    assert order == ["early", "late"]
    assert time.perf_counter() - started < 5


def test_a_run_that_can_never_wake_up_again_says_so_instead_of_hanging() -> None:
    async def main() -> None:
        await asyncio.sleep(5)
        await asyncio.get_running_loop().create_future()  # nobody will ever set it

    with pytest.raises(Deadlock):
        run_virtual(main())


def _busy_loop_log(loop: asyncio.AbstractEventLoop) -> list[str]:
    """What a workload of timers, cancelled timers, ready callbacks and tasks does, in
    order, on ``loop``: each entry is the loop's time and who ran."""
    log: list[str] = []

    def at() -> str:
        return f"{loop.time():.6f} "

    async def worker(name: str, rng: random.Random) -> None:
        running = asyncio.get_running_loop()
        for step in range(40):
            running.call_soon(log.append, f"{running.time():.6f} {name} soon {step}")
            later = f"{name} later {step}"  # cancelled, unless a sleep outlasts it
            doomed = running.call_later(rng.random(), lambda x=later: log.append(at() + x))
            if rng.random() < 0.5:
                await asyncio.sleep(rng.choice([0.0, rng.random() * 3]))
            doomed.cancel()
            try:
                await asyncio.wait_for(asyncio.sleep(rng.random()), timeout=rng.random())
            except TimeoutError:
                log.append(f"{running.time():.6f} {name} timeout {step}")
            log.append(f"{running.time():.6f} {name} step {step}")

    async def main() -> None:
        # More than 100 timers, half of them cancelled: asyncio's own turn rebuilds its heap.
        await asyncio.gather(*(worker(f"w{i}", random.Random(i)) for i in range(150)))

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    return log


def test_the_virtual_loops_turn_runs_what_asyncios_own_turn_runs_in_the_same_order() -> None:
    class AsyncioTurn(VirtualLoop):  # the virtual loop with asyncio's own _run_once
        _run_once = asyncio.SelectorEventLoop._run_once  # type: ignore[attr-defined]

    ours, asyncios = _busy_loop_log(VirtualLoop()), _busy_loop_log(AsyncioTurn())
    assert len(ours) > 10_000 and any(" later " in line for line in ours)
    assert ours == asyncios


def test_a_long_series_is_drawn_through_each_columns_lowest_and_highest_value() -> None:
    rng = random.Random(5)
    t = [float(i) for i in range(10_000)]
    values = [float(rng.randint(0, 50)) for _ in t]
    times, kept = envelope(t, values, 100)
    assert len(kept) <= 200 and times == sorted(times)
    for column in range(100):  # every column's span is kept, by values that were there
        start, end = column * 100, column * 100 + 100
        inside = [v for x, v in zip(times, kept, strict=True) if start <= x < end]
        assert (min(inside), max(inside)) == (min(values[start:end]), max(values[start:end]))
    assert envelope(t[:150], values[:150], 100) == (t[:150], values[:150])


def test_a_fault_schedule_reads_back_as_written_and_names_what_is_wrong() -> None:
    spec = "crash:processor-fal@12.5+3,outage:replicate@1+30,ledger-lost:ledger@4+2"
    faults = parse_schedule(spec, VENDORS, ROLES)
    assert [f.kind for f in faults] == ["outage", "ledger-lost", "crash"]  # by time
    assert parse_schedule(format_schedule(faults), VENDORS, ROLES) == faults
    assert parse_schedule("none", VENDORS, ROLES) == []
    with pytest.raises(ValueError, match="unknown fault 'meteor'"):
        parse_schedule("meteor:fal@1+1", VENDORS, ROLES)
    with pytest.raises(ValueError, match="outage needs one of fal, replicate"):
        parse_schedule("outage:ledger@1+1", VENDORS, ROLES)
    with pytest.raises(ValueError, match="kind:target@at"):
        parse_schedule("outage fal", VENDORS, ROLES)


def test_a_drawn_schedule_depends_on_its_seed_only() -> None:
    def draw(seed: int) -> str:
        return format_schedule(draw_schedule(random.Random(seed), VENDORS, ROLES, 60.0))

    assert draw(3) == draw(3)
    assert len({draw(seed) for seed in range(20)}) > 15
    for fault in parse_schedule(draw(4), VENDORS, ROLES):
        assert 0 <= fault.at <= 60.0


def test_seeds_are_ranges_and_lists() -> None:
    assert parse_seeds("1-3,7,10-11") == [1, 2, 3, 7, 10, 11]
    for bad in ("", "5-2", "x"):
        with pytest.raises(ValueError):
            parse_seeds(bad)


def test_the_traffic_model_follows_its_rate_mix_and_bounds() -> None:
    config = load_config(ROOT / "jobline.toml")
    traffic = Traffic(rate=20.0, duration=500.0, models={"sdxl": 3, "flux-schnell": 1})
    jobs = list(arrivals(traffic, config, random.Random(1)))
    assert 20.0 * 500 * 0.9 < len(jobs) < 20.0 * 500 * 1.1
    assert all(0 < job.at < 500 for job in jobs) and jobs == sorted(jobs, key=lambda j: j.at)
    share = sum(job.model == "sdxl" for job in jobs) / len(jobs)
    assert 0.7 < share < 0.8
    assert {job.account for job in jobs} == set(range(traffic.accounts))
    spike = Traffic(rate=10.0, duration=100.0, shape="spike", spike={"at": 40, "length": 10})
    times = [job.at for job in arrivals(spike, config, random.Random(2))]
    in_spike = sum(40 <= t < 50 for t in times)
    assert in_spike > 3 * sum(20 <= t < 30 for t in times)
    assert len(list(arrivals(Traffic(rate=5.0, jobs=37), config, random.Random(3)))) == 37
    with pytest.raises(ValueError, match="duration or jobs"):
        Traffic(rate=5.0)
    with pytest.raises(ValueError, match="lacks: nope"):
        list(arrivals(Traffic(jobs=3, models={"nope": 1}), config, random.Random(1)))


def test_percentiles_are_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert (percentile(values, 0.5), percentile(values, 0.99)) == (50.0, 99.0)
    assert percentile([], 0.5) is None


def test_the_in_memory_host_serves_the_fake_routes_on_virtual_time() -> None:
    """A create, a status read, the file, a cancel; a hung request waits hang_for."""

    async def main() -> None:
        clock = VirtualClock()
        profile = FaultProfile.model_validate(
            {
                "queue_delay": {"kind": "fixed", "seconds": 2.0},
                "run_time": {"kind": "fixed", "seconds": 3.0},
            }
        )
        vendor = MemoryVendor("replicate", profile, api_key="k", wall_clock=clock.time)
        auth = {"Authorization": "Bearer k"}
        base = URL(vendor.url)
        body = json.dumps({"input": {"prompt": "p"}}).encode()
        created = await vendor.request(
            "POST", base / "v1/models/acme/painter/predictions", auth, body
        )
        assert created.status == 201
        task_id = json.loads(created.body)["id"]
        await clock.sleep(5.5)
        done = json.loads(
            (await vendor.request("GET", base / f"v1/predictions/{task_id}", auth)).body
        )
        assert done["status"] == "succeeded"
        file = await vendor.request("GET", URL(done["output"][0]), {})
        assert file.status == 200 and file.body.startswith(b"\x89PNG")
        assert vendor.core.tasks[task_id].delivered
        refused = await vendor.request("GET", base / f"v1/predictions/{task_id}", {})
        assert refused.status == 401
        missing = await vendor.request("GET", base / "v1/nothing", auth)
        assert missing.status == 404
        vendor.core.update_profile({"status": {"hang": 1.0}})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                vendor.request("GET", base / f"v1/predictions/{task_id}", auth), 5.0
            )
        assert clock.elapsed() == pytest.approx(10.5)

    run_virtual(main())


def test_a_hung_vendor_request_times_out_at_the_adapters_own_timeout_in_the_callers_task() -> None:
    """jobline's adapter on an in-memory fake: a status read the vendor never answers
    fails as ``VendorTimeout`` after ``poll_timeout`` virtual seconds, traced; the request
    runs in the caller's task (no task started per call: 4.7 calls a job)."""

    async def main() -> None:
        clock = VirtualClock()
        config = in_memory_config(load_config(ROOT / "jobline.toml"))
        vendor = config.vendors["replicate"]
        trace = Trace(clock.elapsed)
        profile = FaultProfile.model_validate({"status": {"hang": 1.0}, "hang_for": 3600.0})
        vendors = Vendors(
            config,
            {name: profile for name in config.vendors},
            seed=1,
            wall_clock=clock.time,
            post_webhook=_no_webhooks,
            trace=trace,
        )
        client = vendors.client(vendor)
        tasks_before = len(asyncio.all_tasks())
        read = asyncio.ensure_future(client.status("m", "abc", trace_id="0" * 32))
        await clock.sleep(vendor.poll_timeout / 2)
        assert len(asyncio.all_tasks()) == tasks_before + 1  # the read's own task only
        with pytest.raises(VendorTimeout):
            await read
        assert clock.elapsed() == pytest.approx(vendor.poll_timeout)
        assert trace.tail(1)[0].split()[1:5] == ["vendor", "replicate", "status", "TimeoutError"]

    run_virtual(main())


async def _no_webhooks(url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> None:
    raise AssertionError("no webhook expected")


def test_the_ledger_runs_inline_in_memory_without_a_thread(tmp_path: Path) -> None:
    async def main() -> None:
        before = threading.active_count()
        ledger = await Ledger.open(
            tmp_path / "l.db", lambda: 1000.0, mode=LedgerMode(inline=True, memory=True)
        )
        await ledger.execute(CreateAccount("a", "h"))
        await ledger.execute(Grant("a", 100, "g"))
        op = OpenJob("j1", "a", "m", {"p": 1}, 3, "0" * 32, "fal", 2000.0)
        assert (await ledger.execute(op)).changed
        assert (await ledger.balance("a")).available == 97
        assert await ledger.check_invariants() == []
        assert threading.active_count() == before  # no writer, reader or checker thread
        await ledger.close()

    run_virtual(main())
    assert not (tmp_path / "l.db").exists()  # nothing reached the disk


def test_the_result_store_keeps_what_fits_under_its_cap_whether_streamed_or_put() -> None:
    """A streamed result is joined only when its bytes will be kept (near the cap most no
    longer fit): what each store holds, counts and answers is the same as for ``put``."""

    async def stream(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 7):
            yield data[start : start + 7]

    async def main() -> None:
        sizes = [40, 30, 50, 20, 60, 5, 30, 1]  # crosses a cap of 100 bytes
        results = {f"job-{i}-0": bytes([i]) * size for i, size in enumerate(sizes)}
        put, streamed = MemoryResultStore(keep_bytes=100), MemoryResultStore(keep_bytes=100)
        twice = ("job-1-0", results["job-1-0"])  # one key stored again
        for key, data in [*results.items(), twice]:
            await put.put(key, data, "image/png")
            assert await streamed.put_stream(key, stream(data), "image/png", 1000) == len(data)
        assert (streamed.results, streamed.stored_bytes, streamed.kept) == (
            put.results,
            put.stored_bytes,
            put.kept,
        )
        assert put.kept == 96 and put.stored_bytes == sum(sizes)
        for key, data in results.items():
            try:
                expected = await put.get(key)
            except ResultNotFound:
                with pytest.raises(ResultNotFound):
                    await streamed.get(key)
            else:
                assert expected == data and await streamed.get(key) == data
        assert await streamed.get("job-7-0") == b"\x07"  # a small one fits after a miss

    asyncio.run(main())


def test_a_fault_patch_fits_over_the_rates_already_there() -> None:
    """A patch keeps the rates it names; the others of the same group are scaled down so
    the group adds up to at most 1; groups that fit, and other keys, are left alone."""
    current = {
        "submit": {"hang": 0.1, "reset": 0.0, "rate_limited": 0.05, "server_error": 0.02},
        "status": {"hang": 0.0, "rate_limited": 0.0, "server_error": 0.1},
        "lost_answers": {"hang": 0.5, "server_error": 0.3, "cut_off": 0.0},
    }
    patch = {
        "submit": {"rate_limited": 0.9, "retry_after": 3.0},
        "status": {"rate_limited": 0.3},
        "lost_answers": {"cut_off": 0.6},
        "run_time": {"kind": "fixed", "seconds": 5.0},
    }
    out = fitted(current, patch)
    assert out["submit"]["rate_limited"] == 0.9 and out["submit"]["retry_after"] == 3.0
    assert out["submit"]["hang"] == pytest.approx(0.1 / 0.12 * 0.1)
    assert out["submit"]["server_error"] == pytest.approx(0.02 / 0.12 * 0.1)
    assert sum(out["submit"][k] for k in ("hang", "reset", "rate_limited", "server_error")) <= 1
    assert out["status"] == {"rate_limited": 0.3}  # 0.3 + 0.1 fits
    assert out["lost_answers"]["cut_off"] == 0.6
    assert out["lost_answers"]["hang"] + out["lost_answers"]["server_error"] <= 0.4
    assert out["run_time"] == patch["run_time"]
    merged = merge_profile(preset("flaky"), fitted(preset("flaky").model_dump(), patch))
    assert merged.submit.rate_limited == 0.9
