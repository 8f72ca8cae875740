"""Soak test: the example inference server under uvicorn, on loopback, for a fixed time.

The demo app (``hfauth_mw._demo.build_app``, what ``examples/inference_server.py``
serves) runs in a uvicorn subprocess on 127.0.0.1, checking tokens against the
hub emulator (``HubWhoamiSource``), which runs in this process so upstream
calls can be counted. Twenty concurrent workers send a mix of valid (cached),
invalid, cold (tokens created during the run) and hostile requests for
``HFAUTH_SOAK_SECONDS`` (default 30), then the test checks:

* every status is one the request's kind allows (no 5xx at all);
* the server's RSS grew by less than :data:`RSS_MARGIN` and its thread and
  asyncio-task counts are back to their post-warm-up values;
* the upstream saw exactly one call per distinct token it had to judge
  (warm, cold and invalid tokens: single flight plus cache, with TTLs longer
  than the run), and none for hostile requests, which stop at the parser;
* nothing token-shaped reached the server's logs, which log every audit event.

It prints its figures (also in CI logs). Bounded, loopback only, stops by itself.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import secrets
import select
import signal
import statistics
import string
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from hfauth_mw import LocalTokenStore, OrgGrant
from hfauth_mw.testing import HubEmulator

SOAK_SECONDS = float(os.environ.get("HFAUTH_SOAK_SECONDS", "30"))
WARMUP_SECONDS = 3.0
CONCURRENCY = 20
#: Allowed growth of the server's resident memory over the run.
RSS_MARGIN_KIB = 50 * 1024
#: Cache TTLs (the maximum allowed) far longer than the run: every distinct
#: token costs exactly one upstream call.
CACHE_TTL = 3600.0
_TOKEN_SHAPED = re.compile(rb"hf_[A-Za-z0-9]{16,}")
_ALPHANUMERIC = string.ascii_letters + string.digits

# The server, run as ``python -c SERVER <hub_url> <ttl>``. It prints one JSON
# line with its port once listening, and one JSON line with its asyncio task
# and thread counts on every SIGUSR1; it logs every record (audit events at
# INFO included, with their extra fields) to stderr.
SERVER = r"""
import asyncio, json, logging, signal, socket, sys, threading

import uvicorn

from hfauth_mw import HFAuthMiddleware, HubWhoamiSource, TokenCache
from hfauth_mw._demo import DEMO_MODELS, build_app

hub_url, ttl = sys.argv[1], float(sys.argv[2])
app = build_app(HubWhoamiSource(hub_url), repos=DEMO_MODELS)
# build_app takes no cache or limiter options, so adjust its middleware
# declaration (Starlette builds the stack on the first request):
# * TTLs longer than the run, so upstream calls can be predicted exactly;
# * limiter=None: the soak sends thousands of bad credentials from 127.0.0.1
#   on purpose, and the brute-force guard (30 failures a minute) would answer
#   429 to everything after the first half-second. It has its own tests.
# * authority="local": the soak predicts the whoami-v2 calls exactly, and the
#   demo's repositories are its own; the hub's auth-check has its own tests.
(declared,) = [m for m in app.user_middleware if m.cls is HFAuthMiddleware]
declared.kwargs.update(
    cache=TokenCache(ttl=ttl, negative_ttl=ttl), limiter=None, authority="local"
)


class Everything(logging.Formatter):
    def format(self, record):
        extra = {k: v for k, v in vars(record).items() if k.startswith("hfauth_")}
        text = f"{record.levelname} {record.name} {record.getMessage()} {extra!r}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


config = uvicorn.Config(
    app, loop="asyncio", http="h11", lifespan="off", log_level="warning", access_log=False
)
handler = logging.StreamHandler(sys.stderr)
handler.setFormatter(Everything())
logging.getLogger().addHandler(handler)
logging.getLogger().setLevel(logging.INFO)

# IPPROTO_TCP spelled out: asyncio sets TCP_NODELAY only on sockets whose proto
# says TCP, and without it every response waits ~40 ms on delayed ACKs.
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
sock.bind(("127.0.0.1", 0))
sock.listen(1024)


async def report():
    for _ in range(20):  # let finished requests' tasks be collected
        await asyncio.sleep(0)
    tasks = len(asyncio.all_tasks()) - 1  # not counting this one
    print(json.dumps({"tasks": tasks, "threads": threading.active_count()}), flush=True)


async def main():
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: loop.create_task(report()))
    print(json.dumps({"port": sock.getsockname()[1]}), flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])


asyncio.run(main())
"""


# --- the server process ------------------------------------------------------------------------


class ServerProcess:
    def __init__(self, hub_url: str, log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVER, hub_url, str(CACHE_TTL)],
            stdout=subprocess.PIPE,
            stderr=self._log,
            bufsize=0,
        )
        self.port = int(self._line()["port"])

    def _line(self, timeout: float = 20.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise AssertionError(f"the server said nothing in {timeout} s")
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the server exited: {self.log_path.read_text()[-2000:]}")
        result: dict[str, Any] = json.loads(line)
        return result

    def status(self) -> dict[str, int]:
        """CPU time, RSS (KiB) and threads from /proc; asyncio tasks and Python threads
        from inside."""
        self.proc.send_signal(signal.SIGUSR1)
        inside = self._line()
        fields = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                fields[key] = int(value.split()[0])
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        ticks = int(stat[11]) + int(stat[12])  # utime + stime (fields 14 and 15)
        return {
            "cpu_ms": ticks * 1000 // os.sysconf("SC_CLK_TCK"),
            "rss_kib": fields["VmRSS"],
            "os_threads": fields["Threads"],
            "py_threads": inside["threads"],
            "tasks": inside["tasks"],
        }

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()
        return code


# --- the load ------------------------------------------------------------------------------


def random_token() -> str:
    return "hf_" + "".join(secrets.choice(_ALPHANUMERIC) for _ in range(34))


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# Hostile requests stop at the parser (400) or carry no credentials (401): none
# reaches the upstream. Header lists allow repeated names and raw bytes.
HOSTILE: list[tuple[str, list[tuple[str, str | bytes]], frozenset[int]]] = [
    ("no-credentials", [], frozenset({401})),
    ("empty-bearer", [("Authorization", "Bearer")], frozenset({400})),
    ("bearer-with-space", [("Authorization", "Bearer hf_abc def")], frozenset({400})),
    ("bearer-bad-chars", [("Authorization", 'Bearer hf_"<script>"')], frozenset({400})),
    ("unknown-scheme", [("Authorization", "Token hf_abcdefghij")], frozenset({400})),
    ("scheme-only-garbage", [("Authorization", "!!! ???")], frozenset({400})),
    ("not-ascii", [("Authorization", b"Bearer hf_\xff\xfe\xfd")], frozenset({400})),
    ("basic-not-base64", [("Authorization", "Basic !!!notbase64!!!")], frozenset({400})),
    (
        "basic-no-colon",
        [("Authorization", "Basic " + base64.b64encode(b"garbage").decode())],
        frozenset({400}),
    ),
    ("basic-empty-password", [("Authorization", basic("user", ""))], frozenset({400})),
    ("basic-bad-password", [("Authorization", basic("user", "a b c"))], frozenset({400})),
    (
        "two-authorization-headers",
        [("Authorization", "Bearer hf_aaaaaaaaaaaaaaaaaaaa"), ("Authorization", "Bearer x")],
        frozenset({400}),
    ),
    ("oversized-header", [("Authorization", "Bearer " + "A" * 9000)], frozenset({400})),
    ("oversized-header-20k", [("Authorization", "Bearer " + "A" * 20000)], frozenset({400})),
]

VALID_CALLS: list[tuple[str, str, str, Any, int]] = [
    # (user, method, path, json body, status)
    ("alice", "GET", "/v1/whoami", None, 200),
    ("bob", "GET", "/v1/models", None, 200),
    ("bob", "POST", "/v1/models/acme/public-demo/infer", {"inputs": "great fun"}, 200),
    ("alice", "POST", "/v1/models/alice/tiny-lm/infer", {"inputs": "a b c"}, 200),
    ("bob", "PUT", "/v1/models/acme/sentiment", {"positive": ["soak"]}, 403),
    ("bob", "GET", "/v1/models/alice/tiny-lm", None, 403),
]


@dataclass
class Load:
    store: LocalTokenStore
    warm: dict[str, str]
    base_url: str
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: list[str] = field(default_factory=list)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    cold_tokens: set[str] = field(default_factory=set)
    invalid_tokens: set[str] = field(default_factory=set)
    invalid_pool: list[str] = field(default_factory=lambda: [random_token() for _ in range(25)])
    requests: int = 0

    async def run(self, seconds: float) -> float:
        limits = httpx.Limits(
            max_connections=CONCURRENCY * 4, max_keepalive_connections=CONCURRENCY
        )
        timeout = httpx.Timeout(10.0)
        started = time.perf_counter()
        deadline = started + seconds
        async with httpx.AsyncClient(
            base_url=self.base_url, limits=limits, timeout=timeout
        ) as client:
            await asyncio.gather(*(self._worker(client, deadline, n) for n in range(CONCURRENCY)))
        return time.perf_counter() - started

    async def _worker(self, client: httpx.AsyncClient, deadline: float, n: int) -> None:
        rng = secrets.SystemRandom()
        kinds = ["valid"] * 60 + ["invalid"] * 15 + ["hostile"] * 15 + ["cold"] * 5 + ["health"] * 5
        i = 0
        while time.perf_counter() < deadline:
            # Every worker starts with a different kind, so each warm-up covers them all.
            kind = kinds[(n * 7) % len(kinds)] if i == 0 else rng.choice(kinds)
            i += 1
            if kind == "valid":
                user, method, path, body, status = rng.choice(VALID_CALLS)
                headers = [("Authorization", f"Bearer {self.warm[user]}")]
                await self._send(client, "valid", method, path, headers, body, {status})
            elif kind == "invalid":
                token = rng.choice(self.invalid_pool) if rng.random() < 0.5 else random_token()
                self.invalid_tokens.add(token)
                value = basic("x", token) if rng.random() < 0.2 else f"Bearer {token}"
                headers = [("Authorization", value)]
                await self._send(client, "invalid", "GET", "/v1/whoami", headers, None, {401})
            elif kind == "cold":
                issued = await asyncio.to_thread(
                    self.store.create_token, user=f"cold{rng.randrange(10**9)}", role="read"
                )
                self.cold_tokens.add(issued.token)
                headers = [("Authorization", f"Bearer {issued.token}")]
                # Three at once: one upstream call (single flight), three 200s.
                await asyncio.gather(
                    *(
                        self._send(client, "cold", "GET", "/v1/whoami", headers, None, {200})
                        for _ in range(3)
                    )
                )
            elif kind == "hostile":
                name, headers, allowed = rng.choice(HOSTILE)
                await self._send(
                    client, f"hostile:{name}", "GET", "/v1/models", headers, None, allowed
                )
            else:
                await self._send(client, "health", "GET", "/health", [], None, {200})

    async def _send(
        self,
        client: httpx.AsyncClient,
        kind: str,
        method: str,
        path: str,
        headers: list[tuple[str, str | bytes]],
        body: Any,
        allowed: set[int] | frozenset[int],
    ) -> None:
        started = time.perf_counter()
        try:
            response = await client.request(method, path, headers=headers, json=body)
            status = response.status_code
        except httpx.HTTPError as exc:
            self.unexpected.append(f"{kind}: {type(exc).__name__}")
            return
        self.latencies.setdefault(kind.split(":")[0], []).append(time.perf_counter() - started)
        self.requests += 1
        self.statuses[(kind, status)] += 1
        if status not in allowed:
            self.unexpected.append(f"{kind} {method} {path}: {status} {response.text[:200]}")


@contextlib.contextmanager
def quiet_client_logs() -> Iterator[None]:
    """httpx/httpcore log every request at INFO/DEBUG: hundreds of thousands of
    records for conftest's capture handler to hold. Our own client's chatter is
    not what this test is about (the server's logs are scanned instead)."""
    loggers = [logging.getLogger(name) for name in ("httpx", "httpcore", "asyncio")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def percentile(values: list[float], q: int) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else 0.0
    )


def test_soak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = LocalTokenStore(tmp_path / "hub.sqlite3")
    alice = store.create_token(user="alice", role="write", orgs=[OrgGrant("acme", "write")])
    bob = store.create_token(user="bob", role="read")
    warm = {"alice": alice.token, "bob": bob.token}
    with HubEmulator(store) as hub, quiet_client_logs():
        server = ServerProcess(hub.url, tmp_path / "server.log")
        try:
            load = Load(store, warm, f"http://127.0.0.1:{server.port}")
            warmup = asyncio.run(load.run(WARMUP_SECONDS))
            warm_requests = load.requests
            before = server.status()
            own_cpu = time.process_time()
            elapsed = asyncio.run(load.run(SOAK_SECONDS))
            own_cpu = time.process_time() - own_cpu
            after = server.status()
            upstream_calls = hub.whoami_calls
        finally:
            exit_code = server.stop()
    store.close()
    log = server.log_path.read_bytes()

    requests = load.requests - warm_requests
    expected_calls = len(warm) + len(load.cold_tokens) + len(load.invalid_tokens)
    by_kind = Counter[str]()
    for (kind, _), count in load.statuses.items():
        by_kind[kind.split(":")[0]] += count
    statuses = Counter[int]()
    for (_, status), count in load.statuses.items():
        statuses[status] += count
    rss_before, rss_after = before["rss_kib"] / 1024, after["rss_kib"] / 1024
    with capsys.disabled():
        print(
            f"\nsoak: {requests} requests in {elapsed:.1f} s ({requests / elapsed:.0f} rps), "
            f"plus {warm_requests} in a {warmup:.1f} s warm-up; concurrency {CONCURRENCY}; "
            f"CPU: server {(after['cpu_ms'] - before['cpu_ms']) / 1000 / elapsed:.0%}, "
            f"this process (client and hub emulator) {own_cpu / elapsed:.0%}"
        )
        print(f"soak: requests by kind {dict(sorted(by_kind.items()))}")
        print(f"soak: statuses {dict(sorted(statuses.items()))}")
        every = [latency for values in load.latencies.values() for latency in values]
        print(
            f"soak: latency p50 {percentile(every, 50) * 1000:.1f} ms, "
            f"p99 {percentile(every, 99) * 1000:.1f} ms, max {max(every) * 1000:.1f} ms; p50 "
            + ", ".join(
                f"{kind} {percentile(values, 50) * 1000:.1f}"
                for kind, values in sorted(load.latencies.items())
            )
        )
        print(
            f"soak: server RSS {rss_before:.1f} -> {rss_after:.1f} MiB, "
            f"threads {before['os_threads']} -> {after['os_threads']}, "
            f"asyncio tasks {before['tasks']} -> {after['tasks']}"
        )
        print(
            f"soak: upstream calls {upstream_calls} (expected {expected_calls}: {len(warm)} warm, "
            f"{len(load.cold_tokens)} cold, {len(load.invalid_tokens)} distinct invalid); "
            f"server log {len(log) / 1024:.0f} KiB, exit code {exit_code}"
        )

    assert not load.unexpected, f"{len(load.unexpected)} unexpected: {load.unexpected[:10]}"
    assert requests > 0
    assert after["rss_kib"] - before["rss_kib"] < RSS_MARGIN_KIB
    assert after["os_threads"] <= before["os_threads"], "the server has more threads"
    assert after["py_threads"] <= before["py_threads"]
    assert after["tasks"] <= before["tasks"], "asyncio tasks left behind"
    assert upstream_calls == expected_calls
    # uvicorn re-raises the SIGTERM it handled once it has shut down gracefully.
    assert exit_code in (0, -signal.SIGTERM)
    assert not _TOKEN_SHAPED.search(log), "a token reached the server's logs"
    for bad in (b"Traceback", b"ERROR", b"CRITICAL"):
        assert bad not in log, f"{bad.decode()} in the server log: {log[-2000:]!r}"
    # One structured audit event per decision, /health (public) aside: this is
    # what the token scan above read.
    public = sum(count for (kind, _), count in load.statuses.items() if kind == "health")
    assert log.count(b"'hfauth_event': ") == load.requests - public
