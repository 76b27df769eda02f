"""Who is calling: API keys checked against the ledger, cached, revoked, and failed
attempts bounded per source address.

Theory of operation
-------------------
A request's API key is hashed (SHA-256, as the ledger stores it) and looked up in this
replica's ``KeyCache``:

- a known key, not expired: its account, with no ledger read;
- a key found unknown a moment ago: 401, with no ledger read (``unknown_key_cache_ttl``);
- anything else is read from the ledger, concurrent lookups in one actor call. Before
  that read, the request's source address must have a token in its ``FailedAuthLimits``
  bucket (else 429 with ``Retry-After``); a lookup that finds nothing takes one, into
  debt if need be (at most one burst's worth). Clients that guess keys, or send a stale
  one in a loop, pay for their own lookups and cannot queue ledger reads in front of
  other accounts' requests; a valid key never takes a token, and a key that was valid
  when its cache entry ended is read again without asking the bucket (it is no guess:
  an office behind one address keeps working while a guesser there is held back).

Revocation. Positive entries live ``key_cache_ttl`` at most. Besides, one
``RevocationFeed`` per replica reads the ledger's feed of revoked keys every
``key_revocation_poll`` seconds (one small read, however many keys are cached) and gives
each cached key its new end (``expires_at``: now, or later for a rotation's grace
period). A key is therefore refused on every replica within about a poll interval. The
feed's position is read before the first key is cached, so no revocation can slip in
between a lookup and the feed.

Last use is noted in memory and written every ``key_use_flush_interval`` as one
``RecordKeyUse`` (one ledger operation per flush, not a write per request).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from runtime.api.errors import HttpRefusal, retry_after_value
from runtime.batching import Coalescer
from runtime.clock import Clock
from runtime.config import GatewayConfig
from runtime.errors import Unauthorized
from runtime.models import KeyMatch, KeyRevocation, LedgerOp, Outcome, RecordKeyUse
from runtime.policies import TokenBucket
from runtime.telemetry import get_logger

log = get_logger("gateway")

KEY_CACHE_SIZE = 100_000
SOURCES_TRACKED = 10_000  # source addresses with a failed-auth bucket (oldest dropped)
REVOCATION_PAGE = 1000

Lookup = Callable[[list[str]], Awaitable[list[KeyMatch | None]]]
Revocations = Callable[[int | None], Awaitable[tuple[int, list[KeyRevocation]]]]
Execute = Callable[[LedgerOp], Awaitable[Outcome]]


def key_hash(api_key: str) -> str:
    """What the ledger stores of an API key: its SHA-256, hex."""
    return hashlib.sha256(api_key.encode("utf-8")).hexdigest()


def bearer(request: web.Request) -> str | None:
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or not value.isascii():
        return None
    return value


@dataclass(slots=True)
class _Entry:
    match: KeyMatch | None  # None: no such key
    until: float  # the entry is forgotten then


class KeyCache:
    """Key hash -> the key's match (or "unknown"), each entry with its own end; bounded."""

    def __init__(self, capacity: int = KEY_CACHE_SIZE) -> None:
        self._capacity = capacity
        self._entries: dict[str, _Entry] = {}
        self._hashes: dict[str, str] = {}  # key id -> hash, for revocations

    def get(self, hashed: str) -> _Entry | None:
        """The entry, even one past its ``until`` (the caller tells fresh from stale): a
        stale entry is kept until a new answer or the capacity replaces it."""
        return self._entries.get(hashed)

    def put(self, hashed: str, match: KeyMatch | None, until: float) -> None:
        if hashed not in self._entries and len(self._entries) >= self._capacity:
            self._drop(next(iter(self._entries)))  # the oldest entry
        self._entries[hashed] = _Entry(match, until)
        if match is not None:
            self._hashes[match.key_id] = hashed

    def revoke(self, key_id: str, expires_at: float) -> None:
        """The key ends at ``expires_at`` (a revoke, or a rotation's grace period)."""
        hashed = self._hashes.get(key_id)
        entry = self._entries.get(hashed) if hashed is not None else None
        if entry is None or entry.match is None:
            return
        ends = entry.match.expires_at
        if ends is None or expires_at < ends:
            entry.match = KeyMatch(entry.match.account_id, key_id, expires_at)

    def _drop(self, hashed: str) -> None:
        entry = self._entries.pop(hashed, None)
        if entry is not None and entry.match is not None:
            self._hashes.pop(entry.match.key_id, None)

    def __len__(self) -> int:
        return len(self._entries)


class FailedAuthLimits:
    """A token bucket per source address for lookups that find no key; bounded.

    A lookup in flight counts against its source's tokens until it ends (``begin`` ...
    ``end``), so a burst of concurrent guesses is cut at the bucket's size too; only one
    that found nothing takes its token.
    """

    def __init__(self, rate: float, burst: int, capacity: int = SOURCES_TRACKED) -> None:
        self._rate = rate
        self._burst = burst
        self._capacity = capacity
        self._buckets: dict[str, TokenBucket] = {}
        self._in_flight: dict[str, int] = {}

    def begin(self, source: str, now: float) -> float:
        """0 and one lookup of ``source`` in flight, or the seconds it must wait first."""
        bucket = self._buckets.get(source)
        in_flight = self._in_flight.get(source, 0)
        spare = (self._burst if bucket is None else bucket.available(now)) - in_flight
        if spare < 1:
            return (1 - spare) / self._rate
        self._in_flight[source] = in_flight + 1
        return 0.0

    def end(self, source: str, now: float, *, failed: bool) -> None:
        in_flight = self._in_flight.pop(source, 1) - 1
        if in_flight > 0:
            self._in_flight[source] = in_flight
        if not failed:
            return
        bucket = self._buckets.pop(source, None)
        if bucket is None:
            if len(self._buckets) >= self._capacity:
                del self._buckets[next(iter(self._buckets))]
            bucket = TokenBucket(self._rate, self._burst)
        self._buckets[source] = bucket  # most recently failed last
        if bucket.available(now) > -self._burst:
            bucket.reserve(now)  # into debt: a burst of guesses is paid back, up to a burst


class RevocationFeed:
    """Follows the ledger's feed of revoked keys (see the module docstring)."""

    def __init__(self, read: Revocations, cache: KeyCache, poll_interval: float) -> None:
        self._read = read
        self._cache = cache
        self._poll_interval = poll_interval
        self._seq: int | None = None
        self._started: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def ready(self) -> None:
        """Once: where the feed ends now; then the poll runs. Raises if it cannot be read."""
        started = self._started
        if started is None or (
            started.done() and (started.cancelled() or started.exception() is not None)
        ):
            self._started = started = asyncio.ensure_future(self._start())
        await asyncio.shield(started)

    async def _start(self) -> None:
        self._seq, _ = await self._read(None)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def poll_once(self) -> None:
        assert self._seq is not None
        while True:
            seq, revoked = await self._read(self._seq)
            for revocation in revoked:
                self._cache.revoke(revocation.key_id, revocation.expires_at)
            self._seq = seq
            if len(revoked) < REVOCATION_PAGE:
                return

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._poll_interval)  # loop time, as the event watcher
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # cached keys still end at key_cache_ttl
                log.warning("the key revocation feed could not be read: %r", exc)

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()


class Authenticator:
    """API key -> account id for one gateway replica (see the module docstring)."""

    def __init__(
        self,
        config: GatewayConfig,
        clock: Clock,
        lookup: Lookup,
        revocations: Revocations,
        execute: Execute,
    ) -> None:
        self._config = config
        self._clock = clock
        self._execute = execute
        self.cache = KeyCache()
        self.failures = FailedAuthLimits(config.failed_auths_per_second, config.failed_auth_burst)
        self.feed = RevocationFeed(revocations, self.cache, config.key_revocation_poll)
        self._lookups: Coalescer[str, KeyMatch | None] = Coalescer(lookup)
        self._pending: dict[str, asyncio.Future[KeyMatch | None]] = {}
        self._uses: dict[str, float] = {}
        self._flusher: asyncio.Task[None] | None = None
        self.lookups = 0  # keys read from the ledger (a benchmark and tests count them)

    async def account(self, request: web.Request) -> str:
        """The account of the request's API key; 401 without a valid one, 429 for a source
        whose unknown keys come too fast."""
        api_key = bearer(request)
        if api_key is None:
            raise Unauthorized("send the API key as Authorization: Bearer <key>")
        hashed = key_hash(api_key)
        now = self._clock.time()
        entry = self.cache.get(hashed)
        if entry is not None and now < entry.until:
            match = entry.match
        else:
            known = entry is not None and entry.match is not None
            match = await self._look_up(hashed, request, now, known)
        if match is None:
            raise Unauthorized("unknown API key")
        if match.expires_at is not None and now >= match.expires_at:
            raise Unauthorized("this API key was revoked")
        self._note_use(match.key_id, now)
        return match.account_id

    def revoked(self, key_id: str, expires_at: float) -> None:
        """This replica revoked the key: no need to wait for the feed."""
        self.cache.revoke(key_id, expires_at)

    async def _look_up(
        self, hashed: str, request: web.Request, now: float, known: bool
    ) -> KeyMatch | None:
        """The ledger's answer for ``hashed``; ``known``: it was a valid key before."""
        pending = self._pending.get(hashed)
        if pending is not None:  # one lookup per key however many requests ask at once
            return await asyncio.shield(pending)
        source = request.remote or "unknown"
        limited = not known
        if limited:
            wait = self.failures.begin(source, now)
            if wait > 0:
                raise HttpRefusal(
                    429,
                    "too_many_failed_authentications",
                    "too many unknown API keys from this address; retry after Retry-After seconds",
                    {"Retry-After": str(retry_after_value(wait))},
                )
        failed = False  # only a lookup that answered "no such key" takes a token
        try:
            await self.feed.ready()
            pending = asyncio.ensure_future(self._lookup_and_cache(hashed))
            self._pending[hashed] = pending
            pending.add_done_callback(lambda _: self._pending.pop(hashed, None))
            self.lookups += 1
            match = await asyncio.shield(pending)
            failed = match is None
        finally:
            if limited:
                self.failures.end(source, self._clock.time(), failed=failed)
        return match

    async def _lookup_and_cache(self, hashed: str) -> KeyMatch | None:
        match = await self._lookups.call(hashed)
        now = self._clock.time()
        config = self._config
        if match is None:
            self.cache.put(hashed, None, now + config.unknown_key_cache_ttl)
        else:
            self.cache.put(hashed, match, now + config.key_cache_ttl)
        return match

    # --- last use ---------------------------------------------------------------------

    def _note_use(self, key_id: str, now: float) -> None:
        self._uses[key_id] = now
        if self._flusher is None:
            self._flusher = asyncio.get_running_loop().create_task(self._flush_every())

    async def _flush_every(self) -> None:
        while True:
            await asyncio.sleep(self._config.key_use_flush_interval)
            await self.flush_uses()

    async def flush_uses(self) -> None:
        """Write the last uses noted since the previous flush (one ledger operation)."""
        uses, self._uses = self._uses, {}
        if not uses:
            return
        try:
            outcome = await self._execute(RecordKeyUse(tuple(uses.items())))
            outcome.unwrap()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # best effort: keep them for the next flush
            log.warning("last key uses not recorded: %r", exc)
            for key_id, at in uses.items():
                self._uses[key_id] = max(at, self._uses.get(key_id, at))

    async def close(self) -> None:
        self.feed.close()
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.flush_uses(), 2.0)
