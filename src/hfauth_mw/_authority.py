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

With a shared tier (:class:`~hfauth_mw.SharedCache`, Redis), the leader of a
decision's flight first looks the decision up there (another process may have
asked the hub already), taking the decision's cluster-wide lock when it is
missing, so one auth-check call answers every process; after asking the hub
it stores the decision with the same TTL rules, signed and under keyed names
(:meth:`~hfauth_mw.SharedCache.decision_keys`). A revocation's tombstone hides
the token's positive decisions in Redis, and its broadcast drops them from
every process's :class:`DecisionCache`. When Redis fails, the hub is asked
directly, as for token answers.

Like the rest of the core, :meth:`HubAuthority.flow` is a generator of work
for the drivers: it never does I/O itself.
"""

from __future__ import annotations

import math
import secrets
import threading
import time
from collections.abc import Callable, Generator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, Literal

from cachetools import TLRUCache

from ._breaker_limiter import UpstreamBreaker
from ._credentials import Credentials
from ._drivers import AsyncDriver, SyncDriver, Work
from ._exceptions import InvalidToken, SourceUnavailable, TokenRefusedUpstream
from ._hub_access import HubAccessCheck, HubAnswer
from ._principal import Principal
from ._rules import (
    NEEDED_PERMISSION,
    WRITE_PERMISSION,
    Access,
    Decision,
    Repo,
    _safe,
    can_write_somewhere,
)
from ._shared_tier import (
    CLAIM_DOWN,
    CLAIM_HIT,
    CLAIM_LEAD,
    CLAIM_UNLOCKED,
    SharedCache,
    SharedKeys,
    SharedOp,
    SharedRelease,
    SharedStore,
    claim,
)
from ._source_protocol import MAX_TAKEOVERS, LeaderCancelled, Outcome, Valid, WaitFor
from ._validation import LIKELY_TOKEN

__all__ = [
    "DEFAULT_NEGATIVE_TTL",
    "DEFAULT_POSITIVE_TTL",
    "DecisionCache",
    "HubAuthority",
    "SharedDecisions",
]

Authority = Literal["hub", "local"]
DEFAULT_POSITIVE_TTL = 60.0
DEFAULT_NEGATIVE_TTL = 10.0
DEFAULT_MAXSIZE = 10_000

#: What a flight ends with when the hub no longer accepts the token.
_TOKEN_INVALID = "token-invalid"
Flight = Future[Any]  # a Decision, or _TOKEN_INVALID


class DecisionCache:
    """Bounded positive and negative caches of the hub's repository decisions,
    with single flight. Keys hold the token's SHA-256 digest, never the token.

    A flight that began before its token's decisions were dropped (invalidate,
    revoke, a revocation broadcast) does not store its answer: it may be the
    answer for a token revoked meanwhile."""

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
        # Both stores keep each entry's own end (on the timer): a decision read
        # from the shared tier keeps only what is left of its life there.
        self._positive: TLRUCache[bytes, tuple[Decision, float]] = TLRUCache(
            maxsize, _entry_end, timer
        )
        self._negative: TLRUCache[bytes, tuple[Decision, float]] = TLRUCache(
            maxsize, _entry_end, timer
        )
        self._inflight: dict[bytes, tuple[Flight, int]] = {}
        self._generation = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        #: Requests that waited for another request's flight instead of asking.
        self.joins = 0

    def _lookup(self, key: bytes) -> Decision | None:
        # Called with self._lock held.
        entry = self._positive.get(key) or self._negative.get(key)
        if entry is None:
            return None
        self.hits += 1
        return entry[0]

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
                self.joins += 1
                return running[0]
            self.misses += 1
            self._inflight[key] = (Future(), self._generation)
            return None

    def lifetime(self, decision: Decision, expires_at: float | None) -> float:
        """Seconds ``decision`` may be kept: the positive TTL capped by the
        token's expiry (a POSIX time, or None), or the negative TTL."""
        if not decision.allowed:
            return self.negative_ttl
        if expires_at is None:
            return self.ttl
        return min(self.ttl, expires_at - self.clock())

    def complete(
        self,
        key: bytes,
        result: Decision | str,
        expires_at: float | None,
        *,
        max_age: float | None = None,
    ) -> None:
        """Store the leader's decision (a token-invalid result is not stored, nor
        one whose token's decisions were dropped since the flight began) and
        wake every waiter. ``max_age`` caps its life (a decision read from the
        shared tier, where it already aged)."""
        with self._lock:
            flight = self._inflight.pop(key, None)
            current = flight is not None and flight[1] == self._generation
            if isinstance(result, Decision) and current:
                ttl = self.lifetime(result, expires_at)
                if max_age is not None:
                    ttl = min(ttl, max_age)
                if ttl > 0:
                    store = self._positive if result.allowed else self._negative
                    store[key] = (result, self.timer() + ttl)
        if flight is not None:
            flight[0].set_result(result)

    def abandon(self, key: bytes, error: BaseException) -> None:
        """End a flight without a decision (upstream trouble): waiters get ``error``."""
        with self._lock:
            flight = self._inflight.pop(key, None)
        if flight is not None:
            flight[0].set_exception(error)

    def drop_matching(self, predicate: Callable[[bytes], bool]) -> int:
        """Forget every decision whose key satisfies ``predicate``; returns how
        many. Flights running now will not store their answers."""
        with self._lock:
            self._generation += 1
            dropped = 0
            for store in (self._positive, self._negative):
                for key in [key for key in store if predicate(key)]:
                    del store[key]
                    dropped += 1
            return dropped

    def drop_token(self, prefix: bytes) -> None:
        """Forget every decision of one token (keys starting with ``prefix``)."""
        self.drop_matching(lambda key: key.startswith(prefix))

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._positive.clear()
            self._negative.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._positive) + len(self._negative)


def _entry_end(_key: bytes, entry: tuple[Decision, float], _now: float) -> float:
    return entry[1]


@dataclass(frozen=True, slots=True)
class SharedDecisions:
    """What :class:`HubAuthority` uses of its authenticator's shared tier.

    ``call`` runs one operation behind the Redis breaker (``None`` when Redis
    is unavailable); ``release_after_cancel`` gives a lock back after the
    flow was cancelled; ``token_answer(digest)`` is the token's answer in the
    in-process cache, or its running flight, or ``None`` (for the token's
    expiry when the decision was asked together with whoami-v2); ``lock_ttl``
    bounds a decision's cluster-wide lock.
    """

    cache: SharedCache
    call: Callable[[SharedOp], Generator[Work, Any, Any]]
    release_after_cancel: Callable[[SharedRelease], None]
    token_answer: Callable[[bytes], Outcome | Future[Outcome] | None]
    lock_ttl: float


#: The token's expiry could not be learnt: the decision is kept in this process only.
_UNKNOWN = -math.inf


def _certain_local_denial(principal: Principal, access: Access) -> Decision | None:
    """Where the local rules know the hub's answer for certain, without a call:
    a read token never writes, nor a fine-grained token with ``repo.write``
    nowhere. (OAuth and app tokens carry no role here: the hub decides.)"""
    role = principal.token_role
    if access == "write" and role in ("read", "fineGrained") and not can_write_somewhere(principal):
        reason = (
            "write denied: this fine-grained token lists repo.write on no repository"
            if role == "fineGrained"
            else "write denied: this token cannot write (token role read)"
        )
        return Decision(False, reason, WRITE_PERMISSION, "local")
    return None


def _unsendable(repo: Repo, access: Access) -> Decision | None:
    """A repository whose name holds what is almost surely a pasted token: denied
    here. Asked, the token would travel in the auth-check's URL, into the hub's
    access logs and ours."""
    if LIKELY_TOKEN.search(repo.id) is None:
        return None
    return Decision(
        False,
        f"{access} denied: the repository name looks like an access token; "
        "it is not sent to the Hub",
        NEEDED_PERMISSION[access],
        "local",
    )


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
    valid (a 401), so that the token cache drops it too. ``shared``: the
    authenticator's shared tier, if it has one (see the module docstring).
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
        shared: SharedDecisions | None = None,
    ) -> None:
        self.check = check
        #: The shared tier the decisions also go through (None: this process only).
        self.shared = shared
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
        local = _unsendable(repo, access)
        if local is None and principal is not None:
            local = _certain_local_denial(principal, access)
        if local is not None:
            return local
        key = self._key(credentials, repo, access)
        for _ in range(1 + MAX_TAKEOVERS):  # the first try, then the takeovers
            step = self.cache.begin(key)
            if isinstance(step, Decision):
                return step
            if step is None:
                result = yield from self._lead(key, credentials, principal, repo, access)
                break
            try:  # another request's flight
                result = yield WaitFor(step)
                break
            except LeaderCancelled:
                continue  # the leading request went away: one of the waiters takes over
        else:
            raise SourceUnavailable("The repository could not be checked")
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
        """Lead one decision's flight: through the shared tier if there is one
        (anonymous decisions stay in-process), else straight to the hub."""
        if self.shared is not None and credentials is not None:
            return (
                yield from self._lead_shared(self.shared, key, credentials, principal, repo, access)
            )
        answer = yield from self._ask(key, credentials, repo, access)
        return self._settle(key, credentials, principal, answer)[0]

    def _settle(
        self,
        key: bytes,
        credentials: Credentials | None,
        principal: Principal | None,
        answer: HubAnswer,
    ) -> tuple[Decision | str, float | None]:
        """End the flight with the hub's answer: the result and the token's
        expiry as far as it is known (:data:`_UNKNOWN` if not)."""
        if answer.token_invalid:
            assert credentials is not None
            if principal is not None:
                # The token was accepted, and the hub no longer accepts it: it is
                # dropped as a revocation drops it. A cold token (asked together
                # with whoami-v2) is whoami-v2's to answer for, and to cache as
                # invalid: dropping it here would undo that negative entry, and a
                # stream of made-up tokens would each cost a revocation.
                self._forget_token(credentials.digest)
                self.forget(credentials.digest)
            self.cache.complete(key, _TOKEN_INVALID, None)
            return _TOKEN_INVALID, _UNKNOWN
        expires = self._expiry(credentials, principal)
        self.cache.complete(key, answer.decision, None if expires == _UNKNOWN else expires)
        return answer.decision, expires

    def _lead_shared(
        self,
        shared: SharedDecisions,
        key: bytes,
        credentials: Credentials,
        principal: Principal | None,
        repo: Repo,
        access: Access,
    ) -> Generator[Work, Any, Decision | str]:
        """The shared decision, else the hub's (stored in the shared tier after).
        Redis trouble (``call`` answers None) means asking the hub directly."""
        shared.cache.start()  # revocations must reach this process's decisions
        # Asked together with whoami-v2, the token's flight is running now: held
        # from here, its answer (the token's expiry) is known even if the token
        # cache does not keep it.
        token = shared.token_answer(credentials.digest) if principal is None else None
        keys = shared.cache.decision_keys(
            self._namespace, credentials.digest, f"{repo.type}:{repo.id}", access
        )
        release = SharedRelease(keys, owner=secrets.token_hex(8))
        try:
            state, found = yield from self._claim(shared, keys, release.owner)
        except BaseException as error:
            # Cancelled (or a bug) while Redis may have granted us the lock.
            if isinstance(error, GeneratorExit):
                shared.release_after_cancel(release)
            self.cache.abandon(key, LeaderCancelled("The repository check was interrupted"))
            raise
        if found is not None:
            decision, remaining = found
            self.cache.complete(key, decision, None, max_age=remaining)
            return decision
        locked = state == CLAIM_LEAD
        try:
            try:
                answer = yield from self._ask(key, credentials, repo, access)
            except SourceUnavailable:
                if locked:
                    # Let another process's waiter ask now rather than at the lock's expiry.
                    yield from shared.call(release)
                raise
            result, expires = self._settle(key, credentials, principal, answer)
            if result == _TOKEN_INVALID and state != CLAIM_DOWN and principal is not None:
                # The hub no longer accepts the token: every process drops it (its
                # answer and decisions), as a revocation does, not only this one.
                yield from shared.call(shared.cache.revoke_op(credentials.fingerprint))
            if not isinstance(result, Decision) or state == CLAIM_DOWN:
                if locked:
                    yield from shared.call(release)
                return result
            if result.allowed and expires == _UNKNOWN:
                # Asked together with whoami-v2: its answer says how long the token
                # lives, and no positive decision is shared past the token's expiry.
                expires = yield from self._awaited_expiry(shared, credentials, token)
            if result.allowed and expires == _UNKNOWN:
                ttl = 0.0
            else:
                ttl = self.cache.lifetime(result, None if expires == _UNKNOWN else expires)
            if ttl > 0:
                value = shared.cache.encode_decision(keys, result, ttl, self.cache.clock())
                yield from shared.call(
                    SharedStore(keys, release.owner, value, math.ceil(ttl * 1000))
                )
            elif locked:
                yield from shared.call(release)
            return result
        except GeneratorExit:
            if locked:
                shared.release_after_cancel(release)
            raise

    def _ask(
        self, key: bytes, credentials: Credentials | None, repo: Repo, access: Access
    ) -> Generator[Work, Any, HubAnswer]:
        """The hub's auth-check behind the breaker; the flight is abandoned on failure."""
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
            if isinstance(failure, TokenRefusedUpstream):
                # A proxy's or WAF's refusal of this token says nothing about the
                # hub: as for whoami-v2, not counted (the pipeline charges the client).
                self.breaker.cancel()
            else:
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
            self.cache.abandon(key, LeaderCancelled("The repository check was interrupted"))
            raise
        self.breaker.release(None)
        return answer

    def _expiry(self, credentials: Credentials | None, principal: Principal | None) -> float | None:
        """The token's expiry (POSIX time, None: it does not expire), as far as
        it is known now; :data:`_UNKNOWN` while whoami-v2 has not answered."""
        if principal is None and self.shared is not None and credentials is not None:
            answer = self.shared.token_answer(credentials.digest)
            principal = answer.principal if isinstance(answer, Valid) else None
        if principal is None:
            return _UNKNOWN
        return principal.expires_at.timestamp() if principal.expires_at else None

    def _awaited_expiry(
        self,
        shared: SharedDecisions,
        credentials: Credentials,
        answer: Outcome | Future[Outcome] | None,
    ) -> Generator[Work, Any, float | None]:
        """The token's expiry once its whoami-v2 flight (``answer``, as it was
        when the decision's flight began) answers (:data:`_UNKNOWN` if it
        fails, or says the token is invalid)."""
        if answer is None:
            answer = shared.token_answer(credentials.digest)
        if isinstance(answer, Future):
            try:
                answer = yield WaitFor(answer)
            except Exception:  # the token's own flow reports its failure
                return _UNKNOWN
        if not isinstance(answer, Valid):
            return _UNKNOWN
        expires_at = answer.principal.expires_at
        return expires_at.timestamp() if expires_at else None

    def _claim(
        self, shared: SharedDecisions, keys: SharedKeys, owner: str
    ) -> Generator[Work, Any, tuple[int, tuple[Decision, float] | None]]:
        """Read the shared decision or take its lock (:func:`~hfauth_mw._shared_tier.claim`)."""
        state, value, _waited = yield from claim(
            shared.call, shared.cache, keys, owner, shared.lock_ttl, self.cache.timer
        )
        if state != CLAIM_HIT:
            return state, None
        assert value is not None
        decoded = shared.cache.decode_decision(keys, value, self.cache.clock())
        # Damaged, forged or expired: ask the hub, overwrite it.
        return (CLAIM_UNLOCKED, None) if decoded is None else (CLAIM_HIT, decoded)
