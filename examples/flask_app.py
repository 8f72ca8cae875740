"""A toy model server in Flask that accepts Hugging Face access tokens.

Run it against a local token store (no network)::

    TOKEN=$(.venv/bin/hfauth-mw token create --store tokens.sqlite3 --user alice \\
        --role write --org acme:write)
    .venv/bin/python examples/flask_app.py --store tokens.sqlite3
    curl -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
        -d '{"inputs": "hello there"}' http://127.0.0.1:8001/v1/models/acme/sentiment/infer

or against the real Hub (any valid token works; writes need a write token whose
user may write the repository)::

    .venv/bin/python examples/flask_app.py --hub-url https://huggingface.co

Reading a model (``POST .../infer``) needs read access to the repository;
replacing its toy weights (``PUT /v1/models/<owner>/<name>``) needs write access.
The wiring to copy::

    app.config["HFAUTH_SOURCE"] = source               # or HFAUTH_HUB_URL
    app.config["HFAUTH_PUBLIC_PATHS"] = ["/health"]    # everything else needs a token
    hfauth = HFAuth(app)                               # wraps app.wsgi_app

    @app.post("/v1/models/<owner>/<name>/infer")
    @hfauth.require_repo("read")
    def infer(owner, name): ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flask import Flask, request

from hfauth_mw import (
    AccessPolicy,
    HubWhoamiSource,
    IntrospectionSource,
    LocalStoreSource,
    LocalTokenStore,
    Repo,
    Visibility,
)
from hfauth_mw.flask import HFAuth, current_auth, current_principal

#: The toy models: id -> visibility. Replace with your own registry.
MODELS = {
    "acme/sentiment": Visibility.PRIVATE,
    "alice/tiny-lm": Visibility.PRIVATE,
    "acme/public-demo": Visibility.PUBLIC,
}


def create_app(source: IntrospectionSource) -> Flask:
    app = Flask(__name__)
    weights: dict[str, dict[str, Any]] = {model: {"revision": 0} for model in MODELS}

    def visibility(repo: Repo) -> Visibility:
        return (
            MODELS.get(repo.id, Visibility.PRIVATE) if repo.type == "model" else Visibility.PRIVATE
        )

    app.config.update(
        HFAUTH_SOURCE=source,
        HFAUTH_PUBLIC_PATHS=["/health"],
        HFAUTH_POLICY=AccessPolicy(visibility=visibility),
        HFAUTH_METHOD_POLICY=False,  # each view says what it needs
    )
    hfauth = HFAuth(app)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/whoami")
    def whoami() -> dict[str, Any]:
        return {"name": current_principal.name, "token_role": current_principal.token_role}

    @app.get("/v1/models")
    def list_models() -> dict[str, Any]:
        readable = [m for m in MODELS if current_auth.can_read(f"model:{m}")]
        return {"models": readable}

    @app.post("/v1/models/<owner>/<name>/infer")
    @hfauth.require_repo("read")
    def infer(owner: str, name: str) -> tuple[dict[str, Any], int] | dict[str, Any]:
        model = f"{owner}/{name}"
        if model not in weights:
            return {"error": "not_found", "error_description": f"no model {model} here"}, 404
        body = request.get_json(silent=True) or {}
        text = str(body.get("inputs", ""))[:10_000]
        return {
            "model": model,
            "revision": weights[model]["revision"],
            "outputs": " ".join(reversed(text.split())),
        }

    @app.put("/v1/models/<owner>/<name>")
    @hfauth.require_repo("write")
    def upload(owner: str, name: str) -> tuple[dict[str, Any], int] | dict[str, Any]:
        model = f"{owner}/{name}"
        if model not in weights:
            return {"error": "not_found", "error_description": f"no model {model} here"}, 404
        weights[model] = {"revision": weights[model]["revision"] + 1}
        return {"model": model, "revision": weights[model]["revision"], "updated": True}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--hub-url", metavar="URL", help="check tokens with {URL}/api/whoami-v2")
    where.add_argument("--store", metavar="PATH", help="check tokens against a local store")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    source: IntrospectionSource
    if args.hub_url:
        source = HubWhoamiSource(args.hub_url)
    elif Path(args.store).is_file():
        source = LocalStoreSource(LocalTokenStore(args.store))
    else:  # a mistyped path would become a new, empty store: every token a 401
        parser.error(f"no token store at {args.store} (create one: hfauth-mw token create ...)")
    # Werkzeug's development server, threaded; use gunicorn (gthread) in production.
    create_app(source).run(host=args.host, port=args.port, threaded=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
