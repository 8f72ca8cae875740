"""``hfauth-mw token create | list | revoke`` (``_cli/token.py``), in-process and
as the real console script. Fixtures: ``cli_fixtures.py``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import pty
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli_fixtures import ANY_TOKEN, CONSOLE_SCRIPT, TOKEN_LINE, Cli, closed_port, subprocess_env
from hfauth_mw import LocalTokenStore
from hfauth_mw._cli import main

pytest_plugins = ["cli_fixtures"]
pytestmark = pytest.mark.usefixtures("cli_env")


# --- token create ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "summary"),
    [
        pytest.param(["--user", "bob"], "read token", id="default-read"),
        pytest.param(
            ["--user", "alice", "--role", "write", "--org", "acme:write"], "write token", id="write"
        ),
        pytest.param(
            ["--user", "carol", "--grant", "model:acme/sentiment:repo.content.read,repo.write"],
            "fineGrained token",
            id="grant-implies-fine-grained",
        ),
        pytest.param(
            ["--user", "erin", "--role", "fineGrained", "--global", "inference.serverless.write"],
            "fineGrained token",
            id="global-only",
        ),
        pytest.param(["--user", "dan", "--expires", "12h"], "expires 20", id="expires-relative"),
        pytest.param(
            ["--user", "dan", "--expires", "2999-01-01T00:00:00Z"],
            "expires 2999-01-01",
            id="expires-iso",
        ),
        pytest.param(["--user", "dan", "--name", "laptop"], "name 'laptop'", id="display-name"),
    ],
)
def test_create_prints_only_the_token(
    cli: Cli, store_path: Path, args: list[str], summary: str
) -> None:
    result = cli("token", "create", "--store", str(store_path), *args)
    assert result.code == 0, result.err
    assert TOKEN_LINE.match(result.out.rstrip("\n"))
    assert result.out.count("\n") == 1
    assert summary in result.err
    assert "went once to standard output (not a terminal)" in result.err  # capsys's
    assert not ANY_TOKEN.search(result.err)
    fingerprint = re.search(r"token ([0-9a-f]{12}) for", result.err)
    assert fingerprint is not None
    with LocalTokenStore(store_path) as store:
        assert [r.fingerprint for r in store.list_tokens()] == [fingerprint.group(1)]


def test_create_uses_hfauth_store_env(cli: Cli, tmp_path: Path) -> None:
    path = tmp_path / "from-env.sqlite3"
    result = cli("token", "create", "--user", "bob", env={"HFAUTH_STORE": str(path)})
    assert result.code == 0
    assert path.is_file()


FORMER_DEFAULT = "hfauth-tokens.sqlite3"  # the default store's name before 0.1.0


@pytest.mark.parametrize(
    ("present", "used", "note"),
    [
        pytest.param([], "tokens.sqlite3", False, id="none-yet"),
        pytest.param(["tokens.sqlite3"], "tokens.sqlite3", False, id="the-readme-s"),
        pytest.param([FORMER_DEFAULT], FORMER_DEFAULT, True, id="only-the-former-default"),
        pytest.param(
            ["tokens.sqlite3", FORMER_DEFAULT], "tokens.sqlite3", False, id="both-the-new-wins"
        ),
    ],
)
@pytest.mark.parametrize("action", ["create", "list"])
def test_the_default_store_is_the_readme_s_tokens_sqlite3(
    cli: Cli, tmp_path: Path, present: list[str], used: str, note: bool, action: str
) -> None:
    """Without --store or $HFAUTH_STORE: ./tokens.sqlite3, the name the README uses
    throughout; a store under the former default name, alone, is still found."""
    for name in present:
        with LocalTokenStore(tmp_path / name) as store:
            store.create_token(user=f"in-{name}")
    result = cli("token", action, *(["--user", "bob"] if action == "create" else ["--json"]))
    if action == "list" and not present:
        assert result.code == 1
        assert "no token store at tokens.sqlite3" in result.err
        assert not (tmp_path / "tokens.sqlite3").exists()
        return
    assert result.code == 0, result.err
    with LocalTokenStore(tmp_path / used) as store:
        users = {record.user for record in store.list_tokens()}
    if action == "create":
        assert "bob" in users
        assert f"in {used}." in result.err
    else:
        assert [record["user"] for record in json.loads(result.out)] == sorted(users)
    assert sorted(p.name for p in tmp_path.glob("*.sqlite3")) == sorted({*present, used})
    former_note = f"note: using {FORMER_DEFAULT}, the default store's former name"
    assert (former_note in result.err) is note
    if note:
        assert "rename it to tokens.sqlite3" in result.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--user", "a", "--org", "acme"], "NAME:ROLE", id="org-without-role"),
        pytest.param(["--user", "a", "--org", "acme:boss"], "not one of", id="org-unknown-role"),
        pytest.param(
            ["--user", "a", "--grant", "model:acme/x"], "TYPE:NAME:PERM", id="grant-shape"
        ),
        pytest.param(
            ["--user", "a", "--role", "write", "--grant", "model:acme/x:repo.write"],
            "need --role fineGrained",
            id="grant-on-classic",
        ),
        pytest.param(
            ["--user", "a", "--role", "fineGrained"], "needs at least one", id="empty-fine"
        ),
        pytest.param(
            ["--user", "a", "--expires", "soon"], "duration like 30d", id="expires-garbage"
        ),
        pytest.param(["--user", "a", "--expires", "2001-01-01"], "in the past", id="expires-past"),
        pytest.param(
            ["--user", "a", "--expires", "5000000d"], "too far in the future", id="expires-5e6-days"
        ),
        pytest.param(
            ["--user", "a", "--expires", "99999999999d"],
            "too far in the future",
            id="expires-beyond-timedelta",
        ),
        pytest.param(
            ["--user", "a", "--expires", "9999-12-31T23:59:59-01:00"],
            "too far in the future",
            id="expires-past-year-9999-in-utc",
        ),
        pytest.param(["--user", "a", "--role", "admin"], "invalid choice", id="role-unknown"),
        pytest.param(["--user", "a/b"], "must not contain", id="user-with-slash"),
        # Printed raw by `token list`: an escape sequence would rewrite the terminal.
        pytest.param(["--user", "a\x1b[2Jb"], "control characters", id="user-with-escape"),
        pytest.param(
            ["--user", "a", "--name", "laptop\nforged line"],
            "control characters",
            id="name-newline",
        ),
        pytest.param(
            ["--user", "a", "--org", "ac\x07me:read"], "control characters", id="org-with-bell"
        ),
        pytest.param([], "--user", id="user-missing"),
        pytest.param(["--user", ""], "--user is empty", id="user-empty"),
        # The options' names, not the library's keyword arguments.
        pytest.param(["--user", "a", "--name", "a\tb"], "--name 'a", id="name-in-cli-words"),
        pytest.param(
            ["--user", "a", "--global", ""], "--global: permission ''", id="global-in-cli-words"
        ),
        pytest.param(
            ["--user", "a", "--org", "acme:read", "--org", "acme:write"],
            "--org acme is given twice",
            id="org-twice",
        ),
        pytest.param(
            ["--user", "a", "--expires", "0001-01-01T00:00:00+14:00"],
            "already in the past",
            id="expires-before-year-1-in-utc",
        ),
    ],
)
def test_create_usage_errors(cli: Cli, store_path: Path, args: list[str], message: str) -> None:
    result = cli("token", "create", "--store", str(store_path), *args)
    assert result.code == 2
    assert result.out == ""
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert result.err.startswith("hfauth-mw")


@pytest.mark.parametrize(
    ("grant", "notes"),
    [
        pytest.param("model:acme/open:repo.write", [], id="known-names"),
        pytest.param(
            "models:acme/open:repo.write",
            [
                "--grant type 'models' is not one Hub tokens are known to use "
                "(did you mean 'model'?)"
            ],
            id="type-typo",
        ),
        pytest.param(
            "model:acme/open:repo.wirte",
            [
                "permission 'repo.wirte' is not one Hub tokens are known to use "
                "(did you mean 'repo.write'?)"
            ],
            id="permission-typo",
        ),
    ],
)
def test_create_notes_names_the_hub_does_not_use(
    cli: Cli, store_path: Path, grant: str, notes: list[str]
) -> None:
    """Accepted (the Hub may add names), but a typo grants nothing: said at once."""
    result = cli("token", "create", "--store", str(store_path), "--user", "a", "--grant", grant)
    assert result.code == 0
    said = [
        line.removeprefix("Note: ") for line in result.err.splitlines() if "known to use" in line
    ]
    assert [line.split(";")[0] for line in said] == notes


def test_create_says_when_org_changes_the_user_s_other_tokens(cli: Cli, store_path: Path) -> None:
    """The orgs are the user's, shared by all their tokens: a new --org changes
    what the older tokens grant, and a person in a hurry should hear it."""
    first = cli("token", "create", "--store", str(store_path), "--user", "alice")
    assert "Note:" not in first.err
    second = cli(
        "token", "create", "--store", str(store_path), "--user", "alice", "--org", "newco:read"
    )
    assert second.code == 0
    assert (
        "Note: orgs are the user's: alice's 1 other token now has newco (read) too." in second.err
    )
    third = cli("token", "create", "--store", str(store_path), "--user", "alice")
    assert "Note:" not in third.err  # no --org: nothing changed


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--user", "my_hf_bot"], id="user-with-hf_"),
        pytest.param(["--user", "hf_team"], id="user-starting-hf_"),
        pytest.param(["--name", "hf_transformers_laptop"], id="name-with-hf_words"),
        pytest.param(["--org", "hf_friends:write"], id="org-with-hf_"),
    ],
)
def test_names_that_merely_contain_hf_are_accepted(
    cli: Cli, store_path: Path, argv: list[str]
) -> None:
    """Only what is almost surely a token is refused: names may hold ``hf_``."""
    argv = argv if argv[0] == "--user" else ["--user", "bob", *argv]
    result = cli("token", "create", "--store", str(store_path), *argv)
    assert result.code == 0, result.err


@pytest.mark.parametrize(
    ("destination", "says", "never"),
    [
        pytest.param("terminal", "The token is shown once, above;", "standard output", id="tty"),
        pytest.param("pipe", "went once to standard output, a pipe", "above", id="captured"),
        pytest.param(
            "file",
            "went once to standard output, a file (keep it private)",
            "above",
            id="redirected-private-file",
        ),
        pytest.param(
            "open-file",
            "{output} can be read by other users (mode 0644): run chmod 600 {output}",
            "keep it private",
            id="redirected-file-others-can-read",
        ),
        pytest.param("null", "went to /dev/null: nobody can use it", "above", id="dev-null"),
    ],
)
def test_create_says_where_the_token_went(
    tmp_path: Path, destination: str, says: str, never: str
) -> None:
    """ "Shown once, above" only when it was: TOKEN=$(...) shows nothing on the terminal."""
    store = tmp_path / "cli.sqlite3"
    argv = [str(CONSOLE_SCRIPT), "token", "create", "--store", str(store), "--user", "alice"]
    output = tmp_path / "token.txt"
    with contextlib.ExitStack() as stack:
        if destination == "terminal":
            primary, secondary = pty.openpty()
            stack.callback(os.close, primary)
            stdout: Any = secondary
        elif destination == "pipe":
            stdout = subprocess.PIPE
        elif destination in ("file", "open-file"):
            stdout = stack.enter_context(output.open("w"))
            output.chmod(0o600 if destination == "file" else 0o644)
        else:
            stdout = subprocess.DEVNULL
        result = subprocess.run(
            argv, stdout=stdout, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
            timeout=60, check=False,
        )  # fmt: skip
        if destination == "terminal":
            os.close(secondary)
            printed = os.read(primary, 4096).decode()
    assert result.returncode == 0, result.stderr
    assert says.format(output=output) in result.stderr
    assert never not in result.stderr
    assert not ANY_TOKEN.search(result.stderr)
    token = {
        "terminal": lambda: printed.strip(),
        "pipe": lambda: result.stdout.strip(),
        "file": lambda: output.read_text().strip(),
        "open-file": lambda: output.read_text().strip(),
        "null": lambda: None,
    }[destination]()
    with LocalTokenStore(store) as token_store:
        [record] = token_store.list_tokens()
        if token is not None:
            assert TOKEN_LINE.match(token)
            assert token_store.lookup(hashlib.sha256(token.encode()).digest()) is not None
    if destination == "null":  # how to undo it, by fingerprint
        assert f"hfauth-mw token revoke --store {store} {record.fingerprint}" in result.stderr


class BrokenStdout(io.StringIO):
    """A standard output that cannot take the token (a full disk, a closed pipe)."""

    def __init__(self, fail_on: str) -> None:
        super().__init__()
        self.fail_on = fail_on

    def write(self, text: str) -> int:
        if self.fail_on == "write":
            raise OSError(errno.EPIPE, "Broken pipe")
        return super().write(text)

    def flush(self) -> None:
        if self.fail_on == "flush":
            raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("fail_on", ["write", "flush"])
def test_create_revokes_the_token_it_could_not_print(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    store_path: Path,
    fail_on: str,
) -> None:
    """A token nobody saw must not stay valid in the store."""
    broken = BrokenStdout(fail_on)
    monkeypatch.setattr(sys, "stdout", broken)
    code = main(["token", "create", "--store", str(store_path), "--user", "alice"])
    err = capsys.readouterr().err
    assert code == 1
    assert "cannot write the token to standard output" in err
    assert re.search(r"token [0-9a-f]{12} was revoked", err)
    assert len(err.strip().splitlines()) == 1
    assert not ANY_TOKEN.search(err)
    with LocalTokenStore(store_path) as store:
        assert store.list_tokens() == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_console_script_create_into_a_full_stdout(tmp_path: Path) -> None:
    store = tmp_path / "cli.sqlite3"
    with open("/dev/full", "w") as full:
        result = subprocess.run(
            [str(CONSOLE_SCRIPT), "token", "create", "--store", str(store), "--user", "alice"],
            stdout=full, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
            timeout=60, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.startswith("hfauth-mw: error: cannot write the token")
    assert len(result.stderr.strip().splitlines()) == 1  # no "Exception ignored" at exit
    assert not ANY_TOKEN.search(result.stderr)
    with LocalTokenStore(store) as token_store:
        assert token_store.list_tokens() == []


def test_console_script_create_with_stdout_closed_creates_nothing(tmp_path: Path) -> None:
    store = tmp_path / "cli.sqlite3"
    result = subprocess.run(
        ["sh", "-c", '"$0" token create --store "$1" --user alice >&-', str(CONSOLE_SCRIPT),
         str(store)],
        stderr=subprocess.PIPE, text=True, env=subprocess_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.startswith("hfauth-mw: error: standard output is closed")
    with LocalTokenStore(store) as token_store:
        assert token_store.list_tokens() == []


# --- token list / revoke --------------------------------------------------------------------------


def test_list_shows_fingerprints_never_tokens(
    cli: Cli, store_path: Path, alice: str, carol: str
) -> None:
    result = cli("token", "list", "--store", str(store_path))
    assert result.code == 0
    header, *rows = result.out.splitlines()
    assert header.split() == ["FINGERPRINT", "USER", "ROLE", "NAME", "CREATED", "EXPIRES"]
    assert len(rows) == 2
    assert any("alice" in row and "write" in row for row in rows)
    assert any("carol" in row and "fineGrained" in row and "prod-inference" in row for row in rows)
    for token in (alice, carol):
        assert token not in result.out + result.err
    assert not ANY_TOKEN.search(result.out)


def test_list_json_and_user_filter(cli: Cli, store_path: Path, alice: str, carol: str) -> None:
    result = cli("token", "list", "--store", str(store_path), "--user", "carol", "--json")
    assert result.code == 0
    records = json.loads(result.out)
    assert [(r["user"], r["role"], r["name"], r["expired"]) for r in records] == [
        ("carol", "fineGrained", "prod-inference", False)
    ]
    assert set(records[0]) == {
        "fingerprint",
        "user",
        "role",
        "name",
        "created",
        "expires",
        "expired",
    }
    assert carol not in result.out


def test_list_marks_expired_tokens(cli: Cli, store_path: Path) -> None:
    with LocalTokenStore(store_path) as store:
        store.create_token(user="old", expires_at=datetime.now(UTC) - timedelta(days=1))
    result = cli("token", "list", "--store", str(store_path))
    assert "(expired)" in result.out


def test_list_missing_store_fails_without_creating_it(cli: Cli, tmp_path: Path) -> None:
    missing = tmp_path / "nope.sqlite3"
    result = cli("token", "list", "--store", str(missing))
    assert result.code == 1
    assert "no token store" in result.err
    assert not missing.exists()


def test_revoke_by_prefix(cli: Cli, store_path: Path, alice: str, carol: str) -> None:
    listed = json.loads(cli("token", "list", "--store", str(store_path), "--json").out)
    fingerprint = next(r["fingerprint"] for r in listed if r["user"] == "alice")
    result = cli("token", "revoke", "--store", str(store_path), fingerprint[:8])
    assert result.code == 0, result.err
    assert f"Revoked write token {fingerprint} of alice" in result.out
    remaining = json.loads(cli("token", "list", "--store", str(store_path), "--json").out)
    assert [r["user"] for r in remaining] == ["carol"]
    inspected = cli("inspect", "--store", str(store_path), env={"HF_TOKEN": alice})
    assert inspected.code == 3


@pytest.mark.parametrize(
    ("fingerprint", "code", "message"),
    [
        pytest.param("00000000", 1, "no token with fingerprint", id="unknown"),
        pytest.param("abc", 2, "hexadecimal digits", id="too-short"),
        pytest.param("zzzzzzzzzz", 2, "hexadecimal digits", id="not-hex"),
    ],
)
def test_revoke_errors(
    cli: Cli, store_path: Path, alice: str, fingerprint: str, code: int, message: str
) -> None:
    result = cli("token", "revoke", "--store", str(store_path), fingerprint)
    assert (result.code, result.out) == (code, "")
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1


def _break_entry(store_path: Path, user: str) -> str:
    """Hand-edit ``user``'s token row so that it no longer parses; its fingerprint."""
    [record] = LocalTokenStore(store_path).list_tokens(user)
    conn = sqlite3.connect(store_path)
    conn.execute("UPDATE tokens SET created_at = 'last week' WHERE user = ?", (user,))
    conn.commit()
    conn.close()
    return record.fingerprint


@pytest.mark.parametrize(
    ("revoked_user", "digits", "shown"),
    [
        pytest.param(
            "alice", 12, "Revoked token {given} (its entry did not parse)", id="the-broken-entry"
        ),
        pytest.param(
            "alice", 8, "Revoked token {given} (its entry did not parse)", id="broken-by-prefix"
        ),
        pytest.param(
            "carol", 12, "Revoked fineGrained token {fingerprint} of carol", id="a-sound-entry"
        ),
    ],
)
def test_revoke_works_beside_an_entry_that_does_not_parse(
    cli: Cli,
    store_path: Path,
    alice: str,
    carol: str,
    revoked_user: str,
    digits: int,
    shown: str,
) -> None:
    """A leaked token must stay revocable when some row of the store was hand-edited."""
    broken = _break_entry(store_path, "alice")
    token = alice if revoked_user == "alice" else carol
    fingerprint = broken if token == alice else hashlib.sha256(token.encode()).hexdigest()[:12]

    result = cli("token", "revoke", "--store", str(store_path), fingerprint[:digits])

    assert result.code == 0, result.err
    assert shown.format(fingerprint=fingerprint, given=fingerprint[:digits]) in result.out
    assert LocalTokenStore(store_path).lookup(hashlib.sha256(token.encode()).digest()) is None
    assert token not in result.out + result.err


def test_revoke_broadcast_of_a_broken_entry_needs_its_full_fingerprint(
    cli: Cli, store_path: Path, alice: str
) -> None:
    broken = _break_entry(store_path, "alice")
    result = cli(
        "token", "revoke", "--store", str(store_path), "--redis-url", "redis://127.0.0.1:1/0",
        broken[:8], env={"HFAUTH_REDIS_SECRET": "s" * 32},
    )  # fmt: skip

    assert result.code == 2
    assert "give its full 12-digit fingerprint" in result.err
    with sqlite3.connect(store_path) as conn:  # nothing deleted before the refusal
        assert conn.execute("SELECT count(*) FROM tokens").fetchone() == (1,)


@pytest.mark.parametrize(
    ("secret_env", "shown", "hidden"),
    [
        pytest.param("HFAUTH_TEST_UNSET_SECRET", "HFAUTH_TEST_UNSET_SECRET", None, id="a-name"),
        pytest.param(
            "9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c",
            "named by --redis-secret-env",
            "9f2c4e6a8b0d1f3e5a7c9e1b3d5f7a9c",
            id="the-secret-pasted",
        ),
    ],
)
def test_revoke_broadcast_without_its_secret_names_the_variable_not_the_value(
    cli: Cli, store_path: Path, alice: str, secret_env: str, shown: str, hidden: str | None
) -> None:
    fingerprint = cli("token", "list", "--store", str(store_path), "--json")
    result = cli(
        "token", "revoke", "--store", str(store_path), "--redis-url", "redis://127.0.0.1:1/0",
        "--redis-secret-env", secret_env, json.loads(fingerprint.out)[0]["fingerprint"],
    )  # fmt: skip
    assert result.code != 0
    assert shown in result.err
    if hidden is not None:
        assert hidden not in result.err


def _fingerprint_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


@pytest.mark.parametrize(
    ("url", "secret", "code", "message"),
    [
        pytest.param(
            "redis://127.0.0.1:{closed}/9",
            "s" * 32,
            4,
            "cannot reach Redis at redis://127.0.0.1:",
            id="redis-down",
        ),
        pytest.param(
            "redis://127.0.0.1:{closed}/9", "s" * 8, 2, "at least 16 bytes", id="short-secret"
        ),
        pytest.param("http://127.0.0.1:{closed}/9", "s" * 32, 2, "redis://", id="not-a-redis-url"),
    ],
)
def test_revoke_broadcast_changes_nothing_when_it_cannot_broadcast(
    cli: Cli, store_path: Path, alice: str, url: str, secret: str, code: int, message: str
) -> None:
    """Deleting first would lose the broadcast for good: a rerun finds no token."""
    result = cli(
        "token", "revoke", "--store", str(store_path),
        "--redis-url", url.format(closed=closed_port()), _fingerprint_of(alice),
        env={"HFAUTH_REDIS_SECRET": secret},
    )  # fmt: skip

    assert (result.code, result.out) == (code, ""), result.err
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert [r.user for r in LocalTokenStore(store_path).list_tokens()] == ["alice"]


def _tombstones(redis_url: str, prefix: str) -> int:
    import redis

    client = redis.Redis.from_url(redis_url)
    try:
        return len(list(client.scan_iter(match=f"{prefix}:*:revoked")))
    finally:
        client.close()


def test_revoke_broadcasts_a_token_already_gone_from_the_store(
    cli: Cli, store_path: Path, alice: str, redis_url: str, prefix: str
) -> None:
    """The rerun after a lost broadcast (or a revoke without --redis-url) still reaches Redis."""
    fingerprint = _fingerprint_of(alice)
    assert cli("token", "revoke", "--store", str(store_path), fingerprint).code == 0

    result = cli(
        "token", "revoke", "--store", str(store_path), "--redis-url", redis_url,
        "--redis-prefix", prefix, fingerprint, env={"HFAUTH_REDIS_SECRET": "s" * 32},
    )  # fmt: skip

    assert result.code == 0, result.err
    assert result.out.splitlines() == [
        f"token {fingerprint} is not in {store_path} (already revoked?); "
        "its revocation was broadcast anyway",
        "Broadcast the revocation through Redis: 0 process(es) listening.",
    ]
    assert _tombstones(redis_url, prefix) == 1


@pytest.mark.parametrize(
    ("with_redis", "note"),
    [
        pytest.param(False, True, id="store-only-says-servers-keep-it-cached"),
        pytest.param(True, False, id="broadcast-no-note"),
    ],
)
def test_revoke_says_how_long_servers_keep_the_token(
    cli: Cli,
    store_path: Path,
    alice: str,
    redis_url: str,
    prefix: str,
    with_redis: bool,
    note: bool,
) -> None:
    redis_args = ["--redis-url", redis_url, "--redis-prefix", prefix] if with_redis else []
    result = cli(
        "token", "revoke", "--store", str(store_path), *redis_args, _fingerprint_of(alice),
        env={"HFAUTH_REDIS_SECRET": "s" * 32},
    )  # fmt: skip

    assert result.code == 0, result.err
    assert result.out.startswith(f"Revoked write token {_fingerprint_of(alice)} of alice")
    said = (
        "servers using this store keep accepting the token until their cache entry ends "
        "(60 s by default); use --redis-url to drop it at once"
    )
    assert (said in result.err) is note
    assert len(result.err.strip().splitlines()) == int(note)
    assert _tombstones(redis_url, prefix) == int(with_redis)


def test_revoke_says_to_rerun_when_redis_fails_after_the_store_changed(
    cli: Cli,
    store_path: Path,
    alice: str,
    redis_url: str,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Redis answered, then failed before the broadcast: the rerun broadcasts it."""
    from hfauth_mw._shared_tier import RevocationBroadcast, SharedCacheUnavailable

    def down(self: RevocationBroadcast, fingerprint: str) -> int:
        raise SharedCacheUnavailable("the revocation could not be broadcast: Redis failed (X)")

    args = ["--store", str(store_path), "--redis-url", redis_url, "--redis-prefix", prefix]
    env = {"HFAUTH_REDIS_SECRET": "s" * 32}
    with monkeypatch.context() as patch:
        patch.setattr(RevocationBroadcast, "__call__", down)
        # The 8-digit prefix `token list` shows: the retry needs the full fingerprint.
        result = cli("token", "revoke", *args, _fingerprint_of(alice)[:8], env=env)

    assert result.code == 4
    assert result.out.startswith("Revoked write token")
    assert f"--redis-url URL {_fingerprint_of(alice)}`" in result.err
    assert len(result.err.strip().splitlines()) == 1
    rerun = cli("token", "revoke", *args, _fingerprint_of(alice), env=env)
    assert rerun.code == 0, rerun.err
    assert _tombstones(redis_url, prefix) == 1
