"""Starlette integration: an ``AuthenticationBackend`` over the hfauth-mw core.

For apps that leave access to each route (``@requires``) and want optional
authentication: a valid token sets ``request.user``, no token leaves it
anonymous, a bad one is refused with the RFC 6750 answer::

    from starlette.applications import Starlette
    from starlette.authentication import requires
    from starlette.middleware import Middleware
    from hfauth_mw.starlette import HubAuthenticationMiddleware

    @requires("authenticated")
    async def whoami(request):
        return JSONResponse({"user": request.user.display_name})

    app = Starlette(
        routes=[Route("/whoami", whoami)],
        middleware=[Middleware(HubAuthenticationMiddleware, hub_url="https://huggingface.co")],
    )

:class:`HubAuthenticationMiddleware` is Starlette's ``AuthenticationMiddleware``
with a :class:`HubTokenBackend`, its ``on_error`` answer and the private marks
on token-authenticated answers. The backend alone plugs into Starlette's own
middleware too::

    backend = HubTokenBackend(hub_url="https://huggingface.co")
    Middleware(AuthenticationMiddleware, backend=backend, on_error=backend.on_error)

``request.user`` is a :class:`~hfauth_mw.HubUser` (Starlette's
``UnauthenticatedUser`` without a token), ``request.auth`` a
:class:`~hfauth_mw.HubAuthCredentials` whose scopes ``@requires`` checks
(``authenticated``, ``role:read``/``role:write``/``role:fineGrained``, the
fine-grained global permissions), and ``request.scope["hfauth"]``
(:func:`~hfauth_mw.get_request_auth`) the :class:`~hfauth_mw.RequestAuth`.

Security caveats, plainly:

* Nothing is refused for lack of a token here: every route says what it
  needs with ``@requires`` (Starlette answers 403 when a scope is missing, or
  redirects). For default deny, use :class:`~hfauth_mw.HFAuthMiddleware`
  (``optional_paths`` gives it this behaviour on chosen paths).
* ``method_policy`` defaults to ``False`` here: ``rules`` still apply to the
  requests that carry a token.
* A bad token (unknown, revoked, malformed) is refused, never treated as
  anonymous; a token source that cannot answer is a 503 with ``Retry-After``.
* With the backend in Starlette's own ``AuthenticationMiddleware``, pass
  ``on_error=backend.on_error`` (Starlette's default answers 400 in plain
  text), and add ``Vary: Authorization`` yourself where caches sit in front;
  :class:`HubAuthenticationMiddleware` does both.
* A rule that reads the repository from the body (``from_body``,
  ``openai_rules()``) needs :class:`HubAuthenticationMiddleware`, which reads
  the body (at most ``max_body_bytes``) before the backend runs and replays
  it to the app; Starlette's own middleware hands the backend no body, and
  such a request is then an error (500), never let through.
* A refused WebSocket gets the RFC 6750 denial on its handshake (or a close
  with 1008 where the server cannot send one) from
  :class:`HubAuthenticationMiddleware`; Starlette's own middleware closes it
  with 1000, a normal closure, which clients do not read as a refusal.
* Denials raised in a route (``get_request_auth(request).require(...)``)
  need the app's exception handler: ``exception_handlers={AuthenticationError:
  backend.exception_handler}`` (:class:`~hfauth_mw.AuthenticationError`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Unpack

from starlette.authentication import (
    AuthCredentials,
    AuthenticationBackend,
    BaseUser,
    UnauthenticatedUser,
)
from starlette.authentication import AuthenticationError as StarletteAuthenticationError
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import HTTPConnection
from starlette.responses import PlainTextResponse, Response

from ._adapters import (
    AsgiRequest,
    SendWatch,
    carried_credentials,
    read_asgi_body,
    settle_async,
)
from ._asgi import (
    HubAuthCredentials,
    HubUser,
    answer_denial,
    refuse_websocket,
    render,
    serve_websocket,
    starlette_scopes,
)
from ._exceptions import AuthenticationError
from ._options import AdapterOptions, build_guard
from ._pipeline import Guard
from ._request_auth import PrincipalMemo
from ._validation import require_bool

__all__ = ["HubAuthenticationMiddleware", "HubTokenBackend", "TokenRefused"]

#: Scope key of the body :class:`HubAuthenticationMiddleware` read for a rule.
SCOPE_BODY = "hfauth.body"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class TokenRefused(StarletteAuthenticationError):
    """What the backend raises for a refused token: Starlette's
    ``AuthenticationError``, carrying hfauth-mw's (``.error``) for ``on_error``."""

    def __init__(self, error: AuthenticationError) -> None:
        super().__init__(error.description)
        self.error = error


class HubTokenBackend(AuthenticationBackend):
    """A Starlette ``AuthenticationBackend`` accepting Hugging Face tokens.

    Options are those of :class:`~hfauth_mw.HFAuthMiddleware` (``hub_url``,
    ``source`` or ``authenticator``, ``realm``, ``rules``, ``policy``, ...);
    ``method_policy`` defaults to ``False``. Path options (``public_paths``,
    ``optional_paths``, ``protected_paths``) do not apply: every request
    carrying a token is checked, every request without one is anonymous.
    """

    def __init__(self, **options: Unpack[AdapterOptions]) -> None:
        options.setdefault("method_policy", False)
        self.guard: Guard = build_guard(options)
        self._views: PrincipalMemo[tuple[HubAuthCredentials, HubUser]] = PrincipalMemo(
            lambda principal: (HubAuthCredentials(starlette_scopes(principal)), HubUser(principal)),
            self.guard.authenticator.cache.maxsize,
        )

    def __repr__(self) -> str:
        return f"HubTokenBackend({self.guard!r})"

    async def authenticate(
        self, conn: HTTPConnection
    ) -> tuple[HubAuthCredentials, BaseUser] | None:
        guard = self.guard
        request = AsgiRequest(conn.scope, guard.query_param)
        if carried_credentials(guard, request) is None:
            return None  # anonymous: Starlette's UnauthenticatedUser
        if guard.routes.request_rules and guard.reads_body(request):
            request.body = conn.scope.get(SCOPE_BODY)
            if request.body is None and SCOPE_BODY not in conn.scope:
                raise RuntimeError(
                    "hfauth-mw: a rule reads this request's body (from_body, openai_rules), "
                    "and Starlette's AuthenticationMiddleware hands its backend no body: "
                    "use HubAuthenticationMiddleware, which reads it first"
                )
        try:
            auth = await settle_async(guard, request, lazy=True)
        except AuthenticationError as error:
            raise TokenRefused(error) from None
        assert auth is not None  # a lazy check never skips the path
        conn.scope["hfauth"] = auth
        return self._views.get(auth.principal)

    def on_error(self, conn: HTTPConnection, exc: StarletteAuthenticationError) -> Response:
        """``AuthenticationMiddleware``'s ``on_error``: the RFC 6750 answer."""
        if isinstance(exc, TokenRefused):
            return render(self.guard, exc.error)
        return PlainTextResponse(str(exc), status_code=400)  # another backend's error

    async def exception_handler(self, conn: HTTPConnection, exc: Exception) -> Response | None:
        """The app's handler for :class:`~hfauth_mw.AuthenticationError` raised in
        routes (``get_request_auth(request).require(...)``)."""
        assert isinstance(exc, AuthenticationError)  # registered for it only
        return await answer_denial(self.guard, conn, exc)


class HubAuthenticationMiddleware(AuthenticationMiddleware):
    """Starlette's ``AuthenticationMiddleware`` with a :class:`HubTokenBackend`
    (built from ``options``, or given as ``backend``), its RFC 6750 ``on_error``,
    and ``Vary: Authorization`` / ``Cache-Control: private`` on answers to
    token-authenticated requests (``private_responses``); denials raised in
    routes (``get_request_auth(request).require(...)``) are answered too."""

    def __init__(
        self,
        app: ASGIApp,
        backend: HubTokenBackend | None = None,
        *,
        private_responses: bool = True,
        **options: Unpack[AdapterOptions],
    ) -> None:
        if backend is None:
            backend = HubTokenBackend(**options)
        elif options:
            raise TypeError("give a backend or its options, not both")
        super().__init__(app, backend=backend, on_error=backend.on_error)
        self.hub_backend = backend
        self.private_responses = require_bool("private_responses", private_responses)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
            return
        if self.hub_backend.guard.routes.request_rules:
            try:
                receive = await self._read_body(scope, receive)
            except AuthenticationError as error:  # BodyTooLarge
                await render(self.hub_backend.guard, error)(scope, receive, send)
                return
        # The backend has run by the time the app answers: marked then.
        response = SendWatch(send, scope)
        watched = response.send_marked if self.private_responses else response.send_watched
        try:
            await super().__call__(scope, receive, watched)
        except AuthenticationError as error:
            # A denial a route raised (auth.require(...)), past the app's own
            # handlers: answered as the backend's, unless the answer had started.
            if response.response_started:
                raise
            await render(self.hub_backend.guard, error)(scope, receive, send)

    async def _read_body(self, scope: Scope, receive: Receive) -> Receive:
        """For a rule that reads the body: read it (capped) before the backend
        runs, which Starlette hands no ``receive``, and replay it to the app."""
        guard = self.hub_backend.guard
        request = AsgiRequest(scope, guard.query_param)
        if guard.reads_body(request) and carried_credentials(guard, request) is not None:
            scope[SCOPE_BODY], receive = await read_asgi_body(scope, receive, guard.max_body_bytes)
        else:
            # Not read: not needed, or the request is refused whatever it says (a
            # locked-out client). The backend must not take this for a missing layer.
            scope[SCOPE_BODY] = None
        return receive

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Starlette's middleware closes a refused WebSocket with 1000, a normal
        closure: here it gets the HTTP denial on its handshake (or 1008), and a
        denial the route raises is answered, as :class:`~hfauth_mw.HFAuthMiddleware`
        does."""
        guard = self.hub_backend.guard
        try:
            result = await self.hub_backend.authenticate(HTTPConnection(scope))
        except TokenRefused as refused:
            await refuse_websocket(guard, scope, refused.error, send)
            return
        scope["auth"], scope["user"] = (
            result if result is not None else (AuthCredentials(), UnauthenticatedUser())
        )
        await serve_websocket(self.app, guard, scope, receive, send)
