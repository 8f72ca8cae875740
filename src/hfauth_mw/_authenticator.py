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
from ._sources import DEFAULT_MAX_ANSWER_BYTES

__all__ = ["AuthFlow", "Authenticator"]

logger = logging.getLogger("hfauth_mw")

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
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
    ) -> None:
        if not isinstance(source, IntrospectionSource):
            raise ConfigurationError(f"source must be an introspection source, got {source!r}")
        self.source = source
        self.cache = cache if cache is not None else TokenCache()
        self._client = client
        self._async_client = async_client
        self.max_answer_bytes = max_answer_bytes
        self._namespace = source.name.encode("utf-8") + b"\x00"
        self.upstream_calls = 0

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
        self.upstream_calls += 1
        try:
            outcome = yield from source_flow
        except SourceUnavailable as exc:
            self.cache.abandon(leader, exc)
            raise
        except BaseException:
            # A cancelled request (GeneratorExit) or a bug: waiters must not hang.
            self.cache.abandon(leader, SourceUnavailable())
            raise
        self.cache.complete(leader, outcome)
        return outcome

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
