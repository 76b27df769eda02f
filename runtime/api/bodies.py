"""What the HTTP API accepts: request bodies and limits, as pydantic models and constants.

The handlers validate requests with these, and ``runtime.api.openapi`` describes the
same models, so the document served at ``/openapi.json`` cannot drift from what the
gateway accepts.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from runtime.config_base import MAX_CREDITS, MIN_SUBMIT_RATE, submit_rate

# MAX_CREDITS (runtime.config_base): the most one grant (or an account's starting credits)
# may add, and the most a model may cost. It bounds each grant, not a balance: a balance
# reaches SQLite's int64 only after millions of such grants.
MAX_PAGE = 200  # GET /v1/jobs?limit=
DEFAULT_PAGE = 50
MAX_DEAD_LETTERS = 1000
DEFAULT_DEAD_LETTERS = 100
MAX_STATEMENT_PAGE = 200  # GET /v1/credits/entries?limit=
DEFAULT_STATEMENT_PAGE = 100
MAX_KEYS_PAGE = 100
DEFAULT_KEYS_PAGE = 50
MAX_API_KEYS = 50  # keys not revoked, per account
MAX_GRACE_PERIOD = 7 * 24 * 3600  # seconds a rotated key may still be used
MAX_SUBMIT_RATE = 10_000.0  # submits per second an account may be given
MAX_IN_FLIGHT_LIMIT = 1_000_000
MAX_SUBMIT_BURST = 100_000
MIN_SLOT_WEIGHT = 0.01  # a weight below would starve the account (1e-300 was taken)
MAX_SLOT_WEIGHT = 100.0
# "<created_at>/<id>", as a page's next_cursor gives it (dead letters).
TIME_CURSOR_PATTERN = r"^[0-9]{1,20}(\.[0-9]{1,20})?(e[+-]?[0-9]{1,3})?/[\x21-\x7e]{1,128}$"
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
            "Makes the grant idempotent, per account: the same grant_id with the same "
            "amount answers what the first request answered (with the header "
            "Idempotent-Replayed: true) and grants nothing more; with another amount it is "
            "a 409 naming the conflict. Falls back to the Idempotency-Key header; without "
            "either, every request grants."
        ),
    )


class CreateKeyBody(_Body):
    name: str = Field(
        default="",
        max_length=100,
        description="A label for the key; a rotation without one keeps the replaced key's",
    )
    replaces: str | None = Field(
        default=None,
        min_length=1,
        max_length=100,
        description=(
            "Rotate: the id of a key of this account to revoke in the same step (it "
            "still works for grace_period seconds)"
        ),
    )
    grace_period: JsonInt = Field(
        default=0,
        ge=0,
        le=MAX_GRACE_PERIOD,
        description="Seconds the replaced key keeps working (only with replaces)",
    )


class LimitsBody(_Body):
    """An account's own limits; null (or absent): the [gateway] default applies."""

    max_jobs_in_flight: JsonInt | None = Field(
        default=None, ge=1, le=MAX_IN_FLIGHT_LIMIT, description="Jobs not yet ended"
    )
    submits_per_second: float | None = Field(
        default=None,
        ge=0,
        le=MAX_SUBMIT_RATE,
        allow_inf_nan=False,
        description=f"Submits per second over time (0: no limit; else >= {MIN_SUBMIT_RATE:g})",
    )
    submit_burst: JsonInt | None = Field(
        default=None, ge=1, le=MAX_SUBMIT_BURST, description="Submits at once after a pause"
    )
    slot_weight: float | None = Field(
        default=None,
        ge=MIN_SLOT_WEIGHT,
        le=MAX_SLOT_WEIGHT,
        allow_inf_nan=False,
        description="The account's share of scarce vendor slots (1: an equal share), "
        f"{MIN_SLOT_WEIGHT:g} to {MAX_SLOT_WEIGHT:g}",
    )

    @field_validator("submits_per_second")
    @classmethod
    def _rate_or_none(cls, value: float | None) -> float | None:
        return None if value is None else submit_rate(value)


class SubmitJobBody(_Body):
    model: str = Field(min_length=1, max_length=200)
    input: dict[str, Any]
