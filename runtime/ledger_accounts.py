"""The ledger's account operations: accounts, API keys, grants and per-account limits.

Each function is one operation of ``runtime.ledger``'s batch (``_Batch``): it runs on the
writer thread inside the batch's transaction, checks before it writes (raising a
``JoblineError`` means it wrote nothing), and returns ``(value, changed)``.

Grants follow Stripe's idempotency rule, per account: a ``grant_id`` names one request.
The first grant under it is applied and its answer (the balance after it) kept in
``grant_requests``; the same id with the same amount replays that answer and changes
nothing; the same id with another amount is a ``GrantConflict`` (the caller sees a 409,
not a quiet "nothing granted"). The account's creation grant has no grant id, so no
later grant can collide with it.

API keys are stored as SHA-256 hashes with a short prefix to recognise them. A revoke
sets ``expires_at`` (now, or later with a grace period: a rotation) and a new
``revoked_seq``: gateways follow that feed (``Ledger.revocations``) to drop a revoked
key from their caches within a poll interval.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runtime.errors import ApiKeyNotFound, ApiKeyRevoked, GrantConflict, TooManyApiKeys
from runtime.ledger_reads import API_KEY_COLUMNS, api_key_from_row
from runtime.models import (
    AccountLimits,
    ApiKey,
    Balance,
    CreateAccount,
    CreateApiKey,
    Grant,
    RecordKeyUse,
    RevokeApiKey,
    SetAccountLimits,
)

if TYPE_CHECKING:
    from runtime.ledger import _Batch

BALANCE, HELD = 0, 1  # runtime.ledger's account columns
MAX_GRACE = 7 * 24 * 3600.0  # seconds a rotated key may still be used


def create_account(batch: _Batch, op: CreateAccount) -> tuple[Balance, bool]:
    conn = batch.conn
    row = conn.execute(
        "SELECT balance, held FROM accounts WHERE id = ?", (op.account_id,)
    ).fetchone()
    if row is not None:  # a replay
        return Balance(op.account_id, row[0], row[1], row[0] - row[1]), False
    if op.credits < 0:
        raise ValueError(f"starting credits cannot be negative, not {op.credits}")
    now = batch.now
    conn.execute(
        "INSERT INTO accounts (id, name, created_at, balance) VALUES (?, ?, ?, ?)",
        (op.account_id, op.name, now, op.credits),
    )
    key_id = op.key_id or f"key_{op.account_id}"
    _insert_key(batch, op.account_id, key_id, op.api_key_hash, op.key_prefix, "")
    if op.credits > 0:
        conn.execute(
            "INSERT INTO credit_entries (account_id, kind, amount, job_id, ref, created_at) "
            "VALUES (?, 'grant', ?, NULL, ?, ?)",
            (op.account_id, op.credits, op.account_id, now),
        )
    return Balance(op.account_id, op.credits, 0, op.credits), True


def grant(batch: _Batch, op: Grant) -> tuple[Balance, bool]:
    if op.amount <= 0:
        raise ValueError(f"a grant must be positive, not {op.amount}")
    account = batch.account(op.account_id)
    conn = batch.conn
    row = conn.execute(
        "SELECT amount, balance, held FROM grant_requests WHERE account_id = ? AND grant_id = ?",
        (op.account_id, op.grant_id),
    ).fetchone()
    if row is not None:
        amount, balance, held = row
        if amount != op.amount:
            raise GrantConflict(op.account_id, op.grant_id, amount, op.amount)
        if balance is None:  # granted before schema 7 kept answers: the balance now
            balance, held = account[BALANCE], account[HELD]
        return Balance(op.account_id, balance, held, balance - held), False
    now = batch.now
    conn.execute(
        "INSERT INTO credit_entries (account_id, kind, amount, job_id, ref, created_at) "
        "VALUES (?, 'grant', ?, NULL, ?, ?)",
        (op.account_id, op.amount, f"{op.account_id}:{op.grant_id}", now),
    )
    account[BALANCE] += op.amount
    batch.dirty.add(op.account_id)
    balance, held = account[BALANCE], account[HELD]
    conn.execute(
        "INSERT INTO grant_requests (account_id, grant_id, amount, balance, held, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (op.account_id, op.grant_id, op.amount, balance, held, now),
    )
    return Balance(op.account_id, balance, held, balance - held), True


def create_api_key(batch: _Batch, op: CreateApiKey) -> tuple[ApiKey, bool]:
    existing = _key(batch, op.key_id)
    if existing is not None:  # a replay
        if existing.account_id != op.account_id:
            raise ApiKeyNotFound(op.key_id)
        return existing, False
    batch.account(op.account_id)  # AccountNotFound
    replaced = None
    if op.replaces is not None:
        replaced = _key(batch, op.replaces)
        if replaced is None or replaced.account_id != op.account_id:
            raise ApiKeyNotFound(op.replaces)
        if replaced.revoked_at is not None:
            raise ApiKeyRevoked(op.replaces)
    # Keys not revoked count against the cap; one being rotated out does not.
    in_use = batch.conn.execute(
        "SELECT count(*) FROM api_keys WHERE account_id = ? AND revoked_at IS NULL",
        (op.account_id,),
    ).fetchone()[0]
    if replaced is not None and replaced.revoked_at is None:
        in_use -= 1
    if in_use >= op.max_keys:
        raise TooManyApiKeys(op.account_id, op.max_keys)
    name = op.name
    if replaced is not None:
        _revoke(batch, replaced, op.grace)
        name = name or replaced.name  # a rotation keeps the key's name unless given one
    _insert_key(batch, op.account_id, op.key_id, op.key_hash, op.prefix, name)
    created = _key(batch, op.key_id)
    assert created is not None
    return created, True


def revoke_api_key(batch: _Batch, op: RevokeApiKey) -> tuple[ApiKey, bool]:
    key = _key(batch, op.key_id)
    if key is None or key.account_id != op.account_id:
        raise ApiKeyNotFound(op.key_id)
    changed = _revoke(batch, key, op.grace)
    revoked = _key(batch, op.key_id)
    assert revoked is not None
    return revoked, changed


def record_key_use(batch: _Batch, op: RecordKeyUse) -> tuple[int, bool]:
    updated = batch.conn.executemany(
        "UPDATE api_keys SET last_used_at = ?1 WHERE id = ?2 "
        "AND (last_used_at IS NULL OR last_used_at < ?1)",
        [(at, key_id) for key_id, at in op.uses],
    ).rowcount
    return updated, updated > 0


def set_account_limits(batch: _Batch, op: SetAccountLimits) -> tuple[AccountLimits, bool]:
    limits = op.limits
    account = batch.account(limits.account_id)
    values = (limits.max_jobs_in_flight, limits.submits_per_second, limits.submit_burst)
    conn = batch.conn
    (weight,) = conn.execute(
        "SELECT slot_weight FROM accounts WHERE id = ?", (limits.account_id,)
    ).fetchone()
    conn.execute(
        "UPDATE accounts SET max_jobs_in_flight = ?, submits_per_second = ?, submit_burst = ?, "
        "slot_weight = ? WHERE id = ?",
        (*values, limits.slot_weight, limits.account_id),
    )
    changed = tuple(account[3:6]) != values or weight != limits.slot_weight
    account[3:6] = values  # later operations of this batch see the new limits
    return limits, changed


# --- helpers ---------------------------------------------------------------------------


def _key(batch: _Batch, key_id: str) -> ApiKey | None:
    row = batch.conn.execute(
        f"SELECT {API_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,)
    ).fetchone()
    return None if row is None else api_key_from_row(row)


def _insert_key(
    batch: _Batch, account_id: str, key_id: str, key_hash: str, prefix: str, name: str
) -> None:
    batch.conn.execute(
        "INSERT INTO api_keys (id, account_id, hash, prefix, name, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        (key_id, account_id, key_hash, prefix, name, batch.now),
    )


def _revoke(batch: _Batch, key: ApiKey, grace: float) -> bool:
    """Refuse ``key`` from ``now + grace`` on (never later than an earlier revoke said)."""
    if not 0 <= grace <= MAX_GRACE:
        raise ValueError(f"grace must be 0 to {MAX_GRACE:g} seconds, not {grace}")
    now = batch.now
    expires = now + grace
    if key.expires_at is not None and key.expires_at <= expires:
        return False  # already refused by then
    conn = batch.conn
    seq = conn.execute("SELECT coalesce(max(revoked_seq), 0) + 1 FROM api_keys").fetchone()[0]
    params: tuple[Any, ...] = (key.revoked_at or now, expires, seq, key.id)
    conn.execute(
        "UPDATE api_keys SET revoked_at = ?, expires_at = ?, revoked_seq = ? WHERE id = ?", params
    )
    return True
