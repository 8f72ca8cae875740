"""An OpenAI-compatible inference server that accepts Hugging Face access tokens.

Routes, in OpenAI's shapes (the ``openai`` client and huggingface_hub's
``InferenceClient`` talk to it unchanged):

* ``POST /v1/chat/completions`` (``"stream": true`` answers server-sent events
  ending with ``data: [DONE]``), ``POST /v1/completions``, ``POST /v1/embeddings``:
  the caller needs read access to the model named in the body's ``model``;
* ``GET /v1/models``: the served models the caller may read;
  ``GET /v1/models/{owner}/{name}``: one of them;
* ``GET /health``: public.

The model is a deterministic echo (chat answers the last user message back,
embeddings are derived from a hash of the text), so every answer can be checked.

Run it against the Hub, or a local token store (no network)::

    python examples/openai_server.py --hub-url https://huggingface.co --model acme/m
    TOKEN=$(hfauth-mw token create --store tokens.sqlite3 --user bob --role read)
    python examples/openai_server.py --store tokens.sqlite3 --port 8000
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/v1/models

or under uvicorn or gunicorn, with the options in ``HFAUTH_*`` variables::

    HFAUTH_STORE=tokens.sqlite3 HFAUTH_MODELS=bob/echo,acme/m \\
        uvicorn examples.openai_server:app --workers 4
    HFAUTH_HUB_URL=https://huggingface.co \\
        gunicorn -k uvicorn.workers.UvicornWorker -w 4 examples.openai_server:app

Variables: ``HFAUTH_HUB_URL`` or ``HFAUTH_STORE`` (one of them),
``HFAUTH_MODELS`` and ``HFAUTH_PUBLIC_MODELS`` (comma-separated repository ids;
without either, the demo models). Served models are private unless listed as
public: a token reads a private model when its user or one of their orgs owns it
(or a fine-grained token names it), as on the Hub.

Security caveats: the middleware checks the model the body names on the three
inference routes (``openai_rules``); any other route needs only a valid token
for GET and POST (and one that can write for PUT, PATCH, DELETE), so a new route
that serves a model must get a rule, or check in the route as
``GET /v1/models/{owner}/{name}`` does.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import re
import struct
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from hfauth_mw import (
    AccessPolicy,
    HFAuthMiddleware,
    HubWhoamiSource,
    IntrospectionSource,
    LocalStoreSource,
    LocalTokenStore,
    Repo,
    UnknownModel,
    Visibility,
    get_request_auth,
    openai_rules,
)

#: The demo's models (as ``hfauth-mw demo`` serves them): served when none are named.
DEMO_MODELS = ("acme/sentiment", "alice/tiny-lm", "bob/echo")
DEMO_PUBLIC_MODELS = ("acme/public-demo",)
#: Largest request body the middleware reads (413 past it, before the app runs).
MAX_BODY_BYTES = 1 << 20
EMBEDDING_SIZE = 16


class SetupError(Exception):
    """The server cannot start with these options; the message says why, for a person."""


def error_response(status: int, message: str, param: str | None = None) -> JSONResponse:
    """OpenAI's error body, for the app's own errors (hfauth-mw answers its refusals
    in the same shape: ``error_format="openai"``)."""
    error = {"message": message, "type": "invalid_request_error", "param": param, "code": None}
    return JSONResponse({"error": error}, status)


# --- the echo model ----------------------------------------------------------------------


def pieces(text: str) -> list[str]:
    """``text`` in stream pieces (a word and the space before it); they join back to it."""
    return re.findall(r"\s*\S+", text) or [text]


def count_tokens(text: str) -> int:
    return len(text.split())


def generate(prompt: str, max_tokens: int | None) -> tuple[str, str]:
    """The echo model: ``(text, finish_reason)``, the prompt cut to ``max_tokens`` words."""
    words = pieces(prompt)
    if max_tokens is not None and len(words) > max_tokens:
        return "".join(words[:max_tokens]).lstrip(), "length"
    return prompt.strip(), "stop"


def embed(text: str) -> list[float]:
    """A deterministic unit vector derived from SHA-256 of ``text``."""
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    raw = [(byte - 127.5) / 127.5 for byte in digest[:EMBEDDING_SIZE]]
    norm = sum(x * x for x in raw) ** 0.5 or 1.0
    return [x / norm for x in raw]


# --- the application ---------------------------------------------------------------------


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param = message, param


def build_app(
    source: IntrospectionSource,
    models: Sequence[str] = DEMO_MODELS,
    public_models: Sequence[str] = DEMO_PUBLIC_MODELS,
) -> ASGIApp:
    """The OpenAI-compatible server for ``models`` (private) and ``public_models``."""
    served: dict[str, Visibility] = {Repo.parse(m).id: Visibility.PRIVATE for m in models}
    served.update({Repo.parse(m).id: Visibility.PUBLIC for m in public_models})

    def visibility(repo: Repo) -> Visibility:
        # What only the server knows: which of its models are public.
        return (
            served.get(repo.id, Visibility.PRIVATE) if repo.type == "model" else Visibility.PRIVATE
        )

    async def chat_completions(request: Request) -> Response:
        # The middleware has checked the body: JSON, a served "model" the caller may read.
        body = await request.json()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list", "messages")
        prompt = " ".join(_content(m) for m in messages)
        last_user = next((_content(m) for m in reversed(messages) if m.get("role") == "user"), "")
        text, finish = generate(last_user, _max_tokens(body))
        usage = _usage(prompt, text)
        meta = _meta("chatcmpl", body["model"], "chat.completion")
        if body.get("stream") is True:
            chunks = _chat_chunks(meta, text, finish, usage, _include_usage(body))
            return StreamingResponse(_sse(chunks), media_type="text/event-stream")
        message = {"role": "assistant", "content": text}
        choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
        return JSONResponse({**meta, "choices": [choice], "usage": usage})

    async def completions(request: Request) -> Response:
        body = await request.json()
        prompts = body.get("prompt")
        if isinstance(prompts, str):
            prompts = [prompts]
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise BadRequest("prompt must be a string or a list of strings", "prompt")
        outputs = [generate(p, _max_tokens(body)) for p in prompts]
        usage = _usage(" ".join(prompts), " ".join(text for text, _ in outputs))
        meta = _meta("cmpl", body["model"], "text_completion")
        if body.get("stream") is True:
            chunks = _completion_chunks(meta, outputs, usage, _include_usage(body))
            return StreamingResponse(_sse(chunks), media_type="text/event-stream")
        choices = [
            {"index": i, "text": text, "finish_reason": finish, "logprobs": None}
            for i, (text, finish) in enumerate(outputs)
        ]
        return JSONResponse({**meta, "choices": choices, "usage": usage})

    async def embeddings(request: Request) -> Response:
        body = await request.json()
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(i, str) for i in inputs):
            raise BadRequest("input must be a string or a list of strings", "input")
        as_base64 = body.get("encoding_format") == "base64"  # the openai client's default
        data = []
        for index, text in enumerate(inputs):
            vector: list[float] | str = embed(text)
            if as_base64:
                packed = struct.pack(f"<{len(vector)}f", *vector)
                vector = base64.b64encode(packed).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": vector})
        tokens = sum(count_tokens(text) for text in inputs)
        usage = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse(
            {"object": "list", "data": data, "model": body["model"], "usage": usage}
        )

    async def list_models(request: Request) -> Response:
        readable = await get_request_auth(request).areadable(served)
        return JSONResponse({"object": "list", "data": [_model_card(r.id) for r in readable]})

    async def one_model(request: Request) -> Response:
        model = f"{request.path_params['owner']}/{request.path_params['name']}"
        if model not in served:  # as the body rules answer: 404 first, then 403
            raise UnknownModel(f"The model {model!r} does not exist or is not served here")
        await get_request_auth(request).arequire(model, "read")
        return JSONResponse(_model_card(model))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def bad_request(request: Request, error: Exception) -> Response:
        assert isinstance(error, BadRequest)
        return error_response(400, error.message, error.param)

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/v1/chat/completions", chat_completions, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/embeddings", embeddings, methods=["POST"]),
            Route("/v1/models", list_models),
            Route("/v1/models/{owner}/{name}", one_model),
        ],
        exception_handlers={BadRequest: bad_request},
    )
    # Every path but /health needs a valid token. The inference routes read the model
    # the JSON body names: unknown is 404 model_not_found, unreadable 403, a body over
    # max_body_bytes 413, all before the app runs, in OpenAI's error shape.
    app.add_middleware(
        HFAuthMiddleware,
        source=source,
        public_paths=["/health"],
        rules=openai_rules(served=list(served)),
        error_format="openai",
        max_body_bytes=MAX_BODY_BYTES,
        policy=AccessPolicy(visibility=visibility),
    )
    return app


def _content(message: object) -> str:
    """A chat message's text (a string, or OpenAI's list of text parts)."""
    if not isinstance(message, dict):
        raise BadRequest("each message must be an object", "messages")
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"] for part in content if isinstance(part, dict) and "text" in part
        )
    return ""


def _max_tokens(body: Mapping[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest("max_tokens must be a positive integer", "max_tokens")
    return value


def _include_usage(body: Mapping[str, Any]) -> bool:
    options = body.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def _usage(prompt: str, completion: str) -> dict[str, int]:
    prompt_tokens, completion_tokens = count_tokens(prompt), count_tokens(completion)
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def _meta(prefix: str, model: str, kind: str) -> dict[str, Any]:
    return {
        "id": f"{prefix}-{os.urandom(12).hex()}",
        "object": kind,
        "created": int(time.time()),
        "model": model,
    }


def _model_card(model: str) -> dict[str, Any]:
    return {"id": model, "object": "model", "created": 0, "owned_by": model.split("/")[0]}


def _chat_chunks(
    meta: Mapping[str, Any], text: str, finish: str, usage: Mapping[str, int], with_usage: bool
) -> Iterable[dict[str, Any]]:
    chunk = {**meta, "object": "chat.completion.chunk"}

    def choice(delta: dict[str, str], finish_reason: str | None = None) -> dict[str, Any]:
        return {**chunk, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    yield choice({"role": "assistant", "content": ""})
    for piece in pieces(text):
        yield choice({"content": piece})
    yield choice({}, finish)
    if with_usage:
        yield {**chunk, "choices": [], "usage": usage}


def _completion_chunks(
    meta: Mapping[str, Any],
    outputs: Sequence[tuple[str, str]],
    usage: Mapping[str, int],
    with_usage: bool,
) -> Iterable[dict[str, Any]]:
    for index, (text, finish) in enumerate(outputs):
        for piece in pieces(text):
            yield {**meta, "choices": [_text_choice(index, piece, None)]}
        yield {**meta, "choices": [_text_choice(index, "", finish)]}
    if with_usage:
        yield {**meta, "choices": [], "usage": usage}


def _text_choice(index: int, text: str, finish: str | None) -> dict[str, Any]:
    return {"index": index, "text": text, "finish_reason": finish, "logprobs": None}


async def _sse(chunks: Iterable[dict[str, Any]]) -> AsyncIterator[bytes]:
    """Server-sent events as OpenAI sends them: one ``data:`` line per chunk, then [DONE]."""
    for chunk in chunks:
        yield f"data: {json.dumps(chunk)}\n\n".encode()
    yield b"data: [DONE]\n\n"


# --- configuration: arguments or HFAUTH_* variables ---------------------------------------


def token_source(hub_url: str | None, store: str | None) -> IntrospectionSource:
    """The Hub at ``hub_url``, or the local store at ``store`` (which must exist)."""
    if hub_url and store:
        raise SetupError("give a Hub URL or a token store, not both")
    if hub_url:
        return HubWhoamiSource(hub_url)
    if store:
        if not Path(store).is_file():
            raise SetupError(
                f"no token store at {store} (create one: "
                f"hfauth-mw token create --store {store} --user NAME --role read)"
            )
        return LocalStoreSource(LocalTokenStore(store))
    raise SetupError("say where tokens are checked: a Hub URL or a token store")


def _split(text: str | None) -> list[str]:
    return [item.strip() for item in (text or "").split(",") if item.strip()]


def app_from_environment(environ: Mapping[str, str]) -> ASGIApp:
    """The app for ``HFAUTH_HUB_URL`` / ``HFAUTH_STORE``, ``HFAUTH_MODELS``,
    ``HFAUTH_PUBLIC_MODELS`` (raises SetupError, naming the variables)."""
    try:
        source = token_source(environ.get("HFAUTH_HUB_URL"), environ.get("HFAUTH_STORE"))
    except SetupError as error:
        raise SetupError(f"{error} (set HFAUTH_HUB_URL or HFAUTH_STORE)") from None
    models = _split(environ.get("HFAUTH_MODELS"))
    public = _split(environ.get("HFAUTH_PUBLIC_MODELS"))
    if not models and not public:
        models, public = list(DEMO_MODELS), list(DEMO_PUBLIC_MODELS)
    try:
        return build_app(source, models, public)
    except ValueError as error:
        raise SetupError(f"HFAUTH_MODELS: {error}") from None


class FromEnvironment:
    """An ASGI app built from ``HFAUTH_*`` variables when the server starts it
    (in each worker), not at import: importing this module never fails, and a
    bad setting stops start-up with its reason instead of a traceback."""

    def __init__(self, build: Callable[[Mapping[str, str]], ASGIApp]) -> None:
        self._build = build
        self._app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._app is None:
            try:
                self._app = self._build(os.environ)
            except SetupError as error:
                if scope["type"] != "lifespan":
                    raise
                await receive()  # lifespan.startup
                await send({"type": "lifespan.startup.failed", "message": str(error)})
                return
        await self._app(scope, receive, send)


#: For ``uvicorn examples.openai_server:app`` and gunicorn: options from HFAUTH_*.
app = FromEnvironment(app_from_environment)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--hub-url", metavar="URL", help="check tokens with {URL}/api/whoami-v2")
    where.add_argument("--store", metavar="PATH", help="check tokens against a local store")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--model", action="append", default=[], metavar="REPO", help="serve REPO (private)"
    )
    parser.add_argument(
        "--public-model", action="append", default=[], metavar="REPO", help="serve REPO (public)"
    )
    args = parser.parse_args(argv)
    models, public = args.model, args.public_model
    if not models and not public:
        models, public = list(DEMO_MODELS), list(DEMO_PUBLIC_MODELS)
    try:
        server = build_app(token_source(args.hub_url, args.store), models, public)
    except (SetupError, ValueError) as error:
        parser.error(str(error))
    print(f"serving {', '.join([*models, *public])} on http://{args.host}:{args.port}/v1")
    uvicorn.run(server, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
