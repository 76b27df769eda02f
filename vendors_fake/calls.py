"""A request to a fake vendor and its answer, whatever carries them: the vendor's routes
written once, served by two hosts (HTTP in ``vendors_fake.server``, in memory in
``vendors_fake.memory``).

A host turns what it received into a :class:`Call` (path parameters, query, headers,
body), finds the :class:`Route`, and awaits :func:`serve`: the gate (outage window, a
drawn request fault, the key: :meth:`~vendors_fake.core.VendorCore.admit`), the route's
handler, and the shape's error body for a :class:`~vendors_fake.core.Refused`. The
:class:`Answer` is a status, headers and a body, or something only the host can act
out (``drop``): a hung request, a reset connection, an answer cut off mid-body (a submit
whose answer is lost after the task was created), and a file to stream.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from yarl import URL

from vendors_fake.core import Refused, RouteGroup, VendorCore
from vendors_fake.outputs import OutputFile
from vendors_fake.tasks import LostAnswer, RequestFault, Task

TRACE_HEADER = "X-Jobline-Trace-Id"
JOB_ID_HEADER = "X-Jobline-Job-Id"
ATTEMPT_HEADER = "X-Jobline-Attempt"
JOB_ID_PARAM = "jobline_job_id"
ATTEMPT_PARAM = "jobline_attempt"
JSON_HEADERS = {"Content-Type": "application/json"}

Drop = Literal["hang", "reset", "cut_off"]


@dataclass(frozen=True, slots=True)
class Call:
    """One request to a route: ``headers`` must look names up case-insensitively (an
    aiohttp ``CIMultiDictProxy``, a ``multidict.CIMultiDict``)."""

    params: Mapping[str, str]  # the path's parameters
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            raise Refused(400, "The request body is not valid JSON") from None


@dataclass(frozen=True, slots=True)
class Answer:
    """What the vendor answers: ``status``, ``headers`` and ``body``; or, with ``drop``, a
    connection the host holds (``hang``), aborts (``reset``) or cuts off after half the
    body (``cut_off``); with ``file``, the file to stream (then counted as downloaded)."""

    status: int
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=lambda: JSON_HEADERS)
    drop: Drop | None = None
    file: tuple[Task, OutputFile] | None = None


Handler = Callable[[Call], Awaitable[Answer]]


@dataclass(frozen=True, slots=True)
class Route:
    method: str
    path: str  # aiohttp's syntax: /v1/predictions/{id}, /{app:.+}/requests/{id}
    name: str  # what the stats count it as
    group: RouteGroup  # which faults of the profile apply
    handler: Handler
    auth: bool = True


def json_answer(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> Answer:
    return Answer(status, body, {**JSON_HEADERS, **(headers or {})})


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def error_answer(core: VendorCore, status: int, message: str, retry_after: float | None) -> Answer:
    headers = None if retry_after is None else {"Retry-After": retry_after_value(retry_after)}
    return json_answer(core.shape.error_body(status, message), status, headers)


def retry_after_value(seconds: float) -> str:
    """Whole seconds; a value that is no number (``inf``, ``nan``: a profile may ask for
    them, as a hostile vendor sends them) goes out as it is."""
    if not math.isfinite(seconds):
        return str(seconds)
    return str(max(math.ceil(seconds), 0))


def created(task: Task, body: bytes, status: int) -> Answer:
    """The answer to a submit that created ``task``, unless its fate says it is lost."""
    lost = task.fate.lost_answer
    if lost is None:
        return json_answer(body, status)
    kind, code = lost
    if kind is LostAnswer.HANG:
        return Answer(status, drop="hang")
    if kind is LostAnswer.SERVER_ERROR:
        raise Refused(code, "Internal server error")
    return Answer(status, body, JSON_HEADERS, drop="cut_off")


def identify(call: Call, webhook_url: str | None) -> tuple[str | None, str | None, str | None]:
    """The trace id, job id and attempt a submit names (headers, else the webhook URL)."""
    headers = call.headers
    job_id = headers.get(JOB_ID_HEADER)
    attempt = headers.get(ATTEMPT_HEADER)
    if job_id is None and webhook_url:
        query = URL(webhook_url).query
        job_id = query.get(JOB_ID_PARAM)
        attempt = attempt or query.get(ATTEMPT_PARAM)
    return headers.get(TRACE_HEADER), job_id, attempt


async def serve(core: VendorCore, route: Route, call: Call, authorization: str) -> Answer:
    """The gate, then the route (see the module docstring); counted in the core's stats."""
    stats = core.stats
    codes = stats.route_counter(route.name)
    if TRACE_HEADER not in call.headers:
        stats.trace_id_missing[route.name] += 1
    try:
        authorized = not route.auth or call.headers.get("Authorization") == authorization
        fault = core.admit(route.group, authorized)
        if fault is RequestFault.HANG:
            codes["hang"] += 1
            return Answer(0, drop="hang")
        if fault is RequestFault.RESET:
            codes["reset"] += 1
            return Answer(0, drop="reset")
        answer = await route.handler(call)
    except Refused as refused:
        answer = error_answer(core, refused.status, refused.message, refused.retry_after)
    codes[str(answer.status if answer.drop != "hang" else 400)] += 1
    return answer


def file_route(core: VendorCore) -> Route:
    """``GET /files/{task_id}/{filename}``: an output file, with no key (as a CDN serves
    it), streamed by the host; a download that reaches its end counts as delivered."""

    async def get_file(call: Call) -> Answer:
        task, file = core.file(call.params["task_id"], call.params["filename"])
        headers = {"Content-Type": file.content_type, "Content-Length": str(file.size)}
        return Answer(200, headers=headers, file=(task, file))

    return Route("GET", "/files/{task_id}/{filename}", "files.get", "download", get_file, False)


def vendor_routes(core: VendorCore) -> list[Route]:
    """Every route of the core's shape, and its files."""
    # Imported here: the route modules import this one for Call, Answer and Route.
    if core.shape_name == "replicate":
        from vendors_fake.replicate_api import ReplicateRoutes

        return [file_route(core), *ReplicateRoutes(core).routes()]
    from vendors_fake.fal_api import FalRoutes

    return [file_route(core), *FalRoutes(core).routes()]
