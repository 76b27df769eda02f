"""The vendor adapters' pure parsing: Retry-After of any form, outputs under any key,
data URIs, fal's app ids and queue URLs (as fal-client builds them), statuses."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from runtime.errors import MAX_RETRY_AFTER, VendorModelInvalid
from runtime.vendors import Output, TaskState, TaskStatus, retry_after_seconds
from runtime.vendors.fal import queue_app, queue_base, webhook_status
from runtime.vendors.outputs import decode_data_uri, find_outputs
from runtime.vendors.replicate import _names, prediction_status

NOW = 1_712_345_678.0


def http_date(offset: float) -> str:
    return format_datetime(datetime.fromtimestamp(NOW + offset, UTC), usegmt=True)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        (None, None),
        ("", None),
        ("7", 7.0),
        ("  7  ", 7.0),
        ("0.5", 0.5),
        ("0", 0.0),
        ("-3", 0.0),
        # Field case 7 crashed the attempt; no number of seconds is no hint: the usual
        # backoff spends the job's retry budget (an hour would end it at once).
        ("inf", None),
        ("Infinity", None),
        ("-inf", None),
        ("nan", None),
        ("1e400", None),  # overflows to inf
        ("99999999999999999999", MAX_RETRY_AFTER),
        ("86400", MAX_RETRY_AFTER),
        ("soon", None),
        ("12 seconds", None),
        ("0x10", None),
        (http_date(30), 30.0),
        (http_date(-30), 0.0),
        (http_date(10**7), MAX_RETRY_AFTER),
        ("Mon, 32 Foo 2024 99:99:99 GMT", None),
        ("Wed, 21 Oct 2015 07:28:00", 0.0),  # no zone: read as GMT, long past
        ("Fri, 31 Dec 9999 23:59:59 GMT", MAX_RETRY_AFTER),
    ],
)
def test_retry_after_of_any_form_is_clamped_and_never_raises(
    header: str | None, seconds: float | None
) -> None:
    assert retry_after_seconds(header, NOW) == seconds


# --- outputs -----------------------------------------------------------------------------------


def test_fal_images_and_the_rest_of_the_result() -> None:
    result = {
        "images": [
            {
                "url": "https://cdn/a.png",
                "content_type": "image/png",
                "file_name": "a.png",
                "file_size": 10,
            },
            {"url": "https://cdn/b.jpg", "content_type": "image/jpeg"},
        ],
        "seed": 42,
        "has_nsfw_concepts": [False, False],
        "timings": {"inference": 0.4},
    }
    a, b, whole = find_outputs(result)
    assert a == Output("url", "https://cdn/a.png", "image/png", "images[0]", "a.png", 10)
    assert (b.key, b.content_type, b.file_name) == ("images[1]", "image/jpeg", None)
    assert whole.kind == "json" and whole.content_type == "application/json"
    assert json.loads(whole.value) == result


@pytest.mark.parametrize(
    ("result", "keys"),
    [
        ({"video": {"url": "https://cdn/v.mp4", "content_type": "video/mp4"}}, ["video"]),
        ({"audio": {"url": "https://cdn/a.wav"}}, ["audio"]),
        ({"model_mesh": {"url": "https://cdn/m.glb"}}, ["model_mesh"]),
        (
            {"outputs": {"frames": [{"url": "https://cdn/0"}, {"url": "https://cdn/1"}]}},
            ["outputs.frames[0]", "outputs.frames[1]"],
        ),
    ],
)
def test_files_are_found_under_any_key(result: object, keys: list[str]) -> None:
    outputs = find_outputs(result)
    assert [o.key for o in outputs] == keys and all(o.kind == "url" for o in outputs)


def test_replicate_outputs_a_string_a_list_an_object_or_text() -> None:
    assert find_outputs("https://r/out.mp4", "output") == (
        Output("url", "https://r/out.mp4", key="output"),
    )
    urls = find_outputs(["https://r/0.webp", "https://r/1.webp"], "output")
    assert [o.key for o in urls] == ["output[0]", "output[1]"]
    (text,) = find_outputs(["Hello", ",", " world"], "output")
    assert (text.kind, text.value, text.content_type) == (
        "text",
        "Hello, world",
        "text/plain; charset=utf-8",
    )
    (plain,) = find_outputs("a caption", "output")
    assert (plain.kind, plain.value) == ("text", "a caption")
    (data,) = find_outputs({"label": "cat", "score": 0.9}, "output")
    assert data.kind == "json" and json.loads(data.value) == {"label": "cat", "score": 0.9}


def test_data_uris_are_outputs_and_decode_without_a_request() -> None:
    png = b"\x89PNG\r\n\x1a\nrest"
    uri = "data:image/png;base64," + base64.b64encode(png).decode()
    (output,) = find_outputs({"images": [{"url": uri}]})
    assert (output.kind, output.content_type) == ("data", "image/png")
    assert decode_data_uri(uri) == ("image/png", png)
    assert decode_data_uri("data:,hello%20world") == ("text/plain;charset=US-ASCII", b"hello world")
    assert decode_data_uri("data:text/plain;charset=utf-8,caf%C3%A9")[1] == "café".encode()
    unpadded = "data:application/octet-stream;base64," + base64.b64encode(b"ab").decode().rstrip(
        "="
    )
    assert decode_data_uri(unpadded)[1] == b"ab"
    encoded = base64.b64encode(png).decode()
    wrapped = f"data:image/png;base64,{encoded[:8]}\r\n {encoded[8:12]}%0A\t{encoded[12:]}\n"
    assert decode_data_uri(wrapped)[1] == png  # line breaks, raw or percent-encoded, dropped
    for bad in ("data:image/png;base64,@@@", "https://x", "data:no-comma"):
        with pytest.raises(ValueError):
            decode_data_uri(bad)


@pytest.mark.parametrize(
    ("uri", "decoded"),
    [
        ("data:;base64,QUJD", ("text/plain;charset=US-ASCII", b"ABC")),  # clean: as it is
        ("data:;base64,QUI", ("text/plain;charset=US-ASCII", b"AB")),  # padding added
        ("data:;base64,QUJD%3D", ("text/plain;charset=US-ASCII", b"ABC")),  # escapes decoded
        ("data:a,b,c", ("a", b"b,c")),  # the header ends at the first comma
        ("data:;base64,QU=I", "Discontinuous padding"),
        ("data:x;base64,QUJD\u00e9", "only ASCII"),
    ],
)
def test_a_data_uri_decodes_the_same_whether_its_base64_is_clean_or_not(
    uri: str, decoded: tuple[str, bytes] | str
) -> None:
    """Clean base64 is decoded as it is; anything else goes through the lenient reading
    (escapes, whitespace, padding), which also names what is wrong."""
    if isinstance(decoded, str):
        with pytest.raises(ValueError, match=decoded):
            decode_data_uri(uri)
    else:
        assert decode_data_uri(uri) == decoded


def test_the_compat_accessor_is_the_first_file() -> None:
    status = TaskStatus(
        TaskState.SUCCEEDED,
        outputs=(Output("json", "{}"), Output("data", "data:,x"), Output("url", "https://y")),
    )
    assert status.output_url == "data:,x"
    assert TaskStatus(TaskState.SUCCEEDED, outputs=(Output("text", "hi"),)).output_url is None


# --- fal app ids and queue URLs -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "app"),
    [
        ("fal-ai/flux", "fal-ai/flux"),
        ("fal-ai/flux/dev", "fal-ai/flux"),
        ("fal-ai/flux-pro/v1.1/ultra", "fal-ai/flux-pro"),
        ("workflows/acme/upscale-flow", "workflows/acme/upscale-flow"),
        ("workflows/acme/upscale-flow/fast", "workflows/acme/upscale-flow"),
        ("comfy/acme/sdxl-graph", "comfy/acme/sdxl-graph"),
        ("12345-my-app", "12345/my-app"),  # fal-client's legacy <owner number>-<alias>
    ],
)
def test_app_ids_as_fal_client_reads_them(endpoint: str, app: str) -> None:
    assert queue_app("fal", endpoint) == app
    assert queue_base("https://queue.fal.run", "fal", endpoint, "r1") == (
        f"https://queue.fal.run/{app}/requests/r1"
    )


@pytest.mark.parametrize("endpoint", ["single", "workflows/acme", "fal-ai/../x", "a//b", ""])
def test_malformed_app_ids_are_refused_as_a_config_error(endpoint: str) -> None:
    with pytest.raises(VendorModelInvalid):
        queue_app("fal", endpoint)


# --- statuses ---------------------------------------------------------------------------


def test_a_fal_payload_error_is_a_success_whose_result_is_elsewhere() -> None:
    """Field case: ``status: OK``, ``payload: null``, ``payload_error``: the task was re-run
    five times and the job refunded; the result existed at the response URL."""
    task_id, status = webhook_status(
        {
            "request_id": "r1",
            "status": "OK",
            "payload": None,
            "payload_error": "Response payload is not JSON serializable",
        }
    )
    assert task_id == "r1"
    assert status == TaskStatus(TaskState.SUCCEEDED, result_pending=True)
    assert status.state.ended and not status.outputs


@pytest.mark.parametrize(
    ("prediction", "state", "permanent"),
    [
        ({"status": "starting"}, TaskState.PENDING, False),
        ({"status": "processing", "output": ["https://partial"]}, TaskState.RUNNING, False),
        ({"status": "aborted", "error": None}, TaskState.FAILED, False),
        ({"status": "canceled"}, TaskState.CANCELED, False),
        ({"status": "failed", "error": "flagged as sensitive (E005)"}, TaskState.FAILED, True),
        ({"status": "failed", "error": "CUDA out of memory"}, TaskState.FAILED, False),
    ],
)
def test_replicate_statuses(
    prediction: dict[str, object], state: TaskState, permanent: bool
) -> None:
    status = prediction_status(prediction)
    assert (status.state, status.permanent, status.outputs) == (state, permanent, ())
    if prediction["status"] == "aborted":
        assert status.error is not None and "not billed" in status.error


@pytest.mark.parametrize(
    ("webhook", "names"),
    [
        ("https://g/v1/webhooks/replicate?jobline_job_id=job_abc&jobline_attempt=2", True),
        ("https://g/v1/webhooks/replicate?jobline_attempt=2&jobline_job_id=job_abc", True),
        ("https://g/v1/webhooks/replicate?jobline_job_id=job_abc&jobline_attempt=1", False),
        ("https://g/v1/webhooks/replicate?jobline_job_id=job_abd&jobline_attempt=2", False),
        ("https://g/v1/webhooks/replicate?jobline_job_id=job_abcd&jobline_attempt=2", False),
        # Escaped, the job's id is not in the text, but the query still names it.
        ("https://g/v1/webhooks/replicate?jobline_job_id=job_a%62c&jobline_attempt=2", True),
        ("https://g/v1/webhooks/replicate?jobline_job_id=job%5Fabc&jobline_attempt=%32", True),
        ("https://g/v1/webhooks/replicate?other=job_abc&jobline_attempt=2", False),
        ("https://g/v1/webhooks/replicate", False),
        (None, False),
    ],
)
def test_a_prediction_names_a_job_by_its_webhook_query_however_escaped(
    webhook: str | None, names: bool
) -> None:
    """The in-doubt lookup skips parsing webhooks whose text cannot name the job; an
    escaped query is still parsed and matched."""
    assert _names(webhook, "job_abc", 2) is names
