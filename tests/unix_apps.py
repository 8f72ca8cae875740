"""Apps for the Unix-socket tests (tests/test_unix_sockets.py), importable by a
server started in another process (``gunicorn 'unix_apps:wsgi_app()'``).

Configured from the environment: ``HFAUTH_TEST_HUB_URL`` (the hub emulator)
and ``HFAUTH_TEST_TRUSTED`` (comma-separated ``trusted_proxies``, may be empty).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from hfauth_mw import FailureLimiter, HFAuthMiddleware, HFAuthWSGIMiddleware, get_request_auth

#: Small, so that a lockout takes few requests.
MAX_FAILURES = 3


def limiter(trusted: Iterable[str]) -> FailureLimiter:
    return FailureLimiter(max_failures=MAX_FAILURES, trusted_proxies=list(trusted))


def _trusted_from_env() -> list[str]:
    return [name for name in os.environ.get("HFAUTH_TEST_TRUSTED", "").split(",") if name]


def asgi_app(hub_url: str, trusted: Iterable[str]) -> Starlette:
    async def whoami(request: Request) -> JSONResponse:
        return JSONResponse({"name": get_request_auth(request).principal.name})

    app = Starlette(routes=[Route("/whoami", whoami)])
    app.add_middleware(HFAuthMiddleware, hub_url=hub_url, limiter=limiter(trusted))
    return app


def wsgi_app(hub_url: str | None = None, trusted: Iterable[str] | None = None) -> Any:
    """The WSGI app; without arguments, configured from the environment (gunicorn)."""

    def whoami(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"name": environ["hfauth.principal"].name}).encode()]

    return HFAuthWSGIMiddleware(
        whoami,
        hub_url=hub_url or os.environ["HFAUTH_TEST_HUB_URL"],
        limiter=limiter(_trusted_from_env() if trusted is None else trusted),
    )
