"""The Hub as the authority for repository decisions.

When the token source is a hub (:class:`~hfauth_mw.HubWhoamiSource`), a rule
that needs read or write access to a repository asks the hub's own
auth-check (:mod:`hfauth_mw._hub_access`): only the hub knows gate grants,
org token policies, security restrictions and resource groups. The local
rules (:mod:`hfauth_mw._rules`) still answer at once where they know the
answer for certain (a token that can write nowhere never writes: no call).

Decisions are cached per (token digest, repository, access) in a
:class:`DecisionCache`: positive answers 60 s (never past the token's
expiry), negative ones 10 s, both bounded, with one upstream call however
many requests wait for the same decision. Revoking or invalidating a token
drops its decisions. Upstream trouble (429, 5xx, timeouts, garbage) is a 503
with ``Retry-After``, counted by the same breaker as whoami-v2, never cached.

Like the rest of the core, :meth:`HubAuthority.flow` is a generator of work
for the drivers: it never does I/O itself.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import replace
from typing import Any, Literal

from cachetools import TLRUCache, TTLCache

from ._breaker_limiter import UpstreamBreaker
from ._credentials import Credentials
from ._drivers import AsyncDriver, SyncDriver, Work
from ._exceptions import InvalidToken, SourceUnavailable
from ._hub_access import HubAccessCheck
from ._principal import Principal
from ._rules import WRITE_PERMISSION, Access, Decision, Repo, _safe, can_write_somewhere
from ._source_protocol import WaitFor

__all__ = ["DEFAULT_NEGATIVE_TTL", "DEFAULT_POSITIVE_TTL", "DecisionCache", "HubAuthority"]

Authority = Literal["hub", "local"]
DEFAULT_POSITIVE_TTL = 60.0
DEFAULT_NEGATIVE_TTL = 10.0
DEFAULT_MAXSIZE = 10_000

#: What a flight ends with when the hub no longer accepts the token.
_TOKEN_INVALID = "token-invalid"
Flight = Future[Any]  # a Decision, or _TOKEN_INVALID


class DecisionCache:
    """Bounded positive and negative caches of the hub's repository decisions,
    with single flight. Keys hold the token's SHA-256 digest, never the token."""

    def __init__(
        self,
        *,
        ttl: float = DEFAULT_POSITIVE_TTL,
        negative_ttl: float = DEFAULT_NEGATIVE_TTL,
        maxsize: int = DEFAULT_MAXSIZE,
        timer: Callable[[], float] = time.monotonic,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.timer = timer
        self.clock = clock
        self._positive: TLRUCache[bytes, tuple[Decision, float]] = TLRUCache(
            maxsize, lambda _key, entry, _now: entry[1], timer
        )
        self._negative: TTLCache[bytes, Decision] = TTLCache(maxsize, negative_ttl, timer)
        self._inflight: dict[bytes, Flight] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def _lookup(self, key: bytes) -> Decision | None:
        # Called with self._lock held.
        entry = self._positive.get(key)
        decision = entry[0] if entry is not None else self._negative.get(key)
        if decision is not None:
            self.hits += 1
        return decision

    def peek(self, key: bytes) -> Decision | None:
        """The cached decision for ``key``, if any (no flight is started)."""
        with self._lock:
            return self._lookup(key)

    def begin(self, key: bytes) -> Decision | Flight | None:
        """A cached decision, the running flight to wait for, or ``None``: then the
        caller leads the flight (and must :meth:`complete` or :meth:`abandon` it)."""
        with self._lock:
            decision = self._lookup(key)
            if decision is not None:
                return decision
            running = self._inflight.get(key)
            if running is not None:
                return running
            self.misses += 1
            self._inflight[key] = Future()
            return None

    def complete(self, key: bytes, result: Decision | str, expires_at: float | None) -> None:
        """Store the leader's decision (a token-invalid result is not stored) and
        wake every waiter."""
        with self._lock:
            if isinstance(result, Decision):
                if result.allowed:
                    ttl = self.ttl
                    if expires_at is not None:
                        ttl = min(ttl, expires_at - self.clock())
                    if ttl > 0:
                        self._positive[key] = (result, self.timer() + ttl)
                elif self.negative_ttl > 0:
                    self._negative[key] = result
            flight = self._inflight.pop(key, None)
        if flight is not None:
            flight.set_result(result)

    def abandon(self, key: bytes, error: BaseException) -> None:
        """End a flight without a decision (upstream trouble): waiters get ``error``."""
        with self._lock:
            flight = self._inflight.pop(key, None)
        if flight is not None:
            flight.set_exception(error)

    def drop_token(self, prefix: bytes) -> None:
        """Forget every decision of one token (keys starting with ``prefix``)."""
        with self._lock:
            for store in (self._positive, self._negative):
                for key in [key for key in store if key.startswith(prefix)]:
                    del store[key]

    def clear(self) -> None:
        with self._lock:
            self._positive.clear()
            self._negative.clear()

    def __len__(self) -> int:
        return len(self._positive) + len(self._negative)


def _certain_local_denial(principal: Principal, access: Access) -> Decision | None:
    """Where the local rules know the hub's answer for certain, without a call:
    a read token never writes, nor a fine-grained token with ``repo.write``
    nowhere. (OAuth and app tokens carry no role here: the hub decides.)"""
    role = principal.token_role
    if access == "write" and role in ("read", "fineGrained") and not can_write_somewhere(principal):
        return Decision(
            False,
            f"write denied: this token cannot write (token role {role})",
            WRITE_PERMISSION,
            "local",
        )
    return None


_UNNAMED_CALLER = "gated: the caller has"


def personal(decision: Decision, principal: Principal) -> Decision:
    """``decision`` naming the caller where the hub's gated denial says "the
    caller" (the check runs before, or without, knowing who the token is)."""
    if decision.allowed or _UNNAMED_CALLER not in decision.reason or principal.is_anonymous:
        return decision
    reason = decision.reason.replace(_UNNAMED_CALLER, f"gated: {_safe(principal.name)} has", 1)
    return replace(decision, reason=reason)


class HubAuthority:
    """Repository decisions asked of a hub's auth-check, cached.

    ``forget_token(digest)`` is called when the hub says a token is no longer
    valid (a 401), so that the token cache drops it too.
    """

    def __init__(
        self,
        check: HubAccessCheck,
        *,
        breaker: UpstreamBreaker,
        cache: DecisionCache,
        namespace: bytes,
        forget_token: Callable[[bytes], None],
        sync_driver: SyncDriver,
        async_driver: AsyncDriver,
    ) -> None:
        self.check = check
        #: The drivers that run a decision route code asks for (RequestAuth.require).
        self.sync_driver = sync_driver
        self.async_driver = async_driver
        self.breaker = breaker
        self.cache = cache
        self._namespace = namespace
        self._forget_token = forget_token

    def __repr__(self) -> str:
        return f"HubAuthority({self.check.hub_url!r}, decisions={len(self.cache)})"

    def _prefix(self, credentials: Credentials | None) -> bytes:
        digest = credentials.digest if credentials is not None else b"anonymous"
        return self._namespace + digest + b"\x00"

    def _key(self, credentials: Credentials | None, repo: Repo, access: Access) -> bytes:
        return self._prefix(credentials) + f"{repo.type}:{repo.id}\x00{access}".encode()

    def cached(
        self, credentials: Credentials | None, principal: Principal, repo: Repo, access: Access
    ) -> Decision | None:
        """The decision without I/O, if the local rules or the cache know it."""
        local = _certain_local_denial(principal, access)
        if local is not None:
            return local
        decision = self.cache.peek(self._key(credentials, repo, access))
        return None if decision is None else personal(decision, principal)

    def forget(self, digest: bytes) -> None:
        """Drop every decision of the token with this digest."""
        self.cache.drop_token(self._namespace + digest + b"\x00")

    def flow(
        self,
        credentials: Credentials | None,
        principal: Principal | None,
        repo: Repo,
        access: Access,
    ) -> Generator[Work, Any, Decision]:
        """The hub's decision on ``access`` to ``repo`` for this caller. Raises
        InvalidToken when the hub no longer accepts the token, SourceUnavailable
        (503) on upstream trouble. ``principal`` is ``None`` while whoami-v2 is
        asked at the same time (then see :func:`personal`)."""
        if principal is not None:
            local = _certain_local_denial(principal, access)
            if local is not None:
                return local
        key = self._key(credentials, repo, access)
        step = self.cache.begin(key)
        if isinstance(step, Decision):
            return step
        if step is not None:  # another request's flight
            result = yield WaitFor(step)
        else:
            result = yield from self._lead(key, credentials, principal, repo, access)
        if result == _TOKEN_INVALID:
            raise InvalidToken()
        assert isinstance(result, Decision)
        return result if principal is None else personal(result, principal)

    def _lead(
        self,
        key: bytes,
        credentials: Credentials | None,
        principal: Principal | None,
        repo: Repo,
        access: Access,
    ) -> Generator[Work, Any, Decision | str]:
        try:
            self.breaker.acquire()
        except SourceUnavailable as refused:
            self.cache.abandon(key, refused)
            raise
        try:
            # The decision is cached per token, for whoever asks: the caller is named
            # when it is returned (personal()).
            answer = yield from self.check.flow(credentials, repo, access)
        except SourceUnavailable as failure:
            self.breaker.release(
                failure,
                upstream_retry_after=failure.retry_after if failure.upstream_asked else None,
            )
            self.cache.abandon(key, failure)
            raise
        except Exception:
            unexpected = SourceUnavailable("Access to this repository cannot be checked right now")
            self.breaker.release(unexpected)
            self.cache.abandon(key, unexpected)
            raise unexpected from None
        except BaseException:  # cancelled: neither success nor failure
            self.breaker.cancel()
            self.cache.abandon(key, SourceUnavailable("The repository check was interrupted"))
            raise
        self.breaker.release(None)
        if answer.token_invalid:
            assert credentials is not None
            self._forget_token(credentials.digest)
            self.forget(credentials.digest)
            self.cache.complete(key, _TOKEN_INVALID, None)
            return _TOKEN_INVALID
        expires = (
            principal.expires_at.timestamp()
            if principal is not None and principal.expires_at
            else None
        )
        self.cache.complete(key, answer.decision, expires)
        return answer.decision
