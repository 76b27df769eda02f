"""The OpenAPI 3.1 document of the HTTP API, served at ``/openapi.json``.

Request bodies come from ``runtime.api.bodies`` and the components from
``runtime.api.schemas``, the same models the handlers validate with. A test compares the
document's operations with the application's router: a route added without a
description here fails it.
"""

from __future__ import annotations

from typing import Any

from runtime.api.bodies import (
    CURSOR_PATTERN,
    DEFAULT_DEAD_LETTERS,
    DEFAULT_PAGE,
    DEFAULT_STATEMENT_PAGE,
    IDEMPOTENCY_KEY_PATTERN,
    MAX_DEAD_LETTERS,
    MAX_PAGE,
    MAX_STATEMENT_PAGE,
    REPLAYED_HEADER,
    TIME_CURSOR_PATTERN,
)
from runtime.api.openapi_console import console_paths, console_schemas
from runtime.api.openapi_keys import key_paths
from runtime.api.schemas import (
    component_schemas,
    error_response,
    errors,
    event_stream,
    internal_error,
    json_content,
    ref,
)
from runtime.config import JoblineConfig
from runtime.states import JobStatus


def _path_param(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string", "minLength": 1},
    }


_JOB_ID = _path_param("id", "The job id (job_…)")
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "schema": {"type": "string", "maxLength": 255, "pattern": IDEMPOTENCY_KEY_PATTERN},
}
_API_KEY: list[dict[str, list[str]]] = [{"apiKey": []}]
_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
_NO_AUTH: list[dict[str, list[str]]] = []


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _output_responses() -> dict[str, Any]:
    return {
        "200": {
            "description": "The output's bytes, with its content type",
            "content": {
                "*/*": {
                    "schema": {"type": "string", "contentMediaType": "application/octet-stream"}
                }
            },
        },
        "302": {
            "description": "The output at a presigned URL, valid presign_expiry s",
            "headers": {"Location": {"schema": {"type": "string", "format": "uri"}}},
        },
        **errors("401", "404", "409"),
    }


def _job_response(description: str) -> dict[str, Any]:
    return json_content(
        ref("Job"),
        description,
        headers={
            "X-Jobline-Trace-Id": {
                "description": "The job's trace id",
                "schema": {"type": "string"},
            }
        },
    )


def _query(name: str, schema: dict[str, Any], description: str = "") -> dict[str, Any]:
    param = {"name": name, "in": "query", "required": False, "schema": schema}
    if description:
        param["description"] = description
    return param


def _paths(config: JoblineConfig) -> dict[str, Any]:
    vendors = sorted(config.vendors)
    text_plain = {"text/plain": {"schema": {"type": "string"}}}
    granted = json_content(
        ref("GrantResult"),
        "The balance after the grant (for a replay: after the first request's grant)",
        headers={
            REPLAYED_HEADER: {
                "description": "`true` when this grant_id was granted before: the answer is "
                "the first one's, and nothing more was granted",
                "schema": {"type": "string", "enum": ["true"]},
            }
        },
    )
    submitted = _job_response("The job (queued), or the same job again for a replayed key")
    submitted["headers"][REPLAYED_HEADER] = {
        "description": "`true` when an earlier request with this Idempotency-Key made the job",
        "schema": {"type": "string", "enum": ["true"]},
    }
    submitted["headers"]["Location"] = {"schema": {"type": "string"}}
    return {
        "/v1/accounts": {
            "post": {
                "operationId": "createAccount",
                "summary": "Create an account with starting credits; returns its API key once",
                "security": _ADMIN,
                "requestBody": _body(ref("CreateAccount")),
                "responses": {
                    "201": json_content(ref("AccountCreated"), "The account and its API key"),
                    **errors("400", "401", "413", "415", admin=True),
                },
            }
        },
        "/v1/accounts/{id}/credits": {
            "post": {
                "operationId": "grantCredits",
                "summary": "Grant credits to an account",
                "security": _ADMIN,
                "parameters": [
                    _path_param("id", "The account id (acct_…)"),
                    {
                        **_IDEMPOTENCY_KEY,
                        "description": "The grant id, when the body has no grant_id",
                    },
                ],
                "requestBody": _body(ref("Grant")),
                "responses": {
                    "200": granted,
                    **errors(
                        "400",
                        "401",
                        "404",
                        "409",
                        "413",
                        "415",
                        admin=True,
                        e409="This grant_id was used for another amount (code grant_conflict)",
                    ),
                },
            }
        },
        "/v1/credits": {
            "get": {
                "operationId": "getCredits",
                "summary": "The account's balance, held and available credits",
                "security": _API_KEY,
                "responses": {
                    "200": json_content(ref("Balance"), "The balance"),
                    **errors("401", "404"),
                },
            }
        },
        "/v1/credits/entries": {
            "get": {
                "operationId": "getCreditEntries",
                "summary": "The account's statement: grants, holds, captures, releases",
                "description": (
                    "A page at a time (keyset: every page costs the same). An account may "
                    "have gateway.reads_in_flight_per_account statement and job-list reads "
                    "running at once per gateway; more wait, and past four times as many "
                    "the answer is 429 (code too_many_reads)."
                ),
                "security": _API_KEY,
                "parameters": [
                    _query(
                        "limit",
                        {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_STATEMENT_PAGE,
                            "default": DEFAULT_STATEMENT_PAGE,
                        },
                    ),
                    _query(
                        "cursor",
                        {"type": "string", "pattern": CURSOR_PATTERN},
                        "next_cursor of the previous page (asked with the same order)",
                    ),
                    _query(
                        "order",
                        {"type": "string", "enum": ["asc", "desc"], "default": "asc"},
                        "asc: oldest first; desc: newest first",
                    ),
                ],
                "responses": {
                    "200": json_content(ref("Statement"), "One page of credit entries"),
                    **errors("400", "401", "429"),
                },
            }
        },
        "/v1/jobs": {
            "post": {
                "operationId": "submitJob",
                "summary": "Submit a job: charge (hold) its price and queue it",
                "security": _API_KEY,
                "parameters": [
                    {
                        **_IDEMPOTENCY_KEY,
                        "description": (
                            "Same key and same body: the same job, charged once. Same key "
                            "and another body: 422."
                        ),
                    }
                ],
                "requestBody": _body(ref("SubmitJob")),
                "responses": {
                    "202": submitted,
                    **errors("400", "401", "402", "413", "415", "422", "429"),
                },
            },
            "get": {
                "operationId": "listJobs",
                "summary": "The account's jobs, newest first",
                "security": _API_KEY,
                "parameters": [
                    {
                        "name": "status",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": [s.value for s in JobStatus]},
                    },
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_PAGE,
                            "default": DEFAULT_PAGE,
                        },
                    },
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "next_cursor of the previous page",
                        "schema": {"type": "string", "pattern": CURSOR_PATTERN},
                    },
                ],
                "responses": {
                    "200": json_content(ref("JobPage"), "One page of jobs"),
                    **errors("400", "401", "429"),
                },
            },
        },
        "/v1/jobs/{id}": {
            "get": {
                "operationId": "getJob",
                "summary": "The job",
                "security": _API_KEY,
                "parameters": [_JOB_ID],
                "responses": {"200": _job_response("The job"), **errors("401", "404")},
            }
        },
        "/v1/jobs/{id}/events": {
            "get": {
                "operationId": "jobEvents",
                "summary": "Server-sent events: every status change until the job ends",
                "description": (
                    "Each status change is `event: status`, `id:` an opaque event id and "
                    "`data:` a JSON object `{job_id, event_id, status, at, detail}` (the id "
                    "tells nothing of other accounts' traffic); the terminal event's data also "
                    "holds the whole job under `job`, and the stream then ends. Comment lines "
                    "are heartbeats. Send `Last-Event-ID` to resume after an event. A job that "
                    "has ended with no event after `Last-Event-ID` answers 204 (so a "
                    "browser's EventSource stops reconnecting). It counts against "
                    "`gateway.event_streams_per_account` (429 `too_many_streams` past it)."
                ),
                "security": _API_KEY,
                "parameters": [
                    _JOB_ID,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "Resume after this event id (ignored unless one sent "
                        "for this job's account: the job's whole history)",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": event_stream(
                        "The job's status changes as server-sent events",
                        (
                            "status",
                            ref("JobEvent"),
                            "A status change; the terminal one carries the job and ends the stream",
                        ),
                    ),
                    "204": {"description": "The job has ended and every event was sent"},
                    **errors("401", "404"),
                },
            }
        },
        "/v1/jobs/{id}/outputs/{n}": {
            "get": {
                "operationId": "getJobOutput",
                "summary": "One stored output of a completed job (the job's `outputs[n]`)",
                "description": (
                    "Every output a vendor task produced is kept: images of a list, a video, "
                    "audio, other files, JSON and text results. Each is served with its "
                    "content type, streamed by the gateway or, with `[storage.s3] serve = "
                    '"redirect"`, as a 302 to a short-lived presigned URL. 404 '
                    "`output_not_found` past the last index."
                ),
                "security": _API_KEY,
                "parameters": [
                    _JOB_ID,
                    {
                        "name": "n",
                        "in": "path",
                        "required": True,
                        "description": "The output's index, from 0",
                        "schema": {"type": "integer", "minimum": 0, "maximum": 9999},
                    },
                ],
                "responses": _output_responses(),
            }
        },
        "/v1/jobs/{id}/result": {
            "get": {
                "operationId": "getJobResult",
                "summary": "The first stored output of a completed job (`outputs/0`)",
                "description": (
                    'Streamed by the gateway, or, with `[storage.s3] serve = "redirect"`, '
                    "a 302 to a short-lived presigned URL of the bucket. 503 also when the "
                    "result store cannot be reached."
                ),
                "security": _API_KEY,
                "parameters": [_JOB_ID],
                "responses": _output_responses(),
            }
        },
        "/v1/jobs/{id}/cancel": {
            "post": {
                "operationId": "cancelJob",
                "summary": "Cancel a queued or processing job; its hold is released",
                "description": "Canceling a canceled job returns it again (200).",
                "security": _API_KEY,
                "parameters": [_JOB_ID],
                "responses": {
                    "200": _job_response("The canceled job"),
                    **errors("401", "404", "409"),
                },
            }
        },
        "/v1/webhooks/{vendor}": {
            "post": {
                "operationId": "vendorWebhook",
                "summary": "Vendor callbacks, verified in each vendor's own scheme",
                "description": (
                    "replicate-shaped vendors sign with Standard Webhooks (`webhook-id`, "
                    "`webhook-timestamp`, `webhook-signature`: v1, HMAC-SHA256 of "
                    "`id.timestamp.body`); fal-shaped ones with ED25519 "
                    "(`X-Fal-Webhook-Request-Id`, `-User-Id`, `-Timestamp`, `-Signature`, "
                    "checked against the keys fal publishes). A bad signature or a stale "
                    "timestamp is 401, an unreadable payload 400; neither changes anything. "
                    "A webhook id seen before is acknowledged and ignored. The body may be up "
                    "to `gateway.max_webhook_body_bytes` (413 past it), apart from the API's "
                    "limit. Every rejection is counted in `jobline_webhook_rejections_total`."
                ),
                "security": _NO_AUTH,
                "parameters": [
                    {
                        "name": "vendor",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": vendors},
                    },
                    *(
                        {
                            "name": name,
                            "in": "header",
                            "required": False,
                            "schema": {"type": "string"},
                        }
                        for name in ("webhook-id", "webhook-timestamp", "webhook-signature")
                    ),
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": {}}},
                },
                "responses": {
                    "200": json_content(ref("WebhookAck"), "Received"),
                    **errors("400", "401", "404", "413"),
                },
            }
        },
        "/v1/admin/dead-letters": {
            "get": {
                "operationId": "listDeadLetters",
                "summary": "Jobs that failed for good, newest first",
                "security": _ADMIN,
                "parameters": [
                    {
                        "name": "limit",
                        "in": "query",
                        "required": False,
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": MAX_DEAD_LETTERS,
                            "default": DEFAULT_DEAD_LETTERS,
                        },
                    },
                    {
                        "name": "include_redriven",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "boolean", "default": False},
                    },
                    _query(
                        "cursor",
                        {"type": "string", "pattern": TIME_CURSOR_PATTERN},
                        "next_cursor of the previous page",
                    ),
                ],
                "responses": {
                    "200": json_content(ref("DeadLetterList"), "The dead letters"),
                    **errors("400", "401", admin=True),
                },
            }
        },
        "/v1/admin/dead-letters/{job_id}/redrive": {
            "post": {
                "operationId": "redriveDeadLetter",
                "summary": "Open a new job from a dead letter (charged again) and dispatch it",
                "description": "A second redrive returns the job the first one made.",
                "security": _ADMIN,
                "parameters": [_path_param("job_id", "The dead-lettered job's id")],
                "responses": {
                    "202": _job_response("The new job"),
                    **errors("401", "402", "404", admin=True),
                },
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics of every jobline actor",
                "security": _NO_AUTH,
                "responses": {
                    "200": {"description": "Prometheus text format", "content": text_plain},
                    **internal_error(),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "200 while the gateway process runs",
                "security": _NO_AUTH,
                "responses": {"200": json_content(ref("Status"), "Alive"), **internal_error()},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "200 when the gateway can serve (the ledger answers)",
                "security": _NO_AUTH,
                "responses": {
                    "200": json_content(ref("Status"), "Ready"),
                    "503": json_content(ref("Error"), "Not ready"),
                    **internal_error(),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": _NO_AUTH,
                "responses": {
                    "200": json_content({"type": "object"}, "OpenAPI 3.1"),
                    **internal_error(),
                },
            }
        },
    }


def _with_shared_refusals(paths: dict[str, Any]) -> dict[str, Any]:
    """Refusals every operation of a kind may give: 408 where a body is read (too slowly),
    429 where an API key is looked up (too many unknown keys from one address)."""
    for item in paths.values():
        for operation in item.values():
            responses = operation["responses"]
            if "requestBody" in operation:
                responses.setdefault("408", error_response("408"))
            if operation.get("security") == _API_KEY:
                responses.setdefault("429", error_response("429"))
            operation["responses"] = dict(sorted(responses.items()))
    return paths


def openapi_document(config: JoblineConfig) -> dict[str, Any]:
    """The OpenAPI 3.1 description of every route ``runtime.api.build_app`` serves."""
    admin_env = config.gateway.admin_token_env
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jobline",
            "version": "1",
            "description": (
                "Asynchronous AI-generation jobs: credits, vendor limits, retries, failover, "
                'refunds. Every error is `{"error": {"code": "...", "message": "..."}}`.'
            ),
        },
        "servers": [{"url": config.gateway.public_url}],
        "security": _API_KEY,
        "paths": _with_shared_refusals({**_paths(config), **key_paths(), **console_paths(config)}),
        "components": {
            "schemas": {**component_schemas(config), **console_schemas(config)},
            "securitySchemes": {
                "apiKey": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An account's API key (jl_…): `Authorization: Bearer <key>`",
                },
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": (
                        f"The admin token from the {admin_env} environment variable. When none "
                        "is configured, admin routes answer 503 (code admin_disabled)."
                    ),
                },
            },
        },
    }
