"""The drivers' I/O, as an operator sees it (issue 18, item 8): a 503's log
lines say which source failed and how (the URL without credentials or query,
and the error class: a refused connection, a TLS certificate that did not
verify, a timeout), and ``trust_env`` takes proxies and the CA bundle from the
environment as httpx does.

Before: a closed port, a TLS mismatch and no network all logged "The token
source cannot be reached", and the environment was ignored (``trust_env=False``).

Real servers on loopback: a refused port (``faults.FaultServer``), an HTTPS
server with a self-signed certificate made by ``openssl`` for the test, and
a forward proxy (``faults.Gateway``) in front of the hub emulator.
"""

from __future__ import annotations

import http.server
import json
import logging
import shutil
import ssl
import subprocess
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from faults import REFUSED, SILENT, FaultServer, Gateway, whoami_answer
from hfauth_mw import Authenticator, HubWhoamiSource, SourceUnavailable, TransportFailure
from hfauth_mw._drivers import loggable_url

pytestmark = pytest.mark.anyio

TOKEN = "hf_" + "d" * 34


@pytest.fixture
def fresh_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    """Process-wide clients built from this test's environment, not an earlier one's."""
    monkeypatch.setattr("hfauth_mw._drivers._sync_clients", {})
    monkeypatch.setattr("hfauth_mw._drivers._async_clients", weakref.WeakKeyDictionary())


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and its key), trusted by nobody."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed: no certificate for the TLS tests")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def https_hub(certificate: tuple[Path, Path]) -> Iterator[str]:
    """A whoami-v2 over HTTPS with the self-signed certificate; yields its URL."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = json.dumps(whoami_answer("alice")).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*certificate)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield f"https://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


async def authenticate(authenticator: Authenticator, mode: str) -> Any:
    if mode == "sync":
        return authenticator.authenticate_sync(TOKEN)
    return await authenticator.authenticate(TOKEN)


MODES = [pytest.param("sync", id="sync"), pytest.param("async", id="async")]


def source_errors(records: list[logging.LogRecord]) -> list[str]:
    return [r.getMessage() for r in records if getattr(r, "hfauth_event", "") == "source_error"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_refused_port_names_the_url_and_the_error(
    mode: str, no_token_in_logs: list[logging.LogRecord]
) -> None:
    with FaultServer(REFUSED) as upstream:
        authenticator = Authenticator(HubWhoamiSource(upstream.url, timeout=2.0))
        with pytest.raises(TransportFailure) as caught:
            await authenticate(authenticator, mode)
    url = f"{upstream.url}/api/whoami-v2"
    assert caught.value.detail == f"GET {url}: ConnectError (connection refused)"
    # The client is told no more than before: no URL, no error class.
    assert caught.value.description == "The token source cannot be reached"
    # Nor does the exception hold httpx's, whose request carries the token.
    chained: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None:
        chained.append(error)
        error = error.__cause__ or error.__context__
    assert not any(isinstance(link, httpx.HTTPError) for link in chained), chained
    assert source_errors(no_token_in_logs) == [
        f"hfauth-mw: The token source cannot be reached: GET {url}: ConnectError "
        "(connection refused)"
    ]


@pytest.mark.parametrize("mode", MODES)
async def test_a_silent_upstream_is_a_read_timeout(mode: str) -> None:
    with FaultServer(SILENT) as upstream:
        authenticator = Authenticator(HubWhoamiSource(upstream.url, timeout=0.3))
        with pytest.raises(TransportFailure) as caught:
            await authenticate(authenticator, mode)
        upstream.clear()
    assert caught.value.description == "The token source timed out"
    assert caught.value.detail.endswith(": ReadTimeout") or "Timeout" in caught.value.detail


@pytest.mark.parametrize("mode", MODES)
async def test_a_certificate_that_does_not_verify_says_so(
    mode: str, https_hub: str, fresh_clients: None
) -> None:
    authenticator = Authenticator(HubWhoamiSource(https_hub, timeout=5.0), trust_env=False)
    with pytest.raises(TransportFailure) as caught:
        await authenticate(authenticator, mode)
    assert caught.value.detail.startswith(f"GET {https_hub}/api/whoami-v2: ConnectError (TLS ")
    assert "TLS verify failure" in caught.value.detail


@pytest.mark.parametrize("mode", MODES)
async def test_trust_env_takes_the_ca_bundle_from_the_environment(
    mode: str,
    https_hub: str,
    certificate: tuple[Path, Path],
    fresh_clients: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    trusting = Authenticator(HubWhoamiSource(https_hub, timeout=5.0))  # trust_env=True
    assert (await authenticate(trusting, mode)).name == "alice"
    ignoring = Authenticator(HubWhoamiSource(https_hub, timeout=5.0), trust_env=False)
    with pytest.raises(SourceUnavailable):
        await authenticate(ignoring, mode)


@pytest.mark.parametrize("mode", MODES)
async def test_trust_env_takes_the_proxy_from_the_environment(
    mode: str, hub_emulator: Any, hub_store: Any, fresh_clients: None, monkeypatch: Any
) -> None:
    hub_store.add_token(TOKEN, user="alice", role="read")
    with Gateway(hub_emulator.url, max_header_line=1024) as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        ignoring = Authenticator(HubWhoamiSource(hub_emulator.url), trust_env=False)
        assert (await authenticate(ignoring, mode)).name == "alice"
        assert proxy.calls == 0
        trusting = Authenticator(HubWhoamiSource(hub_emulator.url))
        assert (await authenticate(trusting, mode)).name == "alice"
        assert proxy.calls == 1


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        pytest.param("https://hub.internal/api/whoami-v2", "https://hub.internal/api/whoami-v2"),
        pytest.param(
            "https://user:secret@idp.internal:8443/introspect?x=1#f",
            "https://idp.internal:8443/introspect",
            id="credentials-query-fragment-dropped",
        ),
    ],
)
def test_loggable_url(url: str, expected: str) -> None:
    assert loggable_url(httpx.URL(url)) == expected


def test_trust_env_is_a_real_bool() -> None:
    from hfauth_mw import ConfigurationError

    with pytest.raises(ConfigurationError, match="trust_env"):
        Authenticator(HubWhoamiSource(), trust_env="false")  # type: ignore[arg-type]
