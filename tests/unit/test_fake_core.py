"""The fake vendor's core without HTTP, on a hand-driven clock: the behaviour a simulation
on virtual time gets (DESIGN §10), with no socket and no wall clock."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import heapq
import itertools
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from standardwebhooks import Webhook

from tests.integration.conftest import fal_signature_valid
from vendors_fake import FaultProfile, Latency, Refused, VendorCore, outputs, replicate_shape
from vendors_fake.calls import Call
from vendors_fake.core import ENDED_BODIES_KEPT, Shape
from vendors_fake.outputs import DataUris, make_files
from vendors_fake.png import expected_png
from vendors_fake.profile import OutputSpec, merge_profile, preset
from vendors_fake.replicate_api import ReplicateRoutes
from vendors_fake.replicate_shape import ReplicateShape
from vendors_fake.signing import DEV_WEBHOOK_SECRET
from vendors_fake.tasks import Outcome, Phase, Task


class Handle:
    def __init__(self) -> None:
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualClock:
    """A scheduler whose time moves only when a test says so."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start
        self._timers: list[tuple[float, int, Handle, Callable[..., object], tuple[Any, ...]]] = []
        self._seq = itertools.count()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Handle:
        handle = Handle()
        heapq.heappush(self._timers, (self.now + delay, next(self._seq), handle, callback, args))
        return handle

    def advance(self, seconds: float) -> None:
        until = self.now + seconds
        while self._timers and self._timers[0][0] <= until:
            when, _, handle, callback, args = heapq.heappop(self._timers)
            self.now = max(self.now, when)
            if not handle.cancelled:
                callback(*args)
        self.now = until


def core(
    shape: Shape = "replicate", seed: int = 0, start: float = 1_700_000_000.0, **profile: Any
) -> tuple[VendorCore, ManualClock]:
    clock = ManualClock(start)
    vendor = VendorCore(
        shape,
        FaultProfile.model_validate(profile),
        seed=seed,
        api_key="k",
        scheduler=clock,
        wall_clock=clock.time,
    )
    vendor.base_url = "mem://vendor"
    return vendor, clock


def test_phases_follow_the_clock_and_running_is_billable() -> None:
    vendor, clock = core(
        queue_delay={"kind": "fixed", "seconds": 2.0}, run_time={"kind": "fixed", "seconds": 3.0}
    )
    task = vendor.create_task("acme/painter", "v1", {"prompt": "p"})
    assert task.phase is Phase.QUEUED and not task.billable
    clock.advance(1.9)
    assert task.phase is Phase.QUEUED
    clock.advance(0.2)
    assert task.phase is Phase.RUNNING and task.billable
    clock.advance(3.0)
    assert task.phase is Phase.SUCCEEDED
    assert list(task.files) == ["image-0.png"]
    assert vendor.shape.output(task) == ["mem://vendor/files/" + task.id + "/image-0.png"]  # type: ignore[union-attr]
    assert not task.delivered
    vendor.file_downloaded(task, "image-0.png")
    stats = vendor.snapshot()["tasks"]
    assert (stats["billable"], stats["delivered"], stats["in_flight"]) == (1, 1, 0)


def test_the_same_seed_draws_the_same_fates_whatever_the_host() -> None:
    profile = {
        "failure": 0.2,
        "rejection": 0.1,
        "cold_start": 0.3,
        "run_time": {"kind": "lognormal", "p50": 1.0, "p99": 10.0},
        "lost_answers": {"hang": 0.05, "server_error": 0.05},
        "data_uri": 0.2,
    }

    def fates(seed: int) -> list[Any]:
        vendor, _ = core(seed=seed, **profile)
        tasks = [vendor.create_task("m/n", "v", {"i": i}) for i in range(50)]
        return [(t.id, t.fate) for t in tasks]

    assert fates(3) == fates(3)
    assert fates(3) != fates(4)
    drawn = [fate for _, fate in fates(3)]
    assert {f.outcome.value for f in drawn} >= {"succeed", "fail", "reject"}
    assert any(f.cold_start for f in drawn) and any(f.lost_answer for f in drawn)


def test_a_deadline_before_the_start_aborts_and_after_it_cancels() -> None:
    vendor, clock = core(
        queue_delay={"kind": "fixed", "seconds": 5.0}, run_time={"kind": "fixed", "seconds": 60.0}
    )
    early = vendor.create_task("m/n", "v", {}, cancel_after=1.0)
    late = vendor.create_task("m/n", "v", {}, cancel_after=10.0)
    clock.advance(20)
    assert (early.phase, early.billable) == (Phase.ABORTED, False)
    assert (late.phase, late.billable) == (Phase.CANCELED, True)
    assert vendor.shape.prediction(early)["status"] == "aborted"  # type: ignore[union-attr]


def test_the_limit_and_the_account_refusals() -> None:
    vendor, _ = core("fal", never_finish=1.0, concurrency_limit=1)
    vendor.create_task("fal-ai/flux/dev", "", {})
    with pytest.raises(Refused) as caught:
        vendor.create_task("fal-ai/flux/dev", "", {})
    assert (caught.value.status, caught.value.retry_after) == (429, 1.0)
    vendor.update_profile({"refusal": {"status": 403}})
    with pytest.raises(Refused) as caught:
        vendor.create_task("fal-ai/flux/dev", "", {})
    assert caught.value.status == 403 and "Exhausted balance" in caught.value.message
    assert vendor.admit("status", authorized=True) is None  # reads still pass
    vendor.update_profile({"refusal": {"status": 401}})
    with pytest.raises(Refused):
        vendor.admit("status", authorized=True)


def test_a_reset_forgets_the_old_timers() -> None:
    vendor, clock = core(never_finish=1.0, max_task_time=1.0)
    vendor.create_task("m/n", "v", {}, cancel_after=0.5)
    vendor.reset()
    clock.advance(5)
    tasks = vendor.snapshot()["tasks"]
    assert (tasks["in_flight"], tasks["expired"], tasks["created"]) == (0, 0, 0)


@pytest.mark.parametrize("shape", ["replicate", "fal"])
async def test_webhooks_go_through_the_hosts_post(shape: Shape) -> None:
    """Deliveries use whatever posts them (here: a list), signed in the vendor's scheme."""
    posted: list[tuple[str, Mapping[str, str], bytes]] = []

    async def post(url: str, headers: Mapping[str, str], body: bytes, timeout: float) -> int:
        posted.append((url, headers, body))
        return 200

    # (started at the real time only because the reference library checks it)
    vendor, clock = core(shape, start=time.time(), run_time={"kind": "fixed", "seconds": 1.0})
    vendor.post_webhook = post
    task = vendor.create_task(
        "acme/painter",
        "v",
        {"prompt": "p"},
        webhook_url="mem://hook",
        webhook_events=frozenset({"start", "completed"}),
    )
    clock.advance(0)
    clock.advance(1.0)
    for delivery in list(vendor.webhooks._deliveries):
        await delivery
    final = posted[-1]
    if shape == "replicate":
        assert [Webhook(DEV_WEBHOOK_SECRET).verify(b, dict(h))["status"] for _, h, b in posted] == [
            "processing",
            "succeeded",
        ]
    else:
        jwks = vendor.fal_signer.jwks()
        assert fal_signature_valid(jwks, dict(final[1]), final[2], now=clock.time())
    assert task.result_read and not task.delivered  # its file is not downloaded yet
    assert vendor.snapshot()["webhooks"]["delivered"] == len(posted)


def test_an_outage_window_runs_on_the_given_clock() -> None:
    vendor, clock = core(outage={"every": 10.0, "duration": 2.0, "first_at": 5.0})
    assert vendor.admit("submit", authorized=True) is None
    clock.advance(5.5)
    with pytest.raises(Refused) as caught:
        vendor.admit("submit", authorized=True)
    assert caught.value.status == 503 and caught.value.retry_after == pytest.approx(1.5)
    clock.advance(2)
    assert vendor.admit("submit", authorized=True) is None
    assert Latency().kind == "fixed"


def test_the_flaky_presets_new_behaviours_come_at_their_rates() -> None:
    from vendors_fake import preset

    clock = ManualClock()
    vendor = VendorCore(
        "fal", preset("flaky"), seed=9, api_key="k", scheduler=clock, wall_clock=clock.time
    )
    n = 4000
    fates = [vendor.create_task("fal-ai/flux/schnell", "", {"i": i}).fate for i in range(n)]
    flaky = preset("flaky")

    def share(count: int, p: float) -> None:
        sd = (n * p * (1 - p)) ** 0.5
        assert abs(count - n * p) <= 4 * sd + 1, (count, n, p)

    share(sum(f.cold_start for f in fates), flaky.cold_start)
    share(sum(f.data_uri for f in fates), flaky.data_uri)
    share(sum(f.payload_error for f in fates), flaky.payload_error)
    lost = flaky.lost_answers
    share(
        sum(f.lost_answer is not None for f in fates), lost.hang + lost.server_error + lost.cut_off
    )
    assert {f.output_count for f in fates} == {1, 2, 3, 4}
    assert sum(f.logs_bytes > 64 * 1024 for f in fates) > 0


def test_a_task_answered_with_data_uris_is_delivered_once_its_result_is_read() -> None:
    """Its files travel inside the result: nothing is downloaded, reading is delivery
    (they were never counted delivered, so every data-URI task looked wasted)."""
    vendor, clock = core(data_uri=1.0, run_time={"kind": "fixed", "seconds": 1.0})
    task = vendor.create_task("acme/painter", "v1", {"prompt": "p"})
    clock.advance(2.0)
    assert task.phase is Phase.SUCCEEDED and task.files
    assert all(vendor.file_ref(task, file).startswith("data:") for file in task.files.values())
    assert not task.delivered
    vendor.result_read(task)
    assert task.delivered
    assert vendor.snapshot()["tasks"]["delivered"] == 1


def test_an_ended_tasks_status_json_is_kept_for_the_newest_only_and_renders_the_same() -> None:
    """Every failed replicate prediction kept its rendered JSON (logs included, up to 256
    KiB) for the whole run; now only the newest ``ENDED_BODIES_KEPT`` ended tasks do."""
    vendor, clock = core(failure=1.0, logs={"kind": "fixed", "seconds": 4096})
    tasks = [vendor.create_task("m/n", "v", {"i": i}) for i in range(ENDED_BODIES_KEPT + 10)]
    clock.advance(60)
    bodies = [task.body for task in tasks]  # each read once it ended, as a poll does
    assert all(task.phase is Phase.FAILED for task in tasks)
    held = [task for task in tasks if task.rendered is not None]
    assert held == tasks[-ENDED_BODIES_KEPT:]
    for more in range(ENDED_BODIES_KEPT):  # newer tasks end and are read
        _ = vendor.create_task("m/n", "v", {"more": more}).body
    clock.advance(60)
    for task in vendor.tasks.values():
        _ = task.body if task.input.get("more") is not None else None
    assert all(task.rendered is None for task in tasks)
    assert [task.body for task in tasks] == bodies  # read again: the same bytes


def test_forgetting_ended_tasks_drops_only_old_ended_ones() -> None:
    vendor, clock = core(never_finish=0.0, run_time={"kind": "fixed", "seconds": 1.0})
    old = vendor.create_task("m/n", "v", {"i": 0})
    stuck = vendor.create_task("m/n", "v", {"i": 1}, cancel_after=1000.0)
    stuck.fate = dataclasses.replace(stuck.fate, outcome=Outcome.NEVER_FINISH)
    clock.advance(30)
    new = vendor.create_task("m/n", "v", {"i": 2})
    clock.advance(30)
    assert old.phase.ended and new.phase.ended and not stuck.phase.ended
    assert vendor.forget_ended(created_before=new.created_at) == [old]
    assert list(vendor.tasks.values()) == [stuck, new]
    assert vendor.snapshot()["tasks"]["created"] == 3  # the counts stay


def _flaky_tasks(shape: Shape, count: int, **patch: Any) -> tuple[VendorCore, list[Task]]:
    """``count`` tasks of the flaky preset (with ``patch``), images and videos, some with
    data URIs and long logs; the clock left where some have ended and some have not."""
    clock = ManualClock()
    vendor = VendorCore(
        shape,
        merge_profile(preset("flaky"), patch),
        seed=3,
        api_key="k",
        scheduler=clock,
        wall_clock=clock.time,
    )
    vendor.base_url = f"http://{shape}.vendor.invalid"
    hook = "http://gw/hook?jobline_job_id=j&jobline_attempt=1"
    tasks = [
        vendor.create_task(
            ("acme/painter", "acme/video-maker", "acme/writer")[i % 3],
            "v",
            {"prompt": f"job {i}", "note": 'a "quoted" \\ line\n'},
            webhook_url=hook if i % 2 else None,
            webhook_events=frozenset({"start", "completed"}),
        )
        for i in range(count)
    ]
    clock.advance(1.0)
    return vendor, tasks


def _progress_lines(task: Task) -> str:
    """A replicate prediction's logs, line by line (as the fake first wrote them)."""
    lines: list[str] = []
    size = 0
    while size < task.fate.logs_bytes:
        step = len(lines) + 1
        lines.append(
            f"{step:>6}it [00:{step % 60:02d}, 12.34it/s] denoising latents for {task.id}\n"
        )
        size += len(lines[-1])
    return "".join(lines)[: task.fate.logs_bytes]


def test_a_prediction_renders_as_json_dumps_of_it_in_every_phase() -> None:
    """The status JSON and the list entry are assembled from parts kept per task and file
    (the logs, the data URIs): the same bytes as ``json.dumps`` of the prediction."""
    vendor, tasks = _flaky_tasks(
        "replicate",
        120,
        data_uri=0.5,
        logs={"kind": "lognormal", "p50": 2048, "p99": 2_000_000},
        outputs={
            "*painter*": {"kind": "image", "count": 1, "count_max": 4},
            "*video*": {"kind": "video", "size": {"kind": "uniform", "low": 1, "high": 3e6}},
            "*writer*": {"kind": "text"},
        },
    )
    shape = vendor.shape
    assert isinstance(shape, ReplicateShape)
    seen = set()
    for _ in range(3):
        for task in tasks:
            for listed in (False, True):
                expected = json.dumps(shape.prediction(task, listed=listed), separators=(",", ":"))
                got = shape.listed(task) if listed else shape.render(task)
                assert got == expected.encode()
            seen.add((task.phase, task.spec.kind, task.fate.data_uri))
            if task.phase is not Phase.QUEUED:
                assert shape.prediction(task)["logs"] == _progress_lines(task)
        vendor.scheduler.advance(40.0)  # type: ignore[attr-defined]
    assert {phase for phase, _, _ in seen} >= {Phase.QUEUED, Phase.RUNNING, Phase.SUCCEEDED}
    assert {(kind, inline) for phase, kind, inline in seen if phase is Phase.SUCCEEDED} >= {
        ("image", True),
        ("video", True),
        ("video", False),
        ("text", False),
    }
    assert any(task.fate.logs_bytes > 600_000 for task in tasks)  # past the kept line starts


def test_a_data_uri_is_encoded_once_per_file_and_the_kept_ones_stay_under_their_budget() -> None:
    spec = OutputSpec.model_validate({"kind": "video"})
    files = [make_files({"prompt": str(i)}, spec, 1, 1_500_000)[0] for i in range(20)]
    kept = DataUris(budget=8 * 1024 * 1024)
    first = kept.json(files[0])
    for file in files:
        uri = f"data:video/mp4;base64,{base64.b64encode(file.read()).decode()}"
        assert file.data_uri() == uri
        assert kept.json(file) == json.dumps(uri).encode()
        assert kept.json(file) is kept.json(file)  # kept
        assert kept.size <= kept.budget
    assert kept.json(files[0]) is not first  # the oldest went first, encoded again


def test_a_list_page_is_json_dumps_of_its_predictions_newest_first() -> None:
    """Pages are joined from list entries kept per task and phase: the same bytes as
    ``json.dumps`` of the page, on empty, full and last pages, before and after phases
    change and after a reset brings back the same ids for other tasks."""
    vendor, _ = _flaky_tasks("replicate", 0, data_uri=0.3)
    routes = ReplicateRoutes(vendor)
    shape = vendor.shape
    assert isinstance(shape, ReplicateShape)
    clock: ManualClock = vendor.scheduler  # type: ignore[assignment]

    def expected(cursor: int) -> bytes:
        newest_first = list(reversed(vendor.tasks.values()))
        results = newest_first[cursor : cursor + 100]
        more = len(newest_first) > cursor + 100
        link = f"{vendor.base_url}/v1/predictions?cursor={cursor + 100}" if more else None
        page = {
            "previous": None,
            "next": link,
            "results": [shape.prediction(task, listed=True) for task in results],
        }
        return json.dumps(page, separators=(",", ":")).encode()

    def read(cursor: int) -> bytes:
        call = Call({}, {"cursor": str(cursor)}, {}, b"")
        answer = asyncio.run(routes.list(call))
        assert answer.status == 200
        return answer.body

    def create(count: int, prompt: str) -> None:
        for i in range(count):
            vendor.create_task("acme/painter", "v", {"prompt": f"{prompt} {i}"})

    assert read(0) == expected(0) == b'{"previous":null,"next":null,"results":[]}'
    create(230, "first")
    for step in (0.0, 0.2, 30.0):
        clock.advance(step)
        for cursor in (0, 100, 200, 300):
            assert read(cursor) == expected(cursor)
    vendor.reset()
    create(150, "again")  # the same ids as before the reset, other inputs
    clock.advance(30.0)
    assert read(0) == expected(0) and read(100) == expected(100)


@pytest.mark.parametrize(
    "input",
    [{"prompt": "p"}, {"prompt": "façade 🦊", "seed": 1.5e-7, "n": 10**30, "tags": ["b", "a"]}],
)
def test_each_image_is_the_png_of_its_input_with_its_index(input: dict[str, Any]) -> None:
    """Image 0 is made from the canonical JSON the files keep, without parsing it back."""
    canonical = json.dumps(input, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert outputs._canonical(input) == canonical  # one encoder kept for all
    spec = OutputSpec.model_validate({"kind": "image"})
    images = [file.read() for file in make_files(input, spec, 3, 0)]
    assert images == [expected_png(input), *(expected_png({**input, "_output": i}) for i in (1, 2))]


def test_logs_are_made_escaped_as_json_dumps_escapes_them() -> None:
    """Sizes in a line, at a line's end, past the line starts kept, and an id to escape."""
    line = len(f"{1:>6}it [00:01, 12.34it/s] denoising latents for {'a' * 26}\n")
    sizes = [1, 2, line - 1, line, line + 1, 7 * line, 9000 * line + 5, 123_457]
    for task_id in ("abcdefghijklmnopqrstuvwxyz", 'a"b\\c\u00e9'):
        for size in sizes:
            expected = json.dumps(replicate_shape._log_lines(task_id, size)).encode()
            assert replicate_shape._encoded_log_lines(task_id, size) == expected
