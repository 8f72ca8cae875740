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
* The middleware decides from the request line and headers only; checks that
  depend on the body or on the route's own logic belong in the route, through
  ``environ["hfauth"]`` (a :class:`~hfauth_mw.RequestAuth`; also
  ``hfauth_mw.get_request_auth(environ)``). Those keys are removed from every
  incoming environ first, so their presence always means this middleware
  authenticated the request.
* Responses to authenticated requests get ``Vary: Authorization`` and, unless
  the app set one, ``Cache-Control: private``, so shared caches do not serve
  one caller's answer to another.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from http import HTTPStatus
from types import TracebackType
from typing import Any, Unpack, cast
from urllib.parse import parse_qsl
from wsgiref.types import StartResponse, WSGIApplication, WSGIEnvironment

from werkzeug.wsgi import get_path_info

from ._checks import require_bool
from ._exceptions import AuthenticationError
from ._guard import Guard, RequestAuth, RequestFlow
from ._options import AdapterOptions, build_guard

__all__ = [
    "ENVIRON_AUTH",
    "ENVIRON_PRINCIPAL",
    "HFAuthWSGIMiddleware",
    "authenticate_environ",
    "environ_begin",
]

#: environ key of the request's :class:`~hfauth_mw.RequestAuth`.
ENVIRON_AUTH = "hfauth"
#: environ key of the request's :class:`~hfauth_mw.Principal`.
ENVIRON_PRINCIPAL = "hfauth.principal"
# Set on public paths once the server reads the body: a lazy check from inside
# it (a streamed body) could neither answer 401 nor mark the response private.
ENVIRON_STARTED = "hfauth.response_started"
# Set on public paths whose headers went out without the private marks: a
# caller checked after that must not be handed to the body.
ENVIRON_UNMARKED = "hfauth.sent_unmarked"

# Yield type left open: the drivers know the work items; adapters only pass flows on.
ExcInfo = tuple[type[BaseException], BaseException, TracebackType] | tuple[None, None, None]


def request_path(environ: WSGIEnvironment) -> str:
    """``PATH_INFO`` decoded as UTF-8, like ASGI's ``path``: the path inside the app."""
    return get_path_info(environ) or "/"


def environ_begin(guard: Guard, environ: WSGIEnvironment, path: str) -> RequestAuth | RequestFlow:
    """:meth:`Guard.begin` for a WSGI request, or anything with WSGI-style keys
    such as Django's ``request.META``: the answer, or a flow for either driver."""
    query: list[str] = []
    if guard.query_param:
        query_string = environ.get("QUERY_STRING", "")
        pairs = parse_qsl(query_string, keep_blank_values=True) if query_string else []
        query = [value for key, value in pairs if key == guard.query_param]
    # WSGI servers join repeated headers into one value, so there is at most one.
    authorization = environ.get("HTTP_AUTHORIZATION")
    return guard.begin(
        str(environ.get("REQUEST_METHOD", "GET")),
        path,
        [authorization] if authorization is not None else [],
        query,
        environ.get("REMOTE_ADDR"),
        environ.get("HTTP_X_FORWARDED_FOR"),
    )


def authenticate_environ(
    guard: Guard, environ: WSGIEnvironment, path: str | None = None
) -> RequestAuth:
    """Authenticate and authorize one WSGI request, blocking; raises AuthenticationError.

    ``path`` defaults to :func:`request_path`. Public paths are the caller's
    business: this always checks.
    """
    path = request_path(environ) if path is None else path
    step = environ_begin(guard, environ, path)
    return step if isinstance(step, RequestAuth) else guard.authenticator.run_sync(step)


def attach(environ: WSGIEnvironment, auth: RequestAuth) -> None:
    environ[ENVIRON_AUTH] = auth
    environ[ENVIRON_PRINCIPAL] = auth.principal


def refuse(
    guard: Guard,
    error: AuthenticationError,
    environ: WSGIEnvironment,
    start_response: StartResponse,
) -> list[bytes]:
    """Answer a refused WSGI request with the guard's RFC 6750 response."""
    response = guard.error_response(error)
    headers = [*response.headers, ("content-length", str(len(response.body)))]
    start_response(f"{response.status} {HTTPStatus(response.status).phrase}", headers)
    return [] if environ.get("REQUEST_METHOD") == "HEAD" else [response.body]


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
        environ.pop(ENVIRON_STARTED, None)
        environ.pop(ENVIRON_UNMARKED, None)
        path = request_path(environ)
        if self.guard.is_public(path):
            body = self.app(
                environ, _public_responses(environ, start_response, self.private_responses)
            )
            return _watched_body(body, environ)
        try:
            auth = authenticate_environ(self.guard, environ, path)
        except AuthenticationError as error:
            return refuse(self.guard, error, environ, start_response)
        attach(environ, auth)
        if self.private_responses and auth.scheme is not None:
            start_response = _private_responses(start_response)
        return self.app(environ, start_response)


def _marked_private(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    # A new list, never the app's own (it may reuse one for many responses).
    headers = list(headers)
    for name, _ in headers:
        if name.lower() == "cache-control":
            break
    else:
        headers.append(("Cache-Control", "private"))
    headers.append(("Vary", "Authorization"))
    return headers


def _private_responses(start_response: StartResponse) -> StartResponse:
    def start_private(
        status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Any:
        return start_response(status, _marked_private(headers), exc_info)

    return cast(StartResponse, start_private)


def _public_responses(
    environ: WSGIEnvironment, start_response: StartResponse, private: bool
) -> StartResponse:
    """On a public path the app may authenticate lazily (Flask's ``current_principal``):
    mark the response private if it did before the response started."""

    def start_public(
        status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Any:
        auth = environ.get(ENVIRON_AUTH)
        if private:
            if isinstance(auth, RequestAuth) and auth.scheme is not None:
                headers = _marked_private(headers)
            else:
                environ[ENVIRON_UNMARKED] = True
        return start_response(status, headers, exc_info)

    return cast(StartResponse, start_public)


class _WatchedBody:
    """The app's body, noting in ``environ`` when the server starts reading it."""

    __slots__ = ("_body", "_environ")

    def __init__(self, body: Iterable[bytes], environ: WSGIEnvironment) -> None:
        self._body = body
        self._environ = environ

    def __iter__(self) -> Iterator[bytes]:
        self._environ[ENVIRON_STARTED] = True
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
