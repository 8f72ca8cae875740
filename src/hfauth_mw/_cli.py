"""``hfauth-mw``: manage a local token store, inspect a token, run the emulator or the demo.

Exit codes: 0 success, 1 failure, 2 usage error, 3 invalid token (``inspect``),
4 token source unavailable (``inspect``). Errors are one line on stderr.
Tokens are printed only by ``token create`` (once, alone on stdout) and by
``demo`` (its own throwaway demo tokens); ``inspect`` reads the token from
``HF_TOKEN`` or standard input, never from the command line. A free-text
value holding what is almost surely a token (``_checks.LIKELY_TOKEN``) is
refused as a usage error, shown as ``hf_***``; messages mask the wider
``_checks.TOKEN_SHAPED``, so a name such as ``my_hf_tools`` is accepted but
may print partly masked.
"""

from __future__ import annotations

import argparse
import getpass
import io
import ipaddress
import json
import os
import re
import secrets
import select
import signal
import socket
import string
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn, TextIO

from . import __version__
from ._authenticator import Authenticator
from ._checks import LIKELY_TOKEN, TOKEN_SHAPED
from ._credentials import Credentials
from ._exceptions import (
    ConfigurationError,
    HFAuthError,
    InvalidToken,
    SourceUnavailable,
    TokenStoreError,
)
from ._outcome import IntrospectionSource
from ._principal import FINGERPRINT_LENGTH, ORG_ROLES, Principal
from ._rules import AccessPolicy, Decision, Repo, Visibility
from ._sources import HubWhoamiSource, LocalStoreSource
from ._store import FineGrainedEntry, LocalTokenStore, OrgGrant, TokenRecord

__all__ = ["main"]

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INVALID_TOKEN, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4
DEFAULT_STORE = "hfauth-tokens.sqlite3"
DEMO_STORE = Path(".hfauth-demo") / "tokens.sqlite3"
_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class UsageError(Exception):
    """A bad argument value: exit 2."""


class Failure(Exception):
    """The command could not do its work: exit 1 (or ``code``)."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


_MASK = "hf_***"


def _redact(text: str) -> str:
    """``text`` with anything shaped like a token (``TOKEN_SHAPED``) shown as ``hf_***``.

    Idempotent: a mask already in ``text`` is kept as it is (``hf_***`` is itself
    token-shaped, and would otherwise grow to ``hf_******``).
    """
    return _MASK.join(TOKEN_SHAPED.sub(_MASK, part) for part in text.split(_MASK))


_LOOKS_LIKE_TOKEN = "looks like an access token"


def _not_a_token(text: str, instead: str) -> str:
    """``text``, unless it holds what is almost surely a token: then a usage error
    showing it masked. The test is ``_checks.LIKELY_TOKEN``, shared with the library."""
    if LIKELY_TOKEN.search(text):
        raise argparse.ArgumentTypeError(f"{_LOOKS_LIKE_TOKEN} ({_redact(text)}); give {instead}")
    return text


def _plain(instead: str) -> Callable[[str], str]:
    """An argparse ``type`` for free text that must not be a pasted token."""

    def check(text: str) -> str:
        return _not_a_token(text, instead)

    return check


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors that never echo a token back."""

    def error(self, message: str) -> NoReturn:
        if _LOOKS_LIKE_TOKEN in message:
            hint = ""  # the message already says what to give instead
        elif TOKEN_SHAPED.search(message):
            hint = " (tokens are never taken from the command line: use HF_TOKEN or stdin)"
        else:
            hint = f" (see {self.prog} --help)"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {_redact(message)}{hint}\n")


def _err(message: str) -> None:
    print(f"hfauth-mw: error: {_redact(message)}", file=sys.stderr)


# --- argument parsing --------------------------------------------------------------------


def _default_store() -> str:
    return os.environ.get("HFAUTH_STORE") or DEFAULT_STORE


def _repo(text: str) -> Repo:
    _not_a_token(text, "a repository: TYPE:OWNER/NAME or OWNER/NAME")
    try:
        return Repo.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _user(text: str) -> str:
    _not_a_token(text, "the user's name")
    if not text or "/" in text or any(ch.isspace() for ch in text):
        raise argparse.ArgumentTypeError(f"user name {text!r} must not contain '/' or whitespace")
    return text


def _org(text: str) -> OrgGrant:
    _not_a_token(text, "the org's name and the user's role in it: NAME:ROLE, e.g. acme:write")
    name, colon, role = text.partition(":")
    if not colon or not name or not role:
        raise argparse.ArgumentTypeError(f"expected NAME:ROLE (e.g. acme:write), got {text!r}")
    if role not in ORG_ROLES:
        raise argparse.ArgumentTypeError(
            f"org role {role!r} is not one of {', '.join(ORG_ROLES)} (in {text!r})"
        )
    return OrgGrant(name, role)


def _grant(text: str) -> FineGrainedEntry:
    _not_a_token(text, "TYPE:NAME:PERM[,PERM...], e.g. model:acme/sentiment:repo.content.read")
    kind, _, rest = text.partition(":")
    name, colon, perms = rest.rpartition(":")
    permissions = tuple(p.strip() for p in perms.split(",") if p.strip())
    if not kind or not colon or not name or not permissions:
        raise argparse.ArgumentTypeError(
            "expected TYPE:NAME:PERM[,PERM...] "
            f"(e.g. model:acme/sentiment:repo.content.read), got {text!r}"
        )
    return FineGrainedEntry(kind, name, permissions)


def _expiry(text: str, now: datetime | None = None) -> datetime:
    now = now or datetime.now(UTC)
    match = _DURATION.fullmatch(text.strip())
    if match:
        amount, unit = int(match.group(1)), match.group(2)
        if amount <= 0:
            raise argparse.ArgumentTypeError(f"expiry {text!r} must be in the future")
        try:
            when = now + timedelta(**{_UNITS[unit]: amount})
        except OverflowError:
            raise argparse.ArgumentTypeError(_too_far(text)) from None
    else:
        try:
            when = datetime.fromisoformat(text.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a duration like 30d, 12h, 45m, 2w or an ISO 8601 time, got {text!r}"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
    try:
        when.astimezone(UTC)  # what the store keeps: years 1 to 9999 in UTC
    except OverflowError:
        raise argparse.ArgumentTypeError(_too_far(text)) from None
    if when <= now:
        raise argparse.ArgumentTypeError(f"expiry {text!r} is already in the past")
    return when


def _too_far(text: str) -> str:
    return f"expiry {text!r} is too far in the future (the latest is 9999-12-31 UTC)"


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {port} is not between 0 and 65535")
    return port


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="hfauth-mw",
        description="Accept Hugging Face access tokens in your service: manage a local "
        "token store, inspect a token, run a local Hub emulator or the demo server.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage, 3 invalid token, 4 token source "
        "unavailable. Each command has --help; docs/cli.md in the source tree has examples.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # token ...
    token = commands.add_parser(
        "token",
        help="create, list and revoke tokens in a local store",
        description="Manage tokens in a local SQLite store (it keeps SHA-256 digests only).",
    )
    token_commands = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)
    store_help = "token store file (default: $HFAUTH_STORE or ./hfauth-tokens.sqlite3)"
    # Free-text values are checked by their `type`: one that looks like an access token
    # (pasted by mistake) is a usage error, so it is never stored or printed.
    # --store is a path (it may well hold `hf_`, e.g. ~/hf_cache/): it is masked instead.
    hub_url = _plain("the hub's base URL, e.g. https://huggingface.co")
    bind_host = _plain("a host name or address to bind, e.g. 127.0.0.1")

    create = token_commands.add_parser(
        "create",
        help="create a token; prints only the token on stdout",
        description="Create a token. The token is printed ONCE, alone on stdout "
        "(TOKEN=$(hfauth-mw token create ...)); a summary goes to stderr.",
    )
    create.add_argument("--store", metavar="PATH", help=store_help)
    create.add_argument(
        "--user", required=True, type=_user, metavar="NAME", help="the user the token is for"
    )
    create.add_argument(
        "--role",
        choices=("read", "write", "fineGrained"),
        help="token role (default: read, or fineGrained with --grant/--global/--gated)",
    )
    create.add_argument(
        "--org",
        action="append",
        default=[],
        type=_org,
        metavar="NAME:ROLE",
        help="the user's role in an org (read, contributor, write, admin, no_access); "
        "repeatable; replaces the user's orgs",
    )
    create.add_argument(
        "--grant",
        action="append",
        default=[],
        type=_grant,
        metavar="TYPE:NAME:PERM[,PERM...]",
        help="fine-grained entry, e.g. model:acme/sentiment:repo.content.read; repeatable",
    )
    create.add_argument(
        "--global",
        dest="global_permissions",
        action="append",
        default=[],
        type=_plain("a permission, e.g. inference.serverless.write"),
        metavar="PERM",
        help="fine-grained global permission, e.g. inference.serverless.write; repeatable",
    )
    create.add_argument(
        "--gated", action="store_true", help="fine-grained token may read gated repos"
    )
    create.add_argument(
        "--expires",
        type=_expiry,
        metavar="WHEN",
        help="expiry: 30d, 12h, 45m, 2w or ISO 8601 (default: never)",
    )
    create.add_argument(
        "--name",
        type=_plain("a display name for the token, e.g. laptop"),
        metavar="DISPLAY",
        help="the token's display name",
    )
    create.set_defaults(run=cmd_token_create)

    listing = token_commands.add_parser(
        "list", help="list tokens (fingerprints, never tokens)", description="List tokens."
    )
    listing.add_argument("--store", metavar="PATH", help=store_help)
    listing.add_argument("--user", type=_user, metavar="NAME", help="only this user's tokens")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=cmd_token_list)

    revoke = token_commands.add_parser(
        "revoke",
        help="revoke a token by fingerprint",
        description="Revoke the token whose fingerprint starts with FINGERPRINT "
        "(at least 8 hex digits, as shown by `token list`).",
    )
    revoke.add_argument("--store", metavar="PATH", help=store_help)
    revoke.add_argument(
        "--redis-url",
        type=_plain("the Redis URL, e.g. rediss://cache.internal:6379/0"),
        metavar="URL",
        help="also broadcast the revocation to every process sharing this Redis "
        "(they drop the token from their caches within a second)",
    )
    revoke.add_argument(
        "--redis-secret-env",
        type=_plain("the name of the environment variable that holds the secret"),
        metavar="VAR",
        default="HFAUTH_REDIS_SECRET",
        help="environment variable holding the deployment secret (default: HFAUTH_REDIS_SECRET)",
    )
    revoke.add_argument(
        "--redis-prefix",
        type=_plain("a key prefix"),
        metavar="PREFIX",
        default="hfauth",
        help=argparse.SUPPRESS,
    )
    revoke.add_argument(
        "fingerprint",
        type=_plain("the token's fingerprint, as shown by `token list`"),
        metavar="FINGERPRINT",
    )
    revoke.set_defaults(run=cmd_token_revoke)

    # inspect
    inspect = commands.add_parser(
        "inspect",
        help="show who a token belongs to and what it may do",
        description="Introspect a token read from standard input (one line), or from "
        "$HF_TOKEN when nothing is piped (prompted for on a terminal). A piped token wins "
        "over $HF_TOKEN; the output says which was used. Never pass a token on the command "
        "line. Exit 0 valid, 3 invalid, 4 source unavailable.",
    )
    where = inspect.add_mutually_exclusive_group(required=True)
    where.add_argument("--hub-url", type=hub_url, metavar="URL", help="ask {URL}/api/whoami-v2")
    where.add_argument("--store", metavar="PATH", help="look the token up in a local store")
    inspect.add_argument(
        "--repo",
        action="append",
        default=[],
        type=_repo,
        metavar="REPO",
        help="show read/write decisions on TYPE:OWNER/NAME (bare OWNER/NAME is a model); "
        "repeatable",
    )
    inspect.add_argument(
        "--public", action="append", default=[], type=_repo, metavar="REPO", help="treat as public"
    )
    inspect.add_argument(
        "--gated", action="append", default=[], type=_repo, metavar="REPO", help="treat as gated"
    )
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(run=cmd_inspect)

    # hub-emulator
    hub = commands.add_parser(
        "hub-emulator",
        help="serve whoami-v2 and auth-check from a local store (tests, offline dev)",
        description="Run a local Hub emulator in the foreground. Prints its URL on stdout; "
        "stops on Ctrl-C or SIGTERM. Plain HTTP, for loopback use.",
    )
    hub.add_argument("--store", metavar="PATH", help=store_help)
    hub.add_argument(
        "--host", type=bind_host, default="127.0.0.1", help="bind address (default: 127.0.0.1)"
    )
    hub.add_argument("--port", type=_port, default=0, help="port (default: 0, any free port)")
    hub.add_argument(
        "--public", action="append", default=[], type=_repo, metavar="REPO", help="a public repo"
    )
    hub.add_argument(
        "--gated", action="append", default=[], type=_repo, metavar="REPO", help="a gated repo"
    )
    hub.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (it answers who owns each token, over plain HTTP)",
    )
    hub.set_defaults(run=cmd_hub_emulator)

    # demo
    demo = commands.add_parser(
        "demo",
        help="run the example inference server with demo users",
        description="Run the toy inference server (the app of the source tree's "
        "examples/inference_server.py) under uvicorn and print curl lines to try it. "
        f"Without --hub-url it makes a demo store with four users in {DEMO_STORE} "
        "(once; it never seeds a store it did not make).",
    )
    demo.add_argument(
        "--host", type=bind_host, default="127.0.0.1", help="bind address (default: 127.0.0.1)"
    )
    demo.add_argument("--port", type=_port, default=8000, help="port (default: 8000; 0 = any)")
    demo_source = demo.add_mutually_exclusive_group()
    demo_source.add_argument(
        "--hub-url", type=hub_url, metavar="URL", help="check tokens with this hub"
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
        type=_repo,
        metavar="OWNER/NAME",
        help="also serve this model (an echo model), e.g. one of yours with --hub-url",
    )
    demo.set_defaults(run=cmd_demo)
    return parser


# --- token ----------------------------------------------------------------------------------


def _store_path(args: argparse.Namespace) -> Path:
    return Path(args.store or _default_store())


def _existing_store(args: argparse.Namespace) -> LocalTokenStore:
    path = _store_path(args)
    if not path.is_file():
        raise Failure(f"no token store at {path} (create one with `hfauth-mw token create`)")
    return LocalTokenStore(path)


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "never"


def cmd_token_create(args: argparse.Namespace) -> int:
    role = args.role
    fine = bool(args.grant or args.global_permissions or args.gated)
    if role is None:
        role = "fineGrained" if fine else "read"
    elif fine and role != "fineGrained":
        raise UsageError(f"--grant, --global and --gated need --role fineGrained, not {role}")
    if role == "fineGrained" and not (args.grant or args.global_permissions):
        raise UsageError("a fineGrained token needs at least one --grant or --global")
    path = _store_path(args)
    if sys.stdout is None:  # started with standard output closed (>&-)
        raise UsageError("standard output is closed: the new token could not be shown")
    with LocalTokenStore(path) as store:
        issued = store.create_token(
            user=args.user,
            role=role,
            orgs=args.org,
            fine_grained=args.grant,
            global_permissions=args.global_permissions,
            can_read_gated_repos=args.gated,
            expires_at=args.expires,
            display_name=args.name,
        )
    record = issued.record
    try:
        sys.stdout.write(issued.token + "\n")
        sys.stdout.flush()
    except OSError as exc:
        _discard_stdout()
        _revoke_unseen(path, record, exc.strerror or str(exc))
    name = f", name {record.display_name!r}" if record.display_name else ""
    print(
        _redact(
            f"Created {record.role} token {record.fingerprint} for {record.user}{name}, "
            f"expires {_when(record.expires_at)}, in {path}.\n"
            "The token is shown once, above; only its digest is stored."
        ),
        file=sys.stderr,
    )
    return EXIT_OK


def _discard_stdout() -> None:
    """Point stdout at the null device, so the unwritten token is not retried at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, io.UnsupportedOperation):
        pass  # not a real file: nothing is written at exit


def _revoke_unseen(path: Path, record: TokenRecord, why: str) -> NoReturn:
    """The token could not be shown: it must not stay valid, unseen, in the store."""
    try:
        with LocalTokenStore(path) as store:
            store.revoke(record.fingerprint)
    except (TokenStoreError, ConfigurationError):
        raise Failure(
            f"cannot write the token to standard output ({why}), and cannot revoke it: "
            f"run `hfauth-mw token revoke --store {path} {record.fingerprint}`"
        ) from None
    raise Failure(
        f"cannot write the token to standard output ({why}); token {record.fingerprint} "
        "was revoked: run the command again with a writable standard output"
    )


def _record_dict(record: TokenRecord, now: datetime) -> dict[str, Any]:
    return {
        "fingerprint": record.fingerprint,
        "user": record.user,
        "role": record.role,
        "name": record.display_name,
        "created": record.created_at.isoformat(),
        "expires": record.expires_at.isoformat() if record.expires_at else None,
        "expired": record.expires_at is not None and record.expires_at <= now,
    }


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], out: TextIO) -> None:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    for row in (headers, *rows):
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")


def cmd_token_list(args: argparse.Namespace) -> int:
    with _existing_store(args) as store:
        records = store.list_tokens(args.user)
    now = datetime.now(UTC)
    # Rows written before names were checked may hold token-shaped text: masked.
    if args.json:
        print(_redact(json.dumps([_record_dict(record, now) for record in records], indent=2)))
        return EXIT_OK
    if not records:
        who = f" for {args.user}" if args.user else ""
        print(_redact(f"no tokens{who} in {_store_path(args)}"), file=sys.stderr)
        return EXIT_OK
    rows = [
        [
            r.fingerprint,
            _redact(r.user),
            r.role,
            _redact(r.display_name or "-"),
            _when(r.created_at),
            _when(r.expires_at) + (" (expired)" if r.expires_at and r.expires_at <= now else ""),
        ]
        for r in records
    ]
    _table(["FINGERPRINT", "USER", "ROLE", "NAME", "CREATED", "EXPIRES"], rows, sys.stdout)
    return EXIT_OK


def cmd_token_revoke(args: argparse.Namespace) -> int:
    prefix = args.fingerprint.strip().lower()
    broadcast = None
    if args.redis_url:  # checked before anything changes
        from ._shared import revocation_broadcaster

        broadcast = revocation_broadcaster(args.redis_url, args.redis_secret_env, args.redis_prefix)
    with _existing_store(args) as store:
        try:
            record = store.find_token(args.fingerprint)
        except TokenStoreError:
            # Its entry does not parse (revoke deletes it all the same), or several
            # tokens match (revoke refuses, deleting nothing): only the message is poorer.
            record = None
        fingerprint = record.fingerprint if record else prefix[:FINGERPRINT_LENGTH]
        if broadcast is not None and len(fingerprint) < FINGERPRINT_LENGTH:
            raise UsageError(
                f"the store cannot tell which token {prefix} is (several match, or its "
                f"entry does not parse): give its full {FINGERPRINT_LENGTH}-digit fingerprint "
                "to revoke it and broadcast the revocation"
            )
        revoked = store.revoke(args.fingerprint)
    if not revoked:
        raise Failure(f"no token with fingerprint {prefix} in {_store_path(args)}")
    if record is not None:
        name = f" ({record.display_name!r})" if record.display_name else ""
        what = f"{record.role} token {record.fingerprint} of {record.user}{name}"
    else:
        what = f"token {fingerprint} (its entry did not parse)"
    print(_redact(f"Revoked {what} from {_store_path(args)}."))
    if broadcast is not None:
        reached = broadcast(fingerprint)
        print(f"Broadcast the revocation through Redis: {reached} process(es) listening.")
    return EXIT_OK


# --- inspect --------------------------------------------------------------------------------


_NO_TOKEN = "no token: set HF_TOKEN or pipe the token on standard input"
_STDIN_WAIT_SECONDS = 3.0
#: Past this many bytes without a newline, standard input holds no token.
_MAX_TOKEN_LINE = 64 * 1024


_ORIGINS = {"stdin": "standard input", "HF_TOKEN": "$HF_TOKEN", "prompt": "the prompt"}


def _read_token() -> tuple[str, str, str]:
    """The token to inspect, where it came from (``_ORIGINS``), and that said for people.

    A token piped on standard input is what the user gave this time: it wins
    over ``$HF_TOKEN`` (often exported long ago, for the real Hub), and a blank
    line there is an error, never a reason to send ``$HF_TOKEN``. ``$HF_TOKEN``
    is used when standard input is a terminal, closed or empty; without it, a
    terminal is prompted. With ``$HF_TOKEN`` set, a pipe that sends no whole
    line within ``_STDIN_WAIT_SECONDS`` (a CI runner's that stays silent, say)
    is an error, not a hang and not a silent fallback that would send
    ``$HF_TOKEN`` where the piped token was meant to go.
    """
    from_env = os.environ.get("HF_TOKEN", "").strip()
    stdin = sys.stdin
    if stdin is not None and not stdin.isatty():
        line = _first_line(stdin, _STDIN_WAIT_SECONDS) if from_env else stdin.readline()
        piped = line.strip()
        if piped:
            ignored = " ($HF_TOKEN, also set, ignored)" if from_env else ""
            return piped, "stdin", _ORIGINS["stdin"] + ignored
        if line:
            # `echo "$TOKEN" |` with $TOKEN unset: the token meant for this run is
            # missing, and $HF_TOKEN must not go where it was to go.
            also = "; to inspect $HF_TOKEN, add </dev/null" if from_env else ""
            raise UsageError(
                "standard input held an empty line, not a token "
                f"(is the variable you echoed set?){also}"
            )
    if from_env:
        return from_env, "HF_TOKEN", _ORIGINS["HF_TOKEN"]
    if stdin is None or not stdin.isatty():
        raise UsageError(_NO_TOKEN)
    typed = getpass.getpass("Token (input hidden): ", stream=sys.stderr).strip()
    if not typed:
        raise UsageError(_NO_TOKEN)
    return typed, "prompt", _ORIGINS["prompt"]


def _first_line(stream: TextIO, timeout: float) -> str:
    """The first line of ``stream`` (``""`` at once-closed input), which must
    come whole within ``timeout`` seconds."""
    try:
        fd = stream.fileno()
    except (OSError, ValueError, io.UnsupportedOperation):
        return stream.readline()  # not a file descriptor (an in-memory stream): it never blocks
    deadline = time.monotonic() + timeout
    data = b""
    # Read straight from the descriptor: a readline() on a line that never ends
    # would wait forever, past any deadline. A token line is short.
    while b"\n" not in data and len(data) <= _MAX_TOKEN_LINE:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise UsageError(
                f"{'no whole line' if data else 'nothing'} on standard input after "
                f"{timeout:g} s, and $HF_TOKEN is set: add </dev/null to inspect $HF_TOKEN, "
                "or pipe the token with a newline after it"
            )
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    line, newline, _ = data.partition(b"\n")
    return line.decode("utf-8", "replace") + newline.decode()


def _visibility_of(public: Sequence[Repo], gated: Sequence[Repo]) -> Callable[[Repo], Visibility]:
    public_set, gated_set = frozenset(public), frozenset(gated)

    def visibility(repo: Repo) -> Visibility:
        if repo in gated_set:
            return Visibility.GATED
        if repo in public_set:
            return Visibility.PUBLIC
        return Visibility.PRIVATE

    return visibility


def _decision_dict(decision: Decision) -> dict[str, Any]:
    return {"allowed": decision.allowed, "reason": decision.reason, "needed": decision.needed}


def _principal_lines(principal: Principal) -> list[tuple[str, str]]:
    orgs = ", ".join(f"{org.name} ({org.role})" for org in principal.orgs) or "-"
    scoped = [
        f"{grant.entity_type} {grant.entity_name or grant.entity_id or '?'}: "
        + ", ".join(sorted(grant.permissions))
        for grant in principal.scoped
    ]
    expires = _when(principal.expires_at)
    lines = [
        ("user", f"{principal.name} ({principal.type})"),
        ("auth type", principal.auth_type),
        ("token role", principal.token_role or "-"),
        ("token name", principal.token_name or "-"),
        ("fingerprint", principal.fingerprint or "-"),
        ("orgs", orgs),
    ]
    if principal.token_role == "fineGrained" or principal.scoped:
        lines.append(("fine-grained", scoped[0] if scoped else "-"))
        lines.extend(("", entry) for entry in scoped[1:])
        lines.append(("global", ", ".join(sorted(principal.global_permissions)) or "-"))
        lines.append(("gated repos", "yes" if principal.can_read_gated_repos else "no"))
    if principal.oauth_scopes:
        lines.append(("oauth scopes", " ".join(sorted(principal.oauth_scopes))))
    lines.append(("expires", expires))
    lines.append(("source", principal.source or "-"))
    return lines


def _source_for(args: argparse.Namespace) -> IntrospectionSource:
    if args.hub_url:
        return HubWhoamiSource(args.hub_url)
    path = Path(args.store)
    if not path.is_file():
        raise Failure(f"no token store at {path}", EXIT_UNAVAILABLE)
    try:
        return LocalStoreSource(LocalTokenStore(path))
    except TokenStoreError as exc:  # not SQLite, unreadable, too new: it cannot answer
        raise Failure(str(exc), EXIT_UNAVAILABLE) from None


def cmd_inspect(args: argparse.Namespace) -> int:
    source = _source_for(args)
    token, origin_key, origin = _read_token()
    credentials = Credentials.from_token(token)
    del token
    # Said in every outcome: which token (by fingerprint) went where.
    which = f"token {credentials.fingerprint} from {origin}"
    try:
        principal = Authenticator(source).authenticate_sync(credentials)
    except InvalidToken as exc:
        raise Failure(
            f"invalid {which}, asked {source.name}: {exc.description}", EXIT_INVALID_TOKEN
        ) from None
    except SourceUnavailable as exc:
        raise Failure(
            f"{exc.description.rstrip('.')} ({which}, asked {source.name})", EXIT_UNAVAILABLE
        ) from None
    except TokenStoreError as exc:
        raise Failure(str(exc), EXIT_UNAVAILABLE) from None
    finally:
        if isinstance(source, LocalStoreSource) and isinstance(source.store, LocalTokenStore):
            source.store.close()
    policy = AccessPolicy(visibility=_visibility_of(args.public, args.gated))
    visibility = _visibility_of(args.public, args.gated)
    decisions = [
        (repo, policy.can_read(principal, repo), policy.can_write(principal, repo))
        for repo in args.repo
    ]
    if args.json:
        document = principal.to_dict()
        document["token_from"] = origin_key
        document["decisions"] = [
            {
                "repo": str(repo),
                "visibility": visibility(repo).value,
                "read": _decision_dict(read),
                "write": _decision_dict(write),
            }
            for repo, read, write in decisions
        ]
        # Names written to a local store before they were checked are masked.
        print(_redact(json.dumps(document, indent=2)))
        return EXIT_OK
    out = sys.stdout
    for label, value in [*_principal_lines(principal), ("token from", origin)]:
        out.write(f"{label + ':' if label else '':<14}{_redact(value)}\n")
    for repo, read, write in decisions:
        out.write(f"\n{repo} ({visibility(repo).value})\n")
        for what, decision in (("read", read), ("write", write)):
            verdict = "allowed" if decision else "denied"
            out.write(f"  {what + ':':<7}{verdict:<8} {decision.reason}\n")
    return EXIT_OK


# --- hub-emulator ---------------------------------------------------------------------------


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def cmd_hub_emulator(args: argparse.Namespace) -> int:
    from .testing import HubEmulator

    if not _is_loopback(args.host) and not args.allow_remote:
        raise UsageError(
            f"refusing to serve on non-loopback host {args.host!r}: the emulator tells anyone "
            "who asks whose each token is, over plain HTTP. Pass --allow-remote to insist."
        )
    repos = {str(repo): "public" for repo in args.public}
    repos.update({str(repo): "gated" for repo in args.gated})
    path = _store_path(args)
    # An emulator on a new, empty store would answer 401 to every token: a
    # mistyped --store is a clear error instead.
    with _existing_store(args) as store:
        emulator = HubEmulator(store, host=args.host, port=args.port, repos=repos)
        try:
            emulator.start()
        except OSError as exc:
            raise Failure(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
        previous = signal.signal(signal.SIGTERM, _raise_stop)
        try:
            print(emulator.url, flush=True)
            print(
                _redact(f"hub emulator on {emulator.url} answering from {path}; Ctrl-C to stop"),
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


# --- demo -----------------------------------------------------------------------------------


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


def cmd_demo(args: argparse.Namespace) -> int:
    try:
        import uvicorn
    except ImportError:
        raise Failure("uvicorn is not installed: pip install 'hfauth-mw[demo]'") from None
    from ._demo import DEMO_MODELS, DemoModel, build_app, describe_users, seed_demo_store

    source: IntrospectionSource
    tokens: dict[str, str] | None = None
    if args.hub_url:
        source = HubWhoamiSource(args.hub_url)
        where = f"tokens checked by {source.hub_url}/api/whoami-v2"
    else:
        path = Path(args.store) if args.store else DEMO_STORE
        tokens = seed_demo_store(path)  # refuses a store that is not a demo store
        if not tokens:
            raise Failure(
                f"every demo token in {path} has been revoked: delete {path}, "
                f"{path}.demo-seed and {path}.demo to start over"
            )
        source = LocalStoreSource(LocalTokenStore(path))
        where = _redact(f"tokens checked against the demo store {path}")
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


# --- entry point --------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except UsageError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except Failure as exc:
        _err(str(exc))
        return exc.code
    except ConfigurationError as exc:
        _err(str(exc))
        return EXIT_USAGE
    except (TokenStoreError, HFAuthError, OSError) as exc:
        _err(str(exc))
        return EXIT_FAILURE
    except (OverflowError, ValueError) as exc:  # a value out of range, from the user
        _err(f"{exc} (see hfauth-mw {args.command} --help)")
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def entry() -> None:
    raise SystemExit(main())


if __name__ == "__main__":
    entry()
