"""The hub as the authority for repository decisions (issue 17): the middleware
answers what the hub's own auth-check answers, caches it, and fails closed.

Every test runs against the real hub emulator on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import json

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from werkzeug.test import Client

from hfauth_mw import (
    AccessPolicy,
    Authenticator,
    ConfigurationError,
    FineGrainedEntry,
    HFAuthMiddleware,
    HFAuthWSGIMiddleware,
    HubWhoamiSource,
    LocalStoreSource,
    OrgGrant,
    RequestAuth,
    SourceUnavailable,
    from_body,
    require_read,
    require_write,
)
from hfauth_mw.testing import HubEmulator

pytestmark = pytest.mark.anyio

RULES = [
    require_read("POST /v1/models/{owner}/{name}/infer"),
    require_write("PUT /v1/models/{owner}/{name}"),
    require_read("POST /v1/chat/completions", repo=from_body("model")),
]


async def ok(request):
    return PlainTextResponse("ok")


def starlette_app(**options) -> Starlette:
    app = Starlette(
        routes=[
            Route("/v1/models/{owner}/{name}/infer", ok, methods=["POST"]),
            Route("/v1/models/{owner}/{name}", ok, methods=["PUT"]),
            Route("/v1/chat/completions", ok, methods=["POST"]),
        ]
    )
    app.add_middleware(HFAuthMiddleware, **options)
    return app


def wsgi_ok(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


@pytest.fixture
def hub(hub_store):
    """An emulator that knows the repositories of the table below."""
    with HubEmulator(hub_store, unknown_repos="missing") as emulator:
        emulator.add_repo("model:acme/private", "private")
        emulator.add_repo("model:acme/grouped", "private")
        emulator.add_repo("model:acme/public", "public")
        emulator.add_repo("model:meta/gated", "gated")
        emulator.add_repo("model:bob/own", "private")
        emulator.add_repo("model:acme/old-name", "private")
        emulator.rename_repo("model:acme/old-name", "model:acme/new-name")
        emulator.add_resource_group("acme", "rg1", name="research", repos=["model:acme/grouped"])
        emulator.grant_gate("model:meta/gated", "gina")
        yield emulator


@pytest.fixture
def callers(hub_store):
    sentiment = FineGrainedEntry("model", "acme/private", ("repo.content.read",))
    return {
        "reader": hub_store.create_token(user="bob", orgs=[OrgGrant("acme", "read")]).token,
        "writer": hub_store.create_token(
            user="alice", role="write", orgs=[OrgGrant("acme", "write")]
        ).token,
        "outsider": hub_store.create_token(user="zoe").token,
        "gated-passed": hub_store.create_token(user="gina").token,
        "fine-repo": hub_store.create_token(
            user="carol",
            role="fineGrained",
            orgs=[OrgGrant("acme", "write")],
            fine_grained=[sentiment],
        ).token,
    }


async def answer(app_kind, hub, callers, who, method, path, body=None, **options):
    token = callers.get(who)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    options.setdefault("rules", RULES)
    authenticator = Authenticator(HubWhoamiSource(hub.url))
    if app_kind == "wsgi":
        wsgi = HFAuthWSGIMiddleware(wsgi_ok, authenticator=authenticator, **options)
        response = Client(wsgi).open(path, method=method, headers=headers, json=body)
        return response.status_code, response.headers, response.get_data(as_text=True)
    app = starlette_app(authenticator=authenticator, **options)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        response = await c.request(method, path, headers=headers, json=body)
    return response.status_code, response.headers, response.text


def hub_says(hub, token, repo, access):
    """The emulator's own auth-check status for ``token`` on ``repo``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    suffix = "/write" if access == "write" else ""
    owner, name = repo.split("/")
    url = f"{hub.url}/api/models/{owner}/{name}/auth-check{suffix}"
    response = httpx.get(url, headers=headers, follow_redirects=False)
    if response.status_code == 307:  # renamed: the middleware re-checks the new id
        response = httpx.get(httpx.URL(url).join(response.headers["location"]), headers=headers)
    return response.status_code


EXPECTED = {200: 200, 401: 401, 403: 403, 404: 403}
KINDS = [pytest.param("asgi", id="asgi"), pytest.param("wsgi", id="wsgi")]
CALLERS = ["reader", "writer", "outsider", "gated-passed", "fine-repo", None]
REPOS = [
    "acme/private",
    "acme/grouped",
    "acme/public",
    "meta/gated",
    "bob/own",
    "acme/old-name",
    "acme/missing",
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("repo", REPOS)
@pytest.mark.parametrize("who", CALLERS, ids=lambda who: who or "anonymous")
@pytest.mark.parametrize("access", ["read", "write"])
async def test_the_middleware_answers_what_the_hub_answers(hub, callers, kind, repo, who, access):
    token = callers.get(who)
    if access == "read":
        method, path, body = "POST", "/v1/chat/completions", {"model": repo}
    else:
        method, path, body = "PUT", f"/v1/models/{repo}", None
    hub_status = hub_says(hub, token, repo, access)
    status, headers, _ = await answer(
        kind, hub, callers, who, method, path, body, allow_anonymous=True
    )
    if who == "reader" and access == "write":
        assert status == 403  # decided locally: a read token never writes
    else:
        assert status == EXPECTED[hub_status], (hub_status, headers.get("x-error-message"))


@pytest.mark.parametrize("kind", KINDS)
async def test_a_gate_not_passed_says_so(hub, callers, kind):
    status, headers, _ = await answer(
        kind, hub, callers, "reader", "POST", "/v1/models/meta/gated/infer"
    )
    assert status == 403
    assert (
        "gated: bob has not been granted access to meta/gated on the Hub"
        in (headers["x-error-message"])
    )


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("who", "reason"),
    [
        pytest.param(
            "reader", "write denied: this token cannot write (token role read)", id="read"
        ),
        pytest.param(
            "fine-repo",
            "write denied: this fine-grained token lists repo.write on no repository",
            id="fine-grained-without-repo-write",
        ),
    ],
)
async def test_local_denials_ask_the_hub_nothing(hub, callers, kind, who, reason):
    hub.reset_counters()
    status, headers, _ = await answer(kind, hub, callers, who, "PUT", "/v1/models/bob/own")
    assert status == 403
    assert headers["x-error-message"] == reason
    assert hub.auth_check_calls == 0


async def test_decisions_are_cached_per_token_repo_and_access(hub, callers):
    authenticator = Authenticator(HubWhoamiSource(hub.url))
    app = starlette_app(authenticator=authenticator, rules=RULES)
    headers = {"Authorization": f"Bearer {callers['writer']}"}
    hub.reset_counters()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        for _ in range(3):
            assert (
                await c.post("/v1/models/acme/private/infer", headers=headers)
            ).status_code == 200
        assert (await c.put("/v1/models/acme/private", headers=headers)).status_code == 200
        assert (await c.post("/v1/models/bob/own/infer", headers=headers)).status_code == 403
        assert (await c.post("/v1/models/bob/own/infer", headers=headers)).status_code == 403
    assert hub.auth_check_calls == 3  # read, write, and the denied repo once
    authenticator.invalidate(callers["writer"])  # the token's decisions go with it
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        assert (await c.post("/v1/models/acme/private/infer", headers=headers)).status_code == 200
    assert hub.auth_check_calls == 4


async def test_a_thousand_cold_requests_make_one_call_of_each(hub, callers):
    app = starlette_app(hub_url=hub.url, rules=RULES)
    headers = {"Authorization": f"Bearer {callers['writer']}"}
    hub.reset_counters()
    hub.auth_check_delay = 0.05
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://t", timeout=30
    ) as client:
        responses = await asyncio.gather(
            *(client.post("/v1/models/acme/private/infer", headers=headers) for _ in range(1000))
        )
    assert {response.status_code for response in responses} == {200}
    assert (hub.whoami_calls, hub.auth_check_calls) == (1, 1)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        pytest.param(429, {"Retry-After": "7"}, b"", id="rate-limited"),
        pytest.param(500, {}, b"boom", id="server-error"),
        pytest.param(503, {}, b"", id="unavailable"),
        pytest.param(502, {"Content-Type": "text/html"}, b"<html>", id="bad-gateway-html"),
        pytest.param(418, {}, b"", id="undocumented-status"),
        pytest.param(307, {"Location": "https://evil.example/x"}, b"", id="redirect-elsewhere"),
    ],
)
async def test_hub_trouble_is_503_never_allowed_never_401_never_cached(
    hub, callers, kind, status, headers, body
):
    authenticator = Authenticator(HubWhoamiSource(hub.url))
    token = callers["writer"]
    assert hub_says(hub, token, "acme/private", "read") == 200  # warm whoami; allowed
    hub.fail_next(status, headers=headers, body=body, times=1, endpoint="auth-check")
    request_headers = {"Authorization": f"Bearer {token}"}
    path = "/v1/models/acme/private/infer"
    if kind == "asgi":
        app = starlette_app(authenticator=authenticator, rules=RULES)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            failed = await c.post(path, headers=request_headers)
            after = await c.post(path, headers=request_headers)
        failed_headers = failed.headers
    else:
        wsgi = Client(HFAuthWSGIMiddleware(wsgi_ok, authenticator=authenticator, rules=RULES))
        failed = wsgi.post(path, headers=request_headers)
        after = wsgi.post(path, headers=request_headers)
        failed_headers = failed.headers
    assert failed.status_code == 503
    assert int(failed_headers["retry-after"]) >= 1
    if status == 429:
        # The hub said when to come back: not asked before then (the breaker), so
        # still a 503, not a cached denial.
        assert after.status_code == 503
    else:
        assert after.status_code == 200  # nothing cached: asked again, and allowed


@pytest.mark.parametrize("kind", KINDS)
async def test_a_token_the_hub_refuses_is_invalid_and_dropped(hub, callers, kind):
    token = callers["writer"]
    authenticator = Authenticator(HubWhoamiSource(hub.url))
    options = {"authenticator": authenticator, "rules": RULES}
    path = "/v1/models/acme/private/infer"
    headers = {"Authorization": f"Bearer {token}"}
    if kind == "asgi":
        app = starlette_app(**options)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            assert (await c.post(path, headers=headers)).status_code == 200
            hub.fail_next(401, body=b'{"error": "Invalid credentials"}', endpoint="auth-check",
                          headers={"Content-Type": "application/json"}, times=1)  # fmt: skip
            authenticator.hub_authority(hub_check(hub)).cache.clear()  # the decision expired
            refused = await c.post(path, headers=headers)
    else:
        wsgi = Client(HFAuthWSGIMiddleware(wsgi_ok, **options))
        assert wsgi.post(path, headers=headers).status_code == 200
        hub.fail_next(401, body=b'{"error": "Invalid credentials"}', endpoint="auth-check",
                      headers={"Content-Type": "application/json"}, times=1)  # fmt: skip
        authenticator.hub_authority(hub_check(hub)).cache.clear()
        refused = wsgi.post(path, headers=headers)
    assert refused.status_code == 401
    assert "invalid_token" in refused.headers["www-authenticate"]
    assert authenticator.cached(_credentials(token)) is None  # dropped from the token cache


@pytest.mark.parametrize("kind", KINDS)
async def test_a_made_up_token_is_cached_invalid_and_revokes_nothing(hub, callers, kind):
    """Whoami-v2 answers for a cold token: the auth-check asked beside it must not
    undo its negative entry, nor count as a revocation (a stream of made-up
    tokens would otherwise cost the hub and the cluster one each)."""
    made_up = "hf_" + "M" * 34
    authenticator = Authenticator(HubWhoamiSource(hub.url))
    options = {"authenticator": authenticator, "rules": RULES}
    path = "/v1/models/acme/private/infer"
    headers = {"Authorization": f"Bearer {made_up}"}
    if kind == "asgi":
        app = starlette_app(**options)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            statuses = [(await c.post(path, headers=headers)).status_code for _ in range(5)]
    else:
        wsgi = Client(HFAuthWSGIMiddleware(wsgi_ok, **options))
        statuses = [wsgi.post(path, headers=headers).status_code for _ in range(5)]
    assert statuses == [401] * 5
    # Then the negative entry. ASGI asked both at once; blocking code stops at
    # whoami-v2's refusal.
    assert (hub.whoami_calls, hub.auth_check_calls) == (1, 1 if kind == "asgi" else 0)
    assert authenticator.stats()["revocations_sent"] == 0


async def test_a_waiter_takes_over_a_repository_check_whose_leader_went_away(hub, callers):
    """As for a token's flight: the request leading the hub's auth-check is
    cancelled (its client went away), and one of those waiting asks instead of
    every one of them answering 503."""
    authenticator = Authenticator(HubWhoamiSource(hub.url))
    credentials = _credentials(callers["writer"])
    principal = await authenticator.authenticate(credentials)
    authority = authenticator.hub_authority(hub_check(hub))
    auth = RequestAuth(principal, AccessPolicy(), "bearer", authority, credentials)
    hub.auth_check_delay = 30
    leader = asyncio.create_task(auth.arequire("model:acme/private", "read"))
    assert await asyncio.to_thread(hub.wait_for_held, 1)
    waiters = [asyncio.create_task(auth.arequire("model:acme/private", "read")) for _ in range(3)]
    for _ in range(100):  # yields to the loop, no timed sleep
        if authority.cache.joins == 3:
            break
        await asyncio.sleep(0)
    assert authority.cache.joins == 3
    hub.auth_check_delay = 0  # the leader's call stays held; the next one answers at once
    leader.cancel()
    decisions = await asyncio.gather(*waiters)
    assert all(decision.allowed for decision in decisions)
    assert leader.cancelled()
    assert hub.auth_check_calls == 2
    hub.clear_faults()


def hub_check(hub):
    from hfauth_mw._hub_access import HubAccessCheck

    return HubAccessCheck(hub.url)


def _credentials(token):
    from hfauth_mw import Credentials

    return Credentials.from_token(token)


async def test_a_renamed_repo_is_checked_under_its_new_id(hub, callers):
    hub.reset_counters()
    status, _, _ = await answer(
        "asgi", hub, callers, "writer", "POST", "/v1/models/acme/old-name/infer"
    )
    assert status == 200
    assert hub.auth_checks[-2:] == ["read model:acme/old-name", "read model:acme/new-name"]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"authority": "hub", "source": "local"}, "needs a hub", id="hub-on-store"),
        pytest.param({"authority": "remote"}, "authority must be", id="unknown"),
    ],
)
def test_bad_authority_fails_at_start_up(hub_store, options, message):
    if options.get("source") == "local":
        options = {**options, "source": LocalStoreSource(hub_store)}
    with pytest.raises(ConfigurationError, match=message):
        HFAuthWSGIMiddleware(wsgi_ok, **options)


def test_the_default_authority_follows_the_source(hub, hub_store):
    assert HFAuthWSGIMiddleware(wsgi_ok, hub_url=hub.url).guard.hub is not None
    assert HFAuthWSGIMiddleware(wsgi_ok, source=LocalStoreSource(hub_store)).guard.hub is None
    local = HFAuthWSGIMiddleware(wsgi_ok, hub_url=hub.url, authority="local")
    assert local.guard.hub is None


async def test_decided_by_is_in_the_audit_event(hub, callers, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="hfauth_mw.audit")
    await answer("asgi", hub, callers, "writer", "POST", "/v1/models/acme/private/infer")
    events = [r for r in caplog.records if r.name == "hfauth_mw.audit"]
    assert events[-1].hfauth_decided_by == "hub"
    assert json.dumps(events[-1].hfauth_decided_by)


async def test_a_cold_request_asks_whoami_and_auth_check_together(hub, callers):
    """One round trip, not two: both upstream calls are in flight at once."""
    app = starlette_app(hub_url=hub.url, rules=RULES)
    headers = {"Authorization": f"Bearer {callers['gated-passed']}"}
    hub.delay = 30  # held until released: the test never waits on a clock
    hub.auth_check_delay = 30
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://t", timeout=60
    ) as client:
        pending = asyncio.ensure_future(client.post("/v1/models/meta/gated/infer", headers=headers))
        both_in_flight = await asyncio.to_thread(hub.wait_for_held, 2, 10.0)
        hub.delay = hub.auth_check_delay = 0
        hub.release_held()
        response = await pending
    assert both_in_flight
    assert response.status_code == 200
    assert (hub.whoami_calls, hub.auth_check_calls) >= (1, 1)


@pytest.mark.parametrize(
    ("trouble", "status"),
    [
        pytest.param(lambda hub: None, 401, id="whoami-refuses-the-token"),
        pytest.param(lambda hub: hub.fail_next(500), 503, id="whoami-fails"),
    ],
)
def test_blocking_code_asks_no_auth_check_once_whoami_failed(hub, trouble, status):
    """WSGI runs the two in turn: a token whoami-v2 refused (or could not check)
    is not sent to the auth-check as well, which doubled calls and deadlines."""
    trouble(hub)
    app = HFAuthWSGIMiddleware(wsgi_ok, hub_url=hub.url, rules=RULES)
    made_up = {"Authorization": "Bearer hf_" + "M" * 34}
    response = Client(app).post("/v1/models/acme/public/infer", headers=made_up)
    assert response.status_code == status
    assert hub.whoami_calls == 1
    assert hub.auth_check_calls == 0


async def test_a_gated_denial_asked_together_still_names_the_caller(hub, callers):
    status, headers, _ = await answer(
        "asgi", hub, callers, "outsider", "POST", "/v1/models/meta/gated/infer"
    )
    assert status == 403
    assert "gated: zoe has not been granted access to meta/gated" in headers["x-error-message"]


# --- decisions route code asks for ---------------------------------------------------------


async def test_route_code_asks_the_hub_too(hub, callers):
    """auth.arequire / areadable in a route: the hub's decisions, cached, the cold
    ones of a list asked at once."""
    from starlette.requests import Request

    from hfauth_mw import get_request_auth

    models = ["acme/private", "acme/public", "meta/gated", "bob/own", "acme/missing"]

    async def listing(request: Request):
        auth = get_request_auth(request)
        readable = await auth.areadable(models)
        return PlainTextResponse(",".join(repo.id for repo in readable))

    async def gated(request: Request):
        await get_request_auth(request).arequire("meta/gated", "read")
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/models", listing), Route("/gated", gated)])
    app.add_middleware(HFAuthMiddleware, hub_url=hub.url)
    expected = {
        who: ",".join(m for m in models if hub_says(hub, callers[who], m, "read") == 200)
        for who in ("reader", "gated-passed")
    }
    hub.reset_counters()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        for who in ("reader", "gated-passed"):
            headers = {"Authorization": f"Bearer {callers[who]}"}
            assert (await c.get("/models", headers=headers)).text == expected[who]
            assert (await c.get("/models", headers=headers)).text == expected[who]  # cached
        assert hub.auth_check_calls == 2 * len(models)
        refused = await c.get("/gated", headers={"Authorization": f"Bearer {callers['reader']}"})
        passed = await c.get(
            "/gated", headers={"Authorization": f"Bearer {callers['gated-passed']}"}
        )
    assert refused.status_code == 403
    assert "gated: bob has not been granted access" in refused.headers["x-error-message"]
    assert passed.status_code == 200


def test_blocking_route_code_asks_the_hub(hub, callers):
    """WSGI code (Flask) uses the blocking require: the same decisions."""
    from flask import Flask

    from hfauth_mw.flask import HFAuth, current_auth

    app = Flask(__name__)
    HFAuth(app, hub_url=hub.url)

    @app.get("/gated")
    def gated():
        current_auth.require("meta/gated", "read")
        return "ok"

    client = app.test_client()
    refused = client.get("/gated", headers={"Authorization": f"Bearer {callers['reader']}"})
    passed = client.get("/gated", headers={"Authorization": f"Bearer {callers['gated-passed']}"})
    assert (refused.status_code, passed.status_code) == (403, 200)


async def test_fastapi_require_repo_asks_the_hub(hub, callers):
    from fastapi import FastAPI, Security

    from hfauth_mw.fastapi import RequireRepo, install

    app = FastAPI()
    install(app, hub_url=hub.url)

    @app.post("/v1/models/{owner}/{name}/infer")
    async def infer(
        owner: str,
        name: str,
        auth: RequestAuth = Security(RequireRepo("read")),  # noqa: B008
    ):
        return {"ok": True}

    async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
        statuses = [
            (
                await c.post(
                    "/v1/models/meta/gated/infer",
                    headers={"Authorization": f"Bearer {callers[who]}"},
                )
            ).status_code
            for who in ("reader", "gated-passed")
        ]
    assert statuses == [403, 200]


async def test_an_anonymous_refusal_by_the_hub_is_audited_once(hub, callers, caplog):
    import logging

    caplog.set_level(logging.INFO, logger="hfauth_mw.audit")
    status, _, _ = await answer(
        "asgi", hub, callers, None, "POST", "/v1/models/acme/private/infer", allow_anonymous=True
    )
    assert status == 401
    events = [r for r in caplog.records if r.name == "hfauth_mw.audit"]
    assert [(e.hfauth_event, e.hfauth_status) for e in events] == [("denied", 401)]


# --- decisions shared through the Redis tier ------------------------------------------------
# Two Authenticators with a SharedCache each over one real Redis are two "processes".

SECRET = "test-deployment-secret-0123456789"


class Worker:
    """One simulated process: its own caches, its own SharedCache, one shared Redis."""

    def __init__(self, redis_url, prefix, hub, clock=None):
        from hfauth_mw import SharedCache, TokenCache

        timing = {} if clock is None else {"timer": clock}
        self.shared = SharedCache.from_url(
            redis_url, secret=SECRET, prefix=prefix, socket_timeout=2.0, **timing
        )
        cache = TokenCache() if clock is None else TokenCache(timer=clock, clock=clock)
        self.auth = Authenticator(
            HubWhoamiSource(hub.url, timeout=httpx.Timeout(5.0)), cache=cache, shared=self.shared
        )
        self.hub = self.auth.hub_authority(hub_check(hub))

    def decide(self, token, repo, access="read"):
        """The hub authority's decision, asked with the token known (blocking driver)."""
        credentials = _credentials(token)
        principal = self.auth.authenticate_sync(credentials)
        return self.auth.run_sync(self.hub.flow(credentials, principal, _repo(repo), access))

    async def adecide(self, token, repo, access="read"):
        credentials = _credentials(token)
        principal = await self.auth.authenticate(credentials)
        return await self.auth.run_async(self.hub.flow(credentials, principal, _repo(repo), access))


def _repo(text):
    from hfauth_mw import Repo

    return Repo.parse(text)


@pytest.fixture
def workers(redis_url, prefix, hub):
    made = []

    def make(count=2, clock=None):
        made.extend(Worker(redis_url, prefix, hub, clock) for _ in range(count))
        return made[-count:]

    yield make
    for worker in made:
        worker.shared.close()


def decision_keys(redis_url, prefix):
    """The repository decisions' keys in Redis, with their remaining life (ms)."""
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        keys = [k for k in client.scan_iter(match=f"{prefix}:*:repo:*") if not k.endswith(b":lock")]
        return {key: (client.get(key), client.pttl(key)) for key in keys}
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.parametrize(
    "driver", [pytest.param("sync", id="sync"), pytest.param("async", id="async")]
)
@pytest.mark.parametrize(
    ("who", "repo", "allowed"),
    [
        pytest.param("writer", "acme/private", True, id="allowed"),
        pytest.param("outsider", "acme/private", False, id="denied"),
        pytest.param("reader", "meta/gated", False, id="gated-denied"),
    ],
)
async def test_a_second_process_reuses_the_decision_through_redis(
    workers, hub, callers, driver, who, repo, allowed
):
    first, second = workers()
    token = callers[who]
    hub.reset_counters()
    if driver == "sync":
        decided = [worker.decide(token, repo) for worker in (first, second)]
    else:
        decided = [await worker.adecide(token, repo) for worker in (first, second)]
    assert [decision.allowed for decision in decided] == [allowed, allowed]
    assert decided[0].reason == decided[1].reason
    assert decided[1].decided_by == "hub"
    assert hub.auth_check_calls == 1  # the second process asked Redis, not the hub
    assert hub.whoami_calls == 1


@pytest.mark.redis
async def test_a_cold_request_in_a_second_process_asks_the_hub_nothing(workers, hub, callers):
    """The pipeline's cold path (whoami-v2 and auth-check together) shares too:
    the first process learns the token's expiry from whoami-v2 before storing."""
    headers = {"Authorization": f"Bearer {callers['writer']}"}
    hub.reset_counters()
    for worker in workers():
        app = starlette_app(authenticator=worker.auth, rules=RULES)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            assert (
                await c.post("/v1/models/acme/private/infer", headers=headers)
            ).status_code == 200
    assert (hub.whoami_calls, hub.auth_check_calls) == (1, 1)


@pytest.mark.redis
@pytest.mark.parametrize(
    ("who", "repo", "lives"),
    [
        pytest.param("outsider", "acme/private", 10, id="negative-10s"),
        pytest.param("writer", "acme/private", 60, id="positive-60s"),
    ],
)
def test_a_shared_decision_expires_with_its_ttl(workers, hub, callers, clock, who, repo, lives):
    first, second = workers(clock=clock)
    hub.reset_counters()
    first.decide(callers[who], repo)
    clock.advance(lives - 1)
    second.decide(callers[who], repo)  # still shared (the token's answer too)
    assert hub.auth_check_calls == 1
    clock.advance(2)  # past the decision's life here and in Redis (its signed expiry)
    second.decide(callers[who], repo)
    assert hub.auth_check_calls == 2


@pytest.mark.redis
@pytest.mark.parametrize(
    "path", [pytest.param("flow", id="token-known"), pytest.param("together", id="asked-together")]
)
async def test_the_token_expiry_caps_the_shared_ttl(
    redis_url, prefix, workers, hub, hub_store, path
):
    from datetime import UTC, datetime, timedelta

    expiring = hub_store.create_token(
        user="alice",
        role="write",
        orgs=[OrgGrant("acme", "write")],
        expires_at=datetime.now(UTC) + timedelta(seconds=20),
    ).token
    (worker,) = workers(1)
    if path == "flow":
        assert worker.decide(expiring, "acme/private").allowed
    else:
        app = starlette_app(authenticator=worker.auth, rules=RULES)
        headers = {"Authorization": f"Bearer {expiring}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            assert (
                await c.post("/v1/models/acme/private/infer", headers=headers)
            ).status_code == 200
    ((_, ttl_ms),) = decision_keys(redis_url, prefix).values()
    assert 10_000 < ttl_ms <= 20_000  # not the 60 s of a token that does not expire


@pytest.mark.redis
def test_keys_and_values_in_redis_hold_no_token_material(redis_url, prefix, workers, hub, callers):
    import hashlib

    first, _ = workers()
    token = callers["writer"]
    first.decide(token, "acme/private")
    first.decide(token, "acme/private", "write")
    stored = decision_keys(redis_url, prefix)
    assert len(stored) == 2  # one per (token, repository, access)
    digest = hashlib.sha256(token.encode()).digest()
    forbidden = [token.encode(), digest, digest.hex().encode(), digest.hex()[:12].encode()]
    for key, (value, _) in stored.items():
        assert not any(material in key for material in forbidden)
        assert not any(material in value for material in forbidden)
        assert b"acme" not in key  # keyed names: no repository either
        assert b"private" not in key


@pytest.mark.redis
def test_a_revocation_drops_the_decisions_in_every_process(workers, hub, callers):
    import time

    first, second = workers()
    token = callers["writer"]
    for worker in (first, second):
        assert worker.shared.wait_ready(10)  # listening before anything is cached
    first.decide(token, "acme/private")
    second.decide(token, "acme/private")
    assert hub.auth_check_calls == 1
    assert len(second.hub.cache) == 1
    assert first.auth.revoke(token) >= 1
    assert len(first.hub.cache) == 0
    started = time.monotonic()
    while len(second.hub.cache) and time.monotonic() - started < 2.0:
        time.sleep(0.002)  # polling the broadcast's effect, bounded
    assert len(second.hub.cache) == 0
    # Redis's tombstone hides the positive decision: each process asks the hub again.
    assert second.decide(token, "acme/private").allowed
    assert hub.auth_check_calls == 2
    assert first.decide(token, "acme/private").allowed
    assert hub.auth_check_calls == 3


@pytest.mark.redis
def test_a_token_the_hub_refuses_is_dropped_in_every_process(workers, hub, callers):
    """A 401 from the auth-check means the hub no longer accepts the token: the
    other processes drop their cached answer too, not only the one that asked."""
    import time

    from hfauth_mw import InvalidToken

    first, second = workers()
    token = callers["writer"]
    for worker in (first, second):
        assert worker.shared.wait_ready(10)
        worker.auth.authenticate_sync(_credentials(token))
    assert second.auth.cached(_credentials(token)) is not None
    hub.fail_next(401, body=b'{"error": "Invalid credentials"}', endpoint="auth-check",
                  headers={"Content-Type": "application/json"}, times=1)  # fmt: skip
    with pytest.raises(InvalidToken):
        first.decide(token, "acme/private")
    assert first.auth.cached(_credentials(token)) is None
    started = time.monotonic()
    while second.auth.cached(_credentials(token)) is not None and time.monotonic() - started < 2:
        time.sleep(0.002)  # polling the broadcast's effect, bounded
    assert second.auth.cached(_credentials(token)) is None


@pytest.mark.redis
def test_concurrent_processes_make_one_auth_check_call(workers, hub, callers):
    from concurrent.futures import ThreadPoolExecutor

    token = callers["writer"]
    processes = workers(4)
    for worker in processes:  # the token's own answer first: only the decision is cold
        worker.auth.authenticate_sync(_credentials(token))
    hub.reset_counters()
    hub.auth_check_delay = 0.2  # the leader's call is slow: the others find its lock
    with ThreadPoolExecutor(len(processes)) as pool:
        decided = list(pool.map(lambda w: w.decide(token, "acme/private"), processes))
    assert all(decision.allowed for decision in decided)
    assert hub.auth_check_calls == 1


@pytest.mark.redis
@pytest.mark.parametrize("kind", KINDS)
async def test_redis_down_asks_the_hub_and_fails_closed(private_redis, hub, callers, kind):
    from hfauth_mw import SharedCache

    shared = SharedCache.from_url(private_redis.url, secret=SECRET)
    authenticator = Authenticator(HubWhoamiSource(hub.url), shared=shared)
    headers = {"Authorization": f"Bearer {callers['writer']}"}
    try:
        authenticator.authenticate_sync(_credentials(callers["writer"]))
        private_redis.stop()
        hub.reset_counters()
        paths = ["/v1/models/acme/private/infer", "/v1/models/bob/own/infer"]
        if kind == "asgi":
            app = starlette_app(authenticator=authenticator, rules=RULES)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://t"
            ) as c:
                statuses = [(await c.post(path, headers=headers)).status_code for path in paths]
                hub.fail_next(500, endpoint="auth-check", times=1)
                fault = await c.post("/v1/models/acme/public/infer", headers=headers)
        else:
            wsgi = Client(HFAuthWSGIMiddleware(wsgi_ok, authenticator=authenticator, rules=RULES))
            statuses = [wsgi.post(path, headers=headers).status_code for path in paths]
            hub.fail_next(500, endpoint="auth-check", times=1)
            fault = wsgi.post("/v1/models/acme/public/infer", headers=headers)
        assert statuses == [200, 403]  # the hub's own answers
        assert hub.auth_check_calls == 3
        assert fault.status_code == 503
        assert int(fault.headers["retry-after"]) >= 1
    finally:
        shared.close()


# --- the shared value, without Redis ---------------------------------------------------------


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param("flipped-marker", id="denial-turned-allowed"),
        pytest.param("other-key", id="moved-to-another-key"),
        pytest.param("edited-body", id="edited-body"),
        pytest.param("expired", id="expired"),
        pytest.param("token-answer", id="a-token-answer-there"),
    ],
)
def test_a_forged_or_stale_shared_decision_is_ignored(damage):
    from hfauth_mw import SharedCache
    from hfauth_mw._rules import Decision
    from hfauth_mw._source_protocol import Invalid

    shared = SharedCache(object(), secret=SECRET)  # type: ignore[arg-type]  # no I/O here
    digest = bytes(32)
    keys = shared.decision_keys(b"hub\x00", digest, "model:acme/private", "read")
    denied = Decision(False, "read denied: private", "read", "hub")
    value = shared.encode_decision(keys, denied, 10, now=1000.0)
    assert shared.decode_decision(keys, value, now=1001.0) == (denied, 9.0)
    now = 1001.0
    if damage == "flipped-marker":
        value = b"+" + value[1:]
    elif damage == "other-key":
        keys = shared.decision_keys(b"hub\x00", digest, "model:acme/private", "write")
    elif damage == "edited-body":
        value = value.replace(b"private", b"public!")
    elif damage == "expired":
        now = 1010.0
    else:
        value = shared.encode(keys, Invalid(), 10, 1000.0)
    assert shared.decode_decision(keys, value, now) is None


def redis_locks(redis_url, prefix):
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return [key for key in client.scan_iter(match=f"{prefix}:*:repo:*:lock")]
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.parametrize(
    "ending",
    [
        pytest.param("cancelled", id="leader-cancelled"),
        pytest.param("hub-fault", id="hub-fault"),
    ],
)
async def test_a_decision_leader_gives_its_redis_lock_back(
    redis_url, prefix, workers, hub, callers, ending
):
    """Neither a client that hangs up nor a hub fault leaves the decision's
    cluster-wide lock behind for the other processes to wait out."""
    (worker,) = workers(1)
    second = workers(1)[0]
    token = callers["writer"]
    for each in (worker, second):
        await each.auth.authenticate(_credentials(token))
    try:
        if ending == "cancelled":
            hub.auth_check_delay = 30  # held until released
            leader = asyncio.create_task(worker.adecide(token, "acme/private"))
            assert await asyncio.to_thread(hub.wait_for_held, 1)
            assert redis_locks(redis_url, prefix)
            leader.cancel()
            with pytest.raises(asyncio.CancelledError):
                await leader
            await asyncio.gather(*worker.auth.async_driver.cleanups)
            hub.release_held()
            hub.auth_check_delay = 0
        else:
            hub.fail_next(500, endpoint="auth-check", times=1)
            with pytest.raises(SourceUnavailable):
                await worker.adecide(token, "acme/private")
        assert not redis_locks(redis_url, prefix)
        assert not decision_keys(redis_url, prefix)  # nothing stored for the failure
        hub.reset_counters()
        assert (await second.adecide(token, "acme/private")).allowed
        assert hub.auth_check_calls == 1
    finally:
        hub.release_held()


# --- the decision cache ------------------------------------------------------------------


@pytest.mark.parametrize(
    "dropped_by",
    [
        pytest.param("drop_token", id="invalidate"),
        pytest.param("drop_matching", id="revocation-broadcast"),
        pytest.param("clear", id="clear"),
    ],
)
def test_a_flight_overtaken_by_a_drop_does_not_store_its_decision(clock, dropped_by):
    from hfauth_mw._authority import DecisionCache
    from hfauth_mw._rules import Decision

    cache = DecisionCache(timer=clock, clock=clock)
    key = b"hub\x00" + bytes(32) + b"\x00model:acme/private\x00read"
    assert cache.begin(key) is None  # this caller leads
    waiter = cache.begin(key)
    if dropped_by == "drop_token":
        cache.drop_token(b"hub\x00" + bytes(32) + b"\x00")
    elif dropped_by == "drop_matching":
        cache.drop_matching(lambda _key: True)
    else:
        cache.clear()
    allowed = Decision(True, "read allowed", "read", "hub")
    cache.complete(key, allowed, None)
    assert waiter.result(timeout=0) == allowed  # the waiters still get the answer
    assert cache.peek(key) is None  # but it is not kept


@pytest.mark.parametrize(
    "allowed", [pytest.param(True, id="allowed"), pytest.param(False, id="denied")]
)
def test_a_decision_read_from_the_shared_tier_keeps_only_its_remaining_life(clock, allowed):
    from hfauth_mw._authority import DecisionCache
    from hfauth_mw._rules import Decision

    cache = DecisionCache(timer=clock, clock=clock)
    key = b"k"
    assert cache.begin(key) is None
    cache.complete(key, Decision(allowed, "why", "read", "hub"), None, max_age=3.0)
    clock.advance(2.9)
    assert cache.peek(key) is not None
    clock.advance(0.2)
    assert cache.peek(key) is None


@pytest.mark.parametrize("app_kind", KINDS)
@pytest.mark.parametrize(
    ("password", "asked"),
    [
        # A site user's own password sent as Basic (Django users, DRF's
        # BasicAuthentication): never the hub's to see.
        pytest.param("dave-s3cret-django-pw", False, id="a-site-password"),
        pytest.param("hf_notissuedbyanyhub000000000000000", True, id="hub-shaped"),
        pytest.param("api_org_legacy000000000000000000", True, id="legacy-org-shaped"),
    ],
)
@pytest.mark.parametrize(
    "path", ["/v1/models/acme/public/infer", "/v1/chat/completions"], ids=["rule", "no-rule"]
)
def test_a_secret_not_shaped_as_a_hub_token_is_never_sent_to_the_hub(
    app_kind, hub, password, asked, path
):
    basic = base64.b64encode(f"dave:{password}".encode()).decode()
    authenticator = Authenticator(HubWhoamiSource(hub.url))
    headers = {"Authorization": f"Basic {basic}"}
    if app_kind == "wsgi":
        wsgi = HFAuthWSGIMiddleware(wsgi_ok, authenticator=authenticator, rules=RULES)
        status = Client(wsgi).post(path, headers=headers).status_code
    else:
        app = starlette_app(authenticator=authenticator, rules=RULES)

        async def post() -> int:
            transport = httpx.ASGITransport(app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                return (await client.post(path, headers=headers)).status_code

        status = asyncio.run(post())
    assert status == 401
    assert (hub.whoami_calls + hub.auth_check_calls > 0) is asked
    if not asked:
        assert hub.whoami_calls == hub.auth_check_calls == 0


@pytest.mark.usefixtures("client_logs_urls_with_tokens")  # the test's own client logs the URL
@pytest.mark.parametrize("app_kind", KINDS)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("POST", "/v1/models/acme/hf_{}/infer", id="read"),
        pytest.param("PUT", "/v1/models/hf_{}/m", id="write"),
    ],
)
async def test_a_token_pasted_as_a_repository_name_is_not_sent_to_the_hub(
    app_kind, hub, callers, method, path
):
    """Asked, it would travel in the auth-check's URL, into the hub's access logs."""
    pasted = path.format("Z" * 34)
    status, headers, _ = await answer(app_kind, hub, callers, "writer", method, pasted)
    assert status == 403
    assert "looks like an access token" in headers["x-error-message"]
    assert hub.auth_check_calls == 0
