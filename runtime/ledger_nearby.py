"""Reading the ledger's own file, on the ledger's machine, without a call to its actor.

A status read (``GET /v1/jobs/{id}``) is a point read of one row. Through the ledger
actor it costs an actor call (a few ms of CPU across caller, callee and Ray's threads)
and a share of the one ledger's time, which is the ceiling of a whole cluster; on the
ledger's machine the same row can be read from the database file itself in a few tens of
microseconds. SQLite's WAL mode lets any number of readers run beside the one writer, and
a reader sees every transaction committed before its read began: the ledger answers a
write only after its commit, so a read here sees everything any caller has been told, as
a read through the actor would. The actor stays the single writer; nothing here writes.

It is only used when it is the same file: the ledger reports its file's identity
(``FileIdentity``: the machine's boot id, the file's device and inode) and a reader uses
the file at the configured path only if it has that identity (so not on another node,
not a copy, not a file put in the ledger's place). The identity is asked again every
``RECHECK_INTERVAL`` seconds, and the path is looked at before each read (a file renamed
over it stops the reads at once). Anything unexpected (no such file, a different one, an
SQLite error) answers None, and the caller reads through the actor as before. A job not
found here is read through the actor too, so a reader can never answer 404 for a job the
ledger has.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from runtime import ledger_reads as reads
from runtime.models import Job
from runtime.telemetry import get_logger

log = get_logger("ledger_nearby")

BOOT_ID = Path("/proc/sys/kernel/random/boot_id")  # Linux: new at every boot
RECHECK_INTERVAL = 5.0  # seconds between asking the ledger for its file's identity
BUSY_TIMEOUT_S = 1.0  # a WAL reader waits only while SQLite recovers the WAL index


@dataclass(frozen=True)
class FileIdentity:
    """Which file on which machine: equal identities are the same file."""

    boot_id: str
    device: int
    inode: int


def same_file(path: Path, identity: FileIdentity) -> bool:
    """Whether the file at ``path`` is still ``identity``'s (the machine cannot change
    under a running process: only the device and inode are looked at, one ``stat``)."""
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return (stat.st_dev, stat.st_ino) == (identity.device, identity.inode)


def file_identity(path: Path) -> FileIdentity | None:
    """The identity of the file at ``path`` on this machine; None if there is none (no
    file, or a system without a boot id)."""
    try:
        boot_id = BOOT_ID.read_text().strip()
        stat = os.stat(path)
    except OSError:
        return None
    return FileIdentity(boot_id, stat.st_dev, stat.st_ino)


class NearbyLedgerReads:
    """Point reads of jobs from the ledger's file when this process is on its machine.

    ``identity`` asks the ledger for its file's identity (None: it has no file, e.g. a
    simulation's in-memory ledger). ``now`` is a monotonic clock in seconds.
    """

    def __init__(
        self,
        path: Path,
        identity: Callable[[], Awaitable[FileIdentity | None]],
        now: Callable[[], float],
    ) -> None:
        self._path = path
        self._identity = identity
        self._now = now
        self._verified: FileIdentity | None = None  # the file the connection reads
        self._checked_at: float | None = None
        self._checking: asyncio.Task[None] | None = None
        self._conn: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None

    @property
    def active(self) -> bool:
        return self._conn is not None

    async def jobs(self, job_ids: list[str]) -> list[Job | None] | None:
        """The jobs read from the ledger's file, in the order asked (None for a job not
        there); None if this process cannot read the file now (read through the actor)."""
        self._check_when_due()
        conn, verified = self._conn, self._verified
        if conn is None or verified is None or self._executor is None:
            return None
        if not same_file(self._path, verified):  # renamed over, removed: stop at once
            self._close()
            self._checked_at = None  # and ask the ledger again at the next read
            return None
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, reads.jobs, conn, job_ids)
        except sqlite3.Error as exc:
            log.warning("reading the ledger's file failed; reading through the ledger",
                        extra={"error": str(exc)})  # fmt: skip
            self._close()
            return None

    def close(self) -> None:
        if self._checking is not None:
            self._checking.cancel()
        self._close()

    def _check_when_due(self) -> None:
        due = self._checked_at is None or self._now() - self._checked_at >= RECHECK_INTERVAL
        if due and self._checking is None:
            self._checked_at = self._now()
            self._checking = asyncio.get_running_loop().create_task(self._check())

    async def _check(self) -> None:
        """Open the file if it is the ledger's; close it if it no longer is."""
        try:
            theirs = await self._identity()
        except Exception:  # the ledger unreachable: keep what was verified, ask again later
            theirs = self._verified
        finally:
            self._checking = None
        if theirs is None or file_identity(self._path) != theirs:
            self._close()
            return
        if self._conn is None or self._verified != theirs:
            self._close()
            self._open(theirs)

    def _open(self, identity: FileIdentity) -> None:
        try:
            conn = sqlite3.connect(
                str(self._path),
                isolation_level=None,
                timeout=BUSY_TIMEOUT_S,
                check_same_thread=False,  # opened here, used only on the executor's thread
            )
            conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            log.warning("the ledger's file cannot be read here; reading through the ledger",
                        extra={"error": str(exc)})  # fmt: skip
            return
        self._conn, self._verified = conn, identity
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="jobline-nearby-reads")

    def _close(self) -> None:
        conn, executor = self._conn, self._executor
        self._conn = self._verified = self._executor = None
        if executor is not None:
            if conn is not None:
                executor.submit(conn.close)  # after any read still running on it
            executor.shutdown(wait=False)
        elif conn is not None:
            conn.close()
