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
            f"compared with a bare FastAPI app. {rounds} rounds x {batch} requests; best round "
            "per variant (see the method below)."
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

    async def verify() -> None:
        for variant in variants:
            app = built[variant.key]
            _check(await asgi_call(app, good), variant.label, 200)
            if variant.baseline is not None:
                _check(await asgi_call(app, none), f"{variant.label} without token", (401, 403))

    asyncio.run(verify())  # also warms hfauth's cache
    timings = run_asgi_rounds(built, good, rounds=rounds, batch=batch, warmup=warmup)
    over = overheads(timings, variants)
    _table(
        section,
        variants,
        timings,
        over,
        [("starlette-auth", "Starlette auth"), ("static-key", "static key")],
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
