"""The ledger's SQLite schema as migrations: ``MIGRATIONS`` is applied in order at open
(``runtime.ledger_schema.migrate``), each step in its own transaction; the schema version
is ``PRAGMA user_version``. Also the SQL text the schema and its queries share (the
partial indexes' WHERE terms) and the counters' names.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable

from runtime.errors import LedgerUnavailable
from runtime.states import TERMINAL, JobStatus


def sql_set(statuses: Iterable[JobStatus]) -> str:
    """``('a', 'b')`` for an ``IN`` clause, from enum values (never from user input)."""
    return "(" + ", ".join(f"'{s.value}'" for s in sorted(statuses)) + ")"


# The same text in the partial indexes and in the queries that should use them: SQLite
# uses a partial index only when the query's WHERE contains its WHERE term verbatim.
OPEN_SQL = f"status IN {sql_set(set(JobStatus) - TERMINAL)}"
TERMINAL_SQL = sql_set(TERMINAL)


# --- schema ---------------------------------------------------------------------------

# A migration step is SQL, or a function of the connection for what SQL alone cannot say.
Step = str | Callable[[sqlite3.Connection], None]

# Kept in a counter table, updated in the same transaction as what they count, so that
# gauges read one row instead of counting millions (``ledger_counters``). The open
# statuses are counted from the small ``jobs_open`` index instead.
COUNTED_STATUSES = tuple(sorted(s.value for s in TERMINAL))
DEAD_LETTERS_OPEN = "dead_letters_open"
SETTLED_ONCE = (
    "a job is settled once: a capture, a release, or (failed, a fee kept) a capture of "
    "the fee and a release of the rest"
)

# Migration 7 lets a price be 0 (a free model): a free job has a hold of 0 and a capture
# or release of 0, so I2 ("exactly one hold, exactly one settlement") holds as written.
# Grants stay positive. Relaxing a CHECK changes no stored row, so the table is not
# rebuilt: its CREATE statement is edited in place, the procedure SQLite documents for
# removing CHECK constraints (https://www.sqlite.org/lang_altertable.html, "Making Other
# Kinds Of Table Schema Changes"); every row that passed the old check passes the new.
RELAXED_CHECKS = (
    ("jobs", "cost INTEGER NOT NULL CHECK (cost > 0)", "cost INTEGER NOT NULL CHECK (cost >= 0)"),
    (
        "credit_entries",
        "amount INTEGER NOT NULL CHECK (amount > 0)",
        "amount INTEGER NOT NULL CHECK (amount > 0 OR (amount = 0 AND kind <> 'grant'))",
    ),
)


def _relax_checks(conn: sqlite3.Connection) -> None:
    version = int(conn.execute("PRAGMA schema_version").fetchone()[0])
    conn.execute("PRAGMA writable_schema = ON")
    try:
        for table, old, new in RELAXED_CHECKS:
            edited = conn.execute(
                "UPDATE sqlite_schema SET sql = replace(sql, ?, ?) "
                "WHERE type = 'table' AND name = ? AND instr(sql, ?) > 0",
                (old, new, table, old),
            ).rowcount
            if edited != 1:
                raise LedgerUnavailable(f"schema migration 7: {table} does not read {old!r}")
        conn.execute(f"PRAGMA schema_version = {version + 1}")  # other connections reload
    finally:
        conn.execute("PRAGMA writable_schema = OFF")


MIGRATIONS: list[list[Step]] = [
    # 1: accounts, jobs, credit entries, idempotency keys.
    [
        """CREATE TABLE accounts (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            api_key_hash TEXT NOT NULL UNIQUE,
            created_at REAL NOT NULL,
            balance INTEGER NOT NULL DEFAULT 0,  -- cached: grants - captures
            held INTEGER NOT NULL DEFAULT 0,     -- cached: open holds
            CHECK (held >= 0 AND balance >= held)
        ) WITHOUT ROWID""",
        """CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY,  -- insertion order: stable keyset pagination
            id TEXT NOT NULL UNIQUE,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            model TEXT NOT NULL,
            input TEXT NOT NULL,  -- JSON
            status TEXT NOT NULL
                CHECK (status IN ('queued', 'processing', 'completed', 'failed', 'canceled')),
            cost INTEGER NOT NULL CHECK (cost > 0),
            trace_id TEXT NOT NULL,
            route_position INTEGER NOT NULL,
            vendor TEXT NOT NULL,
            vendor_task_id TEXT,
            attempts INTEGER NOT NULL,
            vendor_attempts INTEGER NOT NULL,
            not_before REAL NOT NULL,
            deadline REAL NOT NULL,
            result_key TEXT,
            error TEXT,
            idempotency_key TEXT,
            redriven_from TEXT REFERENCES jobs(id),
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )""",
        "CREATE INDEX jobs_account ON jobs(account_id)",  # (account_id, seq): pages
        # Only the open jobs (in flight: few, next to the terminal ones) are indexed by
        # status; the sweeper's and processors' queries read this small index. Every
        # status change rewrites an index entry, so there is exactly one such index.
        f"""CREATE INDEX jobs_open ON jobs(account_id, status, vendor, deadline)
            WHERE {OPEN_SQL}""",
        """CREATE TABLE credit_entries (
            id INTEGER PRIMARY KEY,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            kind TEXT NOT NULL CHECK (kind IN ('grant', 'hold', 'capture', 'release')),
            amount INTEGER NOT NULL CHECK (amount > 0),
            job_id TEXT REFERENCES jobs(id),
            ref TEXT,
            created_at REAL NOT NULL,
            CHECK ((kind = 'grant') = (job_id IS NULL))
        )""",
        "CREATE INDEX credit_entries_account ON credit_entries(account_id)",
        # (job_id, is-hold) unique: one hold per job, and ONE settlement (a capture or a
        # release, never both, never two) — stronger than unique (job_id, kind).
        """CREATE UNIQUE INDEX credit_entries_job
            ON credit_entries(job_id, kind = 'hold') WHERE job_id IS NOT NULL""",
        "CREATE UNIQUE INDEX credit_entries_ref ON credit_entries(ref) WHERE ref IS NOT NULL",
        """CREATE TABLE idempotency_keys (
            account_id TEXT NOT NULL REFERENCES accounts(id),
            key TEXT NOT NULL,
            job_id TEXT NOT NULL UNIQUE REFERENCES jobs(id),
            request_hash TEXT,
            created_at REAL NOT NULL,
            PRIMARY KEY (account_id, key)
        ) WITHOUT ROWID""",
    ],
    # 2: webhook receipts, dead letters, job history (backfilled from the jobs).
    [
        """CREATE TABLE webhook_receipts (
            vendor TEXT NOT NULL,
            webhook_id TEXT NOT NULL,
            received_at REAL NOT NULL,
            PRIMARY KEY (vendor, webhook_id)
        ) WITHOUT ROWID""",
        """CREATE TABLE dead_letters (
            job_id TEXT PRIMARY KEY REFERENCES jobs(id),
            account_id TEXT NOT NULL,
            model TEXT NOT NULL,
            vendor TEXT NOT NULL,
            error TEXT NOT NULL,
            attempts INTEGER NOT NULL,
            trace_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            redriven_to TEXT REFERENCES jobs(id)
        ) WITHOUT ROWID""",
        "CREATE INDEX dead_letters_created ON dead_letters(created_at)",
        """CREATE TABLE job_history (
            seq INTEGER PRIMARY KEY,  -- global order; an SSE stream resumes after a seq
            job_id TEXT NOT NULL REFERENCES jobs(id),
            status TEXT NOT NULL,
            at REAL NOT NULL,
            detail TEXT
        )""",
        "CREATE INDEX job_history_job ON job_history(job_id)",
        """INSERT INTO job_history (job_id, status, at, detail)
            SELECT id, status, updated_at, 'backfilled by schema migration 2'
            FROM jobs ORDER BY seq""",
    ],
    # 3: the cached in-flight count (the per-account cap reads it), and guards in SQL:
    # entries and history are append-only, a terminal job never changes.
    [
        "ALTER TABLE accounts ADD COLUMN in_flight INTEGER NOT NULL DEFAULT 0",
        f"""UPDATE accounts SET in_flight =
            (SELECT count(*) FROM jobs WHERE jobs.account_id = accounts.id AND {OPEN_SQL})""",
        """CREATE TRIGGER credit_entries_no_update BEFORE UPDATE ON credit_entries
            BEGIN SELECT RAISE(ABORT, 'credit_entries is append-only'); END""",
        """CREATE TRIGGER credit_entries_no_delete BEFORE DELETE ON credit_entries
            BEGIN SELECT RAISE(ABORT, 'credit_entries is append-only'); END""",
        """CREATE TRIGGER job_history_no_update BEFORE UPDATE ON job_history
            BEGIN SELECT RAISE(ABORT, 'job_history is append-only'); END""",
        """CREATE TRIGGER job_history_no_delete BEFORE DELETE ON job_history
            BEGIN SELECT RAISE(ABORT, 'job_history is append-only'); END""",
        f"""CREATE TRIGGER jobs_terminal_absorbs BEFORE UPDATE ON jobs
            WHEN OLD.status IN {TERMINAL_SQL}
            BEGIN SELECT RAISE(ABORT, 'a terminal job never changes'); END""",
    ],
    # 4: a submit in doubt. StartAttempt sets it, MarkProcessing and ScheduleRetry clear
    # it: while set, a vendor task may run whose id jobline never recorded (the
    # processor stopped between submit and MarkProcessing). A restarted processor holds
    # a slot for each (``Ledger.submits_in_doubt``). Terminal jobs keep the flag (a
    # terminal row never changes), so the partial index holds those few rows as well.
    [
        "ALTER TABLE jobs ADD COLUMN submit_in_doubt INTEGER NOT NULL DEFAULT 0",
        "CREATE INDEX jobs_in_doubt ON jobs(vendor) WHERE submit_in_doubt = 1",
    ],
    # 5: reads for the account-wide event stream and the operator's account list. The
    # history carries its job's account (NOT NULL, so the table is rebuilt, backfilled
    # from the jobs; seq values are kept, so a stream resumes across the migration):
    # ``GET /v1/events`` reads (account_id, seq) ranges. Grants get a partial index (a
    # few rows per account, next to millions of holds), accounts one by creation time.
    [
        """CREATE TABLE job_history_v5 (
            seq INTEGER PRIMARY KEY,  -- global order; an SSE stream resumes after a seq
            job_id TEXT NOT NULL REFERENCES jobs(id),
            account_id TEXT NOT NULL,
            status TEXT NOT NULL,
            at REAL NOT NULL,
            detail TEXT
        )""",
        """INSERT INTO job_history_v5 (seq, job_id, account_id, status, at, detail)
            SELECT h.seq, h.job_id, j.account_id, h.status, h.at, h.detail
            FROM job_history h JOIN jobs j ON j.id = h.job_id ORDER BY h.seq""",
        "DROP TABLE job_history",  # and its index and triggers
        "ALTER TABLE job_history_v5 RENAME TO job_history",
        "CREATE INDEX job_history_job ON job_history(job_id)",
        "CREATE INDEX job_history_account ON job_history(account_id, seq)",
        """CREATE TRIGGER job_history_no_update BEFORE UPDATE ON job_history
            BEGIN SELECT RAISE(ABORT, 'job_history is append-only'); END""",
        """CREATE TRIGGER job_history_no_delete BEFORE DELETE ON job_history
            BEGIN SELECT RAISE(ABORT, 'job_history is append-only'); END""",
        """CREATE INDEX credit_entries_grants ON credit_entries(account_id, id)
            WHERE kind = 'grant'""",
        "CREATE INDEX accounts_created ON accounts(created_at, id)",
    ],
    # 6: every output of a job, and orphans. ``outputs`` is a JSON list of a completed
    # job's outputs (key, content type, size, name, source), ``result_key`` staying the
    # first one's key. An orphan is a submit in doubt whose job moved on to a new attempt:
    # the vendor may run the task it may have created until ``until``, so a restarted
    # processor holds a slot for it until then, or until it showed itself ended. (Since
    # 2026-11-30 also the known task of a job that ended before the vendor confirmed its
    # cancel, ``task_id`` set from the start: runtime.models.RecordOrphan.)
    [
        "ALTER TABLE jobs ADD COLUMN outputs TEXT",
        """CREATE TABLE orphans (
            job_id TEXT NOT NULL REFERENCES jobs(id),
            attempt INTEGER NOT NULL,
            vendor TEXT NOT NULL,
            model TEXT NOT NULL,  -- the vendor's name for the model
            since REAL NOT NULL,  -- when the submit went out
            until REAL NOT NULL,
            ended_at REAL,
            task_id TEXT,
            PRIMARY KEY (job_id, attempt)
        ) WITHOUT ROWID""",
        "CREATE INDEX orphans_open ON orphans(vendor, until) WHERE ended_at IS NULL",
    ],
    # 7: many customers. API keys get a table of their own (several per account, revoked
    # or rotated, with a revocation feed and their last use); the account's one key hash
    # moves there, and the accounts table is rebuilt without it, with the per-account
    # limits the admin sets (NULL: the [gateway] default). Grants remember their grant id,
    # amount and answer per account (Stripe-style replays); the creation grant has no id,
    # so it never collides with a later one. Counters for the gauges; a partial index for
    # the open dead letters; prices of 0 (see RELAXED_CHECKS).
    [
        """CREATE TABLE accounts_v7 (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            balance INTEGER NOT NULL DEFAULT 0,  -- cached: grants - captures
            held INTEGER NOT NULL DEFAULT 0,     -- cached: open holds
            in_flight INTEGER NOT NULL DEFAULT 0,  -- cached: jobs not yet terminal
            max_jobs_in_flight INTEGER CHECK (max_jobs_in_flight >= 1),
            submits_per_second REAL CHECK (submits_per_second >= 0),
            submit_burst INTEGER CHECK (submit_burst >= 1),
            CHECK (held >= 0 AND balance >= held)
        ) WITHOUT ROWID""",
        """INSERT INTO accounts_v7 (id, name, created_at, balance, held, in_flight)
            SELECT id, name, created_at, balance, held, in_flight FROM accounts""",
        """CREATE TABLE api_keys (
            seq INTEGER PRIMARY KEY,  -- creation order: keyset pagination
            id TEXT NOT NULL UNIQUE,
            account_id TEXT NOT NULL REFERENCES accounts(id),
            hash TEXT NOT NULL UNIQUE,  -- sha256 hex of the key; the key is never stored
            prefix TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            revoked_at REAL,
            expires_at REAL,  -- refused from then on; NULL: until revoked
            revoked_seq INTEGER UNIQUE,  -- position in the revocation feed gateways follow
            last_used_at REAL
        )""",
        """INSERT INTO api_keys (id, account_id, hash, prefix, name, created_at)
            SELECT 'key_' || lower(hex(randomblob(12))), id, api_key_hash, '',
                'created with the account', created_at
            FROM accounts ORDER BY created_at, id""",
        "DROP TABLE accounts",  # and its indexes; foreign keys are off while migrating
        "ALTER TABLE accounts_v7 RENAME TO accounts",
        "CREATE INDEX accounts_created ON accounts(created_at, id)",
        "CREATE INDEX api_keys_account ON api_keys(account_id, seq)",
        """CREATE TABLE grant_requests (
            account_id TEXT NOT NULL REFERENCES accounts(id),
            grant_id TEXT NOT NULL,
            amount INTEGER NOT NULL,
            balance INTEGER,  -- the first answer, replayed; NULL for grants before v7
            held INTEGER,
            created_at REAL NOT NULL,
            PRIMARY KEY (account_id, grant_id)
        ) WITHOUT ROWID""",
        # Grants before v7 had refs "<account>:<grant id>" (the creation grant's id was
        # "initial"; it stays taken on those accounts, answered 409 or replayed, never
        # silently). New user grants keep that ref; the creation grant's ref is the bare
        # account id.
        """INSERT OR IGNORE INTO grant_requests (account_id, grant_id, amount, created_at)
            SELECT account_id,
                CASE WHEN substr(ref, 1, length(account_id) + 1) = account_id || ':'
                     THEN substr(ref, length(account_id) + 2) ELSE ref END,
                amount, created_at
            FROM credit_entries WHERE kind = 'grant' AND ref IS NOT NULL ORDER BY id""",
        """CREATE TABLE ledger_counters (
            name TEXT PRIMARY KEY,
            n INTEGER NOT NULL
        ) WITHOUT ROWID""",
        *(
            f"""INSERT INTO ledger_counters (name, n)
                SELECT 'jobs_{status}', count(*) FROM jobs WHERE status = '{status}'"""
            for status in COUNTED_STATUSES
        ),
        f"""INSERT INTO ledger_counters (name, n)
            SELECT '{DEAD_LETTERS_OPEN}', count(*) FROM dead_letters WHERE redriven_to IS NULL""",
        """CREATE INDEX dead_letters_open ON dead_letters(created_at, job_id)
            WHERE redriven_to IS NULL""",
        _relax_checks,
    ],
    # 8: money. What each vendor attempt cost the operator (billed tasks, once per job and
    # attempt, whatever became of the job). A failed job may keep a fee: one capture of
    # the fee and one release of the rest (I2), so a job's entries are now unique per
    # (job, kind) and a trigger allows a second settlement only as that pair, on a failed
    # job, summing to its hold. Entries get a note (the fee's reason). Accounts get their
    # weight in the fair share of vendor slots and their input-rejection throttle.
    [
        """CREATE TABLE vendor_charges (
            job_id TEXT NOT NULL REFERENCES jobs(id),
            attempt INTEGER NOT NULL,
            account_id TEXT NOT NULL,
            vendor TEXT NOT NULL,
            model TEXT NOT NULL,  -- jobline's model name
            outcome TEXT NOT NULL,  -- runtime.models.CHARGE_OUTCOMES
            cost_micros INTEGER NOT NULL CHECK (cost_micros >= 0),  -- 1e-6 currency units
            at REAL NOT NULL,
            PRIMARY KEY (job_id, attempt)
        ) WITHOUT ROWID""",
        "CREATE INDEX vendor_charges_at ON vendor_charges(at)",
        "ALTER TABLE credit_entries ADD COLUMN note TEXT",
        "DROP INDEX credit_entries_job",
        """CREATE UNIQUE INDEX credit_entries_job
            ON credit_entries(job_id, kind) WHERE job_id IS NOT NULL""",
        f"""CREATE TRIGGER credit_entries_settled_once BEFORE INSERT ON credit_entries
            WHEN NEW.kind IN ('capture', 'release') AND EXISTS (
                SELECT 1 FROM credit_entries
                WHERE job_id = NEW.job_id AND kind IN ('capture', 'release'))
            BEGIN SELECT RAISE(ABORT, '{SETTLED_ONCE}') WHERE NOT coalesce(
                NEW.kind = 'release'
                AND (SELECT status FROM jobs WHERE id = NEW.job_id) = 'failed'
                AND (SELECT amount FROM credit_entries
                     WHERE job_id = NEW.job_id AND kind = 'capture') > 0
                AND (SELECT amount FROM credit_entries
                     WHERE job_id = NEW.job_id AND kind = 'capture') + NEW.amount
                    = (SELECT amount FROM credit_entries
                       WHERE job_id = NEW.job_id AND kind = 'hold'), 0);
            END""",
        "ALTER TABLE accounts ADD COLUMN slot_weight REAL CHECK (slot_weight > 0)",
        "ALTER TABLE accounts ADD COLUMN input_rejections REAL NOT NULL DEFAULT 0",
        "ALTER TABLE accounts ADD COLUMN input_rejections_at REAL",
        "ALTER TABLE accounts ADD COLUMN throttled_until REAL",
    ],
]
SCHEMA_VERSION = len(MIGRATIONS)
