"""``hfauth-mw token create | list | revoke``: manage tokens in a local store.

A token is printed only by ``create``, once, alone on stdout; if it cannot be
written there it is revoked at once, so no valid token stays in the store
unseen. ``list`` and ``revoke`` show fingerprints, never tokens.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import json
import os
import re
import stat
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NoReturn, TextIO

from .._exceptions import ConfigurationError, TokenStoreError
from .._principal import FINGERPRINT_LENGTH, ORG_ROLES
from .._shared_tier import RevocationBroadcast, SharedCacheUnavailable, revocation_broadcaster
from .._store import FineGrainedEntry, LocalTokenStore, OrgGrant, TokenRecord
from .common import (
    EXIT_OK,
    EXIT_UNAVAILABLE,
    STORE_HELP,
    Failure,
    UsageError,
    discard_stdout,
    existing_store,
    format_time,
    not_a_token,
    plain,
    redact,
    store_path,
)

_DURATION = re.compile(r"(\d+)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


# --- argument types -----------------------------------------------------------------------


def _user(text: str) -> str:
    not_a_token(text, "the user's name")
    if not text:
        raise argparse.ArgumentTypeError("--user is empty (is the variable you used set?)")
    if "/" in text or any(ch.isspace() for ch in text):
        raise argparse.ArgumentTypeError(f"user name {text!r} must not contain '/' or whitespace")
    return text


def _org(text: str) -> OrgGrant:
    not_a_token(text, "the org's name and the user's role in it: NAME:ROLE, e.g. acme:write")
    name, colon, role = text.partition(":")
    if not colon or not name or not role:
        raise argparse.ArgumentTypeError(f"expected NAME:ROLE (e.g. acme:write), got {text!r}")
    if role not in ORG_ROLES:
        raise argparse.ArgumentTypeError(
            f"org role {role!r} is not one of {', '.join(ORG_ROLES)} (in {text!r})"
        )
    return OrgGrant(name, role)


def _grant(text: str) -> FineGrainedEntry:
    not_a_token(text, "TYPE:NAME:PERM[,PERM...], e.g. model:acme/sentiment:repo.content.read")
    kind, _, rest = text.partition(":")
    name, colon, perms = rest.rpartition(":")
    permissions = tuple(p.strip() for p in perms.split(",") if p.strip())
    if not kind or not colon or not name or not permissions:
        raise argparse.ArgumentTypeError(
            "expected TYPE:NAME:PERM[,PERM...] "
            f"(e.g. model:acme/sentiment:repo.content.read), got {text!r}"
        )
    return FineGrainedEntry(kind, name, permissions)


#: What the Hub's fine-grained tokens name (hub-tokens.md). Others are accepted, as the
#: Hub may add some, but a typo among them grants nothing: create says so.
_ENTITY_TYPES = (
    "model",
    "dataset",
    "space",
    "org",
    "user",
    "collection",
    "resource-group",
    "bucket",
    "kernel",
    "oauth-app",
)
_PERMISSIONS = (
    "repo.content.read",
    "repo.write",
    "repo.access.read",
    "discussion.write",
    "post.write",
    "collection.read",
    "collection.write",
    "inference.serverless.write",
    "inference.endpoints.infer.write",
    "inference.endpoints.write",
    "user.webhooks.read",
    "user.webhooks.write",
    "user.billing.read",
    "org.read",
    "org.write",
    "job.write",
)


#: The store's keyword arguments, as the options of `token create` that give them.
_OPTION_OF = {
    "display_name": "--name",
    "global_permissions": "--global",
    "fine_grained": "--grant",
    "orgs": "--org",
    "expires_at": "--expires",
}


def _in_cli_words(message: str) -> str:
    for keyword, option in _OPTION_OF.items():
        message = re.sub(rf"\b{keyword}\b", option, message)
    return message


def _unknown_names(args: argparse.Namespace) -> list[str]:
    """Notes on --grant types and permissions the Hub is not known to use."""
    notes = []
    for grant in args.grant:
        if grant.entity_type not in _ENTITY_TYPES:
            notes.append(_unknown("--grant type", grant.entity_type, _ENTITY_TYPES))
    asked = [perm for grant in args.grant for perm in grant.permissions]
    for permission in dict.fromkeys([*asked, *args.global_permissions]):
        if permission not in _PERMISSIONS:
            notes.append(_unknown("permission", permission, _PERMISSIONS))
    return notes


def _unknown(what: str, name: str, known: tuple[str, ...]) -> str:
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"Note: {what} {name!r} is not one Hub tokens are known to use{hint}; "
        "kept as given, it grants only what a server of yours checks by that name."
    )


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
        past = when.year == 1  # before year 1 in UTC: long past, not "too far"
        raise argparse.ArgumentTypeError(
            f"expiry {text!r} is already in the past" if past else _too_far(text)
        ) from None
    if when <= now:
        raise argparse.ArgumentTypeError(f"expiry {text!r} is already in the past")
    return when


def _too_far(text: str) -> str:
    return f"expiry {text!r} is too far in the future (the latest is 9999-12-31 UTC)"


# --- the parser ---------------------------------------------------------------------------


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``token`` and its actions to the ``hfauth-mw`` parser's ``commands``."""
    token = commands.add_parser(
        "token",
        help="create, list and revoke tokens in a local store",
        description="Manage tokens in a local SQLite store (it keeps SHA-256 digests only).",
    )
    actions = token.add_subparsers(dest="token_command", metavar="ACTION", required=True)

    create = actions.add_parser(
        "create",
        help="create a token; prints only the token on stdout",
        description="Create a token. The token is printed ONCE, alone on stdout "
        "(TOKEN=$(hfauth-mw token create ...)); a summary goes to stderr.",
    )
    create.add_argument("--store", metavar="PATH", help=STORE_HELP)
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
        type=plain("a permission, e.g. inference.serverless.write"),
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
        type=plain("a display name for the token, e.g. laptop"),
        metavar="DISPLAY",
        help="the token's display name",
    )
    create.set_defaults(run=run_create)

    listing = actions.add_parser(
        "list", help="list tokens (fingerprints, never tokens)", description="List tokens."
    )
    listing.add_argument("--store", metavar="PATH", help=STORE_HELP)
    listing.add_argument("--user", type=_user, metavar="NAME", help="only this user's tokens")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(run=run_list)

    revoke = actions.add_parser(
        "revoke",
        help="revoke a token by fingerprint",
        description="Revoke the token whose fingerprint starts with FINGERPRINT "
        "(at least 8 hex digits, as shown by `token list`).",
    )
    revoke.add_argument("--store", metavar="PATH", help=STORE_HELP)
    revoke.add_argument(
        "--redis-url",
        type=plain("the Redis URL, e.g. rediss://cache.internal:6379/0"),
        metavar="URL",
        help="also broadcast the revocation to every process sharing this Redis "
        "(they drop the token from their caches within a second)",
    )
    revoke.add_argument(
        "--redis-secret-env",
        type=plain("the name of the environment variable that holds the secret"),
        metavar="VAR",
        default="HFAUTH_REDIS_SECRET",
        help="environment variable holding the deployment secret (default: HFAUTH_REDIS_SECRET)",
    )
    revoke.add_argument(
        "--redis-prefix",
        type=plain("a key prefix"),
        metavar="PREFIX",
        default="hfauth",
        help=argparse.SUPPRESS,
    )
    revoke.add_argument(
        "fingerprint",
        type=plain("the token's fingerprint, as shown by `token list`"),
        metavar="FINGERPRINT",
    )
    revoke.set_defaults(run=run_revoke)


# --- token create -------------------------------------------------------------------------


def run_create(args: argparse.Namespace) -> int:
    role = args.role
    fine = bool(args.grant or args.global_permissions or args.gated)
    if role is None:
        role = "fineGrained" if fine else "read"
    elif fine and role != "fineGrained":
        raise UsageError(f"--grant, --global and --gated need --role fineGrained, not {role}")
    if role == "fineGrained" and not (args.grant or args.global_permissions):
        raise UsageError("a fineGrained token needs at least one --grant or --global")
    named = [grant.name for grant in args.org]
    twice = sorted({name for name in named if named.count(name) > 1})
    if twice:
        raise UsageError(f"--org {twice[0]} is given twice: give each organization once")
    path = store_path(args)
    if sys.stdout is None:  # started with standard output closed (>&-)
        raise UsageError("standard output is closed: the new token could not be shown")
    with LocalTokenStore(path) as store:
        # --org sets the user's orgs, shared by all their tokens: say so when it
        # changes tokens other than this one.
        others = len(store.list_tokens(args.user)) if args.org else 0
        try:
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
        except ConfigurationError as exc:  # in the options' words, not the library's
            raise UsageError(_in_cli_words(str(exc))) from None
    record = issued.record
    try:
        sys.stdout.write(issued.token + "\n")
        sys.stdout.flush()
    except OSError as exc:
        discard_stdout()
        _revoke_unseen(path, record, exc.strerror or str(exc))
    name = f", name {record.display_name!r}" if record.display_name else ""
    print(
        redact(
            f"Created {record.role} token {record.fingerprint} for {record.user}{name}, "
            f"expires {format_time(record.expires_at)}, in {path}.\n"
            f"{_where_it_went(sys.stdout, path, record)}"
        ),
        file=sys.stderr,
    )
    for note in _unknown_names(args):
        print(redact(note), file=sys.stderr)
    if others:
        orgs = ", ".join(f"{grant.name} ({grant.role})" for grant in args.org)
        tokens = "1 other token now has" if others == 1 else f"{others} other tokens now have"
        print(f"Note: orgs are the user's: {record.user}'s {tokens} {orgs} too.", file=sys.stderr)
    return EXIT_OK


def _where_it_went(stdout: TextIO, path: Path, record: TokenRecord) -> str:
    """Where the token was written, said for the person reading stderr: "above"
    only on a terminal (``TOKEN=$(...)`` shows them nothing)."""
    kept = "only its digest is stored."
    try:
        if stdout.isatty():
            return f"The token is shown once, above; {kept}"
        info = os.fstat(stdout.fileno())
        null = os.stat(os.devnull)
    except (OSError, ValueError, io.UnsupportedOperation):  # not a file descriptor
        return f"The token went once to standard output (not a terminal); {kept}"
    if (info.st_dev, info.st_ino) == (null.st_dev, null.st_ino):
        return (
            f"The token went to {os.devnull}: nobody can use it; revoke it with "
            f"`hfauth-mw token revoke --store {path} {record.fingerprint}`."
        )
    if stat.S_ISFIFO(info.st_mode):
        where = "a pipe (as in TOKEN=$(hfauth-mw token create ...))"
    elif stat.S_ISREG(info.st_mode) and info.st_mode & 0o077:
        name = _file_name(stdout.fileno())
        return (
            f"The token went once to standard output, a file; {name} can be read by other "
            f"users (mode {info.st_mode & 0o777:04o}): run chmod 600 {name}"
        )
    elif stat.S_ISREG(info.st_mode):
        where = "a file (keep it private)"
    else:
        where = "not a terminal"
    return f"The token went once to standard output, {where}; {kept}"


def _file_name(fd: int) -> str:
    """The name of the file open as ``fd`` (Linux's /proc), else "the file"."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "the file"


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


# --- token list ---------------------------------------------------------------------------


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


def run_list(args: argparse.Namespace) -> int:
    path = store_path(args)
    with existing_store(path) as store:
        records = store.list_tokens(args.user)
    now = datetime.now(UTC)
    # Rows written before names were checked may hold token-shaped text: masked.
    if args.json:
        print(redact(json.dumps([_record_dict(record, now) for record in records], indent=2)))
        return EXIT_OK
    if not records:
        who = f" for {args.user}" if args.user else ""
        print(redact(f"no tokens{who} in {path}"), file=sys.stderr)
        return EXIT_OK
    rows = [
        [
            r.fingerprint,
            redact(r.user),
            r.role,
            redact(r.display_name or "-"),
            format_time(r.created_at),
            format_time(r.expires_at)
            + (" (expired)" if r.expires_at and r.expires_at <= now else ""),
        ]
        for r in records
    ]
    _table(["FINGERPRINT", "USER", "ROLE", "NAME", "CREATED", "EXPIRES"], rows, sys.stdout)
    return EXIT_OK


# --- token revoke -------------------------------------------------------------------------


def run_revoke(args: argparse.Namespace) -> int:
    prefix = args.fingerprint.strip().lower()
    path = store_path(args)
    with existing_store(path) as store, contextlib.ExitStack() as stack:
        try:
            record = store.find_token(args.fingerprint)
            unknown = record is None
        except TokenStoreError:
            # Its entry does not parse (revoke deletes it all the same), or several
            # tokens match (revoke refuses, deleting nothing): only the message is poorer.
            record, unknown = None, False
        fingerprint = record.fingerprint if record else prefix[:FINGERPRINT_LENGTH]
        broadcast = None
        if args.redis_url:
            if len(fingerprint) < FINGERPRINT_LENGTH and unknown:
                raise Failure(
                    f"no token with fingerprint {prefix} in {path} (give its full "
                    f"{FINGERPRINT_LENGTH}-digit fingerprint to broadcast its revocation anyway)"
                )
            if len(fingerprint) < FINGERPRINT_LENGTH:
                raise UsageError(
                    f"the store cannot tell which token {prefix} is (several match, or its "
                    f"entry does not parse): give its full {FINGERPRINT_LENGTH}-digit "
                    "fingerprint to revoke it and broadcast the revocation"
                )
            # Redis must answer before anything changes.
            broadcast = stack.enter_context(_broadcaster(args))
        revoked = store.revoke(args.fingerprint)
        if not revoked and broadcast is None:
            raise Failure(f"no token with fingerprint {prefix} in {path}")
        if not revoked:
            print(
                redact(
                    f"token {fingerprint} is not in {path} (already revoked?); "
                    "its revocation was broadcast anyway"
                )
            )
        elif record is not None:
            name = f" ({record.display_name!r})" if record.display_name else ""
            print(
                redact(
                    f"Revoked {record.role} token {record.fingerprint} of {record.user}{name} "
                    f"from {path}."
                )
            )
        else:
            print(redact(f"Revoked token {fingerprint} (its entry did not parse) from {path}."))
        sys.stdout.flush()
        if broadcast is None:
            print(
                "hfauth-mw: note: servers using this store keep accepting the token until "
                "their cache entry ends (60 s by default); use --redis-url to drop it at once",
                file=sys.stderr,
            )
            return EXIT_OK
        try:
            reached = broadcast(fingerprint)
        except SharedCacheUnavailable as exc:
            raise Failure(
                f"{exc}; the token is out of {path} but servers may keep it until their "
                "cache entry ends: broadcast it once Redis answers with "
                f"`hfauth-mw token revoke --store {path} --redis-url URL {fingerprint}`",
                EXIT_UNAVAILABLE,
            ) from None
    print(f"Broadcast the revocation through Redis: {reached} process(es) listening.")
    return EXIT_OK


def _broadcaster(args: argparse.Namespace) -> RevocationBroadcast:
    """The revocation broadcast of ``--redis-url``, with Redis reached: else a
    one-line failure (exit 4), and nothing changed."""
    try:
        return revocation_broadcaster(args.redis_url, args.redis_secret_env, args.redis_prefix)
    except SharedCacheUnavailable as exc:
        raise Failure(
            f"{exc}: nothing was revoked; try again once Redis answers",
            EXIT_UNAVAILABLE,
        ) from None
