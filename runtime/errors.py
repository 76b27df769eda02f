"""One exception hierarchy for jobline.

Every exception passes its arguments to ``super().__init__`` so that it survives
pickling across Ray actor boundaries (``pickle.loads(pickle.dumps(e))`` gives an
equal exception back; a test checks every class below).

    JoblineError
    ├── ConfigError                  jobline.toml is wrong: file, key path, reason (each one)
    ├── LedgerMissing                the ledger's database is not where a deployment has it
    ├── NotALedger                   a file given as the ledger is not one this jobline reads
    ├── DeploymentError              jobline cannot be deployed on this Ray cluster as asked
    │   ├── AppAlreadyRunning        an app of that name runs there already
    │   └── AppNotRunning            no app of that name runs there
    ├── IllegalTransition            a job state machine move the table forbids
    ├── LedgerError                  the ledger refused an operation
    │   ├── AccountNotFound
    │   ├── JobNotFound              also for another account's job (404, not 403)
    │   ├── InsufficientCredits      available < price (402)
    │   ├── IdempotencyConflict      same Idempotency-Key, different body (422)
    │   ├── GrantConflict            same grant_id, another amount (409)
    │   ├── TooManyJobsInFlight      the account's cap on non-terminal jobs (429)
    │   ├── SubmitRateLimited        the account's submit rate (429, retry_after)
    │   ├── AccountThrottled         too many of the account's jobs were rejected for
    │   │                            their input lately (429, retry_after)
    │   ├── ApiKeyNotFound           also another account's key (404)
    │   ├── ApiKeyRevoked            a rotation replacing a key revoked already (409)
    │   ├── TooManyApiKeys           the account's cap on keys in use (409)
    │   ├── DeadLetterNotFound
    │   ├── LedgerFault              an operation failed for a reason of the ledger's
    │   │                            own (a bug, logged there): retrying cannot help (500)
    │   └── LedgerUnavailable        the ledger actor or database cannot be reached
    ├── ActorCallFailed              another actor raised something unexpected on a call
    │                                (a bug there, logged): retrying cannot help (500)
    ├── RequestError                 a client request jobline refuses
    │   ├── Unauthorized             missing or unknown API key / admin token (401)
    │   ├── Forbidden                an account's valid API key on an admin route (403)
    │   ├── InputInvalid             body does not match the model's schema (422)
    │   └── UnknownModel             (422)
    ├── ResultNotFound               no stored output under this key (also a KeyError)
    ├── InvalidResultKey             a key that is not one plain file name (also a ValueError)
    ├── ResultTooLarge               a streamed result passed its byte cap; nothing was kept
    ├── ResultStoreUnavailable       the result store cannot be reached or refused (retry)
    ├── WebhookRejected              a vendor callback that changes nothing
    │   ├── WebhookSignatureInvalid
    │   ├── WebhookTimestampStale
    │   └── WebhookKeysUnavailable   the vendor's key set cannot be fetched: ask again later
    └── VendorError                  anything a vendor call did wrong
        ├── VendorTransientError     worth retrying (backoff, maybe failover)
        │   ├── VendorTimeout
        │   ├── VendorRateLimited    429, may carry retry_after
        │   ├── VendorUnavailable    5xx, connection refused or reset
        │   ├── VendorSubmitInDoubt  a submit's answer was lost (timeout, 5xx, cut off):
        │   │                        the vendor may have created the task
        │   └── VendorTaskFailed     the vendor ran the task and it failed transiently
        ├── VendorRefused            vendor-wide: this vendor serves nobody now (fail over,
        │   │                        open its circuit), though another vendor may
        │   ├── VendorAuthError      the API key is refused (401, 403)
        │   ├── VendorBillingError   billing required, the account locked or out of balance
        │   │                        (402; 403 saying locked / balance / billing)
        │   └── VendorModelGone      the model is not there (404 / 410 on submit)
        └── VendorPermanentError     permanent for the job: fail it, refund
            ├── VendorInputRejected  invalid input, content rejected (may keep a fee)
            ├── VendorModelInvalid   the configured vendor model name cannot name a model
            │                        there: a config error, refunded in full
            ├── VendorOutputTooLarge an output past the caller's byte cap
            └── OutputRefused        an output (or a redirect of it) outside the vendor's
                                     output hosts: nothing fetched from there

Three classes, three reactions (DESIGN §3.5): a transient error is retried here with
backoff; a vendor-wide refusal is the vendor's, not the job's (the same job succeeds
elsewhere); a permanent error is the job's own (the same input fails everywhere).
``retry_after`` is always a finite number of seconds in ``[0, MAX_RETRY_AFTER]`` or None,
whatever the vendor sent.

Lower-layer errors (aiohttp, sqlite3) are translated into these in one place per
adapter: ``runtime.vendors`` for HTTP, ``runtime.ledger`` for SQLite.
"""

from __future__ import annotations

import math

MAX_RETRY_AFTER = 3600.0  # seconds; a vendor asking for longer is down for a while


class JoblineError(Exception):
    """The root of every error jobline raises on purpose."""


class ConfigError(JoblineError):
    """The configuration file is wrong; names the file, the key path and why.

    ``more`` holds the other wrong keys of the same file as ``(key, reason)`` pairs, so
    that one start-up names every one of them (one line each, ``lines()``)."""

    def __init__(
        self, path: str, key: str, reason: str, more: tuple[tuple[str, str], ...] = ()
    ) -> None:
        super().__init__(path, key, reason, more)
        self.path = path
        self.key = key
        self.reason = reason
        self.more = more

    @property
    def problems(self) -> list[tuple[str, str]]:
        """Every ``(key, reason)``, the first one first."""
        return [(self.key, self.reason), *self.more]

    def lines(self) -> list[str]:
        return [
            f"{self.path}: {key}: {reason}" if key else f"{self.path}: {reason}"
            for key, reason in self.problems
        ]

    def __str__(self) -> str:
        return "\n".join(self.lines())


class LedgerMissing(JoblineError):
    """The ledger's database file is missing where one was expected: a deployment that
    has a ledger (``[storage] create_ledger = false``, the cluster's deployment record,
    or a restarted ledger actor) never starts a second, empty one."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(path, why)
        self.path = path
        self.why = why

    def __str__(self) -> str:
        return (
            f"the ledger {self.path} does not exist, but {self.why}; jobline does not start "
            "a new, empty ledger in its place. Restore it from a backup (deploy/README.md, "
            "'Backing up the ledger') or fix [storage] database"
        )


class NotALedger(JoblineError):
    """The file given as the ledger is not a jobline ledger (not SQLite, or SQLite
    without jobline's schema) or has a schema version this jobline does not read."""

    def __init__(self, path: str, why: str) -> None:
        super().__init__(path, why)
        self.path = path
        self.why = why

    def lines(self) -> list[str]:
        return [str(self)]

    def __str__(self) -> str:
        return f"{self.path}: {self.why}"


class DeploymentError(JoblineError):
    """jobline cannot run on this Ray cluster as asked: no node offers a role's resource,
    the app already runs under that name, a node lacks a secret, a role failed to start.
    One line per problem (``lines``), never a secret's value."""

    def __init__(self, problems: tuple[str, ...]) -> None:
        super().__init__(problems)
        self.problems = problems

    def lines(self) -> list[str]:
        return list(self.problems)

    def __str__(self) -> str:
        return "\n".join(self.problems)


class AppAlreadyRunning(DeploymentError):
    def __init__(self, namespace: str, where: str = "on this Ray cluster") -> None:
        JoblineError.__init__(self, namespace, where)
        self.namespace = namespace
        self.where = where
        self.problems = (
            f"app {namespace!r} already runs {where}: `jobline status` shows it, "
            "`jobline stop` stops it (a second app needs another [ray] namespace)",
        )


class AppNotRunning(DeploymentError):
    def __init__(self, namespace: str, why: str = "", leftovers: tuple[str, ...] = ()) -> None:
        JoblineError.__init__(self, namespace, why, leftovers)
        self.namespace = namespace
        self.why = why
        self.leftovers = leftovers  # actors a deployment left behind, by name
        where = f" ({why})" if why else ""
        self.problems = (f"app {namespace!r} does not run on this Ray cluster{where}",)


class IllegalTransition(JoblineError):
    """A job state machine move that the transition table forbids."""

    def __init__(self, status: str, event: str) -> None:
        super().__init__(status, event)
        self.status = status
        self.event = event

    def __str__(self) -> str:
        return f"illegal transition: event {self.event!r} in status {self.status!r}"


# --- ledger ---------------------------------------------------------------------------


class LedgerError(JoblineError):
    """The ledger refused an operation."""


class AccountNotFound(LedgerError):
    def __init__(self, account_id: str) -> None:
        super().__init__(account_id)
        self.account_id = account_id

    def __str__(self) -> str:
        return f"account {self.account_id!r} not found"


class JobNotFound(LedgerError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"job {self.job_id!r} not found"


class DeadLetterNotFound(LedgerError):
    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id

    def __str__(self) -> str:
        return f"no dead letter for job {self.job_id!r}"


class InsufficientCredits(LedgerError):
    def __init__(self, account_id: str, price: int, available: int) -> None:
        super().__init__(account_id, price, available)
        self.account_id = account_id
        self.price = price
        self.available = available

    def __str__(self) -> str:
        return (
            f"account {self.account_id!r} has {self.available} credits available, "
            f"the job costs {self.price}"
        )


class IdempotencyConflict(LedgerError):
    def __init__(self, key: str, job_id: str) -> None:
        super().__init__(key, job_id)
        self.key = key
        self.job_id = job_id

    def __str__(self) -> str:
        return (
            f"Idempotency-Key {self.key!r} was already used for job {self.job_id!r} "
            "with a different request body"
        )


class GrantConflict(LedgerError):
    """A grant id the account used before, for another amount (Stripe's idempotency rule:
    a key names one request; another body under it is refused, not applied)."""

    def __init__(self, account_id: str, grant_id: str, granted: int, asked: int) -> None:
        super().__init__(account_id, grant_id, granted, asked)
        self.account_id = account_id
        self.grant_id = grant_id
        self.granted = granted
        self.asked = asked

    def __str__(self) -> str:
        return (
            f"grant_id {self.grant_id!r} was already used for a grant of {self.granted} "
            f"credits to account {self.account_id!r}; this request asks for {self.asked}: "
            "use a new grant_id for a new grant"
        )


class TooManyJobsInFlight(LedgerError):
    def __init__(self, account_id: str, limit: int) -> None:
        super().__init__(account_id, limit)
        self.account_id = account_id
        self.limit = limit

    def __str__(self) -> str:
        return f"account {self.account_id!r} already has {self.limit} jobs in flight"


class SubmitRateLimited(LedgerError):
    """The account submitted faster than its submit rate; ``retry_after`` seconds until the
    next submit is accepted."""

    def __init__(self, account_id: str, rate: float, retry_after: float) -> None:
        super().__init__(account_id, rate, retry_after)
        self.account_id = account_id
        self.rate = rate
        self.retry_after = retry_after

    def __str__(self) -> str:
        return (
            f"account {self.account_id!r} may submit {self.rate:g} jobs per second; "
            f"retry after {self.retry_after:.2f}s"
        )


class AccountThrottled(LedgerError):
    """Vendors rejected too many of the account's jobs for their own input lately
    (``[throttle]``): its submits are refused for ``retry_after`` more seconds."""

    def __init__(self, account_id: str, retry_after: float) -> None:
        super().__init__(account_id, retry_after)
        self.account_id = account_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        return (
            f"account {self.account_id!r} is throttled: vendors rejected too many of its "
            f"jobs for their input lately; retry after {self.retry_after:.0f}s"
        )


class ApiKeyNotFound(LedgerError):
    def __init__(self, key_id: str) -> None:
        super().__init__(key_id)
        self.key_id = key_id

    def __str__(self) -> str:
        return f"API key {self.key_id!r} not found"


class ApiKeyRevoked(LedgerError):
    """A rotation named a key whose revoke was asked already (its grace period may still
    run): rotating it again would leave two successors of one key."""

    def __init__(self, key_id: str) -> None:
        super().__init__(key_id)
        self.key_id = key_id

    def __str__(self) -> str:
        return f"API key {self.key_id!r} is revoked already: rotate a key still in use"


class TooManyApiKeys(LedgerError):
    def __init__(self, account_id: str, limit: int) -> None:
        super().__init__(account_id, limit)
        self.account_id = account_id
        self.limit = limit

    def __str__(self) -> str:
        return (
            f"account {self.account_id!r} already has {self.limit} API keys in use: "
            "revoke one first"
        )


class LedgerFault(LedgerError):
    """An operation failed for a reason of the ledger's own (a bug; the ledger logged the
    traceback). The same request fails the same way again: not worth retrying."""

    def __init__(self, operation: str, error: str) -> None:
        super().__init__(operation, error)
        self.operation = operation
        self.error = error

    def __str__(self) -> str:
        return f"the ledger failed on {self.operation}: {self.error}"


class LedgerUnavailable(LedgerError):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"ledger unavailable: {self.reason}"


class ActorCallFailed(JoblineError):
    """Another actor raised an unexpected error on a call (a bug there; the caller logs the
    remote traceback). Unlike an actor that cannot be reached, retrying does not help."""

    def __init__(self, call: str, error: str) -> None:
        super().__init__(call, error)
        self.call = call
        self.error = error

    def __str__(self) -> str:
        return f"{self.call} failed: {self.error}"


# --- client requests ------------------------------------------------------------------


class RequestError(JoblineError):
    """A client request jobline refuses."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class Unauthorized(RequestError):
    pass


class Forbidden(RequestError):
    """The request is authenticated (a valid API key) but may not use this route (an
    admin route needs the admin token)."""


class InputInvalid(RequestError):
    pass


class UnknownModel(RequestError):
    pass


# --- results --------------------------------------------------------------------------


class ResultNotFound(JoblineError, KeyError):
    """No result is stored under this key."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return f"no result stored under key {self.key!r}"


class InvalidResultKey(JoblineError, ValueError):
    """A key that is not one plain file name (slashes, ``..``, absolute, odd characters)."""

    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key

    def __str__(self) -> str:
        return (
            f"invalid result key {self.key!r}: one file name of letters, digits, '.', '_' "
            "and '-' is expected"
        )


class ResultTooLarge(JoblineError):
    """A streamed result went past its byte cap; the store kept nothing of it."""

    def __init__(self, key: str, max_bytes: int) -> None:
        super().__init__(key, max_bytes)
        self.key = key
        self.max_bytes = max_bytes

    def __str__(self) -> str:
        return f"result {self.key!r} is larger than its cap of {self.max_bytes} bytes"


class ResultStoreUnavailable(JoblineError):
    """The result store cannot be reached, or refused the operation (worth retrying)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return f"result store unavailable: {self.reason}"


# --- webhooks -------------------------------------------------------------------------


class WebhookRejected(JoblineError):
    """A vendor callback that must change nothing."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


class WebhookSignatureInvalid(WebhookRejected):
    pass


class WebhookTimestampStale(WebhookRejected):
    pass


class WebhookKeysUnavailable(WebhookRejected):
    """The vendor's public keys could not be fetched, so nothing can be verified now; the
    vendor should deliver again later (it retries)."""


# --- vendors --------------------------------------------------------------------------


class VendorError(JoblineError):
    """Anything a vendor call did wrong."""

    def __init__(self, vendor: str, message: str) -> None:
        super().__init__(vendor, message)
        self.vendor = vendor
        self.message = message

    def __str__(self) -> str:
        return f"{self.vendor}: {self.message}"


class VendorTransientError(VendorError):
    """Worth retrying, after ``retry_after`` seconds if the vendor said so."""

    def __init__(self, vendor: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(vendor, message)
        retry_after = sane_retry_after(retry_after)
        # VendorError.__init__ set args to (vendor, message); keep retry_after in args too.
        self.args = (vendor, message, retry_after)
        self.retry_after = retry_after


def sane_retry_after(seconds: float | None) -> float | None:
    """``seconds`` clamped to ``[0, MAX_RETRY_AFTER]``; None for None or NaN.

    Field case: ``Retry-After: inf`` reached the retry policy as ``inf`` and crashed the
    attempt; a number this class holds is always one the policies can use.
    """
    if seconds is None or math.isnan(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class VendorTimeout(VendorTransientError):
    pass


class VendorRateLimited(VendorTransientError):
    pass


class VendorUnavailable(VendorTransientError):
    pass


class VendorTaskFailed(VendorTransientError):
    pass


class VendorSubmitInDoubt(VendorTransientError):
    """A submit whose answer was lost after the vendor may have created the task: a
    timeout, a 5xx (but a 503 with ``Retry-After``: the vendor refused the request), a
    reset or cut-off answer, a 2xx that cannot be read. Not "nothing happened": the task
    may run, billed, with no one knowing its id (DESIGN §3.2: the submit is *in doubt*)."""


class VendorRefused(VendorError):
    """Vendor-wide: the vendor refuses the operator's account or the model, for every job.

    Not the job's fault: the job fails over to the next vendor of its route, and this
    vendor's circuit opens (a locked account or a missing model does not come back in
    seconds)."""


class VendorAuthError(VendorRefused):
    """The API key is refused (401; 403 without a billing reason)."""


class VendorBillingError(VendorRefused):
    """Billing required (402), or the account is locked or out of balance (fal: 403 "User
    is locked. Reason: Exhausted balance"): such locks last hours."""


class VendorModelGone(VendorRefused):
    """The model (or deployment, or app) is not there: 404 or 410 on a submit."""


class VendorPermanentError(VendorError):
    """Permanent for the job: retrying cannot help, the job fails and its hold is released."""


class VendorInputRejected(VendorPermanentError):
    pass


class VendorModelInvalid(VendorPermanentError):
    """The vendor's model name in jobline.toml (``models.X.route[].model``) cannot name a
    model at that vendor (not ``owner/name[:version]`` for replicate, not an endpoint id
    fal-client would accept): a config error, found before any request goes out. Not the
    job's input: the job is refunded in full (no ``input_rejected_fee``), never counts
    against its account's throttle, and the operator is told
    (``jobline_config_errors_total``, the dead letter's error says "config error")."""


class VendorOutputTooLarge(VendorPermanentError):
    """An output (or an answer) larger than the caller's byte cap; nothing of it was kept."""


class OutputRefused(VendorPermanentError):
    """An output named a place outside the vendor's output hosts (``runtime.origins``),
    directly or by a redirect: nothing was fetched from there."""
