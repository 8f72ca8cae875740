"""A toy model-inference server in the HF Inference API's shapes, accepting Hugging Face tokens.

Routes (huggingface_hub's ``InferenceClient(model=f"{url}/models/{repo}")`` talks
to them unchanged):

* ``POST /models/{owner}/{name}``: ``{"inputs": text, "parameters": {...}}``;
  a text-classification model answers ``[[{"label", "score"}, ...]]``, a
  text-generation one ``[{"generated_text": ...}]``. Needs read access to the model.
* ``GET /api/models``: the served models the caller may read, as the Hub lists them.
* ``GET /api/whoami-v2``: the caller, as the token source described them.
* ``GET /health``: public.

The repository is in the path, so the middleware's path rules check it before
the app runs: ``require_read("POST /models/{owner}/{name}")``.

Run it against the Hub (any valid Hugging Face token), or a local token store::

    python examples/inference_server.py --hub-url https://huggingface.co
    TOKEN=$(hfauth-mw token create --store tokens.sqlite3 --user bob --role read)
    python examples/inference_server.py --store tokens.sqlite3
    curl -H "Authorization: Bearer $TOKEN" -d '{"inputs": "a b c"}' \\
        http://127.0.0.1:8000/models/bob/echo

or under uvicorn or gunicorn, with ``HFAUTH_HUB_URL`` or ``HFAUTH_STORE``::

    HFAUTH_STORE=tokens.sqlite3 uvicorn examples.inference_server:app --workers 4

It serves the demo models (``hfauth-mw demo`` runs a similar server with seeded
demo users): ``acme/sentiment`` (text classification), ``alice/tiny-lm`` (text
generation, words reversed), ``bob/echo`` (text generation, echo), all
private, and ``acme/public-demo`` (text classification, public).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
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
    get_request_auth,
    require_read,
)

MAX_BODY_BYTES = 1 << 20
MAX_INPUT_CHARS = 10_000


class SetupError(Exception):
    """The server cannot start with these options; the message says why, for a person."""


# --- the toy models ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Model:
    """A served model: a Hub repository id, its pipeline and what it does, its visibility."""

    id: str
    pipeline_tag: str  # text-classification | text-generation
    does: str  # sentiment | reverse | echo
    visibility: Visibility = Visibility.PRIVATE

    def run(self, text: str) -> Any:
        """The answer to one input, in the HF Inference API's shape for the pipeline."""
        if self.does == "sentiment":
            return sentiment(text)
        if self.does == "reverse":
            return [{"generated_text": " ".join(reversed(text.split()))}]
        return [{"generated_text": text}]


MODELS: tuple[Model, ...] = (
    Model("acme/sentiment", "text-classification", "sentiment"),
    Model("alice/tiny-lm", "text-generation", "reverse"),
    Model("bob/echo", "text-generation", "echo"),
    Model("acme/public-demo", "text-classification", "sentiment", Visibility.PUBLIC),
)

_POSITIVE = frozenset({"good", "great", "love", "happy", "excellent", "nice", "fast", "fun"})
_NEGATIVE = frozenset({"bad", "awful", "hate", "sad", "terrible", "slow", "broken", "boring"})


def sentiment(text: str) -> list[list[dict[str, Any]]]:
    """Labels and scores (summing to 1), best first: ``[[{"label", "score"}, ...]]``."""
    words = [word.strip(".,!?;:").lower() for word in text.split()]
    positive = sum(word in _POSITIVE for word in words)
    negative = sum(word in _NEGATIVE for word in words)
    score = (positive + 1) / (positive + negative + 2)  # Laplace: 0.5 when neither
    labels = [{"label": "POSITIVE", "score": score}, {"label": "NEGATIVE", "score": 1 - score}]
    return [sorted(labels, key=lambda label: -float(label["score"]))]


def error_response(status: int, message: str, code: str | None = None) -> JSONResponse:
    """The HF Inference API's error body for the app's own errors, with the Hub's
    X-Error-* headers (hfauth-mw answers its refusals alike: ``error_format="hub"``)."""
    headers = {"x-error-message": re.sub(r"[^\x20-\x7e]", "?", message)[:500]}
    if code:
        headers["x-error-code"] = code
    return JSONResponse({"error": message}, status, headers=headers)


# --- the application -----------------------------------------------------------------------


class BadInput(Exception):
    """The request cannot be run as sent (400, the reason for the caller)."""


def build_app(source: IntrospectionSource, models: tuple[Model, ...] = MODELS) -> ASGIApp:
    """The inference server for ``models``, guarded by HFAuthMiddleware."""
    served = {model.id: model for model in models}

    def visibility(repo: Repo) -> Visibility:
        # What only the server knows: which of its models are public.
        model = served.get(repo.id) if repo.type == "model" else None
        return model.visibility if model else Visibility.PRIVATE

    async def infer(request: Request) -> Response:
        # The middleware's rule has already checked read access to this repository.
        model_id = f"{request.path_params['owner']}/{request.path_params['name']}"
        model = served.get(model_id)
        if model is None:
            return error_response(404, f"Model {model_id} does not exist", "RepoNotFound")
        inputs = await _inputs(request)
        if isinstance(inputs, str):
            return JSONResponse(model.run(inputs))
        return JSONResponse([model.run(text)[0] for text in inputs])

    async def list_models(request: Request) -> Response:
        readable = await get_request_auth(request).areadable(served)
        return JSONResponse(
            [
                {
                    "id": repo.id,
                    "pipeline_tag": served[repo.id].pipeline_tag,
                    "private": served[repo.id].visibility is not Visibility.PUBLIC,
                }
                for repo in readable
            ]
        )

    async def whoami(request: Request) -> Response:
        return JSONResponse(get_request_auth(request).principal.to_dict())

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def bad_input(request: Request, error: Exception) -> Response:
        return error_response(400, str(error))

    app = Starlette(
        routes=[
            Route("/health", health),
            Route("/api/whoami-v2", whoami),
            Route("/api/models", list_models),
            Route("/models/{owner}/{name}", infer, methods=["POST"]),
        ],
        exception_handlers={BadInput: bad_input},
    )
    # Default deny: every path but /health needs a valid token; the rule checks the
    # model in the path. GET /api/* need any valid token. Refusals go out in the
    # Hub's shape, with X-Error-Message (what huggingface_hub shows).
    app.add_middleware(
        HFAuthMiddleware,
        source=source,
        public_paths=["/health"],
        rules=[require_read("POST /models/{owner}/{name}")],
        error_format="hub",
        policy=AccessPolicy(visibility=visibility),
    )
    return app


async def _inputs(request: Request) -> str | list[str]:
    """The body's ``inputs``: a text or a list of texts (``parameters`` are accepted, unused)."""
    size, chunks = 0, []
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BadInput(f"the request body is over {MAX_BODY_BYTES} bytes")
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks))
    except ValueError:
        raise BadInput('send JSON {"inputs": "some text"}') from None
    inputs = body.get("inputs") if isinstance(body, dict) else None
    texts: list[str] = [inputs] if isinstance(inputs, str) else []
    if isinstance(inputs, list) and all(isinstance(text, str) for text in inputs):
        texts = inputs
    if not texts or any(len(text) > MAX_INPUT_CHARS for text in texts):
        raise BadInput(
            f'send JSON {{"inputs": "some text"}} (or a list of texts), '
            f"each at most {MAX_INPUT_CHARS} characters"
        )
    return texts[0] if isinstance(inputs, str) else texts


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
    """The app for ``HFAUTH_HUB_URL`` or ``HFAUTH_STORE`` (raises SetupError)."""
    try:
        source = token_source(environ.get("HFAUTH_HUB_URL"), environ.get("HFAUTH_STORE"))
    except SetupError as error:
        raise SetupError(f"{error} (set HFAUTH_HUB_URL or HFAUTH_STORE)") from None
    return build_app(source)


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


#: For ``uvicorn examples.inference_server:app`` and gunicorn: options from HFAUTH_*.
app = FromEnvironment(app_from_environment)


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--hub-url", metavar="URL", help="check tokens with {URL}/api/whoami-v2")
    where.add_argument("--store", metavar="PATH", help="check tokens against a local store")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    try:
        server = build_app(token_source(args.hub_url, args.store))
    except SetupError as error:
        parser.error(str(error))
    print(f"serving {', '.join(m.id for m in MODELS)} on http://{args.host}:{args.port}")
    uvicorn.run(server, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
