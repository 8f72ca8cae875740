"""Route rules that find the repository in the request: the JSON body, a header,
one fixed repository; the OpenAI and TGI presets; the error body formats.

Each case runs through the ASGI and the WSGI middleware around real apps that
echo the body they receive, so the replay of the body is checked too.
"""

from __future__ import annotations

import json

import fastapi
import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from werkzeug.test import Client
from werkzeug.wrappers import Request as WerkzeugRequest
from werkzeug.wrappers import Response as WerkzeugResponse

from hfauth_mw import (
    Authenticator,
    ConfigurationError,
    ErrorResponse,
    HFAuthMiddleware,
    HFAuthWSGIMiddleware,
    InvalidBody,
    LocalStoreSource,
    OrgGrant,
    RequestAuth,
    TokenCache,
    UnknownModel,
    from_body,
    from_header,
    openai_rules,
    require_read,
    require_write,
    tgi_rules,
)
from hfauth_mw._request import RequestContext

pytestmark = pytest.mark.anyio

CHAT = "/v1/chat/completions"


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"received": body.decode("utf-8"), "caller": request.user.display_name})


def asgi_app(**options: object) -> Starlette:
    app = Starlette(
        routes=[
            Route(path, echo, methods=["POST", "GET"])
            for path in (CHAT, "/v1/completions", "/v1/embeddings", "/generate", "/", "/x")
        ]
    )
    app.add_middleware(HFAuthMiddleware, **options)
    return app


def wsgi_echo(environ, start_response):
    request = WerkzeugRequest(environ)
    principal = environ.get("hfauth.principal")
    body = json.dumps(
        {"received": request.get_data(as_text=True), "caller": principal.name if principal else ""}
    )
    return WerkzeugResponse(body, content_type="application/json")(environ, start_response)


@pytest.fixture
def make(hub_store, clock):
    """Both middlewares over one authenticator, answering (status, headers, json)."""

    def build(**options: object):
        authenticator = Authenticator(
            LocalStoreSource(hub_store), cache=TokenCache(timer=clock, clock=clock)
        )
        asgi = asgi_app(authenticator=authenticator, **options)
        wsgi = Client(HFAuthWSGIMiddleware(wsgi_echo, authenticator=authenticator, **options))

        async def call(kind, method, path, token=None, body=None, headers=None):
            sent = dict(headers or {})
            if token:
                sent["Authorization"] = f"Bearer {token}"
            content = body if isinstance(body, bytes) or body is None else json.dumps(body)
            if kind == "asgi":
                transport = httpx.ASGITransport(asgi)
                async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                    response = await client.request(method, path, content=content, headers=sent)
                return response.status_code, response.headers, response.json()
            answer = wsgi.open(path, method=method, data=content, headers=sent)
            return answer.status_code, answer.headers, json.loads(answer.get_data())

        return call

    return build


@pytest.fixture
def callers(hub_store):
    return {
        "member": hub_store.create_token(user="bob", orgs=[OrgGrant("acme", "read")]).token,
        "outsider": hub_store.create_token(user="zoe").token,
    }


KINDS = [pytest.param("asgi", id="asgi"), pytest.param("wsgi", id="wsgi")]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("caller", "body", "status", "code"),
    [
        pytest.param("member", {"model": "acme/m", "messages": []}, 200, None, id="may-read"),
        pytest.param("outsider", {"model": "acme/m"}, 403, "insufficient_scope", id="may-not-read"),
        pytest.param(None, {"model": "acme/m"}, 401, "unauthorized", id="no-token"),
        pytest.param("member", b"{not json", 400, "invalid_request", id="invalid-json"),
        pytest.param("member", {"messages": []}, 400, "invalid_request", id="no-model-field"),
        pytest.param("member", {"model": 7}, 400, "invalid_request", id="model-not-text"),
        pytest.param("member", ["acme/m"], 400, "invalid_request", id="not-an-object"),
        pytest.param("member", {"model": "no-slash"}, 400, "invalid_request", id="not-a-repo-id"),
    ],
)
async def test_a_body_rule_checks_the_model_the_body_names(
    make, callers, kind, caller, body, status, code
):
    call = make(rules=[require_read(f"POST {CHAT}", repo=from_body("model"))])
    token = callers[caller] if caller else None
    got, headers, answer = await call(kind, "POST", CHAT, token, body)
    assert got == status
    if status == 200:
        # The app receives the body unchanged, and the caller.
        assert answer == {"received": json.dumps(body), "caller": "bob"}
    else:
        assert answer["error"] == code
        assert headers["x-error-code"] == code
        assert headers["x-error-message"]


@pytest.mark.parametrize("kind", KINDS)
async def test_the_body_is_read_only_when_a_rule_needs_it(make, callers, kind):
    """A GET, or a POST to another path, goes through with its body unread and intact."""
    call = make(rules=[require_read(f"POST {CHAT}", repo=from_body("model"))], max_body_bytes=1024)
    big = b"x" * 4096  # over the cap, not JSON: only a body rule would refuse it
    status, _, answer = await call(kind, "POST", "/x", callers["member"], big)
    assert status == 200
    assert answer["received"] == big.decode()


@pytest.mark.parametrize("kind", KINDS)
async def test_a_body_over_the_cap_is_413_before_the_app(make, callers, kind):
    call = make(rules=[require_read(f"POST {CHAT}", repo=from_body("model"))], max_body_bytes=1024)
    body = {"model": "acme/m", "padding": "x" * 2000}
    status, headers, answer = await call(kind, "POST", CHAT, callers["member"], body)
    assert status == 413
    assert answer["error"] == "payload_too_large"
    assert "1024 bytes" in headers["x-error-message"]


async def test_a_streamed_asgi_body_is_capped_and_replayed_whole(hub_store, callers, clock):
    """A body sent in chunks without Content-Length: read up to the cap, then handed
    to the app as the same messages."""
    authenticator = Authenticator(LocalStoreSource(hub_store), cache=TokenCache(timer=clock))
    app = asgi_app(
        authenticator=authenticator,
        rules=[require_read(f"POST {CHAT}", repo=from_body("model"))],
        max_body_bytes=2048,
    )
    chunks = [b'{"model": "acme/m", ', b'"prompt": "', b"y" * 500, b'"}']

    async def stream(parts):
        for part in parts:
            yield part

    headers = {"Authorization": f"Bearer {callers['member']}"}
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post(CHAT, content=stream(chunks), headers=headers)
        assert response.status_code == 200
        assert response.json()["received"] == b"".join(chunks).decode()
        too_big = await client.post(CHAT, content=stream(chunks * 5), headers=headers)
        assert too_big.status_code == 413


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        pytest.param("llama", 200, None, id="served-name"),
        pytest.param("acme/m", 404, "model_not_found", id="repo-id-not-served-by-that-name"),
        pytest.param("gpt-4", 404, "model_not_found", id="unknown-name"),
    ],
)
async def test_served_names_map_to_repos_and_others_are_not_found(
    make, callers, kind, model, status, code
):
    call = make(rules=openai_rules({"llama": "acme/m"}), error_format="openai")
    got, headers, answer = await call(kind, "POST", CHAT, callers["member"], {"model": model})
    assert got == status
    if code:
        assert answer["error"]["code"] == code
        assert answer["error"]["param"] == "model"
        assert answer["error"]["type"] == "invalid_request_error"
        assert "www-authenticate" not in headers


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(
    ("caller", "status", "error_type"),
    [
        pytest.param("outsider", 403, "permission_error", id="denied"),
        pytest.param(None, 401, "authentication_error", id="no-token"),
    ],
)
async def test_openai_error_format_is_what_the_openai_client_reads(
    make, callers, kind, caller, status, error_type
):
    call = make(rules=openai_rules(), error_format="openai")
    token = callers[caller] if caller else None
    got, headers, answer = await call(
        kind, "POST", "/v1/embeddings", token, {"model": "acme/m", "input": "hi"}
    )
    assert got == status
    assert set(answer["error"]) == {"message", "type", "param", "code"}
    assert answer["error"]["type"] == error_type
    assert headers["x-error-message"] == answer["error"]["message"]
    assert "Bearer" in headers["www-authenticate"]  # RFC 6750's challenge stays


@pytest.mark.parametrize("kind", KINDS)
async def test_tgi_rules_read_the_one_model_served(make, callers, kind):
    call = make(rules=tgi_rules("acme/m"), error_format="hub")
    assert (await call(kind, "POST", "/generate", callers["member"], {"inputs": "hi"}))[0] == 200
    status, headers, answer = await call(kind, "POST", "/", callers["outsider"], {"inputs": "hi"})
    assert status == 403
    assert answer == {"error": headers["x-error-message"]}


@pytest.mark.parametrize("kind", KINDS)
async def test_a_header_rule_reads_the_model_from_a_header(make, callers, kind):
    call = make(rules=[require_read("POST /x", repo=from_header("X-Model"))])
    ok = await call(kind, "POST", "/x", callers["member"], b"", {"X-Model": "acme/m"})
    assert ok[0] == 200
    denied = await call(kind, "POST", "/x", callers["outsider"], b"", {"X-Model": "acme/m"})
    assert denied[0] == 403
    missing = await call(kind, "POST", "/x", callers["member"], b"")
    assert missing[0] == 400


@pytest.mark.parametrize("kind", KINDS)
async def test_a_write_rule_from_the_body_needs_write(make, callers, kind):
    call = make(rules=[require_write("POST /x", repo=from_body("model"))])
    status, _, answer = await call(kind, "POST", "/x", callers["member"], {"model": "acme/m"})
    assert status == 403
    assert answer["scope"] == "repo.write"


@pytest.mark.parametrize("kind", KINDS)
async def test_an_error_format_function_of_ones_own(make, callers, kind):
    def plain(error, response: ErrorResponse) -> ErrorResponse:
        return ErrorResponse(response.status, response.headers, b'{"oops": true}')

    call = make(error_format=plain)
    status, headers, answer = await call(kind, "GET", "/x")
    assert (status, answer) == (401, {"oops": True})
    assert "Bearer" in headers["www-authenticate"]


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(
            lambda: require_read("POST /v1/chat"), "must contain {owner} and {name}", id="no-repo"
        ),
        pytest.param(
            lambda: require_read("POST /m/{owner}/{name}", repo=from_body()),
            "has no placeholders",
            id="both",
        ),
        pytest.param(lambda: require_read("POST /x", repo="not a repo"), "not a repo id", id="id"),
        pytest.param(lambda: from_body(""), "name of a JSON field", id="empty-field"),
        pytest.param(lambda: from_header("X Model"), "header name", id="bad-header"),
        pytest.param(lambda: openai_rules("acme/m"), "not one string", id="served-string"),
        pytest.param(lambda: openai_rules({"x": "nope"}), "is not a repo id", id="served-id"),
        pytest.param(
            lambda: HFAuthMiddleware(asgi_app, source=None, error_format="xml"),
            "error_format must be",
            id="format",
        ),
    ],
)
def test_bad_rules_fail_at_start_up(build, message):
    with pytest.raises(ConfigurationError, match=message):
        build()


def _request_with_body(body: bytes) -> RequestContext:
    request = RequestContext("POST", CHAT, [])
    request.body = body
    return request


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        pytest.param("POST", "/api/infer", ("model:acme/m", "read"), id="its-own-method"),
        pytest.param("PUT", "/api/infer", ("model:api/infer", "write"), id="path-rule-decides"),
        pytest.param("GET", "/api/infer", ("model:api/infer", "read"), id="path-rule-guards"),
        pytest.param("GET", "/v1/tgi/generate", ("model:acme/m", "read"), id="no-path-rule-safe"),
        pytest.param("DELETE", "/v1/tgi/generate", ("model:acme/m", "write"), id="no-path-rule"),
    ],
)
def test_a_request_rule_guards_only_what_no_path_rule_decides(method, path, needed):
    """The header a caller sends must never replace the repository a path rule
    names (what the hub is asked about is this requirement)."""
    from hfauth_mw import AccessPolicy, from_header
    from hfauth_mw._routes import RouteRules

    rules = RouteRules(
        [
            require_write("PUT /{owner}/{name}"),
            require_read("POST /api/infer", repo=from_header("X-Model")),
            require_read("POST /v1/tgi/generate", repo=from_header("X-Model")),
        ],
        None,
        AccessPolicy(),
    )
    request = RequestContext(method, path, [], headers=[(b"x-model", b"acme/m")])
    repo, access = rules.requirement(request)
    assert (f"{repo.type}:{repo.id}", access) == needed


PASTED_TOKEN = "hf_" + "Ab3" * 11  # a token pasted into the model field by mistake


@pytest.mark.parametrize(
    ("model", "shown"),
    [
        pytest.param("nobody/nothing", "'nobody/nothing'", id="plain-name"),
        pytest.param(PASTED_TOKEN, "'<redacted>'", id="token"),
        pytest.param(f"acme/{PASTED_TOKEN}", "'acme/<redacted>'", id="token-as-name"),
        pytest.param("x" * 200 + PASTED_TOKEN, "'" + "x" * 96 + "...'", id="token-past-the-cut"),
        pytest.param(
            "x" * 90 + " " + PASTED_TOKEN, "'" + "x" * 90 + " <reda...'", id="token-at-the-cut"
        ),
        pytest.param("a\nb", "'a?b'", id="control-character"),
    ],
)
def test_an_unknown_model_is_named_without_any_token(model, shown):
    """The refusal's text goes to the audit log: a token a client pasted into
    the model field must not reach it."""
    with pytest.raises(UnknownModel) as refused:
        from_body(served={"m": "acme/m"}).repo(
            _request_with_body(json.dumps({"model": model}).encode()), "model"
        )
    assert refused.value.description == f"The model {shown} does not exist or is not served here"


repo_ids = st.from_regex(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}/[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True
)


@given(repo_id=repo_ids, extra=st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))
def test_any_object_naming_a_repo_id_gives_that_repo(repo_id, extra):
    document = {**extra, "model": repo_id}
    try:
        repo = from_body().repo(_request_with_body(json.dumps(document).encode()), "model")
    except InvalidBody:
        # Repo ids the Hub refuses (e.g. names ending in ".git") are refused here too.
        return
    assert f"{repo.owner}/{repo.name}" == repo_id


@given(body=st.binary(max_size=200))
def test_any_body_gives_a_repo_or_a_clear_refusal(body):
    source = from_body(served={"m": "acme/m"})
    refused: InvalidBody | UnknownModel | None = None
    try:
        repo = source.repo(_request_with_body(body), "model")
    except (InvalidBody, UnknownModel) as error:
        refused = error
    if refused is None:
        assert (repo.owner, repo.name) == ("acme", "m")
    else:
        assert refused.description  # said to the client
        assert refused.status_code in (400, 404)


async def test_readable_lists_only_what_the_caller_may_read(make, hub_store, callers):
    from hfauth_mw import AccessPolicy, RequestAuth, Visibility
    from hfauth_mw._principal import principal_from_whoami, token_digest

    public = {"acme/public"}
    policy = AccessPolicy(
        visibility=lambda repo: (
            Visibility.PUBLIC if f"{repo.owner}/{repo.name}" in public else Visibility.PRIVATE
        )
    )
    models = ["acme/m", "acme/public", "zoe/own", "other/private"]
    listed = {}
    for caller in ("member", "outsider"):
        answer = hub_store.lookup(token_digest(callers[caller]))
        auth = RequestAuth(principal_from_whoami(answer), policy)
        listed[caller] = [f"{r.owner}/{r.name}" for r in auth.readable(models)]
    assert listed == {"member": ["acme/m", "acme/public"], "outsider": ["acme/public", "zoe/own"]}


def test_fastapi_reads_the_body_for_a_body_rule(hub_store, callers, clock):
    """The adapters whose framework reads the body itself hand it to the rule, capped."""
    from fastapi.testclient import TestClient

    from hfauth_mw.fastapi import RequireToken, install

    app = fastapi.FastAPI()
    authenticator = Authenticator(LocalStoreSource(hub_store), cache=TokenCache(timer=clock))
    install(
        app,
        authenticator=authenticator,
        rules=[require_read(f"POST {CHAT}", repo=from_body("model"))],
        max_body_bytes=1024,
    )

    @app.post(CHAT)
    async def chat(
        request: fastapi.Request,
        auth: RequestAuth = fastapi.Security(RequireToken()),  # noqa: B008
    ) -> dict[str, str]:
        return {"received": (await request.body()).decode(), "caller": auth.principal.name}

    client = TestClient(app)
    ok = client.post(
        CHAT, json={"model": "acme/m"}, headers={"Authorization": f"Bearer {callers['member']}"}
    )
    assert ok.status_code == 200
    assert json.loads(ok.json()["received"]) == {"model": "acme/m"}
    denied = client.post(
        CHAT, json={"model": "acme/m"}, headers={"Authorization": f"Bearer {callers['outsider']}"}
    )
    assert denied.status_code == 403
    too_big = client.post(
        CHAT,
        json={"model": "acme/m", "pad": "x" * 2000},
        headers={"Authorization": f"Bearer {callers['member']}"},
    )
    assert too_big.status_code == 413
