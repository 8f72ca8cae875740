"""The brute-force guard behind a proxy on a Unix socket (issue 18, item 2), with
real servers listening on a Unix socket and requests sent over it (httpx ``uds=``):
uvicorn (ASGI ``client=None``), gunicorn (``REMOTE_ADDR=''``) and werkzeug
(``REMOTE_ADDR='<local>'``). The proxy in front (nginx, say) is played by the
test client, which sets ``X-Forwarded-For`` as nginx would.

Before: ``trusted_proxies`` could not name the socket (uvicorn's guard counted
nobody, X-Forwarded-For ignored), and gunicorn's ``''`` was one key for every
client, so three bad tokens (30 by default) locked out every user.

Each server socket is bound and listening before the server starts, so a
request waits in the backlog instead of racing the start-up (no sleeps).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from werkzeug.serving import make_server

import unix_apps
from unix_apps import MAX_FAILURES

ATTACKER, VICTIM = "203.0.113.66", "198.51.100.7"
TESTS = Path(__file__).parent
Send = Callable[[str, str], int]


def listening_unix_socket(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen(64)
    return sock


def sender(path: Path) -> tuple[httpx.Client, Send]:
    client = httpx.Client(
        transport=httpx.HTTPTransport(uds=str(path)), base_url="http://nginx.internal", timeout=20
    )

    def send(token: str, address: str) -> int:
        headers = {"Authorization": f"Bearer {token}", "X-Forwarded-For": address}
        return client.get("/whoami", headers=headers).status_code

    return client, send


@contextlib.contextmanager
def uvicorn_server(path: Path, hub_url: str, trusted: list[str]) -> Iterator[Send]:
    sock = listening_unix_socket(path)
    config = uvicorn.Config(
        unix_apps.asgi_app(hub_url, trusted), lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    client, send = sender(path)
    try:
        yield send
    finally:
        client.close()
        server.should_exit = True
        thread.join(timeout=20)
        sock.close()


@contextlib.contextmanager
def werkzeug_server(path: Path, hub_url: str, trusted: list[str]) -> Iterator[Send]:
    server = make_server(f"unix://{path}", 0, unix_apps.wsgi_app(hub_url, trusted), threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    client, send = sender(path)
    try:
        yield send
    finally:
        client.close()
        server.shutdown()
        thread.join()
        server.server_close()


#: What the gunicorn worker wrote on stderr, for the warning check.
_gunicorn_stderr: dict[str, str] = {}


@contextlib.contextmanager
def gunicorn_server(path: Path, hub_url: str, trusted: list[str]) -> Iterator[Send]:
    sock = listening_unix_socket(path)
    env = {
        **os.environ,
        "HFAUTH_TEST_HUB_URL": hub_url,
        "HFAUTH_TEST_TRUSTED": ",".join(trusted),
        "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "--bind",
            f"fd://{sock.fileno()}",
            "--workers",
            "1",
            "--graceful-timeout",
            "5",
            "unix_apps:wsgi_app()",
        ],
        env=env,
        pass_fds=(sock.fileno(),),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    client, send = sender(path)
    try:
        yield send
    finally:
        client.close()
        process.send_signal(signal.SIGTERM)
        try:
            _, stderr = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, stderr = process.communicate()
        _gunicorn_stderr["last"] = stderr
        sock.close()


SERVERS = [
    pytest.param(uvicorn_server, id="uvicorn"),
    pytest.param(gunicorn_server, id="gunicorn"),
    pytest.param(werkzeug_server, id="werkzeug"),
]


@pytest.fixture
def socket_path() -> Iterator[Path]:
    # AF_UNIX paths are short (108 bytes): pytest's tmp_path may be too long.
    with tempfile.TemporaryDirectory(prefix="hfauth-") as directory:
        yield Path(directory) / "app.sock"


@pytest.fixture(autouse=True)
def warn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("hfauth_mw._breaker_limiter._warned", set(), raising=False)


@pytest.mark.parametrize("server", SERVERS)
def test_trusted_unix_socket_reads_x_forwarded_for(
    server: Any, socket_path: Path, hub_emulator: Any, hub_store: Any
) -> None:
    valid = hub_store.create_token(user="victim", role="read").token
    with server(socket_path, hub_emulator.url, ["unix"]) as send:
        statuses = [send(f"hf_guess{i:030d}", ATTACKER) for i in range(MAX_FAILURES + 2)]
        # The attacker is locked out by its own address...
        assert statuses == [401] * MAX_FAILURES + [429, 429]
        # ... and nobody else is.
        assert send(valid, VICTIM) == 200
        assert send("hf_" + "v" * 34, "198.51.100.8") == 401


@pytest.mark.parametrize("server", SERVERS)
def test_untrusted_unix_socket_never_locks_out_everyone(
    server: Any,
    socket_path: Path,
    hub_emulator: Any,
    hub_store: Any,
    no_token_in_logs: list[Any],
) -> None:
    valid = hub_store.create_token(user="victim", role="read").token
    with server(socket_path, hub_emulator.url, []) as send:
        statuses = [send(f"hf_guess{i:030d}", ATTACKER) for i in range(3 * MAX_FAILURES)]
        assert statuses == [401] * (3 * MAX_FAILURES)
        assert send(valid, VICTIM) == 200  # before (gunicorn, werkzeug): 429
    # The operator is told why the guard counts nobody, and what to set.
    if server is gunicorn_server:
        logged = _gunicorn_stderr["last"]
    else:
        logged = "\n".join(r.getMessage() for r in no_token_in_logs)
    assert "trusted_proxies=['unix']" in logged
