"""How the HTTP API refuses: every exception becomes ``{"error": {"code", "message"}}``.

``ERRORS`` maps jobline's exceptions to a status and an error code (the first matching
class decides; subclasses come before their bases); ``HttpRefusal`` is a refusal the
HTTP layer itself decides. ``runtime.api.app``'s middleware applies them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from runtime.errors import (
    AccountNotFound,
    DeadLetterNotFound,
    IdempotencyConflict,
    IllegalTransition,
    InputInvalid,
    InsufficientCredits,
    JoblineError,
    JobNotFound,
    LedgerUnavailable,
    RequestError,
    ResultNotFound,
    ResultStoreUnavailable,
    TooManyJobsInFlight,
    Unauthorized,
    UnknownModel,
    WebhookKeysUnavailable,
    WebhookRejected,
    WebhookSignatureInvalid,
    WebhookTimestampStale,
)

RETRY_AFTER_IN_FLIGHT = 5  # seconds, for 429 TooManyJobsInFlight
RETRY_AFTER_UNAVAILABLE = 1  # seconds, for 503


class HttpRefusal(RequestError):
    """A refusal the HTTP layer itself decides, with its status and error code."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.args = (status, code, message, dict(headers or {}))
        self.status = status
        self.code = code
        self.headers = dict(headers or {})


# The first matching class decides; subclasses come before their bases.
ERRORS: tuple[tuple[type[JoblineError], int, str], ...] = (
    (Unauthorized, 401, "unauthorized"),
    (UnknownModel, 422, "unknown_model"),
    (InputInvalid, 422, "input_invalid"),
    (JobNotFound, 404, "job_not_found"),
    (AccountNotFound, 404, "account_not_found"),
    (DeadLetterNotFound, 404, "dead_letter_not_found"),
    (ResultNotFound, 404, "result_not_found"),
    (ResultStoreUnavailable, 503, "result_store_unavailable"),
    (InsufficientCredits, 402, "insufficient_credits"),
    (IdempotencyConflict, 422, "idempotency_conflict"),
    (TooManyJobsInFlight, 429, "too_many_jobs_in_flight"),
    (LedgerUnavailable, 503, "ledger_unavailable"),
    (WebhookSignatureInvalid, 401, "webhook_signature_invalid"),
    (WebhookTimestampStale, 401, "webhook_timestamp_stale"),
    (WebhookKeysUnavailable, 503, "webhook_keys_unavailable"),  # the vendor delivers again
    (WebhookRejected, 400, "webhook_malformed"),
    (IllegalTransition, 409, "illegal_transition"),
)
_RETRY_AFTER = {
    TooManyJobsInFlight: RETRY_AFTER_IN_FLIGHT,
    LedgerUnavailable: RETRY_AFTER_UNAVAILABLE,
    ResultStoreUnavailable: RETRY_AFTER_UNAVAILABLE,
}
HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def refusal_for(exc: JoblineError) -> HttpRefusal | None:
    """The HTTP answer to ``exc``, or None for an error no client should see (a 500)."""
    if isinstance(exc, HttpRefusal):
        return exc
    for kind, status, code in ERRORS:
        if isinstance(exc, kind):
            headers: dict[str, str] = {}
            retry = _RETRY_AFTER.get(type(exc))
            if retry is not None:
                headers["Retry-After"] = str(retry)
            if isinstance(exc, Unauthorized):
                headers["WWW-Authenticate"] = 'Bearer realm="jobline"'
            return HttpRefusal(status, code, str(exc), headers)
    return None


def bad_request(message: str) -> HttpRefusal:
    return HttpRefusal(400, "bad_request", message)


def ledger_failure(exc: Exception) -> LedgerUnavailable:
    return LedgerUnavailable(f"{type(exc).__name__}: {exc}")


async def read_body(request: web.Request) -> bytes:
    """The request body, decoded: 413 past client_max_size, 400 if it cannot be decoded.

    An undecodable body (say, not the Content-Encoding it claims) leaves the rest of it
    in the connection, so the 400 closes the connection.
    """
    try:
        return await request.read()
    except web.RequestPayloadError as exc:
        encoding = request.headers.get("Content-Encoding", "identity")
        message = f"the body could not be read (Content-Encoding {encoding})"
        raise HttpRefusal(400, "bad_request", message, {"Connection": "close"}) from exc


def reject_constant(name: str) -> Any:
    """For ``json.loads(parse_constant=...)``: NaN and Infinity are not JSON."""
    raise ValueError(f"{name} is not JSON")


def describe_validation(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def check_json(raw: bytes) -> Any:
    """The body's JSON value; 400 for malformed JSON, NaN/Infinity or lone surrogates."""
    try:
        data = json.loads(raw, parse_constant=reject_constant)
        json.dumps(data, ensure_ascii=False).encode("utf-8")  # lone surrogates
    except (ValueError, RecursionError, UnicodeError) as exc:
        raise bad_request(f"malformed JSON: {exc}") from None
    return data
