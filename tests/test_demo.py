"""The demo inference server over a seeded local store: the promises the docs make.

Real parts only: a real SQLite store seeded by ``seed_demo_store``, the real
middleware, httpx's ASGI transport, Starlette's TestClient for the WebSocket,
and once a real uvicorn server on a loopback port.
"""

from __future__ import annotations

import asyncio
import base64
import re
import secrets
import shutil
import socket
import stat
import string
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from checkout import CHECKOUT, git_ignores
from hfauth_mw import LocalStoreSource, LocalTokenStore, _demo
from hfauth_mw._demo import DEMO_USERS, build_app, seed_demo_store

TOKEN_SHAPE = re.compile(r"^hf_[A-Za-z0-9]{34}$")


def made_up_token() -> str:
    alphabet = string.ascii_letters + string.digits
    return "hf_" + "".join(secrets.choice(alphabet) for _ in range(34))


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "demo" / "tokens.sqlite3"


@pytest.fixture
def tokens(store_path: Path) -> dict[str, str]:
    return seed_demo_store(store_path)


@pytest.fixture
def store(store_path: Path, tokens: dict[str, str]) -> Iterator[LocalTokenStore]:
    with LocalTokenStore(store_path) as token_store:
        yield token_store


@pytest.fixture
def app(store: LocalTokenStore) -> Starlette:
    return build_app(LocalStoreSource(store))


# --- seeding ---------------------------------------------------------------------------------


def test_seed_gives_every_demo_user_a_hub_shaped_token(tokens: dict[str, str]) -> None:
    assert set(tokens) == {user.name for user in DEMO_USERS}
    assert all(TOKEN_SHAPE.match(token) for token in tokens.values())
    assert len(set(tokens.values())) == len(tokens)


def test_seed_is_idempotent(store_path: Path, tokens: dict[str, str]) -> None:
    again = seed_demo_store(store_path)
    assert again == tokens
    with LocalTokenStore(store_path) as token_store:
        records = token_store.list_tokens()
    assert sorted(record.user for record in records) == sorted(tokens)


def test_seed_differs_per_store_and_keeps_its_seed_private(
    tmp_path: Path, store_path: Path, tokens: dict[str, str]
) -> None:
    other = seed_demo_store(tmp_path / "other.sqlite3")
    assert set(other.values()).isdisjoint(tokens.values())
    seed_file = store_path.with_name(store_path.name + ".demo-seed")
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    assert not any(token in seed_file.read_text() for token in tokens.values())


def test_two_first_runs_at_once_share_one_whole_seed(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second first run, started while the first makes the seed, never reads it half-written.

    The second run is played inside the first, at the moment the first draws its
    random bytes: no sleeps, the same interleaving every time.
    """
    store_path.parent.mkdir(parents=True)
    real = secrets.token_bytes
    second: list[bytes] = []

    def draw_while_another_run_starts(n: int) -> bytes:
        if not second:
            second.append(b"")
            second[0] = _demo._seed_for(store_path)
        return real(n)

    monkeypatch.setattr(_demo.secrets, "token_bytes", draw_while_another_run_starts)
    first = _demo._seed_for(store_path)
    assert len(first) == 32
    assert second == [first]
    seed_file = store_path.with_name(store_path.name + ".demo-seed")
    assert stat.S_IMODE(seed_file.stat().st_mode) == 0o600
    assert [p.name for p in store_path.parent.iterdir()] == [seed_file.name]  # no temp files


def test_seed_never_writes_tokens_into_the_source_tree() -> None:
    source = (Path(__file__).resolve().parents[1] / "src" / "hfauth_mw" / "_demo.py").read_text()
    assert not re.search(r"hf_[A-Za-z0-9]{34}", source)


# --- HTTP, table-driven -----------------------------------------------------------------------


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    user: str | None = None  # a demo user, "made-up", or None for no token
    basic: bool = False
    body: Any = field(default_factory=lambda: {"inputs": "what a great fun demo"})


def headers_for(call: Call, tokens: dict[str, str]) -> dict[str, str]:
    if call.user is None:
        return {}
    token = made_up_token() if call.user == "made-up" else tokens[call.user]
    if call.basic:
        return {"Authorization": "Basic " + base64.b64encode(f"x:{token}".encode()).decode()}
    return {"Authorization": f"Bearer {token}"}


async def send(app: Starlette, call: Call, tokens: dict[str, str]) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        return await client.request(
            call.method,
            call.path,
            headers=headers_for(call, tokens),
            json=call.body if call.method in ("POST", "PUT") else None,
        )


INFER = "/v1/models/{}/infer"
CASES = [
    pytest.param(Call("POST", INFER.format("bob/echo")), 401, None, id="no-token"),
    pytest.param(Call("GET", "/health"), 200, None, id="health-without-token"),
    pytest.param(Call("GET", "/v1/whoami"), 401, None, id="whoami-needs-token"),
    pytest.param(
        Call("POST", INFER.format("acme/public-demo")),
        401,
        None,
        id="public-model-still-needs-token",
    ),
    pytest.param(Call("POST", INFER.format("bob/echo"), "bob"), 200, None, id="read-user-infer"),
    pytest.param(
        Call("POST", INFER.format("acme/public-demo"), "bob"), 200, None, id="read-user-public"
    ),
    pytest.param(
        Call("POST", INFER.format("alice/tiny-lm"), "bob"),
        403,
        "insufficient_scope",
        id="read-user-others-private",
    ),
    pytest.param(
        Call("PUT", "/v1/models/bob/echo", "bob", body={"positive": ["x"]}),
        403,
        "insufficient_scope",
        id="read-user-put",
    ),
    pytest.param(
        Call("PUT", "/v1/models/acme/sentiment", "alice", body={"positive": ["shiny"]}),
        200,
        None,
        id="write-user-put-org",
    ),
    pytest.param(
        Call("PUT", "/v1/models/alice/tiny-lm", "alice", body={}),
        200,
        None,
        id="write-user-put-own",
    ),
    pytest.param(
        Call("POST", INFER.format("alice/tiny-lm"), "alice", basic=True),
        200,
        None,
        id="basic-x-token",
    ),
    pytest.param(
        Call("POST", INFER.format("bob/echo"), "made-up"), 401, "invalid_token", id="made-up-token"
    ),
    pytest.param(
        Call("POST", INFER.format("acme/sentiment"), "carol"), 200, None, id="fine-grained-its-repo"
    ),
    pytest.param(
        Call("POST", INFER.format("alice/tiny-lm"), "carol"),
        403,
        "insufficient_scope",
        id="fine-grained-other-repo",
    ),
    pytest.param(
        Call("PUT", "/v1/models/acme/sentiment", "carol", body={}),
        403,
        "insufficient_scope",
        id="fine-grained-no-write",
    ),
    pytest.param(
        Call("POST", INFER.format("acme/sentiment"), "dave"), 200, None, id="org-reader-reads"
    ),
    pytest.param(
        Call("PUT", "/v1/models/acme/sentiment", "dave", body={}),
        403,
        "insufficient_scope",
        id="org-reader-cannot-write",
    ),
    pytest.param(
        Call("POST", INFER.format("alice/missing"), "alice"), 404, None, id="unknown-model-404"
    ),
    pytest.param(
        Call("POST", INFER.format("alice/missing"), "bob"),
        403,
        "insufficient_scope",
        id="unknown-model-of-others-403-before-404",
    ),
    pytest.param(
        Call("POST", INFER.format("bob/echo"), "bob", body={"text": "x"}), 400, None, id="bad-body"
    ),
    pytest.param(
        Call("PUT", "/v1/models/alice/tiny-lm", "alice", body=["not", "an", "object"]),
        400,
        None,
        id="bad-weights",
    ),
]


@pytest.mark.parametrize(("call", "status", "error"), CASES)
def test_http_promises(
    app: Starlette, tokens: dict[str, str], call: Call, status: int, error: str | None
) -> None:
    response = asyncio.run(send(app, call, tokens))
    assert response.status_code == status, response.text
    challenge = response.headers.get("www-authenticate", "")
    if status == 401:
        assert challenge.startswith('Bearer realm="')
    if error is not None:
        assert response.json()["error"] == error
        assert f'error="{error}"' in challenge
    for token in tokens.values():
        assert token not in response.text


def test_no_token_challenge_offers_bearer_and_basic(app: Starlette, tokens: dict[str, str]) -> None:
    response = asyncio.run(send(app, Call("POST", INFER.format("bob/echo")), tokens))
    assert response.headers.get_list("www-authenticate") == [
        'Bearer realm="hfauth-mw demo"',
        'Basic realm="hfauth-mw demo"',
    ]


@pytest.mark.parametrize(
    ("inputs", "model", "expected"),
    [
        pytest.param(
            "what a great fun demo", "acme/sentiment", "POSITIVE (score 2)", id="sentiment"
        ),
        pytest.param("one two three", "alice/tiny-lm", "three two one", id="reverse"),
        pytest.param("hello there", "bob/echo", "hello there", id="echo"),
    ],
)
def test_toy_models(
    app: Starlette, tokens: dict[str, str], inputs: str, model: str, expected: str
) -> None:
    call = Call("POST", INFER.format(model), "alice", body={"inputs": inputs})
    if model == "bob/echo":
        call = Call("POST", INFER.format(model), "bob", body={"inputs": inputs})
    response = asyncio.run(send(app, call, tokens))
    assert response.status_code == 200
    assert response.json()["outputs"] == expected


def test_put_changes_weights_seen_by_readers(app: Starlette, tokens: dict[str, str]) -> None:
    async def scenario() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        text = {"inputs": "shiny thing"}
        before = await send(
            app, Call("POST", INFER.format("acme/sentiment"), "dave", body=text), tokens
        )
        put = await send(
            app,
            Call("PUT", "/v1/models/acme/sentiment", "alice", body={"positive": ["shiny"]}),
            tokens,
        )
        after = await send(
            app, Call("POST", INFER.format("acme/sentiment"), "dave", body=text), tokens
        )
        return before, put, after

    before, put, after = asyncio.run(scenario())
    assert (before.json()["label"], before.json()["revision"]) == ("NEUTRAL", 0)
    assert put.json() == {"model": "acme/sentiment", "revision": 1, "updated": True}
    assert (after.json()["label"], after.json()["revision"]) == ("POSITIVE", 1)


@pytest.mark.parametrize(
    ("user", "visible"),
    [
        pytest.param("alice", {"acme/sentiment", "alice/tiny-lm", "acme/public-demo"}, id="alice"),
        pytest.param("bob", {"bob/echo", "acme/public-demo"}, id="bob"),
        pytest.param("carol", {"acme/sentiment", "acme/public-demo"}, id="carol"),
        pytest.param("dave", {"acme/sentiment", "acme/public-demo"}, id="dave"),
    ],
)
def test_model_list_shows_what_the_caller_may_read(
    app: Starlette, tokens: dict[str, str], user: str, visible: set[str]
) -> None:
    response = asyncio.run(send(app, Call("GET", "/v1/models", user), tokens))
    assert response.status_code == 200
    models = {model["id"]: model for model in response.json()["models"]}
    assert set(models) == visible
    if user == "alice":
        assert models["acme/sentiment"]["can_write"] is True
    if user == "dave":
        assert models["acme/sentiment"]["can_write"] is False


def test_whoami_describes_the_caller_without_the_token(
    app: Starlette, tokens: dict[str, str]
) -> None:
    response = asyncio.run(send(app, Call("GET", "/v1/whoami", "carol"), tokens))
    body = response.json()
    assert (body["name"], body["token_role"]) == ("carol", "fineGrained")
    assert body["scoped"] == [
        {
            "entity": {
                "type": "model",
                "name": "acme/sentiment",
                "id": body["scoped"][0]["entity"]["id"],
            },
            "permissions": ["repo.content.read"],
        }
    ]
    assert tokens["carol"] not in response.text
    assert response.headers["cache-control"] == "private"


def test_revoked_token_is_refused(store: LocalTokenStore, tokens: dict[str, str]) -> None:
    # A fresh app (its cache has not seen bob's token) after bob's token is revoked.
    bob = next(record for record in store.list_tokens() if record.user == "bob")
    assert store.revoke(bob.fingerprint) == 1
    app = build_app(LocalStoreSource(store))
    response = asyncio.run(send(app, Call("POST", INFER.format("bob/echo"), "bob"), tokens))
    assert response.status_code == 401
    assert response.json()["error"] == "invalid_token"


@pytest.mark.parametrize(
    ("repo", "admitted", "status"),
    [
        # The Hub documents a fine-grained entry naming a gated repo as the way to read it.
        pytest.param("acme/sentiment", ["carol"], 200, id="entry-on-the-gated-repo-reads-it"),
        # carol's token lacks canReadGatedRepos: another gated repo is refused.
        pytest.param("acme/public-demo", ["carol"], 403, id="no-entry-no-gated-reads"),
        # The gate comes first: without being let in, the entry reads nothing.
        pytest.param("acme/sentiment", [], 403, id="not-admitted-through-the-gate"),
        pytest.param("acme/sentiment", ["bob"], 403, id="someone-else-admitted"),
    ],
)
def test_gated_option_marks_repos_gated(
    store: LocalTokenStore, tokens: dict[str, str], repo: str, admitted: list[str], status: int
) -> None:
    app = build_app(LocalStoreSource(store), gated=[repo], admitted={repo: admitted})
    response = asyncio.run(send(app, Call("POST", INFER.format(repo), "carol"), tokens))
    assert response.status_code == status
    if status == 403:
        assert "gated" in response.json()["error_description"]


# --- WebSocket -------------------------------------------------------------------------------


def test_websocket_streams_word_by_word_for_a_reader(
    app: Starlette, tokens: dict[str, str]
) -> None:
    headers = {"Authorization": f"Bearer {tokens['alice']}"}
    with (
        TestClient(app) as client,
        client.websocket_connect("/v1/models/alice/tiny-lm/stream", headers=headers) as ws,
    ):
        ws.send_json({"inputs": "one two three"})
        messages = []
        while True:
            message = ws.receive_json()
            messages.append(message)
            if message.get("done"):
                break
    assert messages == [{"token": "three"}, {"token": "two"}, {"token": "one"}, {"done": True}]


@pytest.mark.parametrize(
    ("user", "status"),
    [
        pytest.param(None, 401, id="no-token"),
        pytest.param("made-up", 401, id="made-up-token"),
        pytest.param("carol", 403, id="no-read-right"),
    ],
)
def test_websocket_refused(
    app: Starlette, tokens: dict[str, str], user: str | None, status: int
) -> None:
    headers = headers_for(Call("GET", "/", user), tokens)
    # TestClient offers the websocket.http.response extension, so the middleware
    # answers the handshake with the HTTP status; without it, it closes with 1008.
    with (
        TestClient(app) as client,
        pytest.raises(WebSocketDisconnect) as caught,
        client.websocket_connect("/v1/models/alice/tiny-lm/stream", headers=headers),
    ):
        pass
    error = caught.value
    if isinstance(error, WebSocketDenialResponse):
        assert error.status_code == status
    else:
        assert error.code == 1008


def test_websocket_unknown_model_closes(app: Starlette, tokens: dict[str, str]) -> None:
    headers = {"Authorization": f"Bearer {tokens['alice']}"}
    with (
        TestClient(app) as client,
        pytest.raises(WebSocketDisconnect) as caught,
        client.websocket_connect("/v1/models/alice/missing/stream", headers=headers),
    ):
        pass
    assert caught.value.code == 4404


# --- a real uvicorn server ----------------------------------------------------------------------


class ReadyServer(uvicorn.Server):
    """A uvicorn server that tells a waiting thread when it is listening."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()


@pytest.fixture
def live_url(app: Starlette) -> Iterator[str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = ReadyServer(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert server.ready.wait(timeout=10), "uvicorn did not start"
        assert server.started
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def test_under_a_real_uvicorn_server(live_url: str, tokens: dict[str, str]) -> None:
    infer = {"inputs": "what a great fun demo"}
    with httpx.Client(base_url=live_url, trust_env=False) as client:
        missing = client.post("/v1/models/bob/echo/infer", json=infer)
        health = client.get("/health")
        read = client.post(
            "/v1/models/bob/echo/infer",
            json=infer,
            headers={"Authorization": f"Bearer {tokens['bob']}"},
        )
        denied = client.put(
            "/v1/models/bob/echo", json={}, headers={"Authorization": f"Bearer {tokens['bob']}"}
        )
        basic = client.post(
            "/v1/models/alice/tiny-lm/infer", json=infer, auth=("x", tokens["alice"])
        )
        fake = client.get("/v1/whoami", headers={"Authorization": f"Bearer {made_up_token()}"})
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"].startswith('Bearer realm="')
    assert health.status_code == 200
    assert read.status_code == 200
    assert read.json()["outputs"] == infer["inputs"]
    assert denied.status_code == 403
    assert denied.json()["error"] == "insufficient_scope"
    assert basic.status_code == 200
    assert fake.status_code == 401
    assert fake.json()["error"] == "invalid_token"


def test_git_ignores_a_demo_store_and_its_seed_anywhere(tmp_path: Path) -> None:
    """``demo --store PATH`` outside .hfauth-demo/: the seed beside it makes every demo
    token again, so it must not be committed, nor the store, its mark or its WAL."""
    store_path = tmp_path / "demo.sqlite3"
    seed_demo_store(store_path)
    with LocalTokenStore(store_path):
        beside = sorted(p.name for p in tmp_path.iterdir())
    assert {"demo.sqlite3.demo-seed", "demo.sqlite3.demo"} <= set(beside)
    ignored = git_ignores([*beside, ".hfauth-demo/tokens.sqlite3"])
    assert ignored == dict.fromkeys(ignored, True)


@pytest.mark.parametrize(
    ("target", "installs", "never"),
    [
        pytest.param("demo", "-e '.[demo]'", ".[dev]", id="demo-runtime-only"),
        pytest.param("test", "-e '.[dev]'", ".[demo]", id="test-whole-toolchain"),
    ],
)
def test_make_targets_install_what_they_need(
    tmp_path: Path, target: str, installs: str, never: str
) -> None:
    """``make demo`` installs the package and the demo extra, not pytest, mypy and
    ruff; ``make test`` the dev toolchain. Both make the virtualenv first if needed."""
    if shutil.which("make") is None or not (CHECKOUT / "Makefile").is_file():
        pytest.skip("needs make and the source checkout's Makefile")
    venv = tmp_path / "venv"
    dry_run = subprocess.run(
        ["make", "-n", "-C", str(CHECKOUT), target, f"VENV={venv}"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert dry_run.returncode == 0, dry_run.stderr
    commands = dry_run.stdout.splitlines()
    made = next(i for i, line in enumerate(commands) if f"-m venv {venv}" in line)
    installed = next(i for i, line in enumerate(commands) if installs in line)
    assert made < installed
    assert never not in dry_run.stdout
    assert not venv.exists()  # a dry run
