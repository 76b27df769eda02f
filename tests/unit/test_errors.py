"""Every jobline exception survives pickling, because they cross Ray actor boundaries."""

import inspect
import pickle
from typing import Any

import pytest

import runtime.errors as errors

ARGS: dict[str, tuple[Any, ...]] = {
    "ConfigError": ("jobline.toml", "vendors.fal.concurrency", "must be ≥ 1, got 0"),
    "LedgerMissing": ("/var/lib/jobline/jobline.db", "[storage] create_ledger is false"),
    "Forbidden": ("this route needs the admin token",),
    "NotALedger": ("/tmp/x.db", "not a jobline ledger (not an SQLite database)"),
    "DeploymentError": (("no node offers the custom resource 'jobline_ledger'",),),
    "AppAlreadyRunning": ("jobline", "on this machine (`jobline serve`, pid 7)"),
    "AppNotRunning": ("jobline", "", ("jobline-ledger",)),
    "IllegalTransition": ("queued", "succeeded"),
    "AccountNotFound": ("acct_1",),
    "JobNotFound": ("job_1",),
    "DeadLetterNotFound": ("job_1",),
    "InsufficientCredits": ("acct_1", 5, 2),
    "IdempotencyConflict": ("key-1", "job_1"),
    "TooManyJobsInFlight": ("acct_1", 100),
    "GrantConflict": ("acct_1", "invoice-7", 5, 7),
    "SubmitRateLimited": ("acct_1", 2.0, 0.5),
    "AccountThrottled": ("acct_1", 120.0),
    "ApiKeyNotFound": ("key_1",),
    "ApiKeyRevoked": ("key_1",),
    "TooManyApiKeys": ("acct_1", 50),
    "LedgerFault": ("OpenJob", "ValueError: boom"),
    "ActorCallFailed": ("jobline-ledger.balance", "TypeError"),
    "LedgerError": (),
    "LedgerUnavailable": ("disk I/O error",),
    "RequestError": ("bad",),
    "Unauthorized": ("missing API key",),
    "InputInvalid": ("prompt: required",),
    "UnknownModel": ("no model 'x'",),
    "ResultNotFound": ("job_1.png",),
    "InvalidResultKey": ("../x",),
    "ResultTooLarge": ("job_1.png", 1024),
    "ResultStoreUnavailable": ("endpoint unreachable",),
    "WebhookRejected": ("bad",),
    "WebhookSignatureInvalid": ("no matching signature",),
    "WebhookTimestampStale": ("timestamp too old",),
    "WebhookKeysUnavailable": ("the key set cannot be fetched",),
    "VendorError": ("fal", "boom"),
    "VendorTransientError": ("fal", "boom", 2.5),
    "VendorTimeout": ("fal", "timed out"),
    "VendorRateLimited": ("fal", "429", 3.0),
    "VendorUnavailable": ("fal", "503"),
    "VendorTaskFailed": ("fal", "CUDA out of memory"),
    "VendorPermanentError": ("fal", "bad"),
    "VendorInputRejected": ("fal", "content rejected"),
    "VendorModelInvalid": ("fal", "not a valid model name for this vendor: 'single'"),
    "VendorRefused": ("fal", "refused"),
    "VendorAuthError": ("fal", "401"),
    "VendorBillingError": ("fal", "403: User is locked. Reason: Exhausted balance"),
    "VendorModelGone": ("replicate", "404: model not found"),
    "VendorSubmitInDoubt": ("fal", "submit: no answer within 10s (the task may exist)", None),
    "VendorOutputTooLarge": ("replicate", "output larger than 1024 bytes"),
    "OutputRefused": ("replicate", "fetch: redirect refused: 127.0.0.2 is internal"),
}

CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, errors.JoblineError) and cls is not errors.JoblineError
]


def test_every_class_has_sample_arguments() -> None:
    assert {cls.__name__ for cls in CLASSES} == set(ARGS)


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_pickle_round_trip(cls: type[errors.JoblineError]) -> None:
    original = cls(*ARGS[cls.__name__])
    copy = pickle.loads(pickle.dumps(original))
    assert type(copy) is cls
    assert copy.args == original.args
    assert str(copy) == str(original)
    assert vars(copy) == vars(original)


def test_transient_vendor_wide_and_permanent_are_disjoint() -> None:
    assert issubclass(errors.VendorRateLimited, errors.VendorTransientError)
    assert not issubclass(errors.VendorInputRejected, errors.VendorTransientError)
    kinds = (errors.VendorTransientError, errors.VendorRefused, errors.VendorPermanentError)
    for a in kinds:
        for b in kinds:
            assert a is b or not (issubclass(a, b) or issubclass(b, a))
    for refusal in (errors.VendorAuthError, errors.VendorBillingError, errors.VendorModelGone):
        assert issubclass(refusal, errors.VendorRefused)
    assert errors.VendorRateLimited("fal", "429", 3.0).retry_after == 3.0


@pytest.mark.parametrize(
    ("given", "held"),
    [
        (None, None),
        (float("nan"), None),
        (float("inf"), errors.MAX_RETRY_AFTER),
        (1e300, errors.MAX_RETRY_AFTER),
        (-5.0, 0.0),
        (2.5, 2.5),
    ],
)
def test_a_transient_error_holds_only_a_usable_retry_after(
    given: float | None, held: float | None
) -> None:
    """Field case: ``Retry-After: inf`` reached the retry policy and crashed the attempt."""
    exc = errors.VendorRateLimited("fal", "429", given)
    assert exc.retry_after == held and exc.args[2] == held
    assert pickle.loads(pickle.dumps(exc)).retry_after == held


def test_config_error_names_file_key_and_reason() -> None:
    e = errors.ConfigError("jobline.toml", "vendors.fal.concurrency", "must be ≥ 1, got 0")
    assert str(e) == "jobline.toml: vendors.fal.concurrency: must be ≥ 1, got 0"


def test_docstring_draws_every_class() -> None:
    doc = errors.__doc__ or ""
    for cls in CLASSES:
        assert cls.__name__ in doc
