"""The OpenAPI description of the routes added for the console (``runtime.api.console_routes``
and ``runtime.console``): the model catalogue, the account-wide event stream, the
operator's reads, the console's pages and ``/docs``. ``runtime.api.openapi`` merges these
into the one document served at ``/openapi.json``.
"""

from __future__ import annotations

from typing import Any

from runtime.api.schemas import event_stream
from runtime.config import JoblineConfig
from runtime.console import PAGES
from runtime.states import JobStatus

MAX_ACCOUNTS = 200  # GET /v1/admin/accounts?limit=
DEFAULT_ACCOUNTS = 50
# "<created_at>/<account id>", as next_cursor gives it.
ACCOUNT_CURSOR_PATTERN = r"^[0-9]{1,20}(\.[0-9]{1,20})?(e[+-]?[0-9]{1,3})?/[\x21-\x7e]{1,128}$"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: str, admin: bool = False) -> dict[str, Any]:
    text = {
        "400": "Malformed query (limit, cursor)",
        "401": "Missing or unknown API key / admin token",
        "403": "An account's API key on an admin route: it needs the admin token",
        "500": "Unexpected error (logged; no details are returned)",
        "503": "The ledger is unreachable (retry after Retry-After seconds)"
        + (", or no admin token is configured (code admin_disabled)" if admin else ""),
    }
    admin_codes = {"401", "403"} if admin else set()
    every = sorted({*codes, *admin_codes, "500", "503"})
    return {code: _json(_ref("Error"), text[code]) for code in every}


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


_API_KEY: list[dict[str, list[str]]] = [{"apiKey": []}]
_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
_NO_AUTH: list[dict[str, list[str]]] = []


def console_schemas(config: JoblineConfig) -> dict[str, Any]:
    nullable_int = {"type": ["integer", "null"]}
    vendor_props: dict[str, Any] = {
        "vendor": {"type": "string"},
        "api": {"type": "string", "enum": ["replicate", "fal"]},
        "limit": {"type": "integer", "description": "Configured concurrency (tasks in flight)"},
        "rate_limit": {
            "type": ["number", "null"],
            "description": "Configured requests per second; null: none",
        },
        "reachable": {"type": "boolean", "description": "false: the processor did not answer"},
        "error": {"type": ["string", "null"], "description": "Why it was not reachable"},
        "in_flight": {**nullable_int, "description": "Vendor slots taken now"},
        "queued": {**nullable_int, "description": "Jobs waiting for a slot, rate or backoff"},
        "held": {**nullable_int, "description": "Jobs the processor carries now"},
        "circuit": {"type": ["string", "null"], "enum": ["closed", "open", "half_open", None]},
        "retries": {**nullable_int, "description": "Since the processor started"},
        "failovers": nullable_int,
        "completed": nullable_int,
        "failed": nullable_int,
        "wasted": {
            **nullable_int,
            "description": "Billable vendor tasks whose output did not become a completed "
            "job's result, since the processor started (late orphans included)",
        },
        "late_orphans": {
            **nullable_int,
            "description": "Of them: submits in doubt whose task showed itself after the job "
            "moved on",
        },
    }
    account_props: dict[str, Any] = {
        "account_id": {"type": "string"},
        "name": {"type": "string"},
        "created_at": {"type": "number"},
        "balance": {"type": "integer", "description": "grants - captures"},
        "held": {"type": "integer"},
        "available": {"type": "integer", "description": "balance - held"},
        "in_flight": {"type": "integer", "description": "Jobs not yet ended"},
        "grants": {
            "type": "object",
            "required": ["count", "total", "last_at"],
            "properties": {
                "count": {"type": "integer"},
                "total": {"type": "integer"},
                "last_at": {"type": ["number", "null"]},
            },
        },
    }
    event_props: dict[str, Any] = {
        "job_id": {"type": "string"},
        "event_id": {
            "type": "string",
            "description": "Also the event's id: opaque (send it as Last-Event-ID)",
        },
        "status": {"type": "string", "enum": [s.value for s in JobStatus]},
        "at": {"type": "number", "description": "Seconds since the epoch"},
        "detail": {"type": ["string", "null"]},
        "job": {
            "oneOf": [_ref("Job"), {"type": "null"}],
            "description": "The job as it is now (it may be ahead of this event)",
        },
    }
    return {
        "Model": {
            "type": "object",
            "required": ["name", "price", "input_schema"],
            "properties": {
                "name": {"type": "string", "enum": sorted(config.models)},
                "price": {"type": "integer", "minimum": 0, "description": "Credits per job"},
                "input_schema": {
                    "type": "object",
                    "description": "The JSON Schema a job's `input` must match",
                },
            },
        },
        "ModelList": {
            "type": "object",
            "required": ["models"],
            "properties": {"models": {"type": "array", "items": _ref("Model")}},
        },
        "AccountEvent": {
            "type": "object",
            "required": sorted(event_props),
            "properties": event_props,
        },
        "VendorState": {
            "type": "object",
            "required": sorted(vendor_props),
            "properties": vendor_props,
        },
        "VendorList": {
            "type": "object",
            "required": ["vendors"],
            "properties": {"vendors": {"type": "array", "items": _ref("VendorState")}},
        },
        "AccountSummary": {
            "type": "object",
            "required": sorted(account_props),
            "properties": account_props,
        },
        "AccountPage": {
            "type": "object",
            "required": ["accounts", "next_cursor"],
            "properties": {
                "accounts": {"type": "array", "items": _ref("AccountSummary")},
                "next_cursor": {
                    "type": ["string", "null"],
                    "description": "Pass as ?cursor= for the next page; null on the last",
                },
            },
        },
    }


def _limit(maximum: int, default: int) -> dict[str, Any]:
    return {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {"type": "integer", "minimum": 1, "maximum": maximum, "default": default},
    }


_EVENTS_TEXT = (
    "The status changes of every job of the account, as server-sent events, for as long "
    "as the client stays. The first event is `event: ready` with `id:` the position the "
    'stream starts after and `data: {"event_id": …}`. Then each change is `event: status`, '
    "`id:` its event id and `data:` an AccountEvent (JSON). Event ids are opaque: they "
    "do not count other accounts' status changes (the `ready` id does name the ledger's "
    "head). Comment lines are heartbeats. Send "
    "`Last-Event-ID` (browsers do when they reconnect) to resume after an event (`0`: "
    "from the start of the history); without it, or with one that is not an event id "
    "sent to this account, the stream starts now. An account holds at most "
    "`gateway.event_streams_per_account` event streams (this one and per-job ones "
    "together) open on one gateway: 429 `too_many_streams` past that."
)


def console_paths(config: JoblineConfig) -> dict[str, Any]:
    pages: dict[str, Any] = {
        f"/console/{page}": {
            "get": {
                "operationId": f"console{page.title()}",
                "summary": f"The console's {page} page (HTML)",
                "tags": ["console"],
                "security": _NO_AUTH,
                "responses": {"200": _html("The page"), **_errors()},
            }
        }
        for page in PAGES
    }
    return {
        "/v1/models": {
            "get": {
                "operationId": "listModels",
                "summary": "The models a job can name, their prices and input schemas",
                "security": _API_KEY,
                "responses": {
                    "200": _json(_ref("ModelList"), "Every model, by name"),
                    **_errors("401"),
                },
            }
        },
        "/v1/events": {
            "get": {
                "operationId": "accountEvents",
                "summary": "Server-sent events: every status change of the account's jobs",
                "description": _EVENTS_TEXT,
                "security": _API_KEY,
                "parameters": [
                    {
                        "name": "Last-Event-ID",
                        "in": "header",
                        "required": False,
                        "description": "Resume after this event id",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": event_stream(
                        "The account's status changes as server-sent events",
                        (
                            "ready",
                            {
                                "type": "object",
                                "required": ["event_id"],
                                "properties": {"event_id": {"type": "string"}},
                            },
                            "First: where the stream starts (its id, and data.event_id)",
                        ),
                        ("status", _ref("AccountEvent"), "A status change of one of its jobs"),
                    ),
                    **_errors("401"),
                },
            }
        },
        "/v1/admin/vendors": {
            "get": {
                "operationId": "listVendors",
                "summary": "Each vendor's processor now: slots in flight, limit, queue, circuit",
                "security": _ADMIN,
                "responses": {
                    "200": _json(_ref("VendorList"), "Every configured vendor"),
                    **_errors("401", admin=True),
                },
            }
        },
        "/v1/admin/accounts": {
            "get": {
                "operationId": "listAccounts",
                "summary": "Accounts newest first, with their credits and grants",
                "security": _ADMIN,
                "parameters": [
                    _limit(MAX_ACCOUNTS, DEFAULT_ACCOUNTS),
                    {
                        "name": "cursor",
                        "in": "query",
                        "required": False,
                        "description": "next_cursor of the previous page",
                        "schema": {"type": "string", "pattern": ACCOUNT_CURSOR_PATTERN},
                    },
                ],
                "responses": {
                    "200": _json(_ref("AccountPage"), "One page of accounts"),
                    **_errors("400", "401", admin=True),
                },
            }
        },
        "/console": {
            "get": {
                "operationId": "console",
                "summary": "The web console: redirects to its studio page",
                "tags": ["console"],
                "security": _NO_AUTH,
                "responses": {
                    "302": {"description": "To /console/studio"},
                    **_errors(),
                },
            }
        },
        **pages,
        "/console/assets/{name}": {
            "get": {
                "operationId": "consoleAsset",
                "summary": "A static file of the console (CSS, JavaScript), cached for a year",
                "tags": ["console"],
                "security": _NO_AUTH,
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "The file",
                        "content": {
                            "text/css": {"schema": {"type": "string"}},
                            "text/javascript": {"schema": {"type": "string"}},
                        },
                    },
                    "404": _json(_ref("Error"), "No such file"),
                    **_errors(),
                },
            }
        },
        "/docs": {
            "get": {
                "operationId": "docs",
                "summary": "This API reference, rendered from /openapi.json (HTML)",
                "tags": ["console"],
                "security": _NO_AUTH,
                "responses": {"200": _html("The page"), **_errors()},
            }
        },
    }
