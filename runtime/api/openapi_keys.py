"""The OpenAPI description of an account's API keys (``runtime.api.keys``) and its limits
(``runtime.api.accounts``); ``runtime.api.openapi`` merges it into ``/openapi.json``."""

from __future__ import annotations

from typing import Any

from runtime.api.bodies import CURSOR_PATTERN, DEFAULT_KEYS_PAGE, MAX_API_KEYS, MAX_KEYS_PAGE
from runtime.api.schemas import errors, json_content, ref

_API_KEY: list[dict[str, list[str]]] = [{"apiKey": []}]
_ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]

_ACCOUNT = {
    "name": "id",
    "in": "path",
    "required": True,
    "description": "The account id (acct_…)",
    "schema": {"type": "string", "minLength": 1},
}
_PAGE = [
    {
        "name": "limit",
        "in": "query",
        "required": False,
        "schema": {
            "type": "integer",
            "minimum": 1,
            "maximum": MAX_KEYS_PAGE,
            "default": DEFAULT_KEYS_PAGE,
        },
    },
    {
        "name": "cursor",
        "in": "query",
        "required": False,
        "description": "next_cursor of the previous page",
        "schema": {"type": "string", "pattern": CURSOR_PATTERN},
    },
]
_CREATE_TEXT = (
    "The new key is in the answer, once; jobline keeps only its SHA-256. With `replaces`, "
    "this is a rotation: that key is revoked in the same step and keeps working for "
    f"`grace_period` seconds. An account may have {MAX_API_KEYS} keys that are not "
    "revoked (409 past that). A retried create makes a second key: revoke the one you "
    "did not keep."
)
_REVOKE_TEXT = (
    "The key is refused from now on: at once by the gateway that answers, by every other "
    "within about gateway.key_revocation_poll seconds. Revoking a revoked key changes "
    "nothing (a rotation's grace period is cut short to now)."
)


def _key_id(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": "The key's id (key_…)",
        "schema": {"type": "string", "minLength": 1},
    }


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _list(operation_id: str, summary: str, admin: bool) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": "Newest first; never a key or its hash, only its prefix and last use.",
        "security": _ADMIN if admin else _API_KEY,
        "parameters": [_ACCOUNT, *_PAGE] if admin else _PAGE,
        "responses": {
            "200": json_content(ref("ApiKeyList"), "One page of keys"),
            **errors("400", "401", *(["404"] if admin else []), admin=admin),
        },
    }


def _create(operation_id: str, summary: str, admin: bool) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": _CREATE_TEXT,
        "security": _ADMIN if admin else _API_KEY,
        **({"parameters": [_ACCOUNT]} if admin else {}),
        "requestBody": _body(ref("CreateKey")),
        "responses": {
            "201": json_content(ref("ApiKeyCreated"), "The new key, shown this once"),
            **errors(
                "400",
                "401",
                "404",
                "409",
                "413",
                "415",
                admin=admin,
                e404="No such account, or no such key to replace (api_key_not_found)",
                e409=f"The account has {MAX_API_KEYS} keys in use (too_many_api_keys)",
            ),
        },
    }


def _revoke(operation_id: str, summary: str, admin: bool) -> dict[str, Any]:
    return {
        "operationId": operation_id,
        "summary": summary,
        "description": _REVOKE_TEXT,
        "security": _ADMIN if admin else _API_KEY,
        "parameters": [_ACCOUNT, _key_id("key_id")] if admin else [_key_id("id")],
        "responses": {
            "200": json_content(ref("ApiKey"), "The revoked key"),
            **errors("401", "404", admin=admin, e404="No such key on this account"),
        },
    }


def key_paths() -> dict[str, Any]:
    return {
        "/v1/keys": {
            "get": _list("listOwnKeys", "This account's API keys", admin=False),
            "post": _create(
                "createOwnKey", "A new API key for this account (or a rotation)", False
            ),
        },
        "/v1/keys/{id}/revoke": {
            "post": _revoke("revokeOwnKey", "Revoke one of this account's keys", admin=False),
        },
        "/v1/accounts/{id}/keys": {
            "get": _list("listAccountKeys", "An account's API keys", admin=True),
            "post": _create("createAccountKey", "A new API key for an account", admin=True),
        },
        "/v1/accounts/{id}/keys/{key_id}/revoke": {
            "post": _revoke("revokeAccountKey", "Revoke one of an account's keys", admin=True),
        },
        "/v1/accounts/{id}/limits": {
            "get": {
                "operationId": "getAccountLimits",
                "summary": "An account's own limits, and the limits in force",
                "security": _ADMIN,
                "parameters": [_ACCOUNT],
                "responses": {
                    "200": json_content(ref("AccountLimits"), "The limits"),
                    **errors("401", "404", admin=True),
                },
            },
            "put": {
                "operationId": "setAccountLimits",
                "summary": "Set an account's own limits (null: the [gateway] default)",
                "description": (
                    "The cap on jobs in flight and the submit rate (a token bucket: "
                    "submits_per_second over time, submit_burst at once), enforced by the "
                    "ledger for every gateway replica: a submit past them is 429 with "
                    "Retry-After. The body replaces every limit the account had."
                ),
                "security": _ADMIN,
                "parameters": [_ACCOUNT],
                "requestBody": _body(ref("Limits")),
                "responses": {
                    "200": json_content(ref("AccountLimits"), "The limits now"),
                    **errors("400", "401", "404", "413", "415", admin=True),
                },
            },
        },
    }
