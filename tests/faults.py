"""A misbehaving HTTP upstream on the loopback interface, for the failure matrix.

:class:`FaultServer` is a real TCP server (``socketserver``, one thread per
connection) that answers every request with one :class:`Fault` until
:meth:`FaultServer.clear` switches it to a good whoami-v2 answer. Nothing is
mocked: the middleware under test talks to it through its ordinary httpx
client, so the fault reaches the code the way a broken Hub would.

Faults, by :attr:`Fault.kind`:

* ``answer``: a complete HTTP response (any status, headers and body).
* ``raw``: these bytes exactly (maybe none, maybe not HTTP), then hang up.
* ``refused``: the socket is bound but not listening, so the kernel answers
  every SYN with RST: ``ECONNREFUSED``. :meth:`~FaultServer.clear` starts
  listening on the same port, so the URL stays the same.
* ``backlog``: listening with ``listen(0)`` and the accept queue filled with
  connections nobody accepts. Linux then *drops* further SYNs (it does not
  answer RST unless ``net.ipv4.tcp_abort_on_overflow`` is 1), so the client's
  connect hangs until its connect timeout: a true connect timeout. If the
  kernel keeps completing handshakes anyway, :meth:`~FaultServer.start`
  raises :class:`BacklogNotFull` and the test should skip.
* ``silent``: accept, read the request, send nothing (read timeout before
  the headers).
* ``slow_body``: send the status line and headers with a ``Content-Length``,
  a few bytes of body, then stall (read timeout in the body).
* ``drip``: send the status line and headers with a ``Content-Length``, then
  the body one byte every :data:`DRIP_INTERVAL` seconds: every read succeeds
  well inside the read timeout, but the answer never finishes in time.
* ``drip_head``: the status line and headers a byte at a time, then the body
  at once (:attr:`FaultServer.heads_sent` counts heads sent whole).
* ``stream``: send the headers and then an endless body (``Content-Length``
  or chunked), for answers over the size cap; stops when the client hangs up.

Stalls end when the fault is cleared or the server stops, and are bounded by
:data:`STALL_LIMIT` in any case, so nothing here can hang a test run.
"""

from __future__ import annotations

import http.client
import json
import select
import socket
import socketserver
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

#: Upper bound on any deliberate stall, should a test forget to clear or stop.
STALL_LIMIT = 15.0
_MAX_HEAD = 64 * 1024

#: ``drip``: seconds between two bytes of the body.
DRIP_INTERVAL = 0.05

FaultKind = Literal[
    "answer", "raw", "refused", "backlog", "silent", "slow_body", "drip", "drip_head", "stream"
]

_REASONS = {
    200: "OK",
    301: "Moved Permanently",
    302: "Found",
    307: "Temporary Redirect",
    308: "Permanent Redirect",
    401: "Unauthorized",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


@dataclass(frozen=True)
class Fault:
    """What the upstream does with each request (see the module docstring)."""

    kind: FaultKind
    status: int = 200
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    #: ``stream``: declare this Content-Length (None: chunked transfer encoding).
    content_length: int | None = None


def answer(
    status: int,
    body: bytes | str = b"",
    *,
    content_type: str | None = "application/json",
    headers: Iterable[tuple[str, str]] = (),
) -> Fault:
    """A complete response; ``body`` as given (str is UTF-8 encoded)."""
    all_headers = list(headers)
    if content_type is not None:
        all_headers.insert(0, ("Content-Type", content_type))
    raw = body.encode() if isinstance(body, str) else body
    return Fault("answer", status, tuple(all_headers), raw)


def json_answer(document: Any, status: int = 200, **options: Any) -> Fault:
    """A response whose body is ``document`` as JSON."""
    return answer(status, json.dumps(document), **options)


def redirect(status: int, location: str) -> Fault:
    return answer(status, b"", content_type=None, headers=[("Location", location)])


def raw(data: bytes) -> Fault:
    return Fault("raw", body=data)


REFUSED = Fault("refused")
FULL_BACKLOG = Fault("backlog")
SILENT = Fault("silent")
SLOW_BODY = Fault(
    "slow_body",
    headers=(("Content-Type", "application/json"), ("Content-Length", "4096")),
    body=b'{"name": "al',
)


def drip(document: Any, *, head_too: bool = False) -> Fault:
    """``document`` as JSON, sent a byte at a time (see ``drip`` and ``drip_head`` above)."""
    return Fault(
        "drip_head" if head_too else "drip",
        headers=(("Content-Type", "application/json"),),
        body=json.dumps(document).encode(),
    )


def endless_body(*, content_length: int | None) -> Fault:
    """Headers, then body bytes until the client hangs up (or ``content_length``)."""
    return Fault(
        "stream",
        headers=(("Content-Type", "application/json"),),
        content_length=content_length,
    )


def whoami_answer(name: str, role: str = "read") -> dict[str, Any]:
    """A well-formed whoami-v2 answer for a user with one access token."""
    return {
        "type": "user",
        "id": "0123456789abcdef01234567",
        "name": name,
        "fullname": name.title(),
        "orgs": [],
        "auth": {
            "type": "access_token",
            "accessToken": {"displayName": "matrix", "role": role},
        },
    }


class BacklogNotFull(RuntimeError):
    """The kernel kept completing handshakes on a full backlog: no connect timeout here."""


@dataclass
class _State:
    fault: Fault
    good: Fault
    calls: int = 0
    cleared: bool = False
    #: Heads (status line and headers) sent whole: ``drip_head`` counts its own.
    heads_sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    release: threading.Event = field(default_factory=threading.Event)


class _Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        conn: socket.socket = self.request
        conn.settimeout(STALL_LIMIT)
        state = self.server.state
        try:
            if not _read_head(conn):
                return  # the client hung up first (e.g. a backlog filler)
            with state.lock:
                state.calls += 1
                fault = state.good if state.cleared else state.fault
            self._act(conn, fault, state.release)
        except OSError:
            pass  # the client gave up (timeout, size cap): that is the point

    def _act(self, conn: socket.socket, fault: Fault, release: threading.Event) -> None:
        if fault.kind == "answer":
            head = _head(fault.status, [*fault.headers, ("Content-Length", str(len(fault.body)))])
            conn.sendall(head + fault.body)
        elif fault.kind == "raw":
            conn.sendall(fault.body)
        elif fault.kind == "silent":
            release.wait(STALL_LIMIT)
        elif fault.kind == "slow_body":
            conn.sendall(_head(fault.status, list(fault.headers)) + fault.body)
            release.wait(STALL_LIMIT)
        elif fault.kind == "drip":
            head = _head(fault.status, [*fault.headers, ("Content-Length", str(len(fault.body)))])
            conn.sendall(head)
            for byte in fault.body:
                if release.wait(DRIP_INTERVAL):
                    break
                conn.sendall(bytes([byte]))
        elif fault.kind == "drip_head":
            head = _head(fault.status, [*fault.headers, ("Content-Length", str(len(fault.body)))])
            for byte in head:
                if release.wait(DRIP_INTERVAL):
                    return
                conn.sendall(bytes([byte]))
            with self.server.state.lock:
                self.server.state.heads_sent += 1
            conn.sendall(fault.body)
        elif fault.kind == "stream":
            headers = list(fault.headers)
            chunked = fault.content_length is None
            if chunked:
                headers.append(("Transfer-Encoding", "chunked"))
            else:
                headers.append(("Content-Length", str(fault.content_length)))
            conn.sendall(_head(fault.status, headers))
            chunk = b" " * 16384
            framed = b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk
            sent = 0
            while (chunked or sent < (fault.content_length or 0)) and not release.is_set():
                conn.sendall(framed)
                sent += len(chunk)
                if sent > 64 * 1024 * 1024:
                    break  # a client with no size cap at all; the test will say so
        else:  # pragma: no cover - refused/backlog never reach a handler
            raise AssertionError(f"unexpected fault kind {fault.kind}")


def _read_head(conn: socket.socket) -> bool:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return False
        data += chunk
        if len(data) > _MAX_HEAD:
            return False
    return True


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}"]
    lines += [f"{name}: {value}" for name, value in headers]
    lines += ["Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    block_on_close = True
    allow_reuse_address = False

    def __init__(self, host: str, state: _State) -> None:
        self.state = state
        super().__init__((host, 0), _Handler, bind_and_activate=False)


class FaultServer:
    """A loopback upstream that answers with ``fault`` until :meth:`clear`.

    ``good`` is the answer after :meth:`clear` (default: a valid whoami-v2 for
    ``alice``). :attr:`calls` counts requests whose head was read. Use as a
    context manager, or call :meth:`start` and :meth:`stop`.
    """

    def __init__(self, fault: Fault, *, good: Fault | None = None, host: str = "127.0.0.1") -> None:
        self._state = _State(fault, good or json_answer(whoami_answer("alice")))
        self._server = _TCPServer(host, self._state)
        self._server.server_bind()  # bound now, so the port is ours even before listening
        self._thread: threading.Thread | None = None
        self._fillers: list[socket.socket] = []

    @property
    def host(self) -> str:
        return str(self._server.server_address[0])

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def calls(self) -> int:
        with self._state.lock:
            return self._state.calls

    @property
    def heads_sent(self) -> int:
        """``drip_head`` answers whose status line and headers were sent whole."""
        with self._state.lock:
            return self._state.heads_sent

    def start(self) -> FaultServer:
        kind = self._state.fault.kind
        if kind == "refused":
            return self  # bound, not listening: the kernel refuses connections
        if kind == "backlog":
            self._server.socket.listen(0)
            self._fill_backlog()
            return self
        self._serve()
        return self

    def _serve(self) -> None:
        self._server.socket.listen(64)  # also raises the backlog of a "backlog" server
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"fault-server-{self.port}",
            daemon=True,
        )
        self._thread.start()

    def _fill_backlog(self) -> None:
        # listen(0) queues one completed connection; the next SYN is dropped.
        # Connect until a handshake does not complete: the queue is then full.
        for _ in range(16):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            self._fillers.append(filler)
            filler.connect_ex((self.host, self.port))
            _, writable, _ = select.select([], [filler], [], 0.25)
            if not writable:
                return  # this handshake hangs: later SYNs are dropped too
        self._close_fillers()
        raise BacklogNotFull("the kernel completed every handshake on a listen(0) socket")

    def _close_fillers(self) -> None:
        for filler in self._fillers:
            filler.close()
        self._fillers.clear()

    def clear(self) -> None:
        """End the fault: release stalled requests and answer ``good`` from now on."""
        with self._state.lock:
            self._state.cleared = True
        self._state.release.set()
        if self._thread is None:
            self._close_fillers()
            self._serve()

    def stop(self) -> None:
        self._state.release.set()
        self._close_fillers()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()

    def __enter__(self) -> FaultServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# --- a gateway in front of the Hub -----------------------------------------------------------


class Gateway:
    """A real HTTP reverse proxy on the loopback interface, in front of an
    upstream (the hub emulator), that refuses some requests *because of the
    token they carry*, as nginx and WAFs do:

    * an ``Authorization`` line longer than ``max_header_line`` bytes: 400
      (nginx's "Request Header Or Cookie Too Large");
    * a token with ``..``: 403 (a WAF's path-traversal rule);
    * a token containing ``explode``: 502 (an upstream that falls over on
      one token: a failure that counts against the breaker).

    Everything else is forwarded to ``upstream`` and its answer relayed (also
    when it is used as a forward proxy, ``HTTP_PROXY``: the request then names
    the upstream's absolute URL).
    :attr:`calls` counts the requests that reached the gateway.
    """

    def __init__(self, upstream: str, *, max_header_line: int = 128) -> None:
        self.upstream = urlsplit(upstream)
        self.max_header_line = max_header_line
        self._lock = threading.Lock()
        self._calls = 0
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body are two writes: no 40 ms ACK wait

            def log_message(self, format: str, *args: Any) -> None:
                pass  # a test's gateway logs nothing (the request line is harmless, but quiet)

            def do_GET(self) -> None:
                gateway._count()
                authorization = self.headers.get("Authorization", "")
                if len(authorization) + len("Authorization: ") > gateway.max_header_line:
                    self._reply(400, b"<html>400 Request Header Or Cookie Too Large</html>")
                elif ".." in authorization:
                    self._reply(403, b"<html>403 Forbidden</html>")
                elif "explode" in authorization:
                    self._reply(502, b"<html>502 Bad Gateway</html>")
                else:
                    # As a forward proxy (HTTP_PROXY) it is sent the absolute URL.
                    target = urlsplit(self.path)
                    path = target.path + (f"?{target.query}" if target.query else "")
                    status, headers, body = gateway._forward(path, dict(self.headers))
                    self._reply(status, body, headers)

            def _reply(
                self, status: int, body: bytes, headers: Iterable[tuple[str, str]] = ()
            ) -> None:
                self.send_response(status)
                sent_type = False
                for name, value in headers:
                    if name.lower() in ("content-length", "connection", "transfer-encoding"):
                        continue
                    sent_type = sent_type or name.lower() == "content-type"
                    self.send_header(name, value)
                if not sent_type:
                    self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread: threading.Thread | None = None

    def _count(self) -> None:
        with self._lock:
            self._calls += 1

    @property
    def calls(self) -> int:
        with self._lock:
            return self._calls

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def _forward(
        self, path: str, headers: dict[str, str]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        connection = http.client.HTTPConnection(
            self.upstream.hostname or "127.0.0.1", self.upstream.port, timeout=5
        )
        try:
            kept = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
            connection.request("GET", path, headers=kept)
            response = connection.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            connection.close()

    def __enter__(self) -> Gateway:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        if self._thread is not None:
            self._thread.join()
        self._server.server_close()
