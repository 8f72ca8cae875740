"""A local Hugging Face Hub emulator for testing applications offline.

:class:`HubEmulator` is a real HTTP server on the loopback interface that
speaks the Hub's whoami-v2 and auth-check dialect, answering from a
:class:`~hfauth_mw._store.LocalTokenStore`. Point the library (or any Hub
client) at :attr:`HubEmulator.url` instead of ``https://huggingface.co``::

    store = LocalTokenStore(tmp_path / "tokens.sqlite3")
    alice = store.create_token(user="alice", role="write")
    with HubEmulator(store, repos={"model:alice/demo": "public"}) as hub:
        httpx.get(f"{hub.url}/api/whoami-v2", headers={"Authorization": f"Bearer {alice.token}"})

It can also misbehave on purpose: :meth:`HubEmulator.fail_next` answers with
any status (429 with ``RateLimit`` headers, 503, ...), :attr:`HubEmulator.delay`
and :meth:`HubEmulator.delay_token` hold answers back, and
:meth:`HubEmulator.wait_for_held` / :meth:`HubEmulator.release_held` let a test
hold an upstream call open deterministically (for single-flight tests).

Pytest fixtures ``hub_store`` (an empty store in ``tmp_path``) and
``hub_emulator`` (a started emulator over ``hub_store``) come with this module;
enable them in your ``conftest.py`` with::

    pytest_plugins = ["hfauth_mw.testing"]

Security caveats, stated plainly: this is a test tool. It serves plain HTTP
(tokens cross the wire unencrypted), has no rate limiting and no TLS, and is
meant for 127.0.0.1 only: do not expose it on a network interface. It logs
nothing (no request lines, no headers), so tokens never reach its output.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import socket
import socketserver
import threading
from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, cast
from urllib.parse import unquote, urlsplit

from ._exceptions import ConfigurationError, MalformedAnswer, TokenStoreError
from ._principal import (
    ANONYMOUS,
    Principal,
    fingerprint_of,
    principal_from_whoami,
    token_digest,
)
from ._rules import Repo, RepoType, Visibility, can_read, can_write
from ._store import LocalTokenStore

__all__ = ["INVALID_CREDENTIALS", "HubEmulator"]

#: The Hub's message for an unknown, revoked or expired token.
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_REPO_NOT_FOUND = "Repository not found"

_WHOAMI_PATH = "/api/whoami-v2"
_AUTH_CHECK = re.compile(
    r"/api/(?P<kind>models|datasets|spaces)/(?P<owner>[^/]+)/(?P<name>[^/]+)"
    r"/auth-check(?P<write>/write)?/?"
)
_KINDS: dict[str, RepoType] = {"models": "model", "datasets": "dataset", "spaces": "space"}
_SOURCE = "hub-emulator"


@dataclass(slots=True)
class _Fault:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    remaining: int | None


@dataclass(frozen=True, slots=True)
class _Reply:
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()


def _json_reply(
    status: int, payload: Mapping[str, Any], headers: tuple[tuple[str, str], ...] = ()
) -> _Reply:
    return _Reply(
        status,
        json.dumps(payload).encode("utf-8"),
        (("Content-Type", "application/json; charset=utf-8"), *headers),
    )


def _header_text(text: str) -> str:
    """A header-safe (printable ASCII) version of a message."""
    return "".join(ch if " " <= ch <= "~" else "?" for ch in text)


def _error_reply(status: int, message: str, code: str | None = None) -> _Reply:
    headers = [("X-Error-Message", _header_text(message))]
    if code is not None:
        headers.append(("X-Error-Code", code))
    return _json_reply(status, {"error": message}, tuple(headers))


_INVALID_TOKEN_REPLY = _error_reply(401, INVALID_CREDENTIALS)
_NOT_FOUND_REPLY = _json_reply(404, {"error": "Not Found"})


def _visibility(value: object, key: str) -> Visibility:
    try:
        return Visibility(value)
    except ValueError:
        raise ConfigurationError(
            f"visibility of {key!r} must be 'public', 'gated' or 'private', not {value!r}"
        ) from None


def _seconds(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigurationError(f"{what} must be a number of seconds")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds < 0:
        raise ConfigurationError(f"{what} must be a finite number of seconds >= 0")
    return seconds


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that knows its emulator and its open connections."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], emulator: HubEmulator) -> None:
        self.emulator = emulator
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host name (getfqdn), which
        # can stall on hosts without DNS; the emulator needs none of it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, socket.socket):
            with self._connections_lock:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Cut open keep-alive connections so their handler threads end."""
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Silent on purpose: the default prints a traceback that may quote a
        # request. Client disconnects are the usual cause here.
        return


class _Handler(BaseHTTPRequestHandler):
    """Answers one connection (HTTP/1.1, keep-alive, Content-Length always set)."""

    protocol_version = "HTTP/1.1"
    server_version = "hfauth-mw-hub-emulator"
    sys_version = ""
    timeout = 60  # an idle keep-alive connection is closed after a minute
    # Headers and body go out in two writes; with Nagle on, a keep-alive client
    # delaying its ACK stalls every answer by ~40 ms.
    disable_nagle_algorithm = True

    # Never log: request lines can carry tokens in query strings, and headers
    # carry them always. log_request and log_error both end here.
    def log_message(self, format: str, *args: Any) -> None:
        return

    def version_string(self) -> str:
        return self.server_version

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # The default reflects the raw request line into an HTML page; answer
        # JSON without echoing anything the client sent.
        self.close_connection = True
        phrase = self.responses.get(code, ("Error",))[0]
        self._send(_json_reply(code, {"error": phrase}, (("Connection", "close"),)))

    def _send(self, reply: _Reply) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD" and reply.body:
            self.wfile.write(reply.body)

    def _discard_body(self) -> None:
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True  # no chunked decoding here: just hang up after
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self.close_connection = True
            return
        while length > 0:
            chunk = self.rfile.read(min(length, 65536))
            if not chunk:
                break
            length -= len(chunk)

    def do_GET(self) -> None:
        self._discard_body()
        emulator = cast(_Server, self.server).emulator
        self._send(emulator._answer(self.command, self.path, self.headers.get_all("Authorization")))

    def _not_found(self) -> None:
        self._discard_body()
        self._send(_NOT_FOUND_REPLY)

    do_HEAD = do_GET
    do_POST = _not_found
    do_PUT = _not_found
    do_PATCH = _not_found
    do_DELETE = _not_found
    do_OPTIONS = _not_found


class HubEmulator:
    """A local HTTP server that answers like the Hub's whoami-v2 and auth-check.

    ``repos`` maps ``"model:owner/name"`` (also ``dataset:``/``space:``) to
    ``"public"``, ``"gated"`` or ``"private"``; any other repository is taken
    to exist and be private. Access decisions come from :mod:`hfauth_mw._rules`.

    Answers, as the Hub gives them:

    * ``GET /api/whoami-v2``: 200 with the store's answer; 401 with
      ``{"error": "Invalid credentials in Authorization header"}`` and the same
      text in ``X-Error-Message`` for a missing, unknown, revoked or expired
      token (the emulator checks expiry with its own clock).
    * ``GET /api/{models|datasets|spaces}/{owner}/{name}/auth-check[/write]``:
      200 ``{}`` when allowed; 401 for a bad token; 404 (``X-Error-Code:
      RepoNotFound``) when the repository is private and the caller cannot read
      it; 403 ``{"error": reason}`` otherwise (``X-Error-Code: GatedRepo`` for a
      gated repository). A request without a token is anonymous: public
      repositories are readable, any other denial is a 401.
    * anything else: 404 JSON.
    * 500 ``{"error": "Internal Server Error"}`` when the store cannot be read
      or holds a malformed entry for the token.

    Faults (:meth:`fail_next`) apply to both API endpoints, in the order they
    were queued, and are counted like normal calls. Delays apply to whoami-v2.

    Caveat: plain HTTP on loopback, for tests only; it never logs.
    """

    _POLL_INTERVAL: ClassVar[float] = 0.05
    _DRAIN_TIMEOUT: ClassVar[float] = 5.0

    def __init__(
        self,
        store: LocalTokenStore,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        repos: Mapping[str, str] | None = None,
    ) -> None:
        if not isinstance(store, LocalTokenStore):
            raise ConfigurationError("HubEmulator needs a LocalTokenStore")
        if not isinstance(host, str) or not host:
            raise ConfigurationError("host must be a non-empty string")
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError("port must be an integer from 0 to 65535")
        self._store = store
        self._host = host
        self._port = port
        self._repos: dict[Repo, Visibility] = {}
        for key, value in (repos or {}).items():
            try:
                repo = Repo.parse(key)
            except ValueError as exc:
                raise ConfigurationError(f"repos: {exc}") from None
            self._repos[repo] = _visibility(value, key)

        self._lock = threading.Lock()
        self._held = threading.Condition(self._lock)
        self._whoami_calls = 0
        self._auth_check_calls = 0
        self._faults: deque[_Fault] = deque()
        self._delay = 0.0
        self._token_delays: dict[bytes, float] = {}
        self._generation = 0  # bumped to release every held request
        self._holding = 0
        self._stopping = False

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> HubEmulator:
        """Bind and serve in a daemon thread. Returns ``self``."""
        if self._server is not None:
            raise RuntimeError("the hub emulator is already running")
        server = _Server((self._host, self._port), self)
        with self._lock:
            self._stopping = False
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": self._POLL_INTERVAL},
            name=f"hub-emulator-{server.server_port}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, release held requests and close connections. Idempotent."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        self._server = self._thread = None
        server.shutdown()
        with self._held:
            self._stopping = True
            self._generation += 1
            self._held.notify_all()
            # Give released requests a moment to leave the hold before the cut.
            self._held.wait_for(lambda: self._holding == 0, timeout=self._DRAIN_TIMEOUT)
        server.close_connections()
        server.server_close()
        thread.join()

    def __enter__(self) -> HubEmulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321`` (valid once started)."""
        server = self._server
        if server is None:
            raise RuntimeError("the hub emulator is not running: call start() first")
        host = f"[{server.server_name}]" if ":" in server.server_name else server.server_name
        return f"http://{host}:{server.server_port}"

    @property
    def store(self) -> LocalTokenStore:
        """The token store the emulator answers from."""
        return self._store

    def __repr__(self) -> str:
        where = self.url if self._server is not None else "stopped"
        return f"HubEmulator({where}, store={self._store!r})"

    # --- counters ---------------------------------------------------------------------

    @property
    def whoami_calls(self) -> int:
        """Requests to ``/api/whoami-v2`` so far, faulted ones included."""
        with self._lock:
            return self._whoami_calls

    @property
    def auth_check_calls(self) -> int:
        """Requests to the auth-check endpoints so far, faulted ones included."""
        with self._lock:
            return self._auth_check_calls

    def reset_counters(self) -> None:
        with self._lock:
            self._whoami_calls = 0
            self._auth_check_calls = 0

    # --- faults and latency -----------------------------------------------------------

    def fail_next(
        self,
        status: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        times: int | None = None,
    ) -> None:
        """Answer the next API requests with ``status``, ``headers`` and ``body``.

        ``times`` requests are failed, or every one until :meth:`clear_faults`
        when ``times`` is None. Several calls queue up: each fault is used up
        before the next one starts. Nothing is added to the answer: give a
        ``Content-Type`` in ``headers`` if the body needs one.
        """
        if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
            raise ConfigurationError("status must be an HTTP status code from 200 to 599")
        if times is not None and (isinstance(times, bool) or not isinstance(times, int)):
            raise ConfigurationError("times must be a positive integer or None")
        if times is not None and times < 1:
            raise ConfigurationError("times must be a positive integer or None")
        if not isinstance(body, bytes):
            raise ConfigurationError("body must be bytes")
        header_items = tuple((headers or {}).items())
        for name, value in header_items:
            if not isinstance(name, str) or not isinstance(value, str):
                raise ConfigurationError("headers must map strings to strings")
            if name.lower() == "content-length":
                raise ConfigurationError("Content-Length is set by the emulator")
        with self._lock:
            self._faults.append(_Fault(status, header_items, body, times))

    @property
    def delay(self) -> float:
        """Seconds every whoami-v2 answer is held back (simulated latency)."""
        with self._lock:
            return self._delay

    @delay.setter
    def delay(self, seconds: float) -> None:
        value = _seconds(seconds, "delay")
        with self._lock:
            self._delay = value

    def delay_token(self, token: str, seconds: float) -> None:
        """Hold back whoami-v2 answers for this token only, by ``seconds`` more.

        The token is kept as its SHA-256 digest. ``seconds=0`` removes the delay.
        """
        value = _seconds(seconds, "seconds")
        digest = token_digest(token)
        with self._lock:
            if value:
                self._token_delays[digest] = value
            else:
                self._token_delays.pop(digest, None)

    def clear_faults(self) -> None:
        """Drop queued faults and every delay, and release held requests."""
        with self._held:
            self._faults.clear()
            self._delay = 0.0
            self._token_delays.clear()
            self._generation += 1
            self._held.notify_all()

    # --- holding requests ---------------------------------------------------------------

    @property
    def held(self) -> int:
        """How many whoami-v2 requests are being held back right now."""
        with self._lock:
            return self._holding

    def wait_for_held(self, count: int = 1, timeout: float = 5.0) -> bool:
        """Block until at least ``count`` requests are held back; False on timeout.

        With a long :attr:`delay`, this lets a test know an upstream call is in
        flight without sleeping.
        """
        with self._held:
            return self._held.wait_for(lambda: self._holding >= count, timeout=timeout)

    def release_held(self) -> None:
        """Let every request held back right now answer at once (delays stay set)."""
        with self._held:
            self._generation += 1
            self._held.notify_all()

    def _hold(self, seconds: float) -> None:
        if seconds <= 0:
            return
        with self._held:
            if self._stopping:
                return
            generation = self._generation
            self._holding += 1
            self._held.notify_all()
            try:
                self._held.wait_for(lambda: self._generation != generation, timeout=seconds)
            finally:
                self._holding -= 1
                self._held.notify_all()

    # --- answering ----------------------------------------------------------------------

    def _take_fault(self) -> _Fault | None:
        # Called with self._lock held.
        if not self._faults:
            return None
        fault = self._faults[0]
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self._faults.popleft()
        return fault

    def _authenticate(
        self, authorization: list[str] | None
    ) -> tuple[Principal, dict[str, Any] | None] | None:
        """The caller and its whoami answer (ANONYMOUS and None without a header),
        or None for a bad, unknown or expired token."""
        if not authorization:
            return ANONYMOUS, None
        if len(authorization) > 1:
            return None
        scheme, _, token = authorization[0].partition(" ")
        token = token.lstrip(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = token_digest(token)
        answer = self._store.lookup(digest)
        if answer is None:
            return None
        principal = principal_from_whoami(
            answer, fingerprint=fingerprint_of(digest), source=_SOURCE
        )
        if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
            return None
        return principal, answer

    def _token_delay(self, authorization: list[str] | None) -> float:
        # Called with self._lock held.
        if not self._token_delays or not authorization:
            return 0.0
        _, _, token = authorization[0].partition(" ")
        return self._token_delays.get(token_digest(token.lstrip(" ")), 0.0)

    def _answer(self, method: str, target: str, authorization: list[str] | None) -> _Reply:
        path = urlsplit(target).path
        auth_check = _AUTH_CHECK.fullmatch(path)
        if path != _WHOAMI_PATH and auth_check is None:
            return _NOT_FOUND_REPLY
        with self._lock:
            if auth_check is None:
                self._whoami_calls += 1
                wait = self._delay + self._token_delay(authorization)
            else:
                self._auth_check_calls += 1
                wait = 0.0
            fault = self._take_fault()
        self._hold(wait)
        if fault is not None:
            return _Reply(fault.status, fault.body, fault.headers)
        try:
            if auth_check is None:
                return self._whoami(authorization)
            return self._auth_check(auth_check, authorization)
        except (TokenStoreError, MalformedAnswer):
            # A store that cannot be read or holds a malformed entry: answer, as
            # the Hub would, rather than hang up without a word.
            return _json_reply(500, {"error": "Internal Server Error"})

    def _whoami(self, authorization: list[str] | None) -> _Reply:
        caller = self._authenticate(authorization)
        if caller is None or caller[1] is None:
            return _INVALID_TOKEN_REPLY
        return _json_reply(200, caller[1])

    def _auth_check(self, match: re.Match[str], authorization: list[str] | None) -> _Reply:
        try:
            repo = Repo(
                _KINDS[match["kind"]],
                unquote(match["owner"]),
                unquote(match["name"]),
            )
        except ValueError:
            return _error_reply(404, _REPO_NOT_FOUND, "RepoNotFound")
        caller = self._authenticate(authorization)
        if caller is None:
            return _INVALID_TOKEN_REPLY
        principal = caller[0]
        visibility = self._repos.get(repo, Visibility.PRIVATE)
        read = can_read(principal, repo, visibility=visibility)
        decision = can_write(principal, repo) if match["write"] else read
        if decision:
            return _json_reply(200, {})
        hidden = visibility is Visibility.PRIVATE and not read
        gated = visibility is Visibility.GATED and not read
        if hidden:
            # The Hub does not tell a private repository from a missing one.
            status = 401 if principal.is_anonymous else 404
            return _error_reply(status, _REPO_NOT_FOUND, "RepoNotFound")
        status = 401 if principal.is_anonymous else 403
        return _error_reply(status, decision.reason, "GatedRepo" if gated else None)


# --- pytest fixtures ------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # pragma: no cover - pytest is optional
    pass
else:
    from pathlib import Path

    __all__ += ["hub_emulator", "hub_store"]

    @pytest.fixture
    def hub_store(tmp_path: Path) -> Iterator[LocalTokenStore]:
        """An empty :class:`LocalTokenStore` in ``tmp_path``, closed afterwards."""
        with LocalTokenStore(tmp_path / "hub-tokens.sqlite3") as store:
            yield store

    @pytest.fixture
    def hub_emulator(hub_store: LocalTokenStore) -> Iterator[HubEmulator]:
        """A started :class:`HubEmulator` over ``hub_store``, stopped afterwards."""
        with HubEmulator(hub_store) as emulator:
            yield emulator
