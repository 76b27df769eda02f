"""Locust scenarios against a running jobline (``python -m loadtests.run`` starts one).

Five kinds of client, each naming its requests ``<scenario>: <route>`` so the report
shows them apart:

- ``poll``: submits a job, polls ``GET /v1/jobs/{id}`` every 3 s until it ends, then
  downloads the result (and checks it is a PNG).
- ``sse``: submits a job and follows ``GET /v1/jobs/{id}/events`` until the terminal
  event; ``sse: until terminal`` times the whole stream.
- ``retry``: an impatient client. Its first submit gives up after 5 ms
  (``JOBLINE_LOADTEST_IMPATIENT_TIMEOUT``), before most answers arrive; it then retries
  with the same ``Idempotency-Key`` until it gets a ``202``, and checks that a repeat of
  an answered submit returns the same job.
- ``history``: a page reloaded after the browser closed, listing the account's
  ``processing`` jobs (``GET /v1/jobs?status=processing``) every 4 s.
- ``webhooks``: forges vendor callbacks: a wrong secret, a stale timestamp, no
  signature, a malformed body (each must be refused with 401/400) and a correctly
  signed event sent twice (accepted once, then answered ``duplicate``).

The target comes from the JSON file named by ``JOBLINE_LOADTEST_TARGET``:
``{"api_key": "...", "models": [...], "vendors": {"<name>": {"api": "replicate" |
"fal", "webhook_secret": "whsec_..."}}}``. The load shape is ``--load-shape steady |
ramp | spike`` with ``-u`` (peak users) and ``-t`` (duration)::

    JOBLINE_LOADTEST_TARGET=target.json locust -f loadtests/locustfile.py --headless \\
        --host http://127.0.0.1:8080 --load-shape spike -u 30 -t 60s
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import time
import uuid
from dataclasses import dataclass
from typing import Any

from locust import FastHttpUser, LoadTestShape, between, constant_pacing, events, task
from locust.contrib.fasthttp import FastHttpSession

from runtime.webhooks import signed_headers

TARGET_ENV = "JOBLINE_LOADTEST_TARGET"
POLL_INTERVAL = 3.0  # seconds between status polls of the `poll` client
HISTORY_INTERVAL = 4.0  # seconds between reloads of the history page
JOB_PATIENCE = 300.0  # a client gives up on a job that has not ended after this
IMPATIENT_TIMEOUT = float(os.environ.get("JOBLINE_LOADTEST_IMPATIENT_TIMEOUT", "0.005"))
SUBMIT_ATTEMPTS = 8  # the `retry` client's submits of one job before it gives up
TERMINAL = frozenset({"completed", "failed", "canceled"})
STATUSES = TERMINAL | {"queued", "processing"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FORGED_SECRET = "whsec_Zm9yZ2VkLWJ5LXRoZS1sb2FkLXRlc3Q="  # not any vendor's secret
STALE_BY = 3600  # seconds: far outside the gateway's tolerance
SHAPES = ("steady", "ramp", "spike")
MIN_USERS = 5  # one of each scenario (two have fixed_count = 1)


@dataclass(frozen=True)
class Target:
    api_key: str
    models: list[str]
    vendors: dict[str, dict[str, str]]  # name -> {"api", "webhook_secret"}

    @classmethod
    def load(cls) -> Target:
        path = os.environ.get(TARGET_ENV)
        if not path:
            raise SystemExit(f"{TARGET_ENV} must name the target JSON file (see the docstring)")
        with open(path, encoding="utf-8") as file:
            data = json.load(file)
        return cls(data["api_key"], list(data["models"]), dict(data["vendors"]))


_target: Target | None = None
_user_seq = itertools.count()


def target() -> Target:
    global _target
    if _target is None:
        _target = Target.load()
    return _target


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _add_options(parser: Any) -> None:
    parser.add_argument(
        "--load-shape",
        choices=SHAPES,
        default="steady",
        env_var="JOBLINE_LOADTEST_SHAPE",
        help="steady: -u users throughout; ramp: up to -u users over 80%% of -t; "
        "spike: a quarter of -u, with all -u users for the middle fifth of -t",
    )


# --- load shapes ----------------------------------------------------------------------


def users_at(shape: str, elapsed: float, duration: float, peak: int) -> int:
    """How many users the shape wants ``elapsed`` seconds into a run of ``duration``."""
    peak = max(peak, MIN_USERS)
    if shape == "steady":
        return peak
    if shape == "ramp":
        share = min(1.0, elapsed / max(0.8 * duration, 1e-9))
        return max(MIN_USERS, math.ceil(peak * share))
    if shape == "spike":
        in_spike = 0.4 * duration <= elapsed < 0.6 * duration
        return peak if in_spike else max(MIN_USERS, peak // 4)
    raise ValueError(f"unknown load shape {shape!r} (known: {', '.join(SHAPES)})")


class JoblineShape(LoadTestShape):
    """``--load-shape`` over ``-u`` peak users and ``-t`` seconds."""

    use_common_options = True

    def tick(self) -> tuple[int, float] | None:
        assert self.runner is not None
        options = self.runner.environment.parsed_options
        assert options is not None
        duration = float(options.run_time or 60)
        elapsed: float = self.get_run_time()  # type: ignore[no-untyped-call]
        if elapsed >= duration:
            return None
        peak = int(options.num_users or 10)
        users = users_at(options.load_shape, elapsed, duration, peak)
        # A spike arrives within a second; the other shapes spread their starts.
        spawn_rate = float(peak if options.load_shape == "spike" else max(peak / 5, 1))
        return users, spawn_rate


# --- the clients ----------------------------------------------------------------------


class JoblineUser(FastHttpUser):
    """A client of one account: submits jobs, reads them, downloads results."""

    abstract = True
    scenario = "?"

    def on_start(self) -> None:
        self.target = target()
        self.rng = random.Random(next(_user_seq))
        self.auth = {"Authorization": f"Bearer {self.target.api_key}"}

    def job_body(self) -> dict[str, Any]:
        model = self.rng.choice(self.target.models)
        return {"model": model, "input": {"prompt": f"load test {uuid.uuid4().hex[:12]}"}}

    def submit(self, body: dict[str, Any] | None = None, key: str | None = None) -> Any:
        """POST /v1/jobs; the job, or None (a failure is recorded)."""
        headers = dict(self.auth)
        if key is not None:
            headers["Idempotency-Key"] = key
        with self.client.post(
            "/v1/jobs",
            json=body or self.job_body(),
            headers=headers,
            name=f"{self.scenario}: POST /v1/jobs",
            catch_response=True,
        ) as response:
            if response.status_code == 202:
                return response.json()
            response.failure(_describe(response))
            _back_off(response)
            return None

    def get_job(self, job_id: str) -> Any:
        with self.client.get(
            f"/v1/jobs/{job_id}",
            headers=self.auth,
            name=f"{self.scenario}: GET /v1/jobs/{{id}}",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(_describe(response))
                return None
            job = response.json()
            if job.get("id") != job_id or job.get("status") not in STATUSES:
                response.failure(f"unexpected job body {job!r:.200}")
                return None
            return job

    def download(self, job: Any) -> None:
        with self.client.get(
            f"/v1/jobs/{job['id']}/result",
            headers=self.auth,
            name=f"{self.scenario}: GET /v1/jobs/{{id}}/result",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(_describe(response))
            elif not (response.content or b"").startswith(PNG_MAGIC):
                response.failure("the result is not a PNG")


class PollingClient(JoblineUser):
    """Submit, poll every 3 s until the job ends, download the result."""

    scenario = "poll"
    weight = 4
    wait_time = between(0.5, 2.0)

    @task
    def submit_poll_download(self) -> None:
        job = self.submit()
        if job is None:
            return
        give_up_at = time.monotonic() + JOB_PATIENCE
        while job["status"] not in TERMINAL:
            if time.monotonic() > give_up_at:
                _report_failure(self, "poll: job ended", f"job {job['id']} still {job['status']}")
                return
            time.sleep(POLL_INTERVAL)  # gevent's sleep: locust patches time
            latest = self.get_job(job["id"])
            if latest is None:
                return
            job = latest
        if job["status"] == "completed":
            self.download(job)


class EventStreamClient(JoblineUser):
    """Submit, follow the job's server-sent events to the terminal one, download."""

    scenario = "sse"
    weight = 2
    wait_time = between(0.5, 2.0)

    @task
    def submit_and_watch(self) -> None:
        job = self.submit()
        if job is None:
            return
        started = time.perf_counter()
        final, events_seen, error = None, 0, None
        try:
            lines = self.client.iter_lines(
                f"/v1/jobs/{job['id']}/events",
                headers={**self.auth, "Accept": "text/event-stream"},
                name="sse: GET /v1/jobs/{id}/events",
            )
            for line in lines:
                if not line.startswith("data: "):
                    continue
                event = json.loads(line.removeprefix("data: "))
                events_seen += 1
                if "job" in event:  # only the terminal event carries the job
                    final = event["job"]
        except Exception as exc:  # the request itself was recorded as failed already
            error = exc
        if error is None and (final is None or final.get("status") not in TERMINAL):
            error = RuntimeError(f"stream ended without a terminal event ({events_seen} events)")
        self.environment.events.request.fire(
            request_type="SSE",
            name="sse: until terminal",
            response_time=(time.perf_counter() - started) * 1000,
            response_length=events_seen,
            exception=error,
            context={},
        )
        if final is not None and final["status"] == "completed":
            self.download(final)


class IdempotentRetrier(JoblineUser):
    """Gives up on its first submit almost at once, retries with the same key."""

    scenario = "retry"
    weight = 1
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        super().on_start()
        self.impatient = FastHttpSession(
            self.host,
            request_event=self.environment.events.request,
            user=self,
            network_timeout=IMPATIENT_TIMEOUT,
            connection_timeout=IMPATIENT_TIMEOUT,
        )

    @task
    def submit_with_retries(self) -> None:
        key = f"loadtest-{uuid.uuid4().hex}"
        body = self.job_body()
        first = self._impatient_submit(body, key)
        job = None
        for attempt in range(SUBMIT_ATTEMPTS):
            job = self.submit(body, key)
            if job is not None:
                break
            time.sleep(min(0.2 * 2**attempt, 5.0))
        if job is None:
            return
        if first is not None and first["id"] != job["id"]:
            _report_failure(self, "retry: same job", f"{first['id']} then {job['id']}")
        # The answer came back, but pretend it was lost: the repeat must be a replay.
        again = self.submit(body, key)
        if again is not None and again["id"] != job["id"]:
            _report_failure(self, "retry: same job", f"{job['id']} then {again['id']}")

    def _impatient_submit(self, body: dict[str, Any], key: str) -> Any:
        with self.impatient.post(
            "/v1/jobs",
            json=body,
            headers={**self.auth, "Idempotency-Key": key},
            name="retry: POST /v1/jobs (impatient)",
            catch_response=True,
        ) as response:
            if response.status_code == 202:
                return response.json()
            # A timeout is this client's own doing: what matters is the retry's answer.
            if not response.status_code:
                response.request_meta["name"] = "retry: POST /v1/jobs (impatient, timed out)"
                response.success()
            else:
                response.failure(_describe(response))
            return None


class HistoryPage(JoblineUser):
    """A reloaded page looking for its account's processing jobs, every 4 s."""

    scenario = "history"
    fixed_count = 1
    wait_time = constant_pacing(HISTORY_INTERVAL)

    @task
    def list_processing(self) -> None:
        with self.client.get(
            "/v1/jobs?status=processing",
            headers=self.auth,
            name="history: GET /v1/jobs?status=processing",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(_describe(response))
                return
            jobs = response.json().get("jobs")
            if not isinstance(jobs, list):
                response.failure("no jobs list in the page")
            elif any(job.get("status") != "processing" for job in jobs):
                response.failure("the page lists jobs that are not processing")


class WebhookForger(FastHttpUser):
    """An attacker at the webhook door; only the replayed authentic event gets in, once."""

    fixed_count = 1
    wait_time = between(0.5, 1.5)

    def on_start(self) -> None:
        self.target = target()
        self.rng = random.Random(10_000 + next(_user_seq))
        # One kind of attack per visit, in turn, so a short run sees every kind.
        self.attacks = itertools.cycle(
            [
                self.forged_signature,
                self.stale_timestamp,
                self.replayed,
                self.unsigned,
                self.forged_signature,
                self.malformed_body,
            ]
        )

    @task
    def attack(self) -> None:
        next(self.attacks)()

    def _vendor(self, api: str | None = None) -> tuple[str, dict[str, str]]:
        vendors = [(n, v) for n, v in self.target.vendors.items() if api in (None, v["api"])]
        return self.rng.choice(sorted(vendors))

    def _post(
        self, what: str, vendor: str, body: bytes, headers: dict[str, str], expect: dict[int, str]
    ) -> None:
        """POST a webhook; a failure unless the answer is ``status -> error code`` of expect."""
        with self.client.post(
            f"/v1/webhooks/{vendor}",
            data=body,  # type: ignore[arg-type]  # bytes go out as they are
            headers={"Content-Type": "application/json", **headers},
            name=f"webhooks: {what}",
            catch_response=True,
        ) as response:
            code = _answer_code(response)
            if expect.get(response.status_code) != code:
                wanted = " or ".join(f"{s} {c}" for s, c in expect.items())
                response.failure(f"{what}: wanted {wanted}, got {_describe(response)}")
            else:
                response.success()

    def forged_signature(self) -> None:
        vendor, _ = self._vendor()
        body, msg_id = _event_body(self.target.vendors[vendor]["api"])
        headers = signed_headers(FORGED_SECRET, msg_id, int(time.time()), body)
        self._post("forged signature", vendor, body, headers, {401: "webhook_signature_invalid"})

    def stale_timestamp(self) -> None:
        vendor, info = self._vendor("replicate")  # the harness holds only replicate's secret
        body, msg_id = _event_body(info["api"])
        headers = signed_headers(info["webhook_secret"], msg_id, int(time.time()) - STALE_BY, body)
        self._post("stale timestamp", vendor, body, headers, {401: "webhook_timestamp_stale"})

    def unsigned(self) -> None:
        vendor, info = self._vendor()
        body, _ = _event_body(info["api"])
        self._post("unsigned", vendor, body, {}, {401: "webhook_signature_invalid"})

    def malformed_body(self) -> None:
        vendor, info = self._vendor("replicate")
        body, msg_id = b'{"not": "an event"}', f"msg_lt_{uuid.uuid4().hex}"
        headers = signed_headers(info["webhook_secret"], msg_id, int(time.time()), body)
        self._post("malformed body", vendor, body, headers, {400: "webhook_malformed"})

    def replayed(self) -> None:
        """An authentic, harmless event (a progress update of an unknown task), twice."""
        vendor, info = self._vendor("replicate")
        body, msg_id = _event_body("replicate")
        headers = signed_headers(info["webhook_secret"], msg_id, int(time.time()), body)
        self._post("signed (first delivery)", vendor, body, headers, {200: "accepted"})
        self._post("signed (replayed)", vendor, body, headers, {200: "duplicate"})


# --- small pieces ---------------------------------------------------------------------


def _event_body(api: str) -> tuple[bytes, str]:
    """A webhook body for a task jobline never started, and a fresh webhook id."""
    suffix = uuid.uuid4().hex
    if api == "fal":
        data: dict[str, Any] = {
            "request_id": f"loadtest-{suffix}",
            "status": "ERROR",
            "error": "forged",
            "payload": None,
        }
    else:
        data = {"id": f"loadtest-{suffix}", "status": "processing", "output": None}
    return json.dumps(data).encode(), f"msg_lt_{suffix}"


def _answer_code(response: Any) -> str | None:
    """The error code, or the webhook answer's status, of a JSON response."""
    try:
        data = json.loads(response.content or b"null")
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("error"), dict):
        code = data["error"].get("code")
        return str(code) if code is not None else None
    status = data.get("status")
    return str(status) if status is not None else None


def _describe(response: Any) -> str:
    if not response.status_code:
        return f"no answer: {type(getattr(response, 'error', None)).__name__}"
    code = _answer_code(response)
    return f"HTTP {response.status_code}" + (f" {code}" if code else "")


def _back_off(response: Any) -> None:
    """Honour Retry-After on 429 and 503 (capped: a load test keeps moving)."""
    if response.status_code in (429, 503):
        raw = (response.headers or {}).get("Retry-After", "1")
        try:
            time.sleep(min(float(raw), 5.0))
        except ValueError:
            time.sleep(1.0)


def _report_failure(user: Any, name: str, message: str) -> None:
    """A check that is not one request (a job that never ended, a different job id)."""
    user.environment.events.request.fire(
        request_type="CHECK",
        name=name,
        response_time=0,
        response_length=0,
        exception=AssertionError(message),
        context={},
    )
