"""The applications under test, shared by the in-process and the end-to-end runs.

Every protected variant serves the same route (``GET /v1/ping`` -> ``pong``)
and accepts the same token; every comparator looks the token up the way
people write it today (SHA-256 of the token, then a dict lookup), so the
rows differ only in the authentication layer.
"""

from __future__ import annotations

import hashlib
import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PATH = "/v1/ping"
HOST = "127.0.0.1"
#: The body-rule comparison: one 2 KiB chat request, the model named in its JSON
#: body (openai_rules) or in its path (a path rule), on the same app.
CHAT_MODEL = "acme/bench-model"
CHAT_PATH = "/v1/chat/completions"
MODEL_CHAT_PATH = f"/v1/models/{CHAT_MODEL}/chat"
CHAT_BODY_BYTES = 2048
#: The streamed answer: ``GET`` of a server-sent-events stream, one body message
#: per chunk, as an inference server streams tokens.
STREAM_PATH = "/v1/stream"
STREAM_CHUNKS = 64
#: Other tokens in the comparators' dicts, so they look up in a realistic table.
EXTRA_TOKENS = 999

ASGIApp = Callable[..., Any]


def sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass
class Fixture:
    """A token store on disk with one classic read token, and the same token
    in the ``{sha256: user}`` dict the comparators use."""

    store_path: Path
    token: str
    tokens: dict[bytes, str] = field(repr=False)

    @property
    def authorization(self) -> bytes:
        return f"Bearer {self.token}".encode("latin-1")


def chat_body(model: str = CHAT_MODEL, size: int = CHAT_BODY_BYTES) -> bytes:
    """An OpenAI chat-completions request of exactly ``size`` bytes of JSON naming ``model``."""
    frame = {"model": model, "messages": [{"role": "user", "content": ""}], "max_tokens": 64}
    padding = size - len(json.dumps(frame).encode())
    if padding < 0:
        raise ValueError(f"a chat body for {model!r} is longer than {size} bytes")
    frame["messages"] = [{"role": "user", "content": "x" * padding}]
    body = json.dumps(frame).encode()
    assert len(body) == size
    return body


def make_fixture(directory: Path) -> Fixture:
    from hfauth_mw import LocalTokenStore, OrgGrant

    path = directory / "bench-tokens.sqlite3"
    with LocalTokenStore(path) as store:
        issued = store.create_token(
            user="alice",
            role="read",
            orgs=[OrgGrant("acme", "read")],
            display_name="bench",
            fullname="Alice Bench",
            email="alice@example.com",
        )
    tokens = {sha256(f"hf_{secrets.token_hex(17)}"): f"user{i}" for i in range(EXTRA_TOKENS)}
    tokens[sha256(issued.token)] = "alice"
    return Fixture(path, issued.token, tokens)


# --- comparators ----------------------------------------------------------------------


class StaticKeyMiddleware:
    """A static API key, checked the way vLLM's ``--api-key`` does it.

    Modelled on vLLM's pure-ASGI ``AuthenticationMiddleware``
    (``vllm/entrypoints/openai/api_server.py``): skip OPTIONS, build the
    path with ``URL(scope=...)``, read ``Authorization`` through ``Headers``,
    compare SHA-256 digests in constant time, protect ``/v1`` paths.
    """

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key_digests = [sha256(api_key)]

    def _verify(self, headers: Any) -> bool:
        value = headers.get("authorization")
        if not value:
            return False
        scheme, _, param = value.partition(" ")
        if scheme.lower() != "bearer":
            return False
        digest = sha256(param)
        match = False
        for expected in self.key_digests:
            match |= secrets.compare_digest(digest, expected)
        return match

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        from starlette.datastructures import URL, Headers
        from starlette.responses import JSONResponse

        if scope["type"] not in ("http", "websocket") or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        root_path = scope.get("root_path", "")
        path = URL(scope=scope).path.removeprefix(root_path)
        if path.startswith("/v1") and not self._verify(Headers(scope=scope)):
            await JSONResponse({"error": "Unauthorized"}, status_code=401)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class MinimalKeyMiddleware:
    """The floor: scan the raw header list, one constant-time compare, nothing else."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.expected = f"Bearer {api_key}".encode("latin-1")

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            for name, value in scope["headers"]:
                if name == b"authorization" and secrets.compare_digest(value, self.expected):
                    break
            else:
                await send({"type": "http.response.start", "status": 401, "headers": []})
                await send({"type": "http.response.body", "body": b""})
                return
        await self.app(scope, receive, send)


class TokenCacheFloor:
    """The least any token-cache middleware does, and nothing more: the one
    ``Authorization`` header, ``Bearer`` split, SHA-256, a dict lookup, a
    freshness check on a monotonic clock, the caller put in the scope. No
    grammar check, rules, limiter, metrics, audit or response headers, so no
    real middleware can be cheaper; it shows what the 0.5x-Starlette target
    leaves for everything else.

    With ``private_responses``, it also adds the two headers every
    authenticated answer must carry (``Cache-Control: private``, ``Vary:
    Authorization``; ``shared/reference/http-auth-rules.md``) with the
    cheapest send wrapper there is: no check for a ``Cache-Control`` the app
    set, no tracking of a started response. No middleware that keeps those
    headers on can be cheaper than that row."""

    _PRIVATE = ((b"cache-control", b"private"), (b"vary", b"Authorization"))

    def __init__(
        self, app: ASGIApp, tokens: dict[bytes, str], private_responses: bool = False
    ) -> None:
        self.app = app
        self.entries = {digest: (user, math.inf) for digest, user in tokens.items()}
        self.private_responses = private_responses

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        entry = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    entry = self.entries.get(hashlib.sha256(token).digest())
                break
        if entry is None or time.monotonic() >= entry[1]:
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        scope["user"] = entry[0]
        if not self.private_responses:
            await self.app(scope, receive, send)
            return
        added = self._PRIVATE

        def send_private(message: Any) -> Any:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *added]}
            return send(message)  # the server's own awaitable: no coroutine of ours

        await self.app(scope, receive, send_private)


class PrivateHeadersOnly:
    """No authentication: only hfauth-mw's two response headers, added by its own
    send wrapper. What the headers cost a server, apart from the layer."""

    def __init__(self, app: ASGIApp) -> None:
        from hfauth_mw._adapters import SendWatch

        self.app = app
        self.watch = SendWatch

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            send = self.watch(send).send_private
        await self.app(scope, receive, send)


def _digest_backend(tokens: dict[bytes, str]) -> Any:
    from starlette.authentication import (
        AuthCredentials,
        AuthenticationBackend,
        AuthenticationError,
        SimpleUser,
    )

    class DigestBackend(AuthenticationBackend):
        """Starlette backend: SHA-256 of the Bearer token, then a dict lookup."""

        async def authenticate(self, conn: Any) -> Any:
            header = conn.headers.get("authorization")
            if header is None:
                raise AuthenticationError("missing token")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token:
                raise AuthenticationError("not a Bearer token")
            user = tokens.get(sha256(token))
            if user is None:
                raise AuthenticationError("unknown token")
            return AuthCredentials(["authenticated"]), SimpleUser(user)

    return DigestBackend()


def _refuse(conn: Any, exc: Exception) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": str(exc)}, status_code=401)


# --- ASGI apps ------------------------------------------------------------------------


def _starlette(middleware: list[Any]) -> ASGIApp:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    return Starlette(routes=[Route(PATH, ping)], middleware=middleware)


def bare_starlette(fixture: Fixture) -> ASGIApp:
    return _starlette([])


def _chat_starlette(middleware: list[Any]) -> ASGIApp:
    """Both chat routes; each reads the whole body and answers its length (what a
    server does first, and what shows the body reached the app whole)."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def chat(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    routes = [
        Route(CHAT_PATH, chat, methods=["POST"]),
        Route("/v1/models/{owner}/{name}/chat", chat, methods=["POST"]),
    ]
    return Starlette(routes=routes, middleware=middleware)


def bare_chat(fixture: Fixture) -> ASGIApp:
    return _chat_starlette([])


def _hfauth_chat(fixture: Fixture, rules: list[Any]) -> ASGIApp:
    from starlette.middleware import Middleware

    from hfauth_mw import HFAuthMiddleware, LocalStoreSource, LocalTokenStore

    source = LocalStoreSource(LocalTokenStore(fixture.store_path))
    return _chat_starlette([Middleware(HFAuthMiddleware, source=source, rules=rules)])


def _stream_starlette(middleware: list[Any]) -> ASGIApp:
    """One route answering ``STREAM_CHUNKS`` server-sent events, one body message each."""
    from collections.abc import AsyncIterator

    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import StreamingResponse
    from starlette.routing import Route

    async def events() -> AsyncIterator[bytes]:
        for _ in range(STREAM_CHUNKS):
            yield b"data: token\n\n"

    async def stream(request: Request) -> StreamingResponse:
        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[Route(STREAM_PATH, stream)], middleware=middleware)


def bare_stream(fixture: Fixture) -> ASGIApp:
    return _stream_starlette([])


def hfauth_stream(fixture: Fixture) -> ASGIApp:
    from starlette.middleware import Middleware

    from hfauth_mw import HFAuthMiddleware, LocalStoreSource, LocalTokenStore

    source = LocalStoreSource(LocalTokenStore(fixture.store_path))
    return _stream_starlette([Middleware(HFAuthMiddleware, source=source)])


def starlette_auth_stream(fixture: Fixture) -> ASGIApp:
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware

    backend = _digest_backend(fixture.tokens)
    return _stream_starlette(
        [Middleware(AuthenticationMiddleware, backend=backend, on_error=_refuse)]
    )


def hfauth_body_rule(fixture: Fixture) -> ASGIApp:
    """hfauth-mw with ``openai_rules()``: the model is read from the JSON body."""
    from hfauth_mw import openai_rules

    return _hfauth_chat(fixture, openai_rules())


def hfauth_path_rule(fixture: Fixture) -> ASGIApp:
    """hfauth-mw with a path rule: the model is in the path, the body is not read."""
    from hfauth_mw import require_read

    return _hfauth_chat(fixture, [require_read("POST /v1/models/{owner}/{name}/chat")])


def hfauth_starlette(
    fixture: Fixture, cache: Any = None, *, private_responses: bool = True
) -> ASGIApp:
    from starlette.middleware import Middleware

    from hfauth_mw import HFAuthMiddleware, LocalStoreSource, LocalTokenStore

    source = LocalStoreSource(LocalTokenStore(fixture.store_path))
    middleware = Middleware(
        HFAuthMiddleware, source=source, cache=cache, private_responses=private_responses
    )
    return _starlette([middleware])


def hfauth_starlette_shared_caching(fixture: Fixture) -> ASGIApp:
    """hfauth-mw without its ``Vary``/``Cache-Control: private`` response headers."""
    return hfauth_starlette(fixture, private_responses=False)


def starlette_auth(fixture: Fixture) -> ASGIApp:
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware

    backend = _digest_backend(fixture.tokens)
    return _starlette([Middleware(AuthenticationMiddleware, backend=backend, on_error=_refuse)])


def starlette_auth_private(fixture: Fixture) -> ASGIApp:
    """Starlette's AuthenticationMiddleware with the two private-response headers
    added as hfauth-mw adds them (:class:`PrivateHeadersOnly` outside it): the same
    job as hfauth-mw's default, like for like."""
    from starlette.middleware import Middleware
    from starlette.middleware.authentication import AuthenticationMiddleware

    backend = _digest_backend(fixture.tokens)
    return _starlette(
        [
            Middleware(PrivateHeadersOnly),
            Middleware(AuthenticationMiddleware, backend=backend, on_error=_refuse),
        ]
    )


def static_key(fixture: Fixture) -> ASGIApp:
    from starlette.middleware import Middleware

    return _starlette([Middleware(StaticKeyMiddleware, api_key=fixture.token)])


def minimal_key(fixture: Fixture) -> ASGIApp:
    from starlette.middleware import Middleware

    return _starlette([Middleware(MinimalKeyMiddleware, api_key=fixture.token)])


def token_cache_floor(fixture: Fixture) -> ASGIApp:
    from starlette.middleware import Middleware

    return _starlette([Middleware(TokenCacheFloor, tokens=fixture.tokens)])


def private_token_cache_floor(fixture: Fixture) -> ASGIApp:
    from starlette.middleware import Middleware

    floor = Middleware(TokenCacheFloor, tokens=fixture.tokens, private_responses=True)
    return _starlette([floor])


def private_headers_only(fixture: Fixture) -> ASGIApp:
    from starlette.middleware import Middleware

    return _starlette([Middleware(PrivateHeadersOnly)])


def _fastapi(dependencies: list[Any]) -> ASGIApp:
    from fastapi import FastAPI
    from fastapi.responses import PlainTextResponse

    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)

    @app.get(PATH, dependencies=dependencies)
    async def ping() -> PlainTextResponse:
        return PlainTextResponse("pong")

    return app


def bare_fastapi(fixture: Fixture) -> ASGIApp:
    return _fastapi([])


def fastapi_bearer(fixture: Fixture) -> ASGIApp:
    from fastapi import Depends, HTTPException
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

    bearer = HTTPBearer()
    tokens = fixture.tokens

    async def caller(credentials: HTTPAuthorizationCredentials = Depends(bearer)) -> str:  # noqa: B008
        user = tokens.get(sha256(credentials.credentials))
        if user is None:
            raise HTTPException(status_code=401, detail="unknown token")
        return user

    return _fastapi([Depends(caller)])


# --- WSGI apps ------------------------------------------------------------------------


def _flask(protect: Callable[[Any], Any] | None = None) -> Any:
    from flask import Flask

    app = Flask("bench")

    def ping() -> str:
        return "pong"

    view = protect(ping) if protect is not None else ping
    app.add_url_rule(PATH, "ping", view, methods=["GET"])
    return app


def bare_flask(fixture: Fixture) -> Any:
    return _flask()


def wsgi_middleware_class() -> Any:
    """The WSGI middleware class exported by hfauth_mw, or None while it does not exist."""
    import hfauth_mw

    return getattr(hfauth_mw, "HFAuthWSGIMiddleware", None)


def hfauth_flask(fixture: Fixture, cache: Any = None) -> Any:
    from hfauth_mw import LocalStoreSource, LocalTokenStore

    middleware = wsgi_middleware_class()
    if middleware is None:
        raise RuntimeError("hfauth_mw exports no HFAuthWSGIMiddleware yet")
    app = _flask()
    source = LocalStoreSource(LocalTokenStore(fixture.store_path))
    app.wsgi_app = middleware(app.wsgi_app, source=source, cache=cache)  # type: ignore[method-assign]
    return app


def flask_httpauth(fixture: Fixture) -> Any:
    from flask_httpauth import HTTPTokenAuth

    auth = HTTPTokenAuth(scheme="Bearer")
    tokens = fixture.tokens

    @auth.verify_token
    def verify(token: str) -> str | None:
        return tokens.get(sha256(token)) if token else None

    return _flask(auth.login_required)


#: Name -> builder, for the end-to-end server (``bench.server``).
ASGI_APPS: dict[str, Callable[[Fixture], ASGIApp]] = {
    "bare": bare_starlette,
    "hfauth": hfauth_starlette,
    "hfauth-no-private": hfauth_starlette_shared_caching,
    "starlette-auth": starlette_auth,
    "starlette-auth-private": starlette_auth_private,
    "static-key": static_key,
    "minimal-key": minimal_key,
    "token-cache-floor": token_cache_floor,
    "private-token-cache-floor": private_token_cache_floor,
    "headers-only": private_headers_only,
    "bare-fastapi": bare_fastapi,
    "fastapi-bearer": fastapi_bearer,
}
