"""``hfauth-mw inspect`` (``_cli/inspect.py``): where the token is read from, what
is shown, how failures are told. Fixtures: ``cli_fixtures.py``.
"""

from __future__ import annotations

import json
import re
import sqlite3
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from cli_fixtures import CONSOLE_SCRIPT, Cli, closed_port, create, subprocess_env
from hfauth_mw import LocalTokenStore
from hfauth_mw.testing import HubEmulator

pytest_plugins = ["cli_fixtures"]
pytestmark = pytest.mark.usefixtures("cli_env")


# --- in-process -----------------------------------------------------------------------------------


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
        "decided_by": "local",
    }
    assert document["authority"] == "local"
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
    assert document["authority"] == "hub"
    assert document["decisions"][0]["write"]["allowed"] is True
    assert document["decisions"][0]["write"]["decided_by"] == "hub"
    assert emulator.whoami_calls == 1
    assert emulator.auth_check_calls == 2


# --- repository decisions: the hub's (default with --hub-url) or the local rules' ----------------

GATED = "meta-llama/Llama-3.1-8B-Instruct"

#: What the emulator knows; any other repository does not exist.
HUB_REPOS = {
    f"model:{GATED}": "gated",
    "model:acme/open": "public",
    "model:acme/sentiment": "private",
    "model:bob/secret": "private",
}


@pytest.fixture
def decisions_hub(store_path: Path, alice: str) -> Iterator[HubEmulator]:
    """An emulator that says a missing repository is missing (the Hub's 404)."""
    with (
        LocalTokenStore(store_path) as store,
        HubEmulator(store, repos=HUB_REPOS, unknown_repos="missing") as hub,
    ):
        yield hub


def _decisions(result_out: str) -> dict[str, dict[str, Any]]:
    return {entry["repo"]: entry for entry in json.loads(result_out)["decisions"]}


@pytest.mark.parametrize(
    ("repo", "granted", "authority", "read", "write", "decided_by", "reason"),
    [
        pytest.param(
            "acme/open", False, [], True, True, ("hub", "hub"),
            "read allowed: the Hub allows model:acme/open", id="public-hub",
        ),
        pytest.param(
            "acme/sentiment", False, [], True, True, ("hub", "hub"),
            "read allowed: the Hub allows model:acme/sentiment", id="org-write-member-hub",
        ),
        pytest.param(
            GATED, True, [], True, False, ("hub", "hub"),
            f"read allowed: the Hub allows model:{GATED}", id="gated-granted",
        ),
        pytest.param(
            GATED, False, [], False, False, ("hub", "hub"),
            f"read denied: gated: alice has not been granted access to {GATED} on the Hub",
            id="gated-not-granted",
        ),
        pytest.param(
            "bob/secret", False, [], False, False, ("hub", "hub"),
            "read denied: model:bob/secret is not found or not visible to this token on the Hub",
            id="private-of-another",
        ),
        pytest.param(
            "nobody/missing", False, [], False, False, ("hub", "hub"),
            "read denied: model:nobody/missing is not found or not visible",
            id="missing",
        ),
        pytest.param(
            # The local rules cannot see gate grants: told the repo is gated, they let
            # a write token read it whether or not the Hub would.
            GATED, False, ["--authority", "local", "--gated", GATED], True, False,
            ("local", "local"), "read allowed: gated repository", id="authority-local",
        ),
    ],
)  # fmt: skip
def test_inspect_shows_whose_decision_each_is(
    cli: Cli,
    decisions_hub: HubEmulator,
    alice: str,
    repo: str,
    granted: bool,
    authority: list[str],
    read: bool,
    write: bool,
    decided_by: tuple[str, str],
    reason: str,
) -> None:
    """With --hub-url the hub's auth-check decides (gates, privacy, existence);
    --authority local shows what the local rules say instead."""
    if granted:
        decisions_hub.grant_gate(f"model:{GATED}", "alice")
    result = cli(
        "inspect", "--hub-url", decisions_hub.url, "--json", "--repo", repo, *authority,
        env={"HF_TOKEN": alice},
    )  # fmt: skip
    assert result.code == 0, result.err
    [entry] = _decisions(result.out).values()
    assert (entry["read"]["allowed"], entry["write"]["allowed"]) == (read, write)
    assert (entry["read"]["decided_by"], entry["write"]["decided_by"]) == decided_by
    assert entry["read"]["reason"].startswith(reason), entry["read"]["reason"]
    assert ("visibility" in entry) is bool(authority)
    assert json.loads(result.out)["authority"] == ("local" if authority else "hub")
    assert decisions_hub.auth_check_calls == (0 if authority else 2)
    assert alice not in result.out + result.err


def test_inspect_text_marks_who_decided(
    cli: Cli, decisions_hub: HubEmulator, store_path: Path
) -> None:
    """A read token's write is a certain local denial, made without asking the hub."""
    reader = create(cli, store_path, "--user", "bob", "--role", "read")
    result = cli("inspect", "--hub-url", decisions_hub.url, "--repo", GATED, stdin=reader)
    assert result.code == 0, result.err
    assert f"decisions by: the hub's auth-check ({decisions_hub.url})" in result.out
    assert f"\nmodel:{GATED}\n" in result.out
    assert (
        f"  read:  denied   read denied: gated: bob has not been granted access to {GATED} "
        "on the Hub [hub]\n" in result.out
    )
    assert (
        "  write: denied   write denied: this token cannot write (token role read) [local]\n"
        in result.out
    )
    assert decisions_hub.auth_checks == [f"read model:{GATED}"]
    assert reader not in result.out + result.err


@pytest.mark.parametrize(
    ("fault", "code", "message"),
    [
        pytest.param(
            {"status": 503}, 4, "the hub could not decide read on model:acme/open: "
            "The token source answered HTTP 503", id="auth-check-503",
        ),
        pytest.param(
            {"status": 429, "headers": {"Retry-After": "30"}}, 4,
            "the hub could not decide read on model:acme/open: The token source is rate limiting",
            id="auth-check-429",
        ),
        pytest.param(
            {"status": 307, "headers": {"Location": "https://elsewhere.example/api/x"}}, 4,
            "the hub could not decide read on model:acme/open: The hub redirected the "
            "repository check elsewhere", id="auth-check-redirected-away",
        ),
        pytest.param(
            {"status": 401, "headers": {"X-Error-Message": "Invalid credentials"}}, 3,
            "invalid token", id="auth-check-401",
        ),
        pytest.param(
            {"status": 401, "headers": {"WWW-Authenticate": 'Basic realm="sso"'}}, 4,
            "that is not the hub's (a Basic challenge)", id="auth-check-proxy-401",
        ),
    ],
)  # fmt: skip
def test_inspect_hub_trouble_is_one_line_never_a_decision(
    cli: Cli,
    decisions_hub: HubEmulator,
    alice: str,
    fault: dict[str, Any],
    code: int,
    message: str,
) -> None:
    """whoami-v2 answered, the auth-check did not: a one-line reason naming the
    repository and the hub, no output, no traceback, no token."""
    decisions_hub.fail_next(**fault, times=1, endpoint="auth-check")
    result = cli(
        "inspect", "--hub-url", decisions_hub.url, "--repo", "acme/open", env={"HF_TOKEN": alice}
    )
    assert (result.code, result.out) == (code, "")
    assert result.err.startswith("hfauth-mw: error: "), result.err
    assert message in result.err
    assert f"hub:{decisions_hub.url}" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert "Traceback" not in result.err
    assert alice not in result.err


def test_inspect_a_hub_that_cannot_be_reached_says_where_and_how(cli: Cli, alice: str) -> None:
    """TransportFailure.detail: the URL called and the error class, never the token."""
    url = f"http://127.0.0.1:{closed_port()}"
    result = cli("inspect", "--hub-url", url, "--repo", "acme/open", env={"HF_TOKEN": alice})
    assert (result.code, result.out) == (4, "")
    assert (
        f"The token source cannot be reached (GET {url}/api/whoami-v2: ConnectError "
        "(connection refused))" in result.err
    ), result.err
    assert len(result.err.strip().splitlines()) == 1
    assert alice not in result.err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--authority", "hub"], "--authority hub needs --hub-url", id="hub-with-store"
        ),
        pytest.param(
            ["--hub", "--public", "acme/open"], "--public and --gated feed the local rules",
            id="public-under-hub",
        ),
        pytest.param(
            ["--hub", "--gated", GATED], "drop them, or add --authority local",
            id="gated-under-hub",
        ),
    ],
)  # fmt: skip
def test_inspect_authority_misuse_is_a_usage_error(
    cli: Cli,
    store_path: Path,
    decisions_hub: HubEmulator,
    alice: str,
    argv: list[str],
    message: str,
) -> None:
    where = ["--hub-url", decisions_hub.url] if "--hub" in argv else ["--store", str(store_path)]
    rest = [arg for arg in argv if arg != "--hub"]
    result = cli("inspect", *where, "--repo", "acme/open", *rest, env={"HF_TOKEN": alice})
    assert (result.code, result.out) == (2, "")
    assert message in result.err
    assert decisions_hub.whoami_calls == 0


def test_inspect_a_plain_http_hub_is_refused_in_the_cli_s_words(cli: Cli, alice: str) -> None:
    """Not the library's "pass allow_insecure_http=True", which no option here gives."""
    result = cli("inspect", "--hub-url", "http://example.com", env={"HF_TOKEN": alice})
    assert (result.code, result.out) == (2, "")
    assert "--hub-url http://example.com is plain http to another machine" in result.err
    assert "allow_insecure_http" not in result.err


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


@pytest.mark.parametrize(
    "secret",
    [
        pytest.param("hf_" + "Q" * 33 + "\u00e9", id="a-pasted-accent"),
        pytest.param("hf_abc def", id="a-space-inside"),
    ],
)
def test_a_malformed_token_is_a_usage_error_never_sent(
    cli: Cli, emulator: HubEmulator, secret: str
) -> None:
    result = cli("inspect", "--hub-url", emulator.url, env={"HF_TOKEN": secret})
    assert result.code == 2
    assert result.err.strip().endswith("no spaces")  # one line: what is wrong, no traceback
    assert len(result.err.strip().splitlines()) == 1
    assert secret not in result.err
    assert emulator.whoami_calls == 0


def test_inspect_without_a_token(cli: Cli, store_path: Path, alice: str) -> None:
    result = cli("inspect", "--store", str(store_path), stdin="")
    assert result.code == 2
    assert "set HF_TOKEN or pipe the token" in result.err


# --- the real console script ----------------------------------------------------------------------


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


def test_console_script_closed_port_exits_4(tmp_path: Path) -> None:
    result = subprocess.run(
        [str(CONSOLE_SCRIPT), "inspect", "--hub-url", f"http://127.0.0.1:{closed_port()}"],
        input="hf_" + "Y" * 34 + "\n", capture_output=True, text=True,
        env=subprocess_env(), timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 4
    assert result.stdout == ""
    assert result.stderr.startswith("hfauth-mw: error: ")
