"""The Starlette AuthenticationBackend in a real Starlette app, against the hub
emulator over loopback: optional authentication, routes left to @requires."""

import base64

import httpx
import pytest
from starlette.applications import Starlette
from starlette.authentication import requires
from starlette.middleware import Middleware
from starlette.middleware.authentication import AuthenticationMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from adapters_support import websocket_without_denials
from contract import BODY_RULE_ROWS
from hfauth_mw import (
    AccessPolicy,
    AuthenticationError,
    Authenticator,
    HubWhoamiSource,
    Repo,
    TokenCache,
    Visibility,
    get_request_auth,
    require_write,
)
from hfauth_mw.starlette import HubAuthenticationMiddleware, HubTokenBackend

pytestmark = pytest.mark.anyio

PUBLIC = {Repo.parse("model:acme/public-demo"): Visibility.PUBLIC}
POLICY = AccessPolicy(visibility=lambda repo: PUBLIC.get(repo, Visibility.PRIVATE))
MADE_UP = "hf_" + "Z" * 34


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse(
        {
            "user": request.user.display_name if request.user.is_authenticated else None,
            "scopes": list(request.auth.scopes),
        }
    )


@requires("authenticated")
async def private(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.user.display_name})


@requires("role:write")
async def writers(request: Request) -> JSONResponse:
    return JSONResponse({"user": request.user.display_name})


@requires("authenticated")
async def infer(request: Request) -> JSONResponse:
    owner, name = request.path_params["owner"], request.path_params["name"]
    get_request_auth(request).require(f"model:{owner}/{name}", "read")
    return JSONResponse({"user": request.user.display_name})


async def home(request: Request) -> PlainTextResponse:
    return PlainTextResponse("home")


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    user = websocket.user.display_name if websocket.user.is_authenticated else "anonymous"
    await websocket.send_text(f"hello {user}")
    await websocket.close()


async def chat(request: Request) -> JSONResponse:
    body = await request.json()  # the body reaches the route whole
    user = request.user.display_name if request.user.is_authenticated else None
    return JSONResponse({"user": user, "model": body["model"]})


async def socket_write(websocket: WebSocket) -> None:
    get_request_auth(websocket).require("model:acme/sentiment", "write")
    await websocket.accept()
    await websocket.send_text("written")
    await websocket.close()


ROUTES = [
    Route("/", home),
    Route("/whoami", whoami),
    Route("/private", private),
    Route("/writers", writers),
    Route("/v1/models/{owner}/{name}/infer", infer, methods=["POST"]),
    Route("/v1/models/{owner}/{name}", whoami, methods=["PUT"]),
    WebSocketRoute("/socket", socket),
    WebSocketRoute("/socket-write", socket_write),
    Route("/v1/chat/completions", chat, methods=["POST"]),
]


@pytest.fixture
def authenticator(hub_emulator, clock):
    return Authenticator(
        HubWhoamiSource(hub_emulator.url), cache=TokenCache(timer=clock, clock=clock)
    )


def with_hub_middleware(authenticator: Authenticator, **options) -> Starlette:
    middleware = Middleware(
        HubAuthenticationMiddleware, authenticator=authenticator, policy=POLICY, **options
    )
    return Starlette(routes=ROUTES, middleware=[middleware])


def with_starlettes_middleware(authenticator: Authenticator, **options) -> Starlette:
    backend = HubTokenBackend(authenticator=authenticator, policy=POLICY, **options)
    middleware = Middleware(AuthenticationMiddleware, backend=backend, on_error=backend.on_error)
    return Starlette(
        routes=ROUTES,
        middleware=[middleware],
        exception_handlers={AuthenticationError: backend.exception_handler},
    )


@pytest.fixture(
    params=[
        pytest.param(with_hub_middleware, id="HubAuthenticationMiddleware"),
        pytest.param(with_starlettes_middleware, id="AuthenticationMiddleware"),
    ]
)
async def client(request, authenticator):
    transport = httpx.ASGITransport(request.param(authenticator))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("who", "method", "path", "status", "user"),
    [
        pytest.param(None, "GET", "/whoami", 200, None, id="no-token-anonymous"),
        pytest.param("reader", "GET", "/whoami", 200, "bob", id="token-sets-the-user"),
        pytest.param("bad", "GET", "/whoami", 401, None, id="bad-token-refused"),
        pytest.param(None, "GET", "/private", 403, None, id="requires-no-token"),
        pytest.param("reader", "GET", "/private", 200, "bob", id="requires-token"),
        pytest.param("reader", "GET", "/writers", 403, None, id="requires-role-missing"),
        pytest.param("writer", "GET", "/writers", 200, "alice", id="requires-role"),
        pytest.param("fine", "POST", "/v1/models/acme/sentiment/infer", 200, "carol", id="fine"),
        pytest.param(
            "fine", "POST", "/v1/models/acme/other/infer", 403, None, id="fine-denied-in-route"
        ),
        pytest.param("bad", "GET", "/", 401, None, id="bad-token-refused-everywhere"),
        pytest.param(None, "GET", "/", 200, None, id="no-token-page"),
    ],
)
async def test_optional_authentication(client, tokens, who, method, path, status, user):
    token = MADE_UP if who == "bad" else tokens.get(who)
    response = await client.request(method, path, headers=bearer(token) if token else {})
    assert response.status_code == status, response.text
    if status == 200 and path != "/":
        assert response.json()["user"] == user
    if status == 401:
        assert response.json()["error"] == "invalid_token"
        assert 'error="invalid_token"' in response.headers["www-authenticate"]
    if status == 403 and path.startswith("/v1/"):
        assert response.json()["error"] == "insufficient_scope"


async def test_scopes_for_requires(client, tokens):
    response = await client.get("/whoami", headers=bearer(tokens["writer"]))
    assert response.json()["scopes"][:2] == ["authenticated", "role:write"]
    assert (await client.get("/whoami")).json() == {"user": None, "scopes": []}


@pytest.mark.parametrize(
    ("authorization", "status", "error"),
    [
        pytest.param("Token abc", 400, "invalid_request", id="unknown-scheme"),
        pytest.param("Basic %%%", 400, "invalid_request", id="bad-basic"),
    ],
)
async def test_malformed_credentials(client, authorization, status, error):
    response = await client.get("/whoami", headers={"Authorization": authorization})
    assert response.status_code == status
    assert response.json()["error"] == error


async def test_basic_with_the_token_as_password(client, tokens):
    encoded = base64.b64encode(f"hf_user:{tokens['reader']}".encode()).decode()
    response = await client.get("/private", headers={"Authorization": f"Basic {encoded}"})
    assert response.json() == {"user": "bob"}


async def test_hub_down_is_503(client, hub_emulator, tokens):
    hub_emulator.stop()
    response = await client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.status_code == 503
    assert response.headers["retry-after"].isdigit()


async def test_the_hub_middleware_marks_token_answers_private(authenticator, tokens):
    transport = httpx.ASGITransport(with_hub_middleware(authenticator))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        marked = await client.get("/whoami", headers=bearer(tokens["reader"]))
        anonymous = await client.get("/whoami")
    assert marked.headers["cache-control"] == "private"
    assert "Authorization" in marked.headers["vary"]
    assert "cache-control" not in anonymous.headers


async def test_rules_apply_to_token_requests(authenticator, tokens):
    app = with_hub_middleware(authenticator, rules=[require_write("PUT /v1/models/{owner}/{name}")])
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        denied = await client.put("/v1/models/acme/sentiment", headers=bearer(tokens["reader"]))
        allowed = await client.put("/v1/models/acme/sentiment", headers=bearer(tokens["writer"]))
    assert denied.status_code == 403
    assert denied.json()["scope"] == "repo.write"
    assert allowed.status_code == 200


@pytest.mark.parametrize(
    "build", [pytest.param(with_hub_middleware), pytest.param(with_starlettes_middleware)]
)
def test_websocket(authenticator, tokens, build):
    client = TestClient(build(authenticator))
    with client.websocket_connect("/socket", headers=bearer(tokens["reader"])) as websocket:
        assert websocket.receive_text() == "hello bob"
    with client.websocket_connect("/socket") as websocket:
        assert websocket.receive_text() == "hello anonymous"
    with (
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect("/socket", headers=bearer(MADE_UP)) as websocket,
    ):
        websocket.receive_text()


@pytest.mark.parametrize(
    ("path", "who", "status", "error"),
    [
        pytest.param("/socket", "made-up", 401, "invalid_token", id="unknown-token"),
        pytest.param("/socket", "malformed", 400, "invalid_request", id="malformed"),
        pytest.param("/socket-write", "reader", 403, "insufficient_scope", id="route-denial"),
    ],
)
def test_hub_middleware_refuses_a_websocket_with_the_http_denial(
    authenticator, tokens, path, who, status, error
):
    """Not Starlette's close with 1000, a normal closure: the RFC 6750 denial on
    the handshake, as HFAuthMiddleware answers it."""
    from starlette.testclient import WebSocketDenialResponse

    headers = {
        "made-up": bearer(MADE_UP),
        "malformed": {"Authorization": "Bearer a b"},
        "reader": bearer(tokens["reader"]),
    }[who]
    client = TestClient(with_hub_middleware(authenticator))
    with (
        pytest.raises(WebSocketDenialResponse) as denied,
        client.websocket_connect(path, headers=headers),
    ):
        pass
    assert denied.value.status_code == status
    assert f'error="{error}"' in denied.value.headers["www-authenticate"]


async def test_hub_middleware_closes_a_refused_websocket_with_1008_without_denials(
    authenticator,
):
    """A server without the denial-response extension: closed as a policy violation."""
    headers = [(b"authorization", f"Bearer {MADE_UP}".encode())]
    sent = await websocket_without_denials(with_hub_middleware(authenticator), "/socket", headers)
    assert [(m["type"], m.get("code")) for m in sent] == [("websocket.close", 1008)]


@pytest.mark.parametrize(
    ("who", "model", "status"),
    [
        *BODY_RULE_ROWS,
        pytest.param(None, "acme/sentiment", 200, id="anonymous-not-read"),
    ],
)
async def test_hub_middleware_reads_the_body_for_a_body_rule(
    authenticator, tokens, who, model, status
):
    """Starlette hands its backend no body: HubAuthenticationMiddleware reads it
    first (capped), for a request with a token, and replays it to the route."""
    from hfauth_mw import openai_rules

    app = with_hub_middleware(authenticator, rules=openai_rules(), max_body_bytes=1024)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": model},
            headers=bearer(tokens[who]) if who else {},
        )
    assert response.status_code == status, response.text
    if status == 200:
        assert response.json() == {"user": "bob" if who else None, "model": model}


def test_the_backend_in_starlettes_middleware_says_a_body_rule_needs_ours(authenticator, tokens):
    from hfauth_mw import openai_rules

    app = with_starlettes_middleware(authenticator, rules=openai_rules())
    client = TestClient(app)
    with pytest.raises(RuntimeError, match="use HubAuthenticationMiddleware"):
        client.post(
            "/v1/chat/completions",
            json={"model": "acme/sentiment"},
            headers=bearer(tokens["reader"]),
        )


def test_backend_or_options_not_both(authenticator):
    with pytest.raises(TypeError):
        HubAuthenticationMiddleware(
            Starlette(), backend=HubTokenBackend(authenticator=authenticator), realm="x"
        )


def test_another_backends_error_keeps_starlettes_answer(authenticator):
    from starlette.authentication import AuthenticationError as StarletteError

    backend = HubTokenBackend(authenticator=authenticator)
    response = backend.on_error(None, StarletteError("nope"))  # type: ignore[arg-type]
    assert (response.status_code, response.body) == (400, b"nope")


async def test_malformed_credentials_count_as_failures(authenticator, tokens, clock):
    """Refused before any lookup, but counted by the brute-force guard and audited."""
    from hfauth_mw import FailureLimiter

    limiter = FailureLimiter(max_failures=2, timer=clock)
    transport = httpx.ASGITransport(with_hub_middleware(authenticator, limiter=limiter))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for _ in range(2):
            assert (
                await client.get("/whoami", headers={"Authorization": "Token x"})
            ).status_code == 400
        locked = await client.get("/whoami", headers=bearer(tokens["reader"]))
    assert locked.status_code == 429
