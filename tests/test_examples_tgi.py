"""examples/tgi_server.py under huggingface_hub's ``InferenceClient`` (and plain
HTTP for TGI's wire format), over real loopback sockets, with read, write,
fine-grained, unknown and missing tokens from a real token store.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from examples_support import (
    example_env,
    free_port,
    load_example,
    loopback_only,
    run_example,
    seed_store,
    serve_in_subprocess,
    serve_in_thread,
)
from hfauth_mw import LocalStoreSource, LocalTokenStore

PRIVATE_REASON = "read denied: model acme/sentiment is private"


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loopback_only(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_example("tgi_server")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tgi") / "tokens.sqlite3"


@pytest.fixture(scope="module")
def tokens(store_path: Path) -> dict[str, str]:
    return seed_store(store_path)


@pytest.fixture(scope="module")
def url(example: ModuleType, store_path: Path, tokens: dict[str, str]) -> Iterator[str]:
    """The example serving acme/sentiment (private to org acme), under uvicorn."""
    with (
        LocalTokenStore(store_path) as store,
        serve_in_thread(example.build_app(LocalStoreSource(store), "acme/sentiment")) as base,
    ):
        yield base


def hub(url: str, tokens: dict[str, str], who: str | None) -> InferenceClient:
    """An InferenceClient for the server's URL; ``None``: no token at all."""
    return InferenceClient(model=url, token=None if who is None else tokens[who])


def auth(tokens: dict[str, str], who: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens[who]}"}


# --- text generation with InferenceClient --------------------------------------------------


@pytest.mark.parametrize(
    "who",
    [
        pytest.param("alice", id="write-token-org-model"),
        pytest.param("carol", id="fine-grained-granted-model"),
    ],
)
def test_text_generation(url: str, tokens: dict[str, str], who: str) -> None:
    text = hub(url, tokens, who).text_generation("the cat sat on the mat", max_new_tokens=4)
    assert text == "the cat sat on"


def test_text_generation_details(url: str, tokens: dict[str, str]) -> None:
    answer = hub(url, tokens, "alice").text_generation(
        "one two three", max_new_tokens=10, details=True
    )
    assert answer.generated_text == "one two three"
    assert answer.details is not None
    assert answer.details.finish_reason == "eos_token"
    assert answer.details.generated_tokens == 3
    assert [token.text for token in answer.details.tokens] == ["one", " two", " three"]


def test_text_generation_streamed(url: str, tokens: dict[str, str]) -> None:
    client = hub(url, tokens, "carol")  # kept: the stream is read through its session
    pieces = list(client.text_generation("a b c d e", max_new_tokens=3, stream=True, details=True))
    assert "".join(piece.token.text for piece in pieces) == "a b c"
    assert [piece.generated_text for piece in pieces] == [None, None, "a b c"]
    assert pieces[-1].details is not None
    assert pieces[-1].details.finish_reason == "length"


def test_stop_sequence(url: str, tokens: dict[str, str]) -> None:
    answer = hub(url, tokens, "alice").text_generation(
        "one two three four", stop=["two"], details=True
    )
    assert answer.generated_text == "one two"
    assert answer.details is not None
    assert answer.details.finish_reason == "stop_sequence"


@pytest.mark.parametrize(
    ("who", "status", "reason"),
    [
        pytest.param("bob", 403, PRIVATE_REASON, id="read-token-other-private-model"),
        pytest.param("bad", 401, "invalid, revoked or expired", id="unknown-token"),
        pytest.param(None, 401, "Authentication required", id="no-token"),
    ],
)
@pytest.mark.parametrize("stream", [False, True], ids=["once", "streamed"])
def test_text_generation_refused_shows_the_reason(
    url: str, tokens: dict[str, str], who: str | None, status: int, reason: str, stream: bool
) -> None:
    client = hub(url, tokens, who)
    with pytest.raises(HfHubHTTPError) as raised:
        list(client.text_generation("hi", stream=True)) if stream else client.text_generation("hi")
    assert raised.value.response is not None
    assert raised.value.response.status_code == status
    assert reason in str(raised.value)
    assert "Forbidden: None" not in str(raised.value)


def test_validation_error_is_tgis(url: str, tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=url, trust_env=False) as http:
        answer = http.post(
            "/generate",
            json={"inputs": "x", "parameters": {"max_new_tokens": 0}},
            headers=auth(tokens, "alice"),
        )
    assert answer.status_code == 422
    assert answer.json() == {
        "error": "`max_new_tokens` must be strictly positive",
        "error_type": "validation",
    }


def test_body_over_the_cap_is_413(example: ModuleType, url: str, tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=url, trust_env=False) as http:
        answer = http.post(
            "/generate",
            json={"inputs": "x" * example.MAX_BODY_BYTES},
            headers=auth(tokens, "alice"),
        )
    assert answer.status_code == 413
    assert answer.json()["error_type"] == "validation"


# --- TGI's wire format ---------------------------------------------------------------------


def test_generate(url: str, tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=url, trust_env=False) as http:
        answer = http.post(
            "/generate",
            json={"inputs": "x y z", "parameters": {"max_new_tokens": 2}},
            headers=auth(tokens, "alice"),
        )
    assert answer.status_code == 200
    assert answer.json() == {"generated_text": "x y"}


def test_generate_stream_is_tgi_sse(url: str, tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=url, trust_env=False) as http:
        answer = http.post(
            "/generate_stream", json={"inputs": "x y"}, headers=auth(tokens, "alice")
        )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(e.removeprefix("data:")) for e in answer.text.split("\n\n") if e]
    assert [event["token"]["text"] for event in events] == ["x", " y"]
    assert [event["index"] for event in events] == [1, 2]
    assert events[-1]["generated_text"] == "x y"
    assert events[-1]["details"]["finish_reason"] == "eos_token"


@pytest.mark.parametrize(
    ("who", "status"),
    [
        pytest.param("alice", 200, id="write-token"),
        pytest.param("carol", 200, id="fine-grained"),
        pytest.param("bob", 403, id="read-token-not-allowed"),
        pytest.param("bad", 401, id="unknown-token"),
    ],
)
def test_info(url: str, tokens: dict[str, str], who: str, status: int) -> None:
    with httpx.Client(base_url=url, trust_env=False) as http:
        answer = http.get("/info", headers=auth(tokens, who))
    assert answer.status_code == status
    if status == 200:
        assert answer.json()["model_id"] == "acme/sentiment"
    else:
        assert answer.headers["x-error-code"] in ("insufficient_scope", "invalid_token")
        assert answer.json()["error"] == answer.headers["x-error-message"]


def test_no_token_is_401_with_a_challenge(url: str) -> None:
    with httpx.Client(base_url=url, trust_env=False) as http:
        answer = http.post("/generate", json={"inputs": "x"})
        health = http.get("/health")
    assert answer.status_code == 401
    assert answer.headers["www-authenticate"].startswith("Bearer ")
    assert answer.json() == {"error": "Authentication required"}
    assert answer.headers["x-error-code"] == "unauthorized"
    assert health.status_code == 200


# --- the module as a server ----------------------------------------------------------------


def test_read_token_of_the_owner_under_uvicorn_workers(
    store_path: Path, tokens: dict[str, str]
) -> None:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "examples.tgi_server:app",
        "--workers", "2", "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    env = example_env(HFAUTH_STORE=str(store_path), HFAUTH_MODELS="bob/echo")
    with serve_in_subprocess(command, port, env) as base:
        bob = InferenceClient(model=base, token=tokens["bob"])
        text = bob.text_generation("my own model")
        with pytest.raises(HfHubHTTPError, match="read denied: model bob/echo"):
            InferenceClient(model=base, token=tokens["alice"]).text_generation("not yours")
    assert text == "my own model"


def test_script_refuses_a_missing_store(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.sqlite3"
    done = run_example(["examples/tgi_server.py", "--store", str(missing)], example_env())
    assert done.returncode == 2
    assert f"no token store at {missing}" in done.stderr
    assert not missing.exists()


def test_environment_names_one_model(example: ModuleType, store_path: Path) -> None:
    with pytest.raises(example.SetupError, match="serves one model"):
        example.app_from_environment({"HFAUTH_STORE": str(store_path), "HFAUTH_MODELS": "a/b,c/d"})
