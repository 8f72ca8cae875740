"""The two adapters around a one-route app, for tests that run a scenario on
both: ASGI (Starlette through ``httpx.ASGITransport``, the peer 127.0.0.1) and
WSGI (a threaded werkzeug server on 127.0.0.1). ``/whoami`` answers the
principal's name.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.serving import make_server

from hfauth_mw import (
    Authenticator,
    FailureLimiter,
    HFAuthMiddleware,
    HFAuthWSGIMiddleware,
    get_request_auth,
)

#: The peer of every request: trust it to read X-Forwarded-For.
PROXY = "127.0.0.1"


class AppClient(Protocol):
    def __call__(
        self, authenticator: Authenticator, limiter: FailureLimiter | None, **options: Any
    ) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]: ...


@contextlib.asynccontextmanager
async def asgi_app(
    authenticator: Authenticator, limiter: FailureLimiter | None, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"name": get_request_auth(request).principal.name})

    app = Starlette(routes=[Route("/whoami", whoami)])
    app.add_middleware(HFAuthMiddleware, authenticator=authenticator, limiter=limiter, **options)
    transport = httpx.ASGITransport(app, client=(PROXY, 41000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@contextlib.asynccontextmanager
async def wsgi_app(
    authenticator: Authenticator, limiter: FailureLimiter | None, **options: Any
) -> AsyncIterator[httpx.AsyncClient]:
    def whoami(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"name": environ["hfauth.principal"].name}).encode()]

    wrapped = HFAuthWSGIMiddleware(whoami, authenticator=authenticator, limiter=limiter, **options)
    server = make_server(PROXY, 0, wrapped, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://{PROXY}:{server.server_port}") as client:
            yield client
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


ADAPTERS = [pytest.param(asgi_app, id="asgi"), pytest.param(wsgi_app, id="wsgi")]


async def websocket_without_denials(
    app: Any, path: str, headers: list[tuple[bytes, bytes]]
) -> list[dict[str, Any]]:
    """What ``app`` sends on a WebSocket handshake to ``path`` from a server
    without the denial-response extension (it can only accept or close)."""
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": path,
        "root_path": "",
        "headers": headers,
        "query_string": b"",
        "extensions": {},
    }
    await app(scope, receive, send)
    return sent
