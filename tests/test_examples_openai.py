"""examples/openai_server.py under real clients: the ``openai`` package and
huggingface_hub's ``InferenceClient``, over real loopback sockets, with read,
write, fine-grained, unknown and missing tokens from a real token store.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import httpx2
import openai
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
    serve_wsgi_in_thread,
)
from hfauth_mw import (
    HFAuthWSGIMiddleware,
    HubWhoamiSource,
    LocalStoreSource,
    LocalTokenStore,
    openai_rules,
)
from hfauth_mw.testing import HubEmulator

PRIVATE_REASON = "read denied: model acme/sentiment is private"


@pytest.fixture(autouse=True)
def _loopback_only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    loopback_only(monkeypatch, tmp_path)


@pytest.fixture(scope="module")
def example() -> ModuleType:
    return load_example("openai_server")


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("openai") / "tokens.sqlite3"


@pytest.fixture(scope="module")
def tokens(store_path: Path) -> dict[str, str]:
    return seed_store(store_path)


@pytest.fixture(scope="module")
def url(example: ModuleType, store_path: Path, tokens: dict[str, str]) -> Iterator[str]:
    """The example with the demo models, under uvicorn on a loopback port."""
    with (
        LocalTokenStore(store_path) as store,
        serve_in_thread(example.build_app(LocalStoreSource(store))) as base,
    ):
        yield base


def client(url: str, token: str | None) -> openai.OpenAI:
    """An ``openai`` client for ``token``; ``None`` sends no Authorization at all."""
    if token is None:
        # The client insists on a key: send one, and take the header off each request.
        def drop_authorization(request: httpx2.Request) -> None:
            del request.headers["authorization"]

        http_client = openai.DefaultHttpx2Client(event_hooks={"request": [drop_authorization]})
        return openai.OpenAI(
            api_key="unused", base_url=f"{url}/v1", max_retries=0, http_client=http_client
        )
    return openai.OpenAI(api_key=token, base_url=f"{url}/v1", max_retries=0)


def token_of(tokens: dict[str, str], who: str | None) -> str | None:
    return None if who is None else tokens[who]


# --- chat completions with the openai client -----------------------------------------------


@pytest.mark.parametrize(
    ("who", "model"),
    [
        pytest.param("bob", "bob/echo", id="read-token-own-model"),
        pytest.param("bob", "acme/public-demo", id="read-token-public-model"),
        pytest.param("alice", "acme/sentiment", id="write-token-org-model"),
        pytest.param("alice", "alice/tiny-lm", id="write-token-own-model"),
        pytest.param("carol", "acme/sentiment", id="fine-grained-granted-model"),
    ],
)
def test_chat_allowed(url: str, tokens: dict[str, str], who: str, model: str) -> None:
    answer = client(url, tokens[who]).chat.completions.create(
        model=model,
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello there, world"},
        ],
    )
    assert answer.model == model
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == "hello there, world"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage is not None
    assert answer.usage.completion_tokens == 3
    assert answer.usage.prompt_tokens == 5


@pytest.mark.parametrize(
    ("who", "model", "error", "status", "code", "reason"),
    [
        pytest.param(
            "bob",
            "acme/sentiment",
            openai.PermissionDeniedError,
            403,
            "insufficient_scope",
            PRIVATE_REASON,
            id="read-token-other-private-model",
        ),
        pytest.param(
            "carol",
            "alice/tiny-lm",
            openai.PermissionDeniedError,
            403,
            "insufficient_scope",
            "read denied",
            id="fine-grained-model-not-granted",
        ),
        pytest.param(
            "bad",
            "bob/echo",
            openai.AuthenticationError,
            401,
            "invalid_token",
            "invalid, revoked or expired",
            id="unknown-token",
        ),
        pytest.param(
            None,
            "bob/echo",
            openai.AuthenticationError,
            401,
            "unauthorized",
            "Authentication required",
            id="no-token",
        ),
        pytest.param(
            "bob",
            "nobody/nothing",
            openai.NotFoundError,
            404,
            "model_not_found",
            "does not exist",
            id="model-not-served",
        ),
    ],
)
def test_chat_refused_shows_the_reason(
    url: str,
    tokens: dict[str, str],
    who: str | None,
    model: str,
    error: type[openai.APIStatusError],
    status: int,
    code: str,
    reason: str,
) -> None:
    with pytest.raises(error) as raised:
        client(url, token_of(tokens, who)).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
    assert raised.value.status_code == status
    assert reason in str(raised.value)  # what a person sees
    assert raised.value.code == code
    assert isinstance(raised.value.body, dict)
    assert set(raised.value.body) == {"message", "type", "param", "code"}
    assert reason in raised.value.body["message"]
    headers = raised.value.response.headers
    assert headers["x-error-code"] == code
    assert reason in headers["x-error-message"]
    if status == 401:
        assert headers["www-authenticate"].startswith("Bearer ")


def test_chat_streamed_arrives_whole(url: str, tokens: dict[str, str]) -> None:
    text = "the quick  brown fox jumps"
    stream = client(url, tokens["bob"]).chat.completions.create(
        model="bob/echo",
        messages=[{"role": "user", "content": text}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert content == text
    assert finishes[-1] == "stop"
    assert set(finishes[:-1]) == {None}
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 5


def test_chat_stream_is_plain_sse_ending_with_done(url: str, tokens: dict[str, str]) -> None:
    body = {"model": "bob/echo", "stream": True, "messages": [{"role": "user", "content": "a b"}]}
    with httpx.Client(base_url=url, trust_env=False) as http:
        answer = http.post(
            "/v1/chat/completions",
            json=body,
            headers={"Authorization": f"Bearer {tokens['bob']}"},
        )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    events = [line for line in answer.text.split("\n\n") if line]
    assert all(event.startswith("data: ") for event in events)
    assert events[-1] == "data: [DONE]"


def test_chat_stream_refused_before_it_starts(url: str, tokens: dict[str, str]) -> None:
    with pytest.raises(openai.PermissionDeniedError, match=PRIVATE_REASON):
        client(url, tokens["bob"]).chat.completions.create(
            model="acme/sentiment", messages=[{"role": "user", "content": "hi"}], stream=True
        )


def test_max_tokens_cuts_the_answer(url: str, tokens: dict[str, str]) -> None:
    answer = client(url, tokens["bob"]).chat.completions.create(
        model="bob/echo", messages=[{"role": "user", "content": "one two three"}], max_tokens=2
    )
    assert answer.choices[0].message.content == "one two"
    assert answer.choices[0].finish_reason == "length"


def test_bad_request_is_400_in_openai_shape(url: str, tokens: dict[str, str]) -> None:
    with pytest.raises(openai.BadRequestError) as raised:
        client(url, tokens["bob"]).chat.completions.create(model="bob/echo", messages=[])
    assert raised.value.param == "messages"
    assert "messages must be a non-empty list" in str(raised.value)


# --- completions, embeddings, models -----------------------------------------------------


def test_completions(url: str, tokens: dict[str, str]) -> None:
    answer = client(url, tokens["bob"]).completions.create(
        model="bob/echo", prompt=["say this", "and that too"]
    )
    assert [c.text for c in answer.choices] == ["say this", "and that too"]
    assert [c.index for c in answer.choices] == [0, 1]


def test_completions_streamed(url: str, tokens: dict[str, str]) -> None:
    stream = client(url, tokens["alice"]).completions.create(
        model="acme/sentiment", prompt="a b c", stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in stream) == "a b c"


def test_completions_refused(url: str, tokens: dict[str, str]) -> None:
    with pytest.raises(openai.PermissionDeniedError, match=PRIVATE_REASON):
        client(url, tokens["bob"]).completions.create(model="acme/sentiment", prompt="x")


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_embeddings(example: ModuleType, url: str, tokens: dict[str, str], encoding: str) -> None:
    texts = ["first text", "second"]
    with httpx.Client(base_url=url, trust_env=False) as http:
        raw = http.post(
            "/v1/embeddings",
            json={"model": "bob/echo", "input": texts, "encoding_format": encoding},
            headers={"Authorization": f"Bearer {tokens['bob']}"},
        ).json()
    vectors = [item["embedding"] for item in raw["data"]]
    if encoding == "base64":
        vectors = [
            list(struct.unpack(f"<{example.EMBEDDING_SIZE}f", base64.b64decode(v))) for v in vectors
        ]
    for text, vector in zip(texts, vectors, strict=True):
        assert vector == pytest.approx(example.embed(text), abs=1e-6)


def test_embeddings_with_the_openai_client(
    example: ModuleType, url: str, tokens: dict[str, str]
) -> None:
    answer = client(url, tokens["carol"]).embeddings.create(
        model="acme/sentiment", input="some text"
    )
    assert answer.data[0].embedding == pytest.approx(example.embed("some text"), abs=1e-6)
    assert sum(x * x for x in answer.data[0].embedding) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.parametrize(
    ("who", "visible"),
    [
        pytest.param("bob", {"bob/echo", "acme/public-demo"}, id="read-token"),
        pytest.param(
            "alice",
            {"acme/sentiment", "alice/tiny-lm", "acme/public-demo"},
            id="write-token-with-org",
        ),
        pytest.param("carol", {"acme/sentiment", "acme/public-demo"}, id="fine-grained"),
    ],
)
def test_models_lists_what_the_caller_may_read(
    url: str, tokens: dict[str, str], who: str, visible: set[str]
) -> None:
    models = client(url, tokens[who]).models.list()
    assert {model.id for model in models} == visible
    assert all(model.owned_by == model.id.split("/")[0] for model in models)


@pytest.mark.parametrize(
    ("who", "error"),
    [
        pytest.param("bad", openai.AuthenticationError, id="unknown-token"),
        pytest.param(None, openai.AuthenticationError, id="no-token"),
    ],
)
def test_models_list_refused(
    url: str, tokens: dict[str, str], who: str | None, error: type[Exception]
) -> None:
    with pytest.raises(error):
        client(url, token_of(tokens, who)).models.list()


def test_model_retrieve(url: str, tokens: dict[str, str]) -> None:
    assert client(url, tokens["bob"]).models.retrieve("bob/echo").id == "bob/echo"
    with pytest.raises(openai.PermissionDeniedError, match=PRIVATE_REASON):
        client(url, tokens["bob"]).models.retrieve("acme/sentiment")
    with pytest.raises(openai.NotFoundError):
        client(url, tokens["bob"]).models.retrieve("nobody/nothing")


def test_health_is_public(url: str) -> None:
    with httpx.Client(base_url=url, trust_env=False) as http:
        assert http.get("/health").status_code == 200


# --- huggingface_hub's InferenceClient -----------------------------------------------------


def hf_client(url: str, token: str | None) -> InferenceClient:
    """``None``: no token given, and none to find (see loopback_only)."""
    return InferenceClient(base_url=f"{url}/v1", token=token)


@pytest.mark.parametrize(
    ("who", "model"),
    [
        pytest.param("bob", "bob/echo", id="read-token"),
        pytest.param("alice", "acme/sentiment", id="write-token"),
        pytest.param("carol", "acme/sentiment", id="fine-grained"),
    ],
)
def test_inference_client_chat(url: str, tokens: dict[str, str], who: str, model: str) -> None:
    answer = hf_client(url, tokens[who]).chat_completion(
        [{"role": "user", "content": "hi from the hub client"}], model=model
    )
    assert answer.model == model
    assert answer.choices[0].message.content == "hi from the hub client"


def test_inference_client_chat_streamed(url: str, tokens: dict[str, str]) -> None:
    hub = hf_client(url, tokens["bob"])  # kept: the stream is read through its session
    chunks = hub.chat_completion(
        [{"role": "user", "content": "one two three"}], model="bob/echo", stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "one two three"
    )


@pytest.mark.parametrize(
    ("who", "model", "status", "reason"),
    [
        pytest.param("bob", "acme/sentiment", 403, PRIVATE_REASON, id="read-token-private"),
        pytest.param("bad", "bob/echo", 401, "invalid, revoked or expired", id="unknown-token"),
        pytest.param(None, "bob/echo", 401, "Authentication required", id="no-token"),
    ],
)
def test_inference_client_shows_the_reason(
    url: str, tokens: dict[str, str], who: str | None, model: str, status: int, reason: str
) -> None:
    with pytest.raises(HfHubHTTPError) as raised:
        hf_client(url, token_of(tokens, who)).chat_completion(
            [{"role": "user", "content": "hi"}], model=model
        )
    assert raised.value.response is not None
    assert raised.value.response.status_code == status
    assert reason in str(raised.value)
    assert "Forbidden: None" not in str(raised.value)


# --- the same routes on WSGI: a small streaming app behind HFAuthWSGIMiddleware --------------


class StreamingWSGIChat:
    """A WSGI chat-completions route streaming OpenAI's server-sent events, the echo
    of the last message word by word. It records the body it read, and waits after
    its first event until the client says it has it: a response held back anywhere
    (the middleware, the server) shows as ``streamed == [False]``."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.streamed: list[bool] = []
        self.first_event_read = threading.Event()

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        raw = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        self.bodies.append(raw)
        body = json.loads(raw)
        start_response("200 OK", [("Content-Type", "text/event-stream")])
        return self._events(body["model"], body["messages"][-1]["content"])

    def _events(self, model: str, text: str) -> Iterator[bytes]:
        meta = {"id": "chatcmpl-wsgi", "object": "chat.completion.chunk", "created": 0}
        for index, piece in enumerate(re.findall(r"\s*\S+", text)):
            delta = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            yield f"data: {json.dumps({**meta, 'model': model, 'choices': [delta]})}\n\n".encode()
            if index == 0:
                self.streamed.append(self.first_event_read.wait(timeout=10))
        done = {"index": 0, "delta": {}, "finish_reason": "stop"}
        yield f"data: {json.dumps({**meta, 'model': model, 'choices': [done]})}\n\n".encode()
        yield b"data: [DONE]\n\n"


@pytest.fixture
def wsgi_chat(store_path: Path, tokens: dict[str, str]) -> Iterator[tuple[str, StreamingWSGIChat]]:
    chat = StreamingWSGIChat()
    with LocalTokenStore(store_path) as store:
        app = HFAuthWSGIMiddleware(
            chat,
            source=LocalStoreSource(store),
            rules=openai_rules(served=["bob/echo", "acme/sentiment"]),
            error_format="openai",
        )
        with serve_wsgi_in_thread(app) as base:
            yield base, chat


def test_wsgi_stream_arrives_whole_and_as_it_is_made(
    wsgi_chat: tuple[str, StreamingWSGIChat], tokens: dict[str, str]
) -> None:
    base, chat = wsgi_chat
    text = "streamed  through the WSGI middleware"
    stream = client(base, tokens["bob"]).chat.completions.create(
        model="bob/echo", messages=[{"role": "user", "content": text}], stream=True
    )
    pieces = []
    for chunk in stream:
        pieces.append(chunk.choices[0].delta.content or "")
        chat.first_event_read.set()
    assert "".join(pieces) == text
    assert chat.streamed == [True]
    assert json.loads(chat.bodies[0])["messages"] == [{"role": "user", "content": text}]


def test_wsgi_chunked_body_reaches_the_app_unchanged(
    wsgi_chat: tuple[str, StreamingWSGIChat], tokens: dict[str, str]
) -> None:
    base, chat = wsgi_chat
    chat.first_event_read.set()
    body = json.dumps(
        {"model": "bob/echo", "messages": [{"role": "user", "content": "é ü 1 2 3"}]},
        ensure_ascii=False,
    ).encode()

    def chunked() -> Iterator[bytes]:  # no length: Transfer-Encoding: chunked
        yield from (body[i : i + 7] for i in range(0, len(body), 7))

    with httpx.Client(base_url=base, trust_env=False) as http:
        answer = http.post(
            "/v1/chat/completions",
            content=chunked(),
            headers={"Authorization": f"Bearer {tokens['bob']}"},
        )
    assert answer.status_code == 200
    assert chat.bodies == [body]
    assert answer.text.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize(
    ("who", "model", "content", "shown"),
    [
        pytest.param(
            "bob",
            "acme/sentiment",
            "hi",
            "Error code: 403 - read denied: model acme/sentiment is private "
            "and outside the user's namespace and orgs",
            id="403-private-model",
        ),
        pytest.param(
            "bob",
            "nobody/nothing",
            "hi",
            "Error code: 404 - The model 'nobody/nothing' does not exist or is not served here",
            id="404-unknown-model",
        ),
        pytest.param(
            "bob",
            "bob/echo",
            "x" * (1 << 20),
            "Error code: 413 - The request body is larger than 1048576 bytes",
            id="413-body-over-the-cap",
        ),
    ],
)
def test_wsgi_refusals_come_before_the_app(
    wsgi_chat: tuple[str, StreamingWSGIChat],
    tokens: dict[str, str],
    who: str,
    model: str,
    content: str,
    shown: str,
) -> None:
    base, chat = wsgi_chat
    with pytest.raises(openai.APIStatusError) as raised:
        client(base, tokens[who]).chat.completions.create(
            model=model, messages=[{"role": "user", "content": content}], stream=True
        )
    assert str(raised.value) == shown
    assert chat.bodies == []  # the app never ran


# --- the module as a server: arguments, HFAUTH_* variables, uvicorn --workers, gunicorn -----


def test_runs_as_a_script_against_a_hub(store_path: Path, tokens: dict[str, str]) -> None:
    """The issue's promise: ``--hub-url <hub> --model acme/m``; read tokens that may
    read acme/m get 200, others 403 with the reason, no token 401; /v1/models filtered."""
    port = free_port()
    with HubEmulator(LocalTokenStore(store_path)) as hub:
        command = [
            sys.executable, "examples/openai_server.py", "--hub-url", hub.url,
            "--port", str(port), "--model", "acme/m", "--model", "bob/echo",
        ]  # fmt: skip
        with serve_in_subprocess(command, port, example_env()) as base:
            answer = client(base, tokens["alice"]).chat.completions.create(
                model="acme/m", messages=[{"role": "user", "content": "yes"}]
            )
            models = {model.id for model in client(base, tokens["alice"]).models.list()}
            with pytest.raises(
                openai.PermissionDeniedError,
                match=r"read denied: .*acme/m (is private|is not found)",
            ):
                client(base, tokens["bob"]).chat.completions.create(
                    model="acme/m", messages=[{"role": "user", "content": "no"}]
                )
            with pytest.raises(openai.AuthenticationError) as missing:
                client(base, None).chat.completions.create(
                    model="acme/m", messages=[{"role": "user", "content": "no"}]
                )
    assert answer.choices[0].message.content == "yes"
    assert models == {"acme/m"}
    assert missing.value.response.headers["www-authenticate"].startswith("Bearer ")
    assert missing.value.code == "unauthorized"


def test_hub_down_is_503_in_openai_shape(
    example: ModuleType, store_path: Path, tokens: dict[str, str]
) -> None:
    """Fail closed through the glue: the Hub's 500 is a 503 with Retry-After, never a 401."""
    with HubEmulator(LocalTokenStore(store_path)) as hub:
        hub.fail_next(500, times=None)
        app = example.build_app(HubWhoamiSource(hub.url), ["bob/echo"], [])
        with serve_in_thread(app) as base, pytest.raises(openai.InternalServerError) as raised:
            client(base, tokens["bob"]).chat.completions.create(
                model="bob/echo", messages=[{"role": "user", "content": "hi"}]
            )
    assert raised.value.status_code == 503
    assert raised.value.code == "temporarily_unavailable"
    assert int(raised.value.response.headers["retry-after"]) >= 1
    assert raised.value.response.headers["x-error-code"] == "temporarily_unavailable"


def test_body_over_the_cap_is_413(url: str, tokens: dict[str, str], example: ModuleType) -> None:
    """The middleware's answer (it reads the body to find the model), before the app runs."""
    padding = "x" * example.MAX_BODY_BYTES
    with pytest.raises(openai.APIStatusError) as raised:
        client(url, tokens["bob"]).chat.completions.create(
            model="bob/echo", messages=[{"role": "user", "content": padding}]
        )
    assert raised.value.status_code == 413
    assert str(raised.value) == "Error code: 413 - The request body is larger than 1048576 bytes"
    assert raised.value.code == "payload_too_large"
    assert raised.value.type == "invalid_request_error"


@pytest.mark.parametrize(
    ("who", "model", "shown"),
    [
        pytest.param(
            "bob",
            "nobody/nothing",
            "Error code: 404 - The model 'nobody/nothing' does not exist or is not served here",
            id="404-unknown-model",
        ),
        pytest.param(
            "bob",
            "acme/sentiment",
            "Error code: 403 - read denied: model acme/sentiment is private "
            "and outside the user's namespace and orgs",
            id="403-private-model",
        ),
        pytest.param(
            None, "bob/echo", "Error code: 401 - Authentication required", id="401-no-token"
        ),
    ],
)
def test_openai_client_shows_the_message(
    url: str, tokens: dict[str, str], who: str | None, model: str, shown: str
) -> None:
    """What a person sees: the exception's text is the status and the reason, whole."""
    with pytest.raises(openai.APIStatusError) as raised:
        client(url, token_of(tokens, who)).chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}]
        )
    assert str(raised.value) == shown


def test_unknown_model_names_the_param(url: str, tokens: dict[str, str]) -> None:
    with pytest.raises(openai.NotFoundError) as raised:
        client(url, tokens["bob"]).embeddings.create(model="llama", input="x")
    assert raised.value.param == "model"
    assert raised.value.code == "model_not_found"
    assert raised.value.type == "invalid_request_error"


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        pytest.param(b"{not json", "The request body is not valid JSON", id="not-json"),
        pytest.param(b"[1, 2]", "The request body must be a JSON object", id="not-an-object"),
        # 4 KiB were enough for a 500 (RecursionError in the JSON parser).
        pytest.param(b"[" * 5000 + b"]" * 5000, "The request body nests too deeply", id="deep"),
        pytest.param(b'{"messages": []}', "The request body has no 'model' field", id="no-model"),
        pytest.param(
            b'{"model": 7}', "The 'model' field must be a non-empty string", id="model-not-text"
        ),
    ],
)
def test_body_the_rule_cannot_read_is_400(
    url: str, tokens: dict[str, str], body: bytes, reason: str
) -> None:
    with httpx.Client(base_url=url, trust_env=False) as http:
        answer = http.post(
            "/v1/chat/completions",
            content=body,
            headers={
                "Authorization": f"Bearer {tokens['bob']}",
                "Content-Type": "application/json",
            },
        )
    assert answer.status_code == 400
    assert answer.json() == {
        "error": {
            "message": reason,
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_request",
        }
    }
    assert answer.headers["x-error-message"] == reason


def test_script_refuses_a_missing_store(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.sqlite3"
    done = run_example(["examples/openai_server.py", "--store", str(missing)], example_env())
    assert done.returncode == 2
    assert f"no token store at {missing}" in done.stderr
    assert "hfauth-mw token create" in done.stderr
    assert not missing.exists()


def test_uvicorn_workers_from_environment(store_path: Path, tokens: dict[str, str]) -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "examples.openai_server:app",
        "--workers",
        "2",
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    env = example_env(HFAUTH_STORE=str(store_path), HFAUTH_MODELS="bob/echo,acme/m")
    with serve_in_subprocess(command, port, env) as base:
        bob = client(base, tokens["bob"])
        answers = [
            bob.chat.completions.create(
                model="bob/echo", messages=[{"role": "user", "content": f"call {i}"}]
            )
            .choices[0]
            .message.content
            for i in range(4)
        ]
        models = {model.id for model in bob.models.list()}
    assert answers == [f"call {i}" for i in range(4)]
    assert models == {"bob/echo"}


def test_gunicorn_uvicorn_worker(store_path: Path, tokens: dict[str, str]) -> None:
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "-k",
        "uvicorn.workers.UvicornWorker",
        "-w",
        "2",
        "-b",
        f"127.0.0.1:{port}",
        "examples.openai_server:app",
    ]
    env = example_env(HFAUTH_STORE=str(store_path))
    with serve_in_subprocess(command, port, env) as base:
        answer = client(base, tokens["bob"]).chat.completions.create(
            model="bob/echo", messages=[{"role": "user", "content": "under gunicorn"}]
        )
        with pytest.raises(openai.AuthenticationError):
            client(base, tokens["bad"]).models.list()
    assert answer.choices[0].message.content == "under gunicorn"


def test_uvicorn_without_settings_says_what_to_set() -> None:
    done = run_example(
        ["-m", "uvicorn", "examples.openai_server:app", "--port", str(free_port())],
        example_env(),
    )
    assert done.returncode != 0
    assert "set HFAUTH_HUB_URL or HFAUTH_STORE" in done.stderr


def test_environment_with_a_missing_store_is_refused(example: ModuleType, tmp_path: Path) -> None:
    missing = tmp_path / "nothing.sqlite3"
    with pytest.raises(example.SetupError, match=f"no token store at {missing}"):
        example.app_from_environment({"HFAUTH_STORE": str(missing)})
    assert not missing.exists()
