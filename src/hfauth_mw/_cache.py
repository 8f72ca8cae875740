"""The introspection cache: bounded, TTL'd, thread-safe, with single flight.

Design, and why:

* Keys are ``namespace + SHA-256(token)``: a cache dump or a debugger never
  shows a token, and two sources never read each other's answers.
* Positive answers live in a ``TLRUCache`` whose per-entry lifetime is the
  shorter of ``ttl`` and the token's own remaining life, so nothing outlives
  the token's expiry (RFC 7662 section 4).
* Negative answers live in a separate ``TLRUCache`` with a shorter TTL, so a flood of
  random tokens evicts other random tokens, never good entries.
* "Unavailable" is never stored: the next request asks again.
* Stale-if-error (off by default): a positive answer is kept up to
  ``stale_if_error`` seconds past its freshness, never past the token's
  expiry, and served only when the source fails. Negative answers are never
  served stale.
* Single flight: the first request for a cold token becomes the leader and
  introspects; every other request for that token waits on the leader's
  :class:`concurrent.futures.Future`, which threads wait on directly and
  coroutines through :func:`asyncio.wrap_future`, so one mechanism serves
  sync and async callers alike.
* Counters (hits, negative hits, misses, joined flights) are plain integers
  updated inside the lock :meth:`TokenCache.begin` already holds: exact, and
  free on the hot path.
* A *generation* number changes on every invalidation; a flight that started
  before one does not store its answer (it may predate a revocation).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass

from cachetools import TLRUCache

from ._exceptions import ConfigurationError
from ._metrics import count_value
from ._principal import Principal
from ._source_protocol import EXPIRED, Invalid, Outcome, Valid

__all__ = [
    "DEFAULT_MAXSIZE",
    "DEFAULT_NEGATIVE_MAXSIZE",
    "DEFAULT_NEGATIVE_TTL",
    "DEFAULT_TTL",
    "Leader",
    "TokenCache",
]

#: 60 s: a revoked token stops working within a minute while a busy token costs
#: the Hub one call a minute. Reference gateways use 30 s; the Hub's whoami-v2
#: is heavily rate-limited, so we lean to fewer calls.
DEFAULT_TTL = 60.0
#: 10 s: long enough that a client retrying a bad token does not reach the Hub
#: on every try, short enough that a token created a moment ago soon works.
DEFAULT_NEGATIVE_TTL = 10.0
#: About 10,000 entries (APIcast's bound); a principal is well under 2 KiB.
DEFAULT_MAXSIZE = 10_000
DEFAULT_NEGATIVE_MAXSIZE = 10_000
#: TTLs above an hour mean revocations go unseen for too long.
MAX_TTL = 3600.0


@dataclass(frozen=True, slots=True)
class Leader:
    """Returned by :meth:`TokenCache.begin` to the one request that must introspect.

    ``stale`` is the expired positive answer the leader may fall back on if
    the source fails and stale-if-error is on; ``None`` otherwise.
    ``generation`` is the cache's invalidation generation when the flight began.
    """

    key: bytes
    future: Future[Outcome]
    stale: Valid | None = None
    generation: int = 0


def _negative_until(_key: bytes, entry: tuple[Invalid, float], _now: float) -> float:
    return entry[1]


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A positive answer in the in-process cache.

    ``fresh_until`` is on the cache's ``timer``; ``expires`` is the token's
    own expiry as a POSIX timestamp (on the ``clock``), or ``None``.
    """

    outcome: Valid
    fresh_until: float
    expires: float | None


class _PositiveStore(TLRUCache[bytes, CacheEntry]):
    """A TLRUCache that mirrors its entries in a plain dict, for lock-free reads.

    cachetools bounds and expires the entries (under the cache's lock); the
    mirror follows every insertion, deletion, eviction and expiry. Reads go to
    the mirror with no lock and no bookkeeping: a hit costs one dict lookup
    and one clock read. The price: reads do not refresh recency, so when full
    the store evicts the least recently *stored* token, which is re-stored on
    its next check anyway.
    """

    def __init__(
        self,
        maxsize: int,
        ttu: Callable[[bytes, CacheEntry, float], float],
        timer: Callable[[], float],
    ) -> None:
        super().__init__(maxsize, ttu, timer)
        self.readable: dict[bytes, CacheEntry] = {}

    def __setitem__(self, key: bytes, value: CacheEntry) -> None:
        super().__setitem__(key, value)
        if key in self:  # cachetools drops a value that is already past its lifetime
            self.readable[key] = value
        else:
            self.readable.pop(key, None)

    def __delitem__(self, key: bytes) -> None:
        super().__delitem__(key)
        self.readable.pop(key, None)

    def popitem(self) -> tuple[bytes, CacheEntry]:
        key, value = super().popitem()
        self.readable.pop(key, None)
        return key, value

    def clear(self) -> None:
        super().clear()
        self.readable.clear()

    def expire(self, time: float | None = None) -> list[tuple[bytes, CacheEntry]]:
        expired = list(super().expire(time))
        for key, _ in expired:
            self.readable.pop(key, None)
        return expired


class TokenCache:
    """Bounded positive and negative caches of introspection outcomes.

    ``timer`` measures TTLs (monotonic by default); ``clock`` is wall-clock
    time, used only to compare with token expiry times. Tests inject both.
    ``negative_ttl`` defaults to 10 s, or ``ttl`` if that is shorter (so
    ``TokenCache(ttl=0)`` turns caching off).
    """

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_TTL,
        negative_ttl: float | None = None,
        maxsize: int = DEFAULT_MAXSIZE,
        negative_maxsize: int = DEFAULT_NEGATIVE_MAXSIZE,
        stale_if_error: float = 0.0,
        timer: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 <= ttl <= MAX_TTL:
            raise ConfigurationError(f"ttl must be between 0 and {MAX_TTL:g} seconds, got {ttl}")
        if negative_ttl is None:  # the default, never longer than the positive TTL
            negative_ttl = min(DEFAULT_NEGATIVE_TTL, ttl)
        if not 0 <= negative_ttl <= ttl or negative_ttl > MAX_TTL:
            raise ConfigurationError(
                f"negative_ttl must be between 0 and ttl ({ttl:g} s), got {negative_ttl}"
            )
        if maxsize < 1 or negative_maxsize < 1:
            raise ConfigurationError("maxsize and negative_maxsize must be at least 1")
        if not 0 <= stale_if_error <= MAX_TTL:
            raise ConfigurationError(
                f"stale_if_error must be between 0 (off) and {MAX_TTL:g} seconds, "
                f"got {stale_if_error}"
            )
        self.ttl = ttl
        self.stale_if_error = stale_if_error
        self.negative_ttl = negative_ttl
        self.timer = timer
        self.clock = clock
        self._positive = _PositiveStore(maxsize, self._keep_until, timer)
        #: The positive entries by key, fresh or kept for stale-if-error: a
        #: lock-free mirror for the hot path (Authenticator.fresh). Read only.
        self.readable = self._positive.readable
        # Each negative entry carries the moment it stops counting: negative_ttl,
        # or less for an answer that already aged in a shared tier.
        self._negative: TLRUCache[bytes, tuple[Invalid, float]] = TLRUCache(
            negative_maxsize, _negative_until, timer
        )
        self._inflight: dict[bytes, Future[Outcome]] = {}
        self._lock = threading.Lock()
        self._generation = 0
        #: Lookups answered with a fresh positive / a negative entry, flights
        #: started (misses) and flights joined, since start. Positive hits are
        #: counted without the lock (itertools.count is atomic under the GIL):
        #: ``next(hit_counter)``, which the authenticator's hot path also calls.
        self.hit_counter = itertools.count()
        self.negative_hits = 0
        self.misses = 0
        self.joins = 0

    def __repr__(self) -> str:
        return (
            f"TokenCache(ttl={self.ttl:g}, negative_ttl={self.negative_ttl:g}, "
            f"size={len(self._positive)}/{self._positive.maxsize}, "
            f"negative_size={len(self._negative)}/{self._negative.maxsize})"
        )

    def has_expired(self, principal: Principal) -> bool:
        """Whether ``principal``'s token has expired, by this cache's clock."""
        expires_at = principal.expires_at
        return expires_at is not None and expires_at.timestamp() <= self.clock()

    def lifetime(self, outcome: Valid) -> float:
        """Seconds the answer is fresh: the TTL, capped by the token's remaining life."""
        expires_at = outcome.principal.expires_at
        if expires_at is None:
            return self.ttl
        return min(self.ttl, expires_at.timestamp() - self.clock())

    def _keep_until(self, _key: bytes, entry: CacheEntry, now: float) -> float:
        # Kept past freshness only for stale-if-error, and never past the token's expiry.
        keep = entry.fresh_until + self.stale_if_error
        if entry.expires is not None:
            keep = min(keep, now + entry.expires - self.clock())
        return keep

    @property
    def hits(self) -> int:
        return count_value(self.hit_counter)

    def fresh(self, key: bytes) -> Valid | None:
        """The fresh positive answer for ``key``, without taking the lock (the hot path)."""
        entry = self.readable.get(key)
        if entry is not None and self.timer() < entry.fresh_until:
            next(self.hit_counter)
            return entry.outcome
        return None

    def get(self, key: bytes) -> Outcome | None:
        """The fresh cached outcome for ``key``, or ``None``."""
        fresh = self.fresh(key)
        if fresh is not None:
            return fresh
        with self._lock:
            negative = self._negative.get(key)
        return None if negative is None else negative[0]

    def begin(self, key: bytes) -> Outcome | Leader | Future[Outcome]:
        """Start a lookup: a cached outcome, the leadership of a new flight, or
        the running flight to wait for."""
        fresh = self.fresh(key)
        if fresh is not None:
            return fresh
        with self._lock:
            # A running flight first: it cheapens a stampede's waiters, and no
            # answer is stored for a key while its flight runs (complete()
            # stores and ends the flight under this lock).
            running = self._inflight.get(key)
            if running is not None:
                self.joins += 1
                return running
            # cachetools' view is expiry-aware: past the stale window it has no entry.
            entry = self._positive.get(key)
            if entry is not None and self.timer() < entry.fresh_until:
                next(self.hit_counter)  # stored by another thread a moment ago
                return entry.outcome
            negative = self._negative.get(key)
            if negative is not None:
                self.negative_hits += 1
                return negative[0]
            self.misses += 1
            future: Future[Outcome] = Future()
            self._inflight[key] = future
            return Leader(
                key, future, entry.outcome if entry is not None else None, self._generation
            )

    def complete(
        self,
        leader: Leader,
        outcome: Outcome,
        *,
        store: bool = True,
        max_age: float | None = None,
    ) -> None:
        """Store the leader's outcome (unless ``store`` is false, or the cache was
        invalidated since the flight began) and wake every waiter.

        ``max_age`` caps how long the answer stays fresh here (for an answer
        read from a shared tier, where it already aged).
        """
        with self._lock:
            if store and leader.generation == self._generation:
                self._store(leader.key, outcome, max_age)
            self._inflight.pop(leader.key, None)
        if not leader.future.done():
            leader.future.set_result(outcome)

    def _store(self, key: bytes, outcome: Outcome, max_age: float | None = None) -> None:
        if isinstance(outcome, Valid) and self.has_expired(outcome.principal):
            outcome = EXPIRED
        if isinstance(outcome, Invalid):
            # The source has said no: an older positive answer, kept for
            # stale-if-error, must never be served again.
            self._positive.pop(key, None)
            lifetime = self.negative_ttl if max_age is None else min(self.negative_ttl, max_age)
            if lifetime > 0:
                self._negative[key] = (outcome, self.timer() + lifetime)
        elif self.ttl > 0:
            now = self.timer()
            lifetime = self.lifetime(outcome)
            if max_age is not None:
                lifetime = min(lifetime, max_age)
            expires_at = outcome.principal.expires_at
            expires = None if expires_at is None else expires_at.timestamp()
            self._positive[key] = CacheEntry(outcome, now + lifetime, expires)

    def flight(self, key: bytes) -> Future[Outcome] | None:
        """The running flight for ``key``, if any (to wait for its answer
        without leading one)."""
        with self._lock:
            return self._inflight.get(key)

    def is_current(self, leader: Leader) -> bool:
        """Whether nothing was invalidated since ``leader``'s flight began (then
        what it knew at the start, such as its stale answer, may still be used)."""
        return leader.generation == self._generation

    def abandon(self, leader: Leader, error: BaseException) -> None:
        """End a flight that could not get an outcome; waiters get ``error``. Nothing is stored."""
        with self._lock:
            self._inflight.pop(leader.key, None)
        if not leader.future.done():
            leader.future.set_exception(error)

    def invalidate(self, key: bytes) -> None:
        """Forget what is known about one key (positive and negative)."""
        with self._lock:
            self._generation += 1
            self._positive.pop(key, None)
            self._negative.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._positive.clear()
            self._negative.clear()

    def drop_matching(self, predicate: Callable[[bytes], bool]) -> int:
        """Forget every entry whose key satisfies ``predicate``; returns how many.

        In-flight lookups that began before the call will not store their
        answers. ``predicate`` runs outside the lock, on a snapshot of the keys.
        """
        with self._lock:
            self._generation += 1
            keys = [*self._positive.keys(), *self._negative.keys()]
        doomed = [key for key in keys if predicate(key)]
        dropped = 0
        with self._lock:
            # Again: a flight begun while the predicate ran saw the doomed
            # entries (as its stale answer) under the generation bumped above.
            self._generation += 1
            for key in doomed:
                dropped += (self._positive.pop(key, None) is not None) + (
                    self._negative.pop(key, None) is not None
                )
        return dropped

    def __len__(self) -> int:
        with self._lock:
            return len(self._positive) + len(self._negative)

    @property
    def maxsize(self) -> int:
        """At most this many valid tokens are cached."""
        return int(self._positive.maxsize)

    @property
    def inflight(self) -> int:
        """How many introspections are running now."""
        return len(self._inflight)
