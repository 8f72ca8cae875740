"""``hfauth-mw``: manage a local token store, inspect a token, run the emulator or the demo.

One module per command (``token``, ``inspect``, ``hub_emulator``, ``demo``),
each adding its parser and the function that runs it; ``common`` holds what
they share. This module builds the parser and maps errors to exit codes.

Exit codes: 0 success, 1 failure, 2 usage error, 3 invalid token (``inspect``),
4 token source unavailable (``inspect``; Redis for ``token revoke --redis-url``),
141 standard output's reader went away (quietly, as Unix tools). Errors are one
line on stderr.
Tokens are printed only by ``token create`` (once, alone on stdout) and by
``demo`` (its own throwaway demo tokens); ``inspect`` reads the token from
``HF_TOKEN`` or standard input, never from the command line. A free-text
value holding what is almost surely a token (``_validation.LIKELY_TOKEN``) is
refused as a usage error, shown as ``hf_***``; messages mask the wider
``_validation.TOKEN_SHAPED``, so a name such as ``my_hf_tools`` is accepted but
may print partly masked.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable, Sequence

from .. import __version__
from .._exceptions import ConfigurationError, HFAuthError, TokenStoreError
from . import demo, hub_emulator, inspect, token
from .common import EXIT_FAILURE, EXIT_USAGE, Failure, Parser, UsageError, discard_stdout, err

__all__ = ["main"]

#: The exit code of a command whose reader went away (``| head``): 128 + SIGPIPE,
#: as a shell reports a Unix tool that SIGPIPE ended.
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="hfauth-mw",
        description="Accept Hugging Face access tokens in your service: manage a local "
        "token store, inspect a token, run a local Hub emulator or the demo server.",
        epilog="Exit codes: 0 ok, 1 failure, 2 usage, 3 invalid token, 4 token source "
        "unavailable. Each command has --help; docs/cli.md in the source tree has examples.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in (token, inspect, hub_emulator, demo):
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``hfauth-mw`` with ``argv`` (default: ``sys.argv[1:]``); the exit code.

    The console script's entry point (``hfauth_mw._cli:main``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        if sys.stdout is None and run is not token.run_create:  # create says why itself
            command = " ".join(filter(None, (args.command, getattr(args, "token_command", ""))))
            raise UsageError(
                f"standard output is closed: `hfauth-mw {command}` has nowhere to print; "
                "redirect it (>/dev/null) instead of closing it (>&-)"
            )
        code = run(args)
        if sys.stdout is not None:
            sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:  # `hfauth-mw token list | head -1`: quiet, as Unix tools are
        discard_stdout()
        return EXIT_BROKEN_PIPE
    except UsageError as exc:
        err(str(exc))
        return EXIT_USAGE
    except Failure as exc:
        err(str(exc))
        return exc.code
    except ConfigurationError as exc:
        err(str(exc))
        return EXIT_USAGE
    except (TokenStoreError, HFAuthError, OSError) as exc:
        err(str(exc))
        return EXIT_FAILURE
    except (OverflowError, ValueError) as exc:  # a value out of range, from the user
        err(f"{exc} (see hfauth-mw {args.command} --help)")
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def entry() -> None:
    raise SystemExit(main())
