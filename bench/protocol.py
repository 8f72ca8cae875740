"""Server CPU per request without sockets: uvicorn's own HTTP/1.1 protocol in process.

The end-to-end run measures what a client sees, but on a shared 2-CPU machine
its rounds move by several percent. Here uvicorn's protocol is fed raw
request bytes on a fake transport, one keep-alive connection, one request at
a time: the same Python work as in the server, minus the kernel. Two stacks:
``H11Protocol`` on asyncio (what plain ``pip install uvicorn`` serves with,
and the end-to-end run) and ``HttpToolsProtocol`` on uvloop (what
``pip install 'uvicorn[standard]'`` serves with, as FastAPI's and vLLM's
installs do): there the bare server does far less per request, so the same
layer is a larger share of it. The garbage collector stays on, as in a
server. Every response's status is checked: a layer that answered 401 would
otherwise look fast.

It uses uvicorn internals (the protocol classes, ``ServerState``); if a
uvicorn release changes them, the section says so and is skipped.
"""

from __future__ import annotations

import asyncio
import importlib.util
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.utils import formatdate
from typing import Any

from .apps import ASGI_APPS, HOST, PATH, Fixture
from .harness import interleaved_rounds
from .report import Section, fmt, ratio

#: (key in bench.apps.ASGI_APPS, label)
PROTOCOL_APPS = [
    ("bare", "bare Starlette"),
    ("hfauth", "hfauth-mw, cached token"),
    ("hfauth-no-private", "  the same, private_responses=False"),
    ("headers-only", "  no authentication, only those two response headers"),
    ("starlette-auth", "Starlette AuthenticationMiddleware"),
    ("starlette-auth-private", "  the same, plus those two response headers"),
    ("static-key", "static key, vLLM-style"),
]


class ProtocolChanged(Exception):
    """uvicorn's protocol internals are not what this section drives."""


class _Transport(asyncio.Transport):
    """Keeps only the status codes of what the server writes; says where the client is."""

    def __init__(self) -> None:
        # BaseTransport keeps ``extra`` for get_extra_info: uvicorn reads the
        # client's address from it, as from a socket's peer name.
        super().__init__(extra={"peername": (HOST, 50000), "sockname": (HOST, 8000)})
        self.statuses: set[bytes] = set()

    def write(self, data: Any) -> None:
        if data[:9] == b"HTTP/1.1 ":
            self.statuses.add(bytes(data[9:12]))

    def is_closing(self) -> bool:
        return False

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def close(self) -> None:
        return None


@dataclass(frozen=True)
class Stack:
    """One uvicorn HTTP stack the section can drive."""

    http: str  # uvicorn's --http
    title: str
    label: str  # for the intro and the targets
    note: str  # what the headers-only row shows on this stack

    def protocol_class(self) -> Any:
        if self.http == "h11":
            from uvicorn.protocols.http.h11_impl import H11Protocol

            return H11Protocol
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

        return HttpToolsProtocol

    def missing(self) -> str | None:
        """Why this stack cannot run here, or None."""
        needed = ["uvicorn"] if self.http == "h11" else ["uvicorn", "httptools"]
        for module in needed:
            if importlib.util.find_spec(module) is None:
                return f"{module} is not installed (pip install '.[bench]')"
        return None

    def loop_factory(self) -> Callable[[], asyncio.AbstractEventLoop] | None:
        """uvloop for uvicorn[standard] when it is installed, else asyncio's own."""
        if self.http == "httptools" and importlib.util.find_spec("uvloop") is not None:
            import uvloop

            factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
            return factory
        return None

    def loop_name(self) -> str:
        return "asyncio" if self.loop_factory() is None else "uvloop"


H11 = Stack(
    "h11",
    "Server CPU per request: uvicorn's HTTP/1.1 protocol in process",
    "uvicorn's own `H11Protocol` (uvicorn's h11 server, what plain `pip install uvicorn` runs)",
    "most of it is h11 validating and writing two more header lines, a price any layer "
    "adding them pays",
)
HTTPTOOLS = Stack(
    "httptools",
    "Server CPU per request: uvicorn[standard]'s httptools protocol in process",
    "uvicorn's `HttpToolsProtocol` (what `pip install 'uvicorn[standard]'` runs, as "
    "FastAPI's and vLLM's installs do)",
    "httptools writes header lines with less checking than h11, so they cost less here",
)


def _connection(app: Any, loop: asyncio.AbstractEventLoop, stack: Stack) -> tuple[Any, _Transport]:
    """One open keep-alive connection of uvicorn's protocol, serving ``app``."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    config = Config(app, http=stack.http, lifespan="off", access_log=False, log_level="warning")
    config.load()
    state = ServerState()
    # What uvicorn's main loop puts on every response (Server.on_tick).
    state.default_headers = [
        (b"date", formatdate(usegmt=True).encode()),
        *config.encoded_headers,
    ]
    protocol = stack.protocol_class()(config, state, {}, _loop=loop)
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


def run_protocol(
    fixture: Fixture, *, rounds: int, batch: int, warmup: int, stack: Stack = H11
) -> Section:
    section = Section(
        "protocol" if stack is H11 else f"protocol-{stack.http}",
        stack.title,
        intro=(
            f"{stack.label}, on {stack.loop_name()}, fed `GET` "
            "requests with the Bearer token over one keep-alive connection on a fake "
            "transport (no sockets, no wrk): the Python work the server does per request, "
            "from the request bytes to the response bytes, with the garbage collector on; "
            f"every response checked to be a 200. Best of {rounds} interleaved rounds of "
            f"{batch:,} requests per app. Without the kernel and the load generator it "
            "moves less between runs than the wrk rounds, and its rows separate what the "
            "response headers cost from what the layer costs."
        ),
    )
    missing = stack.missing()
    if missing is not None:
        section.skipped = missing
        return section
    request = (
        f"GET {PATH} HTTP/1.1\r\nHost: {HOST}:8000\r\nUser-Agent: bench/1.0\r\n".encode()
        + b"Authorization: "
        + fixture.authorization
        + b"\r\n\r\n"
    )

    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        connections = {
            key: _connection(ASGI_APPS[key](fixture), loop, stack) for key, _ in PROTOCOL_APPS
        }

        def runner(protocol: Any) -> Any:
            async def run(n: int) -> float:
                tasks = protocol.tasks
                start = time.perf_counter_ns()
                for _ in range(n):
                    protocol.data_received(request)
                    # The request's cycle is the one task the protocol started
                    # (the finished one's set.discard ran before this wake-up).
                    if len(tasks) != 1:
                        raise ProtocolChanged(f"{len(tasks)} request tasks, not 1")
                    (cycle,) = tasks
                    await cycle
                return (time.perf_counter_ns() - start) / n / 1000

            return run

        timings = await interleaved_rounds(
            {key: runner(protocol) for key, (protocol, _) in connections.items()},
            rounds=rounds,
            batch=batch,
            warmup=warmup,
        )
        for key, (_, transport) in connections.items():
            if transport.statuses != {b"200"}:
                raise RuntimeError(f"{key} answered {sorted(transport.statuses)}, not 200")
        return timings

    try:
        with asyncio.Runner(loop_factory=stack.loop_factory()) as loop_runner:
            timings = loop_runner.run(main())
    except (AttributeError, TypeError, ProtocolChanged) as exc:
        section.skipped = f"this uvicorn's protocol internals differ ({exc})"
        return section
    bare = timings["bare"].best
    section.headers = ["App", "µs/request", "+-", "overhead µs", "share of bare"]
    shares: dict[str, float] = {}
    for key, label in PROTOCOL_APPS:
        best = timings[key].best
        shares[key] = ratio(bare, best) or 0.0
        section.rows.append(
            [
                label,
                fmt(best, 2),
                fmt(timings[key].spread, 2),
                "(baseline)" if key == "bare" else fmt(best - bare, 2),
                "" if key == "bare" else f"{fmt(shares[key] * 100, 1)}%",
            ]
        )
    headers = timings["hfauth"].best - timings["hfauth-no-private"].best
    alone = timings["headers-only"].best - bare
    section.notes.append(
        f"the `Cache-Control: private` and `Vary: Authorization` headers cost "
        f"{fmt(headers, 2)} µs per request here; added by the same send wrapper to the bare "
        f"app, with no authentication, they cost {fmt(alone, 2)} µs "
        f"({fmt(shares['headers-only'] * 100, 1)}% of bare): {stack.note}"
    )
    section.data["shares"] = shares
    return section
