"""The WSGI middleware, for Flask, Django, gunicorn apps and any WSGI application.

``app.wsgi_app = HFAuthWSGIMiddleware(app.wsgi_app, hub_url="https://huggingface.co")``

It takes the same options and gives the same answers as the ASGI
:class:`~hfauth_mw.HFAuthMiddleware`: both ask the one :class:`~hfauth_mw.Guard`
for the decision, this one through the authenticator's blocking driver.

Security caveats, plainly:

* Everything not listed in ``public_paths`` needs a valid token (default deny).
* When the token source cannot answer, requests get 503 with ``Retry-After``:
  never 401, never let through.
* Paths are matched against ``PATH_INFO``, the path *inside* the application
  (the WSGI twin of ASGI's ``root_path`` handling): ``SCRIPT_NAME``, where the
  app is mounted, is not part of it, so write rules and public paths as the
  app's own routes read. A proxy that rewrites paths must do so before this
  middleware sees the request.
* The check blocks the thread serving the request, for at most the source's
  timeout. Other threads carry on: concurrent requests with the same cold
  token wait for one upstream call, and requests with other tokens are not
  held up. With one-thread workers (gunicorn ``sync``) a slow token source
  holds the whole worker: prefer ``gthread`` or more workers.
* The middleware decides from the request line, the headers and, for a rule
  that reads it (``from_body``), the JSON body (at most ``max_body_bytes``,
  put back for the app unchanged); checks that depend on anything else belong
  in the route, through ``environ["hfauth"]`` (a
  :class:`~hfauth_mw.RequestAuth`; also ``hfauth_mw.get_request_auth(environ)``).
  Those keys are removed from every incoming environ first, so their presence
  always means this middleware authenticated the request. A denial the route
  raises (``require``) is answered as the middleware's own until the app
  returns its body; raised while the body is being sent, it is too late, and
  goes on up as an error.
* Responses to authenticated requests get ``Vary: Authorization`` and, unless
  the app set one, ``Cache-Control: private``, so shared caches do not serve
  one caller's answer to another.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from http import HTTPStatus
from typing import TYPE_CHECKING, Unpack
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from ._adapters import (
    ENVIRON_AUTH,
    ENVIRON_PRINCIPAL,
    ENVIRON_SENT_UNMARKED,
    needs_private_marks,
    private_start_response,
    read_environ,
    read_wsgi_body,
    settle,
    take_body,
)
from ._exceptions import AuthenticationError
from ._options import AdapterOptions, build_guard
from ._pipeline import Guard
from ._request_auth import RequestAuth
from ._validation import require_bool

if TYPE_CHECKING:
    from _typeshed import OptExcInfo

__all__ = [
    "ENVIRON_AUTH",
    "ENVIRON_PRINCIPAL",
    "HFAuthWSGIMiddleware",
    "authenticate_lazily",
]

# Set on public paths once the server reads the body: a lazy check from inside
# it (a streamed body) could neither answer 401 nor mark the response private.
_ENVIRON_STARTED = "hfauth.response_started"


def attach(environ: WSGIEnvironment, auth: RequestAuth) -> None:
    environ[ENVIRON_AUTH] = auth
    environ[ENVIRON_PRINCIPAL] = auth.principal


def authenticate_lazily(
    guard: Guard, environ: WSGIEnvironment, read_body: Callable[[], bytes] | None = None
) -> RequestAuth:
    """The request's :class:`~hfauth_mw.RequestAuth`: the middleware's, or, on a
    path the middleware let through unchecked (a public path), checked now,
    once, blocking. Raises AuthenticationError.

    A rule that reads the body gets it from ``read_body`` (a framework that
    keeps the body it read, such as Flask's ``request.get_data``), else from
    ``wsgi.input``, which is put back for the app.

    Raises ``RuntimeError`` when asked for on a public path once its response
    is being streamed: too late to answer 401 or to mark the answer private.
    """
    auth = environ.get(ENVIRON_AUTH)
    streaming = environ.get(_ENVIRON_STARTED)
    if isinstance(auth, RequestAuth) and not (
        # Checked on a public path after its headers went out unmarked (in a
        # teardown hook, say): not for a streamed body to show.
        streaming and auth.scheme is not None and environ.get(ENVIRON_SENT_UNMARKED)
    ):
        return auth
    if streaming:
        raise RuntimeError(
            "hfauth-mw: the caller was asked for on a public path while its streamed body "
            "was being sent (inside the body, or in a teardown hook, which "
            "stream_with_context runs after the body), too late to answer 401 or mark the "
            "response private. Read current_principal/current_auth in the view before it "
            "returns the stream, or take the path out of public_paths."
        )
    request = read_environ(environ, guard.query_param)
    take_body(guard, request, read_body or (lambda: read_wsgi_body(environ, guard.max_body_bytes)))
    auth = settle(guard, request, lazy=True)
    assert auth is not None  # a lazy check never skips the path
    attach(environ, auth)
    return auth


def refuse(
    guard: Guard,
    error: AuthenticationError,
    method: str,
    start_response: StartResponse,
    exc_info: OptExcInfo | None = None,
) -> list[bytes]:
    """Answer a refused WSGI request with the guard's RFC 6750 response (given
    ``exc_info``, in place of a start the app made before it raised)."""
    response = guard.error_response(error)
    headers = [*response.headers, ("content-length", str(len(response.body)))]
    status = f"{response.status} {_phrase(response.status)}"
    if exc_info is None:
        start_response(status, headers)
    else:
        start_response(status, headers, exc_info)
    return [] if method == "HEAD" else [response.body]


def _phrase(status: int) -> str:
    """The reason phrase of a status line; a status of an ``error_format`` of the
    server's own that HTTP does not name (499, say) gets a neutral one."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Refused"


class HFAuthWSGIMiddleware:
    """WSGI middleware accepting Hugging Face access tokens.

    Options are those of the ASGI :class:`~hfauth_mw.HFAuthMiddleware` (see
    :class:`AdapterOptions` and :class:`~hfauth_mw.Guard`). On success the
    request's :class:`~hfauth_mw.RequestAuth` is in ``environ["hfauth"]`` and
    its principal in ``environ["hfauth.principal"]``; requests to public paths
    carry neither.
    """

    def __init__(
        self,
        app: WSGIApplication,
        *,
        private_responses: bool = True,
        **options: Unpack[AdapterOptions],
    ) -> None:
        self.app = app
        self.guard = build_guard(options)
        self.authenticator = self.guard.authenticator
        self.private_responses = require_bool("private_responses", private_responses)

    def __repr__(self) -> str:
        return f"HFAuthWSGIMiddleware({self.guard!r})"

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        environ.pop(ENVIRON_AUTH, None)
        environ.pop(ENVIRON_PRINCIPAL, None)
        environ.pop(_ENVIRON_STARTED, None)
        environ.pop(ENVIRON_SENT_UNMARKED, None)
        guard = self.guard
        request = read_environ(environ, guard.query_param)
        try:
            take_body(guard, request, lambda: read_wsgi_body(environ, guard.max_body_bytes))
            auth = settle(guard, request)
        except AuthenticationError as error:
            return refuse(guard, error, request.method, start_response)
        if auth is None:  # a public path
            # The app may check the caller lazily (Flask's current_principal):
            # marked private if it did before the response started.
            if self.private_responses:
                start_response = private_start_response(start_response, environ)
            return _watched_body(self.app(environ, start_response), environ)
        attach(environ, auth)
        answer = start_response
        if self.private_responses and needs_private_marks(auth):
            answer = private_start_response(start_response)
        try:
            return self.app(environ, answer)
        except AuthenticationError as error:
            # A denial the app raised (environ["hfauth"].require(...)) before it
            # returned its body: answered as the middleware's own. One raised
            # from inside a body being sent is too late and goes on up.
            raised = sys.exc_info()
            try:
                return refuse(guard, error, request.method, start_response)
            except AssertionError:
                # The app had called start_response: servers take a second call
                # only with exc_info (PEP 3333), and re-raise it if headers went out.
                return refuse(guard, error, request.method, start_response, raised)


class _WatchedBody:
    """The app's body, noting in ``environ`` when the server starts reading it."""

    __slots__ = ("_body", "_environ")

    def __init__(self, body: Iterable[bytes], environ: WSGIEnvironment) -> None:
        self._body = body
        self._environ = environ

    def __iter__(self) -> Iterator[bytes]:
        self._environ[_ENVIRON_STARTED] = True
        return iter(self._body)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()


def _watched_body(body: Iterable[bytes], environ: WSGIEnvironment) -> Iterable[bytes]:
    # A list or a file runs no code of the app's while it is read: passed as
    # is, servers keep what they do with them (Content-Length from a one-item
    # list, sendfile for their file wrapper).
    if isinstance(body, list | tuple):
        return body
    file_wrapper = environ.get("wsgi.file_wrapper")
    if isinstance(file_wrapper, type) and isinstance(body, file_wrapper):
        return body
    return _WatchedBody(body, environ)
