"""In-process overhead per request: raw ASGI calls and raw WSGI calls, no server."""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from . import apps
from .apps import Fixture
from .harness import (
    Timing,
    asgi_call,
    asgi_scope,
    body_receive,
    run_asgi_rounds,
    run_wsgi_rounds,
    wsgi_call,
    wsgi_environ,
)
from .report import Section, fmt, ratio


@dataclass(frozen=True)
class Variant:
    key: str
    label: str
    build: Callable[[Fixture], Any]
    baseline: str | None  # key of the bare app it is compared with; None for a bare app
    needs: str | None = None  # importable module it needs
    #: The request timed: "ping" (GET /v1/ping), "chat" (POST /v1/chat/completions,
    #: 2 KiB JSON), "model-chat" (the same body, POST /v1/models/{owner}/{name}/chat)
    #: or "stream" (GET /v1/stream, a streamed answer of 64 body messages).
    request: str = "ping"


ASGI_VARIANTS = [
    Variant("bare", "bare Starlette", apps.bare_starlette, None),
    Variant("hfauth", "hfauth-mw HFAuthMiddleware, cached token", apps.hfauth_starlette, "bare"),
    Variant(
        "hfauth-no-private",
        "  the same, private_responses=False",
        apps.hfauth_starlette_shared_caching,
        "bare",
    ),
    Variant(
        "starlette-auth",
        "Starlette AuthenticationMiddleware, SHA-256 dict",
        apps.starlette_auth,
        "bare",
    ),
    Variant(
        "starlette-auth-private",
        "  the same, plus Vary/Cache-Control: private (hfauth-mw's send wrapper)",
        apps.starlette_auth_private,
        "bare",
    ),
    Variant("static-key", "static key, vLLM-style pure ASGI", apps.static_key, "bare"),
    Variant("minimal-key", "static key, minimal (floor)", apps.minimal_key, "bare"),
    Variant(
        "token-cache-floor",
        "token cache, minimal (floor: SHA-256 + dict)",
        apps.token_cache_floor,
        "bare",
    ),
    Variant(
        "private-token-cache-floor",
        "  the same floor, plus Vary/Cache-Control: private",
        apps.private_token_cache_floor,
        "bare",
    ),
    Variant("bare-fastapi", "bare FastAPI", apps.bare_fastapi, None, "fastapi"),
    Variant(
        "fastapi-bearer",
        "FastAPI HTTPBearer dependency, SHA-256 dict",
        apps.fastapi_bearer,
        "bare-fastapi",
        "fastapi",
    ),
    Variant("bare-chat", "bare Starlette, POST 2 KiB JSON", apps.bare_chat, None, request="chat"),
    Variant(
        "hfauth-body-rule",
        "hfauth-mw, body rule: openai_rules(), model in the JSON",
        apps.hfauth_body_rule,
        "bare-chat",
        request="chat",
    ),
    Variant(
        "bare-model-chat",
        "bare Starlette, the same POST, model in the path",
        apps.bare_chat,
        None,
        request="model-chat",
    ),
    Variant(
        "hfauth-path-rule",
        "hfauth-mw, path rule: POST /v1/models/{owner}/{name}/chat",
        apps.hfauth_path_rule,
        "bare-model-chat",
        request="model-chat",
    ),
    Variant(
        "bare-stream",
        f"bare Starlette, GET of a streamed answer ({apps.STREAM_CHUNKS} chunks)",
        apps.bare_stream,
        None,
        request="stream",
    ),
    Variant(
        "hfauth-stream",
        "hfauth-mw, cached token, the same streamed answer",
        apps.hfauth_stream,
        "bare-stream",
        request="stream",
    ),
    Variant(
        "starlette-auth-stream",
        "Starlette AuthenticationMiddleware, the same streamed answer",
        apps.starlette_auth_stream,
        "bare-stream",
        request="stream",
    ),
]

WSGI_VARIANTS = [
    Variant("bare", "bare Flask", apps.bare_flask, None, "flask"),
    Variant(
        "hfauth", "hfauth-mw WSGI middleware, cached token", apps.hfauth_flask, "bare", "flask"
    ),
    Variant(
        "flask-httpauth",
        "Flask-HTTPAuth HTTPTokenAuth, SHA-256 dict",
        apps.flask_httpauth,
        "bare",
        "flask_httpauth",
    ),
]

_PIP_NAMES = {"fastapi": "fastapi", "flask": "flask", "flask_httpauth": "Flask-HTTPAuth"}


def _available(module: str | None) -> bool:
    return module is None or importlib.util.find_spec(module) is not None


def overheads(timings: dict[str, Timing], variants: list[Variant]) -> dict[str, float]:
    """Best round of the variant minus best round of its baseline, µs."""
    result: dict[str, float] = {}
    for variant in variants:
        if variant.key not in timings:
            continue
        if variant.baseline is None:
            result[variant.key] = 0.0
            continue
        result[variant.key] = timings[variant.key].best - timings[variant.baseline].best
    return result


def _table(
    section: Section,
    variants: list[Variant],
    timings: dict[str, Timing],
    over: dict[str, float],
    refs: list[tuple[str, str]],
) -> None:
    section.headers = ["Variant", "µs/request", "+-", "overhead µs"] + [
        f"x {label}" for _, label in refs
    ]
    for variant in variants:
        if variant.key not in timings:
            continue
        timing = timings[variant.key]
        row = [variant.label, fmt(timing.best, 2), fmt(timing.spread, 2)]
        if variant.baseline is None:
            row += ["(baseline)"] + [""] * len(refs)
        elif variant.request != "ping":  # another request: ratios to GET rows would mislead
            row += [fmt(over[variant.key], 2)] + [""] * len(refs)
        else:
            row.append(fmt(over[variant.key], 2))
            row += [fmt(ratio(over[variant.key], over.get(ref)), 2) for ref, _ in refs]
        section.rows.append(row)
    labels = [v.label for v in variants if v.key in over and v.baseline is not None]
    section.data["plot"] = {
        "kind": "barh",
        "title": section.data["plot_title"],
        "xlabel": "overhead per request (µs, lower is better)",
        "labels": labels,
        "values": [over[v.key] for v in variants if v.key in over and v.baseline is not None],
    }


def _check(status_body: tuple[int, bytes], label: str, expected: int | tuple[int, ...]) -> None:
    status, body = status_body
    allowed = expected if isinstance(expected, tuple) else (expected,)
    if status not in allowed:
        raise RuntimeError(f"{label}: answered {status} ({body[:80]!r}), expected {expected}")


def run_asgi(fixture: Fixture, *, rounds: int, batch: int, warmup: int) -> Section:
    section = Section(
        "asgi",
        "In-process ASGI overhead per request",
        intro=(
            "Raw ASGI calls of `GET /v1/ping` (4 request headers, a Bearer token) on a Starlette "
            "app, no server. hfauth-mw uses a `LocalStoreSource` with a warm cache, default "
            "options (`Vary`/`Cache-Control: private` on the response, `request.user`, "
            "`request.auth`). The comparators hash the token with SHA-256 and look it up in a "
            "dict of 1,000 tokens; the vLLM-style check mirrors vLLM's `--api-key` middleware "
            "(`URL(scope=...)`, `Headers`, SHA-256, `compare_digest`). FastAPI's row is "
            "compared with a bare FastAPI app. The body-rule rows time `POST` of a 2 KiB "
            "JSON chat request (the app reads the body): `openai_rules()` reads the model "
            "from the body, the path rule from `/v1/models/{owner}/{name}/chat`, each "
            "against the bare app on the same request. The streamed rows time `GET` of a "
            f"server-sent-events answer of {apps.STREAM_CHUNKS} body messages, as an "
            "inference server streams tokens: hfauth-mw watches every message (for the "
            "private headers and a denial raised mid-route), Starlette's middleware none. "
            f"{rounds} rounds x {batch} requests; "
            "best round per variant (see the method below)."
        ),
    )
    section.data["plot_title"] = "ASGI, in-process: auth overhead"
    variants = []
    for variant in ASGI_VARIANTS:
        if _available(variant.needs):
            variants.append(variant)
        else:
            section.notes.append(
                f"skipped {variant.label}: `{variant.needs}` is not installed "
                f"(pip install {_PIP_NAMES[variant.needs or '']})"
            )
    built = {v.key: v.build(fixture) for v in variants}
    good, none = asgi_scope(fixture.authorization), asgi_scope(None)
    body = apps.chat_body()
    paths = {"chat": apps.CHAT_PATH, "model-chat": apps.MODEL_CHAT_PATH}
    requests = {
        v.key: (asgi_scope(fixture.authorization, paths[v.request], body), body_receive(body))
        for v in variants
        if v.request in paths
    }
    streamed = asgi_scope(fixture.authorization, apps.STREAM_PATH)
    requests.update(
        {v.key: (streamed, body_receive(b"")) for v in variants if v.request == "stream"}
    )

    async def verify() -> None:
        for variant in variants:
            app = built[variant.key]
            if variant.request == "stream":
                status, answer = await asgi_call(app, streamed)
                _check((status, answer), variant.label, 200)
                if answer.count(b"data: ") != apps.STREAM_CHUNKS:
                    raise RuntimeError(f"{variant.label}: the stream came out cut ({answer!r})")
                continue
            if variant.key in requests:
                scope, receive = requests[variant.key]
                answer = await asgi_call(app, scope, receive)
                _check(answer, variant.label, 200)
                if answer[1] != str(len(body)).encode():
                    raise RuntimeError(f"{variant.label}: the app read {answer[1]!r} bytes")
                anonymous = {**scope, "headers": scope["headers"][:-1]}  # no Authorization
                if variant.baseline is not None:
                    no_token = await asgi_call(app, anonymous, receive)
                    _check(no_token, f"{variant.label} without token", (401, 403))
                continue
            _check(await asgi_call(app, good), variant.label, 200)
            if variant.baseline is not None:
                _check(await asgi_call(app, none), f"{variant.label} without token", (401, 403))

    asyncio.run(verify())  # also warms hfauth's cache
    timings = run_asgi_rounds(
        built, good, rounds=rounds, batch=batch, warmup=warmup, requests=requests
    )
    over = overheads(timings, variants)
    _table(
        section,
        variants,
        timings,
        over,
        [("starlette-auth", "Starlette auth"), ("static-key", "static key")],
    )
    body_rule, path_rule = over.get("hfauth-body-rule"), over.get("hfauth-path-rule")
    if body_rule is not None and path_rule is not None:
        section.notes.append(
            f"body rule vs path rule, cached token, {len(body):,}-byte JSON body: "
            f"{fmt(body_rule, 2)} µs vs {fmt(path_rule, 2)} µs overhead "
            f"({fmt(body_rule - path_rule, 2)} µs to read, parse and replay the body)"
        )
    stream, ping = over.get("hfauth-stream"), over.get("hfauth")
    if stream is not None and ping is not None:
        section.notes.append(
            f"streamed answer, cached token: {fmt(stream, 2)} µs overhead for "
            f"{apps.STREAM_CHUNKS} body messages vs {fmt(ping, 2)} µs for one; about "
            f"{fmt(max(stream - ping, 0.0) * 1000 / (apps.STREAM_CHUNKS - 1), 0)} ns per "
            "further message (the watched send; Starlette's middleware does not watch it)"
        )
    section.data.update(timings={k: t.best for k, t in timings.items()}, overhead=over)
    return section


def run_wsgi(fixture: Fixture, *, rounds: int, batch: int, warmup: int) -> Section:
    section = Section(
        "wsgi",
        "In-process WSGI overhead per request",
        intro=(
            "Raw WSGI calls of `GET /v1/ping` with a Bearer token on a Flask app, no server. "
            "hfauth-mw wraps `app.wsgi_app` with a `LocalStoreSource` and a warm cache; "
            "Flask-HTTPAuth's `HTTPTokenAuth` hashes the token with SHA-256 and looks it up "
            f"in a dict of 1,000 tokens. {rounds} rounds x {batch} requests; best round "
            "per variant."
        ),
    )
    section.data["plot_title"] = "WSGI, in-process: auth overhead"
    if not _available("flask"):
        section.skipped = "Flask is not installed (pip install flask)"
        return section
    variants = []
    for variant in WSGI_VARIANTS:
        if not _available(variant.needs):
            section.notes.append(
                f"skipped {variant.label}: `{variant.needs}` is not installed "
                f"(pip install {_PIP_NAMES[variant.needs or '']})"
            )
        elif variant.key == "hfauth" and apps.wsgi_middleware_class() is None:
            section.notes.append(
                f"skipped {variant.label}: hfauth_mw does not export HFAuthWSGIMiddleware yet"
            )
        else:
            variants.append(variant)
    built = {v.key: v.build(fixture) for v in variants}
    good = wsgi_environ(fixture.authorization.decode("latin-1"))
    none = wsgi_environ(None)
    for variant in variants:
        app = built[variant.key]
        _check(wsgi_call(app, good), variant.label, 200)
        if variant.baseline is not None:
            _check(wsgi_call(app, none), f"{variant.label} without token", (401, 403))
    timings = run_wsgi_rounds(built, good, rounds=rounds, batch=batch, warmup=warmup)
    over = overheads(timings, variants)
    _table(section, variants, timings, over, [("flask-httpauth", "Flask-HTTPAuth")])
    section.data.update(timings={k: t.best for k, t in timings.items()}, overhead=over)
    return section
