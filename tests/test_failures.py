"""The upstream failure matrix: every way the token source can fail, for both adapters.

One parametrised test, one row per fault, run against the ASGI middleware (a
Starlette app driven through ``httpx.ASGITransport``) and the WSGI middleware
(a real threaded werkzeug server on 127.0.0.1). Each fault comes from a real
loopback upstream (``tests/faults.py``), reached through the library's own
pooled httpx clients. Every row checks the same promises:

* the client gets 503 with a ``Retry-After`` (the upstream's, bounded, when
  it sent one; else the default), the JSON error ``temporarily_unavailable``
  and no ``WWW-Authenticate`` (the token was not judged bad);
* the application was not called (no principal, not even half of one);
* nothing was cached: once the fault is cleared, the same token reaches the
  upstream again and, with a good answer, gets 200;
* a redirect is never followed (a good upstream on another host, 127.0.0.2,
  never hears from us);
* no token in any log record (``no_token_in_logs`` in conftest, autouse).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import gzip
import json
import logging
import secrets
import string
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.serving import make_server

from faults import (
    FULL_BACKLOG,
    REFUSED,
    SILENT,
    SLOW_BODY,
    BacklogNotFull,
    Fault,
    FaultServer,
    answer,
    drip,
    endless_body,
    json_answer,
    raw,
    redirect,
    whoami_answer,
)
from hfauth_mw import (
    Authenticator,
    Credentials,
    HFAuthMiddleware,
    HFAuthWSGIMiddleware,
    HubWhoamiSource,
    SourceUnavailable,
    TokenCache,
    get_request_auth,
)
from hfauth_mw._sources import DEFAULT_MAX_ANSWER_BYTES, DEFAULT_RETRY_AFTER, MAX_RETRY_AFTER

pytestmark = pytest.mark.anyio

_ALPHANUMERIC = string.ascii_letters + string.digits
#: Short enough that the slow rows finish fast, long enough for loopback.
SOURCE_TIMEOUT = httpx.Timeout(0.3)


def hub_shaped_token() -> str:
    """``hf_`` + 34 letters/digits, the shape conftest's log scanner looks for."""
    return "hf_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(34))


# --- the rows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One fault. ``fault`` may need the other host's URL (redirects) or the time
    (HTTP-date Retry-After), so it is built when the row runs."""

    fault: Fault | Callable[[str], Fault]
    #: Part of the 503's error_description: proof that this fault, and no other, was hit.
    says: str
    #: Expected Retry-After: exact, or an inclusive range (HTTP dates tick during the test).
    retry_after: int | tuple[int, int] = DEFAULT_RETRY_AFTER
    #: False when the request never arrives (refused, or the SYN was dropped).
    reaches_upstream: bool = True

    def build(self, elsewhere: str) -> Fault:
        return self.fault(elsewhere) if callable(self.fault) else self.fault


def _http_date_in(seconds: int) -> Fault:
    when = email.utils.formatdate(time.time() + seconds, usegmt=True)
    return answer(429, '{"error": "slow down"}', headers=[("Retry-After", when)])


def _deeply_nested(depth: int) -> Fault:
    return answer(200, "[" * depth + "]" * depth)


def _status(status: int, **headers: str) -> Fault:
    return answer(status, '{"error": "upstream trouble"}', headers=list(headers.items()))


_STOLEN = "/api/whoami-v2"
_PAST_CAP = DEFAULT_MAX_ANSWER_BYTES * 4

REACH, TIMEOUT, TOO_BIG = "cannot be reached", "timed out", "answered more than we accept"
NOT_JSON, BAD_JSON, SHAPE = "other than JSON", "malformed JSON", "unexpected shape"
LIMITED = "rate limiting us"

ROWS = [
    # --- transport ---
    pytest.param(Row(REFUSED, REACH, reaches_upstream=False), id="connection-refused"),
    pytest.param(
        Row(FULL_BACKLOG, TIMEOUT, reaches_upstream=False), id="connect-timeout-full-backlog"
    ),
    pytest.param(Row(SILENT, TIMEOUT), id="read-timeout-no-headers"),
    pytest.param(Row(SLOW_BODY, TIMEOUT), id="read-timeout-slow-body"),
    # Each byte inside the read timeout, the whole far past the sum of the phases.
    pytest.param(
        Row(drip(whoami_answer("alice") | {"pad": "x" * 300}), TIMEOUT), id="body-dripped"
    ),
    pytest.param(Row(raw(b""), REACH), id="hang-up-before-answering"),
    pytest.param(Row(raw(b"SSH-2.0-OpenSSH_9.6\r\n"), REACH), id="not-http-at-all"),
    pytest.param(
        Row(raw(b'HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{"name"'), REACH),
        id="hang-up-mid-body",
    ),
    # --- server errors ---
    pytest.param(Row(_status(500), "HTTP 500"), id="500"),
    pytest.param(Row(_status(502), "HTTP 502"), id="502"),
    pytest.param(Row(_status(503), "HTTP 503"), id="503"),
    pytest.param(Row(_status(504), "HTTP 504"), id="504"),
    pytest.param(Row(_status(503, **{"Retry-After": "17"}), "HTTP 503", 17), id="503-retry-after"),
    pytest.param(Row(_status(403), "HTTP 403"), id="403-from-a-waf"),
    pytest.param(Row(_status(404), "HTTP 404"), id="404-wrong-url"),
    # --- rate limiting ---
    pytest.param(Row(_status(429), LIMITED), id="429-no-hint"),
    pytest.param(
        Row(_status(429, **{"Retry-After": "7"}), LIMITED, 7), id="429-retry-after-seconds"
    ),
    pytest.param(
        Row(lambda _: _http_date_in(30), LIMITED, (27, 30)), id="429-retry-after-http-date"
    ),
    pytest.param(
        Row(_status(429, **{"Retry-After": "86400"}), LIMITED, MAX_RETRY_AFTER),
        id="429-retry-after-capped",
    ),
    pytest.param(
        Row(_status(429, **{"Retry-After": "soon"}), LIMITED), id="429-retry-after-garbage"
    ),
    pytest.param(
        Row(
            _status(429, RateLimit='"api";r=0;t=42', **{"RateLimit-Policy": '"api";q=1000;w=300'}),
            LIMITED,
            42,
        ),
        id="429-ratelimit-header",
    ),
    # --- not JSON ---
    pytest.param(
        Row(answer(200, "<html>hello</html>", content_type="text/html"), NOT_JSON),
        id="200-html",
    ),
    pytest.param(Row(answer(200, "not json at all"), BAD_JSON), id="200-json-type-garbage-body"),
    pytest.param(
        Row(answer(200, "not json at all", content_type="Application/JSON"), BAD_JSON),
        id="200-json-type-any-case",
    ),
    pytest.param(Row(answer(200, ""), BAD_JSON), id="200-empty-body"),
    pytest.param(
        Row(answer(200, json.dumps(whoami_answer("alice")), content_type="text/plain"), NOT_JSON),
        id="200-right-json-wrong-content-type",
    ),
    pytest.param(Row(answer(200, b'{"name": "\xff\xfe"}'), BAD_JSON), id="200-invalid-utf8"),
    pytest.param(Row(_deeply_nested(100_000), BAD_JSON), id="200-json-nested-too-deep"),
    # --- JSON of the wrong shape or types ---
    pytest.param(Row(json_answer([]), SHAPE), id="shape-array"),
    pytest.param(Row(json_answer("alice"), SHAPE), id="shape-string"),
    pytest.param(Row(json_answer(None), SHAPE), id="shape-null"),
    pytest.param(Row(json_answer({}), SHAPE), id="shape-empty-object"),
    pytest.param(Row(json_answer({"name": 42}), SHAPE), id="type-name-number"),
    pytest.param(Row(json_answer({"name": ""}), SHAPE), id="type-name-empty"),
    pytest.param(Row(json_answer({"name": ["alice"]}), SHAPE), id="type-name-list"),
    pytest.param(Row(json_answer({"name": "alice", "orgs": "acme"}), SHAPE), id="type-orgs-string"),
    pytest.param(Row(json_answer({"name": "alice", "orgs": [7]}), SHAPE), id="type-org-number"),
    pytest.param(
        Row(json_answer({"name": "alice", "auth": {"accessToken": {"role": ["write"]}}}), SHAPE),
        id="type-role-list",
    ),
    pytest.param(
        Row(json_answer({"name": "alice", "auth": {"expiresAt": "soon"}}), SHAPE),
        id="type-expiry-not-a-date",
    ),
    pytest.param(
        Row(json_answer({"name": "alice", "auth": "access_token"}), SHAPE), id="type-auth-string"
    ),
    pytest.param(
        Row(json_answer({"name": "alice", "auth": False}), SHAPE),
        id="type-auth-false",
    ),
    pytest.param(
        Row(json_answer({"name": "alice", "auth": {"accessToken": []}}), SHAPE),
        id="type-access-token-empty-list",
    ),
    pytest.param(
        Row(json_answer({"name": "alice", "auth": {"accessToken": {"fineGrained": ""}}}), SHAPE),
        id="type-fine-grained-empty-string",
    ),
    # --- content coding: asked for none; a compressed body could expand past the cap ---
    pytest.param(
        Row(
            answer(
                200,
                gzip.compress(json.dumps(whoami_answer("alice")).encode()),
                headers=[("Content-Encoding", "gzip")],
            ),
            "compressed answer",
        ),
        id="200-gzip-not-asked-for",
    ),
    # --- over the size cap (the Authenticator's max_answer_bytes) ---
    pytest.param(
        Row(endless_body(content_length=_PAST_CAP), TOO_BIG), id="body-over-cap-content-length"
    ),
    pytest.param(Row(endless_body(content_length=None), TOO_BIG), id="body-over-cap-chunked"),
    # --- redirects: never followed, least of all to another host ---
    pytest.param(
        Row(lambda other: redirect(301, other + _STOLEN), "HTTP 301"), id="301-to-another-host"
    ),
    pytest.param(
        Row(lambda other: redirect(302, other + _STOLEN), "HTTP 302"), id="302-to-another-host"
    ),
    pytest.param(
        Row(lambda other: redirect(307, other + _STOLEN), "HTTP 307"), id="307-to-another-host"
    ),
    pytest.param(
        Row(lambda other: redirect(308, other + _STOLEN), "HTTP 308"), id="308-to-another-host"
    ),
]


# --- the adapters ------------------------------------------------------------------------------


class AdapterClient(Protocol):
    def __call__(
        self, authenticator: Authenticator, app_calls: list[str]
    ) -> contextlib.AbstractAsyncContextManager[httpx.AsyncClient]: ...


@contextlib.asynccontextmanager
async def asgi_client(
    authenticator: Authenticator, app_calls: list[str]
) -> AsyncIterator[httpx.AsyncClient]:
    async def whoami(request: Request) -> JSONResponse:
        principal = get_request_auth(request).principal
        app_calls.append(principal.name)
        return JSONResponse({"name": principal.name})

    app = Starlette(routes=[Route("/whoami", whoami)])
    # limiter=None: the brute-force guard is tested elsewhere and must not interfere.
    app.add_middleware(HFAuthMiddleware, authenticator=authenticator, limiter=None)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


@contextlib.asynccontextmanager
async def wsgi_client(
    authenticator: Authenticator, app_calls: list[str]
) -> AsyncIterator[httpx.AsyncClient]:
    def whoami(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        principal = environ["hfauth.principal"]
        app_calls.append(principal.name)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps({"name": principal.name}).encode()]

    wrapped = HFAuthWSGIMiddleware(whoami, authenticator=authenticator, limiter=None)
    server = make_server("127.0.0.1", 0, wrapped, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.server_port}") as client:
            yield client
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


ADAPTERS = [pytest.param(asgi_client, id="asgi"), pytest.param(wsgi_client, id="wsgi")]


def audit_events(records: list[logging.LogRecord]) -> list[tuple[str, str | None]]:
    """(event, token fingerprint) of every audit record so far."""
    return [
        (getattr(record, "hfauth_event", "?"), getattr(record, "hfauth_fingerprint", None))
        for record in records
        if record.name == "hfauth_mw.audit"
    ]


def _retry_after_ok(value: str | None, expected: int | tuple[int, int]) -> bool:
    if value is None or not value.isdigit():
        return False
    low, high = expected if isinstance(expected, tuple) else (expected, expected)
    return low <= int(value) <= high


# --- the matrix ------------------------------------------------------------------------------


@pytest.mark.parametrize("row", ROWS)
@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_upstream_fault(
    adapter: AdapterClient, row: Row, clock: Any, no_token_in_logs: list[logging.LogRecord]
) -> None:
    token = hub_shaped_token()
    headers = {"Authorization": f"Bearer {token}"}
    fingerprint = Credentials.from_token(token).fingerprint
    app_calls: list[str] = []
    # A good upstream on another loopback host: a followed redirect would land here.
    with FaultServer(json_answer(whoami_answer("mallory")), host="127.0.0.2") as elsewhere:
        fault = row.build(elsewhere.url)
        try:
            upstream = FaultServer(fault).start()
        except BacklogNotFull as exc:
            pytest.skip(f"no connect timeout on this kernel: {exc}")
        try:
            # TTLs far beyond the clock advance below: anything wrongly cached stays cached.
            cache = TokenCache(ttl=3600, negative_ttl=3600, timer=clock, clock=clock)
            source = HubWhoamiSource(upstream.url, timeout=SOURCE_TIMEOUT)
            authenticator = Authenticator(source, cache=cache)
            async with adapter(authenticator, app_calls) as client:
                response = await client.get("/whoami", headers=headers)

                assert response.status_code == 503, response.text
                assert _retry_after_ok(response.headers.get("retry-after"), row.retry_after), (
                    f"Retry-After {response.headers.get('retry-after')!r}, "
                    f"expected {row.retry_after}"
                )
                body = response.json()
                assert body["error"] == "temporarily_unavailable"
                assert row.says in body["error_description"]
                assert "www-authenticate" not in response.headers
                assert app_calls == [], "the application ran without a principal"
                assert upstream.calls == (1 if row.reaches_upstream else 0)
                stats = authenticator.stats()
                assert stats["cached"] == 0, "a failure was cached"
                assert stats["inflight"] == 0, "a failed flight was left running"
                assert stats["upstream_errors"] == 1
                # The decision was logged (so the token scan in conftest had something to
                # scan), by fingerprint only.
                assert audit_events(no_token_in_logs) == [("unavailable", fingerprint)]

                # Clear the fault; move past any Retry-After the breaker honours (capped
                # at MAX_RETRY_AFTER) but stay far inside the cache TTLs.
                upstream.clear()
                clock.advance(MAX_RETRY_AFTER + 1)
                calls_before = upstream.calls
                response = await client.get("/whoami", headers=headers)

                assert response.status_code == 200, response.text
                assert response.json() == {"name": "alice"}
                assert app_calls == ["alice"]
                assert upstream.calls == calls_before + 1, "the retry did not reach the upstream"
                assert authenticator.stats()["cached"] == 1
                assert audit_events(no_token_in_logs)[1:] == [("allowed", fingerprint)]
        finally:
            upstream.stop()
        assert elsewhere.calls == 0, "a redirect was followed to another host"


@pytest.mark.parametrize(
    "driver", [pytest.param("sync", id="sync"), pytest.param("async", id="async")]
)
async def test_a_client_of_your_own_never_follows_a_redirect(driver: str) -> None:
    """Own clients are for proxies and certificates; their redirect setting must not leak in."""
    token = Credentials.from_token(hub_shaped_token())
    with (
        FaultServer(json_answer(whoami_answer("mallory")), host="127.0.0.2") as elsewhere,
        FaultServer(redirect(302, elsewhere.url + _STOLEN)) as upstream,
        httpx.Client(follow_redirects=True) as client,
    ):
        async with httpx.AsyncClient(follow_redirects=True) as async_client:
            authenticator = Authenticator(
                HubWhoamiSource(upstream.url, timeout=SOURCE_TIMEOUT),
                client=client,
                async_client=async_client,
            )
            check = (
                asyncio.to_thread(authenticator.authenticate_sync, token)
                if driver == "sync"
                else authenticator.authenticate(token)
            )
            with pytest.raises(SourceUnavailable, match="HTTP 302"):
                await check
        assert elsewhere.calls == 0


@pytest.mark.parametrize(
    "driver", [pytest.param("sync", id="sync"), pytest.param("async", id="async")]
)
async def test_headers_sent_a_byte_at_a_time_do_not_hold_the_call(driver: str) -> None:
    """Each byte comes well inside the read timeout; the call's deadline (the sum of
    the phases) still ends it while the headers are arriving, also for the blocking
    driver, whose reads cannot be interrupted."""
    token = Credentials.from_token(hub_shaped_token())
    with FaultServer(drip(whoami_answer("alice"), head_too=True)) as upstream:
        authenticator = Authenticator(HubWhoamiSource(upstream.url, timeout=SOURCE_TIMEOUT))
        check = (
            asyncio.to_thread(authenticator.authenticate_sync, token)
            if driver == "sync"
            else authenticator.authenticate(token)
        )
        with pytest.raises(SourceUnavailable, match="timed out"):
            await check
        assert upstream.heads_sent == 0, "the call waited for the whole head"
