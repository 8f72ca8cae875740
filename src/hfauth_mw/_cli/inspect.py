"""``hfauth-mw inspect``: who a token belongs to and what it may read or write.

The token is read from standard input (one line) or ``$HF_TOKEN``, or
prompted for on a terminal: never from the command line, so it lands neither
in shell history nor in ``ps``. Output shows its fingerprint, never the token.

Repository decisions (``--repo``) come from the hub's own auth-check with
``--hub-url`` (``--authority hub``, the default there: it alone knows gate
grants, org policies and resource groups), or from the local rules
(``--authority local``, the only choice with ``--store``), fed with
``--public`` / ``--gated``. Each decision says who made it (``decided_by``):
even under the hub, a certain local denial (a read token never writes) is
made without a call. Hub trouble is a one-line error and exit 4, never a
decision.
"""

from __future__ import annotations

import argparse
import getpass
import io
import json
import os
import select
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from .._authenticator import Authenticator
from .._authority import HubAuthority
from .._credentials import Credentials, bare_credentials
from .._exceptions import InvalidRequest, InvalidToken, SourceUnavailable, TokenStoreError
from .._hub_access import HubAccessCheck
from .._principal import Principal
from .._rules import AccessPolicy, Decision, Repo, Visibility
from .._source_protocol import IntrospectionSource
from .._sources import HubWhoamiSource, LocalStoreSource
from .._store import LocalTokenStore
from .common import (
    EXIT_INVALID_TOKEN,
    EXIT_OK,
    EXIT_UNAVAILABLE,
    Failure,
    UsageError,
    format_time,
    given_store,
    hub_source,
    parse_hub_url,
    parse_repo,
    redact,
)


def add_parser(commands: argparse._SubParsersAction[Any]) -> None:
    """Add ``inspect`` to the ``hfauth-mw`` parser's ``commands``."""
    inspect = commands.add_parser(
        "inspect",
        help="show who a token belongs to and what it may do",
        description="Introspect a token read from standard input (one line), or from "
        "$HF_TOKEN when nothing is piped (prompted for on a terminal). A piped token wins "
        "over $HF_TOKEN; the output says which was used. Never pass a token on the command "
        "line. Exit 0 valid, 3 invalid, 4 source unavailable. With --hub-url, --repo "
        "decisions are the hub's own (its auth-check); --authority local shows the local "
        "rules' instead.",
    )
    where = inspect.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--hub-url", type=parse_hub_url, metavar="URL", help="ask {URL}/api/whoami-v2"
    )
    where.add_argument("--store", metavar="PATH", help="look the token up in a local store")
    inspect.add_argument(
        "--repo",
        action="append",
        default=[],
        type=parse_repo,
        metavar="REPO",
        help="show read/write decisions on TYPE:OWNER/NAME (bare OWNER/NAME is a model); "
        "repeatable",
    )
    inspect.add_argument(
        "--authority",
        choices=("hub", "local"),
        help="who decides on --repo: the hub's auth-check (default with --hub-url) or the "
        "local rules (default, and the only choice, with --store)",
    )
    inspect.add_argument(
        "--public",
        action="append",
        default=[],
        type=parse_repo,
        metavar="REPO",
        help="treat as public (local rules only)",
    )
    inspect.add_argument(
        "--gated",
        action="append",
        default=[],
        type=parse_repo,
        metavar="REPO",
        help="treat as gated, with the caller admitted through its gate (local rules only)",
    )
    inspect.add_argument("--json", action="store_true", help="print one JSON object")
    inspect.set_defaults(run=run)


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
    return {
        "allowed": decision.allowed,
        "reason": decision.reason,
        "needed": decision.needed,
        "decided_by": decision.decided_by,
    }


def _authority_of(args: argparse.Namespace) -> str:
    """``"hub"`` or ``"local"``: ``--authority``, else the hub for ``--hub-url``."""
    authority: str = args.authority or ("hub" if args.hub_url else "local")
    if authority == "hub" and not args.hub_url:
        raise UsageError("--authority hub needs --hub-url: a local store has no auth-check")
    if authority == "hub" and (args.public or args.gated):
        raise UsageError(
            "--public and --gated feed the local rules; the hub knows each repository's "
            "visibility and gate: drop them, or add --authority local"
        )
    return authority


def _reason(exc: SourceUnavailable) -> str:
    """A 503's reason for a person: what failed, and where and how on the wire
    when the call itself failed (:attr:`TransportFailure.detail`: URL without
    credentials or query, and the error class; never the token)."""
    reason = exc.description.rstrip(".")
    # Read by name, not by class: where TransportFailure lives may change.
    detail = getattr(exc, "detail", None)
    if isinstance(detail, str) and detail:
        reason += f" ({detail})"
    return reason


Decisions = list[tuple[Repo, Decision, Decision]]


def _hub_decisions(
    authenticator: Authenticator,
    hub: HubAuthority,
    credentials: Credentials,
    principal: Principal,
    repos: Sequence[Repo],
    which: str,
) -> Decisions:
    """The hub's read and write decisions on each of ``repos``; the first trouble
    is a :class:`Failure` (exit 4, or 3 when the hub no longer accepts the token)."""
    asked = f"{which}, asked {hub.check.name} auth-check"
    decided: Decisions = []
    for repo in repos:
        pair: list[Decision] = []
        for access in ("read", "write"):
            try:
                pair.append(authenticator.run_sync(hub.flow(credentials, principal, repo, access)))
            except InvalidToken:
                raise Failure(
                    f"invalid {which}: the hub's auth-check no longer accepts it "
                    f"(asked about {access} on {repo}, {hub.check.name})",
                    EXIT_INVALID_TOKEN,
                ) from None
            except SourceUnavailable as exc:
                raise Failure(
                    f"the hub could not decide {access} on {repo}: {_reason(exc)} ({asked})",
                    EXIT_UNAVAILABLE,
                ) from None
        decided.append((repo, pair[0], pair[1]))
    return decided


def _principal_lines(principal: Principal) -> list[tuple[str, str]]:
    orgs = ", ".join(f"{org.name} ({org.role})" for org in principal.orgs) or "-"
    scoped = [
        f"{grant.entity_type} {grant.entity_name or grant.entity_id or '?'}: "
        + ", ".join(sorted(grant.permissions))
        for grant in principal.scoped
    ]
    expires = format_time(principal.expires_at)
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
        return hub_source(args.hub_url)
    path = given_store(args)
    if path is None or not path.is_file():
        raise Failure(f"no token store at {path}", EXIT_UNAVAILABLE)
    try:
        return LocalStoreSource(LocalTokenStore(path))
    except TokenStoreError as exc:  # not SQLite, unreadable, too new: it cannot answer
        raise Failure(str(exc), EXIT_UNAVAILABLE) from None


def run(args: argparse.Namespace) -> int:
    authority = _authority_of(args)
    source = _source_for(args)
    token, origin_key, origin = _read_token()
    try:
        credentials = bare_credentials(token)
    except InvalidRequest as exc:  # never sent anywhere: the message says what is wrong
        raise UsageError(exc.description) from None
    finally:
        del token
    # Said in every outcome: which token (by fingerprint) went where.
    which = f"token {credentials.fingerprint} from {origin}"
    authenticator = Authenticator(source)
    try:
        principal = authenticator.authenticate_sync(credentials)
    except InvalidToken as exc:
        raise Failure(
            f"invalid {which}, asked {source.name}: {exc.description}", EXIT_INVALID_TOKEN
        ) from None
    except SourceUnavailable as exc:
        raise Failure(f"{_reason(exc)} ({which}, asked {source.name})", EXIT_UNAVAILABLE) from None
    except TokenStoreError as exc:
        raise Failure(str(exc), EXIT_UNAVAILABLE) from None
    finally:
        if isinstance(source, LocalStoreSource) and isinstance(source.store, LocalTokenStore):
            source.store.close()
    visibility = _visibility_of(args.public, args.gated)
    if authority == "hub":
        assert isinstance(source, HubWhoamiSource)
        hub = authenticator.hub_authority(HubAccessCheck.for_source(source))
        decided_by = f"the hub's auth-check ({hub.check.hub_url})"
        decisions = _hub_decisions(authenticator, hub, credentials, principal, args.repo, which)
    else:
        admitted = frozenset(args.gated)
        policy = AccessPolicy(
            visibility=visibility, gate_passed=lambda principal, repo: repo in admitted
        )
        decided_by = "the local rules (--public, --gated; any other repository private)"
        decisions = [
            (repo, policy.can_read(principal, repo), policy.can_write(principal, repo))
            for repo in args.repo
        ]
    if args.json:
        document = principal.to_dict()
        document["token_from"] = origin_key
        document["authority"] = authority
        document["decisions"] = [
            {
                "repo": str(repo),
                # Only the local rules were told a visibility; the hub keeps its own.
                **({"visibility": visibility(repo).value} if authority == "local" else {}),
                "read": _decision_dict(read),
                "write": _decision_dict(write),
            }
            for repo, read, write in decisions
        ]
        # Names written to a local store before they were checked are masked.
        print(redact(json.dumps(document, indent=2)))
        return EXIT_OK
    out = sys.stdout
    lines = [*_principal_lines(principal), ("token from", origin)]
    if decisions:
        lines.append(("decisions by", decided_by))
    for label, value in lines:
        out.write(f"{label + ':' if label else '':<14}{redact(value)}\n")
    for repo, read, write in decisions:
        shown = f" ({visibility(repo).value})" if authority == "local" else ""
        out.write(f"\n{repo}{shown}\n")
        for what, decision in (("read", read), ("write", write)):
            verdict = "allowed" if decision else "denied"
            out.write(
                redact(f"  {what + ':':<7}{verdict:<8} {decision.reason} [{decision.decided_by}]")
                + "\n"
            )
    return EXIT_OK
