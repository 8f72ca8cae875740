"""The shared per-request core: audit events, brute-force guard, error answers."""

import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from conftest import record_text
from hfauth_mw import (
    Authenticator,
    FailureLimiter,
    HFAuthMiddleware,
    HubWhoamiSource,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingCredentials,
    SourceUnavailable,
    TokenCache,
    TooManyFailures,
)
from hfauth_mw._guard import Guard

pytestmark = pytest.mark.anyio


async def ok(request):
    return PlainTextResponse("ok")


@pytest.fixture
def make_client(hub_emulator, clock):
    def make(**options) -> httpx.AsyncClient:
        authenticator = Authenticator(
            HubWhoamiSource(hub_emulator.url), cache=TokenCache(timer=clock, clock=clock)
        )
        app = Starlette(routes=[Route("/x", ok, methods=["GET", "POST"])])
        app.add_middleware(HFAuthMiddleware, authenticator=authenticator, **options)
        transport = httpx.ASGITransport(app, client=("203.0.113.7", 5000))
        return httpx.AsyncClient(transport=transport, base_url="http://t")

    return make


def audit_events(records):
    return [record for record in records if record.name == "hfauth_mw.audit"]


async def test_one_audit_event_per_decision(make_client, hub_store, hub_emulator, no_token_in_logs):
    token = hub_store.create_token(user="bob", role="read").token
    async with make_client() as client:
        await client.get("/x", headers={"Authorization": f"Bearer {token}"})
        await client.post("/x", headers={"Authorization": f"Bearer {token}"})
        await client.get("/x")
        await client.get("/x", headers={"Authorization": "Token nope"})
        await client.get("/x", headers={"Authorization": "Bearer hf_" + "u" * 34})
        hub_emulator.fail_next(503)
        await client.get("/x", headers={"Authorization": "Bearer hf_" + "v" * 34})
    events = audit_events(no_token_in_logs)
    summary = [(e.hfauth_event, e.hfauth_status, e.levelno) for e in events]
    assert summary == [
        ("allowed", 200, logging.INFO),
        ("denied", 403, logging.INFO),
        ("denied", 401, logging.INFO),
        ("denied", 400, logging.INFO),
        ("denied", 401, logging.INFO),
        ("unavailable", 503, logging.WARNING),
    ]
    allowed = events[0]
    assert allowed.hfauth_principal == "bob"
    assert allowed.hfauth_token_role == "read"
    assert allowed.hfauth_client == "203.0.113.7"
    assert allowed.hfauth_source.startswith("hub:")
    assert allowed.hfauth_latency_ms >= 0
    assert len(allowed.hfauth_fingerprint) == 12
    assert events[1].hfauth_reason.startswith("write denied")
    for event in events:
        assert token not in record_text(event)


def test_log_scanner_sees_tokens_in_every_part_of_a_record():
    token = "hf_" + "k" * 34
    records = [
        logging.LogRecord("x", logging.INFO, __file__, 1, f"msg {token}", None, None),
        logging.LogRecord("x", logging.INFO, __file__, 1, "msg %s", (token,), None),
    ]
    with_extra = logging.LogRecord("x", logging.INFO, __file__, 1, "msg", None, None)
    with_extra.secret = token
    records.append(with_extra)
    try:
        raise ValueError(token)
    except ValueError as error:
        records.append(
            logging.LogRecord(
                "x", logging.ERROR, __file__, 1, "boom", None, (ValueError, error, None)
            )
        )
    for record in records:
        assert token in record_text(record)


async def test_brute_force_guard_answers_429(make_client, hub_store, clock):
    good = hub_store.create_token(user="bob").token
    limiter = FailureLimiter(max_failures=5, window=60, timer=clock)
    async with make_client(limiter=limiter) as client:
        for index in range(5):
            response = await client.get("/x", headers={"Authorization": f"Bearer hf_{index:034d}"})
            assert response.status_code == 401
        blocked = await client.get("/x", headers={"Authorization": f"Bearer {good}"})
        assert blocked.status_code == 429
        assert blocked.headers["retry-after"] == "60"
        assert blocked.json()["error"] == "too_many_requests"
        clock.advance(60)
        response = await client.get("/x", headers={"Authorization": f"Bearer {good}"})
        assert response.status_code == 200


async def test_missing_credentials_do_not_count_as_failures(make_client, clock):
    limiter = FailureLimiter(max_failures=2, timer=clock)
    async with make_client(limiter=limiter) as client:
        for _ in range(5):
            assert (await client.get("/x")).status_code == 401


async def test_brute_force_guard_behind_trusted_proxy(make_client, hub_store, clock):
    limiter = FailureLimiter(max_failures=2, trusted_proxies=["203.0.113.7"], timer=clock)
    good = hub_store.create_token(user="bob").token
    async with make_client(limiter=limiter) as client:
        for _ in range(2):
            await client.get(
                "/x",
                headers={
                    "Authorization": "Bearer hf_" + "w" * 34,
                    "X-Forwarded-For": "198.51.100.1",
                },
            )
        other = await client.get(
            "/x", headers={"Authorization": f"Bearer {good}", "X-Forwarded-For": "198.51.100.2"}
        )
        assert other.status_code == 200
        blocked = await client.get(
            "/x", headers={"Authorization": f"Bearer {good}", "X-Forwarded-For": "198.51.100.1"}
        )
        assert blocked.status_code == 429


async def test_guard_can_be_switched_off(make_client):
    async with make_client(limiter=None) as client:
        for index in range(40):
            response = await client.get("/x", headers={"Authorization": f"Bearer hf_{index:034d}"})
            assert response.status_code == 401


@pytest.fixture
def guard(clock):
    return Guard(Authenticator(HubWhoamiSource(), cache=TokenCache(timer=clock, clock=clock)))


@pytest.mark.parametrize(
    ("error", "status", "challenge", "body_error", "retry_after"),
    [
        pytest.param(
            MissingCredentials(),
            401,
            ['Bearer realm="hfauth-mw"', 'Basic realm="hfauth-mw"'],
            "unauthorized",
            None,
            id="missing",
        ),
        pytest.param(
            InvalidToken(),
            401,
            [
                'Bearer realm="hfauth-mw", error="invalid_token", '
                'error_description="The access token is invalid, revoked or expired"'
            ],
            "invalid_token",
            None,
            id="invalid",
        ),
        pytest.param(
            InvalidRequest('bad "header"'),
            400,
            [
                'Bearer realm="hfauth-mw", error="invalid_request", '
                "error_description=\"bad 'header'\""
            ],
            "invalid_request",
            None,
            id="invalid-request-quotes-escaped",
        ),
        pytest.param(
            InsufficientScope("write denied: token role read", scope="repo.write"),
            403,
            [
                'Bearer realm="hfauth-mw", error="insufficient_scope", scope="repo.write", '
                'error_description="write denied: token role read"'
            ],
            "insufficient_scope",
            None,
            id="insufficient-scope",
        ),
        pytest.param(
            SourceUnavailable(retry_after=9),
            503,
            [],
            "temporarily_unavailable",
            "9",
            id="unavailable",
        ),
        pytest.param(
            TooManyFailures("slow down", 30), 429, [], "too_many_requests", "30", id="429"
        ),
    ],
)
def test_error_responses(guard, error, status, challenge, body_error, retry_after):
    response = guard.error_response(error)
    headers = httpx.Headers(response.headers)
    assert response.status == status
    assert headers.get_list("www-authenticate") == challenge
    assert headers.get("retry-after") == retry_after
    assert headers["cache-control"] == "no-store"
    assert httpx.Response(200, content=response.body).json()["error"] == body_error
