"""Timing helpers: interleaved rounds of raw ASGI and WSGI calls, and statistics.

Each round times one batch of every variant, in an order shuffled per round
(seeded), so drift (CPU frequency, other processes) spreads over all rows
instead of biasing the ones that run last. The cyclic garbage collector is
off while a batch runs, as in ``timeit``. Figures are the best (lowest)
per-round mean, in microseconds per request: on a shared machine noise only
ever adds time, so the minimum is the steadiest estimate of what the code
costs (``timeit``'s advice); the spread column shows how noisy the rounds were.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import random
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .apps import HOST, PATH

Receive = Callable[[], Awaitable[dict[str, Any]]]

_RECEIVE_MESSAGE = {"type": "http.request", "body": b"", "more_body": False}


@dataclass
class Timing:
    """Per-request times of one variant, one sample per round (µs)."""

    samples: list[float] = field(default_factory=list)

    @property
    def best(self) -> float:
        return min(self.samples)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def spread(self) -> float:
        """Half the interquartile range: a noise indicator for the median."""
        if len(self.samples) < 4:
            return (max(self.samples) - min(self.samples)) / 2
        q1, _, q3 = statistics.quantiles(self.samples, n=4)
        return (q3 - q1) / 2


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` in 0..100."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --- ASGI -----------------------------------------------------------------------------


def asgi_scope(
    authorization: bytes | None, path: str = PATH, body: bytes | None = None
) -> dict[str, Any]:
    """A ``GET path`` scope; with ``body``, a ``POST`` of that JSON (see :func:`body_receive`)."""
    headers = [
        (b"host", f"{HOST}:8000".encode()),
        (b"user-agent", b"bench/1.0"),
        (b"accept", b"*/*"),
    ]
    if body is not None:
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    if authorization is not None:
        headers.append((b"authorization", authorization))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET" if body is None else "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": (HOST, 50000),
        "server": (HOST, 8000),
        "state": {},
    }


async def _receive() -> dict[str, Any]:
    return _RECEIVE_MESSAGE


def body_receive(body: bytes) -> Receive:
    """A ``receive`` that hands over ``body`` in one message, as servers do for a
    small request (every call: each request of a batch gets the whole body)."""
    message = {"type": "http.request", "body": body, "more_body": False}

    async def receive() -> dict[str, Any]:
        return message

    return receive


async def _discard(message: Any) -> None:
    return None


async def asgi_call(
    app: Any, scope: Mapping[str, Any], receive: Receive = _receive
) -> tuple[int, bytes]:
    """One request: (status, body)."""
    status, body = 0, bytearray()

    async def send(message: Any) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body":
            body.extend(message.get("body", b""))

    await app(dict(scope), receive, send)
    return status, bytes(body)


async def asgi_batch(
    app: Any, scope: Mapping[str, Any], n: int, receive: Receive = _receive
) -> float:
    """Mean µs per request over ``n`` sequential requests, garbage collector off."""
    send, copy = _discard, dict
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(n):
            await app(copy(scope), receive, send)
        return (time.perf_counter_ns() - start) / n / 1000
    finally:
        gc.enable()


def run_asgi_rounds(
    apps: Mapping[str, Any],
    scope: Mapping[str, Any],
    *,
    rounds: int,
    batch: int,
    warmup: int,
    seed: int = 5,
    requests: Mapping[str, tuple[Mapping[str, Any], Receive]] | None = None,
) -> dict[str, Timing]:
    """Interleaved rounds of every app on ``scope`` (an empty body), or on its own
    ``(scope, receive)`` in ``requests``."""
    own = requests or {}
    runners = {}
    for name, app in apps.items():
        app_scope, receive = own.get(name, (scope, _receive))
        runners[name] = functools.partial(asgi_batch, app, app_scope, receive=receive)
    return asyncio.run(
        interleaved_rounds(runners, rounds=rounds, batch=batch, warmup=warmup, seed=seed)
    )


async def interleaved_rounds(
    runners: Mapping[str, Callable[[int], Awaitable[float]]],
    *,
    rounds: int,
    batch: int,
    warmup: int,
    seed: int = 5,
) -> dict[str, Timing]:
    """``rounds`` rounds of one ``batch`` per runner, in a shuffled order each round.
    A runner times ``n`` requests and returns µs per request."""
    for run in runners.values():
        await run(warmup)
    timings = {name: Timing() for name in runners}
    for name in shuffled_rounds(runners, rounds, seed):
        timings[name].samples.append(await runners[name](batch))
    return timings


def shuffled_rounds(names: Iterable[str], rounds: int, seed: int) -> Iterator[str]:
    """Every name once per round, in an order shuffled each round (seeded)."""
    order = list(names)
    shuffle = random.Random(seed).shuffle
    for _ in range(rounds):
        shuffle(order)
        yield from order


# --- WSGI -----------------------------------------------------------------------------


def wsgi_environ(authorization: str | None, path: str = PATH) -> dict[str, Any]:
    from werkzeug.test import EnvironBuilder

    headers = {"User-Agent": "bench/1.0", "Accept": "*/*"}
    if authorization is not None:
        headers["Authorization"] = authorization
    builder = EnvironBuilder(path=path, method="GET", headers=headers, base_url=f"http://{HOST}")
    try:
        return builder.get_environ()
    finally:
        builder.close()


def _start_response(status: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
    return _write


def _write(data: bytes) -> None:
    return None


def wsgi_call(app: Any, environ: Mapping[str, Any]) -> tuple[int, bytes]:
    status = [""]

    def start_response(line: str, headers: Any, exc_info: Any = None) -> Callable[[bytes], None]:
        status[0] = line
        return _write

    result = app(dict(environ), start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return int(status[0].split(" ", 1)[0]), body


def wsgi_batch(app: Any, environ: Mapping[str, Any], n: int) -> float:
    """Mean µs per request over ``n`` sequential requests, garbage collector off."""
    start_response, copy = _start_response, dict
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(n):
            result = app(copy(environ), start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()
        return (time.perf_counter_ns() - start) / n / 1000
    finally:
        gc.enable()


def run_wsgi_rounds(
    apps: Mapping[str, Any],
    environ: Mapping[str, Any],
    *,
    rounds: int,
    batch: int,
    warmup: int,
    seed: int = 5,
) -> dict[str, Timing]:
    for app in apps.values():
        wsgi_batch(app, environ, warmup)
    timings = {name: Timing() for name in apps}
    for name in shuffled_rounds(apps, rounds, seed):
        timings[name].samples.append(wsgi_batch(apps[name], environ, batch))
    return timings


# --- micro timings --------------------------------------------------------------------


def micro(fn: Callable[[], object], *, n: int, repeat: int) -> float:
    """Best of ``repeat`` runs of the mean ns per call of ``fn`` (loop overhead included)."""
    results = []
    for _ in range(repeat):
        gc.disable()
        try:
            start = time.perf_counter_ns()
            for _ in range(n):
                fn()
            results.append((time.perf_counter_ns() - start) / n)
        finally:
            gc.enable()
    return min(results)
