"""The ASGI middleware in a real Starlette app, against the hub emulator over loopback."""

import asyncio
import base64
import json
import re
from collections.abc import AsyncIterator
from dataclasses import replace

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.endpoints import WebSocketEndpoint
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from adapters_support import websocket_without_denials
from hfauth_mw import (
    AccessPolicy,
    Authenticator,
    ConfigurationError,
    FailureLimiter,
    FineGrainedEntry,
    HFAuthMiddleware,
    HubWhoamiSource,
    InsufficientScope,
    OrgGrant,
    Principal,
    Repo,
    TokenCache,
    Valid,
    Visibility,
    get_request_auth,
    openai_rules,
    require_read,
    require_write,
)

pytestmark = pytest.mark.anyio


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "user": request.user.display_name,
            "authenticated": request.user.is_authenticated,
            "scopes": request.auth.scopes,
        }
    )


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@requires("authenticated")
async def needs_auth(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def route_check(request: Request) -> JSONResponse:
    auth = get_request_auth(request)
    decision = auth.can_write(Repo.parse("model:acme/sentiment"))
    return JSONResponse({"allowed": decision.allowed, "reason": decision.reason})


async def stream(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(f"hello {websocket.user.display_name}")
    await websocket.close()


async def socket_needs_write(websocket: WebSocket) -> None:
    """Checks in the route, before or after accepting, as ?check= says."""
    accept_first = websocket.query_params.get("check") == "after-accept"
    if accept_first:
        await websocket.accept()
    get_request_auth(websocket).require("model:acme/sentiment", "write")
    if not accept_first:
        await websocket.accept()
    await websocket.send_text("may write")
    await websocket.close()


async def require_write_in_route(request: Request) -> PlainTextResponse:
    get_request_auth(request).require("model:acme/sentiment", "write")
    return PlainTextResponse("written")


async def deny_mid_stream(request: Request) -> StreamingResponse:
    async def body() -> AsyncIterator[bytes]:
        yield b"partial"
        get_request_auth(request).require("model:acme/sentiment", "write")

    return StreamingResponse(body())


async def try_to_add_scope(request: Request) -> JSONResponse:
    refused = []
    for change in (
        lambda: request.auth.scopes.append("admin"),
        lambda: setattr(request.auth, "scopes", [*request.auth.scopes, "admin"]),
        lambda: setattr(request.user, "elevated", True),
        lambda: setattr(request.user, "principal", None),
    ):
        try:
            change()
        except AttributeError:
            refused.append(True)
    return JSONResponse({"scopes": list(request.auth.scopes), "refused": refused})


async def public_cacheable(request: Request) -> PlainTextResponse:
    headers = {"cache-control": "public, max-age=60", "vary": "Accept-Encoding"}
    return PlainTextResponse("ok", headers=headers)


async def streamed(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"one ", b"two ", b"three"):
            yield chunk

    return StreamingResponse(chunks(), media_type="text/plain")


ROUTES = [
    Route("/health", ok),
    Route("/add-scope", try_to_add_scope),
    Route("/public-cacheable", public_cacheable),
    Route("/streamed", streamed),
    Route("/docs/{page}", ok),
    Route("/docs/about/me", whoami),
    Route("/docs/members/only", needs_auth),
    Route("/whoami", whoami),
    Route("/needs-auth", needs_auth),
    Route("/route-check", route_check),
    Route("/require-write", require_write_in_route),
    Route("/deny-mid-stream", deny_mid_stream),
    Route("/v1/models/{owner}/{name}/infer", ok, methods=["POST"]),
    Route("/v1/models/{owner}/{name}", ok, methods=["PUT"]),
    Route("/anything", ok, methods=["GET", "POST", "DELETE"]),
    Route("/v1/chat/completions", ok, methods=["GET", "POST", "PUT"]),
    Route("/generate", ok, methods=["GET", "POST", "PUT", "DELETE"]),
    Route("/v1/models/{owner}/{name}/files", ok, methods=["GET", "DELETE"]),
    WebSocketRoute("/v1/models/{owner}/{name}/stream", stream),
    WebSocketRoute("/socket-needs-write", socket_needs_write),
]
RULES = [
    require_read("POST /v1/models/{owner}/{name}/infer"),
    require_write("PUT /v1/models/{owner}/{name}"),
    require_read("GET /v1/models/{owner}/{name}/stream"),
    require_read("GET /v1/models/{owner}/{name}/files"),
]
PUBLIC = {Repo.parse("model:acme/public-demo"): Visibility.PUBLIC}


@pytest.fixture
def tokens(hub_store):
    acme_write = [OrgGrant("acme", "write")]
    return {
        "writer": hub_store.create_token(user="alice", role="write", orgs=acme_write).token,
        "reader": hub_store.create_token(user="bob", role="read", orgs=acme_write).token,
        "capped": hub_store.create_token(
            user="dave", role="write", orgs=[OrgGrant("acme", "read")]
        ).token,
        "fine": hub_store.create_token(
            user="carol",
            role="fineGrained",
            orgs=acme_write,
            fine_grained=[
                FineGrainedEntry("model", "acme/sentiment", ("repo.content.read",)),
            ],
        ).token,
    }


@pytest.fixture
def make_app(hub_emulator, clock):
    def make(**options) -> Starlette:
        app = Starlette(routes=ROUTES)
        options.setdefault("public_paths", ["/health", "/docs/*"])
        options.setdefault("rules", RULES)
        # These tests are about the local rules and their policy callbacks; the
        # hub's auth-check has its own (tests/test_authority.py).
        options.setdefault("authority", "local")
        options.setdefault(
            "policy", AccessPolicy(visibility=lambda repo: PUBLIC.get(repo, Visibility.PRIVATE))
        )
        if "source" not in options and "authenticator" not in options:
            options["authenticator"] = Authenticator(
                HubWhoamiSource(hub_emulator.url), cache=TokenCache(timer=clock, clock=clock)
            )
        app.add_middleware(HFAuthMiddleware, **options)
        return app

    return make


@pytest.fixture
async def client(make_app):
    transport = httpx.ASGITransport(make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str, user: str = "x") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


async def test_no_token_gets_challenge(client):
    response = await client.get("/whoami")
    assert response.status_code == 401
    assert response.headers.get_list("www-authenticate") == [
        'Bearer realm="hfauth-mw"',
        'Basic realm="hfauth-mw"',
    ]
    assert response.json()["error"] == "unauthorized"
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/health", 200, id="exact"),
        pytest.param("/docs/intro", 200, id="prefix"),
        pytest.param("/health/", 401, id="exact-is-exact"),
        pytest.param("/healthz", 401, id="not-a-prefix"),
        pytest.param("/docs/../whoami", 401, id="dot-dot-never-public"),
        pytest.param("/docs//x", 401, id="double-slash-never-public"),
    ],
)
async def test_public_paths(client, path, status):
    response = await client.get(path)
    assert response.status_code == status


@pytest.mark.parametrize(
    ("who", "method", "path", "status", "error"),
    [
        pytest.param(
            "reader", "POST", "/v1/models/acme/sentiment/infer", 200, None, id="read-infer"
        ),
        pytest.param(
            "reader", "PUT", "/v1/models/acme/sentiment", 403, "insufficient_scope", id="read-put"
        ),
        pytest.param("writer", "PUT", "/v1/models/acme/sentiment", 200, None, id="write-put"),
        pytest.param("writer", "PUT", "/v1/models/alice/own", 200, None, id="write-own"),
        pytest.param(
            "writer", "PUT", "/v1/models/other/x", 403, "insufficient_scope", id="write-foreign"
        ),
        pytest.param(
            "capped",
            "PUT",
            "/v1/models/acme/sentiment",
            403,
            "insufficient_scope",
            id="org-read-caps",
        ),
        pytest.param(
            "capped", "POST", "/v1/models/acme/sentiment/infer", 200, None, id="org-read-reads"
        ),
        pytest.param(
            "fine", "POST", "/v1/models/acme/sentiment/infer", 200, None, id="fine-listed"
        ),
        pytest.param(
            "fine",
            "POST",
            "/v1/models/acme/other/infer",
            403,
            "insufficient_scope",
            id="fine-unlisted",
        ),
        pytest.param(
            "fine",
            "PUT",
            "/v1/models/acme/sentiment",
            403,
            "insufficient_scope",
            id="fine-no-write",
        ),
        pytest.param("reader", "POST", "/v1/models/acme/public-demo/infer", 200, None, id="public"),
        pytest.param(
            "reader", "DELETE", "/anything", 403, "insufficient_scope", id="method-policy-delete"
        ),
        pytest.param("reader", "GET", "/anything", 200, None, id="method-policy-get"),
        pytest.param("reader", "POST", "/anything", 200, None, id="method-policy-post-is-a-read"),
        pytest.param(
            "reader", "PATCH", "/anything", 403, "insufficient_scope", id="method-policy-patch"
        ),
        pytest.param("writer", "DELETE", "/anything", 200, None, id="method-policy-write"),
    ],
)
async def test_access_rules_enforced(client, tokens, who, method, path, status, error):
    response = await client.request(method, path, headers=bearer(tokens[who]))
    assert response.status_code == status, response.text
    if error:
        body = response.json()
        assert body["error"] == error
        challenge = response.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge
        assert f'scope="{body["scope"]}"' in challenge
        assert body["error_description"].split(":")[0] in {"read denied", "write denied"}


async def test_basic_password_is_the_token(client, tokens):
    response = await client.put("/v1/models/acme/sentiment", headers=basic(tokens["writer"]))
    assert response.status_code == 200


async def test_made_up_token_is_invalid(client):
    response = await client.get("/whoami", headers=bearer("hf_" + "Z" * 34))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param([("authorization", "Token abc")], id="unknown-scheme"),
        pytest.param(
            [("authorization", "Bearer a"), ("authorization", "Bearer b")], id="two-headers"
        ),
        pytest.param([("authorization", "Basic %%%")], id="bad-base64"),
        pytest.param([("authorization", "Bearer " + "a" * 9000)], id="oversized"),
    ],
)
async def test_malformed_credentials_are_400(client, headers):
    response = await client.get("/whoami", headers=headers)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert 'error="invalid_request"' in response.headers["www-authenticate"]


async def test_hub_down_is_503_with_retry_after(make_app, hub_emulator, tokens):
    hub_emulator.fail_next(503, headers={"Retry-After": "12"})
    transport = httpx.ASGITransport(make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "12"
    assert response.json()["error"] == "temporarily_unavailable"
    assert "www-authenticate" not in response.headers


async def test_hub_429_is_503_not_401(make_app, hub_emulator, tokens):
    hub_emulator.fail_next(429, headers={"RateLimit": '"api";r=0;t=60'})
    transport = httpx.ASGITransport(make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "60"


async def test_hub_stopped_is_503(make_app, hub_emulator, tokens):
    app = make_app()
    hub_emulator.stop()
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1


async def test_public_paths_have_an_anonymous_starlette_user(client, hub_emulator):
    """request.user and @requires work on public paths too, as under Starlette's own
    AuthenticationMiddleware: no token is checked there, so the user is anonymous."""
    response = await client.get("/docs/about/me")
    assert response.json() == {"user": "anonymous", "authenticated": False, "scopes": []}
    assert (await client.get("/docs/members/only")).status_code == 403
    assert hub_emulator.whoami_calls == 0


async def test_starlette_user_and_scopes(client, tokens):
    response = await client.get("/whoami", headers=bearer(tokens["writer"]))
    assert response.json() == {
        "user": "alice",
        "authenticated": True,
        "scopes": ["authenticated", "role:write"],
    }
    assert (await client.get("/needs-auth", headers=bearer(tokens["reader"]))).status_code == 200


class _IdentityProvider:
    """An introspection source answering one fixed principal (no I/O)."""

    name = "idp"
    wait_timeout = 1.0

    def __init__(self, principal: Principal) -> None:
        self.principal = principal

    def flow(self, credentials):
        return Valid(replace(self.principal, fingerprint=credentials.fingerprint))
        yield


@pytest.mark.parametrize(
    ("oauth_scopes", "scopes", "write_only"),
    [
        pytest.param(
            {"read-repos"}, ["authenticated", "role:read", "read-repos"], 403, id="plain-scope"
        ),
        pytest.param(
            {"read-repos", "role:write"},
            ["authenticated", "role:read", "read-repos"],
            403,
            id="role-scope-from-the-provider-left-out",
        ),
        pytest.param(
            {"authenticated", "x"}, ["authenticated", "role:read", "x"], 403, id="no-duplicate"
        ),
    ],
)
async def test_provider_scopes_cannot_pose_as_ours(oauth_scopes, scopes, write_only):
    @requires("role:write")
    async def write_only_route(request: Request) -> PlainTextResponse:
        return PlainTextResponse("written")

    principal = Principal(
        name="ivy", token_role="read", oauth_scopes=frozenset(oauth_scopes), source="idp"
    )
    app = Starlette(routes=[Route("/whoami", whoami), Route("/write-only", write_only_route)])
    app.add_middleware(HFAuthMiddleware, source=_IdentityProvider(principal), method_policy=False)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        headers = bearer("hf_" + "i" * 34)
        assert (await client.get("/whoami", headers=headers)).json()["scopes"] == scopes
        assert (await client.get("/write-only", headers=headers)).status_code == write_only


async def test_authenticated_responses_are_private(client, tokens):
    response = await client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.headers["cache-control"] == "private"
    assert "Authorization" in response.headers["vary"]


async def test_app_cache_control_is_kept_and_vary_added(client, tokens):
    response = await client.get("/public-cacheable", headers=bearer(tokens["reader"]))
    assert response.headers.get_list("cache-control") == ["public, max-age=60"]
    assert response.headers.get_list("vary") == ["Accept-Encoding", "Authorization"]


async def test_app_cache_control_is_found_whatever_its_case(hub_emulator, tokens):
    async def capitalised(scope, receive, send):
        headers = [(b"Cache-Control", b"public, max-age=60")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"ok"})

    app = HFAuthMiddleware(
        capitalised, authenticator=Authenticator(HubWhoamiSource(hub_emulator.url))
    )
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/", headers=bearer(tokens["reader"]))
    assert response.headers.get_list("cache-control") == ["public, max-age=60"]
    assert response.headers["vary"] == "Authorization"


async def test_streamed_responses_pass_through_whole(client, tokens):
    response = await client.get("/streamed", headers=bearer(tokens["reader"]))
    assert response.text == "one two three"
    assert response.headers["cache-control"] == "private"


async def test_one_request_cannot_change_the_scopes_of_the_next(client, tokens):
    for _ in range(2):
        response = await client.get("/add-scope", headers=bearer(tokens["writer"]))
        assert response.json() == {
            "scopes": ["authenticated", "role:write"],
            "refused": [True, True, True, True],
        }


START_MESSAGE = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain"), (b"x-app", b"kept")],
}


async def raw_app(scope, receive, send):
    """A plain ASGI app: its headers as a one-shot generator, or one start
    message reused for every response; it checks send is a coroutine function."""
    if not asyncio.iscoroutinefunction(send):
        raise AssertionError("send is not a coroutine function")
    if scope["path"] == "/generator":
        headers = iter([(b"content-type", b"text/plain"), (b"x-app", b"kept")])
        await send({"type": "http.response.start", "status": 200, "headers": headers})
    else:
        await send(START_MESSAGE)
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("path", ["/generator", "/reused"])
async def test_raw_asgi_app_keeps_its_headers(hub_emulator, tokens, path):
    authenticator = Authenticator(HubWhoamiSource(hub_emulator.url))
    app = HFAuthMiddleware(raw_app, authenticator=authenticator)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for _ in range(2):
            response = await client.get(path, headers=bearer(tokens["reader"]))
            assert response.status_code == 200
            assert response.headers["x-app"] == "kept"
            assert response.headers["content-type"] == "text/plain"
            assert response.headers.get_list("vary") == ["Authorization"]
            assert response.headers["cache-control"] == "private"
    assert START_MESSAGE["headers"] == [(b"content-type", b"text/plain"), (b"x-app", b"kept")]


async def checks_after_making_the_start(scope, receive, send):
    """A plain ASGI app that makes its start's awaitable, then checks its caller."""
    pending = send({"type": "http.response.start", "status": 200, "headers": []})
    scope["hfauth"].require("model:acme/sentiment", "write")
    await pending
    await send({"type": "http.response.body", "body": b"written"})


# The app drops the start it made when its check raises: Python says so.
@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited:RuntimeWarning")
async def test_a_denial_raised_before_the_start_is_awaited_is_answered(hub_emulator, tokens):
    authenticator = Authenticator(HubWhoamiSource(hub_emulator.url))
    app = HFAuthMiddleware(checks_after_making_the_start, authenticator=authenticator)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        denied = await client.get("/", headers=bearer(tokens["reader"]))
        written = await client.get("/", headers=bearer(tokens["writer"]))
    assert denied.status_code == 403
    assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]
    assert (written.status_code, written.text) == (200, "written")


async def test_route_helpers_explain_decisions(client, tokens):
    response = await client.get("/route-check", headers=bearer(tokens["reader"]))
    assert response.json() == {"allowed": False, "reason": "write denied: token role read"}


async def test_anonymous_mode(make_app, tokens):
    transport = httpx.ASGITransport(make_app(allow_anonymous=True))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        anonymous = await client.get("/whoami")
        assert anonymous.json()["authenticated"] is False
        assert (await client.post("/v1/models/acme/public-demo/infer")).status_code == 200
        private = await client.post("/v1/models/acme/sentiment/infer")
        assert private.status_code == 401
        assert "www-authenticate" in private.headers
        assert (await client.get("/needs-auth")).status_code == 403  # Starlette's own requires()
        bad = await client.get("/whoami", headers=bearer("hf_" + "Q" * 34))
        assert bad.status_code == 401


@pytest.mark.parametrize(
    ("method_policy", "rules", "answers"),
    [
        pytest.param(
            True, RULES, {"GET": 200, "POST": 401, "DELETE": 401}, id="method-policy-path-rules"
        ),
        pytest.param(True, [], {"GET": 200, "POST": 401, "DELETE": 401}, id="method-policy"),
        pytest.param(False, [], {"GET": 200, "POST": 200, "DELETE": 200}, id="no-method-policy"),
    ],
)
async def test_anonymous_callers_get_only_safe_methods_where_no_rule_decides(
    make_app, method_policy, rules, answers
):
    """A POST needs only a valid token (an inference is a read), but a token all
    the same: the anonymous caller has none. With method_policy off, the route decides."""
    app = make_app(allow_anonymous=True, method_policy=method_policy, rules=rules)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        got = {
            method: (await client.request(method, "/anything")).status_code for method in answers
        }
    assert got == answers


@pytest.mark.parametrize(
    ("rules", "who", "method", "path", "status"),
    [
        pytest.param(
            [require_read("POST /generate", repo="acme/sentiment")],
            "capped",
            "PUT",
            "/generate",
            403,
            id="fixed-repo-other-unsafe-method-needs-write",
        ),
        pytest.param(
            [require_read("POST /generate", repo="acme/sentiment")],
            "writer",
            "DELETE",
            "/generate",
            200,
            id="fixed-repo-writer-may",
        ),
        pytest.param(
            [require_read("POST /generate", repo="zoe/private")],
            "reader",
            "GET",
            "/generate",
            403,
            id="fixed-repo-other-safe-method-needs-read",
        ),
        pytest.param(
            [require_read("POST /generate", repo="zoe/private")],
            None,
            "GET",
            "/generate",
            401,
            id="fixed-repo-anonymous",
        ),
        pytest.param(
            openai_rules(),
            "writer",
            "PUT",
            "/v1/chat/completions",
            403,
            id="body-rule-other-method",
        ),
        pytest.param(
            openai_rules(), "writer", "GET", "/v1/chat/completions", 403, id="body-rule-safe-method"
        ),
    ],
)
async def test_a_rule_reading_the_request_guards_its_path_for_every_method(
    make_app, tokens, rules, who, method, path, status
):
    """As on a path rule's path: another method needs the same repository, read
    for a safe one, write for the others; a body is read only for the rule's own
    methods, so there the request names no repository."""
    app = make_app(rules=rules, allow_anonymous=who is None)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.request(method, path, headers=bearer(tokens[who]) if who else {})
    assert response.status_code == status, response.text


@pytest.mark.parametrize(
    ("model", "status"),
    [pytest.param("acme/public-demo", 200, id="public"), pytest.param("acme/x", 401, id="private")],
)
async def test_anonymous_post_a_body_rule_covers_is_decided_by_the_rule(make_app, model, status):
    app = make_app(allow_anonymous=True, rules=openai_rules())
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/v1/chat/completions", json={"model": model})
    assert response.status_code == status


@pytest.mark.usefixtures("client_logs_urls_with_tokens")
async def test_query_param_opt_in(make_app, tokens):
    transport = httpx.ASGITransport(make_app(query_param="access_token"))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        ok = await client.get("/whoami", params={"access_token": tokens["reader"]})
        assert ok.status_code == 200
        both = await client.get(
            "/whoami", params={"access_token": tokens["reader"]}, headers=bearer(tokens["reader"])
        )
        assert both.status_code == 400


@pytest.mark.usefixtures("client_logs_urls_with_tokens")
async def test_query_param_ignored_by_default(client, tokens):
    response = await client.get("/whoami", params={"access_token": tokens["reader"]})
    assert response.status_code == 401


async def test_method_policy_can_be_switched_off(make_app, tokens):
    transport = httpx.ASGITransport(make_app(method_policy=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post("/anything", headers=bearer(tokens["reader"]))
    assert response.status_code == 200


async def test_concurrent_requests_with_cold_token_make_one_call(make_app, hub_emulator, tokens):
    transport = httpx.ASGITransport(make_app())
    hub_emulator.delay = 30
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        requests = [
            asyncio.create_task(client.get("/whoami", headers=bearer(tokens["writer"])))
            for _ in range(100)
        ]
        assert await asyncio.to_thread(hub_emulator.wait_for_held, 1)
        hub_emulator.release_held()
        responses = await asyncio.gather(*requests)
    assert [response.status_code for response in responses] == [200] * 100
    assert hub_emulator.whoami_calls == 1


async def test_root_path_aware(make_app, tokens):
    app = make_app()

    async def mounted(scope, receive, send):
        scope = dict(scope, root_path="/api", path="/api" + scope["path"])
        await app(scope, receive, send)

    transport = httpx.ASGITransport(mounted)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/health")).status_code == 200
        response = await client.put("/v1/models/acme/sentiment", headers=bearer(tokens["reader"]))
        assert response.status_code == 403


async def test_lifespan_and_other_scopes_pass_through(make_app):
    seen = []

    async def inner(scope, receive, send):
        seen.append(scope["type"])

    middleware = HFAuthMiddleware(inner, hub_url="https://huggingface.co")
    for scope_type in ("lifespan", "something-new"):
        await middleware({"type": scope_type}, None, None)
    assert seen == ["lifespan", "something-new"]


def test_websocket_denied_with_http_response(make_app):
    client = TestClient(make_app())
    from starlette.testclient import WebSocketDenialResponse

    with (
        pytest.raises(WebSocketDenialResponse) as caught,
        client.websocket_connect("/v1/models/acme/sentiment/stream"),
    ):
        pass
    assert caught.value.status_code == 401
    assert "bearer" in caught.value.headers["www-authenticate"].lower()


def test_websocket_allowed_for_reader(make_app, tokens):
    client = TestClient(make_app())
    with client.websocket_connect(
        "/v1/models/acme/sentiment/stream", headers=bearer(tokens["reader"])
    ) as websocket:
        assert websocket.receive_text() == "hello bob"


def test_websocket_forbidden_for_unlisted_repo(make_app, tokens):
    client = TestClient(make_app())
    from starlette.testclient import WebSocketDenialResponse

    with (
        pytest.raises(WebSocketDenialResponse) as caught,
        client.websocket_connect("/v1/models/acme/other/stream", headers=bearer(tokens["fine"])),
    ):
        pass
    assert caught.value.status_code == 403


async def test_websocket_closed_1008_without_denial_extension(make_app):
    sent = await websocket_without_denials(make_app(), "/v1/models/acme/sentiment/stream", [])
    assert [(m["type"], m.get("code")) for m in sent] == [("websocket.close", 1008)]


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"hub_url": "https://a.example", "source": object()}, id="two-sources"),
        pytest.param({"realm": 'a"b'}, id="quote-in-realm"),
        pytest.param({"public_paths": ["health"]}, id="relative-public-path"),
        pytest.param({"public_paths": ["/a*b"]}, id="star-inside"),
        pytest.param({"rules": ["POST /x"]}, id="rule-not-built"),
        pytest.param({"query_param": "a b"}, id="bad-query-param"),
        pytest.param({"max_header_bytes": 10}, id="tiny-header-cap"),
        pytest.param({"hub_url": "http://hub.example"}, id="plain-http"),
    ],
)
def test_bad_options_fail_at_startup(options):
    with pytest.raises(ConfigurationError):
        HFAuthMiddleware(Starlette(), **options)


@pytest.mark.parametrize(
    ("options", "says"),
    [
        pytest.param({"public_path": ["/health"]}, "did you mean 'public_paths'", id="typo"),
        pytest.param({"allow_insecure_http": True}, "unknown hfauth-mw option", id="source-option"),
        pytest.param(
            {"hub_url": "http://hub.example"},
            "source=HubWhoamiSource(hub_url, allow_insecure_http=True)",
            id="plain-http-says-how",
        ),
    ],
)
def test_option_errors_say_what_to_pass(options, says):
    with pytest.raises(ConfigurationError, match=re.escape(says)):
        HFAuthMiddleware(Starlette(), **options)


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("POST /v1/models/{owner}", id="no-name"),
        pytest.param("/v1/models/{owner}/{name}", id="no-method"),
        pytest.param("GET /v1/{owner}/{name}/{owner}", id="twice"),
        pytest.param("GET /v1/{owner}/{name}/{other}", id="unknown-placeholder"),
    ],
)
def test_bad_rules(spec):
    with pytest.raises(ConfigurationError):
        require_read(spec)


def test_error_bodies_are_json(make_app):
    client = TestClient(make_app())
    response = client.get("/whoami", headers={"Authorization": "Token x"})
    assert json.loads(response.content)["error"] == "invalid_request"
    assert int(response.headers["content-length"]) == len(response.content)


@pytest.mark.parametrize(
    ("who", "method", "path", "status"),
    [
        pytest.param("fine", "GET", "/v1/models/acme/other/files", 403, id="get-rule"),
        pytest.param(
            "fine", "HEAD", "/v1/models/acme/other/files", 403, id="head-follows-get-rule"
        ),
        pytest.param("fine", "HEAD", "/v1/models/acme/sentiment/files", 200, id="head-allowed"),
        pytest.param("fine", "get", "/v1/models/acme/other/files", 403, id="lowercase-method"),
        pytest.param(
            "capped",
            "DELETE",
            "/v1/models/acme/sentiment/files",
            403,
            id="unnamed-method-needs-write",
        ),
        pytest.param(
            "writer", "DELETE", "/v1/models/acme/sentiment/files", 200, id="unnamed-method-writer"
        ),
        pytest.param("writer", "GET", "/v1/models/acme/x%20/files", 403, id="invalid-repo-refused"),
        pytest.param("writer", "GET", "/v1/models/acme/a..b/files", 403, id="dot-dot-repo-refused"),
        pytest.param("writer", "GET", "/v1/models/%E4%B8%AD/x/files", 403, id="non-latin-1-owner"),
        # Runs of slashes count as one: Werkzeug-style routers serve //v1/... as /v1/...
        pytest.param(  # a full URL: httpx reads "//v1/..." alone as a host name
            "fine", "GET", "http://t//v1/models/acme/other/files", 403, id="leading-slashes"
        ),
        pytest.param("fine", "GET", "/%2Fv1/models/acme/other/files", 403, id="encoded-slash"),
        pytest.param("fine", "GET", "/v1//models/acme/other/files", 403, id="inner-slashes"),
        # Routers that serve /x/ as /x (Werkzeug with strict_slashes=False).
        pytest.param("fine", "GET", "/v1/models/acme/other/files/", 403, id="trailing-slash"),
        pytest.param(  # allowed through the middleware; Starlette then redirects
            "fine", "HEAD", "/v1/models/acme/sentiment/files/", 307, id="slash-allowed"
        ),
    ],
)
async def test_rules_cannot_be_sidestepped(make_app, tokens, who, method, path, status):
    transport = httpx.ASGITransport(make_app(method_policy=False))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.request(method, path, headers=bearer(tokens[who]))
    assert response.status_code == status, response.text
    if status == 403:
        challenge = response.headers["www-authenticate"]
        assert challenge.isascii()
        assert 'error="insufficient_scope"' in challenge


@pytest.mark.parametrize(
    ("method", "path"),
    [
        # Starlette's route regexes end in $, which matches before a final newline:
        # /files%0A is served as /files, while no rule matches it.
        pytest.param("GET", "/v1/models/acme/other/files%0A", id="trailing-newline"),
        pytest.param("POST", "/v1/models/acme/other/infer%0A", id="trailing-newline-post"),
        pytest.param("GET", "/v1/models/acme/other/files%0D%0A", id="trailing-crlf"),
        pytest.param("GET", "/v1/models/acme/other%00/files", id="nul"),
        pytest.param("GET", "/docs/page%0A", id="never-public"),
    ],
)
async def test_paths_with_control_characters_are_refused(make_app, tokens, method, path):
    transport = httpx.ASGITransport(make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.request(method, path, headers=bearer(tokens["fine"]))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "invalid_request"


def test_websocket_path_with_a_newline_is_refused(make_app, tokens):
    client = TestClient(make_app())
    from starlette.testclient import WebSocketDenialResponse

    with (
        pytest.raises(WebSocketDenialResponse) as caught,
        client.websocket_connect("/v1/models/acme/other/stream%0A", headers=bearer(tokens["fine"])),
    ):
        pass
    assert caught.value.status_code == 400


@pytest.mark.parametrize(
    ("options", "who", "status"),
    [
        pytest.param({}, "reader", 403, id="read-token"),
        pytest.param({"private_responses": False}, "reader", 403, id="without-private-headers"),
        pytest.param({}, "writer", 200, id="write-token"),
        pytest.param({"allow_anonymous": True}, None, 401, id="anonymous"),
    ],
)
async def test_a_denial_raised_in_the_route_is_answered(make_app, tokens, options, who, status):
    """README: auth.require(...) "raises the matching 401/403 error"; not a 500."""
    transport = httpx.ASGITransport(make_app(**options))
    headers = bearer(tokens[who]) if who else {}
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/require-write", headers=headers)
    assert response.status_code == status, response.text
    if status != 200:
        assert "www-authenticate" in response.headers
        assert response.json()["error"] in ("insufficient_scope", "unauthorized")


async def test_a_denial_raised_in_the_route_is_answered_when_wrapped_from_outside(
    hub_emulator, clock, tokens
):
    """app = HFAuthMiddleware(app): Starlette's ServerErrorMiddleware is then inside ours."""
    inner = Starlette(routes=ROUTES)
    authenticator = Authenticator(
        HubWhoamiSource(hub_emulator.url), cache=TokenCache(timer=clock, clock=clock)
    )
    app = HFAuthMiddleware(inner, authenticator=authenticator, policy=AccessPolicy())
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/require-write", headers=bearer(tokens["reader"]))
    assert response.status_code == 403, response.text
    assert response.json()["error"] == "insufficient_scope"
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]


def test_the_shared_user_can_be_copied_and_pickled():
    import copy
    import pickle

    from hfauth_mw._asgi import HubUser

    user = HubUser(Principal(name="alice", token_role="read"))
    pickled = pickle.loads(pickle.dumps(user))  # noqa: S301 - our own bytes
    for clone in (copy.copy(user), copy.deepcopy(user), pickled):
        assert clone.principal == user.principal
        with pytest.raises(AttributeError):
            clone.flag = True


async def test_a_denial_after_the_response_started_is_not_rewritten(make_app, tokens):
    transport = httpx.ASGITransport(make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        with pytest.raises(InsufficientScope):  # goes on up, as any error after the start
            await client.get("/deny-mid-stream", headers=bearer(tokens["reader"]))


async def test_root_path_is_stripped_only_at_a_segment_boundary(make_app, tokens):
    app = make_app(rules=[require_write("PUT /{owner}/{name}")])

    async def mounted(scope, receive, send):
        await app(dict(scope, root_path="/api"), receive, send)

    transport = httpx.ASGITransport(mounted)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        # "/apiother/model" is not under "/api": the rule sees owner "apiother",
        # of which alice is not a member. Cut as "other/model", no rule would match.
        response = await client.put("/apiother/model", headers=bearer(tokens["writer"]))
        assert response.status_code == 403
        assert "apiother" in response.json()["error_description"]
        inside = await client.put("/api/alice/model", headers=bearer(tokens["writer"]))
        assert inside.status_code != 403


async def test_failing_policy_callback_is_503(make_app, tokens):
    def visibility(repo):
        raise ConnectionError("repo database down")

    transport = httpx.ASGITransport(make_app(policy=AccessPolicy(visibility=visibility)))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post(
            "/v1/models/acme/sentiment/infer", headers=bearer(tokens["reader"])
        )
    assert response.status_code == 503
    assert "retry-after" in response.headers


async def test_cors_added_after_the_middleware_answers_preflights_and_labels_refusals(
    make_app, tokens
):
    """The documented order: CORSMiddleware added last is outermost, so a browser's
    preflight (which never carries credentials) is answered before the token check,
    and a 401 still carries the CORS headers the browser needs to read it."""
    from starlette.middleware.cors import CORSMiddleware

    app = make_app()
    app.add_middleware(
        CORSMiddleware, allow_origins=["https://app.example"], allow_headers=["Authorization"]
    )
    origin = {"Origin": "https://app.example"}
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://testserver"
    ) as client:
        preflight = await client.options(
            "/whoami",
            headers={
                **origin,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
        )
        refused = await client.get("/whoami", headers=origin)
        allowed = await client.get("/whoami", headers={**origin, **bearer(tokens["reader"])})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == "https://app.example"
    assert allowed.status_code == 200


@pytest.mark.parametrize(
    "forwarded",
    [
        pytest.param([("X-Forwarded-For", "{client}, 10.0.0.1")], id="one-line"),
        pytest.param(
            [("X-Forwarded-For", "{client}"), ("X-Forwarded-For", "10.0.0.1")], id="a-line-a-proxy"
        ),
    ],
)
async def test_the_brute_force_guard_finds_the_client_behind_two_proxies(
    make_app, tokens, clock, forwarded
):
    """Each proxy may add its own X-Forwarded-For line: the client is the last
    untrusted hop of them all, so one client's failures lock out that client only."""
    limiter = FailureLimiter(max_failures=2, trusted_proxies=["127.0.0.1", "10.0.0.1"], timer=clock)
    app = make_app(limiter=limiter)
    transport = httpx.ASGITransport(app, client=("127.0.0.1", 5000))

    def via_proxies(client: str, token: str) -> list[tuple[str, str]]:
        lines = [(name, value.format(client=client)) for name, value in forwarded]
        return [("Authorization", f"Bearer {token}"), *lines]

    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for _ in range(2):
            await client.get("/whoami", headers=via_proxies("198.51.100.1", "hf_" + "w" * 34))
        other = await client.get("/whoami", headers=via_proxies("198.51.100.2", tokens["reader"]))
        locked = await client.get("/whoami", headers=via_proxies("198.51.100.1", tokens["reader"]))

    assert (other.status_code, locked.status_code) == (200, 429)


@pytest.mark.parametrize(
    ("check", "who", "outcome"),
    [
        pytest.param("before-accept", "writer", "may write", id="allowed"),
        pytest.param("before-accept", "reader", 403, id="refused-before-accept"),
        pytest.param("after-accept", "writer", "may write", id="allowed-after-accept"),
        pytest.param("after-accept", "reader", 1008, id="closed-after-accept"),
    ],
)
@pytest.mark.parametrize("installed", ["added", "wrapped-from-outside"])
def test_a_denial_raised_in_a_websocket_route_is_answered(
    make_app, hub_emulator, clock, tokens, check, who, outcome, installed
):
    """Not the server's 1011 for an error: the handshake is refused with the
    denial, or, once accepted, the socket is closed with 1008. Wrapped from
    outside, the app's own exception handler answers it, and must not send an
    HTTP response on an accepted socket (servers refuse one there)."""
    from starlette.testclient import WebSocketDenialResponse
    from starlette.websockets import WebSocketDisconnect

    if installed == "added":
        app = make_app()
    else:
        authenticator = Authenticator(
            HubWhoamiSource(hub_emulator.url), cache=TokenCache(timer=clock, clock=clock)
        )
        app = HFAuthMiddleware(Starlette(routes=ROUTES), authenticator=authenticator)
    client = TestClient(app, raise_server_exceptions=True)
    url, headers = f"/socket-needs-write?check={check}", bearer(tokens[who])
    if outcome == 403:
        with (
            pytest.raises(WebSocketDenialResponse) as denied,
            client.websocket_connect(url, headers=headers),
        ):
            pass
        assert denied.value.status_code == 403
        assert "insufficient_scope" in denied.value.headers["www-authenticate"]
    elif outcome == 1008:
        with (
            client.websocket_connect(url, headers=headers) as websocket,
            pytest.raises(WebSocketDisconnect) as closed,
        ):
            websocket.receive_text()
        assert (closed.value.code, closed.value.reason) == (1008, "insufficient_scope")
    else:
        with client.websocket_connect(url, headers=headers) as websocket:
            assert websocket.receive_text() == outcome


class _LiveEndpoint(WebSocketEndpoint):
    """A class-based endpoint: Starlette's app-level handler gets a WebSocket
    object of its own for it, which always looks unaccepted."""

    async def on_connect(self, websocket: WebSocket) -> None:
        await websocket.accept()
        get_request_auth(websocket).require("model:acme/sentiment", "write")
        await websocket.send_text("may write")


def test_a_denial_in_an_accepted_class_endpoint_closes_it_with_1008(hub_emulator, clock, tokens):
    from starlette.websockets import WebSocketDisconnect

    authenticator = Authenticator(
        HubWhoamiSource(hub_emulator.url), cache=TokenCache(timer=clock, clock=clock)
    )
    inner = Starlette(routes=[WebSocketRoute("/live", _LiveEndpoint)])
    client = TestClient(HFAuthMiddleware(inner, authenticator=authenticator))
    with (
        client.websocket_connect("/live", headers=bearer(tokens["reader"])) as websocket,
        pytest.raises(WebSocketDisconnect) as closed,
    ):
        websocket.receive_text()
    assert (closed.value.code, closed.value.reason) == (1008, "insufficient_scope")
    with client.websocket_connect("/live", headers=bearer(tokens["writer"])) as websocket:
        assert websocket.receive_text() == "may write"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param([], 401, id="no-token"),
        pytest.param([(b"authorization", b"Bearer not a token")], 400, id="malformed"),
    ],
)
async def test_a_request_refused_whatever_its_body_says_is_refused_unread(
    make_app, headers, status
):
    """On a body rule's route, a client without a token got its 401 only once
    the whole body (up to 1 MiB) had trickled in: it held a connection and a
    buffer meanwhile. It is answered at once now, before any body is asked for."""
    app = make_app(rules=openai_rules())
    asked_for_body = []

    async def receive():
        asked_for_body.append(True)
        await asyncio.Event().wait()  # a client that never sends its body

    sent: list[dict] = []

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/v1/chat/completions",
        "raw_path": b"/v1/chat/completions",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", b"900000"),
            *headers,
        ],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    await asyncio.wait_for(app(scope, receive, send), timeout=10)
    assert sent[0]["status"] == status
    assert asked_for_body == []
