"""``hfauth-mw hub-emulator``: serve whoami-v2 and auth-check from a local store.

``--public`` / ``--gated`` register repositories (any other is private);
``--gate-grant REPO:USER`` lets a user through a gated repo's gate, which
otherwise refuses everyone but the repo's owner.

Plain HTTP and it tells anyone who asks whose each token is: it binds to a
loopback address unless ``--allow-remote`` insists, and it refuses a store
that does not exist (a new, empty one would answer 401 to every token).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any

from .._rules import Repo
from .._sources import _is_loopback
from .common import (
    EXIT_OK,
    STORE_HELP,
    Failure,
    UsageError,
    existing_store,
    not_a_token,
    parse_bind_host,
    parse_port,
    parse_repo,
    redact,
    store_path,
)


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``hub-emulator`` to the ``hfauth-mw`` parser's ``commands``."""
    hub = commands.add_parser(
        "hub-emulator",
        help="serve whoami-v2 and auth-check from a local store (tests, offline dev)",
        description="Run a local Hub emulator in the foreground. Prints its URL on stdout; "
        "stops on Ctrl-C or SIGTERM. Plain HTTP, for loopback use.",
    )
    hub.add_argument("--store", metavar="PATH", help=STORE_HELP)
    hub.add_argument(
        "--host",
        type=parse_bind_host,
        default="127.0.0.1",
        help="bind address (default: 127.0.0.1)",
    )
    hub.add_argument("--port", type=parse_port, default=0, help="port (default: 0, any free port)")
    hub.add_argument(
        "--public",
        action="append",
        default=[],
        type=parse_repo,
        metavar="REPO",
        help="a public repo",
    )
    hub.add_argument(
        "--gated", action="append", default=[], type=parse_repo, metavar="REPO", help="a gated repo"
    )
    hub.add_argument(
        "--gate-grant",
        action="append",
        default=[],
        type=parse_gate_grant,
        metavar="REPO:USER",
        help="let USER through the gate of REPO, a --gated repo (repeatable); until granted, "
        "a gated repo refuses everyone but its owner",
    )
    hub.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (it answers who owns each token, over plain HTTP)",
    )
    hub.set_defaults(run=run)


def parse_gate_grant(text: str) -> tuple[Repo, str]:
    """``REPO:USER`` (the user after the last colon: ``model:acme/m:bob`` works)."""
    not_a_token(text, "REPO:USER, e.g. meta-llama/Llama-3.1-8B-Instruct:alice")
    repo, colon, user = text.rpartition(":")
    if not colon or not repo or not user or "/" in user:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not REPO:USER, e.g. meta-llama/Llama-3.1-8B-Instruct:alice"
        )
    return parse_repo(repo), user


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def run(args: argparse.Namespace) -> int:
    from ..testing import HubEmulator

    # "[::1]" as in a URL: the address to bind is "::1" (the URL shows it bracketed).
    host = args.host[1:-1] if args.host.startswith("[") and args.host.endswith("]") else args.host
    # The same test as the library's for plain-http hubs.
    if not _is_loopback(host) and not args.allow_remote:
        raise UsageError(
            f"refusing to serve on non-loopback host {args.host!r}: the emulator tells anyone "
            "who asks whose each token is, over plain HTTP. Pass --allow-remote to insist."
        )
    repos = {str(repo): "public" for repo in args.public}
    repos.update({str(repo): "gated" for repo in args.gated})
    for repo, user in args.gate_grant:
        if repos.get(str(repo)) != "gated":
            # A grant on a repository without a gate changes nothing: surely a typo.
            raise UsageError(f"--gate-grant {repo}:{user}: {repo} is not gated; add --gated {repo}")
    path = store_path(args)
    # An emulator on a new, empty store would answer 401 to every token: a
    # mistyped --store is a clear error instead.
    with existing_store(path) as store:
        emulator = HubEmulator(
            store, host=host, port=args.port, repos=repos, allow_remote=args.allow_remote
        )
        for repo, user in args.gate_grant:
            emulator.grant_gate(str(repo), user)
        try:
            emulator.start()
        except OSError as exc:
            raise Failure(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
        previous = signal.signal(signal.SIGTERM, _raise_stop)
        try:
            print(emulator.url, flush=True)
            print(
                redact(f"hub emulator on {emulator.url} answering from {path}; Ctrl-C to stop"),
                file=sys.stderr,
                flush=True,
            )
            threading.Event().wait()
        except (KeyboardInterrupt, _Stop):
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)
            emulator.stop()
    return EXIT_OK
