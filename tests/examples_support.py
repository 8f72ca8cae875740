"""What the tests of the example servers share: the example modules, a token store
with one user of each kind, and the servers on real loopback sockets.

Readiness is awaited on events (uvicorn's startup in a thread) or by polling the
port of a subprocess with a deadline; never by sleeping a fixed time.
"""

from __future__ import annotations

import importlib.util
import os
import secrets
import socket
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest
import uvicorn

from hfauth_mw import FineGrainedEntry, LocalTokenStore, OrgGrant

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def load_example(name: str) -> ModuleType:
    """``examples/{name}.py`` as a module (the examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def made_up_token() -> str:
    alphabet = string.ascii_letters + string.digits
    return "hf_" + "".join(secrets.choice(alphabet) for _ in range(34))


def seed_store(path: Path) -> dict[str, str]:
    """A token store with one user of each kind; ``{who: token}``.

    * ``alice``: write token, org acme (role write): reads everything served.
    * ``bob``: read token: reads bob/* and public models.
    * ``carol``: fine-grained token reading model acme/sentiment only.
    * ``bad``: a token no store knows.
    """
    with LocalTokenStore(path) as store:
        tokens = {
            "alice": store.create_token(
                user="alice", role="write", orgs=(OrgGrant("acme", "write"),)
            ).token,
            "bob": store.create_token(user="bob", role="read").token,
            "carol": store.create_token(
                user="carol",
                role="fineGrained",
                fine_grained=(FineGrainedEntry("model", "acme/sentiment", ("repo.content.read",)),),
            ).token,
        }
    tokens["bad"] = made_up_token()
    return tokens


class ReadyServer(uvicorn.Server):
    """uvicorn that says when its startup is over (listening, or failed)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()


@contextmanager
def serve_in_thread(app: Any) -> Iterator[str]:
    """``app`` under a real uvicorn on 127.0.0.1 (a free port); yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = ReadyServer(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        assert server.ready.wait(timeout=10), "uvicorn did not start"
        assert server.started
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def serve_wsgi_in_thread(app: Any) -> Iterator[str]:
    """``app`` under werkzeug's threaded WSGI server (HTTP/1.1: chunked request and
    response bodies) on 127.0.0.1, a free port; yields its base URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()  # the socket listens already: make_server bound it
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def example_env(**variables: str) -> dict[str, str]:
    """This environment without HFAUTH_* settings, plus ``variables``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HFAUTH_")}
    env.update(variables)
    return env


@contextmanager
def serve_in_subprocess(
    command: list[str], port: int, env: Mapping[str, str], timeout: float = 30.0
) -> Iterator[str]:
    """``command`` (a server listening on ``port``) run from the repository root;
    yields its base URL once ``GET /health`` answers 200."""
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=dict(env),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(process, base, timeout)
        yield base
    finally:
        process.terminate()
        try:
            process.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def wait_until_healthy(process: subprocess.Popen[str], base: str, timeout: float) -> None:
    """Poll ``{base}/health`` until 200; fail with the server's output if it exits first."""
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=base, trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                _, err = process.communicate()
                raise AssertionError(f"the server exited ({process.returncode}): {err}")
            try:
                if client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass  # not listening yet
            # Polling, not synchronising: each try waits on a connection attempt, and
            # this short pause only keeps a refused-connection loop off the CPU.
            time.sleep(0.05)
    raise AssertionError(f"the server at {base} did not answer /health in {timeout}s")


def run_example(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """An example run to completion (it is expected to refuse its options)."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def loopback_only(monkeypatch: pytest.MonkeyPatch, home: Path) -> None:
    """Keep the clients under test on 127.0.0.1: name resolution of any other host
    fails, huggingface_hub's side requests (agent detection for its User-Agent) are
    off, and it finds no token of the developer's (HF_TOKEN, token file)."""
    import huggingface_hub.constants as hf_constants

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in ("127.0.0.1", "localhost", b"127.0.0.1"):
            raise OSError(f"test reached for {host!r}: only 127.0.0.1 is allowed")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(home / "no-token"))
    monkeypatch.setattr(hf_constants, "ENDPOINT", "http://127.0.0.1:9")
    for variable in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(variable, raising=False)
