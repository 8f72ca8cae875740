"""The ASGI middleware's path options in a real Starlette app, against the hub
emulator over loopback: optional_paths and protected_paths (issue 19)."""

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from hfauth_mw import (
    AccessPolicy,
    Authenticator,
    ConfigurationError,
    HFAuthMiddleware,
    HubWhoamiSource,
    Repo,
    TokenCache,
    Visibility,
    get_request_auth,
    require_read,
)

pytestmark = pytest.mark.anyio

PUBLIC = {Repo.parse("model:acme/public-demo"): Visibility.PUBLIC}
POLICY = AccessPolicy(visibility=lambda repo: PUBLIC.get(repo, Visibility.PRIVATE))
MADE_UP = "hf_" + "Z" * 34


async def caller(request: Request) -> JSONResponse:
    auth = request.scope.get("hfauth")
    return JSONResponse(
        {
            "user": request.user.display_name if request.user.is_authenticated else None,
            "checked": auth is not None,
        }
    )


async def card(request: Request) -> JSONResponse:
    """Checks in the route: the anonymous caller reads public repos only."""
    owner, name = request.path_params["owner"], request.path_params["name"]
    get_request_auth(request).require(f"model:{owner}/{name}", "read")
    return JSONResponse({"model": f"{owner}/{name}"})


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    user = websocket.user.display_name if websocket.user.is_authenticated else "anonymous"
    await websocket.send_text(f"hello {user}")
    await websocket.close()


ROUTES = [
    Route("/", caller),
    Route("/v1/models", caller),
    Route("/v1/whoami", caller),
    Route("/v1/cards/{owner}/{name}", card),
    WebSocketRoute("/v1/live", socket),
]


@pytest.fixture
def make_app(hub_emulator, clock):
    def make(**options) -> Starlette:
        authenticator = Authenticator(
            HubWhoamiSource(hub_emulator.url), cache=TokenCache(timer=clock, clock=clock)
        )
        app = Starlette(routes=ROUTES)
        options.setdefault("authority", "local")  # the local rules and POLICY's callbacks
        app.add_middleware(HFAuthMiddleware, authenticator=authenticator, policy=POLICY, **options)
        return app

    return make


def bearer(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


async def request(app: Starlette, path: str, token: str | None) -> httpx.Response:
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return await client.get(path, headers=bearer(token))


@pytest.mark.parametrize(
    ("who", "path", "status", "body"),
    [
        pytest.param(None, "/v1/models", 200, {"user": None, "checked": True}, id="no-token"),
        pytest.param("reader", "/v1/models", 200, {"user": "bob", "checked": True}, id="token"),
        pytest.param("bad", "/v1/models", 401, None, id="bad-token"),
        pytest.param(None, "/v1/whoami", 401, None, id="other-paths-need-a-token"),
        pytest.param(None, "/v1/cards/acme/public-demo", 200, None, id="anonymous-public-repo"),
        pytest.param(None, "/v1/cards/acme/sentiment", 401, None, id="anonymous-private-repo"),
        pytest.param("reader", "/v1/cards/acme/sentiment", 200, None, id="token-private-repo"),
    ],
)
async def test_optional_paths(make_app, tokens, who, path, status, body):
    app = make_app(optional_paths=["/v1/models", "/v1/cards/*"])
    token = MADE_UP if who == "bad" else tokens.get(who)
    response = await request(app, path, token)
    assert response.status_code == status, response.text
    if body is not None:
        assert response.json() == body
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer ")


@pytest.mark.parametrize(
    ("who", "path", "status", "body"),
    [
        pytest.param(None, "/", 200, {"user": None, "checked": False}, id="unlisted"),
        pytest.param("bad", "/", 200, {"user": None, "checked": False}, id="unlisted-unchecked"),
        pytest.param(None, "/v1/whoami", 401, None, id="listed-no-token"),
        pytest.param("reader", "/v1/whoami", 200, {"user": "bob", "checked": True}, id="listed"),
        pytest.param(None, "/v1/models", 200, {"user": None, "checked": True}, id="optional"),
        pytest.param("bad", "/v1/models", 401, None, id="optional-bad-token"),
        pytest.param(None, "/x/../v1/whoami", 401, None, id="dot-segments-checked"),
    ],
)
async def test_protected_paths(make_app, hub_emulator, tokens, who, path, status, body):
    app = make_app(protected_paths=["/v1/*"], optional_paths=["/v1/models"])
    token = MADE_UP if who == "bad" else tokens.get(who)
    response = await request(app, path, token)
    assert response.status_code == status, response.text
    if body is not None:
        assert response.json() == body
    if path == "/":
        assert hub_emulator.whoami_calls == 0


async def test_rules_apply_on_protected_paths(make_app, tokens):
    app = make_app(protected_paths=["/v1/*"], rules=[require_read("GET /v1/cards/{owner}/{name}")])
    assert (await request(app, "/v1/cards/acme/sentiment", tokens["fine"])).status_code == 200
    denied = await request(app, "/v1/cards/acme/other", tokens["fine"])
    assert denied.status_code == 403
    assert denied.json()["error"] == "insufficient_scope"


def test_a_websocket_on_an_optional_path(make_app, tokens):
    client = TestClient(make_app(optional_paths=["/v1/live"]))
    with client.websocket_connect("/v1/live") as websocket:
        assert websocket.receive_text() == "hello anonymous"
    with client.websocket_connect("/v1/live", headers=bearer(tokens["reader"])) as websocket:
        assert websocket.receive_text() == "hello bob"
    with (
        pytest.raises(WebSocketDisconnect),
        client.websocket_connect("/v1/live", headers=bearer(MADE_UP)) as websocket,
    ):
        websocket.receive_text()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"protected_paths": ["/v1/*"], "public_paths": ["/health"]}, id="both"),
        pytest.param({"protected_paths": []}, id="empty-protected"),
        pytest.param({"optional_paths": ["v1/models"]}, id="no-leading-slash"),
    ],
)
def test_bad_path_options_stop_start_up(hub_emulator, options):
    with pytest.raises(ConfigurationError):
        HFAuthMiddleware(Starlette(), hub_url=hub_emulator.url, **options)
