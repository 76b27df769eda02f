"""Faults happen at their configured rates, repeat with the seed, and the limits hold."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

from tests.integration.conftest import StartFake, assert_rate, auth, eventually
from vendors_fake import FakeVendor, FaultProfile, Latency, Outage, RouteFaults, preset

VERSION = {"version": "owner/model:v1"}


async def submit(http: aiohttp.ClientSession, fake: FakeVendor, **headers: str) -> Any:
    async with http.post(
        f"{fake.url}/v1/predictions",
        json={**VERSION, "input": {"n": 1}},
        headers={**auth("replicate"), **headers},
    ) as response:
        return response.status, response.headers, await response.json()


async def test_request_faults_happen_at_their_rates(start_fake: StartFake) -> None:
    fake = await start_fake("replicate")
    async with aiohttp.ClientSession() as http:
        _, _, task = await submit(http, fake)
        fake.update_profile(
            {"status": {"rate_limited": 0.2, "server_error": 0.15, "reset": 0.1, "retry_after": 3}}
        )
        gate = asyncio.Semaphore(16)
        seen: list[int | str] = []

        async def poll() -> None:
            async with gate:
                try:
                    async with http.get(task["urls"]["get"], headers=auth("replicate")) as r:
                        await r.read()
                        seen.append(r.status)
                        if r.status == 429:
                            assert r.headers["Retry-After"] == "3"
                except (aiohttp.ClientOSError, aiohttp.ServerDisconnectedError):
                    seen.append("reset")

        await asyncio.gather(*(poll() for _ in range(800)))

    stats = fake.snapshot()
    polls = stats["requests"]["predictions.get"]
    n = sum(polls.values())  # what the fake saw (the client retries some resets itself)
    assert n >= 800
    assert_rate(polls.get("429", 0), n, 0.2)
    assert_rate(polls.get("reset", 0), n, 0.1)
    errors = {code: polls.get(code, 0) for code in ("500", "502", "503")}
    assert_rate(sum(errors.values()), n, 0.15)
    assert all(count > 0 for count in errors.values())  # every configured code is used
    assert polls["200"] == n - sum(v for k, v in polls.items() if k != "200")
    assert stats["faults"]["rate_limited"] == polls["429"]
    assert set(seen) <= {200, 429, 500, 502, 503, "reset"}
    # the submit route has no faults configured
    assert stats["requests"]["predictions.create"] == {"201": 1}


async def test_faults_hit_only_their_route_group(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("replicate")
    _, _, task = await submit(http, fake)
    fake.update_profile({"submit": {"server_error": 1.0, "server_error_codes": [502]}})
    assert (await submit(http, fake))[0] == 502
    async with http.get(task["urls"]["get"], headers=auth("replicate")) as r:
        assert r.status == 200
    fake.set_profile(FaultProfile(status=RouteFaults(server_error=1.0)))
    assert (await submit(http, fake))[0] == 201
    async with http.get(task["urls"]["get"], headers=auth("replicate")) as r:
        assert r.status in (500, 502, 503)
    fake.set_profile(FaultProfile(download=RouteFaults(rate_limited=1.0)))
    async with http.get(task["urls"]["get"], headers=auth("replicate")) as r:
        output = (await r.json())["output"][0]
    async with http.get(output) as r:
        assert r.status == 429


async def test_a_hang_is_never_answered_and_a_reset_aborts(start_fake: StartFake) -> None:
    fake = await start_fake("replicate", FaultProfile(hang_for=0.5))
    async with aiohttp.ClientSession() as http:
        _, _, task = await submit(http, fake)
    fake.update_profile({"status": {"hang": 1.0}})
    timeout = aiohttp.ClientTimeout(total=0.2)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        with pytest.raises(TimeoutError):
            async with http.get(task["urls"]["get"], headers=auth("replicate")):
                pass
    # (a POST: aiohttp itself retries an idempotent request once after a reset)
    fake.update_profile({"cancel": {"reset": 1.0}})
    async with aiohttp.ClientSession() as http:
        with pytest.raises((aiohttp.ClientOSError, aiohttp.ServerDisconnectedError)):
            async with http.post(task["urls"]["cancel"], headers=auth("replicate")):
                pass
    stats = fake.snapshot()
    assert (stats["faults"]["hang"], stats["faults"]["reset"]) == (1, 1)
    assert stats["requests"]["predictions.get"] == {"hang": 1}
    assert stats["requests"]["predictions.cancel"] == {"reset": 1}


async def test_task_outcomes_happen_at_their_rates(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    profile = FaultProfile(failure=0.2, rejection=0.1, never_finish=0.1)
    fake = await start_fake("replicate", profile, seed=3)
    n = 500
    gate = asyncio.Semaphore(16)

    async def one() -> None:
        async with gate:
            assert (await submit(http, fake))[0] == 201

    await asyncio.gather(*(one() for _ in range(n)))
    await eventually(
        lambda: fake.snapshot()["tasks"]["in_flight"] == fake.stats.tasks["never_finish"]
    )
    tasks = fake.snapshot()["tasks"]
    assert tasks["created"] == n
    assert_rate(tasks["failed"] - tasks["rejected"], n, 0.2)
    assert_rate(tasks["rejected"], n, 0.1)
    assert_rate(tasks["never_finish"], n, 0.1)
    assert tasks["succeeded"] + tasks["failed"] + tasks["never_finish"] == n


async def play(fake: FakeVendor, http: aiohttp.ClientSession, rounds: int) -> list[Any]:
    """A scripted sequential client: submit, wait for the end (no HTTP), poll once."""
    trace: list[Any] = []
    for _ in range(rounds):
        status, _, body = await submit(http, fake)
        if status != 201:
            trace.append(("submit", status))
            continue
        task = fake.tasks[body["id"]]
        await eventually(lambda task=task: task.phase.ended or task.outcome.value == "never_finish")  # type: ignore[misc]
        async with http.get(body["urls"]["get"], headers=auth("replicate")) as r:
            polled = await r.json()
        trace.append((body["id"], r.status, polled.get("status"), polled.get("metrics")))
        if polled.get("status") == "processing":  # never finishes: free its slot
            fake.cancel(task)
    return trace


async def test_the_same_seed_gives_the_same_run(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    profile = FaultProfile(
        run_time=Latency(kind="lognormal", p50=0.002, p99=0.02),
        failure=0.2,
        rejection=0.1,
        never_finish=0.05,
        submit=RouteFaults(rate_limited=0.1, server_error=0.1),
        status=RouteFaults(server_error=0.2),
    )
    first = await start_fake("replicate", profile, seed=7)
    second = await start_fake("replicate", profile, seed=7)
    trace = await play(first, http, 40)
    assert trace == await play(second, http, 40)
    assert len({t[1:3] for t in trace}) >= 5  # a varied run: several outcomes and codes

    async with http.post(f"{first.url}/_control/reset", json={"seed": 7}) as r:
        assert (await r.json()) == {"seed": 7}
    assert first.snapshot()["task_ids"] == []
    assert await play(first, http, 40) == trace
    first.reset(seed=8)
    assert await play(first, http, 40) != trace


async def test_the_concurrency_limit_is_enforced_and_reported(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    profile = FaultProfile(
        run_time=Latency(kind="fixed", seconds=0.3), concurrency_limit=4, concurrency_retry_after=2
    )
    fake = await start_fake("replicate", profile)
    answers = await asyncio.gather(*(submit(http, fake) for _ in range(12)))
    codes = sorted(status for status, _, _ in answers)
    assert codes == [201] * 4 + [429] * 8
    assert {headers["Retry-After"] for status, headers, _ in answers if status == 429} == {"2"}
    stats = fake.snapshot()
    assert (stats["tasks"]["in_flight"], stats["tasks"]["max_in_flight"]) == (4, 4)
    assert stats["faults"]["concurrency_limited"] == 8
    assert stats["concurrency_limit"] == 4

    # a canceled task frees its slot at once
    created = next(body for status, _, body in answers if status == 201)
    async with http.post(created["urls"]["cancel"], headers=auth("replicate")):
        pass
    assert (await submit(http, fake))[0] == 201
    assert (await submit(http, fake))[0] == 429
    await eventually(lambda: fake.snapshot()["tasks"]["in_flight"] == 0)
    assert (await submit(http, fake))[0] == 201
    assert fake.snapshot()["tasks"]["max_in_flight"] == 4


async def test_an_outage_started_on_demand(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("replicate")
    _, _, task = await submit(http, fake)
    async with http.post(f"{fake.url}/_control/outage", json={"duration": 0.3}) as r:
        assert r.status == 200
    for method, url in (
        ("GET", task["urls"]["get"]),
        ("POST", f"{fake.url}/v1/predictions"),
        ("GET", f"{fake.url}/files/{task['id']}/output.png"),
    ):
        async with http.request(method, url, headers=auth("replicate"), json={}) as r:
            assert (r.status, r.headers["Retry-After"]) == (503, "1")
    async with http.get(f"{fake.url}/_control/stats") as r:  # control stays up
        stats = await r.json()
    assert stats["outage"]["active"] is True
    assert stats["faults"]["outage"] == 3
    await asyncio.sleep(0.35)
    async with http.get(task["urls"]["get"], headers=auth("replicate")) as r:
        assert r.status == 200
    async with http.post(f"{fake.url}/_control/outage", json={"duration": "long"}) as r:
        assert r.status == 422


async def test_periodic_outage_windows(start_fake: StartFake, http: aiohttp.ClientSession) -> None:
    outage = Outage(every=1.0, duration=0.4, first_at=0.0, retry_after=5)
    fake = await start_fake("replicate", FaultProfile(outage=outage))

    async def code() -> int:
        async with http.get(f"{fake.url}/v1/predictions/x", headers=auth("replicate")) as r:
            return r.status

    assert await code() == 503
    await asyncio.sleep(0.5)
    assert await code() == 404
    await asyncio.sleep(0.55)
    assert await code() == 503


def test_outage_windows_are_computed_from_elapsed_time() -> None:
    outage = Outage(every=180, duration=30, first_at=20)
    assert outage.active_until(0) is None
    assert outage.active_until(20) == 50
    assert outage.active_until(49.9) == 50
    assert outage.active_until(50) is None
    assert outage.active_until(200) == 230
    assert Outage(every=60, duration=10).active_until(55) == 60  # first_at = every - duration
    assert Outage().active_until(100) is None


async def test_control_endpoints_change_the_profile(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake("fal", FaultProfile(failure=0.3))
    control = f"{fake.url}/_control/profile"
    async with http.post(control, json={"status": {"server_error": 0.5}}) as r:
        assert r.status == 200
    async with http.get(control) as r:
        profile = await r.json()
    assert (profile["failure"], profile["status"]["server_error"]) == (0.3, 0.5)
    assert profile["status"]["server_error_codes"] == [500, 502, 503]
    for bad in (
        {"nonsense": 1},
        {"status": {"server_error": 2}},
        {"failure": 0.8, "rejection": 0.5},
    ):
        async with http.post(control, json=bad) as r:
            assert r.status == 422
    assert fake.profile.status.server_error == 0.5  # unchanged by the refused updates
    async with http.post(f"{control}?replace=1", json={"rejection": 0.1}) as r:
        assert (await r.json())["failure"] == 0.0
    async with http.post(f"{control}?preset=flaky") as r:
        assert r.status == 200
    assert fake.profile == preset("flaky")
    async with http.post(f"{control}?preset=nope") as r:
        assert r.status == 422
    async with http.post(f"{fake.url}/_control/reset", json={"seed": "x"}) as r:
        assert r.status == 422


# --- account refusals, lost answers, reset, billable and delivered work ------------------------


@pytest.mark.parametrize(
    ("shape", "status", "says"),
    [
        ("fal", 403, "User is locked. Reason: Exhausted balance"),
        ("fal", 401, "Authentication is required"),
        ("fal", 404, "not found"),
        ("replicate", 402, "You need to set up billing"),
        ("replicate", 401, "valid authentication token"),
        ("replicate", 404, "could not be found"),
    ],
)
async def test_account_refusals_answer_in_the_vendors_words(
    start_fake: StartFake, http: aiohttp.ClientSession, shape: str, status: int, says: str
) -> None:
    fake = await start_fake(shape)
    url, body = (
        (f"{fake.url}/fal-ai/flux/dev", {"prompt": "p"})
        if shape == "fal"
        else (f"{fake.url}/v1/models/acme/painter/predictions", {"input": {}})
    )
    async with http.post(url, json=body, headers=auth(shape)) as r:
        assert r.status in (200, 201)
        created = await r.json()
    fake.update_profile({"refusal": {"status": status}})
    async with http.post(url, json=body, headers=auth(shape)) as r:
        answer = await r.json()
        assert r.status == status
    assert says in (answer["detail"])
    # a locked account still reads its requests (fal lets status reads through); a revoked
    # key reads nothing
    read = created.get("status_url") or created["urls"]["get"]
    async with http.get(read, headers=auth(shape)) as r:
        assert r.status == (401 if status == 401 else 200)
    stats = fake.snapshot()
    assert stats["tasks"]["created"] == 1
    assert stats["faults"][f"refused_{status}"] >= 1


async def test_a_refusal_can_name_the_models_that_are_gone(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    fake = await start_fake(
        "fal", FaultProfile(refusal={"status": 404, "models": ["fal-ai/old-*"]})
    )
    for model, expected in (("fal-ai/old-model", 404), ("fal-ai/new-model", 200)):
        async with http.post(f"{fake.url}/{model}", json={}, headers=auth("fal")) as r:
            assert r.status == expected


@pytest.mark.parametrize("kind", ["hang", "server_error", "cut_off"])
async def test_a_lost_answer_leaves_the_task_running_and_billed(
    start_fake: StartFake, kind: str
) -> None:
    profile = FaultProfile(
        lost_answers={kind: 1.0},
        hang_for=0.5,
        run_time=Latency(kind="fixed", seconds=0.05),
    )
    fake = await start_fake("replicate", profile)
    timeout = aiohttp.ClientTimeout(total=0.3)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        with pytest.raises((aiohttp.ClientError, TimeoutError)) as caught:
            async with http.post(
                f"{fake.url}/v1/predictions",
                json={**VERSION, "input": {"n": 1}},
                headers={
                    **auth("replicate"),
                    "X-Jobline-Job-Id": "job-1",
                    "X-Jobline-Attempt": "1",
                },
            ) as r:
                if r.status >= 500:
                    raise aiohttp.ClientResponseError(r.request_info, (), status=r.status)
                await r.json()
    if kind == "server_error":
        assert isinstance(caught.value, aiohttp.ClientResponseError)
    await eventually(lambda: fake.snapshot()["tasks"]["succeeded"] == 1)
    stats = fake.snapshot()
    (info,) = stats["task_info"].values()
    assert (info["job_id"], info["answer_lost"], info["billable"]) == ("job-1", kind, True)
    assert stats["faults"][f"lost_answer_{kind}"] == 1
    assert stats["tasks"]["delivered"] == 0  # nobody knows the task: its work is wasted


async def test_a_reset_stops_every_timer_of_the_old_tasks(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    """Field case: /_control/reset left older tasks' deadline timers running, so they ended
    after the reset and drove in_flight negative (loosening the enforced limit)."""
    profile = FaultProfile(never_finish=1.0, max_task_time=0.3, concurrency_limit=2)
    fake = await start_fake("replicate", profile)
    for _ in range(2):
        assert (await submit(http, fake, **{"Cancel-After": "200ms"}))[0] == 201
    async with http.post(f"{fake.url}/_control/reset", json={}) as r:
        assert r.status == 200
    await asyncio.sleep(0.5)  # past both deadlines of the forgotten tasks
    tasks = fake.snapshot()["tasks"]
    assert (tasks["in_flight"], tasks["expired"], tasks["canceled"]) == (0, 0, 0)
    codes = [(await submit(http, fake))[0] for _ in range(3)]
    assert codes == [201, 201, 429]  # the limit still holds at 2


async def test_billable_and_delivered_work_are_counted(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    quick = Latency(kind="fixed", seconds=0.05)
    fake = await start_fake("replicate", FaultProfile(queue_delay=quick, run_time=quick))
    made = [(await submit(http, fake))[2] for _ in range(4)]
    canceled = (await submit(http, fake))[2]
    async with http.post(canceled["urls"]["cancel"], headers=auth("replicate")):
        pass  # canceled while queued: never ran, not billed
    await eventually(lambda: fake.snapshot()["tasks"]["succeeded"] == 4)
    for prediction in made[:2]:  # two clients download their output, two do not
        async with http.get(prediction["urls"]["get"], headers=auth("replicate")) as r:
            (url,) = (await r.json())["output"]
        async with http.get(url) as r:
            await r.read()
    tasks = fake.snapshot()["tasks"]
    assert (tasks["billable"], tasks["delivered"], tasks["canceled"]) == (4, 2, 1)


async def test_cold_starts_happen_at_their_rate(
    start_fake: StartFake, http: aiohttp.ClientSession
) -> None:
    profile = FaultProfile(cold_start=0.2, cold_start_time=Latency(kind="fixed", seconds=30))
    fake = await start_fake("replicate", profile, seed=5)
    n = 200
    for _ in range(n):
        await submit(http, fake)
    stats = fake.snapshot()
    assert_rate(stats["tasks"]["cold_starts"], n, 0.2)
    starting = sum(1 for t in fake.tasks.values() if t.phase.value == "queued")
    assert starting == stats["tasks"]["cold_starts"]  # the rest ran at once
