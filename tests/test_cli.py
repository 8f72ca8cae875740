"""The ``hfauth-mw`` command line: in-process through ``main()`` and as the real console script.

Real parts only: real SQLite stores in ``tmp_path``, a real HubEmulator on a
loopback port, real subprocesses of ``.venv/bin/hfauth-mw``.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from hfauth_mw import LocalTokenStore, OrgGrant
from hfauth_mw._cli import main
from hfauth_mw._demo import seed_demo_store
from hfauth_mw.testing import HubEmulator

TOKEN_LINE = re.compile(r"^hf_[A-Za-z0-9]{34}$")
ANY_TOKEN = re.compile(r"hf_[A-Za-z0-9]{34}")
CONSOLE_SCRIPT = Path(sys.executable).parent / "hfauth-mw"


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


class Cli(Protocol):
    def __call__(self, *argv: str, stdin: str = "", env: dict[str, str] | None = None) -> Run: ...


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HFAUTH_STORE", raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """Run ``main(argv)`` in-process; ``stdin`` text and ``env`` are optional."""

    def run(*argv: str, stdin: str = "", env: dict[str, str] | None = None) -> Run:
        capsys.readouterr()
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        try:
            code = main(list(argv))
        finally:
            for name in env or {}:
                monkeypatch.delenv(name, raising=False)
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    return tmp_path / "tokens.sqlite3"


def create(cli: Cli, store_path: Path, *args: str) -> str:
    result = cli("token", "create", "--store", str(store_path), *args)
    assert result.code == 0, result.err
    return str(result.out.strip())


@pytest.fixture
def alice(cli: Cli, store_path: Path) -> str:
    return create(cli, store_path, "--user", "alice", "--role", "write", "--org", "acme:write")


@pytest.fixture
def carol(cli: Cli, store_path: Path) -> str:
    return create(
        cli,
        store_path,
        "--user",
        "carol",
        "--grant",
        "model:acme/sentiment:repo.content.read",
        "--global",
        "inference.serverless.write",
        "--gated",
        "--name",
        "prod-inference",
    )


@pytest.fixture
def emulator(store_path: Path) -> Iterator[HubEmulator]:
    with LocalTokenStore(store_path) as store, HubEmulator(store) as hub:
        yield hub


@pytest.fixture
def no_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    """``demo`` prints its banner, then returns instead of serving until Ctrl-C."""
    import uvicorn

    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def subprocess_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HFAUTH_STORE")}
    env.update(extra)
    return env


# --- token create -----------------------------------------------------------------------------


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
    assert "shown once" in result.err
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


def test_create_default_store_is_in_cwd(cli: Cli, tmp_path: Path) -> None:
    assert cli("token", "create", "--user", "bob").code == 0
    assert (tmp_path / "hfauth-tokens.sqlite3").is_file()


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
    ],
)
def test_create_usage_errors(cli: Cli, store_path: Path, args: list[str], message: str) -> None:
    result = cli("token", "create", "--store", str(store_path), *args)
    assert result.code == 2
    assert result.out == ""
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert result.err.startswith("hfauth-mw")


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
    monkeypatch.undo()
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


def test_console_script_inspect_does_not_wait_on_a_silent_pipe_with_hf_token_set(
    store_path: Path, alice: str
) -> None:
    """Under CI runners stdin is often a pipe nobody writes to or closes: a clear
    error after a few seconds, never a hang, and never $HF_TOKEN in its place."""
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "inspect", "--store", str(store_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**subprocess_env(), "HF_TOKEN": alice},
    )  # fmt: skip
    try:
        out, err = _read_without_closing(process)
    finally:
        process.kill()
        process.wait()
    assert process.returncode == 2
    assert err.startswith("hfauth-mw: error: nothing on standard input after 3 s"), err
    assert "</dev/null" in err
    assert alice not in out + err


def test_console_script_inspect_waits_for_a_slow_pipe_with_hf_token_set(
    store_path: Path, alice: str, carol: str
) -> None:
    """A token that arrives a moment late is still the one inspected."""
    slow = subprocess.Popen(
        ["sh", "-c", 'sleep 0.5; printf "%s\\n" "$0"', carol], stdout=subprocess.PIPE
    )
    inspected = subprocess.run(
        [str(CONSOLE_SCRIPT), "inspect", "--store", str(store_path)],
        stdin=slow.stdout, capture_output=True, text=True, timeout=30, check=False,
        env={**subprocess_env(), "HF_TOKEN": alice},
    )  # fmt: skip
    slow.wait()
    assert inspected.returncode == 0, inspected.stderr
    assert "token from:   standard input ($HF_TOKEN, also set, ignored)" in inspected.stdout
    assert re.search(r"user:\s+carol ", inspected.stdout)


def test_console_script_inspect_does_not_wait_on_a_line_that_never_ends(
    store_path: Path, alice: str, carol: str
) -> None:
    """A pipe that sends part of a line and stays open is as silent as one that
    sends nothing: an error after a few seconds, never a hang."""
    writer = subprocess.Popen(
        ["sh", "-c", 'printf "%s" "$0"; exec sleep 60', carol], stdout=subprocess.PIPE
    )
    try:
        inspected = subprocess.run(
            [str(CONSOLE_SCRIPT), "inspect", "--store", str(store_path)],
            stdin=writer.stdout, capture_output=True, text=True, timeout=30, check=False,
            env={**subprocess_env(), "HF_TOKEN": alice},
        )  # fmt: skip
    finally:
        writer.kill()
        writer.wait()
    assert inspected.returncode == 2
    assert inspected.stderr.startswith(
        "hfauth-mw: error: no whole line on standard input after 3 s"
    ), inspected.stderr
    assert "with a newline after it" in inspected.stderr
    assert alice not in inspected.stdout + inspected.stderr
    assert carol not in inspected.stdout + inspected.stderr


def _read_without_closing(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Both outputs once the process exits, its stdin left open (communicate closes it)."""
    assert process.stdout is not None
    assert process.stderr is not None
    process.wait(timeout=30)
    return process.stdout.read(), process.stderr.read()


# --- token list / revoke ---------------------------------------------------------------------


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


# --- values that look like a token ------------------------------------------------------------

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


# --- inspect ----------------------------------------------------------------------------------


def test_inspect_via_env_against_store(cli: Cli, store_path: Path, alice: str) -> None:
    result = cli(
        "inspect",
        "--store",
        str(store_path),
        "--repo",
        "acme/sentiment",
        "--repo",
        "model:bob/echo",
        "--public",
        "model:bob/echo",
        env={"HF_TOKEN": alice},
    )
    assert result.code == 0, result.err
    assert alice not in result.out + result.err
    out = result.out
    assert re.search(r"user:\s+alice \(user\)", out)
    assert re.search(r"token role:\s+write", out)
    assert re.search(r"orgs:\s+acme \(write\)", out)
    assert re.search(r"fingerprint:\s+[0-9a-f]{12}", out)
    assert "model:acme/sentiment (private)" in out
    assert "read:  allowed  read allowed: model acme/sentiment, role write in org acme" in out
    assert "write: allowed  write allowed: model acme/sentiment" in out
    assert "model:bob/echo (public)" in out
    assert "read allowed: public repository" in out
    assert "write: denied   write denied: not a member of bob" in out


def test_inspect_via_stdin_fine_grained(cli: Cli, store_path: Path, carol: str) -> None:
    result = cli(
        "inspect",
        "--store",
        str(store_path),
        "--repo",
        "acme/sentiment",
        "--repo",
        "acme/other",
        stdin=carol + "\n",
    )
    assert result.code == 0, result.err
    out = result.out
    assert re.search(r"token role:\s+fineGrained", out)
    assert re.search(r"token name:\s+prod-inference", out)
    assert re.search(r"fine-grained:\s+model acme/sentiment: repo.content.read", out)
    assert re.search(r"global:\s+inference.serverless.write", out)
    assert re.search(r"gated repos:\s+yes", out)
    assert "read allowed: fine-grained token lists repo.content.read on model acme/sentiment" in out
    assert "read denied: fine-grained token lists no repo.content.read on model acme/other" in out
    assert carol not in out + result.err


def test_inspect_json(cli: Cli, store_path: Path, carol: str) -> None:
    result = cli(
        "inspect",
        "--store",
        str(store_path),
        "--json",
        "--repo",
        "acme/sentiment",
        "--gated",
        "acme/sentiment",
        stdin=carol,
    )
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert (document["name"], document["token_role"], document["token_name"]) == (
        "carol",
        "fineGrained",
        "prod-inference",
    )
    assert document["global"] == ["inference.serverless.write"]
    assert document["can_read_gated_repos"] is True
    [decision] = document["decisions"]
    assert decision["repo"] == "model:acme/sentiment"
    assert decision["visibility"] == "gated"
    assert decision["read"]["allowed"] is True
    assert decision["write"] == {
        "allowed": False,
        "reason": decision["write"]["reason"],
        "needed": "repo.write",
    }
    assert decision["write"]["reason"].startswith("write denied:")
    assert carol not in result.out


def test_inspect_against_hub_emulator(cli: Cli, emulator: HubEmulator, alice: str) -> None:
    result = cli(
        "inspect", "--hub-url", emulator.url, "--json", "--repo", "acme/x", env={"HF_TOKEN": alice}
    )
    assert result.code == 0, result.err
    document = json.loads(result.out)
    assert document["name"] == "alice"
    assert document["source"] == f"hub:{emulator.url}"
    assert document["decisions"][0]["write"]["allowed"] is True
    assert emulator.whoami_calls == 1


@pytest.mark.parametrize(
    ("piped", "env", "user", "token_from", "shown"),
    [
        pytest.param("carol", None, "carol", "stdin", "standard input", id="stdin-only"),
        pytest.param(None, "alice", "alice", "HF_TOKEN", "$HF_TOKEN", id="env-only"),
        pytest.param(
            "carol",
            "alice",
            "carol",
            "stdin",
            "standard input ($HF_TOKEN, also set, ignored)",
            id="both-piped-wins",
        ),
    ],
)
@pytest.mark.parametrize("json_output", [True, False], ids=["json", "text"])
def test_inspect_piped_token_wins_and_its_origin_is_shown(
    cli: Cli,
    store_path: Path,
    alice: str,
    carol: str,
    piped: str | None,
    env: str | None,
    user: str,
    token_from: str,
    shown: str,
    json_output: bool,
) -> None:
    """What is piped this time wins over a long-exported $HF_TOKEN, and the output says so."""
    tokens = {"alice": alice, "carol": carol}
    stdin = tokens.get(piped or "", piped or "")
    result = cli(
        "inspect",
        "--store",
        str(store_path),
        *(["--json"] if json_output else []),
        stdin=stdin,
        env={"HF_TOKEN": tokens[env]} if env else None,
    )
    assert result.code == 0, result.err
    if json_output:
        document = json.loads(result.out)
        assert (document["name"], document["token_from"]) == (user, token_from)
    else:
        assert re.search(rf"user:\s+{user} ", result.out)
        assert f"token from:   {shown}\n" in result.out
    assert alice not in result.out + result.err
    assert carol not in result.out + result.err


@pytest.mark.parametrize(
    ("piped", "hf_token_set", "says"),
    [
        pytest.param("\n", True, "to inspect $HF_TOKEN, add </dev/null", id="blank-line-env"),
        pytest.param("  \n", True, "to inspect $HF_TOKEN, add </dev/null", id="spaces-env"),
        pytest.param("\n", False, "is the variable you echoed set?", id="blank-line"),
    ],
)
def test_inspect_a_blank_piped_line_never_sends_hf_token(
    cli: Cli, emulator: HubEmulator, alice: str, piped: str, hf_token_set: bool, says: str
) -> None:
    """`echo "$TOKEN" | hfauth-mw inspect --hub-url ...` with $TOKEN unset pipes a
    blank line: the long-exported $HF_TOKEN must not go to that hub in its place."""
    result = cli(
        "inspect",
        "--hub-url",
        emulator.url,
        stdin=piped,
        env={"HF_TOKEN": alice} if hf_token_set else None,
    )

    assert (result.code, result.out) == (2, "")
    assert "standard input held an empty line" in result.err
    assert says in result.err
    assert emulator.whoami_calls == 0
    assert alice not in result.err


def test_inspect_failure_says_which_token_went_to_which_hub(
    cli: Cli, emulator: HubEmulator
) -> None:
    """$HF_TOKEN sent to a --hub-url is never silent: the error names its origin and the URL."""
    secret = "hf_" + "W" * 34
    result = cli("inspect", "--hub-url", emulator.url, env={"HF_TOKEN": secret})
    assert result.code == 3
    assert "from $HF_TOKEN" in result.err
    assert f"hub:{emulator.url}" in result.err
    assert re.search(r"token [0-9a-f]{12} from", result.err)
    assert secret not in result.err
    assert len(result.err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("where", "token", "code", "message"),
    [
        pytest.param("store", "made-up", 3, "invalid token", id="store-unknown-token"),
        pytest.param("store", "expired", 3, "expired", id="store-expired-token"),
        pytest.param("hub", "made-up", 3, "invalid token", id="hub-unknown-token"),
        pytest.param("hub", "alice", 4, "answered HTTP 503", id="hub-503"),
        pytest.param("hub", "alice", 4, "rate limiting", id="hub-429"),
        pytest.param("closed", "alice", 4, "cannot be reached", id="hub-closed-port"),
        pytest.param("missing-store", "alice", 4, "no token store", id="store-missing"),
        pytest.param("corrupt-store", "alice", 4, "corrupt.sqlite3", id="store-not-sqlite"),
        pytest.param("newer-store", "alice", 4, "schema version 99", id="store-too-new"),
    ],
)
def test_inspect_failures(
    cli: Cli,
    store_path: Path,
    emulator: HubEmulator,
    alice: str,
    where: str,
    token: str,
    code: int,
    message: str,
) -> None:
    if token == "made-up":
        secret = "hf_" + "Q" * 34
    elif token == "expired":
        with LocalTokenStore(store_path) as store:
            secret = store.create_token(
                user="old", expires_at=datetime.now(UTC) - timedelta(minutes=1)
            ).token
    else:
        secret = alice
    if message == "answered HTTP 503":
        emulator.fail_next(503, times=1)
    if message == "rate limiting":
        emulator.fail_next(429, headers={"RateLimit": '"api";r=0;t=30'}, times=1)
    corrupt = store_path.with_name("corrupt.sqlite3")
    corrupt.write_text("this is not a SQLite database, but a page of notes\n" * 100)
    newer = store_path.with_name("newer.sqlite3")
    with sqlite3.connect(newer) as conn:
        conn.execute("PRAGMA user_version = 99")
    for private in (corrupt, newer):  # else refused for their mode, before they are read
        private.chmod(0o600)
    options = {
        "store": ["--store", str(store_path)],
        "missing-store": ["--store", str(store_path.with_name("missing.sqlite3"))],
        "corrupt-store": ["--store", str(corrupt)],
        "newer-store": ["--store", str(newer)],
        "hub": ["--hub-url", emulator.url],
        "closed": ["--hub-url", f"http://127.0.0.1:{closed_port()}"],
    }[where]
    result = cli("inspect", *options, env={"HF_TOKEN": secret})
    assert result.code == code
    assert result.out == ""
    assert message in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert secret not in result.err


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["--token", "TOKEN"], id="token-option"),
        pytest.param(["TOKEN"], id="positional"),
        pytest.param(["--hf-token=TOKEN"], id="equals-option"),
    ],
)
def test_token_on_the_command_line_is_impossible(
    cli: Cli, store_path: Path, alice: str, argv: list[str]
) -> None:
    result = cli("inspect", "--store", str(store_path), *[a.replace("TOKEN", alice) for a in argv])
    assert result.code == 2
    assert result.out == ""
    assert alice not in result.err
    assert "HF_TOKEN" in result.err


def test_inspect_without_a_token(cli: Cli, store_path: Path, alice: str) -> None:
    result = cli("inspect", "--store", str(store_path), stdin="")
    assert result.code == 2
    assert "set HF_TOKEN or pipe the token" in result.err


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
            "plain http on a non-loopback",
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


def test_hub_emulator_refuses_a_store_that_does_not_exist(cli: Cli, tmp_path: Path) -> None:
    """A new, empty store would answer 401 to every token: a mistyped --store says so."""
    missing = tmp_path / "typo.sqlite3"
    result = cli("hub-emulator", "--store", str(missing))
    assert result.code == 1
    assert "no token store at" in result.err
    assert not missing.exists()


def test_help_lists_every_command(cli: Cli) -> None:
    result = cli("--help")
    assert result.code == 0
    for command in ("token", "inspect", "hub-emulator", "demo"):
        assert command in result.out


# --- the real console script ------------------------------------------------------------------


def test_console_script_create_then_inspect_through_emulator(tmp_path: Path) -> None:
    store = tmp_path / "cli.sqlite3"
    created = subprocess.run(
        [str(CONSOLE_SCRIPT), "token", "create", "--store", str(store), "--user", "alice",
         "--role", "write", "--org", "acme:read"],
        capture_output=True, text=True, env=subprocess_env(), timeout=60, check=False,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert TOKEN_LINE.match(token)
    assert created.stdout == token + "\n"
    assert token not in created.stderr

    hub = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "hub-emulator", "--store", str(store), "--public", "acme/open"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
    )  # fmt: skip
    try:
        assert hub.stdout is not None
        url = hub.stdout.readline().strip()  # printed once the emulator listens
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        inspected = subprocess.run(
            [str(CONSOLE_SCRIPT), "inspect", "--hub-url", url, "--repo", "acme/sentiment",
             "--repo", "acme/open", "--public", "acme/open"],
            input=token + "\n", capture_output=True, text=True, env=subprocess_env(),
            timeout=60, check=False,
        )  # fmt: skip
        auth_check = httpx.get(
            f"{url}/api/models/acme/open/auth-check", headers={"Authorization": f"Bearer {token}"}
        )
        invalid = subprocess.run(
            [str(CONSOLE_SCRIPT), "inspect", "--hub-url", url],
            input="hf_" + "X" * 34 + "\n", capture_output=True, text=True,
            env=subprocess_env(), timeout=60, check=False,
        )  # fmt: skip
    finally:
        hub.send_signal(signal.SIGTERM)
        _, hub_err = hub.communicate(timeout=10)
    assert inspected.returncode == 0, inspected.stderr
    assert "model:acme/sentiment (private)" in inspected.stdout
    assert "write: denied   write denied: role read in org acme caps the token" in inspected.stdout
    assert "read:  allowed  read allowed: public repository" in inspected.stdout
    assert token not in inspected.stdout + inspected.stderr
    assert auth_check.status_code == 200
    assert invalid.returncode == 3
    assert "invalid token" in invalid.stderr
    assert hub.returncode == 0
    assert token not in hub_err


def test_console_script_closed_port_exits_4(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "inspect", "--hub-url", f"http://127.0.0.1:{closed_port()}"],
        input="hf_" + "Y" * 34 + "\n", capture_output=True, text=True,
        env=subprocess_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 4
    assert result.stdout == ""
    assert result.stderr.startswith("hfauth-mw: error: ")


def test_console_script_demo_serves_what_it_prints(tmp_path: Path) -> None:
    store = tmp_path / "demo" / "tokens.sqlite3"
    demo = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "demo", "--port", "0", "--store", str(store)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        banner = []
        for line in demo.stdout:  # the socket listens before the banner is printed
            banner.append(line)
            if line.startswith("curl -s") and "/v1/models" in line and "whoami" not in line:
                break
        text = "".join(banner)
        base = re.search(r"on (http://127\.0\.0\.1:\d+)", text)
        assert base is not None, text
        comment = next(i for i, line in enumerate(banner) if line.startswith("# bob (read token)"))
        bob_line = banner[comment + 1]
        bob = re.search(r"Bearer (hf_[A-Za-z0-9]{34})", bob_line)
        assert bob is not None
        with httpx.Client(base_url=base.group(1), trust_env=False) as client:
            health = client.get("/health")
            no_token = client.post("/v1/models/bob/echo/infer", json={"inputs": "x"})
            read = client.post(
                "/v1/models/bob/echo/infer",
                json={"inputs": "x"},
                headers={"Authorization": f"Bearer {bob.group(1)}"},
            )
    finally:
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=10)
    expected = ["-> 401", "-> 200", "-> 403 insufficient_scope", "invalid_token", "carol", "dave"]
    assert all(snippet in text for snippet in expected)
    assert (health.status_code, no_token.status_code, read.status_code) == (200, 401, 200)
    assert demo.returncode == 0


def test_console_script_demo_against_a_hub(tmp_path: Path, emulator: HubEmulator) -> None:
    token = emulator.store.create_token(user="erin", role="read").token
    demo = subprocess.Popen(
        [str(CONSOLE_SCRIPT), "demo", "--port", "0", "--hub-url", emulator.url,
         "--model", "erin/private-model"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        banner = []
        for line in demo.stdout:
            banner.append(line)
            if line.startswith("curl") and "made-up" in banner[-2]:
                break
        text = "".join(banner)
        base = re.search(r"on (http://127\.0\.0\.1:\d+)", text)
        assert base is not None, text
        with httpx.Client(base_url=base.group(1), trust_env=False) as client:
            headers = {"Authorization": f"Bearer {token}"}
            whoami = client.get("/v1/whoami", headers=headers)
            mine = client.post(
                "/v1/models/erin/private-model/infer", json={"inputs": "hi"}, headers=headers
            )
            theirs = client.post(
                "/v1/models/acme/sentiment/infer", json={"inputs": "hi"}, headers=headers
            )
    finally:
        demo.send_signal(signal.SIGINT)
        demo.communicate(timeout=10)
    assert "$HF_TOKEN" in text
    assert f"tokens checked by {emulator.url}/api/whoami-v2" in text
    assert whoami.json()["name"] == "erin"
    assert (mine.status_code, theirs.status_code) == (200, 403)
    assert demo.returncode == 0


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


# --- demo stores ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("real", id="a-real-store"),
        pytest.param("empty", id="an-empty-store"),
        pytest.param("seeded-by-an-older-demo", id="a-real-store-an-older-demo-seeded-too"),
    ],
)
def test_demo_refuses_a_store_it_did_not_make(
    cli: Cli, store_path: Path, no_serve: None, kind: str
) -> None:
    if kind == "seeded-by-an-older-demo":
        seed_demo_store(store_path)
        store_path.with_name(store_path.name + ".demo").unlink()  # older versions left no mark
    with LocalTokenStore(store_path) as store:
        real = None
        if kind != "empty":
            real = store.create_token(
                user="dave", role="write", orgs=[OrgGrant("acme", "admin")], display_name="real"
            ).token
        before = store.list_tokens()
        facts = store.lookup(hashlib.sha256(real.encode()).digest()) if real else None
    beside = sorted(p.name for p in store_path.parent.iterdir())
    result = cli("demo", "--port", "0", "--store", str(store_path))
    assert result.code == 1
    assert result.out == ""
    assert "is not a demo store" in result.err
    assert len(result.err.strip().splitlines()) == 1
    with LocalTokenStore(store_path) as store:
        assert store.list_tokens() == before
        if real:
            assert store.lookup(hashlib.sha256(real.encode()).digest()) == facts  # orgs kept
    assert sorted(p.name for p in store_path.parent.iterdir()) == beside  # no seed, no mark


def test_demo_keeps_a_revoked_demo_token_revoked(
    cli: Cli, store_path: Path, no_serve: None
) -> None:
    first = cli("demo", "--port", "0", "--store", str(store_path))
    assert first.code == 0, first.err
    bob = ANY_TOKEN.search(first.out.split("# bob (read token)")[1])
    assert bob is not None
    with LocalTokenStore(store_path) as store:
        [record] = store.list_tokens("bob")
    assert cli("token", "revoke", "--store", str(store_path), record.fingerprint).code == 0

    again = cli("demo", "--port", "0", "--store", str(store_path))
    assert again.code == 0, again.err
    assert re.search(r"bob .*\[revoked\]", again.out)
    assert "# bob" not in again.out
    assert bob.group(0) not in again.out
    assert "# alice" in again.out
    with LocalTokenStore(store_path) as store:
        assert store.list_tokens("bob") == []
        assert store.lookup(hashlib.sha256(bob.group(0).encode()).digest()) is None


def test_demo_runs_on_its_default_store_from_an_older_version(
    cli: Cli, tmp_path: Path, no_serve: None
) -> None:
    """`make demo` keeps working on .hfauth-demo/ made before demo stores were marked."""
    default = tmp_path / ".hfauth-demo" / "tokens.sqlite3"
    tokens = seed_demo_store(default)
    marker = default.with_name("tokens.sqlite3.demo")
    marker.unlink()
    result = cli("demo", "--port", "0")
    assert result.code == 0, result.err
    assert all(token in result.out for token in tokens.values())
    assert "[revoked]" not in result.out
    assert marker.is_file()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"0123abcd", id="half-written"),
        pytest.param(b"not a seed at all\n", id="not-hex"),
        pytest.param(b"\xff\xfe\x00", id="binary"),
        pytest.param(None, id="unreadable-a-directory"),
    ],
)
def test_demo_with_a_bad_seed_file_says_which_file_to_delete(
    cli: Cli, store_path: Path, no_serve: None, content: bytes | None
) -> None:
    seed = store_path.with_name(store_path.name + ".demo-seed")
    if content is None:
        seed.mkdir()
    else:
        seed.write_bytes(content)
    result = cli("demo", "--port", "0", "--store", str(store_path))
    assert result.code == 1
    assert result.err.startswith(f"hfauth-mw: error: cannot read demo seed file {seed}") or (
        result.err.startswith(f"hfauth-mw: error: demo seed file {seed} is damaged")
    )
    assert f"delete {store_path}, {seed} and " in result.err
    assert len(result.err.strip().splitlines()) == 1
