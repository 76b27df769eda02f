"""How the HTTP API refuses: every exception becomes ``{"error": {"code", "message"}}``.

``ERRORS`` maps jobline's exceptions to a status and an error code (the first matching
class decides; subclasses come before their bases); ``HttpRefusal`` is a refusal the
HTTP layer itself decides. ``runtime.api.app``'s middleware applies them. An exception
not in the table is a 500 whose details only the gateway's log has: among them
``LedgerFault`` and ``ActorCallFailed``, a bug somewhere that a retry cannot outlast
(never a 503 with ``Retry-After``). No 5xx message carries a traceback
(``public_message``).
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from runtime import strict_json
from runtime.errors import (
    AccountNotFound,
    AccountThrottled,
    ApiKeyNotFound,
    ApiKeyRevoked,
    DeadLetterNotFound,
    Forbidden,
    GrantConflict,
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
    SubmitRateLimited,
    TooManyApiKeys,
    TooManyJobsInFlight,
    Unauthorized,
    UnknownModel,
    WebhookKeysUnavailable,
    WebhookRejected,
    WebhookSignatureInvalid,
    WebhookTimestampStale,
)
from runtime.telemetry import get_logger

log = get_logger("gateway")

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
    (Forbidden, 403, "forbidden"),
    (UnknownModel, 422, "unknown_model"),
    (InputInvalid, 422, "input_invalid"),
    (JobNotFound, 404, "job_not_found"),
    (AccountNotFound, 404, "account_not_found"),
    (DeadLetterNotFound, 404, "dead_letter_not_found"),
    (ResultNotFound, 404, "result_not_found"),
    (ResultStoreUnavailable, 503, "result_store_unavailable"),
    (InsufficientCredits, 402, "insufficient_credits"),
    (IdempotencyConflict, 422, "idempotency_conflict"),
    (GrantConflict, 409, "grant_conflict"),
    (TooManyJobsInFlight, 429, "too_many_jobs_in_flight"),
    (SubmitRateLimited, 429, "too_many_submits"),
    (AccountThrottled, 429, "account_throttled"),
    (ApiKeyNotFound, 404, "api_key_not_found"),
    (ApiKeyRevoked, 409, "api_key_revoked"),
    (TooManyApiKeys, 409, "too_many_api_keys"),
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
    408: "request_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
}
MAX_MESSAGE = 500  # characters of a 5xx message a client sees (one line)


def json_response(
    data: Any,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    """``web.json_response`` that can never write NaN or Infinity (not JSON: a browser's
    ``JSON.parse`` fails on the whole answer): such a value raises ``ValueError``, a 500."""
    return web.json_response(data, status=status, headers=headers, dumps=strict_json.dumps)


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    if status >= 500:
        message = public_message(message)
    return json_response(
        {"error": {"code": code, "message": message}}, status=status, headers=headers
    )


def public_message(message: str) -> str:
    """A server error's message as a client may see it: its first line, cut short. A
    traceback (a remote exception's text, say) never leaves the gateway in an answer."""
    first = message.strip().splitlines()[0] if message.strip() else "error"
    if "Traceback" in first or 'File "' in first:
        return "internal error; the gateway logged it"
    return first if len(first) <= MAX_MESSAGE else first[:MAX_MESSAGE] + "…"


MAX_RETRY_AFTER = 86_400  # seconds: a client is never told to wait longer than a day


def retry_after_value(seconds: float) -> int:
    """A ``Retry-After`` value: whole seconds, at least 1, at most ``MAX_RETRY_AFTER`` (a
    wait that is not a finite number, from a limit too slow to refill, is the most)."""
    if not math.isfinite(seconds):
        return MAX_RETRY_AFTER
    return max(1, min(MAX_RETRY_AFTER, math.ceil(seconds)))


def refusal_for(exc: JoblineError) -> HttpRefusal | None:
    """The HTTP answer to ``exc``, or None for an error no client should see (a 500)."""
    if isinstance(exc, HttpRefusal):
        return exc
    for kind, status, code in ERRORS:
        if isinstance(exc, kind):
            headers: dict[str, str] = {}
            retry = _RETRY_AFTER.get(type(exc))
            if isinstance(exc, SubmitRateLimited | AccountThrottled):
                retry = retry_after_value(exc.retry_after)
            if retry is not None:
                headers["Retry-After"] = str(retry)
            if isinstance(exc, Unauthorized):
                headers["WWW-Authenticate"] = 'Bearer realm="jobline"'
            return HttpRefusal(status, code, str(exc), headers)
    return None


def bad_request(message: str) -> HttpRefusal:
    return HttpRefusal(400, "bad_request", message)


def ledger_failure(exc: Exception) -> LedgerUnavailable:
    """The ledger could not be reached (its actor gone or restarting): worth a retry. The
    client learns the kind of failure; the details go to the gateway's log."""
    log.warning("ledger call failed: %r", exc)
    return LedgerUnavailable(f"{type(exc).__name__} (the gateway logged the details)")


async def read_body(request: web.Request, timeout: float | None = None) -> bytes:
    """The request body, decoded: 413 past client_max_size, 400 if it cannot be decoded,
    408 if it has not arrived within ``timeout`` seconds (a client sending it a byte at a
    time holds a connection and a handler).

    An undecodable or unfinished body leaves the rest of it in the connection, so those
    answers close the connection.
    """
    try:
        if request.content.is_eof():  # it came whole with the head: no timer to set
            return await request.read()
        async with asyncio.timeout(timeout):
            return await request.read()
    except web.RequestPayloadError as exc:
        encoding = request.headers.get("Content-Encoding", "identity")
        message = f"the body could not be read (Content-Encoding {encoding})"
        raise HttpRefusal(400, "bad_request", message, {"Connection": "close"}) from exc
    except TimeoutError:
        message = f"the body did not arrive within {timeout:g}s (gateway.body_timeout)"
        raise HttpRefusal(408, "request_timeout", message, {"Connection": "close"}) from None


def describe_validation(exc: ValidationError) -> str:
    first = exc.errors()[0]
    where = ".".join(str(part) for part in first["loc"]) or "body"
    return f"{where}: {first['msg']}"


def check_json(raw: bytes, max_depth: int) -> Any:
    """The body's JSON value; 400 for malformed JSON, NaN/Infinity, a number too large for
    a float (``1e400``: "not JSON: a number too large"), lone surrogates, or
    nesting deeper than ``max_depth`` (deep values cannot cross the actors: named in the
    answer, as ``gateway.max_json_depth``)."""
    too_deep = bad_request(f"JSON nested deeper than {max_depth} levels (gateway.max_json_depth)")
    try:
        data = strict_json.loads(raw, max_depth)
    except strict_json.NotJson as exc:
        raise (too_deep if "nested" in str(exc) else bad_request(str(exc))) from None
    except UnicodeDecodeError as exc:
        raise bad_request(
            f"the body is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at {exc.start})"
        ) from None
    except ValueError as exc:  # json.JSONDecodeError: what is wrong, and where
        raise bad_request(f"malformed JSON: {exc}") from None
    # A lone surrogate comes from a \u escape, or from its bytes (json decodes bytes with
    # "surrogatepass"), which are not ASCII: an ASCII body without a backslash has none.
    if raw.isascii() and b"\\" not in raw:
        return data
    try:
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # "\ud800" is valid JSON, but no Unicode text
        raise bad_request(
            "malformed JSON: a string contains an unpaired surrogate (such as \\ud800), "
            "which is not Unicode text"
        ) from None
    return data


ECHO_LIMIT = 40  # characters of a client's value an error message quotes back


def echo(value: object, limit: int = ECHO_LIMIT) -> str:
    """``repr(value)``, cut to ``limit`` characters (then "…" and the full length), for
    quoting a client's value in an error without sending a large one back."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f", {len(value)} long" if isinstance(value, str | bytes | list | dict) else ""
    return f"{text[:limit]}…{size}"
