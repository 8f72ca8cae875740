"""Fixtures and helpers of the ``hfauth-mw`` tests (``tests/test_cli*.py``), loaded
by each of them as a plugin (``pytest_plugins = ["cli_fixtures"]``).

Real parts only: real SQLite stores in ``tmp_path``, a real HubEmulator on a
loopback port, real subprocesses of ``.venv/bin/hfauth-mw``.

PYTEST_DONT_REWRITE: the test modules import helpers from here before pytest
loads it as a plugin, too late to rewrite its asserts (each carries its message).
"""

from __future__ import annotations

import io
import os
import re
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

from hfauth_mw import LocalTokenStore
from hfauth_mw._cli import main
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


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No $HF_TOKEN or $HFAUTH_STORE from the caller, and a fresh working directory."""
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
