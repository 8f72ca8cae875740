"""``hfauth-mw demo`` (``_cli/demo.py``): the banner, the server it starts, the
stores it makes or refuses. Fixtures: ``cli_fixtures.py``.
"""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from cli_fixtures import ANY_TOKEN, CONSOLE_SCRIPT, Cli, subprocess_env
from hfauth_mw import LocalTokenStore, OrgGrant
from hfauth_mw._demo import seed_demo_store
from hfauth_mw.testing import HubEmulator

pytest_plugins = ["cli_fixtures"]
pytestmark = pytest.mark.usefixtures("cli_env")


# --- the real console script ----------------------------------------------------------------------


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


# --- demo stores ----------------------------------------------------------------------------------


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
