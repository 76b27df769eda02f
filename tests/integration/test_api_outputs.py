"""Every output of a job over the API, and the webhook route's own body limit (issue 12,
cases 5 and 9)."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp

from runtime.models import Complete, MarkProcessing, StartAttempt, StoredOutput
from runtime.results import result_key_for
from runtime.webhooks import signed_headers
from tests.integration.api_fixtures import (  # noqa: F401
    PNG,
    WEBHOOK_SECRET,
    ApiHarness,
    MakeApi,
    api_fixture,
    make_api_fixture,
)

MP4 = b"\x00\x00\x00\x20ftypisom" + b"\x00" * 100
JSON_RESULT = b'{"seed": 42, "caption": "a red fox"}'


async def error_of(response: aiohttp.ClientResponse) -> tuple[int, str]:
    body = await response.json()
    return response.status, body["error"]["code"]


async def complete_with_outputs(api: ApiHarness, job_id: str) -> list[StoredOutput]:
    """Complete a job the way the processor does: three outputs stored, then Complete."""
    job = await api.ledger.get_job(job_id)
    await api.ledger.execute_many([StartAttempt(job_id, 1, job.vendor, 0)])
    await api.ledger.execute_many([MarkProcessing(job_id, 1, f"task-{job_id}")])
    outputs = []
    for index, (data, content_type) in enumerate(
        [(PNG, "image/png"), (MP4, "video/mp4"), (JSON_RESULT, "application/json")]
    ):
        key = result_key_for(job_id if index == 0 else f"{job_id}-{index}", content_type)
        await api.results.put(key, data, content_type)
        outputs.append(StoredOutput(key, content_type, len(data), f"out-{index}", None))
    (outcome,) = await api.ledger.execute_many([Complete(job_id, outputs[0].key, tuple(outputs))])
    outcome.unwrap()
    return outputs


async def test_a_job_lists_every_output_and_serves_each(api: ApiHarness) -> None:
    account = await api.account()
    job = await api.submitted(account)
    queued = await (await api.client.get(f"/v1/jobs/{job['id']}", headers=account.auth)).json()
    assert queued["outputs"] == []
    early = await api.client.get(f"/v1/jobs/{job['id']}/outputs/0", headers=account.auth)
    assert await error_of(early) == (409, "job_not_completed")
    await complete_with_outputs(api, job["id"])
    fetched: dict[str, Any] = await (
        await api.client.get(f"/v1/jobs/{job['id']}", headers=account.auth)
    ).json()
    assert [(o["index"], o["content_type"], o["size"], o["name"]) for o in fetched["outputs"]] == [
        (0, "image/png", len(PNG), "out-0"),
        (1, "video/mp4", len(MP4), "out-1"),
        (2, "application/json", len(JSON_RESULT), "out-2"),
    ]
    for output, data in zip(fetched["outputs"], (PNG, MP4, JSON_RESULT), strict=True):
        response = await api.client.get(output["url"], headers=account.auth)
        assert response.status == 200
        assert response.content_type == output["content_type"]
        assert await response.read() == data
    first = await api.client.get(f"/v1/jobs/{job['id']}/result", headers=account.auth)
    assert await first.read() == PNG  # the result is the first output


async def test_an_output_that_does_not_exist_is_404(api: ApiHarness) -> None:
    account = await api.account()
    job = await api.submitted(account)
    await complete_with_outputs(api, job["id"])
    for n in ("3", "9999", "-1", "x", "1.0", "00000000001", "00", "01", "²"):
        response = await api.client.get(f"/v1/jobs/{job['id']}/outputs/{n}", headers=account.auth)
        assert await error_of(response) == (404, "output_not_found"), n
    stranger = await api.account(name="stranger")
    response = await api.client.get(f"/v1/jobs/{job['id']}/outputs/0", headers=stranger.auth)
    assert await error_of(response) == (404, "job_not_found")


async def test_the_openapi_document_describes_every_output(api: ApiHarness) -> None:
    document = await (await api.client.get("/openapi.json")).json()
    route = document["paths"]["/v1/jobs/{id}/outputs/{n}"]["get"]
    assert set(route["responses"]) >= {"200", "302", "404", "409"}
    job = document["components"]["schemas"]["Job"]
    assert job["properties"]["outputs"]["items"] == {"$ref": "#/components/schemas/Output"}


# --- case 9: webhook intake ----------------------------------------------------------------


def _prediction(task_id: str, logs: int) -> bytes:
    prediction = {
        "id": task_id,
        "status": "succeeded",
        "output": ["https://replicate.delivery/x/out-0.png"],
        "input": {"prompt": "a red fox"},
        "logs": "denoising step\n" * (logs // 15),
    }
    return json.dumps(prediction).encode()


def rejections(text: str, vendor: str, reason: str) -> float:
    for line in text.splitlines():
        if (
            line.startswith("jobline_webhook_rejections_total{")
            and f'reason="{reason}"' in line
            and f'vendor="{vendor}"' in line
        ):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no rejections series for {vendor}/{reason}")


async def test_a_whole_prediction_of_several_mb_is_accepted(make_api: MakeApi) -> None:
    """Vendor webhooks over the 64 KiB body limit got 413 (replicate posts the whole
    prediction, with input and logs), and the rejection showed in no metric."""
    api = await make_api(max_webhook_body_bytes=8 * 1024 * 1024)
    assert api.config.gateway.max_body_bytes == 65536  # the API's own limit is unchanged
    body = _prediction("task-big", 3 * 1024 * 1024)
    headers = signed_headers(WEBHOOK_SECRET, "msg_big", int(time.time()), body)
    response = await api.client.post("/v1/webhooks/replicate", data=body, headers=headers)
    assert (response.status, await response.json()) == (200, {"status": "accepted"})
    assert [e.task_id for e in api.router.processors["replicate"].webhooks] == ["task-big"]


async def test_every_webhook_rejection_is_counted_413_included(make_api: MakeApi) -> None:
    api = await make_api(max_webhook_body_bytes=1024 * 1024)
    body = _prediction("task-huge", 2 * 1024 * 1024)
    headers = signed_headers(WEBHOOK_SECRET, "msg_huge", int(time.time()), body)
    response = await api.client.post("/v1/webhooks/replicate", data=body, headers=headers)
    assert await error_of(response) == (413, "payload_too_large")
    chunked = await api.client.post(  # no Content-Length: counted as it arrives
        "/v1/webhooks/replicate", data=_chunks(body), headers=headers
    )
    assert await error_of(chunked) == (413, "payload_too_large")
    unknown = await api.client.post("/v1/webhooks/nobody", data=b"{}")
    assert await error_of(unknown) == (404, "unknown_vendor")
    assert api.router.processors["replicate"].webhooks == []
    text = await (await api.client.get("/metrics")).text()
    assert rejections(text, "replicate", "too_large") == 2
    assert rejections(text, "unknown", "unknown_vendor") == 1
    assert rejections(text, "fal", "too_large") == 0  # exported before the first


async def _chunks(body: bytes) -> Any:
    for start in range(0, len(body), 256 * 1024):
        yield body[start : start + 256 * 1024]
