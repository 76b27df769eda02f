"""The HTTP API's contract: request bodies, limits, and the OpenAPI 3.1 document.

``runtime.api`` validates requests with the models and constants defined here, and
``openapi_document`` describes the same models, so the document served at
``/openapi.json`` cannot drift from what the gateway accepts. A test compares the
document's operations with the application's router: a route added without a
description here fails it.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from runtime.config import JoblineConfig
from runtime.models import EntryKind
from runtime.states import JobStatus

MAX_CREDITS = 10**12  # per account and per grant; keeps every sum far inside SQLite's int64
MAX_PAGE = 200  # GET /v1/jobs?limit=
DEFAULT_PAGE = 50
MAX_DEAD_LETTERS = 1000
DEFAULT_DEAD_LETTERS = 100
# Printable ASCII, 1..255 characters, no leading or trailing space (HTTP strips those).
IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?$"
CURSOR_PATTERN = r"^[0-9]{1,18}$"
REPLAYED_HEADER = "Idempotent-Replayed"


def _integral(value: Any) -> Any:
    """JSON Schema counts 5.0 as an integer; so do we (strict mode refuses "5" and true)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_integral)]


class _Body(BaseModel):
    # Strict: "5" is not an integer (JsonInt allows 5.0); unknown keys are refused.
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class CreateAccountBody(_Body):
    name: str = Field(min_length=1, max_length=200, description="A label for the account")
    credits: JsonInt = Field(default=0, ge=0, le=MAX_CREDITS, description="Starting credits")


class GrantBody(_Body):
    amount: JsonInt = Field(ge=1, le=MAX_CREDITS, description="Credits to add")
    grant_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=255,
        description=(
            "Makes the grant idempotent: a repeated grant_id for the account grants "
            "nothing more. Falls back to the Idempotency-Key header; without either, "
            "every request grants."
        ),
    )


class SubmitJobBody(_Body):
    model: str = Field(min_length=1, max_length=200)
    input: dict[str, Any]


# --- the document ---------------------------------------------------------------------


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}},
        **extra,
    }


_ERROR_TEXT = {
    "400": (
        "Malformed request: bad JSON, a body its Content-Encoding does not decode, wrong "
        "types, unknown keys, bad query or header"
    ),
    "401": "Missing or unknown API key / admin token",
    "402": "Not enough credits available",
    "404": "Not found (also another account's job)",
    "409": "The job is not in a state that allows this",
    "413": "Request body larger than gateway.max_body_bytes",
    "415": "Request body is not application/json",
    "422": "Unknown model, input not matching the model's schema, or Idempotency-Key reuse",
    "429": "Too many jobs in flight for this account; retry after Retry-After seconds",
    "500": "Unexpected error (logged; no details are returned)",
    "503": "The ledger is unreachable (retry after Retry-After seconds)",
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def _errors(*codes: str, admin: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for code in sorted({*codes, "500", "503"}):
        text = _ERROR_TEXT[code]
        if admin and code == "503":
            text += ", or no admin token is configured (code admin_disabled)"
        extra = {"headers": _RETRY_AFTER} if code in ("429", "503") else {}
        responses[code] = _json(_ref("Error"), text, **extra)
    return responses


def _internal_error() -> dict[str, Any]:
    return {"500": _json(_ref("Error"), _ERROR_TEXT["500"])}


def _nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


def _schemas(config: JoblineConfig) -> dict[str, Any]:
    statuses = [s.value for s in JobStatus]
    job_props: dict[str, Any] = {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": statuses},
        "model": {"type": "string", "enum": sorted(config.models)},
        "input": {"type": "object"},
        "vendor": {"type": "string"},
        "vendor_task_id": _nullable("string"),
        "attempts": {"type": "integer", "minimum": 0},
        "cost": {"type": "integer", "minimum": 0},
        "error": _nullable("string"),
        "result_url": {**_nullable("string"), "description": "Set once the job is completed"},
        "trace_id": {"type": "string"},
        "redriven_from": _nullable("string"),
        "created_at": {"type": "number", "description": "Seconds since the epoch"},
        "updated_at": {"type": "number"},
    }
    balance_props = {
        "account_id": {"type": "string"},
        "balance": {"type": "integer", "description": "grants - captures"},
        "held": {"type": "integer", "description": "open holds of jobs in flight"},
        "available": {"type": "integer", "description": "balance - held"},
    }
    dead_letter_props = {
        "job_id": {"type": "string"},
        "account_id": {"type": "string"},
        "model": {"type": "string"},
        "vendor": {"type": "string"},
        "error": {"type": "string"},
        "attempts": {"type": "integer"},
        "trace_id": {"type": "string"},
        "created_at": {"type": "number"},
        "redriven_to": _nullable("string"),
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {
                "error": {
                    "type": "object",
                    "required": ["code", "message"],
                    "properties": {
                        "code": {"type": "string", "examples": ["insufficient_credits"]},
                        "message": {"type": "string"},
                    },
                }
            },
        },
        "Job": {"type": "object", "required": sorted(job_props), "properties": job_props},
        "JobPage": {
            "type": "object",
            "required": ["jobs", "next_cursor"],
            "properties": {
                "jobs": {"type": "array", "items": _ref("Job")},
                "next_cursor": {
                    **_nullable("string"),
                    "description": "Pass as ?cursor= for the next page; null on the last",
                },
            },
        },
        "Balance": {
            "type": "object",
            "required": sorted(balance_props),
            "properties": balance_props,
        },
        "GrantResult": {
            "type": "object",
            "required": [*sorted(balance_props), "granted"],
            "properties": {
                **balance_props,
                "granted": {
                    "type": "boolean",
                    "description": "false when this grant id was granted before",
                },
            },
        },
        "AccountCreated": {
            "type": "object",
            "required": ["account_id", "name", "api_key", "credits"],
            "properties": {
                "account_id": {"type": "string", "pattern": "^acct_"},
                "name": {"type": "string"},
                "api_key": {
                    "type": "string",
                    "pattern": "^jl_",
                    "description": "Shown once; jobline stores only its SHA-256",
                },
                "credits": {"type": "integer"},
            },
        },
        "CreditEntry": {
            "type": "object",
            "required": ["id", "kind", "amount", "job_id", "created_at"],
            "properties": {
                "id": {"type": "integer"},
                "kind": {"type": "string", "enum": [k.value for k in EntryKind]},
                "amount": {"type": "integer", "minimum": 1},
                "job_id": _nullable("string"),
                "created_at": {"type": "number"},
            },
        },
        "Statement": {
            "type": "object",
            "required": ["account_id", "entries"],
            "properties": {
                "account_id": {"type": "string"},
                "entries": {"type": "array", "items": _ref("CreditEntry")},
            },
        },
        "DeadLetter": {
            "type": "object",
            "required": sorted(dead_letter_props),
            "properties": dead_letter_props,
        },
        "DeadLetterList": {
            "type": "object",
            "required": ["dead_letters"],
            "properties": {"dead_letters": {"type": "array", "items": _ref("DeadLetter")}},
        },
        "WebhookAck": {
            "type": "object",
            "required": ["status"],
            "properties": {
                "status": {
                    "type": "string",
                    "enum": ["accepted", "duplicate"],
                    "description": "duplicate: this webhook id was received before and is ignored",
                }
            },
        },
        "Status": {
            "type": "object",
            "required": ["status"],
            "properties": {"status": {"type": "string"}},
        },
        "CreateAccount": CreateAccountBody.model_json_schema(),
        "Grant": GrantBody.model_json_schema(),
        "SubmitJob": {
            "description": "One variant per model; `input` must match that model's schema.",
            "oneOf": [
                {
                    "type": "object",
                    "title": name,
                    "required": ["model", "input"],
                    "additionalProperties": False,
                    "properties": {"model": {"const": name}, "input": model.input_schema},
                }
                for name, model in sorted(config.models.items())
            ],
        },
    }


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


def _job_response(description: str) -> dict[str, Any]:
    return _json(
        _ref("Job"),
        description,
        headers={
            "X-Jobline-Trace-Id": {
                "description": "The job's trace id",
                "schema": {"type": "string"},
            }
        },
    )


def _paths(config: JoblineConfig) -> dict[str, Any]:
    vendors = sorted(config.vendors)
    text_plain = {"text/plain": {"schema": {"type": "string"}}}
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
                "requestBody": _body(_ref("CreateAccount")),
                "responses": {
                    "201": _json(_ref("AccountCreated"), "The account and its API key"),
                    **_errors("400", "401", "413", "415", admin=True),
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
                "requestBody": _body(_ref("Grant")),
                "responses": {
                    "200": _json(_ref("GrantResult"), "The balance after the grant"),
                    **_errors("400", "401", "404", "413", "415", admin=True),
                },
            }
        },
        "/v1/credits": {
            "get": {
                "operationId": "getCredits",
                "summary": "The account's balance, held and available credits",
                "security": _API_KEY,
                "responses": {
                    "200": _json(_ref("Balance"), "The balance"),
                    **_errors("401", "404"),
                },
            }
        },
        "/v1/credits/entries": {
            "get": {
                "operationId": "getCreditEntries",
                "summary": "The account's statement: grants, holds, captures, releases",
                "security": _API_KEY,
                "responses": {
                    "200": _json(_ref("Statement"), "Every credit entry, oldest first"),
                    **_errors("401"),
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
                "requestBody": _body(_ref("SubmitJob")),
                "responses": {
                    "202": submitted,
                    **_errors("400", "401", "402", "413", "415", "422", "429"),
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
                    "200": _json(_ref("JobPage"), "One page of jobs"),
                    **_errors("400", "401"),
                },
            },
        },
        "/v1/jobs/{id}": {
            "get": {
                "operationId": "getJob",
                "summary": "The job",
                "security": _API_KEY,
                "parameters": [_JOB_ID],
                "responses": {"200": _job_response("The job"), **_errors("401", "404")},
            }
        },
        "/v1/jobs/{id}/events": {
            "get": {
                "operationId": "jobEvents",
                "summary": "Server-sent events: every status change until the job ends",
                "description": (
                    "Each status change is `event: status`, `id: <seq>` and `data:` a JSON "
                    "object `{job_id, seq, status, at, detail}`; the terminal event's data also "
                    "holds the whole job under `job`, and the stream then ends. Comment lines "
                    "are heartbeats. Send `Last-Event-ID` to resume after an event."
                ),
                "security": _API_KEY,
                "parameters": [
                    _JOB_ID,
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "Resume after this event id (ignored unless an integer)",
                        "schema": {"type": "string"},
                    },
                ],
                "responses": {
                    "200": {
                        "description": "An event stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors("401", "404"),
                },
            }
        },
        "/v1/jobs/{id}/result": {
            "get": {
                "operationId": "getJobResult",
                "summary": "The stored output bytes of a completed job",
                "description": (
                    'Streamed by the gateway, or, with `[storage.s3] serve = "redirect"`, '
                    "a 302 to a short-lived presigned URL of the bucket. 503 also when the "
                    "result store cannot be reached."
                ),
                "security": _API_KEY,
                "parameters": [_JOB_ID],
                "responses": {
                    "200": {
                        "description": "The output",
                        "content": {
                            "image/png": {
                                "schema": {"type": "string", "contentMediaType": "image/png"}
                            }
                        },
                    },
                    "302": {
                        "description": "The output at a presigned URL, valid presign_expiry s",
                        "headers": {
                            "Location": {"schema": {"type": "string", "format": "uri"}},
                        },
                    },
                    **_errors("401", "404", "409"),
                },
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
                    **_errors("401", "404", "409"),
                },
            }
        },
        "/v1/webhooks/{vendor}": {
            "post": {
                "operationId": "vendorWebhook",
                "summary": "Vendor callbacks, verified with Standard Webhooks signatures",
                "description": (
                    "Signed with `webhook-id`, `webhook-timestamp` and `webhook-signature` "
                    "(v1, HMAC-SHA256 of `id.timestamp.body`). A bad signature or a stale "
                    "timestamp is 401, an unreadable payload 400; neither changes anything. "
                    "A webhook id seen before is acknowledged and ignored."
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
                    "200": _json(_ref("WebhookAck"), "Received"),
                    **_errors("400", "401", "404", "413"),
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
                ],
                "responses": {
                    "200": _json(_ref("DeadLetterList"), "The dead letters"),
                    **_errors("400", "401", admin=True),
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
                    **_errors("401", "402", "404", admin=True),
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
                    **_internal_error(),
                },
            }
        },
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "200 while the gateway process runs",
                "security": _NO_AUTH,
                "responses": {"200": _json(_ref("Status"), "Alive"), **_internal_error()},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readyz",
                "summary": "200 when the gateway can serve (the ledger answers)",
                "security": _NO_AUTH,
                "responses": {
                    "200": _json(_ref("Status"), "Ready"),
                    "503": _json(_ref("Error"), "Not ready"),
                    **_internal_error(),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document",
                "security": _NO_AUTH,
                "responses": {
                    "200": _json({"type": "object"}, "OpenAPI 3.1"),
                    **_internal_error(),
                },
            }
        },
    }


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
        "paths": _paths(config),
        "components": {
            "schemas": _schemas(config),
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
