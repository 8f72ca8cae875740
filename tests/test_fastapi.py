"""FastAPI security dependencies in a real FastAPI app, against the hub emulator over
loopback, with and without the ASGI middleware."""

import base64
import importlib.util
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import httpx
import pytest
from fastapi import APIRouter, FastAPI, Request, Security
from starlette.testclient import TestClient

from contract import ADAPTER_ACCESS_ROWS
from hfauth_mw import (
    AccessPolicy,
    Authenticator,
    ConfigurationError,
    FailureLimiter,
    HFAuthMiddleware,
    HubWhoamiSource,
    Repo,
    RequestAuth,
    TokenCache,
    Visibility,
)
from hfauth_mw.fastapi import (
    OptionalToken,
    RequirePermission,
    RequireRepo,
    RequireToken,
    docs_paths,
    install,
)

pytestmark = pytest.mark.anyio

PUBLIC = {Repo.parse("model:acme/public-demo"): Visibility.PUBLIC}
POLICY = AccessPolicy(visibility=lambda repo: PUBLIC.get(repo, Visibility.PRIVATE))


Caller = Annotated[RequestAuth, Security(RequireToken())]
CanRead = Annotated[RequestAuth, Security(RequireRepo("read"))]
CanWrite = Annotated[RequestAuth, Security(RequireRepo("write"))]
CanReadDataset = Annotated[
    RequestAuth,
    Security(RequireRepo("read", repo_type="dataset", owner_param="org", name_param="ds")),
]


def create_app() -> FastAPI:
    """A toy model server: read to infer, write to replace the weights."""
    app = FastAPI()

    @app.get("/health")
    async def health() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/whoami")
    async def whoami(auth: Caller) -> dict[str, str | None]:
        return {"user": auth.principal.name, "scheme": auth.scheme}

    @app.post("/v1/models/{owner}/{name}/infer")
    async def infer(owner: str, name: str, auth: CanRead) -> dict[str, str]:
        return {"model": f"{owner}/{name}", "by": auth.principal.name}

    @app.put("/v1/models/{owner}/{name}")
    async def upload(owner: str, name: str, auth: CanWrite) -> dict[str, object]:
        return {"model": f"{owner}/{name}", "revision": 1}

    @app.get("/v1/datasets/{org}/{ds}")
    def dataset(org: str, ds: str, auth: CanReadDataset) -> dict[str, str]:
        return {"dataset": f"{org}/{ds}"}

    @app.post(
        "/v1/models/{owner}/{name}/serverless",
        dependencies=[
            Security(RequireRepo("read")),
            Security(RequirePermission("inference.endpoints.infer.write")),
        ],
    )
    async def serverless(owner: str, name: str) -> dict[str, bool]:
        return {"ok": True}

    @app.get("/route-check")
    async def route_check(auth: Caller) -> dict[str, bool]:
        auth.require("model:acme/sentiment", "write")
        return {"ok": True}

    return app


@pytest.fixture
def new_authenticator(hub_emulator, clock):
    def make(**cache_options) -> Authenticator:
        cache = TokenCache(timer=clock, clock=clock, **cache_options)
        return Authenticator(HubWhoamiSource(hub_emulator.url), cache=cache)

    return make


@pytest.fixture
def make_app(new_authenticator):
    def make(middleware: bool = False, cache_ttl: float = 60, **options) -> FastAPI:
        app = create_app()
        cache = {"ttl": cache_ttl, "negative_ttl": min(cache_ttl, 10)}
        options.setdefault("authenticator", new_authenticator(**cache))
        install(app, policy=POLICY, **options)
        if middleware:
            app.add_middleware(
                HFAuthMiddleware,
                authenticator=new_authenticator(**cache),
                public_paths=["/health"],
                policy=POLICY,
                method_policy=False,
            )
        return app

    return make


@pytest.fixture(params=[pytest.param(False, id="alone"), pytest.param(True, id="with-middleware")])
async def client(request, make_app):
    transport = httpx.ASGITransport(make_app(middleware=request.param))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"hf_user:{token}".encode()).decode()}


async def test_no_token_gets_challenge(client):
    response = await client.get("/whoami")
    assert response.status_code == 401
    assert response.headers.get_list("www-authenticate") == [
        'Bearer realm="hfauth-mw"',
        'Basic realm="hfauth-mw"',
    ]
    assert response.json() == {
        "error": "unauthorized",
        "error_description": "Authentication required",
    }


@pytest.mark.parametrize(
    ("who", "method", "path", "status", "error"),
    [
        *ADAPTER_ACCESS_ROWS,
        pytest.param("reader", "GET", "/v1/datasets/acme/corpus", 200, None, id="dataset-params"),
        pytest.param(
            "serverless",
            "POST",
            "/v1/models/acme/sentiment/serverless",
            200,
            None,
            id="repo-and-permission",
        ),
        pytest.param(
            "reader",
            "POST",
            "/v1/models/acme/sentiment/serverless",
            403,
            "insufficient_scope",
            id="no-permission",
        ),
        pytest.param(
            "reader", "GET", "/route-check", 403, "insufficient_scope", id="raised-in-route"
        ),
    ],
)
async def test_access_rules_enforced(client, tokens, who, method, path, status, error):
    response = await client.request(method, path, headers=bearer(tokens[who]))
    assert response.status_code == status, response.text
    if error:
        body = response.json()
        assert set(body) == {"error", "error_description", "scope"}  # no FastAPI "detail"
        assert body["error"] == error
        assert f'scope="{body["scope"]}"' in response.headers["www-authenticate"]


async def test_basic_password_works(client, tokens):
    response = await client.put("/v1/models/acme/sentiment", headers=basic(tokens["writer"]))
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("authorization", "status", "error"),
    [
        pytest.param("Basic %%%", 400, "invalid_request", id="bad-basic-not-fastapi-401"),
        pytest.param("Token abc", 400, "invalid_request", id="unknown-scheme"),
        pytest.param("Bearer hf_" + "Z" * 34, 401, "invalid_token", id="made-up"),
    ],
)
async def test_bad_credentials(client, authorization, status, error):
    response = await client.get("/whoami", headers={"Authorization": authorization})
    assert response.status_code == status
    assert response.json()["error"] == error


@pytest.mark.parametrize(
    "down",
    [
        pytest.param(lambda hub: hub.fail_next(503, headers={"Retry-After": "9"}), id="503"),
        pytest.param(lambda hub: hub.stop(), id="stopped"),
    ],
)
async def test_hub_down_is_503_with_retry_after(client, hub_emulator, tokens, down):
    down(hub_emulator)
    response = await client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"] == "temporarily_unavailable"


async def test_authenticated_responses_are_private(client, tokens):
    response = await client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.headers["cache-control"] == "private"
    assert "Authorization" in response.headers["vary"]


@pytest.mark.parametrize(
    ("middleware", "path"),
    [
        pytest.param(False, "/v1/models/acme/sentiment/serverless", id="alone-two-dependencies"),
        pytest.param(True, "/v1/models/acme/sentiment/serverless", id="middleware-then-deps"),
    ],
)
async def test_never_two_introspections_per_request(
    make_app, hub_emulator, tokens, middleware, path
):
    # No caching anywhere (ttl 0), and the middleware and the dependencies have
    # separate authenticators: any second introspection would reach the hub.
    app = make_app(middleware=middleware, cache_ttl=0)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post(path, headers=bearer(tokens["serverless"]))
        assert response.status_code == 200
        assert hub_emulator.whoami_calls == 1
        await client.post(path, headers=bearer(tokens["serverless"]))
        assert hub_emulator.whoami_calls == 2


async def test_public_route_needs_no_introspection(make_app, hub_emulator):
    app = make_app(middleware=True)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/health")).status_code == 200
        assert hub_emulator.whoami_calls == 0


def test_openapi_lists_schemes_and_per_route_requirements(make_app):
    document = TestClient(make_app()).get("/openapi.json").json()
    assert document["components"]["securitySchemes"] == {
        "HuggingFaceToken": {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "Hugging Face access token (hf_...)",
            "description": "A Hugging Face access token: `Authorization: Bearer hf_...`",
        },
        "HuggingFaceBasic": {
            "type": "http",
            "scheme": "basic",
            "description": "Any user name, and a Hugging Face access token as the password",
        },
    }
    paths = document["paths"]

    def security(path: str, method: str) -> list[dict[str, list[str]]] | None:
        return paths[path][method].get("security")

    assert security("/health", "get") is None
    assert security("/whoami", "get") == [{"HuggingFaceToken": []}, {"HuggingFaceBasic": []}]
    read = ["repo.content.read"]
    assert security("/v1/models/{owner}/{name}/infer", "post") == [
        {"HuggingFaceToken": read},
        {"HuggingFaceBasic": read},
    ]
    assert security("/v1/models/{owner}/{name}", "put") == [
        {"HuggingFaceToken": ["repo.write"]},
        {"HuggingFaceBasic": ["repo.write"]},
    ]
    both = ["repo.content.read", "inference.endpoints.infer.write"]
    assert security("/v1/models/{owner}/{name}/serverless", "post") == [
        {"HuggingFaceToken": both},
        {"HuggingFaceBasic": both},
    ]
    # The scheme parameters are not leaked as query or header parameters.
    parameters = paths["/v1/models/{owner}/{name}/infer"]["post"]["parameters"]
    assert {p["name"] for p in parameters} == {"owner", "name"}


def test_openapi_leaves_basic_out_when_basic_is_off(make_app):
    """Swagger must not offer a scheme the server refuses."""
    client = TestClient(make_app(allow_basic=False))
    for _ in range(2):  # built once, served again from FastAPI's copy
        document = client.get("/openapi.json").json()
        assert list(document["components"]["securitySchemes"]) == ["HuggingFaceToken"]
        infer = document["paths"]["/v1/models/{owner}/{name}/infer"]["post"]
        assert infer["security"] == [{"HuggingFaceToken": ["repo.content.read"]}]


def test_swagger_ui_is_served(make_app):
    assert "swagger-ui" in TestClient(make_app()).get("/docs").text


def test_without_install_is_a_clear_error(tokens):
    client = TestClient(create_app())
    with pytest.raises(ConfigurationError, match=r"install\(app"):
        client.get("/whoami", headers=bearer(tokens["reader"]))


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        pytest.param(("admin",), {}, id="bad-access"),
        pytest.param(("read",), {"repo_type": "models"}, id="bad-repo-type"),
    ],
)
def test_bad_dependency_arguments(args, kwargs):
    with pytest.raises(ConfigurationError):
        RequireRepo(*args, **kwargs)


def test_bad_install_options_fail_at_startup():
    with pytest.raises(ConfigurationError):
        install(FastAPI(), hub_url="http://hub.example")


# --- the example ----------------------------------------------------------------------------


def load_example(name: str):
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"hfauth_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("who", "method", "path", "status"),
    [
        pytest.param(None, "GET", "/health", 200, id="health"),
        pytest.param(None, "GET", "/openapi.json", 200, id="openapi-public"),
        pytest.param(None, "POST", "/v1/models/acme/sentiment/infer", 401, id="no-token"),
        pytest.param("reader", "POST", "/v1/models/acme/sentiment/infer", 200, id="read"),
        pytest.param("reader", "PUT", "/v1/models/acme/sentiment", 403, id="read-cannot-write"),
        pytest.param("writer", "PUT", "/v1/models/acme/sentiment", 200, id="write"),
    ],
)
async def test_example_app(hub_emulator, tokens, who, method, path, status):
    app = load_example("fastapi_app").create_app(HubWhoamiSource(hub_emulator.url))
    headers = bearer(tokens[who]) if who else {}
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.request(method, path, headers=headers, json={"inputs": "a b"})
    assert response.status_code == status
    assert hub_emulator.whoami_calls == (1 if who else 0)


async def test_anonymous_middleware_does_not_open_token_routes(new_authenticator):
    app = create_app()
    install(app, policy=POLICY, authenticator=new_authenticator())
    app.add_middleware(
        HFAuthMiddleware,
        authenticator=new_authenticator(),
        allow_anonymous=True,
        method_policy=False,
    )
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        response = await client.get("/whoami")
    assert response.status_code == 401
    assert response.json()["error"] == "unauthorized"


async def test_the_brute_force_guard_reads_every_forwarded_line(make_app, tokens, clock):
    """Without the middleware too: the first X-Forwarded-For line is the client's own,
    which it can make up at every try; the client is the last untrusted hop."""
    limiter = FailureLimiter(max_failures=2, trusted_proxies=["127.0.0.1", "10.0.0.1"], timer=clock)
    transport = httpx.ASGITransport(make_app(limiter=limiter), client=("127.0.0.1", 5000))

    def via_proxies(claimed: str, real: str, token: str) -> list[tuple[str, str]]:
        # What the client wrote, then the line each trusted proxy added.
        return [
            ("Authorization", f"Bearer {token}"),
            ("X-Forwarded-For", claimed),
            ("X-Forwarded-For", f"{real}, 10.0.0.1"),
        ]

    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for attempt in range(2):
            bad = via_proxies(f"192.0.2.{attempt}", "198.51.100.1", "hf_" + "w" * 34)
            await client.get("/whoami", headers=bad)
        locked = await client.get(
            "/whoami", headers=via_proxies("192.0.2.9", "198.51.100.1", tokens["reader"])
        )
        other = await client.get(
            "/whoami", headers=via_proxies("192.0.2.9", "198.51.100.2", tokens["reader"])
        )

    assert (locked.status_code, other.status_code) == (429, 200)


def test_a_denial_in_an_accepted_websocket_closes_it_with_1008(make_app, tokens):
    """install() registers the app's handler for denials; on an accepted
    WebSocket it must close with 1008, not send an HTTP response the server
    refuses there (uvicorn drops the connection with a traceback)."""
    from fastapi import WebSocket
    from starlette.websockets import WebSocketDisconnect

    from hfauth_mw import get_request_auth

    app = make_app(middleware=True)

    @app.websocket("/v1/models/{owner}/{name}/live")
    async def live(websocket: WebSocket, owner: str, name: str) -> None:
        await websocket.accept()
        get_request_auth(websocket).require(f"model:{owner}/{name}", "write")
        await websocket.send_text("may write")
        await websocket.close()

    client = TestClient(app)
    url = "/v1/models/acme/sentiment/live"
    with (
        client.websocket_connect(url, headers=bearer(tokens["reader"])) as websocket,
        pytest.raises(WebSocketDisconnect) as closed,
    ):
        websocket.receive_text()
    assert (closed.value.code, closed.value.reason) == (1008, "insufficient_scope")
    with client.websocket_connect(url, headers=bearer(tokens["writer"])) as websocket:
        assert websocket.receive_text() == "may write"


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v1/models/acme/sentiment/infer", id="RequireRepo"),
        pytest.param("/route-check", id="auth-require-in-the-route"),
    ],
)
@pytest.mark.parametrize("middleware", [False, True], ids=["alone", "with-middleware"])
async def test_a_failing_policy_callback_is_503_with_retry_after(
    new_authenticator, tokens, path, middleware
):
    """The server cannot tell whether the repo is public, or who created it:
    trouble on our side, answered as the middleware's own rules answer it,
    never a 500."""

    def cannot_tell(*args: object) -> Visibility:
        raise ConnectionError("the catalogue database is down")

    policy = AccessPolicy(visibility=cannot_tell, caller_created=cannot_tell)
    app = create_app()
    # The local rules' callbacks failing: with the hub deciding, they are not asked.
    install(app, policy=policy, authenticator=new_authenticator(), authority="local")
    if middleware:
        app.add_middleware(
            HFAuthMiddleware,
            authenticator=new_authenticator(),
            policy=policy,
            method_policy=False,
            authority="local",
        )
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        method = client.post if path.endswith("/infer") else client.get
        response = await method(path, headers=bearer(tokens["reader"]))

    assert response.status_code == 503, response.text
    assert response.headers["retry-after"].isdigit()
    assert response.json()["error"] == "temporarily_unavailable"


@pytest.mark.parametrize(
    ("path", "requirement", "starts"),
    [
        pytest.param("/v1/models/{owner}/{name}", RequireRepo("read"), True, id="matching"),
        pytest.param("/v1/models/{org}/{model}", RequireRepo("read"), False, id="other-names"),
        pytest.param(
            "/v1/models/{org}/{model}",
            RequireRepo("read", owner_param="org", name_param="model"),
            True,
            id="named-to-match",
        ),
    ],
)
def test_a_repo_requirement_naming_a_missing_path_parameter_stops_start_up(
    new_authenticator, path, requirement, starts
):
    """Checked when the app starts (its lifespan), routes declared after
    install() included: not a 500 on every request."""
    app = FastAPI()
    install(app, authenticator=new_authenticator())

    @app.get(path, dependencies=[Security(requirement)])
    async def card() -> dict[str, bool]:
        return {"ok": True}

    if starts:
        with TestClient(app) as client:
            assert client.get("/health").status_code == 404  # it serves
        return
    with pytest.raises(ConfigurationError, match="does not have") as caught, TestClient(app):
        pass
    assert "route /v1/models/{org}/{model}" in str(caught.value)


def test_install_keeps_the_apps_own_lifespan(new_authenticator):
    from contextlib import asynccontextmanager

    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        events.append("start")
        yield {"model": "loaded"}
        events.append("stop")

    app = FastAPI(lifespan=lifespan)
    install(app, authenticator=new_authenticator())

    @app.get("/model")
    async def model(request: Request) -> dict[str, str]:
        return {"model": request.state.model}

    with TestClient(app) as client:
        assert client.get("/model").json() == {"model": "loaded"}
    assert events == ["start", "stop"]


# --- FastAPI's own pages, optional authentication, path options (issue 19) -----------------

DOCS = ["/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"]


@pytest.mark.parametrize("order", ["install-first", "middleware-first"])
@pytest.mark.parametrize("path", DOCS)
async def test_install_makes_the_docs_public_for_the_middleware(
    new_authenticator, hub_emulator, order, path
):
    app = create_app()
    middleware = {"authenticator": new_authenticator(), "public_paths": ["/health"]}
    if order == "middleware-first":
        app.add_middleware(HFAuthMiddleware, **middleware)
    install(app, authenticator=new_authenticator())
    if order == "install-first":
        app.add_middleware(HFAuthMiddleware, **middleware)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(path)
        guarded = await client.get("/whoami")
    assert response.status_code == 200, response.text
    assert guarded.status_code == 401  # the rest stays guarded
    assert hub_emulator.whoami_calls == 0


@pytest.mark.parametrize(
    ("who", "marked"),
    [
        pytest.param("reader", True, id="token-checked-by-the-route"),
        pytest.param(None, False, id="anonymous"),
    ],
)
@pytest.mark.parametrize("answer", ["response-object", "returned-value"])
async def test_a_public_path_checked_by_the_route_is_marked_private(
    new_authenticator, tokens, who, marked, answer
):
    """On a public path the middleware checks nothing, but a route that checks a
    token itself (RequireToken) answers that caller: marked private, once."""
    from fastapi.responses import PlainTextResponse

    app = FastAPI()
    install(app, authenticator=new_authenticator(), allow_anonymous=True)
    app.add_middleware(
        HFAuthMiddleware, authenticator=new_authenticator(), public_paths=["/open/*"]
    )

    @app.get("/open/response-object")
    async def response_object(auth: Caller) -> PlainTextResponse:
        return PlainTextResponse(f"for {auth.principal.name}")

    @app.get("/open/returned-value")
    async def returned_value(auth: Caller) -> str:
        return f"for {auth.principal.name}"

    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(f"/open/{answer}", headers=bearer(tokens[who]) if who else {})
    assert response.status_code == 200
    assert response.headers.get_list("vary") == (["Authorization"] if marked else [])
    assert response.headers.get("cache-control") == ("private" if marked else None)


async def test_docs_stay_guarded_when_told(new_authenticator):
    app = create_app()
    install(app, authenticator=new_authenticator(), docs_public=False)
    app.add_middleware(HFAuthMiddleware, authenticator=new_authenticator())
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path in DOCS:
            assert (await client.get(path)).status_code == 401


def test_docs_paths_follow_the_apps_settings():
    assert docs_paths(FastAPI()) == DOCS
    custom = FastAPI(docs_url="/api/docs", redoc_url=None, openapi_url="/api/openapi.json")
    assert docs_paths(custom) == ["/api/docs", "/api/openapi.json", "/docs/oauth2-redirect"]
    assert docs_paths(FastAPI(openapi_url=None, docs_url=None, redoc_url=None)) == []


async def test_a_middleware_with_protected_paths_is_left_alone(new_authenticator, tokens):
    app = create_app()
    install(app, authenticator=new_authenticator())
    app.add_middleware(
        HFAuthMiddleware,
        authenticator=new_authenticator(),
        protected_paths=["/v1/*"],
        method_policy=False,
    )
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/docs")).status_code == 200
        assert (await client.get("/health")).status_code == 200
        refused = await client.post("/v1/models/acme/sentiment/infer")
        assert refused.status_code == 401
        allowed = await client.post(
            "/v1/models/acme/sentiment/infer", headers=bearer(tokens["reader"])
        )
        assert allowed.json()["by"] == "bob"


def optional_app() -> FastAPI:
    app = create_app()

    @app.get("/v1/models")
    async def models(auth: Annotated[RequestAuth, Security(OptionalToken())]) -> dict[str, object]:
        principal = auth.principal
        return {"user": None if principal.is_anonymous else principal.name}

    return app


@pytest.mark.parametrize("middleware", [False, True], ids=["alone", "with-middleware"])
@pytest.mark.parametrize(
    ("who", "status", "user"),
    [
        pytest.param(None, 200, None, id="no-token"),
        pytest.param("reader", 200, "bob", id="token"),
        pytest.param("bad", 401, None, id="bad-token"),
    ],
)
async def test_optional_token(new_authenticator, tokens, middleware, who, status, user):
    app = optional_app()
    install(app, authenticator=new_authenticator())
    if middleware:
        app.add_middleware(
            HFAuthMiddleware, authenticator=new_authenticator(), optional_paths=["/v1/models"]
        )
    token = "hf_" + "Z" * 34 if who == "bad" else tokens.get(who)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/v1/models", headers=bearer(token) if token else {})
    assert response.status_code == status
    if status == 200:
        assert response.json() == {"user": user}
    else:
        assert response.json()["error"] == "invalid_token"


async def test_a_token_route_on_an_optional_path_still_needs_a_token(new_authenticator):
    app = create_app()
    install(app, authenticator=new_authenticator())
    app.add_middleware(HFAuthMiddleware, authenticator=new_authenticator(), optional_paths=["/*"])
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/whoami")
    assert response.status_code == 401


# --- without install(): start-up stops (issue 19) ------------------------------------------


def on_app(app: FastAPI, dependency: RequireToken) -> None:
    @app.get("/v1/models/{owner}/{name}", dependencies=[Security(dependency)])
    async def card(owner: str, name: str) -> dict[str, bool]:
        return {"ok": True}


def as_parameter(app: FastAPI, dependency: RequireToken) -> None:
    @app.get("/v1/models/{owner}/{name}")
    async def card(
        owner: str, name: str, auth: Annotated[RequestAuth, Security(dependency)]
    ) -> dict[str, bool]:
        return {"ok": True}


def in_a_users_dependency(app: FastAPI, dependency: RequireToken) -> None:
    async def caller(auth: Annotated[RequestAuth, Security(dependency)]) -> str:
        return auth.principal.name or ""

    @app.get("/v1/models/{owner}/{name}")
    async def card(owner: str, name: str, who: Annotated[str, Security(caller)]) -> str:
        return who


def on_an_included_router(app: FastAPI, dependency: RequireToken) -> None:
    router = APIRouter()

    @router.get("/{owner}/{name}", dependencies=[Security(dependency)])
    async def card(owner: str, name: str) -> dict[str, bool]:
        return {"ok": True}

    app.include_router(router, prefix="/v1/models")


def on_a_router_included_twice_over(app: FastAPI, dependency: RequireToken) -> None:
    inner, outer = APIRouter(), APIRouter()

    @inner.get("/{owner}/{name}", dependencies=[Security(dependency)])
    async def card(owner: str, name: str) -> dict[str, bool]:
        return {"ok": True}

    outer.include_router(inner, prefix="/models")
    app.include_router(outer, prefix="/v1")


PLACES = [
    pytest.param(on_app, id="route-dependencies"),
    pytest.param(as_parameter, id="parameter"),
    pytest.param(in_a_users_dependency, id="sub-dependency"),
    pytest.param(on_an_included_router, id="include_router"),
    pytest.param(on_a_router_included_twice_over, id="nested-include_router"),
]
DEPENDENCIES = [
    pytest.param(lambda: RequireRepo("read"), "RequireRepo", id="RequireRepo"),
    pytest.param(lambda: RequireToken(), "RequireToken", id="RequireToken"),
    pytest.param(lambda: RequirePermission("repo.write"), "RequirePermission", id="Permission"),
    pytest.param(lambda: OptionalToken(), "OptionalToken", id="OptionalToken"),
]


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize(("dependency", "name"), DEPENDENCIES)
def test_without_install_start_up_stops(place, dependency, name):
    app = FastAPI()
    place(app, dependency())
    with (
        pytest.raises(ConfigurationError, match=r"install\(app, \.\.\.\)") as caught,
        TestClient(app),
    ):
        pass
    assert f"the route /v1/models/{{owner}}/{{name}} ({name}) use" in str(caught.value)


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize(
    "order", ["install-first", "install-last", "middleware-too"], ids=lambda order: order
)
def test_installed_apps_start_and_serve(new_authenticator, tokens, place, order):
    """The start-up check never stops an app with install(), before or after its
    routes, whatever the routes' place; the routes then serve."""
    app = FastAPI()
    if order != "install-last":
        install(app, authenticator=new_authenticator())
    place(app, RequireRepo("read"))
    if order == "install-last":
        install(app, authenticator=new_authenticator())
    if order == "middleware-too":
        app.add_middleware(HFAuthMiddleware, authenticator=new_authenticator())
    with TestClient(app) as client:
        refused = client.get("/v1/models/acme/sentiment")
        allowed = client.get("/v1/models/acme/sentiment", headers=bearer(tokens["reader"]))
    assert refused.status_code == 401
    assert allowed.status_code == 200, allowed.text


@pytest.mark.parametrize("installed", [True, False], ids=["installed", "not-installed"])
def test_the_apps_own_lifespan_runs_once_and_only_when_set_up(new_authenticator, installed):
    events: list[str] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, str]]:
        events.append("start")
        yield {"model": "loaded"}
        events.append("stop")

    app = FastAPI(lifespan=lifespan)
    if installed:
        install(app, authenticator=new_authenticator())

    @app.get("/model")
    async def model(request: Request, auth: Caller) -> dict[str, str]:
        return {"model": request.state.model}

    @app.get("/whoami")
    async def whoami(auth: Caller) -> dict[str, str]:
        return {"user": auth.principal.name or ""}

    if not installed:
        with pytest.raises(ConfigurationError, match=r"/model .*/whoami"), TestClient(app):
            pass
        assert events == []  # stopped before the app's own start-up ran
        return
    with TestClient(app) as client:
        assert client.get("/model").status_code == 401
    assert events == ["start", "stop"]


def test_the_middleware_alone_is_not_enough(new_authenticator):
    """HFAuthMiddleware without install() does not make the dependencies work
    (they take their options from install()): start-up says so."""
    app = create_app()
    app.add_middleware(HFAuthMiddleware, authenticator=new_authenticator())
    with (
        pytest.raises(ConfigurationError, match="HFAuthMiddleware alone is not enough"),
        TestClient(app),
    ):
        pass


def test_a_route_added_after_its_router_was_included_is_caught_at_its_first_request(tokens):
    """What the start-up check cannot see (FastAPI 0.16x serves routes added to a
    router after it was included, but no longer merges its lifespan) is the
    same ConfigurationError at the route's first request, never a silent pass."""
    app = FastAPI()
    router = APIRouter()
    app.include_router(router, prefix="/late")

    @router.get("/whoami")
    async def whoami(auth: Caller) -> dict[str, str]:
        return {"user": auth.principal.name or ""}

    with TestClient(app) as client:
        if app.router.routes[-1].__class__.__name__ != "_IncludedRouter":
            pytest.skip("this FastAPI copies included routes: nothing is added late")
        with pytest.raises(ConfigurationError, match=r"/late/whoami .*install\(app"):
            client.get("/late/whoami", headers=bearer(tokens["reader"]))


def test_the_first_request_error_masks_a_token_in_the_path(tokens, client_logs_urls_with_tokens):
    """The error goes to the server's logs: a token the client pasted into the
    path is masked there, as in the audit log."""
    app = FastAPI()
    router = APIRouter()
    app.include_router(router)
    pasted = tokens["reader"]

    @router.get("/echo/{text}")
    async def echo(text: str, auth: Caller) -> dict[str, str]:
        return {"text": text}

    with TestClient(app) as client:
        if app.router.routes[-1].__class__.__name__ != "_IncludedRouter":
            pytest.skip("this FastAPI copies included routes: nothing is added late")
        with pytest.raises(ConfigurationError) as raised:
            client.get(f"/echo/{pasted}", headers=bearer(tokens["reader"]))
    assert "/echo/" in str(raised.value)
    assert pasted not in str(raised.value)


def test_a_mounted_sub_app_without_install_does_not_stop_the_installed_app(
    new_authenticator, tokens
):
    """Only the app whose lifespan runs is checked: a mounted FastAPI app gets no
    lifespan, so its missing install() is its first request's error."""
    app = FastAPI()
    install(app, authenticator=new_authenticator())
    sub = create_app()
    app.mount("/sub", sub)
    with TestClient(app) as client, pytest.raises(ConfigurationError, match=r"install\(app"):
        client.get("/sub/whoami", headers=bearer(tokens["reader"]))


def test_more_routes_on_a_router_add_no_second_check():
    app = FastAPI()
    on_app(app, RequireRepo("read"))
    checked = app.router.lifespan_context

    @app.get("/whoami")
    async def whoami(auth: Caller) -> dict[str, str]:
        return {"user": auth.principal.name or ""}

    assert app.router.lifespan_context is checked


def test_install_checks_repo_parameters_of_included_routers(new_authenticator):
    """FastAPI 0.16x keeps an included router as one entry of app.routes: its
    routes' RequireRepo path parameters are checked at start-up all the same."""
    app = FastAPI()
    install(app, authenticator=new_authenticator())
    router = APIRouter()

    @router.get("/{org}/{model}", dependencies=[Security(RequireRepo("read"))])
    async def card(org: str, model: str) -> dict[str, bool]:
        return {"ok": True}

    app.include_router(router, prefix="/v1/models")
    with pytest.raises(ConfigurationError, match="does not have") as caught, TestClient(app):
        pass
    assert "route /v1/models/{org}/{model}" in str(caught.value)


NOT_INSTALLED_APP = """
from fastapi import FastAPI, Security
from hfauth_mw.fastapi import RequireRepo

app = FastAPI()


@app.get("/v1/models/{owner}/{name}", dependencies=[Security(RequireRepo("read"))])
async def card(owner: str, name: str) -> dict[str, bool]:
    return {"ok": True}
"""


def test_uvicorn_refuses_to_start_an_app_without_install(tmp_path):
    (tmp_path / "not_installed.py").write_text(NOT_INSTALLED_APP)
    command = [sys.executable, "-m", "uvicorn", "--app-dir", str(tmp_path)]
    command += ["--host", "127.0.0.1", "--port", "0", "not_installed:app"]
    # Before, the server started and served: the timeout is what fails then.
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 3  # uvicorn's STARTUP_FAILURE
    assert "Application startup failed" in done.stderr
    assert "ConfigurationError" in done.stderr
    assert "/v1/models/{owner}/{name} (RequireRepo)" in done.stderr
    assert "install(app, ...)" in done.stderr
