"""End to end: uvicorn (1 worker, loopback) serving each app in turn, loaded by wrk."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .apps import HOST, PATH, Fixture
from .harness import shuffled_rounds
from .report import Section, fmt

ROOT = Path(__file__).resolve().parent.parent

#: (key in bench.apps.ASGI_APPS, label)
E2E_APPS = [
    ("bare", "bare Starlette"),
    ("hfauth", "hfauth-mw, cached token"),
    ("hfauth-no-private", "  the same, private_responses=False"),
    ("static-key", "static key, vLLM-style"),
    ("starlette-auth", "Starlette AuthenticationMiddleware"),
    ("starlette-auth-private", "  the same, plus Vary/Cache-Control: private"),
]

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}
_LATENCY = re.compile(r"^\s*(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_RPS = re.compile(r"^Requests/sec:\s+([\d.]+)", re.MULTILINE)
_REQUESTS = re.compile(r"^\s*(\d+) requests in ", re.MULTILINE)
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_ERRORS = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)|Socket errors:.*", re.MULTILINE)


@dataclass
class Load:
    rps: float
    p50_ms: float
    p99_ms: float
    #: The server process's CPU time (user + system) per request, when /proc tells.
    cpu_us: float | None = None


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process (Linux), else None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass(frozen=True)
class E2EResult:
    """Medians over the rounds; ``share`` and ``p99_ratio`` are medians of
    per-round ratios to the bare app; ``cpu_us`` is the server's CPU time per
    request (None where /proc is missing)."""

    rps: float
    share: float
    p50_ms: float
    p99_ms: float
    p99_ratio: float
    cpu_us: float | None


@dataclass
class Server:
    key: str
    port: int
    process: subprocess.Popen[bytes]
    log: Path
    loads: list[Load] = field(default_factory=list)


def _median_or_none(values: list[float | None]) -> float | None:
    known = [value for value in values if value is not None]
    return statistics.median(known) if known else None


def cpu_split() -> tuple[set[int], set[int]] | None:
    """(CPUs for the server, CPUs for wrk), so the two never take turns on one
    core: one CPU serves, the others load. ``None`` with fewer than 2 CPUs."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    if len(cpus) < 2:
        return None
    return {cpus[0]}, set(cpus[1:])


def _pinned(cpus: set[int] | None) -> Callable[[], None] | None:
    return None if cpus is None else functools.partial(os.sched_setaffinity, 0, cpus)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _start(key: str, fixture: Fixture, logdir: Path, cpus: set[int] | None) -> Server:
    port = free_port()
    env = dict(
        os.environ,
        HFAUTH_BENCH_APP=key,
        HFAUTH_BENCH_STORE=str(fixture.store_path),
        HFAUTH_BENCH_TOKEN=fixture.token,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    log = logdir / f"uvicorn-{key}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "bench.server:create",
                "--host",
                HOST,
                "--port",
                str(port),
                "--workers",
                "1",
                "--log-level",
                "warning",
                "--no-access-log",
                "--lifespan",
                "off",
                # Plain uvicorn's stack, whatever else is installed: the target's
                # reading must not change with the environment. The protocol
                # sections give the httptools reading.
                "--http",
                "h11",
                "--loop",
                "asyncio",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_pinned(cpus),
        )
    return Server(key, port, process, log)


def _wait_ready(server: Server, fixture: Fixture, timeout: float = 15.0) -> None:
    url = f"http://{HOST}:{server.port}{PATH}"
    deadline = time.monotonic() + timeout
    with httpx.Client(trust_env=False, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                break
            try:
                good = client.get(url, headers={"Authorization": f"Bearer {fixture.token}"})
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            bad = client.get(url)
            refused = bad.status_code in (401, 403) or server.key.startswith("bare")
            if good.status_code != 200 or not refused:
                raise RuntimeError(
                    f"uvicorn {server.key}: {good.status_code} with the token and "
                    f"{bad.status_code} without: the app is not what the benchmark expects"
                )
            return
    tail = server.log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"uvicorn {server.key} did not come up on port {server.port}:\n{tail}")


def _stop(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait(timeout=5)


@contextlib.contextmanager
def _servers(
    keys: list[str], fixture: Fixture, logdir: Path, cpus: set[int] | None
) -> Iterator[dict[str, Server]]:
    servers: dict[str, Server] = {}
    try:
        for key in keys:
            servers[key] = _start(key, fixture, logdir, cpus)
        for server in servers.values():
            _wait_ready(server, fixture)
        yield servers
    finally:
        for server in servers.values():
            _stop(server)


def _wrk(
    wrk: str,
    server: Server,
    fixture: Fixture,
    *,
    seconds: float,
    threads: int,
    connections: int,
    cpus: set[int] | None,
) -> Load:
    command = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--latency",
        "-H",
        f"Authorization: Bearer {fixture.token}",
        f"http://{HOST}:{server.port}{PATH}",
    ]
    cpu_before = _cpu_seconds(server.process.pid)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 30, preexec_fn=_pinned(cpus)
    )
    cpu_after = _cpu_seconds(server.process.pid)
    output = done.stdout
    rps = _RPS.search(output)
    requests = _REQUESTS.search(output)
    latencies = {q: float(v) * _UNITS[u] for q, v, u in _LATENCY.findall(output)}
    errors = [m.group(0) for m in _ERRORS.finditer(output)]
    if done.returncode != 0 or rps is None or "99" not in latencies or errors:
        raise RuntimeError(f"wrk against {server.key} failed:\n{output}\n{done.stderr}")
    cpu_us = None
    if cpu_before is not None and cpu_after is not None and requests and int(requests.group(1)):
        cpu_us = (cpu_after - cpu_before) / int(requests.group(1)) * 1e6
    return Load(float(rps.group(1)), latencies["50"], latencies["99"], cpu_us)


def server_stack() -> str:
    version = importlib.metadata.version("uvicorn")
    return f"uvicorn {version} (h11, asyncio loop: what plain `pip install uvicorn` runs)"


def run_e2e(fixture: Fixture, *, seconds: float, rounds: int, connections: int = 32) -> Section:
    split = cpu_split()
    server_cpus, wrk_cpus = split if split is not None else (None, None)
    threads = len(wrk_cpus) if wrk_cpus else 2
    placement = (
        f"uvicorn pinned to CPU {sorted(server_cpus)[0]}, wrk to CPU "
        + ",".join(map(str, sorted(wrk_cpus)))
        if server_cpus and wrk_cpus
        else "wrk and the server share the machine's CPUs"
    )
    section = Section(
        "e2e",
        "End to end: uvicorn + wrk over loopback",
        intro=(
            f"Each app served by its own uvicorn process (1 worker, 127.0.0.1), loaded in turn by "
            f"`wrk -t{threads} -c{connections} --latency` with the Bearer token, {rounds} "
            f"rounds of {seconds:g} s per app, in a shuffled order each round, after a 1 s "
            "warm-up. Figures are medians over rounds; the ratios are medians of each "
            "round's ratio to the bare app in the same round; "
            f"{placement}."
        ),
    )
    wrk = shutil.which("wrk")
    if wrk is None:
        section.skipped = "wrk is not on PATH (Debian/Ubuntu: apt-get install wrk)"
        return section
    if importlib.util.find_spec("uvicorn") is None:
        section.skipped = "uvicorn is not installed (pip install uvicorn)"
        return section
    section.intro += f" Server: {server_stack()}."
    keys = [key for key, _ in E2E_APPS]
    with (
        tempfile.TemporaryDirectory(prefix="hfauth-bench-") as logdir,
        _servers(keys, fixture, Path(logdir), server_cpus) as servers,
    ):
        for server in servers.values():
            _wrk(
                wrk,
                server,
                fixture,
                seconds=1,
                threads=threads,
                connections=connections,
                cpus=wrk_cpus,
            )
        for key in shuffled_rounds(keys, rounds, seed=5):
            load = _wrk(
                wrk,
                servers[key],
                fixture,
                seconds=seconds,
                threads=threads,
                connections=connections,
                cpus=wrk_cpus,
            )
            servers[key].loads.append(load)
        loads = {key: server.loads for key, server in servers.items()}
    bare = loads["bare"]
    results = {}
    for key in keys:
        # Each round's figure over the bare app's in the same round: drift on a
        # shared machine moves both, so the median of these ratios is steadier
        # than a ratio of averages.
        results[key] = E2EResult(
            rps=statistics.median(load.rps for load in loads[key]),
            share=statistics.median(
                load.rps / base.rps for load, base in zip(loads[key], bare, strict=True)
            ),
            p50_ms=statistics.median(load.p50_ms for load in loads[key]),
            p99_ms=statistics.median(load.p99_ms for load in loads[key]),
            p99_ratio=statistics.median(
                load.p99_ms / base.p99_ms for load, base in zip(loads[key], bare, strict=True)
            ),
            cpu_us=_median_or_none([load.cpu_us for load in loads[key]]),
        )
    section.headers = [
        "App",
        "requests/s",
        "x bare rps",
        "p50 ms",
        "p99 ms",
        "x bare p99",
        "server CPU µs/request",
    ]
    for key, label in E2E_APPS:
        result = results[key]
        section.rows.append(
            [
                label,
                fmt(result.rps, 0),
                fmt(result.share, 3),
                fmt(result.p50_ms, 2),
                fmt(result.p99_ms, 2),
                fmt(result.p99_ratio, 2),
                fmt(result.cpu_us, 1),
            ]
        )
    bare_cpu = results["bare"].cpu_us
    ours_cpu = results["hfauth"].cpu_us
    if bare_cpu is not None and ours_cpu is not None:
        section.notes.append(
            f"server CPU per request: hfauth-mw adds {fmt(ours_cpu - bare_cpu, 1)} µs to the "
            f"bare app's {fmt(bare_cpu, 1)} µs (the bare app's share of it: "
            f"{fmt(bare_cpu / ours_cpu * 100, 1)}%); CPU time moves less than requests/s "
            "when other tenants share the machine"
        )
    per_round = ", ".join(
        f"{key}: " + "/".join(fmt(load.rps, 0) for load in loads[key]) for key in keys
    )
    section.notes.append(f"requests/s per round: {per_round}")
    section.data["results"] = results
    section.data["plot"] = {
        "kind": "barh",
        "title": "uvicorn + wrk: requests/s",
        "xlabel": "requests per second (higher is better)",
        "labels": [label for _, label in E2E_APPS],
        "values": [results[key].rps for key, _ in E2E_APPS],
    }
    return section
