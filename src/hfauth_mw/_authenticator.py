"""The authenticator: a source and a cache, and the decision for one token.

:meth:`Authenticator.flow` is the whole decision for one token, written once
as a generator that yields work: an HTTP request to send, another request's
flight to wait for, and, with a shared cache, a shared-tier operation
(:mod:`hfauth_mw._shared_tier`) or a pause. It never does I/O and never calls back
into its caller: the drivers in :mod:`hfauth_mw._drivers` run it, and a Redis
failure comes back to the flow as :class:`~hfauth_mw._shared_tier.SharedDown` for
the flow to decide.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

import httpx

from ._audit import audit_logger, register_token_shape
from ._authority import DecisionCache, HubAuthority, SharedDecisions
from ._breaker_limiter import FailureLimiter, UpstreamBreaker
from ._cache import Leader, TokenCache
from ._credentials import Credentials, bare_credentials
from ._drivers import AsyncDriver, Cleanup, SyncDriver, Work
from ._exceptions import (
    ConfigurationError,
    InvalidToken,
    SourceUnavailable,
    TokenRefusedUpstream,
)
from ._hub_access import HubAccessCheck
from ._metrics import Metrics
from ._principal import Principal, fingerprint_of, token_digest
from ._shared_tier import (
    CLAIM_DOWN,
    CLAIM_HIT,
    CLAIM_LEAD,
    CLAIM_UNLOCKED,
    SharedBackend,
    SharedCache,
    SharedCacheUnavailable,
    SharedDown,
    SharedFailureLimiter,
    SharedKeys,
    SharedOp,
    SharedRelease,
    SharedStore,
    claim,
)
from ._source_protocol import (
    EXPIRED,
    MAX_TAKEOVERS,
    Flow,
    IntrospectionSource,
    Invalid,
    LeaderCancelled,
    Outcome,
    Valid,
    WaitFor,
)
from ._sources import DEFAULT_MAX_ANSWER_BYTES
from ._validation import require_bool, require_instance, require_int, shown

__all__ = ["AuthFlow", "Authenticator"]

logger = logging.getLogger("hfauth_mw")
shared_logger = logging.getLogger("hfauth_mw.shared")

#: The decision for one token, as a generator of work for a driver.
AuthFlow = Generator[Work, Any, Principal]
T = TypeVar("T")


def _resumed(flow: Flow, first: httpx.Request) -> Generator[httpx.Request, Any, Outcome]:
    """``yield from flow`` for a flow whose first request was already taken."""
    request = first
    try:
        while True:
            try:
                answer = yield request
            except GeneratorExit:
                flow.close()
                raise
            except BaseException as error:
                request = flow.throw(error)
            else:
                request = flow.send(answer)
    except StopIteration as done:
        outcome: Outcome = done.value
        return outcome


class Authenticator:
    """Turns credentials into a :class:`~hfauth_mw.Principal`, through a cache.

    Raises :class:`~hfauth_mw.InvalidToken` for unknown, revoked or expired
    tokens and :class:`~hfauth_mw.SourceUnavailable` when the source cannot
    tell. Safe to share between threads and event loops.

    ``client`` / ``async_client`` default to one pooled httpx client per
    process (per event loop for async). Give your own to add proxies or
    certificates; timeouts still come from the source.

    ``shared`` (off by default) adds a shared cache tier
    (:class:`~hfauth_mw.SharedCache`, Redis) behind the in-process cache, for
    many workers and replicas: about one upstream call per token per TTL
    across all of them, and :meth:`revoke` reaching every process within a
    second. When Redis fails, requests fall back to the in-process cache and
    the source (never "valid" by default, never an error of their own).

    ``trust_env`` (default ``True``, as httpx): the process-wide clients take
    proxies (``HTTPS_PROXY``, ``NO_PROXY``, ...) and the CA bundle
    (``SSL_CERT_FILE``, ``SSL_CERT_DIR``) from the environment. ``False``
    ignores them. Clients of your own keep their own settings.

    :attr:`limiter` is the brute-force guard every adapter built on this
    authenticator shares (the middleware and FastAPI's ``install()``): one
    count per client per app. With ``shared``, the counts are cluster-wide
    (:class:`~hfauth_mw._shared_tier.SharedFailureLimiter`); without, per process.
    ``trusted_proxies`` are its proxies (``"unix"`` for one on a Unix
    socket; see :class:`~hfauth_mw.FailureLimiter`).
    """

    def __init__(
        self,
        source: IntrospectionSource,
        *,
        cache: TokenCache | None = None,
        client: httpx.Client | None = None,
        async_client: httpx.AsyncClient | None = None,
        breaker: UpstreamBreaker | None = None,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        shared: SharedCache | None = None,
        trust_env: bool = True,
        trusted_proxies: Iterable[str] = (),
    ) -> None:
        if not isinstance(source, IntrospectionSource):  # a Protocol: no require_instance
            raise ConfigurationError(
                "source must be an introspection source (HubWhoamiSource, ...), "
                f"not {type(source).__name__} {shown(source)}"
            )
        for name, value, kind, how in (
            ("cache", cache, TokenCache, "an hfauth_mw.TokenCache or None"),
            ("client", client, httpx.Client, "an httpx.Client or None"),
            ("async_client", async_client, httpx.AsyncClient, "an httpx.AsyncClient or None"),
            ("breaker", breaker, UpstreamBreaker, "an hfauth_mw.UpstreamBreaker or None"),
            ("shared", shared, SharedCache, "an hfauth_mw.SharedCache or None"),
        ):
            if value is not None:
                require_instance(name, value, kind, how)
        require_int("max_answer_bytes", max_answer_bytes, 1024, 1 << 26)
        self.trust_env = require_bool("trust_env", trust_env)
        # Checked now (a ConfigurationError at start-up), used by the limiter built on demand.
        self._trusted_proxies = FailureLimiter(trusted_proxies=trusted_proxies).trusted_proxies
        self.source = source
        self.cache = cache if cache is not None else TokenCache()
        self.max_answer_bytes = max_answer_bytes
        self.breaker = breaker if breaker is not None else UpstreamBreaker(timer=self.cache.timer)
        self._namespace = source.name.encode("utf-8") + b"\x00"
        self.metrics = Metrics()
        self.shared = shared
        # A cold token's lock outlives the leader's flight (the source's own bound).
        self._lock_ttl = (shared.lock_ttl or source.wait_timeout) if shared else 0.0
        # In-process waiters wait for the leader, who may first wait on another process.
        wait_timeout = source.wait_timeout + (
            self._lock_ttl + shared.max_poll_interval if shared else 0.0
        )
        self._cleanup = Cleanup()
        self._decisions: DecisionCache | None = None
        self._hub_authority: HubAuthority | None = None
        driver_config: dict[str, Any] = {
            "max_answer_bytes": max_answer_bytes,
            "request_timeout": source.wait_timeout,
            "wait_timeout": wait_timeout,
            "shared_backend": self._shared_backend,
            "cleanup": self._cleanup,
            "trust_env": trust_env,
        }
        self.sync_driver = SyncDriver(client, **driver_config)
        self.async_driver = AsyncDriver(async_client, **driver_config)
        if shared is not None:
            shared.attach(self.cache, self._namespace)
        self._limiter: FailureLimiter | None = None
        self._limiter_lock = threading.Lock()
        # The audit line masks what this source accepts as a token (IdP tokens too).
        register_token_shape(source.name, getattr(source, "token_shape", None))

    @property
    def limiter(self) -> FailureLimiter:
        """The brute-force guard of the adapters built on this authenticator
        with ``limiter="default"``: one per authenticator, so the middleware
        and FastAPI's ``install()`` share one count per client. Built on first
        use; cluster-wide with a shared tier."""
        with self._limiter_lock:  # two adapters built at once still get one
            if self._limiter is None:
                options: dict[str, Any] = {
                    "timer": self.cache.timer,
                    "trusted_proxies": self._trusted_proxies,
                }
                self._limiter = (
                    SharedFailureLimiter(self.shared, **options)
                    if self.shared is not None
                    else FailureLimiter(**options)
                )
            return self._limiter

    def __repr__(self) -> str:
        shared = f", {self.shared!r}" if self.shared is not None else ""
        return f"Authenticator({self.source!r}, {self.cache!r}{shared})"

    @property
    def clock(self) -> Callable[[], float]:
        return self.cache.clock

    def cache_key(self, digest: bytes) -> bytes:
        return self._namespace + digest

    # --- the sans-IO core ------------------------------------------------------------

    def flow(self, credentials: Credentials, client: str | None = None) -> AuthFlow:
        """The decision for one token, as a generator of work for a driver
        (:meth:`run_sync` / :meth:`run_async`). ``client`` is the address the
        brute-force guard keys on, if known: a client whose own failures hold
        the breaker open is never served a stale answer."""
        key = self._namespace + credentials.digest
        for _ in range(1 + MAX_TAKEOVERS):  # the first try, then the takeovers
            step = self.cache.begin(key)
            if isinstance(step, Valid | Invalid):
                return self._settle(step)
            if isinstance(step, Leader):
                return self._settle((yield from self._resolve(step, credentials, client)))
            try:
                return self._settle((yield WaitFor(step)))
            except LeaderCancelled:
                continue  # the leading request went away: one of the waiters takes over
            except SourceUnavailable:
                next(self.metrics.unavailable)
                raise
        next(self.metrics.unavailable)
        raise SourceUnavailable("The token could not be checked")

    def cached(self, credentials: Credentials) -> Principal | None:
        """The principal for ``credentials`` if the in-process cache has a fresh
        positive answer that has not expired, else ``None`` (then drive
        :meth:`flow`, which answers negative and expired entries too). No
        lock, no generator: the resolve step of every cached request."""
        return self.fresh(credentials.digest)

    def fresh(self, digest: bytes) -> Principal | None:
        """:meth:`cached` by the token's SHA-256 digest."""
        cache = self.cache
        entry = cache.readable.get(self._namespace + digest)
        if entry is None or cache.timer() >= entry.fresh_until:
            return None
        if entry.expires is not None and entry.expires <= cache.clock():
            return None  # only if the clock jumped: freshness never outlives expiry
        next(cache.hit_counter)
        next(self.metrics.valid)
        return entry.outcome.principal

    def _resolve(
        self, leader: Leader, credentials: Credentials, client: str | None
    ) -> Generator[Work, Any, Outcome]:
        """Answer a token the in-process cache does not have (timed, counted)."""
        started = time.perf_counter()
        try:
            if self.shared is None:
                return (yield from self._lead(leader, self.source.flow(credentials), client))
            return (yield from self._lead_shared(self.shared, leader, credentials, client))
        except SourceUnavailable:
            next(self.metrics.unavailable)
            raise
        finally:
            self.metrics.latency.observe(time.perf_counter() - started)

    # --- the shared tier -------------------------------------------------------------

    def _lead_shared(
        self, shared: SharedCache, leader: Leader, credentials: Credentials, client: str | None
    ) -> Generator[Work, Any, Outcome]:
        """Lead this process's flight through the shared tier: read another
        process's answer, or take the cluster-wide lock and introspect, or wait
        for whoever holds it (bounded), or, if Redis fails, go to the source."""
        shared.start()
        keys = shared.keys(self._namespace, credentials.digest)
        release = SharedRelease(keys, owner=secrets.token_hex(8))
        # Until the claim answers, a cancel may leave a lock Redis granted us.
        maybe_locked = True
        try:
            try:
                state, found = yield from self._claim(
                    shared, leader, keys, release.owner, credentials
                )
            except GeneratorExit:
                self.cache.abandon(leader, LeaderCancelled())
                raise
            except BaseException:
                self.cache.abandon(leader, SourceUnavailable())
                raise
            maybe_locked = state == CLAIM_LEAD
            if found is not None:
                return found
            try:
                outcome = yield from self._lead(leader, self.source.flow(credentials), client)
            except SourceUnavailable:
                if maybe_locked:
                    # Let a waiter take over now rather than at the lock's expiry.
                    yield from self._shared_call(shared, release)
                raise
            if state == CLAIM_DOWN:
                return outcome
            ttl = self._shared_ttl(outcome) if outcome is not leader.stale else 0.0
            if ttl > 0:
                value = shared.encode(keys, outcome, ttl, self.clock())
                stored = yield from self._shared_call(
                    shared, SharedStore(keys, release.owner, value, math.ceil(ttl * 1000))
                )
                if stored:
                    self.metrics.count("shared_stores")
            elif maybe_locked:
                yield from self._shared_call(shared, release)
            return outcome
        except GeneratorExit:
            if maybe_locked:
                self._release_after_cancel(shared, release)
            raise

    def _release_after_cancel(self, shared: SharedCache, release: SharedRelease) -> None:
        """Give back the cluster-wide lock of a request that was cancelled, so
        that the waiters (here and in other processes) go on now rather than
        at the lock's expiry. The flow can no longer yield, so the driver runs
        the release after it (:class:`~hfauth_mw._drivers.Cleanup`). Best
        effort, and skipped while Redis is failing: the lock expires anyway.
        The release script only deletes our own lock."""
        if shared.breaker.state != "open":
            self._cleanup.add(shared.backend, release)

    def _shared_ttl(self, outcome: Outcome) -> float:
        """Same rules as in-process: positive capped by expiry, negative short."""
        if isinstance(outcome, Invalid):
            return self.cache.negative_ttl
        return self.cache.lifetime(outcome) if self.cache.ttl > 0 else 0.0

    def _claim(
        self,
        shared: SharedCache,
        leader: Leader,
        keys: SharedKeys,
        owner: str,
        credentials: Credentials,
    ) -> Generator[Work, Any, tuple[int, Outcome | None]]:
        """Read the shared answer or take the lock (:func:`~hfauth_mw._shared_tier.claim`),
        counting what happened."""
        state, value, waited = yield from claim(
            lambda op: self._shared_call(shared, op),
            shared,
            keys,
            owner,
            self._lock_ttl,
            self.cache.timer,
        )
        if waited:
            self.metrics.count("shared_waits")
        if state == CLAIM_DOWN:
            return CLAIM_DOWN, None
        if state == CLAIM_HIT:
            assert value is not None
            decoded = shared.decode(keys, value, credentials.fingerprint, self.clock())
            if decoded is None:  # damaged or forged: ask the source, overwrite it
                return CLAIM_UNLOCKED, None
            outcome, remaining = decoded
            self.metrics.count("shared_hits")
            self.cache.complete(leader, outcome, max_age=remaining)
            return CLAIM_HIT, outcome
        self.metrics.count("shared_misses")
        if state == CLAIM_LEAD and waited:
            self.metrics.count("shared_takeovers")
        return state, None

    def _shared_call(self, shared: SharedCache, op: SharedOp) -> Generator[Work, Any, Any]:
        """One shared-tier operation behind the Redis breaker; None if Redis is
        unavailable (refused by the breaker, or the driver reported failure)."""
        try:
            shared.breaker.acquire()
        except SourceUnavailable:
            self.metrics.count("shared_skipped")
            return None
        try:
            result = yield op
        except GeneratorExit:  # the request was cancelled: neither success nor failure
            shared.breaker.cancel()
            raise
        except BaseException:
            shared.breaker.release(SourceUnavailable("Redis failed"))
            raise
        if not isinstance(result, SharedDown):
            shared.breaker.release(None)
            return result
        shared.breaker.release(SourceUnavailable("Redis failed"))
        self.metrics.count("shared_errors")
        shared_logger.warning(
            "shared cache (Redis) call failed (%s); answering from this process's "
            "cache and the source (breaker %s)",
            result.reason,
            shared.breaker.state,
            extra={"hfauth_event": "shared_error", "hfauth_source": self.source.name},
        )
        return None

    # --- the source ------------------------------------------------------------------

    def _lead(
        self, leader: Leader, source_flow: Flow, client: str | None = None
    ) -> Generator[httpx.Request, Any, Outcome]:
        """Ask the source. The breaker guards the network: its slot is taken at
        the flow's first request, so a source that answers without one (a
        local store, first in a ChainSource) still answers while the breaker
        is open for the hub behind it.

        A failure caused by the token itself (:class:`TokenRefusedUpstream`: a
        proxy's 400, a WAF's 403, ...) gives the slot back without counting:
        it says nothing about the source, and one client sending such tokens
        must not open the breaker for everyone (the pipeline charges it to
        the client instead). Other failures count, blamed on ``client`` when
        the token was cold (no answer of ours to fall back on)."""
        slot = False
        refused: SourceUnavailable | None = None
        try:
            try:
                request = next(source_flow)
            except StopIteration as answered:
                self._count("upstream_calls")
                outcome: Outcome = answered.value
            else:
                try:
                    self.breaker.acquire()
                except SourceUnavailable as error:
                    refused = error
                else:
                    slot = True
                    self._count("upstream_calls")
                    outcome = yield from _resumed(source_flow, request)
        except SourceUnavailable as failure:
            if slot and isinstance(failure, TokenRefusedUpstream):
                self.breaker.cancel()  # neither a success nor the source's failure
            elif slot:
                self.breaker.release(
                    failure,
                    upstream_retry_after=failure.retry_after if failure.upstream_asked else None,
                    client=client if leader.stale is None else None,
                )
            else:  # before any network call (a local store that cannot be read): the
                # breaker guards the network, and this says nothing about it
                self._count("upstream_calls")
            self._count("upstream_errors")
            return self._fall_back(leader, failure, client)
        except Exception:
            # A bug in a source, or a failure it did not expect: never a 500, never
            # "valid". Once the source is on the network, it counts against the breaker.
            logger.exception("hfauth-mw: the token source %r failed unexpectedly", self.source.name)
            unexpected = SourceUnavailable("The token could not be checked")
            if slot:
                self.breaker.release(unexpected, client=client if leader.stale is None else None)
            else:
                self._count("upstream_calls")
            self._count("upstream_errors")
            return self._fall_back(leader, unexpected, client)
        except BaseException:
            # This request was cancelled (GeneratorExit): free the slot without
            # counting a success (that would close an open breaker), and let a
            # waiting request take over the flight rather than fail.
            if slot:
                self.breaker.cancel()
            self.cache.abandon(leader, LeaderCancelled())
            raise
        if refused is not None:
            source_flow.close()
            return self._fall_back(leader, refused, client)
        if slot:
            self.breaker.release(None)
        self.cache.complete(leader, outcome)
        return outcome

    def _fall_back(
        self, leader: Leader, failure: SourceUnavailable, client: str | None = None
    ) -> Outcome:
        """Serve the stale answer if stale-if-error allows, else fail the flight."""
        # Not if the cache was invalidated since the flight began: the token
        # may have been revoked meanwhile. Not to a client whose own failures
        # hold the breaker open: it could keep a revoked token working so.
        if (
            leader.stale is not None
            and self.cache.stale_if_error > 0
            and self.cache.is_current(leader)
            and not self.breaker.held_open_by(client)
        ):
            self._count("stale_served")
            audit_logger.warning(
                "stale answer served for token %s: %s",
                leader.stale.principal.fingerprint,
                failure.description,
                extra={
                    "hfauth_event": "stale",
                    "hfauth_fingerprint": leader.stale.principal.fingerprint,
                    "hfauth_source": self.source.name,
                },
            )
            self.cache.complete(leader, leader.stale, store=False)
            return leader.stale
        self.cache.abandon(leader, failure)
        raise failure

    def _count(self, name: str) -> None:
        self.metrics.count(name)

    def stats(self) -> dict[str, int]:
        """Counters since start (one process), all integers:

        * in-process cache: ``local_hits`` (positive and negative),
          ``local_misses`` (flights started), ``local_joins`` (requests that
          waited for another request's flight), ``cached``, ``inflight``;
        * shared tier: ``shared_hits``, ``shared_misses`` (this process had to
          introspect), ``shared_waits`` (waited for another process),
          ``shared_takeovers`` (took over an abandoned lock), ``shared_stores``,
          ``shared_errors`` (Redis calls that failed), ``shared_skipped``
          (calls the Redis breaker refused), ``revocations_received``,
          ``revocations_dropped``, ``revocations_sent``;
        * source: ``upstream_calls``, ``upstream_errors``, ``stale_served``,
          ``breaker_rejected``;
        * ``decisions_valid|invalid|expired|unavailable``: one per request;
        * ``resolve_count``, ``resolve_sum_us`` and cumulative
          ``resolve_le_<N>ms`` buckets: time to answer an in-process miss.
        """
        counters = self.metrics.counters()
        counters["local_hits"] = self.cache.hits + self.cache.negative_hits
        counters["local_misses"] = self.cache.misses
        counters["local_joins"] = self.cache.joins
        counters["breaker_rejected"] = self.breaker.rejected
        counters["cached"] = len(self.cache)
        counters["inflight"] = self.cache.inflight
        shared = self.shared.stats() if self.shared is not None else {}
        for name in ("revocations_received", "revocations_dropped"):
            counters[name] = shared.get(name, 0)
        return counters

    def _settle(self, outcome: Outcome) -> Principal:
        if outcome == EXPIRED:  # expired when it was cached
            next(self.metrics.expired)
            raise InvalidToken("The access token has expired")
        if isinstance(outcome, Invalid):
            next(self.metrics.invalid)
            raise InvalidToken()
        if self.cache.has_expired(outcome.principal):
            next(self.metrics.expired)
            raise InvalidToken("The access token has expired")
        next(self.metrics.valid)
        return outcome.principal

    # --- drivers ---------------------------------------------------------------------

    def authenticate_sync(self, credentials: Credentials | str) -> Principal:
        """Blocking: the principal for ``credentials`` (or a bare token), for WSGI
        servers, threads and the CLI."""
        return self.sync_driver.run(self.flow(_as_credentials(credentials)))

    async def authenticate(self, credentials: Credentials | str) -> Principal:
        """The principal for ``credentials`` (or a bare token), for async code."""
        return await self.async_driver.run(self.flow(_as_credentials(credentials)))

    def run_sync(self, flow: Generator[Work, Any, T]) -> T:
        """Drive any flow built on :meth:`flow` with blocking I/O."""
        return self.sync_driver.run(flow)

    async def run_async(self, flow: Generator[Work, Any, T]) -> T:
        """Drive any flow built on :meth:`flow` with async I/O."""
        return await self.async_driver.run(flow)

    def _shared_backend(self) -> SharedBackend:
        if self.shared is None:  # a flow built on another authenticator
            raise SourceUnavailable("This authenticator has no shared cache")
        backend: SharedBackend = self.shared.backend
        return backend

    # --- cache control ---------------------------------------------------------------

    def invalidate(self, token: str) -> None:
        """Forget the cached answer for ``token``, and the hub's repository
        decisions for it, in this process only.

        With a shared cache, use :meth:`revoke` to reach every process.
        """
        self.forget_digest(token_digest(token))

    def forget_digest(self, digest: bytes) -> None:
        """:meth:`invalidate` by the token's SHA-256 digest."""
        self.cache.invalidate(self.cache_key(digest))
        if self._hub_authority is not None:
            self._hub_authority.forget(digest)

    def clear(self) -> None:
        self.cache.clear()
        if self._decisions is not None:
            self._decisions.clear()

    def hub_authority(self, check: HubAccessCheck) -> HubAuthority:
        """The hub's repository decisions for this authenticator's tokens: one
        cache of them per authenticator, dropped with the token (invalidate,
        revoke, a 401 from the hub), behind the same breaker as the source.
        With a shared tier, decisions are shared through it too (and a
        revocation broadcast drops them in every process)."""
        if self._hub_authority is None or self._hub_authority.check.hub_url != check.hub_url:
            self._decisions = DecisionCache(timer=self.cache.timer, clock=self.cache.clock)
            shared: SharedDecisions | None = None
            tier = self.shared
            if tier is not None:
                # Revocation broadcasts drop this process's decisions too.
                tier.attach(self._decisions, self._namespace)
                shared = SharedDecisions(
                    cache=tier,
                    call=lambda op: self._shared_call(tier, op),
                    release_after_cancel=lambda op: self._release_after_cancel(tier, op),
                    token_answer=self._token_answer,
                    lock_ttl=self._lock_ttl,
                )
            self._hub_authority = HubAuthority(
                check,
                breaker=self.breaker,
                cache=self._decisions,
                namespace=self._namespace,
                forget_token=lambda digest: self.cache.invalidate(self.cache_key(digest)),
                sync_driver=self.sync_driver,
                async_driver=self.async_driver,
                shared=shared,
            )
        return self._hub_authority

    def _token_answer(self, digest: bytes) -> Outcome | Future[Outcome] | None:
        """The token's answer in the in-process cache, else its running flight."""
        key = self.cache_key(digest)
        answer = self.cache.get(key)
        return answer if answer is not None else self.cache.flight(key)

    def revoke_flow(self, token: str) -> Generator[Work, Any, int]:
        """The flow behind :meth:`revoke` and :meth:`arevoke`."""
        digest = token_digest(token)
        self.forget_digest(digest)
        if self.shared is None:
            return 0
        op = self.shared.revoke_op(fingerprint_of(digest))
        result = yield from self._shared_call(self.shared, op)
        if result is None:
            raise SharedCacheUnavailable(
                "Redis could not be reached: the revocation reached this process only; "
                "other processes keep the token up to their cache TTL"
            )
        self.metrics.count("revocations_sent")
        return int(result)

    def revoke(self, token: str) -> int:
        """Forget ``token`` here and, with a shared cache, everywhere (blocking).

        Drops the in-process entry; with a shared cache also marks the token
        revoked in Redis (its positive answers are no longer read or written
        there for ``revocation_ttl``) and broadcasts it so that every process
        drops its in-process entry, normally within milliseconds and always
        within a second while its subscription is up. Returns how many
        processes were listening. Raises :class:`~hfauth_mw.SharedCacheUnavailable`
        if Redis cannot be reached. Revoke the token at its source too: this
        only clears caches.
        """
        return self.run_sync(self.revoke_flow(token))

    async def arevoke(self, token: str) -> int:
        """:meth:`revoke` for async code."""
        return await self.run_async(self.revoke_flow(token))


def _as_credentials(credentials: Credentials | str) -> Credentials:
    """A bare token, as code outside a request passes it, as Bearer credentials."""
    if isinstance(credentials, Credentials):
        return credentials
    if isinstance(credentials, str):
        return bare_credentials(credentials)
    raise TypeError(
        f"expected an access token (str) or hfauth_mw.Credentials, not {type(credentials).__name__}"
    )
