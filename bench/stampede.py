"""Cold stampede: many concurrent requests with one cold token, a slow hub, one upstream call."""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .apps import PATH
from .harness import asgi_call, asgi_scope, percentile
from .hub_process import hub_in_process
from .report import Section, fmt, ratio


@contextmanager
def collector_pauses() -> Iterator[list[tuple[int, float]]]:
    """(generation, ms) of every cyclic garbage collection inside the block."""
    pauses: list[tuple[int, float]] = []
    started = [0.0]

    def observe(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append((info["generation"], (time.perf_counter() - started[0]) * 1000))

    gc.callbacks.append(observe)
    try:
        yield pauses
    finally:
        gc.callbacks.remove(observe)


@dataclass
class Burst:
    """One cold stampede: each request's latency (ms) and status, and what it cost."""

    latencies: list[float]
    statuses: list[int]
    upstream: int
    wall_ms: float
    pauses: list[tuple[int, float]]

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 99)

    @property
    def gc_ms(self) -> float:
        return sum(ms for _, ms in self.pauses)

    @property
    def full_gc_ms(self) -> float:
        return sum(ms for generation, ms in self.pauses if generation == 2)


#: Cold tokens sent one at a time on a rule-guarded route (the hub decides).
COLD_RULE_REQUESTS = 30
RULE_PATH = "/v1/models/{owner}/{name}"


def run_stampede(directory: Path, *, requests: int, delay: float, bursts: int = 5) -> Section:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from hfauth_mw import HFAuthMiddleware, LocalTokenStore, OrgGrant, require_read

    section = Section(
        "stampede",
        "Cold stampede",
        intro=(
            f"{requests:,} concurrent in-process ASGI requests (`asyncio.gather`) carrying one "
            "token the cache has never seen, through `HFAuthMiddleware(hub_url=...)` on a "
            "Starlette app, against the hub emulator (in its own process, on 127.0.0.1) "
            f"answering whoami-v2 after {delay * 1000:g} ms (`emulator.delay`). Latency is per "
            "request, from its first step to its last response byte. The pooled httpx "
            f"client and its connection are warmed first with another token. {bursts} "
            "bursts, each with a token of its own; the figures are the median burst's (by "
            "p99). Whether the cyclic garbage collector makes a full pass inside a burst "
            "depends on where its counters stand when the burst starts, so single bursts "
            "differ by 10-20 ms; the per-burst rows show it. The section runs in a fresh "
            "interpreter, as a newly started server would, so that the objects the other "
            "sections leave behind do not lengthen its collections."
        ),
    )

    async def ping(request: Request) -> PlainTextResponse:
        return PlainTextResponse("pong")

    store_path = directory / "stampede-hub.sqlite3"
    with LocalTokenStore(store_path) as store:
        colds = [store.create_token(user=f"bob{index}", role="read") for index in range(bursts)]
        alone = store.create_token(user="dave", role="read")
        warm = store.create_token(user="carol", role="read")
        # Cold tokens on a rule-guarded route: the hub decides (auth-check).
        members = [
            store.create_token(user=f"m{index}", role="read", orgs=[OrgGrant("acme", "read")])
            for index in range(COLD_RULE_REQUESTS + 1)
        ]
    with hub_in_process(str(store_path), delay=delay) as hub:
        app = Starlette(
            routes=[Route(PATH, ping), Route(RULE_PATH, ping)],
            middleware=[
                Middleware(
                    HFAuthMiddleware,
                    hub_url=hub.url,
                    rules=[require_read("GET /v1/models/{owner}/{name}")],
                )
            ],
        )
        bare = Starlette(routes=[Route(PATH, ping)])

        async def floor() -> float:
            """Wall time of the same burst on the bare app: the loop's own cost of
            running 1,000 requests, which every stampede pays on top of the wait."""
            scope = asgi_scope(f"Bearer {warm.token}".encode())
            start = time.perf_counter()
            await asyncio.gather(*(asgi_call(bare, scope) for _ in range(requests)))
            return time.perf_counter() - start

        async def one(scope: dict[str, object]) -> tuple[float, int]:
            start = time.perf_counter()
            status, _ = await asgi_call(app, scope)
            return (time.perf_counter() - start) * 1000, status

        async def burst(token: str) -> Burst:
            scope = asgi_scope(f"Bearer {token}".encode())
            hub.reset_counters()
            with collector_pauses() as pauses:
                start = time.perf_counter()
                results = await asyncio.gather(*(one(scope) for _ in range(requests)))
                wall = time.perf_counter() - start
            return Burst(
                [ms for ms, _ in results],
                [status for _, status in results],
                hub.whoami_calls(),
                wall * 1000,
                pauses,
            )

        async def main() -> tuple[float, list[Burst], float]:
            bare_wall = await floor()
            single = 0.0
            for token in (warm.token, alone.token):
                start = time.perf_counter()
                status, _ = await asgi_call(app, asgi_scope(f"Bearer {token}".encode()))
                single = time.perf_counter() - start
                if status != 200:
                    raise RuntimeError(f"stampede warm-up answered {status}")
            return single, [await burst(cold.token) for cold in colds], bare_wall

        async def cold_rule() -> tuple[list[float], list[int], int, int]:
            """One cold token at a time on a rule-guarded route: whoami-v2 and the
            hub's auth-check both needed; one round trip when they go together."""
            latencies, statuses = [], []
            for index, member in enumerate(members):
                if index == 1:
                    # The first opened the pool's second connection (two calls at
                    # once): warm-up, as the stampede warms the first.
                    hub.reset_counters()
                    latencies.clear()
                    statuses.clear()
                scope = asgi_scope(f"Bearer {member.token}".encode())
                scope["path"] = scope["raw_path"] = RULE_PATH.replace("{owner}/{name}", "acme/m")
                ms, status = await one(scope)
                latencies.append(ms)
                statuses.append(status)
            return latencies, statuses, hub.whoami_calls(), hub.auth_check_calls()

        single, runs, bare_wall = asyncio.run(main())
        rule_latencies, rule_statuses, rule_whoami, rule_checks = asyncio.run(cold_rule())
        patched = hub.nagle_patched
    median = sorted(runs, key=lambda run: run.p99)[len(runs) // 2]
    latencies = median.latencies
    statuses = sorted({status for run in runs for status in run.statuses})
    upstream = [run.upstream for run in runs]
    p50, p99 = percentile(latencies, 50), median.p99

    def each(values: list[float]) -> str:
        return " / ".join(fmt(value, 1) for value in values)

    section.headers = ["Figure", "value"]
    section.rows = [
        ["concurrent requests per burst", f"{requests:,}"],
        ["upstream whoami-v2 calls, each burst", " / ".join(map(str, upstream))],
        ["HTTP statuses", ", ".join(map(str, statuses))],
        ["upstream delay (ms)", fmt(delay * 1000, 0)],
        ["one cold request alone (ms)", fmt(single * 1000, 1)],
        ["p50 latency, median burst (ms)", fmt(p50, 1)],
        ["p99 latency, median burst (ms)", fmt(p99, 1)],
        ["max latency, median burst (ms)", fmt(max(latencies), 1)],
        ["p99 / upstream delay", fmt(ratio(p99, delay * 1000), 2)],
        ["p99 latency, each burst (ms)", each([run.p99 for run in runs])],
        ["wall time, each burst (ms)", each([run.wall_ms for run in runs])],
        ["same burst on the bare app, no auth, wall (ms)", fmt(bare_wall * 1000, 1)],
        ["garbage collection, each burst (ms)", each([run.gc_ms for run in runs])],
        ["  of it in full collections (ms)", each([run.full_gc_ms for run in runs])],
        [
            f"cold rule-guarded request, one at a time ({len(rule_latencies)} tokens): "
            "p50 / p99 (ms)",
            f"{fmt(percentile(rule_latencies, 50), 1)} / {fmt(percentile(rule_latencies, 99), 1)}",
        ],
        [
            "  upstream calls for them: whoami-v2 / auth-check",
            f"{rule_whoami} / {rule_checks}",
        ],
    ]
    section.notes.append(
        "one event loop runs every request, so no request can finish sooner than the "
        "upstream wait plus the loop's time for the others: the bare-app row is that time"
    )
    if patched:
        section.notes.append(
            "the hub emulator as shipped answers ~40 ms late on kept-alive connections "
            "(status+headers and body in two writes on a Nagle socket, then the client's "
            "delayed ACK); the bench sets TCP_NODELAY on its handler so the figures measure "
            "the middleware, not the emulator"
        )
    section.data.update(
        rule_p99=percentile(rule_latencies, 99),
        rule_statuses=sorted(set(rule_statuses)),
        upstream_each=upstream,
        p50=p50,
        p99=p99,
        delay_ms=delay * 1000,
        bare_wall_ms=bare_wall * 1000,
        statuses=statuses,
        plot={
            "kind": "hist",
            "title": f"Cold stampede: {requests:,} requests, {median.upstream} upstream call(s)",
            "xlabel": "latency (ms), median burst",
            "ylabel": "requests",
            "values": latencies,
            "lines": [("p99", p99), ("2x upstream", 2 * delay * 1000)],
        },
    )
    return section
