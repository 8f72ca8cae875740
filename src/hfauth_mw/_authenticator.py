"""The authenticator: a source, a cache, and the sync and async drivers.

:meth:`Authenticator.flow` is the whole decision for one token, written once
as a generator that yields :data:`~hfauth_mw._outcome.Work` (an HTTP request
to send, or another request's flight to wait for). :meth:`authenticate` and
:meth:`authenticate_sync` only do that I/O.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable, Generator
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

import httpx

from ._cache import Leader, TokenCache
from ._credentials import Credentials
from ._exceptions import ConfigurationError, InvalidToken, SourceUnavailable
from ._outcome import Flow, IntrospectionSource, Invalid, Outcome, Valid, WaitFor
from ._principal import Principal, token_digest
from ._protection import UpstreamBreaker
from ._sources import DEFAULT_MAX_ANSWER_BYTES

__all__ = ["AuthFlow", "Authenticator"]

audit_logger = logging.getLogger("hfauth_mw.audit")

AuthFlow = Generator[httpx.Request | WaitFor, Any, Principal]
T = TypeVar("T")

# One pooled client per process (and, for async, per event loop: httpx async
# connections belong to the loop that opened them). Timeouts are set per
# request by each source, so these clients are neutral.
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
_sync_client: httpx.Client | None = None
_sync_client_lock = threading.Lock()
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, httpx.AsyncClient] = (
    weakref.WeakKeyDictionary()
)


def shared_sync_client() -> httpx.Client:
    global _sync_client
    with _sync_client_lock:
        if _sync_client is None:
            _sync_client = httpx.Client(limits=_LIMITS, follow_redirects=False, trust_env=False)
        return _sync_client


def shared_async_client() -> httpx.AsyncClient:
    loop = asyncio.get_running_loop()
    client = _async_clients.get(loop)
    if client is None:
        client = httpx.AsyncClient(limits=_LIMITS, follow_redirects=False, trust_env=False)
        _async_clients[loop] = client
    return client


def _transport_failure(exc: Exception, source: str) -> SourceUnavailable:
    if isinstance(exc, httpx.TimeoutException):
        return SourceUnavailable(f"The token source {source!r} timed out")
    if isinstance(exc, AnswerTooLarge):
        return SourceUnavailable(f"The token source {source!r} answered more than we accept")
    return SourceUnavailable(f"The token source {source!r} cannot be reached")


class AnswerTooLarge(Exception):
    pass


class Authenticator:
    """Turns credentials into a :class:`~hfauth_mw.Principal`, through a cache.

    Raises :class:`~hfauth_mw.InvalidToken` for unknown, revoked or expired
    tokens and :class:`~hfauth_mw.SourceUnavailable` when the source cannot
    tell. Safe to share between threads and event loops.

    ``client`` / ``async_client`` default to one pooled httpx client per
    process (per event loop for async). Give your own to add proxies or
    certificates; timeouts still come from the source.
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
    ) -> None:
        if not isinstance(source, IntrospectionSource):
            raise ConfigurationError(f"source must be an introspection source, got {source!r}")
        self.source = source
        self.cache = cache if cache is not None else TokenCache()
        self._client = client
        self._async_client = async_client
        self.max_answer_bytes = max_answer_bytes
        self.breaker = breaker if breaker is not None else UpstreamBreaker(timer=self.cache.timer)
        self._namespace = source.name.encode("utf-8") + b"\x00"
        self._stats = dict.fromkeys(("upstream_calls", "upstream_errors", "stale_served"), 0)
        self._stats_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Authenticator({self.source!r}, {self.cache!r})"

    @property
    def clock(self) -> Callable[[], float]:
        return self.cache.clock

    def cache_key(self, digest: bytes) -> bytes:
        return self._namespace + digest

    # --- the sans-IO core ------------------------------------------------------------

    def flow(self, credentials: Credentials) -> AuthFlow:
        """The decision for one token, as a generator of work for a driver."""
        step = self.cache.begin(self.cache_key(credentials.digest))
        if isinstance(step, Leader):
            outcome = yield from self._lead(step, self.source.flow(credentials))
        elif isinstance(step, Valid | Invalid):
            outcome = step
        else:
            outcome = yield WaitFor(step)
        return self._settle(outcome)

    def _lead(self, leader: Leader, source_flow: Flow) -> Generator[httpx.Request, Any, Outcome]:
        try:
            self.breaker.acquire()
        except SourceUnavailable as refused:
            return self._fall_back(leader, refused)
        self._count("upstream_calls")
        try:
            outcome = yield from source_flow
        except SourceUnavailable as failure:
            self.breaker.release(
                failure,
                upstream_retry_after=failure.retry_after if failure.upstream_asked else None,
            )
            self._count("upstream_errors")
            return self._fall_back(leader, failure)
        except BaseException:
            # A cancelled request (GeneratorExit) or a bug: free the slot, and
            # make sure waiters do not hang.
            self.breaker.release(None)
            self.cache.abandon(leader, SourceUnavailable())
            raise
        self.breaker.release(None)
        self.cache.complete(leader, outcome)
        return outcome

    def _fall_back(self, leader: Leader, failure: SourceUnavailable) -> Outcome:
        """Serve the stale answer if stale-if-error allows, else fail the flight."""
        if leader.stale is not None and self.cache.stale_if_error > 0:
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
        with self._stats_lock:
            self._stats[name] += 1

    def stats(self) -> dict[str, int]:
        """Counters since start: upstream calls and errors, stale answers served,
        calls refused by the breaker, and cache sizes."""
        with self._stats_lock:
            counters = dict(self._stats)
        counters["breaker_rejected"] = self.breaker.rejected
        counters["cached"] = len(self.cache)
        counters["inflight"] = self.cache.inflight
        return counters

    def _settle(self, outcome: Outcome) -> Principal:
        if isinstance(outcome, Invalid):
            raise InvalidToken()
        expires_at = outcome.principal.expires_at
        if expires_at is not None and expires_at.timestamp() <= self.clock():
            raise InvalidToken("The access token has expired")
        return outcome.principal

    # --- drivers ---------------------------------------------------------------------

    def authenticate_sync(self, credentials: Credentials) -> Principal:
        """Blocking: the principal for ``credentials`` (WSGI servers, threads, the CLI)."""
        return self.run_sync(self.flow(credentials))

    async def authenticate(self, credentials: Credentials) -> Principal:
        """The principal for ``credentials``, for async code."""
        return await self.run_async(self.flow(credentials))

    def run_sync(self, flow: Generator[httpx.Request | WaitFor, Any, T]) -> T:
        """Drive any flow built on :meth:`flow` with blocking I/O."""
        client = self._client or shared_sync_client()
        try:
            work = next(flow)
            while True:
                try:
                    result = self._do_sync(client, work)
                except SourceUnavailable as exc:
                    work = flow.throw(exc)
                else:
                    work = flow.send(result)
        except StopIteration as done:
            value: T = done.value
            return value
        finally:
            flow.close()

    def _do_sync(self, client: httpx.Client, work: httpx.Request | WaitFor) -> object:
        if isinstance(work, WaitFor):
            try:
                return work.future.result(timeout=self.source.wait_timeout)
            except FutureTimeout:
                raise SourceUnavailable("Timed out waiting for the token check") from None
        try:
            response = client.send(work, stream=True)
            try:
                body = bytearray()
                for chunk in response.iter_bytes():
                    body += chunk
                    if len(body) > self.max_answer_bytes:
                        raise AnswerTooLarge
            finally:
                response.close()
        except (httpx.HTTPError, AnswerTooLarge) as exc:
            raise _transport_failure(exc, self.source.name) from None
        return _with_body(response, bytes(body))

    async def run_async(self, flow: Generator[httpx.Request | WaitFor, Any, T]) -> T:
        """Drive any flow built on :meth:`flow` with async I/O."""
        client = self._async_client or shared_async_client()
        try:
            work = next(flow)
            while True:
                try:
                    result = await self._do_async(client, work)
                except SourceUnavailable as exc:
                    work = flow.throw(exc)
                else:
                    work = flow.send(result)
        except StopIteration as done:
            value: T = done.value
            return value
        finally:
            flow.close()

    async def _do_async(self, client: httpx.AsyncClient, work: httpx.Request | WaitFor) -> object:
        if isinstance(work, WaitFor):
            try:
                # shield: a cancelled waiter must not cancel the leader's flight.
                return await asyncio.wait_for(
                    asyncio.shield(asyncio.wrap_future(work.future)),
                    timeout=self.source.wait_timeout,
                )
            except TimeoutError:
                raise SourceUnavailable("Timed out waiting for the token check") from None
        try:
            response = await client.send(work, stream=True)
            try:
                body = bytearray()
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > self.max_answer_bytes:
                        raise AnswerTooLarge
            finally:
                await response.aclose()
        except (httpx.HTTPError, AnswerTooLarge) as exc:
            raise _transport_failure(exc, self.source.name) from None
        return _with_body(response, bytes(body))

    # --- cache control ---------------------------------------------------------------

    def invalidate(self, token: str) -> None:
        """Forget the cached answer for ``token`` (e.g. after revoking it)."""
        self.cache.invalidate(self.cache_key(token_digest(token)))

    def clear(self) -> None:
        self.cache.clear()


def _with_body(response: httpx.Response, body: bytes) -> httpx.Response:
    return httpx.Response(
        response.status_code,
        headers=response.headers,
        content=body,
        request=response.request,
    )
