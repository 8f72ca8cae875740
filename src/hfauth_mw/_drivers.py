"""The sync and async drivers: the only code that does the core's I/O.

The core (:meth:`Authenticator.flow <hfauth_mw.Authenticator.flow>`, the
sources' flows, the request pipeline) is written once, as generators that
yield *work* and receive its result, the way httpx keeps the driving loop
out of ``Auth``. A driver runs such a generator to its end:

* an :class:`httpx.Request` is sent (one deadline for the whole call, the
  answer's size capped as sent, no redirects, no content coding);
* a :class:`~hfauth_mw._source_protocol.WaitFor` waits for another request's flight
  of the same token (bounded);
* a shared-tier operation (:mod:`hfauth_mw._shared_tier`) goes to its backend,
  and a :class:`~hfauth_mw._shared_tier.Pause` sleeps.

A failure of the I/O itself is thrown back into the generator as
:class:`~hfauth_mw.SourceUnavailable`: the core decides what it means.
Work the core could not yield any more (a cluster-wide lock to give back
after a request was cancelled) is handed over through :class:`Cleanup` and
run here, best effort.

This module also owns what is process-wide about the I/O: one pooled httpx
client per process (per event loop for async; httpx async connections belong
to the loop that opened them).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Generator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, TypeVar

import httpcore
import httpx

from ._deadline_transport import _BoundedBackend, within
from ._exceptions import SourceUnavailable, TransportFailure
from ._shared_tier import Pause, SharedBackend, SharedOp
from ._source_protocol import Outcome, WaitFor

__all__ = [
    "AsyncDriver",
    "Cleanup",
    "SyncDriver",
    "Together",
    "TransportFailure",
    "Work",
    "shared_async_client",
    "shared_sync_client",
]

logger = logging.getLogger("hfauth_mw")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Together:
    """Work item: run these flows at the same time (one round trip for two
    upstream calls, e.g. whoami-v2 and the hub's auth-check of a cold token).
    The result is a tuple of each flow's value, or of the exception it raised,
    in order: the yielding flow decides what a failure means. A blocking
    driver runs them one after the other and stops at the first failure: the
    later flows are closed unrun, and their places hold that failure (a token
    whoami-v2 refuses is not sent to the auth-check too)."""

    flows: tuple[Generator[Any, Any, Any], ...]


#: Everything a flow may yield. The drivers below handle all of it.
Work = httpx.Request | WaitFor | SharedOp | Pause | Together

# The request carries the caller's token already: a client of the user's own
# with auth= (their Hub token, say) must not replace it, or every token would
# pass as theirs. A plain Auth() adds nothing; None would still turn userinfo
# in the URL into Basic credentials.
_NO_AUTH = httpx.Auth()

# Timeouts are set per request by each source, so these clients are neutral.
# One client per trust_env value: with it, httpx takes proxies (HTTPS_PROXY,
# NO_PROXY, ...) and the CA bundle (SSL_CERT_FILE, SSL_CERT_DIR) from the environment.
_LIMITS = httpx.Limits(max_connections=100, max_keepalive_connections=20)
_sync_clients: dict[bool, httpx.Client] = {}
_sync_client_lock = threading.Lock()
_async_clients: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[bool, httpx.AsyncClient]
] = weakref.WeakKeyDictionary()


def _bound(transport: object) -> bool:
    """Make the connections of one of httpx's transports honour :func:`within`
    (see :func:`hfauth_mw._deadline_transport.bounded_transport`); whether that took."""
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.NetworkBackend):
        return False
    if not isinstance(backend, _BoundedBackend):
        pool._network_backend = _BoundedBackend(backend)  # type: ignore[union-attr]
    return True


def shared_sync_client(trust_env: bool = True) -> httpx.Client:
    """The process's pooled blocking client (every socket operation bounded by
    what is left of the call's deadline), with or without the environment's
    proxies and CA bundle."""
    with _sync_client_lock:
        client = _sync_clients.get(trust_env)
        if client is None:
            client = httpx.Client(limits=_LIMITS, follow_redirects=False, trust_env=trust_env)
            # The default transport and each proxy's (mounted from the environment).
            transports = [client._transport, *client._mounts.values()]
            bounded = all(_bound(t) for t in transports if t is not None)
            if not bounded:  # pragma: no cover - only with an httpx this code does not know
                logger.warning(
                    "hfauth-mw: this httpx cannot bound a whole blocking call; each read "
                    "is still bounded by the source's read timeout"
                )
            _sync_clients[trust_env] = client
        return client


def shared_async_client(trust_env: bool = True) -> httpx.AsyncClient:
    """The running event loop's pooled async client."""
    loop = asyncio.get_running_loop()
    clients = _async_clients.get(loop)
    if clients is None:
        clients = _async_clients[loop] = {}
    client = clients.get(trust_env)
    if client is None:
        client = httpx.AsyncClient(limits=_LIMITS, follow_redirects=False, trust_env=trust_env)
        clients[trust_env] = client
    return client


class AnswerTooLarge(Exception):
    pass


class AnswerTooSlow(Exception):
    pass


class AnswerEncoded(Exception):
    pass


#: Raised by the drivers' reads of an upstream answer; each becomes a 503.
_ANSWER_FAILURES = (httpx.HTTPError, AnswerTooLarge, AnswerTooSlow, AnswerEncoded, TimeoutError)


def loggable_url(url: httpx.URL) -> str:
    """``url`` without user name, password, query or fragment: safe to log."""
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"


def _error_class(exc: BaseException) -> str:
    """The error's class, and what lies under it where that tells more: a TLS
    certificate that did not verify, a refused connection, an unknown name."""
    name = type(exc).__name__
    cause: BaseException | None = exc
    seen = 0
    while cause is not None and seen < 8:
        seen += 1
        if isinstance(cause, ssl.SSLCertVerificationError):
            return f"{name} (TLS verify failure: {cause.verify_message or 'certificate'})"
        if isinstance(cause, ssl.SSLError):
            return f"{name} (TLS error: {cause.reason or type(cause).__name__})"
        if isinstance(cause, ConnectionRefusedError):
            return f"{name} (connection refused)"
        if isinstance(cause, socket.gaierror):
            return f"{name} (name resolution failed)"
        cause = cause.__cause__ or cause.__context__
    return name


def _transport_failure(exc: Exception, request: httpx.Request) -> SourceUnavailable:
    if isinstance(exc, httpx.TimeoutException | AnswerTooSlow | TimeoutError):
        description = "The token source timed out"
    elif isinstance(exc, AnswerTooLarge):
        description = "The token source answered more than we accept"
    elif isinstance(exc, AnswerEncoded):
        description = "The token source sent a compressed answer although asked for none"
    else:
        description = "The token source cannot be reached"
    detail = f"{request.method} {loggable_url(request.url)}: {_error_class(exc)}"
    # DEBUG: the request's audit line (WARNING) carries the same detail, and a
    # CLI without logging set up must not print it twice.
    logger.debug(
        "hfauth-mw: %s: %s",
        description,
        detail,
        extra={"hfauth_event": "source_error", "hfauth_detail": detail},
    )
    return TransportFailure(description, detail)


class _AnswerBody:
    """One upstream answer's body, read the same way by both drivers.

    A transport that hands over the body already read (``httpx.MockTransport``)
    leaves no stream to iterate: then the body is added whole.

    Bounded in size *as sent*: the request asks for no content coding and an
    answer that has one is refused, so a small compressed body can never
    expand past the cap in memory. Bounded in time as a whole: httpx's
    timeouts bound each read, so an upstream sending a byte at a time would
    otherwise hold the request (and a breaker slot) for as long as it likes.
    """

    __slots__ = ("_body", "_deadline", "_limit")

    def __init__(self, response: httpx.Response, limit: int, deadline: float) -> None:
        if response.headers.get("content-encoding", "identity").strip().lower() != "identity":
            raise AnswerEncoded
        self._body = bytearray()
        self._limit = limit
        self._deadline = deadline

    def add(self, chunk: bytes) -> None:
        self._body += chunk
        if len(self._body) > self._limit:
            raise AnswerTooLarge
        if time.monotonic() > self._deadline:
            raise AnswerTooSlow

    def response(self, response: httpx.Response) -> httpx.Response:
        return httpx.Response(
            response.status_code,
            headers=response.headers,
            content=bytes(self._body),
            request=response.request,
        )


def _outcome_of(run: Callable[[Any], object], flow: Generator[Any, Any, Any]) -> object:
    """``run(flow)``'s value, or the exception it raised (for :class:`Together`)."""
    try:
        return run(flow)
    except Exception as error:
        return error


def _prepare(work: httpx.Request, fallback: float) -> float:
    """Ask for the answer without content coding; return the seconds the whole
    call may take: the sum of the request's timeout phases (connect, write,
    pool, read), or ``fallback`` for a request that names none."""
    work.headers["Accept-Encoding"] = "identity"
    phases = work.extensions.get("timeout")
    if isinstance(phases, dict):
        bounds = [phase for phase in phases.values() if isinstance(phase, int | float)]
        if bounds:
            return float(sum(bounds))
    return fallback


class Cleanup:
    """Shared-tier operations a cancelled flow could not yield any more (the
    release of a cluster-wide lock), for the driver to run after it.

    Bounded: past ``maxlen`` pending operations the oldest are dropped (each
    is best effort anyway: the lock expires on its own).
    """

    def __init__(self, maxlen: int = 1024) -> None:
        self._pending: collections.deque[tuple[SharedBackend, SharedOp]] = collections.deque(
            maxlen=maxlen
        )

    def add(self, backend: SharedBackend, op: SharedOp) -> None:
        self._pending.append((backend, op))

    def take(self) -> list[tuple[SharedBackend, SharedOp]]:
        taken = []
        while self._pending:
            try:
                taken.append(self._pending.popleft())
            except IndexError:  # another thread took the last one
                break
        return taken


class _DriverBase:
    """What both drivers are configured with, by the authenticator."""

    def __init__(
        self,
        *,
        max_answer_bytes: int,
        request_timeout: float,
        wait_timeout: float,
        shared_backend: Callable[[], SharedBackend],
        cleanup: Cleanup,
        trust_env: bool = True,
    ) -> None:
        self.max_answer_bytes = max_answer_bytes
        # Fallback deadline of a request that names no timeout phases.
        self.request_timeout = request_timeout
        # How long a request waits for another request's flight.
        self.wait_timeout = wait_timeout
        self.shared_backend = shared_backend
        self.cleanup = cleanup
        #: For the process-wide clients: proxies and CA bundle from the environment.
        self.trust_env = trust_env


class SyncDriver(_DriverBase):
    """Runs flows with blocking I/O (WSGI servers, threads, the CLI)."""

    def __init__(self, client: httpx.Client | None, **config: Any) -> None:
        super().__init__(**config)
        self._client = client

    def run(self, flow: Generator[Any, Any, T]) -> T:
        client = self._client or shared_sync_client(self.trust_env)
        try:
            work = next(flow)
            while True:
                try:
                    result = self._do(client, work)
                except SourceUnavailable as exc:
                    work = flow.throw(exc)
                else:
                    work = flow.send(result)
        except StopIteration as done:
            value: T = done.value
            return value
        finally:
            flow.close()
            self.run_cleanup()

    def run_cleanup(self) -> None:
        """Run, blocking, what cancelled flows could not (best effort)."""
        for backend, op in self.cleanup.take():
            backend.execute(op)

    def _do(self, client: httpx.Client, work: Work) -> object:
        if isinstance(work, Together):
            # Blocking code runs them one after the other (a thread each would
            # cost more than the round trip it saves under a WSGI server).
            outcomes: list[object] = []
            failure: BaseException | None = None
            for flow in work.flows:
                if failure is not None:
                    flow.close()  # never started: nothing to undo
                    outcomes.append(failure)
                    continue
                outcome = _outcome_of(self.run, flow)
                if isinstance(outcome, BaseException):
                    failure = outcome
                outcomes.append(outcome)
            return tuple(outcomes)
        if isinstance(work, WaitFor):
            try:
                return work.future.result(timeout=self.wait_timeout)
            except FutureTimeout:
                raise SourceUnavailable("Timed out waiting for the token check") from None
        if isinstance(work, Pause):
            time.sleep(work.seconds)
            return None
        if not isinstance(work, httpx.Request):
            return self.shared_backend().execute(work)
        # Blocking reads cannot be interrupted: our own client's connections cut
        # every socket operation to what is left of the deadline; a client of
        # your own gets it checked as each part of the body arrives.
        deadline = time.monotonic() + _prepare(work, self.request_timeout)
        try:
            with within(deadline):
                response = client.send(work, stream=True, follow_redirects=False, auth=_NO_AUTH)
                try:
                    body = _AnswerBody(response, self.max_answer_bytes, deadline)
                    if response.is_stream_consumed:
                        body.add(response.content)
                    else:
                        for chunk in response.iter_raw():
                            body.add(chunk)
                finally:
                    response.close()
        except _ANSWER_FAILURES as exc:
            failure = _transport_failure(exc, work)
        else:
            return body.response(response)
        # Raised here, not in the except: there httpx's error would stay reachable
        # as __context__, with the request that carries the token.
        raise failure


#: Waiting futures a flight's list holds before its first sweep of cancelled ones.
_FIRST_SWEEP = 64


class _Waiting(list["asyncio.Future[Outcome]"]):
    """The futures of one event loop's coroutines waiting on one flight.

    A request that gives up (cancelled) leaves a done future behind; those are
    dropped whenever the list has doubled since the last sweep, so requests
    that come and go while a slow flight lasts cannot pile up (amortised O(1)).
    """

    __slots__ = ("_sweep_at",)

    def __init__(self) -> None:
        super().__init__()
        self._sweep_at = _FIRST_SWEEP

    def add(self, future: asyncio.Future[Outcome]) -> None:
        self.append(future)
        if len(self) >= self._sweep_at:
            self[:] = [waiting for waiting in self if not waiting.done()]
            self._sweep_at = max(_FIRST_SWEEP, 2 * len(self))


class AsyncDriver(_DriverBase):
    """Runs flows with async I/O on the running event loop."""

    def __init__(self, client: httpx.AsyncClient | None, **config: Any) -> None:
        super().__init__(**config)
        self._client = client
        # In-process waiters of a flight, per event loop: one relay each.
        self.loop_waiters: dict[tuple[Future[Outcome], asyncio.AbstractEventLoop], _Waiting] = {}
        # Cleanup operations running as tasks (a reference until done: the loop
        # keeps only weak ones). At most one per cancelled flight, each bounded
        # by the backend's socket timeout.
        self.cleanups: set[asyncio.Task[object]] = set()

    async def run(self, flow: Generator[Any, Any, T]) -> T:
        client = self._client or shared_async_client(self.trust_env)
        try:
            work = next(flow)
            while True:
                try:
                    result = await self._do(client, work)
                except SourceUnavailable as exc:
                    work = flow.throw(exc)
                else:
                    work = flow.send(result)
        except StopIteration as done:
            value: T = done.value
            return value
        finally:
            flow.close()
            self.run_cleanup()

    def run_cleanup(self) -> None:
        """Start, as tasks, what cancelled flows could not (best effort)."""
        pending = self.cleanup.take()
        if not pending:
            return
        loop = asyncio.get_running_loop()
        for backend, op in pending:
            task = loop.create_task(backend.execute_async(op))
            self.cleanups.add(task)
            task.add_done_callback(self.cleanups.discard)

    def _do(self, client: httpx.AsyncClient, work: Work) -> Awaitable[object]:
        # A waiter awaits its future directly: no coroutine of its own per waiting request.
        if isinstance(work, WaitFor):
            return self._loop_waiter(work.future)
        if isinstance(work, Together):
            return self._together(work)
        return self._send(client, work)

    async def _together(self, work: Together) -> tuple[object, ...]:
        results = await asyncio.gather(
            *(self.run(flow) for flow in work.flows), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancelled: not a result of the flow's
        return tuple(results)

    async def _send(
        self, client: httpx.AsyncClient, work: httpx.Request | SharedOp | Pause
    ) -> object:
        if isinstance(work, Pause):
            await asyncio.sleep(work.seconds)
            return None
        if not isinstance(work, httpx.Request):
            return await self.shared_backend().execute_async(work)
        seconds = _prepare(work, self.request_timeout)
        deadline = time.monotonic() + seconds
        try:
            async with asyncio.timeout(seconds):
                response = await client.send(
                    work, stream=True, follow_redirects=False, auth=_NO_AUTH
                )
                try:
                    body = _AnswerBody(response, self.max_answer_bytes, deadline)
                    if response.is_stream_consumed:
                        body.add(response.content)
                    else:
                        async for chunk in response.aiter_raw():
                            body.add(chunk)
                finally:
                    await response.aclose()
        except _ANSWER_FAILURES as exc:
            failure = _transport_failure(exc, work)
        else:
            return body.response(response)
        # Raised here, not in the except: there httpx's error would stay reachable
        # as __context__, with the request that carries the token.
        raise failure

    def _loop_waiter(self, flight: Future[Outcome]) -> asyncio.Future[Outcome]:
        """A future of this request's own for the flight's outcome. The
        coroutines of one event loop waiting on one flight share one relay
        from the flight and one timeout: a stampede of N waiters costs N plain
        futures, and cancelling one request cancels only its own future."""
        loop = asyncio.get_running_loop()
        waiting = self.loop_waiters.get((flight, loop))
        if waiting is None:
            waiting = self._wait_on_loop(flight, loop)
        future: asyncio.Future[Outcome] = loop.create_future()
        waiting.add(future)
        return future

    def _wait_on_loop(self, flight: Future[Outcome], loop: asyncio.AbstractEventLoop) -> _Waiting:
        waiting = _Waiting()
        self.loop_waiters[flight, loop] = waiting
        timer = loop.call_later(
            self.wait_timeout,
            self._end_loop_waiters,
            flight,
            loop,
            waiting,
            SourceUnavailable("Timed out waiting for the token check"),
        )

        def relay(done: Future[Outcome]) -> None:  # runs in the thread that ends the flight
            error = done.exception()
            try:
                loop.call_soon_threadsafe(
                    self._end_loop_waiters, flight, loop, waiting, error or done.result(), timer
                )
            except RuntimeError:  # the loop is closed: nobody waits, forget the entry
                self.loop_waiters.pop((flight, loop), None)

        flight.add_done_callback(relay)
        return waiting

    def _end_loop_waiters(
        self,
        flight: Future[Outcome],
        loop: asyncio.AbstractEventLoop,
        waiting: _Waiting,
        result: Outcome | BaseException,
        timer: asyncio.TimerHandle | None = None,
    ) -> None:
        # After a timeout, later waiters of the same flight have a list of their own.
        if self.loop_waiters.get((flight, loop)) is waiting:
            del self.loop_waiters[flight, loop]
        if timer is not None:
            timer.cancel()
        for future in waiting:
            if future.done():  # its request was cancelled
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        waiting.clear()
