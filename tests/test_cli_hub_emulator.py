"""``hfauth-mw hub-emulator`` (``_cli/hub_emulator.py``). Fixtures: ``cli_fixtures.py``."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest

from cli_fixtures import CONSOLE_SCRIPT, TOKEN_LINE, Cli, subprocess_env
from hfauth_mw._cli import hub_emulator

pytest_plugins = ["cli_fixtures"]
pytestmark = pytest.mark.usefixtures("cli_env")

GATED = "meta-llama/Llama-3.1-8B-Instruct"


def test_hub_emulator_refuses_a_store_that_does_not_exist(cli: Cli, tmp_path: Path) -> None:
    """A new, empty store would answer 401 to every token: a mistyped --store says so."""
    missing = tmp_path / "typo.sqlite3"
    result = cli("hub-emulator", "--store", str(missing))
    assert result.code == 1
    assert "no token store at" in result.err
    assert not missing.exists()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ["--gate-grant", f"{GATED}:alice"], f"is not gated; add --gated model:{GATED}",
            id="grant-without-gate",
        ),
        pytest.param(
            ["--gated", GATED, "--gate-grant", GATED], "is not REPO:USER", id="no-user",
        ),
        pytest.param(
            ["--gated", GATED, "--gate-grant", f"{GATED}:"], "is not REPO:USER", id="empty-user",
        ),
        pytest.param(
            ["--gated", GATED, "--gate-grant", "alice"], "is not REPO:USER", id="user-alone",
        ),
        pytest.param(
            ["--gate-grant", "acme:alice"], "acme", id="repo-without-owner",
        ),
        pytest.param(
            ["--gated", GATED, "--gate-grant", f"{GATED}:hf_" + "T" * 34],
            "looks like an access token", id="token-as-user",
        ),
    ],
)  # fmt: skip
def test_hub_emulator_gate_grant_mistakes_are_usage_errors(
    cli: Cli, store_path: Path, argv: list[str], message: str
) -> None:
    store_path.touch()  # exists: the grant is refused before the store is opened
    result = cli("hub-emulator", "--store", str(store_path), *argv)
    assert (result.code, result.out) == (2, "")
    assert message in result.err, result.err
    assert "hf_" + "T" * 34 not in result.err


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
        [str(CONSOLE_SCRIPT), "hub-emulator", "--store", str(store), "--public", "acme/open",
         "--gated", GATED, "--gated", "acme/gated", "--gate-grant", f"{GATED}:alice"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=subprocess_env(),
    )  # fmt: skip
    try:
        assert hub.stdout is not None
        url = hub.stdout.readline().strip()  # printed once the emulator listens
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", url), url
        inspected = subprocess.run(
            [str(CONSOLE_SCRIPT), "inspect", "--hub-url", url, "--repo", "acme/sentiment",
             "--repo", "acme/open", "--repo", GATED, "--repo", "acme/gated"],
            input=token + "\n", capture_output=True, text=True, env=subprocess_env(),
            timeout=60, check=False,
        )  # fmt: skip
        local = subprocess.run(
            [str(CONSOLE_SCRIPT), "inspect", "--hub-url", url, "--repo", "acme/open",
             "--public", "acme/open", "--authority", "local"],
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
    out = inspected.stdout
    assert f"decisions by: the hub's auth-check ({url})" in out
    assert "model:acme/sentiment\n  read:  allowed  read allowed: the Hub allows" in out
    assert (
        "  write: denied   write denied: the Hub refuses this token write access to "
        "model:acme/sentiment [hub]" in out
    )
    assert f"read:  allowed  read allowed: the Hub allows model:{GATED} [hub]" in out
    assert (
        "read:  denied   read denied: gated: alice has not been granted access to acme/gated "
        "on the Hub [hub]" in out
    )
    assert token not in out + inspected.stderr
    assert local.returncode == 0, local.stderr
    assert (
        "model:acme/open (public)\n  read:  allowed  read allowed: public repository [local]"
        in (local.stdout)
    )
    assert "write: denied   write denied: role read in org acme caps the token [local]" in (
        local.stdout
    )
    assert auth_check.status_code == 200
    assert invalid.returncode == 3
    assert "invalid token" in invalid.stderr
    assert hub.returncode == 0
    assert token not in hub_err


@pytest.mark.parametrize(
    ("host", "url"),
    [
        pytest.param("[::1]", r"http://\[::1\]:\d+", id="bracketed-ipv6-loopback"),
        pytest.param("::1", r"http://\[::1\]:\d+", id="bare-ipv6-loopback"),
        pytest.param("127.0.0.1", r"http://127\.0\.0\.1:\d+", id="ipv4-loopback"),
    ],
)
def test_hub_emulator_serves_on_the_loopback_host_given(
    cli: Cli, store_path: Path, alice: str, host: str, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--host [::1]`` (as in a URL) passed the loopback check but could not bind."""
    answers: list[int] = []

    class Serving:  # the command's wait for Ctrl-C: ask the emulator, then stop it
        def wait(self) -> None:
            printed = sys.stdout.getvalue()  # type: ignore[attr-defined]  # capsys's
            whoami = f"{printed.strip()}/api/whoami-v2"
            answers.append(
                httpx.get(whoami, headers={"Authorization": f"Bearer {alice}"}).status_code
            )
            raise KeyboardInterrupt

    monkeypatch.setattr(hub_emulator, "threading", SimpleNamespace(Event=Serving))
    result = cli("hub-emulator", "--store", str(store_path), "--host", host)

    assert result.code == 0, result.err
    assert re.fullmatch(url, result.out.strip()), result.out
    assert answers == [200]
