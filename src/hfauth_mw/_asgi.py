"""The ASGI middleware, for Starlette, FastAPI and any ASGI application.

Security caveats, plainly:

* Everything not listed in ``public_paths`` needs a valid token (default deny).
* When the token source cannot answer, requests get 503 with ``Retry-After``:
  never 401, never let through.
* The middleware decides from the request line, the headers and, for a rule
  that reads it (``from_body``), the JSON body (at most ``max_body_bytes``,
  replayed to the app unchanged); checks that depend on anything else belong
  in the route, through ``request.scope["hfauth"]`` (a
  :class:`~hfauth_mw.RequestAuth`). A denial
  the route raises (``RequestAuth.require``) is answered as the middleware's
  own, unless the response has already started; on a WebSocket, it refuses
  the handshake, or closes the socket with 1008 once accepted.
* Public paths are served without checking any token: there ``request.user``
  is anonymous, whatever the request carries, and ``scope["hfauth"]`` is absent.
* Responses to authenticated requests get ``Vary: Authorization`` and, unless
  the app set one, ``Cache-Control: private``, so shared caches do not serve
  one caller's answer to another.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Unpack, cast

from starlette.authentication import AuthCredentials, BaseUser
from starlette.requests import HTTPConnection
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketState

from ._adapters import (
    AsgiRequest,
    PrincipalUser,
    SendWatch,
    drive_async,
    read_asgi_body,
)
from ._exceptions import AuthenticationError
from ._options import AdapterOptions, build_guard
from ._pipeline import Guard
from ._principal import ANONYMOUS, Principal
from ._request_auth import PrincipalMemo, RequestAuth
from ._validation import require_bool

__all__ = ["HFAuthMiddleware", "HubAuthCredentials", "HubUser", "get_request_auth"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: WebSocket close code for a refused handshake (RFC 6455: policy violation).
WS_POLICY_VIOLATION = 1008
#: Scope key of what the middleware saw an authenticated WebSocket's app send.
WEBSOCKET_STATE = "hfauth.websocket"


class HubUser(PrincipalUser, BaseUser):
    """``request.user`` for Starlette: the principal behind Starlette's user API.

    Built once per cached principal and shared by its requests, so it cannot
    change (as :class:`HubAuthCredentials`): a flag one request sets on its
    user would otherwise be seen by every later request with that token.
    Keep per-request state in ``request.state``.
    """

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(
            "request.user is shared by every request with this token and cannot change; "
            "keep per-request state in request.state"
        )

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __reduce__(self) -> tuple[type[HubUser], tuple[Principal]]:
        # copy and pickle would restore the slot with setattr, which is refused.
        return type(self), (self.principal,)


class HubAuthCredentials(AuthCredentials):
    """``request.auth`` for Starlette: the scopes of :func:`starlette_scopes`.

    Built once per cached principal and shared by its requests, so it cannot
    change: ``scopes`` is a tuple and the attributes cannot be set. Code that
    tries to add a scope to one request fails loudly instead of granting it
    to every later request of that caller; give the request a new
    ``AuthCredentials`` instead.
    """

    def __init__(self, scopes: Iterable[str]) -> None:
        # Not AuthCredentials.__init__: it only assigns a list.
        object.__setattr__(self, "scopes", tuple(scopes))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(
            "request.auth is shared by every request with this token and cannot change; "
            "assign request.scope['auth'] a new AuthCredentials instead"
        )

    def __delattr__(self, name: str) -> None:
        self.__setattr__(name, None)

    def __repr__(self) -> str:
        return f"HubAuthCredentials({list(self.scopes)!r})"


_ANONYMOUS_USER = HubUser(ANONYMOUS)
_NO_SCOPES = HubAuthCredentials(())


def starlette_scopes(principal: Principal) -> list[str]:
    """The scopes ``starlette.authentication.requires`` sees.

    ``authenticated`` for any valid token, ``role:<token role>``, then the
    fine-grained global permissions and OAuth scopes. A scope from the source
    named ``authenticated`` or ``role:...`` is left out (it stays in the
    principal): an identity provider's scope must not pass for ours, such as
    ``role:write`` on a read token.
    """
    if principal.is_anonymous:
        return []
    scopes = ["authenticated"]
    if principal.token_role:
        scopes.append(f"role:{principal.token_role}")
    scopes.extend(
        sorted(
            scope
            for scope in principal.global_permissions | principal.oauth_scopes
            if scope != "authenticated" and not scope.startswith("role:")
        )
    )
    return scopes


def get_request_auth(scope_or_request: Any) -> RequestAuth:
    """The :class:`~hfauth_mw.RequestAuth` of a request (a Starlette request or an ASGI scope)."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    auth = scope.get("hfauth") if isinstance(scope, MutableMapping) else None
    if not isinstance(auth, RequestAuth):
        raise RuntimeError(
            "No hfauth-mw authentication on this request: is HFAuthMiddleware installed, "
            "and is this path outside public_paths?"
        )
    return auth


class HFAuthMiddleware:
    """Pure ASGI middleware accepting Hugging Face access tokens.

    ``app.add_middleware(HFAuthMiddleware, hub_url="https://huggingface.co")``

    Give exactly one of ``authenticator`` (shared with other adapters),
    ``source`` (any introspection source) or ``hub_url`` (default
    ``https://huggingface.co``). The remaining options are :class:`Guard`'s.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        private_responses: bool = True,
        **options: Unpack[AdapterOptions],
    ) -> None:
        self.app = app
        self.guard = build_guard(options)
        # Wrapped around a Starlette app from outside (not add_middleware), its
        # ServerErrorMiddleware sits inside: a denial a route raises would be a 500
        # before it reaches us. The app's own exception handler answers it instead.
        handlers = getattr(app, "exception_handlers", None)
        if isinstance(handlers, dict) and AuthenticationError not in handlers:
            app.add_exception_handler(AuthenticationError, self._render)  # type: ignore[attr-defined]
        self.authenticator = self.guard.authenticator
        self.private_responses = require_bool("private_responses", private_responses)
        # Each cached principal's Starlette user and credentials, built once.
        self._starlette_view: PrincipalMemo[tuple[HubUser, HubAuthCredentials]] = PrincipalMemo(
            lambda principal: (HubUser(principal), HubAuthCredentials(starlette_scopes(principal))),
            self.authenticator.cache.maxsize,
        )

    def __repr__(self) -> str:
        return f"HFAuthMiddleware({self.guard!r})"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope_type = scope["type"]
        if scope_type != "http" and scope_type != "websocket":
            await self.app(scope, receive, send)
            return
        guard = self.guard
        # The kit's body test (take_body's) and settle_async, written out: a call
        # into either would be one more coroutine on every request.
        try:
            request = AsgiRequest(scope, guard.query_param, send)
            if guard.routes.request_rules and guard.reads_body(request):
                request.body, receive = await read_asgi_body(scope, receive, guard.max_body_bytes)
            auth = guard.decide(request)
            if auth is not None and not isinstance(auth, RequestAuth):
                auth = await drive_async(guard, auth)
        except AuthenticationError as error:
            if scope_type == "http":
                await self._refuse_http(error, send)
            else:
                await refuse_websocket(guard, scope, error, send)
            return
        if auth is None:
            # A public path: no token is checked, but request.user and @requires
            # must still work (as under Starlette's AuthenticationMiddleware).
            scope.setdefault("user", _ANONYMOUS_USER)
            scope.setdefault("auth", _NO_SCOPES)
            if self.private_responses:
                # A route may still check a token itself (FastAPI's RequireToken):
                # its answer is marked private if it did, by the time it starts.
                send = SendWatch(send, scope).send_marked
            await self.app(scope, receive, send)
            return
        view = self._starlette_view.table.get(id(auth.principal))
        scope["user"], scope["auth"] = (
            view[1] if view is not None else self._starlette_view.get(auth.principal)
        )
        scope["hfauth"] = auth
        if scope_type != "http":
            await serve_websocket(self.app, guard, scope, receive, send)
            return
        # A denial the route raises (auth.require(...)) is answered here, as
        # FastAPI's install() and the Flask and Django adapters answer it,
        # unless the response had started: then it goes on up, as any error.
        if self.private_responses and auth.scheme is not None:
            watched = request.send_private
        else:
            watched = request.send_watched
        try:
            await self.app(scope, receive, watched)
        except AuthenticationError as error:
            if request.response_started:
                raise
            await self._refuse_http(error, send)

    async def _render(self, conn: HTTPConnection, error: Exception) -> Response | None:
        assert isinstance(error, AuthenticationError)  # registered for it only
        return await answer_denial(self.guard, conn, error)

    async def _refuse_http(self, error: AuthenticationError, send: Send) -> None:
        response = self.guard.error_response(error)
        await send(
            {
                "type": "http.response.start",
                "status": response.status,
                "headers": _encode_headers(response.headers, len(response.body)),
            }
        )
        await send({"type": "http.response.body", "body": response.body})


async def serve_websocket(
    app: ASGIApp, guard: Guard, scope: Scope, receive: Receive, send: Send
) -> None:
    """The app on an authenticated WebSocket; a denial it raises (``auth.require``)
    refuses the handshake, or closes with 1008 once accepted, instead of the
    server's 1011 for an error."""
    state: list[str] = []  # "accepted", then "closed", as the app sends them
    # For the app's own exception handler (answer_denial): the WebSocket object
    # Starlette hands it is new, and always looks unaccepted.
    scope[WEBSOCKET_STATE] = state

    async def send_watched(message: Message) -> None:
        kind = message["type"]
        if kind == "websocket.accept":
            state.append("accepted")
        elif kind == "websocket.close" or kind == "websocket.http.response.start":
            state.append("closed")
        await send(message)

    try:
        await app(scope, receive, send_watched)
    except AuthenticationError as error:
        if "closed" in state:
            raise
        await refuse_websocket(guard, scope, error, send, accepted=bool(state))


async def refuse_websocket(
    guard: Guard, scope: Scope, error: AuthenticationError, send: Send, *, accepted: bool = False
) -> None:
    """Refuse a WebSocket: the HTTP denial (RFC 6750) on its handshake where the
    server can send one, else a close with 1008 (policy violation)."""
    response = guard.error_response(error)
    if not _must_close(scope, accepted):
        await send(
            {
                "type": "websocket.http.response.start",
                "status": response.status,
                "headers": _encode_headers(response.headers, len(response.body)),
            }
        )
        await send({"type": "websocket.http.response.body", "body": response.body})
    else:
        await send(
            {"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": _reason(error)}
        )


def _must_close(scope: Scope, accepted: bool) -> bool:
    """A refused WebSocket is closed (1008) once accepted, or where the server
    has no denial responses; else the handshake gets the HTTP denial."""
    return accepted or "websocket.http.response" not in scope.get("extensions", {})


def _reason(error: AuthenticationError) -> str:
    """The close reason of a refused WebSocket: the RFC 6750 error code (short)."""
    return (error.error or "unauthorized")[:120]


async def answer_denial(
    guard: Guard, conn: HTTPConnection, error: AuthenticationError
) -> Response | None:
    """An app's exception handler's answer to a denial raised in a route.

    The RFC 6750 response; on a WebSocket that was accepted (or whose server
    has no denial responses), no response can go: it is closed with 1008, and
    the handler answers ``None``. A Response there would reach the server as
    ``websocket.http.response.start`` after ``accept``, which it refuses.
    Whether it was accepted is what the middleware saw go out; without the
    middleware it is unknown, and the socket is closed.
    """
    if conn.scope["type"] == "websocket":
        websocket = cast(WebSocket, conn)
        sent = conn.scope.get(WEBSOCKET_STATE)
        if (isinstance(sent, list) and "closed" in sent) or (
            websocket.application_state is WebSocketState.DISCONNECTED
        ):
            return None  # nothing can go out any more
        accepted = not isinstance(sent, list) or bool(sent)
        if _must_close(conn.scope, accepted):
            await websocket.close(code=WS_POLICY_VIOLATION, reason=_reason(error))
            return None
    return render(guard, error)


def render(guard: Guard, error: AuthenticationError) -> Response:
    """The guard's RFC 6750 answer as a Starlette response (headers may repeat)."""
    rendered = guard.error_response(error)
    response = Response(rendered.body, status_code=rendered.status)
    for name, value in rendered.headers:
        response.headers.append(name, value)
    return response


def _encode_headers(
    headers: list[tuple[str, str]], content_length: int
) -> list[tuple[bytes, bytes]]:
    encoded = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    encoded.append((b"content-length", str(content_length).encode("latin-1")))
    return encoded
