"""The replicate shape without HTTP: predictions as JSON, webhooks, errors.

Written from replicate's HTTP API reference ("Create a prediction", "Get a prediction",
"Prediction lifecycle", "Webhooks") and the official ``replicate`` Python client:

- statuses ``starting`` (queued; a cold boot makes it last minutes), ``processing``,
  ``succeeded``, ``failed``, ``canceled`` (by the user, or its ``Cancel-After`` deadline
  passed while it ran: billed) and ``aborted`` (the deadline passed before it started:
  not billed);
- ``output``: a URL string (one video or audio file), a list of URLs (images), data URIs
  instead of URLs (the sync API), a JSON object, or a list of strings for a language
  model (the client joins them);
- webhooks (``start`` when it starts processing, ``completed`` at the end; ``output`` and
  ``logs`` are accepted in the filter and never sent) post the whole prediction, input
  and logs included, signed with Standard Webhooks;
- errors are problem JSON: ``{"title", "detail", "status"}``.
"""

from __future__ import annotations

import functools
import json
import re
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from typing import TYPE_CHECKING, Any

from vendors_fake.outputs import inline_result
from vendors_fake.tasks import Phase, Task

if TYPE_CHECKING:
    from vendors_fake.core import VendorCore

EVENTS = frozenset({"start", "output", "logs", "completed"})
STATUS = {
    Phase.QUEUED: "starting",
    Phase.RUNNING: "processing",
    Phase.SUCCEEDED: "succeeded",
    Phase.FAILED: "failed",
    Phase.CANCELED: "canceled",
    Phase.ABORTED: "aborted",
}
TITLES = {
    400: "Bad request",
    401: "Unauthenticated",
    402: "Billing required",
    403: "Forbidden",
    404: "Not found",
    422: "Input validation failed",
    429: "Request was throttled",
    500: "Internal server error",
    502: "Bad gateway",
    503: "Service unavailable",
    504: "Gateway timeout",
}
REFUSALS = {
    401: "You did not pass a valid authentication token",
    402: (
        "You need to set up billing to run this model. Go to "
        "https://replicate.com/account/billing#billing to set it up. If you have recently "
        "set up billing, please wait a few minutes before trying again."
    ),
    403: "You do not have permission to run this model: your account is disabled.",
    404: "The requested resource could not be found.",
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:ms|s|m|h))+")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"  # replicate ids: 26 chars of base32


_COMPACT = json.JSONEncoder(separators=(",", ":"))  # json.dumps makes one at each call


def dumps(obj: Any) -> bytes:
    """``json.dumps(obj, separators=(",", ":")).encode()``."""
    return _COMPACT.encode(obj).encode()


def parse_duration(text: str) -> float | None:
    """``Cancel-After``: a duration such as ``90s``, ``5m`` or ``1h30m`` (ms, s, m, h)."""
    if not _DURATION.fullmatch(text):
        return None
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


class ReplicateShape:
    name = "replicate"
    emitted_events = frozenset({"start", "completed"})
    progress_event: str | None = "start"
    final_event = "completed"

    def __init__(self, core: VendorCore) -> None:
        self.core = core

    def new_id(self, bits: int) -> str:
        return "".join(_ALPHABET[(bits >> (5 * i)) & 31] for i in range(26))

    def prediction(self, task: Task, *, listed: bool = False) -> dict[str, Any]:
        """The prediction as ``GET /v1/predictions/{id}`` answers it; ``listed``: as an
        entry of ``GET /v1/predictions`` (no logs, its ``source``: replicate's OpenAPI
        example of predictions.list)."""
        return {
            "id": task.id,
            "model": task.model,
            "version": task.version,
            "input": task.input,
            **({"source": "api"} if listed else {"logs": _logs(task)}),
            "output": self.output(task),
            **self._after_output(task),
        }

    def output(self, task: Task) -> Any:
        if task.phase is not Phase.SUCCEEDED:
            return None
        spec = task.spec
        if spec.kind == "json":
            return inline_result(task.input, "json")
        if spec.kind == "text":
            text = inline_result(task.input, "text")
            if spec.as_list is False:
                return text
            words = text.split(" ")
            return [words[0], *(" " + word for word in words[1:])]
        urls = [self.core.file_ref(task, file) for file in task.files.values()]
        as_list = spec.as_list if spec.as_list is not None else spec.kind == "image"
        return urls if as_list else urls[0]

    def render(self, task: Task) -> bytes:
        """``dumps(self.prediction(task))``, assembled from parts encoded once: the logs
        (up to 256 KiB, the same from the start to the end) kept for the newest tasks, the
        output's data URIs (up to 2.7 MB each) kept by the vendor (``core.data_uris``)."""
        head, output, tail = self._parts(task)
        return b"".join((head, b',"logs":', _logs_json(task), b',"output":', output, tail))

    def listed(self, task: Task) -> bytes:
        """``dumps(self.prediction(task, listed=True))``: an entry of a list page."""
        head, output, tail = self._parts(task)
        return b"".join((head, b',"source":"api","output":', output, tail))

    def _parts(self, task: Task) -> tuple[bytes, bytes, bytes]:
        """The prediction's JSON before its logs (``{...`` with no closing brace), its
        output, and what follows the output (``,...}``): the keys in ``prediction``'s order,
        so that the parts joined are the bytes ``json.dumps`` makes of the whole."""
        head = dumps(
            {"id": task.id, "model": task.model, "version": task.version, "input": task.input}
        )
        return head[:-1], self._output_json(task), b"," + dumps(self._after_output(task))[1:]

    def _after_output(self, task: Task) -> dict[str, Any]:
        """The prediction's keys after ``output``, in their order."""
        url = f"{self.core.base_url}/v1/predictions/{task.id}"
        after: dict[str, Any] = {
            "data_removed": False,
            "error": task.error,
            "status": STATUS[task.phase],
            "created_at": _iso(task.created_at),
            "started_at": _iso(task.started_at),
            "completed_at": _iso(task.completed_at),
            "urls": {"get": url, "cancel": f"{url}/cancel"},
            "metrics": (
                {"predict_time": round(task.fate.run_time, 6)}
                if task.phase is Phase.SUCCEEDED
                else {}
            ),
        }
        if task.webhook_url is not None:
            after["webhook"] = task.webhook_url
            after["webhook_events_filter"] = sorted(task.webhook_events)
        return after

    def _output_json(self, task: Task) -> bytes:
        """``dumps(self.output(task))``, with each data URI encoded once per file."""
        if task.phase is not Phase.SUCCEEDED or task.spec.kind in ("json", "text"):
            return dumps(self.output(task))
        refs = [
            self.core.data_uris.json(file)
            if task.inline(file)
            else dumps(self.core.file_ref(task, file))
            for file in task.files.values()
        ]
        spec = task.spec
        as_list = spec.as_list if spec.as_list is not None else spec.kind == "image"
        return b"[" + b",".join(refs) + b"]" if as_list else refs[0]

    def webhook_body(self, task: Task, event: str) -> bytes:
        return task.body  # replicate posts the prediction as it is at the event

    def error_body(self, status: int, message: str) -> bytes:
        return dumps({"title": TITLES.get(status, "Error"), "detail": message, "status": status})

    def refusal_message(self, status: int, model: str) -> str:
        return REFUSALS[status]


def _logs(task: Task) -> str:
    """The prediction's logs so far: progress lines up to its drawn size once it runs."""
    if task.phase is Phase.QUEUED or task.fate.logs_bytes <= 0:
        return ""
    return _log_lines(task.id, task.fate.logs_bytes)


def _logs_json(task: Task) -> bytes:
    """``dumps(_logs(task))``."""
    if task.phase is Phase.QUEUED or task.fate.logs_bytes <= 0:
        return b'""'
    return _encoded_log_lines(task.id, task.fate.logs_bytes)


@functools.lru_cache(maxsize=32)  # the tasks running now (logs reach 256 KiB each)
def _encoded_log_lines(task_id: str, size: int) -> bytes:
    """``dumps(_log_lines(task_id, size))``, made escaped: a line's one character to
    escape is its newline, and up to step 999,999 every line is as long as the first."""
    tail = f", 12.34it/s] denoising latents for {task_id}\n"
    whole, part = divmod(size, len(f"{1:>6}it [00:01{tail}"))
    if whole >= 999_999 or not (task_id.isascii() and task_id.isalnum()):
        return encode_basestring_ascii(_log_lines(task_id, size)).encode("ascii")
    escaped = tail[:-1] + "\\n"
    lines = escaped.join(_line_starts(whole)) + escaped if whole else ""
    cut = f"{whole + 1:>6}it [00:{(whole + 1) % 60:02d}{tail}"[:part]
    return f'"{lines}{cut}"'.encode("ascii")


def _log_lines(task_id: str, size: int) -> str:
    # Every line is at least as long as the first: this many lines reach the size.
    count = -(-size // len(f"{1:>6}it [00:01, 12.34it/s] denoising latents for {task_id}\n"))
    tail = f", 12.34it/s] denoising latents for {task_id}\n"
    return (tail.join(_line_starts(count)) + tail)[:size]


_LINE_STARTS: list[str] = []  # "     1it [00:01", ...: the same in every task's logs
_LINE_STARTS_KEPT = 8192  # lines of 256 KiB of logs, and more


def _line_starts(count: int) -> list[str]:
    """The starts of the first ``count`` log lines (each ends with the task's tail)."""
    if not _LINE_STARTS:  # made once, all of them: a process does not grow from run to run
        more = range(1, _LINE_STARTS_KEPT + 1)
        _LINE_STARTS.extend([f"{step:>6}it [00:{step % 60:02d}" for step in more])
    if count <= len(_LINE_STARTS):
        return _LINE_STARTS[:count]
    more = range(len(_LINE_STARTS) + 1, count + 1)
    return _LINE_STARTS + [f"{step:>6}it [00:{step % 60:02d}" for step in more]


def _iso(wall: float | None) -> str | None:
    """``%Y-%m-%dT%H:%M:%S.%fZ`` (``isoformat`` with microseconds is that, twice as fast)."""
    if wall is None:
        return None
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="microseconds")[:-6] + "Z"
