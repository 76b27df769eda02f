"""What the HTTP API accepts: request bodies and limits, as pydantic models and constants.

The handlers validate requests with these, and ``runtime.api.openapi`` describes the
same models, so the document served at ``/openapi.json`` cannot drift from what the
gateway accepts.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

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
