"""A toy model server in FastAPI that accepts Hugging Face access tokens.

Run it against a local token store (no network)::

    TOKEN=$(.venv/bin/hfauth-mw token create --store tokens.sqlite3 --user alice \\
        --role write --org acme:write)
    .venv/bin/python examples/fastapi_app.py --store tokens.sqlite3
    curl -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
        -d '{"inputs": "hello there"}' http://127.0.0.1:8003/v1/models/acme/sentiment/infer

or against the real Hub::

    .venv/bin/python examples/fastapi_app.py --hub-url https://huggingface.co

Open http://127.0.0.1:8003/docs: each route shows its lock and what it needs,
and "Authorize" takes a token (Bearer) or any user name plus the token (Basic).

Both layers run: the ASGI middleware denies by default (everything but
``/health``, ``/docs`` and ``/openapi.json`` needs a token), and the
dependencies state each route's needs, reusing the middleware's answer (one
introspection per request). They share one authenticator, hence one cache.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Annotated, Any

import uvicorn
from fastapi import FastAPI, HTTPException, Security
from pydantic import BaseModel

from hfauth_mw import (
    AccessPolicy,
    Authenticator,
    HFAuthMiddleware,
    HubWhoamiSource,
    IntrospectionSource,
    LocalStoreSource,
    LocalTokenStore,
    Repo,
    RequestAuth,
    Visibility,
)
from hfauth_mw.fastapi import RequireRepo, RequireToken, install

#: The toy models: id -> visibility. Replace with your own registry.
MODELS = {
    "acme/sentiment": Visibility.PRIVATE,
    "alice/tiny-lm": Visibility.PRIVATE,
    "acme/public-demo": Visibility.PUBLIC,
}

Caller = Annotated[RequestAuth, Security(RequireToken())]
CanRead = Annotated[RequestAuth, Security(RequireRepo("read"))]
CanWrite = Annotated[RequestAuth, Security(RequireRepo("write"))]


class Inputs(BaseModel):
    inputs: str


def visibility(repo: Repo) -> Visibility:
    return MODELS.get(repo.id, Visibility.PRIVATE) if repo.type == "model" else Visibility.PRIVATE


def create_app(source: IntrospectionSource) -> FastAPI:
    app = FastAPI(title="hfauth-mw toy model server")
    weights: dict[str, int] = dict.fromkeys(MODELS, 0)
    authenticator = Authenticator(source)
    policy = AccessPolicy(visibility=visibility)
    install(app, authenticator=authenticator, policy=policy)
    app.add_middleware(
        HFAuthMiddleware,
        authenticator=authenticator,
        public_paths=["/health", "/docs", "/docs/*", "/openapi.json"],
        policy=policy,
        method_policy=False,  # the dependencies say what each route needs
    )

    def known_model(owner: str, name: str) -> str:
        model = f"{owner}/{name}"
        if model not in weights:
            raise HTTPException(404, f"no model {model} here")
        return model

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/whoami")
    async def whoami(auth: Caller) -> dict[str, Any]:
        return {"name": auth.principal.name, "token_role": auth.principal.token_role}

    @app.get("/v1/models")
    async def list_models(auth: Caller) -> dict[str, list[str]]:
        return {"models": [repo.id for repo in await auth.areadable(MODELS)]}

    @app.post("/v1/models/{owner}/{name}/infer")
    async def infer(owner: str, name: str, body: Inputs, auth: CanRead) -> dict[str, Any]:
        model = known_model(owner, name)
        outputs = " ".join(reversed(body.inputs[:10_000].split()))
        return {"model": model, "revision": weights[model], "outputs": outputs}

    @app.put("/v1/models/{owner}/{name}")
    async def upload(owner: str, name: str, auth: CanWrite) -> dict[str, Any]:
        model = known_model(owner, name)
        weights[model] += 1
        return {"model": model, "revision": weights[model], "updated": True}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--hub-url", metavar="URL", help="check tokens with {URL}/api/whoami-v2")
    where.add_argument("--store", metavar="PATH", help="check tokens against a local store")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    args = parser.parse_args(argv)
    source: IntrospectionSource
    if args.hub_url:
        source = HubWhoamiSource(args.hub_url)
    elif Path(args.store).is_file():
        source = LocalStoreSource(LocalTokenStore(args.store))
    else:  # a mistyped path would become a new, empty store: every token a 401
        parser.error(f"no token store at {args.store} (create one: hfauth-mw token create ...)")
    uvicorn.run(create_app(source), host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
