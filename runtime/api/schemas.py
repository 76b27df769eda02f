"""The OpenAPI document's components: the response and request schemas, and the error
responses every operation shares (``runtime.api.openapi`` assembles the document)."""

from __future__ import annotations

from typing import Any

from runtime.api.bodies import CreateAccountBody, GrantBody
from runtime.config import JoblineConfig
from runtime.models import EntryKind
from runtime.states import JobStatus


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def json_content(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
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


def errors(*codes: str, admin: bool = False) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for code in sorted({*codes, "500", "503"}):
        text = _ERROR_TEXT[code]
        if admin and code == "503":
            text += ", or no admin token is configured (code admin_disabled)"
        extra = {"headers": _RETRY_AFTER} if code in ("429", "503") else {}
        responses[code] = json_content(ref("Error"), text, **extra)
    return responses


def internal_error() -> dict[str, Any]:
    return {"500": json_content(ref("Error"), _ERROR_TEXT["500"])}


def nullable(kind: str) -> dict[str, Any]:
    return {"type": [kind, "null"]}


def component_schemas(config: JoblineConfig) -> dict[str, Any]:
    statuses = [s.value for s in JobStatus]
    job_props: dict[str, Any] = {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": statuses},
        "model": {"type": "string", "enum": sorted(config.models)},
        "input": {"type": "object"},
        "vendor": {"type": "string"},
        "vendor_task_id": nullable("string"),
        "attempts": {"type": "integer", "minimum": 0},
        "cost": {"type": "integer", "minimum": 0},
        "error": nullable("string"),
        "result_url": {
            **nullable("string"),
            "description": "Set once the job is completed: its first output",
        },
        "outputs": {
            "type": "array",
            "description": "Every output of a completed job, in the vendor's order (empty before)",
            "items": ref("Output"),
        },
        "trace_id": {"type": "string"},
        "redriven_from": nullable("string"),
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
        "redriven_to": nullable("string"),
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
        "Output": {
            "type": "object",
            "required": ["index", "content_type", "size", "name", "url"],
            "properties": {
                "index": {"type": "integer", "minimum": 0},
                "content_type": {
                    "type": "string",
                    "description": "As the vendor declared it, checked against the bytes",
                    "examples": ["image/png", "video/mp4", "application/json"],
                },
                "size": {**nullable("integer"), "description": "Bytes"},
                "name": {**nullable("string"), "description": "The vendor's file name"},
                "url": {
                    "type": "string",
                    "description": "Where to fetch it: /v1/jobs/{id}/outputs/{index}",
                },
            },
        },
        "JobPage": {
            "type": "object",
            "required": ["jobs", "next_cursor"],
            "properties": {
                "jobs": {"type": "array", "items": ref("Job")},
                "next_cursor": {
                    **nullable("string"),
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
                "job_id": nullable("string"),
                "created_at": {"type": "number"},
            },
        },
        "Statement": {
            "type": "object",
            "required": ["account_id", "entries"],
            "properties": {
                "account_id": {"type": "string"},
                "entries": {"type": "array", "items": ref("CreditEntry")},
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
            "properties": {"dead_letters": {"type": "array", "items": ref("DeadLetter")}},
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
