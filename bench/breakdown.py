"""Where the cached path's time goes: each step of ``HFAuthMiddleware.__call__`` timed alone,
and a cProfile of the whole call (``python -m bench --profile``).

The steps use a few private helpers of hfauth_mw (``_adapters.AsgiRequest``,
``_adapters.SendWatch``); a step whose helper has moved is skipped, not fatal.
"""

from __future__ import annotations

import asyncio
import cProfile
import gc
import io
import pstats
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .apps import PATH, Fixture, StaticKeyMiddleware
from .harness import asgi_scope, micro
from .report import Section, fmt

_START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"t")]}
_BODY = {"type": "http.response.body", "body": b"pong"}


async def noop_app(scope: Any, receive: Any, send: Any) -> None:
    """The cheapest ASGI app that still answers: two sends."""
    await send(dict(_START))
    await send(_BODY)


async def _receive() -> dict[str, Any]:
    return {"type": "http.request"}


async def _send(message: Any) -> None:
    return None


def _middleware(fixture: Fixture) -> Any:
    from hfauth_mw import HFAuthMiddleware, LocalStoreSource, LocalTokenStore

    source = LocalStoreSource(LocalTokenStore(fixture.store_path))
    return HFAuthMiddleware(noop_app, source=source)


async def _amicro(fn: Callable[[], Awaitable[object]], *, n: int, repeat: int) -> float:
    results = []
    for _ in range(repeat):
        gc.disable()
        try:
            start = time.perf_counter_ns()
            for _ in range(n):
                await fn()
            results.append((time.perf_counter_ns() - start) / n)
        finally:
            gc.enable()
    return min(results)


def run_breakdown(fixture: Fixture, *, n: int, repeat: int) -> Section:
    import hashlib

    from starlette.middleware.authentication import AuthenticationMiddleware

    from hfauth_mw import parse_credentials

    from .apps import _digest_backend, _refuse

    section = Section(
        "breakdown",
        "Where the cached path spends its time",
        intro=(
            "Each step of `HFAuthMiddleware.__call__` for a cached Bearer token, timed alone "
            f"in a loop ({n:,} calls, best of {repeat}); the whole-call rows wrap a no-op ASGI "
            "app (two `send`s) and subtract it. Steps overlap (a row includes the rows "
            "indented under it), so they do not add up exactly; loop overhead is included. "
            "Every request runs the same pipeline steps (docs/architecture.md); a cached "
            "token's resolve step answers from the cache, without a generator."
        ),
    )
    mw = _middleware(fixture)
    guard, authenticator = mw.guard, mw.authenticator
    scope = asgi_scope(fixture.authorization)
    asyncio.run(mw(dict(scope), _receive, _send))  # warm the cache
    raw = [fixture.authorization]
    token = fixture.authorization[len(b"Bearer ") :]
    credentials = guard.credentials(raw, [])
    assert credentials is not None
    static = StaticKeyMiddleware(noop_app, fixture.token)
    starlette = AuthenticationMiddleware(
        noop_app, backend=_digest_backend(fixture.tokens), on_error=_refuse
    )

    rows: list[tuple[str, float | None]] = []

    def add(label: str, make: Callable[[], Callable[[], object]]) -> None:
        """Time one step; a step the current core no longer has is reported, not fatal."""
        try:
            fn = make()
            fn()
        except Exception as exc:
            rows.append((label, None))
            section.notes.append(f"{label.strip()}: not measured ({exc!r})")
            return
        rows.append((label, micro(fn, n=n, repeat=repeat)))

    def hfauth_sha256() -> Callable[[], object]:
        from hfauth_mw._principal import sha256

        return lambda: sha256(token).digest()

    def starlette_view() -> Callable[[], object]:
        return lambda: mw._starlette_view.get(principal)

    def read_request() -> Callable[[], object]:
        from hfauth_mw._adapters import AsgiRequest

        return lambda: AsgiRequest(scope, None)

    def decide() -> Callable[[], object]:
        from hfauth_mw._adapters import AsgiRequest

        request = AsgiRequest(scope, None)
        assert guard.decide(request) is not None
        return lambda: guard.decide(AsgiRequest(scope, None))

    add("empty loop (reference)", lambda: lambda: None)
    add("read the request (AsgiRequest: the scope to the request context)", read_request)
    add("Guard.decide, cached Bearer token (AsgiRequest and every step)", decide)
    add(
        "  step credentials: guard.credentials (grammar, SHA-256)",
        lambda: lambda: guard.credentials(raw, []),
    )
    add("    SHA-256 of the token (CPython's own, used here)", hfauth_sha256)
    add(
        "    SHA-256 of the token (hashlib, OpenSSL)",
        lambda: lambda: hashlib.sha256(token).digest(),
    )
    add(
        "  step resolve: Authenticator.cached (cache hit, expiry, counters)",
        lambda: lambda: authenticator.cached(credentials),
    )
    principal = authenticator.cached(credentials)
    add(
        "  step authorize: Guard.authorize (no rules, GET)",
        lambda: lambda: guard.authorize("GET", PATH, principal),
    )
    add("Starlette user and credentials (built once per principal)", starlette_view)
    add(
        "parse_credentials alone",
        lambda: (
            lambda: parse_credentials(raw, query_tokens=(), allow_basic=True, max_header_bytes=8192)
        ),
    )
    try:
        from hfauth_mw._adapters import SendWatch as _SendWatch
    except ImportError as exc:
        section.notes.append(f"send wrapper: not measured ({exc!r})")
        _SendWatch = None  # type: ignore[assignment,misc]

    async def timed_async() -> list[tuple[str, float | None]]:
        out: list[tuple[str, float | None]] = []
        if _SendWatch is not None:

            async def private_send() -> None:
                send = _SendWatch(_send).send_private
                await send(dict(_START))
                await send(_BODY)

            async def plain_send() -> None:
                await _send(dict(_START))
                await _send(_BODY)

            wrapped = await _amicro(private_send, n=n, repeat=repeat)
            plain = await _amicro(plain_send, n=n, repeat=repeat)
            out.append(("Vary/Cache-Control send wrapper (extra)", wrapped - plain))
        bare = await _amicro(lambda: noop_app(dict(scope), _receive, _send), n=n, repeat=repeat)
        out.append(("no-op ASGI app alone (reference)", bare))
        for label, app in (
            ("whole HFAuthMiddleware.__call__ (minus no-op app)", mw),
            ("vLLM-style static key middleware (minus no-op app)", static),
            ("Starlette AuthenticationMiddleware (minus no-op app)", starlette),
        ):
            total = await _amicro(
                lambda app=app: app(dict(scope), _receive, _send), n=n, repeat=repeat
            )
            out.append((label, total - bare))
        return out

    rows += asyncio.run(timed_async())
    section.headers = ["Step (cached Bearer token)", "ns/call"]
    section.rows = [[label, fmt(value, 0)] for label, value in rows]
    section.data["steps"] = dict(rows)
    return section


def profile(fixture: Fixture, *, requests: int, top: int = 30) -> str:
    """cProfile of ``requests`` cached calls of HFAuthMiddleware around a no-op app."""
    mw = _middleware(fixture)
    scope = asgi_scope(fixture.authorization)

    async def loop() -> None:
        for _ in range(requests):
            await mw(dict(scope), _receive, _send)

    asyncio.run(loop())  # warm the cache and the client map
    profiler = cProfile.Profile()

    async def profiled() -> None:
        profiler.enable()
        for _ in range(requests):
            await mw(dict(scope), _receive, _send)
        profiler.disable()

    asyncio.run(profiled())
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    return out.getvalue()
