"""The adapter kit: what every framework adapter shares, written once.

* Reading a request into a :class:`~hfauth_mw._pipeline.RequestContext`:
  :class:`AsgiRequest` (ASGI scope) and :func:`read_environ` (WSGI environ, or
  anything with WSGI-style keys such as Django's ``request.META``).
* Driving a decision that needs I/O: :func:`settle` (blocking) and
  :func:`settle_async`, which also serve a check the app asks for itself when
  the middleware did not run (``lazy=True``); :func:`carried_credentials`
  tells such a check whether there is anything to check.
* Marking authenticated answers private (``Cache-Control: private`` unless
  the app set one, and ``Vary: Authorization``): :func:`private_headers` is
  the rule, :class:`ResponseWatch` (ASGI), :func:`private_start_response` (WSGI)
  and :func:`mark_private` (a framework's response object) apply it; where the
  request is authenticated only later (a lazy check on a public path, a
  Starlette backend), :meth:`SendWatch.send_marked` and
  ``private_start_response(..., environ)`` decide when the response starts.
* :class:`PrincipalUser`: the user attributes frameworks read, over a principal.

Adapters keep only their framework's glue: where the result goes (a scope,
an environ, ``request.user``) and how an error response is sent.
"""

from __future__ import annotations

import asyncio
import collections
import io
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl
from wsgiref.types import StartResponse, WSGIEnvironment

from werkzeug.wsgi import get_path_info

from ._credentials import Credentials
from ._exceptions import AuthenticationError, BodyTooLarge
from ._pipeline import Guard, RequestFlow
from ._principal import Principal
from ._request import UNRESOLVED, RequestContext
from ._request_auth import RequestAuth

__all__ = [
    "ENVIRON_AUTH",
    "ENVIRON_PRINCIPAL",
    "ENVIRON_SENT_UNMARKED",
    "MALFORMED",
    "AsgiRequest",
    "PrincipalUser",
    "ResponseWatch",
    "SendWatch",
    "app_path",
    "carried_credentials",
    "drive_async",
    "mark_private",
    "needs_private_marks",
    "private_headers",
    "private_start_response",
    "read_asgi_body",
    "read_environ",
    "read_wsgi_body",
    "request_path",
    "settle",
    "settle_async",
    "take_body",
    "take_body_async",
    "varies_on_authorization",
    "with_private_headers",
]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]

#: environ key of the request's :class:`~hfauth_mw.RequestAuth`.
ENVIRON_AUTH = "hfauth"
#: environ key of the request's :class:`~hfauth_mw.Principal`.
ENVIRON_PRINCIPAL = "hfauth.principal"
#: environ key set when a response started without the private marks because
#: nobody had authenticated the request yet (a public path): a caller checked
#: after that must not be handed to the body.
ENVIRON_SENT_UNMARKED = "hfauth.sent_unmarked"
#: ASGI scope key of the request's :class:`~hfauth_mw.RequestAuth`.
SCOPE_AUTH = "hfauth"

_perf_counter = time.perf_counter


# --- reading the request ------------------------------------------------------------


def app_path(scope: Scope) -> str:
    """The path inside the application, whether or not the server put root_path in path."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    # Strip root_path only at a segment boundary, as Starlette's router does:
    # "/apiorg/x" is not under root_path "/api".
    if root_path and path.startswith(root_path):
        rest = path[len(root_path) :]
        if not rest:
            return "/"
        if rest[0] == "/":
            return rest
    return path


def request_path(environ: WSGIEnvironment) -> str:
    """``PATH_INFO`` decoded as UTF-8, like ASGI's ``path``: the path inside the app."""
    return get_path_info(environ) or "/"


def read_environ(
    environ: WSGIEnvironment, query_param: str | None, path: str | None = None
) -> RequestContext:
    """The request facts of a WSGI environ (or Django's ``request.META``);
    ``path`` defaults to :func:`request_path`."""
    # WSGI servers join repeated headers into one value, so there is at most one.
    authorization = environ.get("HTTP_AUTHORIZATION")
    return RequestContext(
        str(environ.get("REQUEST_METHOD", "GET")),
        request_path(environ) if path is None else path,
        [authorization] if authorization is not None else [],
        _query_tokens(environ.get("QUERY_STRING", ""), query_param)
        if query_param is not None
        else (),
        environ.get("REMOTE_ADDR"),
        environ.get("HTTP_X_FORWARDED_FOR"),
        environ,
    )


def _query_tokens(query_string: str, name: str | None) -> list[str]:
    if not query_string or name is None:
        return []
    return [v for k, v in parse_qsl(query_string, keep_blank_values=True) if k == name]


# --- the body, for a rule that reads it -----------------------------------------------

Receive = Callable[[], Awaitable[Message]]


def _too_large(limit: int) -> BodyTooLarge:
    return BodyTooLarge(f"The request body is larger than {limit} bytes")


def _declared_length(value: str | bytes | None, limit: int) -> int | None:
    """The request's ``Content-Length``, if it states one; BodyTooLarge when it
    is over ``limit`` (refused before a byte is read)."""
    if value is None:
        return None
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    text = text.strip()
    declared = int(text) if text.isascii() and text.isdigit() and len(text) < 19 else None
    if declared is not None and declared > limit:
        raise _too_large(limit)
    return declared


def _content_length(request: RequestContext) -> str | bytes | None:
    """The ``Content-Length`` a request declares: a WSGI environ (and Django's
    ``request.META``) keeps it as ``CONTENT_LENGTH``, not ``HTTP_CONTENT_LENGTH``."""
    headers = request.headers
    if isinstance(headers, Mapping):
        value = headers.get("CONTENT_LENGTH")
        return None if value is None else str(value)
    return request.header("content-length")


def _capped(body: bytes, limit: int) -> bytes:
    if len(body) > limit:
        raise _too_large(limit)
    return body


async def read_asgi_body(scope: Scope, receive: Receive, limit: int) -> tuple[bytes, Receive]:
    """Read an ASGI request's body (at most ``limit`` bytes; BodyTooLarge past it)
    and return it with a ``receive`` that replays the same messages to the app,
    then goes on with the server's (a disconnect, say)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            _declared_length(value, limit)
    messages: list[Message] = []
    size = 0
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break  # http.disconnect: the app hears it too
        size += len(message.get("body", b""))
        if size > limit:
            raise _too_large(limit)
        if not message.get("more_body", False):
            break
    body = b"".join(m.get("body", b"") for m in messages if m["type"] == "http.request")
    pending = collections.deque(messages)

    async def replay() -> Message:
        if pending:
            return pending.popleft()
        return await receive()

    return body, replay


def take_body(guard: Guard, request: RequestContext, read: Callable[[], bytes]) -> None:
    """For an adapter whose framework reads (and keeps) the body itself (Django's
    ``request.body``): hand it to a rule that needs it, capped like the others
    (a declared ``Content-Length`` over the cap is refused before ``read``)."""
    if guard.routes.request_rules and guard.reads_body(request):
        _declared_length(_content_length(request), guard.max_body_bytes)
        request.body = _capped(read(), guard.max_body_bytes)


async def take_body_async(
    guard: Guard, request: RequestContext, read: Callable[[], Awaitable[bytes]]
) -> None:
    """:func:`take_body` for a framework that reads the body with ``await``
    (Starlette's and FastAPI's ``await request.body()``, which keeps it)."""
    if guard.routes.request_rules and guard.reads_body(request):
        _declared_length(_content_length(request), guard.max_body_bytes)
        request.body = _capped(await read(), guard.max_body_bytes)


def read_wsgi_body(environ: WSGIEnvironment, limit: int) -> bytes:
    """Read a WSGI request's body (at most ``limit`` bytes; BodyTooLarge past it)
    and put it back in ``wsgi.input`` for the app, unchanged."""
    declared = _declared_length(environ.get("CONTENT_LENGTH"), limit)
    stream = environ.get("wsgi.input")
    if stream is None:
        body = b""
    elif declared is not None:
        body = stream.read(declared)
    elif environ.get("wsgi.input_terminated"):  # chunked: read to the end, capped
        # read(n) may return less than n before the end: read until it gives nothing.
        parts: list[bytes] = []
        size = 0
        while chunk := stream.read(limit + 1 - size):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
        body = b"".join(parts)
    else:
        body = b""  # no length and no terminated stream: WSGI says there is no body
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    return body


# --- driving the decision -----------------------------------------------------------

#: What :func:`carried_credentials` answers for credentials that do not parse.
MALFORMED = Credentials("", "bearer", b"")


def carried_credentials(guard: Guard, request: RequestContext) -> Credentials | None:
    """The request's credentials, for a check the app asks for itself: ``None``
    when it carries none (the caller is anonymous), :data:`MALFORMED` when they
    do not parse (they count as credentials: the check that follows refuses
    them, 400, audited and counted by the brute-force guard)."""
    try:
        return guard.credentials(request.authorization, request.query_tokens)
    except AuthenticationError:
        return MALFORMED


def settle(guard: Guard, request: RequestContext, *, lazy: bool = False) -> RequestAuth | None:
    """:meth:`Guard.decide <hfauth_mw.Guard.decide>`, blocking for any I/O it needs.
    ``None`` for a public path; raises :class:`~hfauth_mw.AuthenticationError`.
    With ``lazy`` (a check the app asks for itself) the path is always checked."""
    decided = guard.decide(request, lazy=lazy)
    if decided is None or isinstance(decided, RequestAuth):
        return decided
    return guard.authenticator.run_sync(decided)


async def settle_async(
    guard: Guard, request: RequestContext, *, lazy: bool = False
) -> RequestAuth | None:
    """:func:`settle` for async code."""
    decided = guard.decide(request, lazy=lazy)
    if decided is None or isinstance(decided, RequestAuth):
        return decided
    return await drive_async(guard, decided)


async def drive_async(guard: Guard, flow: RequestFlow) -> RequestAuth:
    """Finish a decision that needs I/O, on the running event loop (the ASGI
    middleware decides inline and calls this only for a cold token)."""
    return await guard.authenticator.run_async(flow)


# --- private responses --------------------------------------------------------------


def private_headers(
    has_cache_control: bool, varies_on_authorization: bool = False
) -> tuple[tuple[str, str], ...]:
    """What an authenticated answer gets, so that shared caches do not serve one
    caller's answer to another: ``Cache-Control: private`` unless the app chose
    its own caching, and ``Vary: Authorization`` unless the answer already
    varies on it (:func:`varies_on_authorization`)."""
    added: tuple[tuple[str, str], ...] = ()
    if not has_cache_control:
        added += (("Cache-Control", "private"),)
    if not varies_on_authorization:
        added += (("Vary", "Authorization"),)
    return added


def varies_on_authorization(value: str | bytes) -> bool:
    """Whether a ``Vary`` field value names ``Authorization``, or is ``*``."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    return any(part.strip().lower() in ("authorization", "*") for part in text.split(","))


def _asgi_lines(headers: tuple[tuple[str, str], ...]) -> list[tuple[bytes, bytes]]:
    return [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]


_Function = TypeVar("_Function", bound=Callable[..., Any])

if sys.version_info >= (3, 12):
    from inspect import markcoroutinefunction as _coroutine_function
else:

    def _coroutine_function(function: _Function) -> _Function:
        """What ``inspect.markcoroutinefunction`` does on Python 3.12 and later
        (asgiref's ``markcoroutinefunction`` does the same before it)."""
        function._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]
        return function


# The same rule as ASGI header lines, encoded once. Lists: the start message
# gets ``headers + added``.
_PRIVATE_AND_VARY = _asgi_lines(private_headers(False, False))
_VARY_ONLY = _asgi_lines(private_headers(True, False))
_PRIVATE_ONLY = _asgi_lines(private_headers(False, True))
_NOTHING: list[tuple[bytes, bytes]] = []


class ResponseWatch:
    """ASGI: the app's ``send``, watched. A denial the route raises can be
    answered until the response starts (:attr:`response_started`), and
    :meth:`send_private` marks the start private (:func:`private_headers`).

    A mixin without slots of its own: :class:`AsgiRequest` (the request
    context the ASGI middleware already builds) and :class:`SendWatch` (on its
    own) carry ``downstream`` and ``response_started``. The app gets
    :meth:`send_private` or :meth:`send_watched`, a bound method: no closure
    is made per request.

    The start message goes through a coroutine of ours: the response counts
    as started when the app awaits it, not when it merely makes the
    awaitable. Every later message is handed the server's own awaitable, with
    no coroutine of ours around it: one would cost more than the check, and an
    inference server streaming tokens sends one body message per token. The
    methods are marked as coroutine functions, as asgiref marks its own, for
    code that checks ``iscoroutinefunction``.
    """

    # The slots are the concrete classes' (two slotted bases cannot be mixed).
    __slots__ = ()
    downstream: Send
    response_started: bool

    @_coroutine_function
    def send_watched(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            return self._start(message)
        return self.downstream(message)

    @_coroutine_function
    def send_private(self, message: Message) -> Awaitable[None]:
        if message["type"] == "http.response.start":
            return self._start_private(message)
        return self.downstream(message)

    async def _start(self, message: Message) -> None:
        self.response_started = True  # type: ignore[misc]
        await self.downstream(message)

    async def _start_private(self, message: Message) -> None:
        self.response_started = True  # type: ignore[misc]
        headers = message.get("headers", ())
        if type(headers) is not list:
            headers = list(headers)  # a tuple, or any iterable: a generator can be read once
        has_cache_control = varies = False
        for name, value in headers:
            size = len(name)
            if size == 13 and name.lower() == b"cache-control":
                has_cache_control = True
            elif size == 4 and name.lower() == b"vary" and varies_on_authorization(value):
                varies = True
        if has_cache_control:
            added = _NOTHING if varies else _VARY_ONLY
        else:
            added = _PRIVATE_ONLY if varies else _PRIVATE_AND_VARY
        # New objects, never the app's: it may send one start message many times.
        await self.downstream({**message, "headers": headers + added})


# --- an ASGI request: its facts, and its response watched ------------------------------


class AsgiRequest(RequestContext, ResponseWatch):
    """The request facts of an ASGI ``http`` or ``websocket`` scope; given the
    server's ``send``, it also watches the response (:class:`ResponseWatch`).

    It sets :class:`RequestContext`'s fields itself rather than calling its
    ``__init__``: reading a scope is one call on every request, not two
    (about 840 instructions, 2% of the cached path, under callgrind), and
    ``tests/test_adapters.py`` holds the two to the same facts.
    """

    __slots__ = ("downstream", "response_started")

    def __init__(self, scope: Scope, query_param: str | None, send: Send | None = None) -> None:
        self.started = _perf_counter()
        method: str = scope.get("method", "GET")
        self.method = method if method.isupper() else method.upper()
        self.path = app_path(scope) if scope.get("root_path") else scope["path"]
        headers = self.headers = scope["headers"]
        authorization: list[bytes | str] = []
        for name, value in headers:
            if name == b"authorization":
                authorization.append(value)
        self.authorization = authorization
        self.query_tokens = (
            _query_tokens(scope.get("query_string", b"").decode("latin-1"), query_param)
            if query_param is not None
            else ()
        )
        peer = scope.get("client")
        self.peer = peer[0] if peer else None
        self._forwarded_for = UNRESOLVED  # read from the headers if a step needs it
        self.client = UNRESOLVED
        self.credentials = None
        self.principal = None
        self.body = None
        self.decided_by = None
        if send is not None:
            self.downstream = send
        self.response_started = False


class SendWatch(ResponseWatch):
    """A :class:`ResponseWatch` for a layer that reads the request elsewhere.

    Given the request's ``scope``, :meth:`send_marked` decides when the
    response starts: private if by then the request was authenticated with
    credentials (``scope["hfauth"]``, set by a Starlette backend that runs
    after this layer, say)."""

    __slots__ = ("downstream", "response_started", "scope")

    def __init__(self, send: Send, scope: Scope | None = None) -> None:
        self.downstream = send
        self.response_started = False
        self.scope = scope

    @_coroutine_function
    def send_marked(self, message: Message) -> Awaitable[None]:
        if self.scope is not None and needs_private_marks(self.scope.get(SCOPE_AUTH)):
            return self.send_private(message)
        return self.send_watched(message)


def with_private_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    has_cache_control = any(name.lower() == "cache-control" for name, _ in headers)
    varies = any(
        name.lower() == "vary" and varies_on_authorization(value) for name, value in headers
    )
    # A new list, never the app's own (it may reuse one for many responses).
    return [*headers, *private_headers(has_cache_control, varies)]


def private_start_response(
    start_response: StartResponse, environ: WSGIEnvironment | None = None
) -> StartResponse:
    """WSGI: ``start_response``, marking the response private.

    Given the request's ``environ`` (a public path, which the app may check
    lazily), it decides when the response starts: private if the request was
    authenticated with credentials by then, else it notes in ``environ`` that
    the response went out unmarked (:data:`ENVIRON_SENT_UNMARKED`)."""

    def start_private(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        if environ is None or needs_private_marks(environ.get(ENVIRON_AUTH)):
            headers = with_private_headers(headers)
        else:
            environ[ENVIRON_SENT_UNMARKED] = True
        return start_response(status, headers, exc_info)

    return cast(StartResponse, start_private)


def mark_private(
    has_header: Callable[[str], bool],
    set_header: Callable[[str, str], None],
    add_vary: Callable[[str], None],
) -> None:
    """Mark a framework's response object private, through its own header API
    (``add_vary`` merges into any ``Vary`` the app set)."""
    for name, value in private_headers(has_header("Cache-Control")):
        if name == "Vary":
            add_vary(value)
        else:
            set_header(name, value)


def needs_private_marks(auth: RequestAuth | None) -> bool:
    """Whether a request's answer must be marked private: it carried credentials."""
    return auth is not None and auth.scheme is not None


# --- the user frameworks read -------------------------------------------------------


class PrincipalUser:
    """The user attributes Starlette and Django code read, over a principal."""

    __slots__ = ("principal",)
    principal: Principal

    def __init__(self, principal: Principal) -> None:
        object.__setattr__(self, "principal", principal)

    @property
    def is_authenticated(self) -> bool:
        return not self.principal.is_anonymous

    @property
    def display_name(self) -> str:
        return self.principal.name

    @property
    def identity(self) -> str:
        return self.principal.id or self.principal.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.principal.name!r}, role={self.principal.token_role!r})"
