"""A local Hugging Face Hub emulator for testing applications offline.

:class:`HubEmulator` is a real HTTP server on the loopback interface that
speaks the Hub's whoami-v2 and auth-check dialect, answering from a
:class:`~hfauth_mw._store.LocalTokenStore`. Point the library (or any Hub
client) at :attr:`HubEmulator.url` instead of ``https://huggingface.co``::

    store = LocalTokenStore(tmp_path / "tokens.sqlite3")
    alice = store.create_token(user="alice", role="write")
    with HubEmulator(store, repos={"model:alice/demo": "public"}) as hub:
        httpx.get(f"{hub.url}/api/whoami-v2", headers={"Authorization": f"Bearer {alice.token}"})

It models what only the Hub knows: gate grants per user
(:meth:`HubEmulator.grant_gate`), resource groups
(:meth:`HubEmulator.add_resource_group`, :meth:`HubEmulator.add_group_member`),
renamed repositories (:meth:`HubEmulator.rename_repo`), org security
restrictions (:meth:`HubEmulator.set_org_restrictions`) and tokens the store
cannot hold, such as OAuth and app tokens (:meth:`HubEmulator.register_token`).

It can also misbehave on purpose: :meth:`HubEmulator.fail_next` answers with
any status (429 with ``RateLimit`` headers, 503, ...) on one endpoint or both,
:attr:`HubEmulator.delay`, :attr:`HubEmulator.auth_check_delay` and
:meth:`HubEmulator.delay_token` hold answers back, and
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
import copy
import json
import math
import re
import socket
import socketserver
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, ClassVar, Literal, cast
from urllib.parse import unquote, urlsplit

from ._exceptions import ConfigurationError, MalformedAnswer, TokenStoreError
from ._principal import (
    ANONYMOUS,
    Principal,
    fingerprint_of,
    org_restrictions_as_whoami,
    principal_from_whoami,
    token_digest,
)
from ._rules import (
    REPO_TYPES,
    OAuthGrant,
    Repo,
    RepoType,
    Visibility,
    can_read,
    can_write,
)
from ._sources import _is_loopback
from ._store import LocalTokenStore

__all__ = ["INVALID_CREDENTIALS", "HubEmulator"]

#: The Hub's message for an unknown, revoked or expired token.
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"
_REPO_NOT_FOUND = "Repository not found"

_WHOAMI_PATH = "/api/whoami-v2"
_AUTH_CHECK = re.compile(
    r"/api/(?P<kind>[a-z]+)/(?P<owner>[^/]+)/(?P<name>[^/]+)"
    r"/auth-check(?P<write>/write)?/?"
)
_KINDS: dict[str, RepoType] = {f"{kind}s": kind for kind in REPO_TYPES}
_SOURCE = "hub-emulator"
_GATED_MESSAGE = (
    "Access to {repo} is restricted. You must have access to it and be authenticated "
    "to access it. Please log in."
)

#: Which endpoint a fault or delay applies to; None: both.
Endpoint = Literal["whoami", "auth-check"]
_ENDPOINTS = ("whoami", "auth-check")
#: OAuth scopes the emulator honours on auth-check (the others grant no repository).
_OAUTH_WRITE_SCOPES = frozenset({"write-repos", "manage-repos"})
_OAUTH_READ_SCOPES = frozenset({"read-repos"}) | _OAUTH_WRITE_SCOPES
_OAUTH_GATED_SCOPE = "gated-repos"


@dataclass(slots=True)
class _Fault:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes
    remaining: int | None
    endpoint: Endpoint | None = None


@dataclass(slots=True)
class _Group:
    """A resource group: its name, its repositories and its members' roles."""

    name: str | None
    repos: set[Repo] = field(default_factory=set)
    members: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Restrictions:
    security_restrictions: tuple[str, ...]
    missing_mfa: bool
    pending_sso: bool
    users: frozenset[str] | None  # None: every member


@dataclass(frozen=True, slots=True)
class _Registered:
    """A token the store cannot hold: its whoami-v2 answer and OAuth consent."""

    answer: dict[str, Any]
    oauth_scopes: frozenset[str]
    oauth_orgs: frozenset[str]


@dataclass(frozen=True, slots=True)
class _Caller:
    principal: Principal
    answer: dict[str, Any] | None
    registered: _Registered | None = None


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

    ``repos`` maps ``"model:owner/name"`` (also ``dataset:``, ``space:``,
    ``bucket:``, ``kernel:``) to ``"public"``, ``"gated"`` or ``"private"``;
    :meth:`add_repo` adds more. Any other repository is taken to exist and be
    private (``unknown_repos="private"``, the default) or not to exist
    (``unknown_repos="missing"``).

    Answers, as the Hub gives them:

    * ``GET /api/whoami-v2``: 200 with the token's answer (the store's, or the
      one given to :meth:`register_token`), plus the org facts set here
      (``resourceGroups`` of the user's groups, ``securityRestrictions``,
      ``missingMFA``, ``pendingSSO``; each only when set, absent otherwise);
      401 with ``{"error": "Invalid credentials in Authorization header"}`` and
      the same text in ``X-Error-Message`` for a missing, unknown, revoked or
      expired token (the emulator checks expiry with its own clock).
    * ``GET /api/{models|datasets|spaces|buckets|kernels}/{owner}/{name}/auth-check[/write]``:

      - 307 with ``Location`` (the new id's auth-check path) for a renamed repository;
      - 401 for a bad token; without a token, 200 for reading a public
        repository, else 401 (``X-Error-Code: GatedRepo`` for a gated one,
        ``RepoNotFound`` for a private or missing one);
      - 404 ``{"error": "Repository not found"}`` (``X-Error-Code: RepoNotFound``)
        for a missing repository, and for a private one the caller cannot read
        (resource groups hide theirs from non-members);
      - 403 (``X-Error-Code: GatedRepo``) for a gated repository whose gate the
        user has not passed (:meth:`grant_gate`; the owner needs no grant, org
        members do), or whose token may not read gated repositories;
      - 403 when the owning org's security restrictions refuse the token (a
        public repository stays readable), or when the caller may see the
        repository but not write it;
      - 200 ``{}`` otherwise. Rights follow :mod:`hfauth_mw._rules`, fed with
        what the emulator knows (visibility, gate grants, resource groups, the
        OAuth consent of registered tokens).
    * anything else: 404 JSON.
    * 500 ``{"error": "Internal Server Error"}`` when the store cannot be read
      or holds a malformed entry for the token.

    Faults (:meth:`fail_next`) apply to both API endpoints or to the one named,
    in the order they were queued, and are counted like normal calls. Delays
    apply to whoami-v2 (:attr:`delay`, :meth:`delay_token`) and auth-check
    (:attr:`auth_check_delay`).

    ``host`` must be a loopback address (or ``localhost``) unless
    ``allow_remote=True``: anyone who can reach it learns whose each token is.

    Caveat: plain HTTP on loopback, for tests only; it never logs.
    """

    _POLL_INTERVAL: ClassVar[float] = 0.05
    _DRAIN_TIMEOUT: ClassVar[float] = 5.0
    _CHECK_LOG_SIZE: ClassVar[int] = 10_000

    def __init__(
        self,
        store: LocalTokenStore,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        repos: Mapping[str, str] | None = None,
        unknown_repos: Literal["private", "missing"] = "private",
        allow_remote: bool = False,
    ) -> None:
        if not isinstance(store, LocalTokenStore):
            raise ConfigurationError("HubEmulator needs a LocalTokenStore")
        if not isinstance(host, str) or not host:
            raise ConfigurationError("host must be a non-empty string")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]  # "[::1]", as in a URL: bind "::1"
        if not allow_remote and not _is_loopback(host):
            raise ConfigurationError(
                f"HubEmulator refuses to serve on non-loopback host {host!r}: it tells anyone "
                "who asks whose each token is, over plain HTTP; pass allow_remote=True to insist"
            )
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigurationError("port must be an integer from 0 to 65535")
        if unknown_repos not in ("private", "missing"):
            raise ConfigurationError("unknown_repos must be 'private' or 'missing'")
        self._store = store
        self._host = host
        self._port = port
        self._unknown_repos = unknown_repos

        self._lock = threading.Lock()
        self._held = threading.Condition(self._lock)
        self._repos: dict[Repo, Visibility] = {}
        self._gates: dict[Repo, set[str]] = {}
        self._renamed: dict[Repo, Repo] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._restrictions: dict[str, _Restrictions] = {}
        self._registered: dict[bytes, _Registered] = {}
        for key, value in (repos or {}).items():
            self._repos[_repo(key, "repos")] = _visibility(value, key)

        self._whoami_calls = 0
        self._auth_check_calls = 0
        self._checks: deque[str] = deque(maxlen=self._CHECK_LOG_SIZE)
        self._faults: deque[_Fault] = deque()
        self._delay = 0.0
        self._auth_check_delay = 0.0
        self._token_delays: dict[bytes, float] = {}
        self._generation = 0  # bumped to release every held request
        self._holding = 0
        self._stopping = False

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- what only the Hub knows ---------------------------------------------------------

    def add_repo(self, repo: str, visibility: str = "private") -> None:
        """Register ``repo`` (``"model:owner/name"``, ...) as public, gated or private."""
        key = _repo(repo, "repo")
        value = _visibility(visibility, repo)
        with self._lock:
            self._repos[key] = value
            self._renamed.pop(key, None)

    def grant_gate(self, repo: str, user: str) -> None:
        """Let ``user`` through the gate of ``repo`` (as accepting its conditions would)."""
        key = _repo(repo, "repo")
        with self._lock:
            self._gates.setdefault(key, set()).add(_name(user, "user"))

    def revoke_gate(self, repo: str, user: str) -> None:
        key = _repo(repo, "repo")
        with self._lock:
            self._gates.get(key, set()).discard(user)

    def rename_repo(self, old: str, new: str) -> None:
        """Move ``old`` to ``new``: auth-check on ``old`` answers 307 to ``new``.

        The repository keeps its visibility, gate grants and resource group; a
        ``new`` of another type is allowed (the Hub redirects within a type, but
        clients must not rely on it).
        """
        before, after = _repo(old, "old"), _repo(new, "new")
        if before == after:
            raise ConfigurationError("a repository cannot be renamed to itself")
        with self._lock:
            visibility = self._repos.pop(before, None)
            if visibility is not None:
                self._repos[after] = visibility
            if before in self._gates:
                self._gates[after] = self._gates.pop(before)
            for group in self._groups.values():
                if before in group.repos:
                    group.repos.discard(before)
                    group.repos.add(after)
            self._renamed.pop(after, None)
            self._renamed[before] = after

    def add_resource_group(
        self, org: str, group_id: str, *, name: str | None = None, repos: Iterable[str] = ()
    ) -> None:
        """Create (or extend) resource group ``group_id`` of ``org`` holding ``repos``.

        A private repository in a group is visible only to the group's members,
        whose group role applies there instead of their org role.
        """
        keys = {_repo(repo, "repos") for repo in repos}
        for key in keys:
            if key.owner != org:
                raise ConfigurationError(f"repository {key} is not in org {org!r}")
        with self._lock:
            group = self._groups.setdefault(
                (_name(org, "org"), _name(group_id, "group_id")), _Group(name)
            )
            group.name = name if name is not None else group.name
            group.repos |= keys

    def add_group_member(self, org: str, group_id: str, user: str, role: str) -> None:
        """Make ``user`` a member of the group with ``role`` (``read``, ``contributor``,
        ``write``, ``admin``). The user's whoami-v2 answer lists the group under
        the org when the user is a member of the org."""
        with self._lock:
            group = self._groups.get((org, group_id))
            if group is None:
                raise ConfigurationError(f"org {org!r} has no resource group {group_id!r}")
            group.members[_name(user, "user")] = _name(role, "role")

    def set_org_restrictions(
        self,
        org: str,
        security_restrictions: Iterable[str] = (),
        *,
        missing_mfa: bool = False,
        pending_sso: bool = False,
        users: Iterable[str] | None = None,
    ) -> None:
        """Refuse tokens of ``org``'s members (all, or ``users``) on its repositories,
        and report it in their whoami-v2 answers. Nothing set clears them."""
        restrictions = tuple(_name(item, "restriction") for item in security_restrictions)
        if not isinstance(missing_mfa, bool) or not isinstance(pending_sso, bool):
            raise ConfigurationError("missing_mfa and pending_sso must be True or False")
        who = None if users is None else frozenset(_name(user, "user") for user in users)
        with self._lock:
            if restrictions or missing_mfa or pending_sso:
                self._restrictions[_name(org, "org")] = _Restrictions(
                    restrictions, missing_mfa, pending_sso, who
                )
            else:
                self._restrictions.pop(org, None)

    def register_token(
        self,
        token: str,
        answer: Mapping[str, Any],
        *,
        oauth_scopes: Iterable[str] = (),
        oauth_orgs: Iterable[str] = (),
    ) -> None:
        """Answer whoami-v2 for ``token`` with ``answer`` (kept as given: OAuth and app
        answers, ``patterns``, roles the store refuses). ``oauth_scopes`` and
        ``oauth_orgs`` are the consent of an OAuth token, which whoami-v2 does not
        show: ``read-repos``/``write-repos``/``manage-repos`` reach the user's own
        repositories and ``oauth_orgs``, ``gated-repos`` the gated repositories
        whose gate the user passed. The token is kept as its SHA-256 digest.
        """
        if not isinstance(token, str) or not token:
            raise ConfigurationError("token must be a non-empty string")
        if not isinstance(answer, Mapping):
            raise ConfigurationError("answer must be a whoami-v2 answer (a mapping)")
        try:
            principal_from_whoami(answer)
        except MalformedAnswer as exc:
            raise ConfigurationError(f"answer is not a whoami-v2 answer: {exc}") from None
        registered = _Registered(
            copy.deepcopy(dict(answer)),
            frozenset(_name(scope, "oauth scope") for scope in oauth_scopes),
            frozenset(_name(org, "oauth org") for org in oauth_orgs),
        )
        with self._lock:
            self._registered[token_digest(token)] = registered

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

    @property
    def auth_checks(self) -> list[str]:
        """The auth-checks asked so far, oldest first, as ``"read model:acme/x"``
        (bounded to the last 10,000; faulted ones included)."""
        with self._lock:
            return list(self._checks)

    def reset_counters(self) -> None:
        with self._lock:
            self._whoami_calls = 0
            self._auth_check_calls = 0
            self._checks.clear()

    # --- faults and latency -----------------------------------------------------------

    def fail_next(
        self,
        status: int,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes = b"",
        times: int | None = None,
        endpoint: Endpoint | None = None,
    ) -> None:
        """Answer the next API requests with ``status``, ``headers`` and ``body``.

        ``times`` requests are failed, or every one until :meth:`clear_faults`
        when ``times`` is None. ``endpoint`` (``"whoami"`` or ``"auth-check"``)
        limits the fault to that endpoint; by default it applies to both.
        Several calls queue up: each fault is used up before the next one for
        the same endpoint starts. Nothing is added to the answer: give a
        ``Content-Type`` in ``headers`` if the body needs one.
        """
        if endpoint is not None and endpoint not in _ENDPOINTS:
            raise ConfigurationError("endpoint must be 'whoami', 'auth-check' or None")
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
            self._faults.append(_Fault(status, header_items, body, times, endpoint))

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

    @property
    def auth_check_delay(self) -> float:
        """Seconds every auth-check answer is held back (simulated latency)."""
        with self._lock:
            return self._auth_check_delay

    @auth_check_delay.setter
    def auth_check_delay(self, seconds: float) -> None:
        value = _seconds(seconds, "auth_check_delay")
        with self._lock:
            self._auth_check_delay = value

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
            self._auth_check_delay = 0.0
            self._token_delays.clear()
            self._generation += 1
            self._held.notify_all()

    # --- holding requests ---------------------------------------------------------------

    @property
    def held(self) -> int:
        """How many requests (whoami-v2 or auth-check) are being held back right now."""
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

    def _take_fault(self, endpoint: Endpoint) -> _Fault | None:
        # Called with self._lock held.
        for fault in self._faults:
            if fault.endpoint is not None and fault.endpoint != endpoint:
                continue
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._faults.remove(fault)
            return fault
        return None

    def _authenticate(self, authorization: list[str] | None) -> _Caller | None:
        """The caller (ANONYMOUS without a header), or None for a bad, unknown or
        expired token. Its answer carries the org facts set on the emulator."""
        if not authorization:
            return _Caller(ANONYMOUS, None)
        if len(authorization) > 1:
            return None
        scheme, _, token = authorization[0].partition(" ")
        token = token.lstrip(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        digest = token_digest(token)
        with self._lock:
            registered = self._registered.get(digest)
        answer = (
            copy.deepcopy(registered.answer)
            if registered is not None
            else self._store.lookup(digest)
        )
        if answer is None:
            return None
        answer = self._with_org_facts(answer)
        principal = principal_from_whoami(
            answer, fingerprint=fingerprint_of(digest), source=_SOURCE
        )
        if principal.expires_at is not None and principal.expires_at <= datetime.now(UTC):
            return None
        return _Caller(principal, answer, registered)

    def _with_org_facts(self, answer: dict[str, Any]) -> dict[str, Any]:
        """``answer`` with the user's resource groups and the orgs' restrictions
        added to its ``orgs`` entries (only the fields that are set)."""
        user = answer.get("name")
        orgs = answer.get("orgs")
        if not isinstance(orgs, list):
            return answer
        with self._lock:
            groups = [
                (org, group_id, group.name, group.members[user])
                for (org, group_id), group in self._groups.items()
                if isinstance(user, str) and user in group.members
            ]
            restrictions = dict(self._restrictions)
        for entry in orgs:
            if not isinstance(entry, dict):
                continue
            name = entry.get("name")
            mine = [
                {"id": group_id, "name": group_name, "role": role}
                if group_name is not None
                else {"id": group_id, "role": role}
                for org, group_id, group_name, role in groups
                if org == name
            ]
            if mine:
                listed = entry.get("resourceGroups")
                kept = [
                    item
                    for item in (listed if isinstance(listed, list) else [])
                    if not (isinstance(item, dict) and item.get("id") in {g["id"] for g in mine})
                ]
                entry["resourceGroups"] = kept + mine
            refused = restrictions.get(name) if isinstance(name, str) else None
            if refused is not None and (refused.users is None or user in refused.users):
                entry.update(
                    org_restrictions_as_whoami(
                        refused.security_restrictions, refused.missing_mfa, refused.pending_sso
                    )
                )
        return answer

    def _token_delay(self, authorization: list[str] | None) -> float:
        # Called with self._lock held.
        if not self._token_delays or not authorization:
            return 0.0
        _, _, token = authorization[0].partition(" ")
        return self._token_delays.get(token_digest(token.lstrip(" ")), 0.0)

    def _answer(self, method: str, target: str, authorization: list[str] | None) -> _Reply:
        path = urlsplit(target).path
        auth_check = _AUTH_CHECK.fullmatch(path)
        if path != _WHOAMI_PATH and (auth_check is None or auth_check["kind"] not in _KINDS):
            return _NOT_FOUND_REPLY
        with self._lock:
            if auth_check is None:
                self._whoami_calls += 1
                wait = self._delay + self._token_delay(authorization)
                fault = self._take_fault("whoami")
            else:
                self._auth_check_calls += 1
                access = "write" if auth_check["write"] else "read"
                kind = _KINDS[auth_check["kind"]]
                self._checks.append(
                    f"{access} {kind}:{unquote(auth_check['owner'])}/{unquote(auth_check['name'])}"
                )
                wait = self._auth_check_delay
                fault = self._take_fault("auth-check")
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
        if caller is None or caller.answer is None:
            return _INVALID_TOKEN_REPLY
        return _json_reply(200, caller.answer)

    def _oauth_grant(
        self, caller: _Caller, repo: Repo, visibility: Visibility, write: bool
    ) -> OAuthGrant | None:
        """What a registered OAuth token's consent covers on ``repo``."""
        consent = caller.registered
        if consent is None or caller.principal.token_role is not None:
            return None
        scopes = consent.oauth_scopes
        selected = repo.owner == caller.principal.name or repo.owner in consent.oauth_orgs
        if selected and scopes & _OAUTH_WRITE_SCOPES:
            return "write"
        if selected and scopes & _OAUTH_READ_SCOPES:
            return "read"
        if visibility is Visibility.GATED and not write and _OAUTH_GATED_SCOPE in scopes:
            return "read"
        return None

    def _auth_check(self, match: re.Match[str], authorization: list[str] | None) -> _Reply:
        write = bool(match["write"])
        try:
            repo = Repo(_KINDS[match["kind"]], unquote(match["owner"]), unquote(match["name"]))
        except ValueError:
            return _error_reply(404, _REPO_NOT_FOUND, "RepoNotFound")
        with self._lock:
            renamed = self._renamed.get(repo)
            known = self._repos.get(repo)
            passed = frozenset(self._gates.get(repo, ()))
            group = next(
                (
                    group_id
                    for (org, group_id), item in self._groups.items()
                    if org == repo.owner and repo in item.repos
                ),
                None,
            )
        if renamed is not None:
            location = f"/api/{renamed.type}s/{renamed.owner}/{renamed.name}/auth-check" + (
                "/write" if write else ""
            )
            return _json_reply(307, {"error": "Repository moved"}, (("Location", location),))
        caller = self._authenticate(authorization)
        if caller is None:
            return _INVALID_TOKEN_REPLY
        principal = caller.principal
        exists = known is not None or self._unknown_repos == "private"
        visibility = known if known is not None else Visibility.PRIVATE
        if principal.is_anonymous:
            if exists and visibility is Visibility.PUBLIC and not write:
                return _json_reply(200, {})
            if exists and visibility is Visibility.PUBLIC:
                return _error_reply(401, INVALID_CREDENTIALS)
            if exists and visibility is Visibility.GATED:
                return _error_reply(401, _GATED_MESSAGE.format(repo=repo.id), "GatedRepo")
            return _error_reply(401, _REPO_NOT_FOUND, "RepoNotFound")
        if not exists:
            return _error_reply(404, _REPO_NOT_FOUND, "RepoNotFound")
        membership = principal.org(repo.owner)
        if (
            membership is not None
            and membership.restrictions
            and not (visibility is Visibility.PUBLIC and not write)
        ):
            named = ", ".join(membership.restrictions)
            return _error_reply(
                403,
                f"Organization {repo.owner} refuses this token (security restrictions: {named})",
            )
        grant = self._oauth_grant(caller, repo, visibility, write)
        if visibility is Visibility.GATED and not write:
            # The owner needs no gate; everyone else (org members included: not
            # confirmed otherwise) must have been granted access.
            if principal.name != repo.owner and principal.name not in passed:
                return _error_reply(403, _GATED_MESSAGE.format(repo=repo.id), "GatedRepo")
            read = can_read(
                principal, repo, visibility=Visibility.GATED, oauth_grant=grant, gate_passed=True
            )
            if read:
                return _json_reply(200, {})
            return _error_reply(403, read.reason, "GatedRepo")
        if visibility is Visibility.PRIVATE:
            read = can_read(
                principal, repo, visibility=visibility, oauth_grant=grant, resource_group=group
            )
            if not read:
                # The Hub does not tell a private repository from a missing one.
                return _error_reply(404, _REPO_NOT_FOUND, "RepoNotFound")
        if not write:
            return _json_reply(200, {})
        decision = can_write(principal, repo, oauth_grant=grant, resource_group=group)
        if decision:
            return _json_reply(200, {})
        return _error_reply(403, decision.reason)


def _repo(text: object, what: str) -> Repo:
    try:
        return Repo.parse(text)  # type: ignore[arg-type]
    except ValueError as exc:
        raise ConfigurationError(f"{what}: {exc}") from None


def _name(value: object, what: str) -> str:
    if not isinstance(value, str) or not value or not value.isprintable():
        raise ConfigurationError(f"{what} must be a non-empty printable string")
    return value


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
