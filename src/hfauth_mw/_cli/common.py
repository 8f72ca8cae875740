"""What every ``hfauth-mw`` command shares: exit codes, errors, masking, argument types, the store.

Masking: a free-text value holding what is almost surely a token
(``_validation.LIKELY_TOKEN``) is refused as a usage error, shown as ``hf_***``;
messages mask the wider ``_validation.TOKEN_SHAPED``, so a name such as
``my_hf_tools`` is accepted but may print partly masked.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import NoReturn

from .._exceptions import ConfigurationError
from .._rules import Repo
from .._sources import HubWhoamiSource
from .._store import LocalTokenStore
from .._validation import LIKELY_TOKEN, TOKEN_SHAPED

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_INVALID_TOKEN, EXIT_UNAVAILABLE = 0, 1, 2, 3, 4
#: The store of the ``token`` commands and ``hub-emulator`` without ``--store`` or
#: ``$HFAUTH_STORE``: the name the README and the examples use.
DEFAULT_STORE = "tokens.sqlite3"
#: The default's name before 0.1.0, still used where it is the only one (with a note).
FORMER_DEFAULT_STORE = "hfauth-tokens.sqlite3"
STORE_HELP = f"token store file (default: $HFAUTH_STORE or ./{DEFAULT_STORE})"


class UsageError(Exception):
    """A bad argument value: exit 2."""


class Failure(Exception):
    """The command could not do its work: exit 1 (or ``code``)."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


_MASK = "hf_***"


def redact(text: str) -> str:
    """``text`` with anything shaped like a token (``TOKEN_SHAPED``) shown as ``hf_***``.

    Idempotent: a mask already in ``text`` is kept as it is (``hf_***`` is itself
    token-shaped, and would otherwise grow to ``hf_******``).
    """
    return _MASK.join(TOKEN_SHAPED.sub(_MASK, part) for part in text.split(_MASK))


_LOOKS_LIKE_TOKEN = "looks like an access token"


def not_a_token(text: str, instead: str) -> str:
    """``text``, unless it holds what is almost surely a token: then a usage error
    showing it masked. The test is ``_validation.LIKELY_TOKEN``, shared with the library."""
    if LIKELY_TOKEN.search(text):
        raise argparse.ArgumentTypeError(f"{_LOOKS_LIKE_TOKEN} ({redact(text)}); give {instead}")
    return text


def plain(instead: str) -> Callable[[str], str]:
    """An argparse ``type`` for free text that must not be a pasted token."""

    def check(text: str) -> str:
        return not_a_token(text, instead)

    return check


# Free-text values are checked by their `type`: one that looks like an access token
# (pasted by mistake) is a usage error, so it is never stored or printed.
# --store is a path (it may well hold `hf_`, e.g. ~/hf_cache/): it is masked instead.
parse_hub_url = plain("the hub's base URL, e.g. https://huggingface.co")
parse_bind_host = plain("a host name or address to bind, e.g. 127.0.0.1")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors that never echo a token back."""

    def error(self, message: str) -> NoReturn:
        if _LOOKS_LIKE_TOKEN in message:
            hint = ""  # the message already says what to give instead
        elif TOKEN_SHAPED.search(message):
            hint = " (tokens are never taken from the command line: use HF_TOKEN or stdin)"
        else:
            hint = f" (see {self.prog} --help)"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {redact(message)}{hint}\n")


def discard_stdout() -> None:
    """Point stdout at the null device, so what could not be written (a token, a
    table into a closed pipe) is not retried at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        pass  # not a real file: nothing is written at exit


def err(message: str) -> None:
    print(f"hfauth-mw: error: {redact(message)}", file=sys.stderr)


# --- argument types shared by several commands --------------------------------------------


def parse_repo(text: str) -> Repo:
    not_a_token(text, "a repository: TYPE:OWNER/NAME or OWNER/NAME")
    try:
        return Repo.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_port(text: str) -> int:
    try:
        number = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port {text!r} is not a number") from None
    if not 0 <= number <= 65535:
        raise argparse.ArgumentTypeError(f"port {number} is not between 0 and 65535")
    return number


def format_time(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value else "never"


# --- the token store ----------------------------------------------------------------------


def store_path(args: argparse.Namespace) -> Path:
    """The store ``--store`` names, else ``$HFAUTH_STORE``, else ``./tokens.sqlite3``.

    Where only ``./hfauth-tokens.sqlite3`` (the former default) exists, that one,
    with a note on stderr: tokens made there keep working, and no second store
    starts beside it. Call it once per command: each call may print the note.
    """
    if (given := given_store(args)) is not None:
        return given
    if from_env := os.environ.get("HFAUTH_STORE"):
        return Path(from_env)
    path, former = Path(DEFAULT_STORE), Path(FORMER_DEFAULT_STORE)
    if path.exists() or not former.is_file():
        return path
    print(
        f"hfauth-mw: note: using {former}, the default store's former name; rename it to "
        f"{path} (or pass --store {former}) to silence this note",
        file=sys.stderr,
    )
    return former


def given_store(args: argparse.Namespace) -> Path | None:
    """The path ``--store`` gives, None without ``--store``. An empty one is a
    usage error: ``--store "$STORE"`` with ``STORE`` unset must not quietly mean
    the default store."""
    if args.store is None:
        return None
    if not args.store:
        raise UsageError("--store is empty (is the variable you used set?)")
    return Path(args.store)


def existing_store(path: Path) -> LocalTokenStore:
    """The store at ``path``, which must exist: a mistyped path would otherwise
    become a new, empty store that knows no token."""
    if not path.is_file():
        raise Failure(f"no token store at {path} (create one with `hfauth-mw token create`)")
    return LocalTokenStore(path)


def hub_source(url: str) -> HubWhoamiSource:
    """The hub of ``--hub-url``, its refusals worded for the command line (the
    library's name the keyword arguments a program would pass instead)."""
    try:
        return HubWhoamiSource(url)
    except ConfigurationError as exc:
        if "plain http" in str(exc):
            raise UsageError(
                f"--hub-url {url} is plain http to another machine: the token would cross "
                "the network in clear text. Use https (http only to 127.0.0.1, ::1 or "
                "localhost)"
            ) from None
        raise UsageError(str(exc).replace("hub_url", "--hub-url", 1)) from None
