"""``hfauth-mw demo``: the toy inference server under uvicorn, with curl lines to try.

Without ``--hub-url`` it serves from a demo store it makes and seeds itself
(four users with throwaway tokens, printed in the banner); it refuses to seed
any store it did not make.
"""

from __future__ import annotations

import argparse
import secrets
import socket
import string
import sys
from pathlib import Path
from typing import Any

from .._source_protocol import IntrospectionSource
from .._sources import LocalStoreSource
from .._store import LocalTokenStore
from .common import (
    EXIT_OK,
    Failure,
    given_store,
    hub_source,
    parse_bind_host,
    parse_hub_url,
    parse_port,
    parse_repo,
    redact,
)

DEMO_STORE = Path(".hfauth-demo") / "tokens.sqlite3"


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``demo`` to the ``hfauth-mw`` parser's ``commands``."""
    demo = commands.add_parser(
        "demo",
        help="run the demo inference server with demo users",
        description="Run the demo inference server (hfauth_mw._demo) under uvicorn "
        "and print curl lines to try it. "
        f"Without --hub-url it makes a demo store with four users in {DEMO_STORE} "
        "(once; it never seeds a store it did not make).",
    )
    demo.add_argument(
        "--host",
        type=parse_bind_host,
        default="127.0.0.1",
        help="bind address (default: 127.0.0.1)",
    )
    demo.add_argument("--port", type=parse_port, default=8000, help="port (default: 8000; 0 = any)")
    demo_source = demo.add_mutually_exclusive_group()
    demo_source.add_argument(
        "--hub-url", type=parse_hub_url, metavar="URL", help="check tokens with this hub"
    )
    demo_source.add_argument(
        "--store",
        metavar="PATH",
        help=f"demo token store, made by the demo (default: {DEMO_STORE})",
    )
    demo.add_argument(
        "--model",
        action="append",
        default=[],
        type=parse_repo,
        metavar="OWNER/NAME",
        help="also serve this model (an echo model), e.g. one of yours with --hub-url",
    )
    demo.set_defaults(run=run)


def _made_up_token() -> str:
    alphabet = string.ascii_letters + string.digits
    return "hf_" + "".join(secrets.choice(alphabet) for _ in range(34))


def demo_curl_lines(base: str, tokens: dict[str, str] | None) -> list[str]:
    """The banner's curl lines: seeded demo tokens, or ``$HF_TOKEN`` when ``tokens`` is None."""
    json_body = "-H 'Content-Type: application/json'"
    infer = f'-X POST {json_body} -d \'{{"inputs": "what a great fun demo"}}\''

    def bearer(token: str) -> str:
        return f"-H 'Authorization: Bearer {token}'"

    if tokens is None:
        hub = bearer("$HF_TOKEN").replace("'", '"')
        return [
            "# no token -> 401 with WWW-Authenticate",
            f"curl -i {infer} {base}/v1/models/acme/public-demo/infer",
            "# /health needs no token -> 200",
            f"curl -i {base}/health",
            "# who the hub says you are -> 200",
            f"curl -s {hub} {base}/v1/whoami",
            "# the models your token may read",
            f"curl -s {hub} {base}/v1/models",
            "# a public model -> 200 for any valid token",
            f"curl -i {hub} {infer} {base}/v1/models/acme/public-demo/infer",
            "# the same with HTTP Basic, token as the password -> 200",
            f'curl -i -u "x:$HF_TOKEN" {infer} {base}/v1/models/acme/public-demo/infer',
            "# a private model of someone else -> 403 insufficient_scope",
            f"curl -i {hub} {infer} {base}/v1/models/acme/sentiment/infer",
            "# a made-up token -> 401 invalid_token",
            f"curl -i {bearer(_made_up_token())} {base}/v1/whoami",
        ]
    # A demo user whose token was revoked has no token here: their lines are left out.
    alice, bob, carol, dave = (tokens.get(name, "") for name in ("alice", "bob", "carol", "dave"))
    weights = f'-X PUT {json_body} -d \'{{"positive": ["shiny"]}}\''
    steps: list[tuple[str, list[str]]] = [
        ("", ["# no token -> 401 with WWW-Authenticate",
              f"curl -i {infer} {base}/v1/models/bob/echo/infer",
              "# /health needs no token -> 200",
              f"curl -i {base}/health"]),
        ("bob", ["# bob (read token) runs his model -> 200",
                 f"curl -i {bearer(bob)} {infer} {base}/v1/models/bob/echo/infer",
                 "# bob cannot upload weights, even to his own model -> 403 insufficient_scope",
                 f"curl -i {bearer(bob)} {weights} {base}/v1/models/bob/echo"]),
        ("alice", ["# alice (write token, org acme role write) uploads acme weights -> 200",
                   f"curl -i {bearer(alice)} {weights} {base}/v1/models/acme/sentiment",
                   "# HTTP Basic, token as the password (user name ignored) -> 200",
                   f"curl -i -u 'x:{alice}' {infer} {base}/v1/models/alice/tiny-lm/infer"]),
        ("", ["# a made-up hf_ token -> 401 invalid_token",
              f"curl -i {bearer(_made_up_token())} {infer} {base}/v1/models/bob/echo/infer"]),
        ("carol", ["# carol (fine-grained: read acme/sentiment only) on that repo -> 200",
                   f"curl -i {bearer(carol)} {infer} {base}/v1/models/acme/sentiment/infer",
                   "# carol on any other private repo -> 403",
                   f"curl -i {bearer(carol)} {infer} {base}/v1/models/alice/tiny-lm/infer"]),
        ("dave", ["# dave (write token, but read member of acme) reads acme -> 200 ...",
                  f"curl -i {bearer(dave)} {infer} {base}/v1/models/acme/sentiment/infer",
                  "# ... and cannot write it -> 403",
                  f"curl -i {bearer(dave)} {weights} {base}/v1/models/acme/sentiment"]),
        ("carol", ["# who am I", f"curl -s {bearer(carol)} {base}/v1/whoami"]),
        ("dave", ["# which models may I read", f"curl -s {bearer(dave)} {base}/v1/models"]),
    ]  # fmt: skip
    return [line for user, lines in steps if not user or user in tokens for line in lines]


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise Failure("uvicorn is not installed: pip install 'hfauth-mw[demo]'") from None
    from .._demo import DEMO_MODELS, DemoModel, build_app, describe_users, seed_demo_store

    source: IntrospectionSource
    tokens: dict[str, str] | None = None
    if args.hub_url:
        source = hub_source(args.hub_url)
        where = f"tokens checked by {source.hub_url}/api/whoami-v2"
    else:
        path = given_store(args) or DEMO_STORE
        tokens = seed_demo_store(path)  # refuses a store that is not a demo store
        if not tokens:
            raise Failure(
                f"every demo token in {path} has been revoked: delete {path}, "
                f"{path}.demo-seed and {path}.demo to start over"
            )
        source = LocalStoreSource(LocalTokenStore(path))
        where = redact(f"tokens checked against the demo store {path}")
    extra = tuple(DemoModel(repo.id, "echo") for repo in args.model)
    app = build_app(source, repos=DEMO_MODELS + extra)

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
        sock.listen(2048)  # listening now: requests sent after the banner wait for uvicorn
    except OSError as exc:
        sock.close()
        hint = " (try --port 0 for any free port)" if exc.errno == 98 else ""
        raise Failure(f"cannot listen on {args.host}:{args.port}: {exc.strerror}{hint}") from None
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"

    out = sys.stdout
    out.write(f"hfauth-mw demo: toy inference server on {base} ({where})\n")
    if tokens is not None:
        out.write("demo users (throwaway tokens, valid only in this demo store):\n")
        for name, what in describe_users().items():
            gone = "" if name in tokens else " [revoked]"
            out.write(f"  {name:<6} {what}{gone}\n")
    else:
        out.write("export HF_TOKEN=<your token> first; demo models: ")
        out.write(", ".join(model.id for model in DEMO_MODELS + extra) + "\n")
    out.write("\nTry these (Ctrl-C stops the server):\n\n")
    out.write("\n".join(demo_curl_lines(base, tokens)) + "\n\n")
    out.flush()

    config = uvicorn.Config(app, log_level="info", access_log=True, lifespan="off")
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except KeyboardInterrupt:
        pass  # uvicorn has shut down cleanly, then re-raised Ctrl-C
    finally:
        sock.close()
    return EXIT_OK
