"""A text-generation server in TGI's API that accepts Hugging Face access tokens.

Routes, in the shapes of Text Generation Inference (huggingface_hub's
``InferenceClient(model=URL).text_generation(...)`` talks to it unchanged):

* ``POST /generate``: ``{"inputs", "parameters"}`` -> ``{"generated_text", "details"?}``;
* ``POST /generate_stream``: the same as server-sent events, one token each,
  the last one carrying ``generated_text`` and ``details``;
* ``POST /``: either of them, by the body's ``"stream"`` (what the client calls);
* ``GET /info``: the served model and limits;
* ``GET /health``: public.

Like TGI, it serves one model; every route but ``/health`` needs a token that
may read it. The model is a deterministic echo: it generates its input back,
word by word, cut at ``max_new_tokens`` words.

Run it::

    python examples/tgi_server.py --store tokens.sqlite3 --model bob/echo --port 8080
    python examples/tgi_server.py --hub-url https://huggingface.co --model acme/m
    HFAUTH_STORE=tokens.sqlite3 HFAUTH_MODELS=bob/echo uvicorn examples.tgi_server:app --workers 4

Variables: ``HFAUTH_HUB_URL`` or ``HFAUTH_STORE`` (one of them), ``HFAUTH_MODELS``
(the model, default ``bob/echo``), ``HFAUTH_PUBLIC_MODELS`` (the model, public).

Security caveat: the rules name the routes that read the model; a route added
without one needs only a valid token (GET, POST) or a token that can write
(PUT, PATCH, DELETE), not access to the model.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import AsyncIterator, Callable, Mapping
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
    Visibility,
    require_read,
    tgi_rules,
)

#: A demo model (as ``hfauth-mw demo`` serves it): served when none is named.
DEMO_MODEL = "bob/echo"
MAX_BODY_BYTES = 1 << 20
MAX_INPUT_WORDS = 4096
DEFAULT_MAX_NEW_TOKENS = 100


class SetupError(Exception):
    """The server cannot start with these options; the message says why, for a person."""


def error_response(status: int, message: str) -> JSONResponse:
    """TGI's body for the model's own errors (hfauth-mw answers its refusals as the
    Hub does, ``{"error": reason}``: ``error_format="hub"``)."""
    return JSONResponse({"error": message, "error_type": "validation"}, status)


# --- the echo model ----------------------------------------------------------------------


class ValidationError(Exception):
    """TGI's 422 ``validation`` error: the request cannot be run as sent."""

    status = 422


class BodyTooLarge(ValidationError):
    """A body over MAX_BODY_BYTES (413, as TGI's router answers it)."""

    status = 413


def tokens_of(text: str) -> list[str]:
    """``text`` in tokens: a word and the space before it; they join back to it."""
    return re.findall(r"\s*\S+", text)


def parse_request(body: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(inputs, parameters)`` of a TGI request, validated as TGI does (422)."""
    inputs, parameters = body.get("inputs"), body.get("parameters") or {}
    if not isinstance(inputs, str) or not inputs:
        raise ValidationError("`inputs` must be a non-empty string")
    if len(tokens_of(inputs)) > MAX_INPUT_WORDS:
        raise ValidationError(f"`inputs` must have less than {MAX_INPUT_WORDS} tokens")
    if not isinstance(parameters, dict):
        raise ValidationError("`parameters` must be an object")
    limit = parameters.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValidationError("`max_new_tokens` must be strictly positive")
    return inputs, parameters


def generate(inputs: str, parameters: Mapping[str, Any]) -> tuple[list[str], str]:
    """The echo model: ``(tokens, finish_reason)``, TGI's finish reasons."""
    tokens = tokens_of(inputs)
    limit = parameters.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
    stops = [s for s in parameters.get("stop") or () if isinstance(s, str) and s]
    out: list[str] = []
    for token in tokens[:limit]:
        out.append(token)
        if any("".join(out).endswith(stop) for stop in stops):
            return out, "stop_sequence"
    return out, ("length" if len(tokens) > limit else "eos_token")


def _token(index: int, text: str) -> dict[str, Any]:
    return {"id": index, "text": text, "logprob": 0.0, "special": False}


def _details(tokens: list[str], finish: str, with_tokens: bool) -> dict[str, Any]:
    details: dict[str, Any] = {
        "finish_reason": finish,
        "generated_tokens": len(tokens),
        "seed": None,
    }
    if with_tokens:
        details["prefill"] = []
        details["tokens"] = [_token(i, t) for i, t in enumerate(tokens)]
    return details


# --- the application ---------------------------------------------------------------------


def build_app(
    source: IntrospectionSource, model: str = DEMO_MODEL, public: bool = False
) -> ASGIApp:
    """The TGI-style server for ``model``, private unless ``public``."""
    model_id = Repo.parse(model).id
    served = Visibility.PUBLIC if public else Visibility.PRIVATE

    def visibility(repo: Repo) -> Visibility:
        return served if repo.type == "model" and repo.id == model_id else Visibility.PRIVATE

    async def body_of(request: Request) -> dict[str, Any]:
        """The JSON body, at most MAX_BODY_BYTES (the middleware has checked the caller:
        a rule with one fixed model needs no body, so the cap is the app's)."""
        size, chunks = 0, []
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise BodyTooLarge(f"the request body is over {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
        try:
            body = json.loads(b"".join(chunks))
        except ValueError:
            raise ValidationError("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise ValidationError("the request body must be a JSON object")
        return body

    async def generate_once(request: Request) -> Response:
        return _generated(*parse_request(await body_of(request)))

    async def generate_stream(request: Request) -> Response:
        return _streamed(*parse_request(await body_of(request)))

    async def compat(request: Request) -> Response:
        # TGI's POST /: /generate or /generate_stream by the body's "stream".
        body = await body_of(request)
        inputs, parameters = parse_request(body)
        if body.get("stream") is True:
            return _streamed(inputs, parameters)
        return _generated(inputs, parameters, as_list=True)

    async def info(request: Request) -> Response:
        return JSONResponse(
            {
                "model_id": model_id,
                "model_sha": None,
                "model_pipeline_tag": "text-generation",
                "max_input_tokens": MAX_INPUT_WORDS,
                "max_total_tokens": MAX_INPUT_WORDS + DEFAULT_MAX_NEW_TOKENS,
                "max_best_of": 1,
                "max_stop_sequences": 4,
                "router": "hfauth-mw tgi example",
                "version": "0",
            }
        )

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    async def validation_error(request: Request, error: Exception) -> Response:
        assert isinstance(error, ValidationError)
        return error_response(error.status, str(error))

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/info", info),
            Route("/", compat, methods=["POST"]),
            Route("/generate", generate_once, methods=["POST"]),
            Route("/generate_stream", generate_stream, methods=["POST"]),
        ],
        exception_handlers={ValidationError: validation_error},
    )
    # Every route but /health reads the one model: refusals before the app runs,
    # in the Hub's shape with X-Error-Message (what huggingface_hub shows).
    app.add_middleware(
        HFAuthMiddleware,
        source=source,
        public_paths=["/health"],
        rules=[*tgi_rules(model_id), require_read("GET /info", repo=model_id)],
        error_format="hub",
        policy=AccessPolicy(visibility=visibility),
    )
    return app


def _generated(inputs: str, parameters: Mapping[str, Any], as_list: bool = False) -> Response:
    tokens, finish = generate(inputs, parameters)
    text = "".join(tokens)
    if parameters.get("return_full_text") is True:
        text = inputs + text
    answer: dict[str, Any] = {"generated_text": text}
    if parameters.get("details") is True:
        answer["details"] = _details(tokens, finish, with_tokens=True)
    # TGI's POST / answers a list of one; /generate the object itself.
    return JSONResponse([answer] if as_list else answer)


def _streamed(inputs: str, parameters: Mapping[str, Any]) -> Response:
    tokens, finish = generate(inputs, parameters)

    async def events() -> AsyncIterator[bytes]:
        for index, token in enumerate(tokens):
            last = index == len(tokens) - 1
            event = {
                "index": index + 1,
                "token": _token(index, token),
                "top_tokens": None,
                "generated_text": "".join(tokens) if last else None,
                "details": _details(tokens, finish, with_tokens=False) if last else None,
            }
            yield f"data:{json.dumps(event)}\n\n".encode()

    return StreamingResponse(events(), media_type="text/event-stream")


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


def app_from_environment(environ: Mapping[str, str]) -> ASGIApp:
    """The app for ``HFAUTH_HUB_URL`` / ``HFAUTH_STORE`` and ``HFAUTH_MODELS`` or
    ``HFAUTH_PUBLIC_MODELS`` (one model; raises SetupError, naming the variables)."""
    try:
        source = token_source(environ.get("HFAUTH_HUB_URL"), environ.get("HFAUTH_STORE"))
    except SetupError as error:
        raise SetupError(f"{error} (set HFAUTH_HUB_URL or HFAUTH_STORE)") from None
    private = [m.strip() for m in environ.get("HFAUTH_MODELS", "").split(",") if m.strip()]
    public = [m.strip() for m in environ.get("HFAUTH_PUBLIC_MODELS", "").split(",") if m.strip()]
    if len(private) + len(public) > 1:
        raise SetupError("a TGI server serves one model: name one in HFAUTH_MODELS")
    try:
        return build_app(source, (private or public or [DEMO_MODEL])[0], public=bool(public))
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


#: For ``uvicorn examples.tgi_server:app`` and gunicorn: options from HFAUTH_*.
app = FromEnvironment(app_from_environment)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--hub-url", metavar="URL", help="check tokens with {URL}/api/whoami-v2")
    where.add_argument("--store", metavar="PATH", help="check tokens against a local store")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--model", default=DEMO_MODEL, metavar="REPO", help="the model served")
    parser.add_argument("--public", action="store_true", help="the model is public")
    args = parser.parse_args(argv)
    try:
        server = build_app(token_source(args.hub_url, args.store), args.model, args.public)
    except (SetupError, ValueError) as error:
        parser.error(str(error))
    print(f"serving {args.model} on http://{args.host}:{args.port}")
    uvicorn.run(server, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
