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
import contextlib
import ctypes
import math
import os
import sqlite3
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from runtime import ledger_reads as reads
from runtime.ledger_schema import JOB_COLUMNS, job_from_row
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
    under a running process: only the device and inode are looked at)."""
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


PULL_INTERVAL = 0.01  # seconds between two looks where the WAL file cannot be watched
IN_MODIFY = 0x00000002  # inotify(7): the file was written
# A commit is written to the WAL before it becomes visible (its fsync and the WAL index
# come after the last write), so after a write the file is looked at every PULL_INTERVAL
# for this long (longer than a slow fsync); with no write for as long, the watcher
# sleeps until the next one.
HOT_WINDOW = 1.0


class WalWatch:
    """Wakes when the ledger's WAL file is written: every commit appends to it.

    Linux's inotify, reached through libc with ``ctypes`` (about twenty lines; the
    ``inotify_simple`` package would do the same): an idle ledger costs the watcher
    nothing, and a commit wakes it at once. ``open`` answers None where inotify is not
    there (another system) or the WAL file is missing; the caller then polls.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._written = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.written_at = -math.inf  # the loop's time of the last write seen

    @classmethod
    def open(cls, wal: Path) -> WalWatch | None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        except (OSError, AttributeError):
            return None
        if fd < 0:
            return None
        if int(libc.inotify_add_watch(fd, os.fsencode(wal), IN_MODIFY)) < 0:
            os.close(fd)
            return None
        return cls(fd)

    async def wait(self, timeout: float) -> None:
        """Until the file is written after the last ``wait`` returned, or ``timeout``."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._loop.add_reader(self._fd, self._readable)
        if not self._written.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._written.wait(), timeout)
        self._written.clear()  # before the caller looks: a later write wakes the next wait

    def hot(self) -> bool:
        """Whether the file was written within the last ``HOT_WINDOW`` seconds."""
        return self._loop is not None and self._loop.time() - self.written_at < HOT_WINDOW

    def _readable(self) -> None:
        with contextlib.suppress(BlockingIOError, InterruptedError):
            while os.read(self._fd, 4096):
                pass
        if self._loop is not None:
            self.written_at = self._loop.time()
        self._written.set()

    def close(self) -> None:
        if self._loop is not None:
            self._loop.remove_reader(self._fd)
            self._loop = None
        os.close(self._fd)


class NearbyQueue:
    """One vendor's newly opened jobs, pulled from the ledger's file on its machine.

    The gateway used to send every new job to its processor in a message of its own
    (an actor call per job at a paced rate). A processor on the ledger's machine instead
    looks at the file every ``PULL_INTERVAL`` seconds: ``max(seq)`` of the jobs (a few
    microseconds, inline: with no busy wait a look that finds the file busy is skipped),
    and only when it grew, the rows after its cursor that are queued on its vendor. The
    cursor is the processor's own and the jobs stay in the ledger until they end, so a
    look that fails loses nothing; the next one, or the sweeper, finds them.

    ``prime`` is called before the processor loads its queue from the ledger, so the
    cursor is at or before that load: no job falls between the two (one found by both
    is taken once, as a repeated dispatch is).
    """

    def __init__(
        self,
        path: Path,
        vendor: str,
        identity: Callable[[], Awaitable[FileIdentity | None]],
        now: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
        interval: float = PULL_INTERVAL,
    ) -> None:
        self._path = path
        self._vendor = vendor
        self._identity = identity
        self._now = now
        self._sleep = sleep
        self._interval = interval
        self._conn: sqlite3.Connection | None = None
        self._verified: FileIdentity | None = None
        self._cursor = 0
        self._checked_at: float | None = None
        self._watch: WalWatch | None = None

    @property
    def pulling(self) -> bool:
        """Whether new jobs of this vendor are pulled from the file (so gateways need not
        send them)."""
        return self._conn is not None

    async def prime(self) -> None:
        """Open the file if it is the ledger's, and put the cursor at its newest job."""
        await self._verify()

    async def run(self, take: Callable[[list[Job]], object], stopped: Callable[[], object]) -> None:
        """Hand every newly queued job of the vendor to ``take``; call ``stopped`` when
        the pulls stop (the file is no longer the ledger's), so the caller can load what
        gateways did not send meanwhile. Runs until cancelled."""
        while True:
            due = self._checked_at is None or self._now() - self._checked_at >= RECHECK_INTERVAL
            was_pulling = self.pulling
            if due:
                await self._verify()
            jobs = self._pull() if self.pulling else []
            if was_pulling and not self.pulling:
                stopped()
            if jobs:
                take(jobs)
            await self._wait()

    async def _wait(self) -> None:
        """Until the next look: ``PULL_INTERVAL`` while the WAL file is being written (or
        where it cannot be watched); else until it is written again (at most until the
        identity is due again)."""
        if not self.pulling:
            await self._sleep(RECHECK_INTERVAL)
        elif self._watch is not None and not self._watch.hot():
            await self._watch.wait(RECHECK_INTERVAL)
        else:
            await self._sleep(self._interval)

    def close(self) -> None:
        conn, self._conn, self._verified = self._conn, None, None
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.close()
        if conn is not None:
            conn.close()

    async def _verify(self) -> None:
        self._checked_at = self._now()
        try:
            theirs = await self._identity()
        except Exception:  # the ledger unreachable: keep what was verified, ask again later
            theirs = self._verified
        if theirs is None or file_identity(self._path) != theirs:
            self.close()
            return
        if self._conn is not None and self._verified == theirs:
            return
        self.close()
        try:
            conn = sqlite3.connect(str(self._path), isolation_level=None, timeout=0.0)
            conn.execute("PRAGMA query_only = ON")
            newest = conn.execute("SELECT max(seq) FROM jobs").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("the ledger's file cannot be read here; new jobs come by message",
                        extra={"vendor": self._vendor, "error": str(exc)})  # fmt: skip
            return
        self._conn, self._verified, self._cursor = conn, theirs, int(newest or 0)
        self._watch = WalWatch.open(self._path.with_name(self._path.name + "-wal"))

    def _pull(self) -> list[Job]:
        conn = self._conn
        assert conn is not None
        if self._verified is None or not same_file(self._path, self._verified):
            self.close()
            return []
        try:
            newest = int(conn.execute("SELECT max(seq) FROM jobs").fetchone()[0] or 0)
            if newest <= self._cursor:
                return []
            rows = conn.execute(
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE seq > ? AND seq <= ? AND vendor = ? "
                "AND status = 'queued' ORDER BY seq",
                (self._cursor, newest, self._vendor),
            ).fetchall()
        except sqlite3.Error as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return []  # the next look
            log.warning("reading the ledger's file failed; new jobs come by message",
                        extra={"vendor": self._vendor, "error": str(exc)})  # fmt: skip
            self.close()
            return []
        self._cursor = newest
        return [job_from_row(row) for row in rows]
