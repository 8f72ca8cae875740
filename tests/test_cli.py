"""The ``hfauth-mw`` parser and what every command shares (``_cli/__init__.py``,
``_cli/common.py``): usage errors, help, and values that look like a token.

Real parts only: real SQLite stores in ``tmp_path``, real subprocesses of
``.venv/bin/hfauth-mw``. Fixtures: ``cli_fixtures.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_fixtures import CONSOLE_SCRIPT, Cli, subprocess_env
from hfauth_mw import LocalTokenStore, __version__

pytest_plugins = ["cli_fixtures"]
pytestmark = pytest.mark.usefixtures("cli_env")


# --- usage and help -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["inspect"], "one of the arguments --hub-url --store is required", id="no-source"
        ),
        pytest.param(
            ["inspect", "--store", "x", "--hub-url", "http://127.0.0.1:1"],
            "not allowed with",
            id="two-sources",
        ),
        pytest.param(
            ["inspect", "--store", "x", "--repo", "bad"], "expected 'owner/name'", id="bad-repo"
        ),
        pytest.param(
            ["inspect", "--hub-url", "http://hub.example.com"],
            "is plain http to another machine",
            id="clear-http",
        ),
        pytest.param(["hub-emulator", "--host", "0.0.0.0"], "--allow-remote", id="emulator-remote"),
        pytest.param(["demo", "--port", "70000"], "between 0 and 65535", id="demo-port-too-big"),
        pytest.param(["demo", "--port", "-1"], "between 0 and 65535", id="demo-port-negative"),
        pytest.param(
            ["hub-emulator", "--port", "65536"], "between 0 and 65535", id="emulator-port-too-big"
        ),
        pytest.param(["hub-emulator", "--port", "http"], "not a number", id="emulator-port-text"),
        pytest.param([], "required", id="no-command"),
        pytest.param(["token"], "required", id="no-token-action"),
    ],
)
def test_usage_errors(cli: Cli, argv: list[str], message: str, no_serve: None) -> None:
    result = cli(*argv, stdin="hf_" + "Z" * 34)
    assert result.code == 2
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1


def test_help_lists_every_command(cli: Cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for command in ("token", "inspect", "hub-emulator", "demo"):
        assert command in result.out


# --- values that look like a token ----------------------------------------------------------------


PASTED = "hf_JzkXyIxjvK6E3k8mcyo2i8D3OncmQIhpeR"  # shaped like a Hub token, valid nowhere


ORG_TOKEN = "api_org_kQwErTyUiOpAsDfGhJkLzXcVbNm"  # the legacy org-token shape


def assert_no_token_at_rest(tmp_path: Path, *secrets: str) -> None:
    """No file under ``tmp_path`` (store, WAL, demo seed) holds or is named after a secret."""
    for path in tmp_path.rglob("*"):
        for secret in secrets:
            assert secret not in str(path.relative_to(tmp_path))
            if path.is_file():
                assert secret.encode() not in path.read_bytes(), path


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        pytest.param(["token", "list", "--store", "STORE", "--user", PASTED], "hf_***",
                     id="list-user"),
        pytest.param(["token", "create", "--store", "STORE", "--user", PASTED], "hf_***",
                     id="create-user"),
        pytest.param(["token", "create", "--store", "STORE", "--user", ORG_TOKEN], "hf_***",
                     id="create-user-org-token"),
        pytest.param(["token", "create", "--store", "STORE", "--user", "bob", "--name", PASTED],
                     "hf_***", id="create-name"),
        pytest.param(["token", "create", "--store", "STORE", "--user", "bob",
                      "--name", f"laptop {PASTED}"], "laptop hf_***", id="create-name-inside"),
        pytest.param(["token", "create", "--store", "STORE", "--user", "bob",
                      "--org", f"{PASTED}:write"], "hf_***:write", id="create-org"),
        pytest.param(["token", "create", "--store", "STORE", "--user", "bob",
                      "--grant", f"model:acme/{PASTED}:repo.content.read"],
                     "model:acme/hf_***:repo.content.read", id="create-grant"),
        pytest.param(["token", "create", "--store", "STORE", "--user", "bob", "--global", PASTED],
                     "hf_***", id="create-global"),
        pytest.param(["token", "revoke", "--store", "STORE", PASTED], "hf_***",
                     id="revoke-fingerprint"),
        pytest.param(["token", "revoke", "--store", "STORE", "--redis-url",
                      f"redis://127.0.0.1:1/0?{PASTED}", "00000000"],
                     "redis://127.0.0.1:1/0?hf_***", id="revoke-redis-url"),
        pytest.param(["token", "revoke", "--store", "STORE", "--redis-url",
                      "redis://127.0.0.1:1/0", "--redis-secret-env", PASTED, "00000000"],
                     "hf_***", id="revoke-redis-secret-env"),
        pytest.param(["inspect", "--store", "STORE", "--repo", f"acme/{PASTED}"], "acme/hf_***",
                     id="inspect-repo"),
        pytest.param(["inspect", "--store", "STORE", "--public", f"dataset:acme/{PASTED}"],
                     "dataset:acme/hf_***", id="inspect-public"),
        pytest.param(["inspect", "--store", "STORE", "--gated", f"{PASTED}/x"], "hf_***/x",
                     id="inspect-gated"),
        pytest.param(["inspect", "--hub-url", f"http://127.0.0.1:1/{PASTED}"],
                     "http://127.0.0.1:1/hf_***", id="inspect-hub-url"),
        # Each emulator/demo line also holds a value that stops the command early without
        # the check (a non-loopback host, a plain-http remote hub), so none starts a server.
        pytest.param(["hub-emulator", "--store", "STORE", "--host", "0.0.0.0",
                      "--public", f"acme/{PASTED}"], "acme/hf_***", id="emulator-public"),
        pytest.param(["hub-emulator", "--store", "STORE", "--host", "0.0.0.0",
                      "--gated", f"acme/{PASTED}"], "acme/hf_***", id="emulator-gated"),
        pytest.param(["hub-emulator", "--store", "STORE", "--host", PASTED], "hf_***",
                     id="emulator-host"),
        pytest.param(["demo", "--hub-url", "http://hub.example.com", "--model", f"acme/{PASTED}"],
                     "acme/hf_***", id="demo-model"),
        pytest.param(["demo", "--hub-url", f"http://hub.example.com/{PASTED}"],
                     "http://hub.example.com/hf_***", id="demo-hub-url"),
        pytest.param(["demo", "--hub-url", "http://hub.example.com", "--host", PASTED], "hf_***",
                     id="demo-host"),
    ],
)  # fmt: skip
def test_token_shaped_values_are_refused(
    cli: Cli, tmp_path: Path, store_path: Path, alice: str, argv: list[str], shown: str
) -> None:
    argv = [str(store_path) if arg == "STORE" else arg for arg in argv]
    result = cli(*argv, stdin=alice + "\n")  # inspect would read alice's token
    assert (result.code, result.out) == (2, "")
    assert f"looks like an access token ({shown}); give " in result.err
    assert result.err.startswith("hfauth-mw ")
    assert len(result.err.strip().splitlines()) == 1
    for secret in (PASTED, ORG_TOKEN, alice):
        assert secret not in result.err
    with LocalTokenStore(store_path) as store:
        assert [(r.user, r.display_name) for r in store.list_tokens()] == [("alice", None)]
    assert_no_token_at_rest(tmp_path, PASTED, ORG_TOKEN, alice)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        pytest.param(["token", "list"], "hf_***  read  laptop hf_***", id="list-table"),
        pytest.param(["token", "list", "--json"], '"user": "hf_***"', id="list-json"),
        pytest.param(["token", "revoke", "FINGERPRINT"], "of hf_*** ('laptop hf_***')",
                     id="revoke"),
        pytest.param(["inspect"], "token name:   laptop hf_***", id="inspect-text"),
        pytest.param(["inspect", "--json"], '"token_name": "laptop hf_***"', id="inspect-json"),
    ],
)  # fmt: skip
def test_token_shaped_names_already_stored_are_masked(
    cli: Cli, store_path: Path, argv: list[str], expected: str
) -> None:
    """A store written before the check (or through the library) may hold a pasted token."""
    with LocalTokenStore(store_path) as store:
        issued = store.create_token(user=PASTED, display_name=f"laptop {PASTED}")
    argv = [issued.record.fingerprint if arg == "FINGERPRINT" else arg for arg in argv]
    result = cli(argv[0], *argv[1:], "--store", str(store_path), stdin=issued.token + "\n")
    assert result.code == 0, result.err
    assert expected in result.out
    for secret in (PASTED, issued.token):
        assert secret not in result.out + result.err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["token", "create", "--user", "bob"], id="token-create"),
        pytest.param(["token", "list"], id="token-list"),
        pytest.param(["token", "revoke", "{fingerprint}"], id="token-revoke"),
        pytest.param(["inspect"], id="inspect"),
        pytest.param(["hub-emulator"], id="hub-emulator"),
        pytest.param(["demo"], id="demo"),
    ],
)
def test_an_empty_store_is_refused_not_taken_for_the_default(
    cli: Cli, tmp_path: Path, argv: list[str], no_serve: None
) -> None:
    """``--store "$STORE"`` with STORE unset: the default store must not be used instead."""
    with LocalTokenStore(tmp_path / "tokens.sqlite3") as store:
        issued = store.create_token(user="alice")
    argv = [arg.format(fingerprint=issued.record.fingerprint) for arg in argv]

    result = cli(*argv, "--store", "", stdin=issued.token + "\n")

    assert (result.code, result.out) == (2, "")
    assert result.err == "hfauth-mw: error: --store is empty (is the variable you used set?)\n"
    with LocalTokenStore(tmp_path / "tokens.sqlite3") as store:
        assert [record.user for record in store.list_tokens()] == ["alice"]
    assert sorted(path.name for path in tmp_path.iterdir()) == ["tokens.sqlite3"]


def _stdout_tests(tmp_path: Path) -> tuple[Path, str, str]:
    """A store with one token: its path, the token, its fingerprint."""
    store = tmp_path / "cli.sqlite3"
    with LocalTokenStore(store) as token_store:
        issued = token_store.create_token(user="alice", role="write")
    return store, issued.token, issued.record.fingerprint


STDOUT_COMMANDS = [
    pytest.param(["token", "list", "--store", "{store}"], id="token-list"),
    pytest.param(["token", "list", "--json", "--store", "{store}"], id="token-list-json"),
    pytest.param(["token", "revoke", "--store", "{store}", "{fingerprint}"], id="token-revoke"),
    pytest.param(["inspect", "--store", "{store}"], id="inspect"),
    pytest.param(["inspect", "--json", "--store", "{store}"], id="inspect-json"),
]


@pytest.mark.parametrize("argv", STDOUT_COMMANDS)
def test_console_script_with_stdout_closed_says_so_and_changes_nothing(
    tmp_path: Path, argv: list[str]
) -> None:
    store, token, fingerprint = _stdout_tests(tmp_path)
    argv = [arg.format(store=store, fingerprint=fingerprint) for arg in argv]
    result = subprocess.run(
        ["sh", "-c", '"$0" "$@" >&-', str(CONSOLE_SCRIPT), *argv],
        input=token + "\n", stderr=subprocess.PIPE, text=True, env=subprocess_env(),
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith(
        f"hfauth-mw: error: standard output is closed: `hfauth-mw {' '.join(argv[:2])}"
        if argv[0] == "token"
        else "hfauth-mw: error: standard output is closed: `hfauth-mw inspect`"
    )
    assert len(result.stderr.strip().splitlines()) == 1
    with LocalTokenStore(store) as token_store:
        assert [record.user for record in token_store.list_tokens()] == ["alice"]


@pytest.mark.parametrize("argv", STDOUT_COMMANDS)
def test_console_script_into_a_closed_pipe_exits_quietly(tmp_path: Path, argv: list[str]) -> None:
    """`hfauth-mw token list | head -1`: the reader went away; no error, as Unix tools."""
    store, token, fingerprint = _stdout_tests(tmp_path)
    argv = [arg.format(store=store, fingerprint=fingerprint) for arg in argv]
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written
    try:
        result = subprocess.run(
            [str(CONSOLE_SCRIPT), *argv],
            input=token + "\n", stdout=write_end, stderr=subprocess.PIPE, text=True,
            env=subprocess_env(), timeout=60, check=False,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


@pytest.mark.parametrize(
    "module",
    [
        pytest.param("hfauth_mw._cli", id="the-cli-package"),
        pytest.param("hfauth_mw", id="the-package"),
    ],
)
def test_python_dash_m_runs_the_same_cli(module: str) -> None:
    """``python -m hfauth_mw`` (and ``hfauth_mw._cli``) is the console script
    (``hfauth_mw._cli:main``): its output and its exit codes."""
    for argv, code, out in (
        (["--version"], 0, f"hfauth-mw {__version__}\n"),
        (["token", "list", "--store", ""], 2, ""),
    ):
        result = subprocess.run(
            [sys.executable, "-m", module, *argv],
            capture_output=True, text=True, env=subprocess_env(), timeout=60, check=False,
        )  # fmt: skip
        assert (result.returncode, result.stdout) == (code, out), result.stderr
