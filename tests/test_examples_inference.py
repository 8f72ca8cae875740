"""examples/inference_server.py under huggingface_hub's ``InferenceClient`` (the
HF Inference API's shapes), over real loopback sockets, with read, write,
fine-grained, unknown and missing tokens from a real token store.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import httpx
import pytest
from huggingface_hub import InferenceClient
from huggingface_hub.errors import HfHubHTTPError

from examples_support import (
    EXAMPLES,
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


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loopback_only(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_example("inference_server")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("inference") / "tokens.sqlite3"


@pytest.fixture(scope="module")
def tokens(store_path: Path) -> dict[str, str]:
    return seed_store(store_path)


@pytest.fixture(scope="module")
def url(example: ModuleType, store_path: Path, tokens: dict[str, str]) -> Iterator[str]:
    with (
        LocalTokenStore(store_path) as store,
        serve_in_thread(example.build_app(LocalStoreSource(store))) as base,
    ):
        yield base


def hub(url: str, tokens: dict[str, str], who: str | None, model: str) -> InferenceClient:
    return InferenceClient(
        model=f"{url}/models/{model}", token=None if who is None else tokens[who]
    )


@pytest.mark.parametrize("name", ["inference_server", "openai_server", "tgi_server"])
def test_examples_use_only_the_public_api(name: str) -> None:
    tree = ast.parse((EXAMPLES / f"{name}.py").read_text())
    imported = {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module is not None
    } | {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    ours = {name for name in imported if name.startswith("hfauth_mw")}
    assert ours == {"hfauth_mw"}


@pytest.mark.parametrize(
    ("who", "model"),
    [
        pytest.param("alice", "acme/sentiment", id="write-token-org-model"),
        pytest.param("carol", "acme/sentiment", id="fine-grained-granted-model"),
        pytest.param("bob", "acme/public-demo", id="read-token-public-model"),
    ],
)
def test_text_classification(url: str, tokens: dict[str, str], who: str, model: str) -> None:
    labels = hub(url, tokens, who, model).text_classification("what a great fun demo")
    assert [label.label for label in labels] == ["POSITIVE", "NEGATIVE"]
    assert labels[0].score == pytest.approx(0.75)
    assert sum(label.score for label in labels) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("who", "model", "expected"),
    [
        pytest.param("bob", "bob/echo", "hello there", id="read-token-own-model"),
        pytest.param("alice", "alice/tiny-lm", "there hello", id="write-token-own-model"),
    ],
)
def test_text_generation(
    url: str, tokens: dict[str, str], who: str, model: str, expected: str
) -> None:
    assert hub(url, tokens, who, model).text_generation("hello there") == expected


@pytest.mark.parametrize(
    ("who", "model", "status", "code", "reason"),
    [
        pytest.param(
            "bob", "acme/sentiment", 403, "insufficient_scope",
            "read denied: model acme/sentiment is private", id="read-token-other-private-model",
        ),
        pytest.param(
            "carol", "bob/echo", 403, "insufficient_scope", "read denied",
            id="fine-grained-model-not-granted",
        ),
        pytest.param(
            "bad", "bob/echo", 401, "invalid_token", "invalid, revoked or expired",
            id="unknown-token",
        ),
        pytest.param(
            None, "bob/echo", 401, "unauthorized", "Authentication required", id="no-token"
        ),
    ],
)  # fmt: skip
def test_refusals_show_the_reason(
    url: str,
    tokens: dict[str, str],
    who: str | None,
    model: str,
    status: int,
    code: str,
    reason: str,
) -> None:
    with pytest.raises(HfHubHTTPError) as raised:
        hub(url, tokens, who, model).text_generation("hi")
    response = raised.value.response
    assert response is not None
    assert response.status_code == status
    assert reason in str(raised.value)
    assert "Forbidden: None" not in str(raised.value)
    assert response.headers["x-error-code"] == code
    assert response.json() == {"error": response.headers["x-error-message"]}


def test_unknown_model_is_404(url: str, tokens: dict[str, str]) -> None:
    # alice may read anything under acme/: the rule lets her through, the app has no such model.
    with httpx.Client(base_url=url, trust_env=False) as http:
        answer = http.post(
            "/models/acme/nothing",
            json={"inputs": "x"},
            headers={"Authorization": f"Bearer {tokens['alice']}"},
        )
    assert answer.status_code == 404
    assert answer.json() == {"error": "Model acme/nothing does not exist"}
    assert answer.headers["x-error-code"] == "RepoNotFound"


def test_bad_input_is_400(url: str, tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=url, trust_env=False) as http:
        answer = http.post(
            "/models/bob/echo",
            json={"text": "x"},
            headers={"Authorization": f"Bearer {tokens['bob']}"},
        )
    assert answer.status_code == 400
    assert "inputs" in answer.json()["error"]


@pytest.mark.parametrize(
    ("who", "visible"),
    [
        pytest.param("bob", {"bob/echo", "acme/public-demo"}, id="read-token"),
        pytest.param(
            "alice", {"acme/sentiment", "alice/tiny-lm", "acme/public-demo"}, id="write-token"
        ),
        pytest.param("carol", {"acme/sentiment", "acme/public-demo"}, id="fine-grained"),
    ],
)
def test_models_lists_what_the_caller_may_read(
    url: str, tokens: dict[str, str], who: str, visible: set[str]
) -> None:
    with httpx.Client(base_url=url, trust_env=False) as http:
        answer = http.get("/api/models", headers={"Authorization": f"Bearer {tokens[who]}"})
    assert {model["id"] for model in answer.json()} == visible


def test_whoami(url: str, tokens: dict[str, str]) -> None:
    with httpx.Client(base_url=url, trust_env=False) as http:
        answer = http.get("/api/whoami-v2", headers={"Authorization": f"Bearer {tokens['bob']}"})
    assert answer.json()["name"] == "bob"


# --- the module as a server ----------------------------------------------------------------


def test_example_runs_directly(store_path: Path, tokens: dict[str, str]) -> None:
    port = free_port()
    command = [
        sys.executable, "examples/inference_server.py", "--store", str(store_path),
        "--port", str(port),
    ]  # fmt: skip
    with serve_in_subprocess(command, port, example_env()) as base:
        text = hub(base, tokens, "bob", "bob/echo").text_generation("from a script")
        with httpx.Client(base_url=base, trust_env=False) as http:
            models = http.get(
                "/api/models", headers={"Authorization": f"Bearer {tokens['bob']}"}
            ).json()
    assert text == "from a script"
    assert {model["id"] for model in models} == {"bob/echo", "acme/public-demo"}


def test_uvicorn_from_environment(store_path: Path, tokens: dict[str, str]) -> None:
    port = free_port()
    command = [
        sys.executable, "-m", "uvicorn", "examples.inference_server:app",
        "--port", str(port), "--log-level", "warning",
    ]  # fmt: skip
    with serve_in_subprocess(command, port, example_env(HFAUTH_STORE=str(store_path))) as base:
        labels = hub(base, tokens, "carol", "acme/sentiment").text_classification("sad")
    assert labels[0].label == "NEGATIVE"


def test_script_refuses_a_missing_store(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.sqlite3"
    done = run_example(["examples/inference_server.py", "--store", str(missing)], example_env())
    assert done.returncode == 2
    assert f"no token store at {missing}" in done.stderr
    assert not missing.exists()
