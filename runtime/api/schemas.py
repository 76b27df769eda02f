"""The OpenAPI document's components: the response and request schemas, and the error
responses every operation shares (``runtime.api.openapi`` assembles the document)."""

from __future__ import annotations

from typing import Any

from runtime.api.bodies import (
    CreateAccountBody,
    CreateKeyBody,
    GrantBody,
    LimitsBody,
)
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
        "Malformed request: bad JSON (also nested deeper than gateway.max_json_depth), a "
        "body its Content-Encoding does not decode, wrong types, unknown keys, bad query "
        "or header"
    ),
    "401": "Missing, unknown or revoked API key / admin token",
    "403": "An account's API key on an admin route: it needs the admin token",
    "402": "Not enough credits available",
    "404": "Not found (also another account's job)",
    "408": "The body did not arrive within gateway.body_timeout (the connection is closed)",
    "409": "The job is not in a state that allows this",
    "413": "Request body larger than gateway.max_body_bytes",
    "415": "Request body is not application/json",
    "422": "Unknown model, input not matching the model's schema, or Idempotency-Key reuse",
    "429": (
        "Too many jobs in flight for this account (too_many_jobs_in_flight), submits "
        "faster than its submit rate (too_many_submits), or too many unknown API keys from "
        "this address (too_many_failed_authentications); retry after Retry-After seconds"
    ),
    "500": "Unexpected error (logged; no details are returned). Retrying does not help.",
    "503": "The ledger is unreachable (retry after Retry-After seconds)",
}

_RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before retrying",
        "schema": {"type": "integer", "minimum": 0},
    }
}


def errors(*codes: str, admin: bool = False, **texts: str) -> dict[str, Any]:
    """The error responses ``codes`` (and always 500, 503); ``texts``: a route's own
    description of a code, by keyword ``e409=...``."""
    responses: dict[str, Any] = {}
    admin_codes = {"401", "403"} if admin else set()  # 403: an account's key
    for code in sorted({*codes, *admin_codes, "500", "503"}):
        text = texts.get(f"e{code}", _ERROR_TEXT[code])
        if admin and code == "503":
            text += ", or no admin token is configured (code admin_disabled)"
        extra = {"headers": _RETRY_AFTER} if code in ("429", "503") else {}
        responses[code] = json_content(ref("Error"), text, **extra)
    return responses


def internal_error() -> dict[str, Any]:
    return {"500": json_content(ref("Error"), _ERROR_TEXT["500"])}


def error_response(code: str) -> dict[str, Any]:
    """One shared error response (what ``errors`` gives for ``code``)."""
    extra = {"headers": _RETRY_AFTER} if code in ("429", "503") else {}
    return json_content(ref("Error"), _ERROR_TEXT[code], **extra)


def event_stream(description: str, *events: tuple[str, dict[str, Any], str]) -> dict[str, Any]:
    """A ``text/event-stream`` response: the stream as an array of its events, each one's
    SSE fields (``event``, ``id``, ``data``) with ``data`` a JSON text of the given schema
    (JSON Schema's ``contentMediaType`` / ``contentSchema``). ``events``: (event name,
    data schema, what it is). Comment lines (``: heartbeat``) carry nothing."""
    variants = [
        {
            "type": "object",
            "title": name,
            "description": what,
            "required": ["event", "id", "data"],
            "properties": {
                "event": {"const": name},
                "id": {
                    "type": "string",
                    "pattern": "^[A-Za-z0-9_-]{22}$",
                    "description": "Opaque; send it back as Last-Event-ID",
                },
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": schema,
                },
            },
        }
        for name, schema, what in events
    ]
    return {
        "description": description,
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "array",
                    "description": "The events of the stream, in order",
                    "items": variants[0] if len(variants) == 1 else {"oneOf": variants},
                }
            }
        },
    }


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
    key_props: dict[str, Any] = {
        "id": {"type": "string", "description": "Names the key in lists and revokes"},
        "prefix": {
            "type": "string",
            "description": "The key's first characters ('' for keys made before keys had one)",
        },
        "name": {"type": "string"},
        "created_at": {"type": "number"},
        "revoked_at": {**nullable("number"), "description": "When a revoke was asked"},
        "expires_at": {
            **nullable("number"),
            "description": "Refused from then on (a rotation's grace period ends then)",
        },
        "last_used_at": {
            **nullable("number"),
            "description": "Recorded in batches: up to gateway.key_use_flush_interval behind",
        },
        "active": {"type": "boolean"},
    }
    limit_props: dict[str, Any] = {
        "max_jobs_in_flight": nullable("integer"),
        "submits_per_second": {**nullable("number"), "description": "0: no limit"},
        "submit_burst": nullable("integer"),
        "slot_weight": {
            **nullable("number"),
            "description": "The account's share of scarce vendor slots (null: 1, an equal one)",
        },
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
                    "const": True,
                    "description": (
                        "The grant is applied. A replay (Idempotent-Replayed: true) repeats "
                        "the first answer, balance included"
                    ),
                },
            },
        },
        "ApiKey": {"type": "object", "required": sorted(key_props), "properties": key_props},
        "ApiKeyList": {
            "type": "object",
            "required": ["account_id", "keys", "next_cursor"],
            "properties": {
                "account_id": {"type": "string"},
                "keys": {"type": "array", "items": ref("ApiKey")},
                "next_cursor": {
                    **nullable("string"),
                    "description": "Pass as ?cursor= for the next page; null on the last",
                },
            },
        },
        "ApiKeyCreated": {
            "type": "object",
            "required": [*sorted(key_props), "api_key", "replaces"],
            "properties": {
                **key_props,
                "api_key": {
                    "type": "string",
                    "pattern": "^jl_",
                    "description": "Shown once; jobline stores only its SHA-256",
                },
                "replaces": {**nullable("string"), "description": "The key this one rotates"},
            },
        },
        "CreateKey": CreateKeyBody.model_json_schema(),
        "Limits": LimitsBody.model_json_schema(),
        "AccountThrottle": {
            "type": "object",
            "required": [
                "account_id",
                "input_rejections",
                "limit",
                "window",
                "throttled_until",
            ],
            "properties": {
                "account_id": {"type": "string"},
                "input_rejections": {
                    "type": "number",
                    "description": "The leaky bucket's level now (drains limit per window)",
                },
                "limit": {"type": "integer", "description": "[throttle] input_rejections"},
                "window": {"type": "number", "description": "Seconds ([throttle] window)"},
                "throttled_until": {
                    **nullable("number"),
                    "description": "Submits are refused until then (null: they are not)",
                },
            },
        },
        "AccountLimits": {
            "type": "object",
            "required": ["account_id", "limits", "effective"],
            "properties": {
                "account_id": {"type": "string"},
                "limits": {
                    "type": "object",
                    "description": "The account's own (null: the [gateway] default)",
                    "required": sorted(limit_props),
                    "properties": limit_props,
                },
                "effective": {
                    "type": "object",
                    "description": "The limits in force",
                    "required": sorted(limit_props),
                    "properties": {
                        "max_jobs_in_flight": {"type": "integer"},
                        "submits_per_second": {"type": "number"},
                        "submit_burst": {"type": "integer"},
                        "slot_weight": {"type": "number"},
                    },
                },
            },
        },
        "JobEvent": {
            "type": "object",
            "required": ["job_id", "event_id", "status", "at", "detail"],
            "properties": {
                "job_id": {"type": "string"},
                "event_id": {
                    "type": "string",
                    "description": "Also the event's id: opaque (send it as Last-Event-ID)",
                },
                "status": {"type": "string", "enum": statuses},
                "at": {"type": "number", "description": "Seconds since the epoch"},
                "detail": nullable("string"),
                "job": {**ref("Job"), "description": "Only on the terminal event"},
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
                "amount": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "A free model's job holds and settles 0",
                },
                "job_id": nullable("string"),
                "created_at": {"type": "number"},
            },
        },
        "Statement": {
            "type": "object",
            "required": ["account_id", "entries", "next_cursor"],
            "properties": {
                "account_id": {"type": "string"},
                "entries": {"type": "array", "items": ref("CreditEntry")},
                "next_cursor": {
                    **nullable("string"),
                    "description": (
                        "Pass as ?cursor= (same order) for the next page; null on the last"
                    ),
                },
            },
        },
        "DeadLetter": {
            "type": "object",
            "required": sorted(dead_letter_props),
            "properties": dead_letter_props,
        },
        "DeadLetterList": {
            "type": "object",
            "required": ["dead_letters", "next_cursor"],
            "properties": {
                "dead_letters": {"type": "array", "items": ref("DeadLetter")},
                "next_cursor": {
                    **nullable("string"),
                    "description": "Pass as ?cursor= for the next page; null on the last",
                },
            },
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
