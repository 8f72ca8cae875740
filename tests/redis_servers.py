"""Real Redis deployments on the loopback interface, started and torn down by the tests.

* :class:`RedisServer`: one ``redis-server`` on a free port (no persistence).
* :class:`RedisSentinelSet`: a primary, one replica and one Sentinel watching
  them as service ``hfauth``; :meth:`RedisSentinelSet.fail_over` runs
  ``SENTINEL FAILOVER`` and waits until the replica is the primary.
* :class:`RedisClusterSet`: three primaries, no replicas, every slot assigned
  (``CLUSTER ADDSLOTSRANGE`` and ``CLUSTER MEET``, no ``redis-cli``).

Each lives in its own temporary directory; :func:`skip_without_redis_server`
skips a test with the reason when the binary is missing. Waits poll a
condition against a deadline (never a bare sleep), and every process is killed
on teardown even if the test failed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

#: How long a deployment may take to come up or to fail over before the test fails.
START_DEADLINE = 20.0


def skip_without_redis_server() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip(
            "redis-server is not installed (apt-get install redis-server; .ci/run does it): "
            "the Sentinel and Cluster tests start their own servers on the loopback"
        )
    return binary


def free_port(*, with_bus: bool = False) -> int:
    """A free loopback port; with ``with_bus``, port + 10000 (the cluster bus) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if not with_bus:
            return port
        if port + 10000 > 65535:
            continue
        try:
            with socket.socket() as bus:
                bus.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


def ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def wait_for(condition: Callable[[], bool], what: str, deadline: float = START_DEADLINE) -> None:
    """Poll ``condition`` until it holds; fail the test with ``what`` past the deadline."""
    end = time.monotonic() + deadline
    while not condition():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)  # polling a condition, bounded by the deadline


class RedisServer:
    """A redis-server this test session owns, on a free loopback port."""

    def __init__(
        self, port: int | None = None, *, extra: tuple[str, ...] = (), workdir: Path | None = None
    ) -> None:
        self.port = port or free_port()
        self.extra = extra
        self.workdir = workdir
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = skip_without_redis_server()
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
                *(("--dir", str(self.workdir)) if self.workdir else ()),
                *self.extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        end = time.monotonic() + 10
        while not ping(self.port):
            if time.monotonic() > end or self.process.poll() is not None:
                self.stop()
                pytest.skip(f"could not start redis-server on port {self.port}")
            time.sleep(0.02)  # polling a condition, bounded by the deadline
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def client(self, **options: Any) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5, **options)


class RedisSentinelSet:
    """A primary, a replica and one Sentinel (quorum 1) for service :attr:`service`."""

    service = "hfauth"

    def __init__(self) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="hfauth-sentinel-")
        self.dir = Path(self._tmp.name)
        self.primary = RedisServer(workdir=self.dir)
        self.replica = RedisServer(workdir=self.dir)
        self.sentinel_port = free_port()
        self.sentinel: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/{self.service}/0"

    def start(self) -> RedisSentinelSet:
        binary = skip_without_redis_server()
        self.primary.start()
        self.replica.extra = ("--replicaof", "127.0.0.1", str(self.primary.port))
        self.replica.start()
        config = self.dir / "sentinel.conf"
        config.write_text(
            f"port {self.sentinel_port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.dir}\n"
            f"sentinel monitor {self.service} 127.0.0.1 {self.primary.port} 1\n"
            f"sentinel down-after-milliseconds {self.service} 1000\n"
            f"sentinel failover-timeout {self.service} 10000\n"
        )
        self.sentinel = subprocess.Popen(
            [binary, str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: ping(self.sentinel_port), "the Sentinel to start")
        wait_for(self._replica_known, "the Sentinel to see the replica in sync")
        return self

    def sentinel_client(self) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.sentinel_port, socket_timeout=5)

    def primary_port(self) -> int:
        client = self.sentinel_client()
        try:
            _, port = client.sentinel_get_master_addr_by_name(self.service)
            return int(port)
        finally:
            client.close()

    def _replica_known(self) -> bool:
        client = self.sentinel_client()
        try:
            replicas = client.sentinel_slaves(self.service)
            return any(
                int(r["port"]) == self.replica.port
                and r.get("master-link-status") == "ok"
                and not r.get("is_sdown")
                for r in replicas
            )
        except Exception:
            return False
        finally:
            client.close()

    def fail_over(self) -> int:
        """SENTINEL FAILOVER, then wait until the old replica is the primary; its port."""
        old = self.primary_port()
        client = self.sentinel_client()
        try:
            client.execute_command("SENTINEL", "FAILOVER", self.service)
        finally:
            client.close()
        return self.wait_promoted(old)

    def stop_primary(self) -> int:
        """Kill the primary's process; wait until the Sentinel promoted the replica; its port."""
        old = self.primary_port()
        (self.primary if self.primary.port == old else self.replica).stop()
        return self.wait_promoted(old)

    def wait_promoted(self, old: int) -> int:
        """Wait until the Sentinel names a healthy primary other than ``old`` (as
        redis-py requires: not subjectively or objectively down) and that server
        says it is a primary."""
        new_port = self.replica.port if old == self.primary.port else self.primary.port

        def promoted() -> bool:
            sentinel = self.sentinel_client()
            node = RedisServer(new_port).client()
            try:
                state = sentinel.sentinel_masters()[self.service]
                return (
                    int(state["port"]) == new_port
                    and not state["is_sdown"]
                    and not state["is_odown"]
                    and node.info("replication")["role"] == "master"
                )
            except Exception:
                return False
            finally:
                sentinel.close()
                node.close()

        wait_for(promoted, "the Sentinel to promote the replica", 30)
        return new_port

    def stop(self) -> None:
        if self.sentinel is not None:
            self.sentinel.kill()
            self.sentinel.wait(timeout=10)
            self.sentinel = None
        self.replica.stop()
        self.primary.stop()
        self._tmp.cleanup()


class RedisClusterSet:
    """Three cluster-enabled primaries sharing the 16384 slots, no replicas."""

    def __init__(self, size: int = 3) -> None:
        self._tmp = tempfile.TemporaryDirectory(prefix="hfauth-cluster-")
        self.dir = Path(self._tmp.name)
        self.nodes: list[RedisServer] = []
        for index in range(size):
            port = free_port(with_bus=True)
            workdir = self.dir / f"node{index}"
            workdir.mkdir()
            self.nodes.append(
                RedisServer(
                    port,
                    workdir=workdir,
                    extra=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        str(workdir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "2000",
                    ),
                )
            )

    @property
    def url(self) -> str:
        """Two seed nodes, as an operator would write it."""
        first, second = self.nodes[0].port, self.nodes[1].port
        return f"redis+cluster://127.0.0.1:{first},127.0.0.1:{second}"

    def start(self) -> RedisClusterSet:
        for node in self.nodes:
            node.start()
        slots = 16384
        share = slots // len(self.nodes)
        clients = [node.client() for node in self.nodes]
        try:
            for index, client in enumerate(clients):
                first = index * share
                last = slots - 1 if index == len(self.nodes) - 1 else first + share - 1
                client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            for node in self.nodes[1:]:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", node.port)

            def ready() -> bool:
                for client in clients:
                    info = client.execute_command("CLUSTER", "INFO")
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    if "cluster_state:ok" not in text or (
                        f"cluster_known_nodes:{len(self.nodes)}" not in text
                    ):
                        return False
                return True

            wait_for(ready, "the cluster to agree on its slots")
        finally:
            for client in clients:
                client.close()
        return self

    def node_of(self, key: str) -> int:
        """The port of the primary that owns ``key``'s slot."""
        from redis.cluster import key_slot

        slot = key_slot(key.encode())
        share = 16384 // len(self.nodes)
        return self.nodes[min(slot // share, len(self.nodes) - 1)].port

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        self._tmp.cleanup()
