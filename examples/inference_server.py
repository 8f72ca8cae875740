"""A toy model-inference server that accepts Hugging Face access tokens.

Run it against the real Hub (any valid Hugging Face token works)::

    python examples/inference_server.py --hub-url https://huggingface.co
    curl -H "Authorization: Bearer $HF_TOKEN" http://127.0.0.1:8000/v1/whoami

or against a local token store (no network; create tokens with the CLI)::

    TOKEN=$(hfauth-mw token create --store tokens.sqlite3 --user alice --role write)
    python examples/inference_server.py --store tokens.sqlite3
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8000/v1/models

``hfauth-mw demo`` runs the same server with four seeded demo users and prints
curl lines to try.

The application is ``hfauth_mw._demo.build_app`` (it ships inside the package
so that ``hfauth-mw demo`` works from an installed wheel). The part to copy
into your own server is the middleware wiring, which reads (abridged)::

    app.add_middleware(
        HFAuthMiddleware,
        source=source,                      # HubWhoamiSource(url) or LocalStoreSource(...)
        public_paths=["/health"],           # everything else needs a valid token
        rules=[
            require_read("POST /v1/models/{owner}/{name}/infer"),
            require_write("PUT /v1/models/{owner}/{name}"),
            require_read("GET /v1/models/{owner}/{name}/stream"),   # the WebSocket
        ],
        policy=AccessPolicy(visibility=visibility),  # which repos are public/gated
    )

and, inside a route, ``get_request_auth(request)`` gives the caller
(``.principal``) and per-repository checks (``.can_read(repo)``,
``.can_write(repo)``, ``.require(repo, "write")``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import uvicorn

from hfauth_mw import HubWhoamiSource, IntrospectionSource, LocalStoreSource, LocalTokenStore
from hfauth_mw._demo import DEMO_MODELS, build_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--hub-url", metavar="URL", help="check tokens with {URL}/api/whoami-v2")
    where.add_argument("--store", metavar="PATH", help="check tokens against a local store")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)

    source: IntrospectionSource
    if args.hub_url:
        source = HubWhoamiSource(args.hub_url)
    elif Path(args.store).is_file():
        source = LocalStoreSource(LocalTokenStore(args.store))
    else:
        parser.error(f"no token store at {args.store} (create one: hfauth-mw token create ...)")

    app = build_app(source, repos=DEMO_MODELS)
    print(f"serving {', '.join(m.id for m in DEMO_MODELS)} on http://{args.host}:{args.port}")
    uvicorn.run(app, host=args.host, port=args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
