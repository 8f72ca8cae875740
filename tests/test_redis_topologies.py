"""The shared tier on managed-Redis topologies (issue 18, item 7): a real
three-primary Redis Cluster and a real Sentinel-watched primary/replica pair,
both started by the tests on the loopback (tests/redis_servers.py) and torn
down after. Skipped, with the reason, where redis-server is missing."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hfauth_mw import (
    Authenticator,
    ConfigurationError,
    Credentials,
    HubWhoamiSource,
    SharedCache,
    SharedCacheUnavailable,
    TokenCache,
)
from hfauth_mw._principal import token_digest
from hfauth_mw._redis import RedisBackend
from redis_servers import RedisClusterSet, RedisSentinelSet, RedisServer, wait_for

SECRET = "test-deployment-secret-0123456789"
#: Counting tests on a loaded machine: a Redis call may take longer than 100 ms.
SOCKET_TIMEOUT = 2.0

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[RedisClusterSet]:
    cluster = RedisClusterSet()
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def redis_sentinel() -> Iterator[RedisSentinelSet]:
    deployment = RedisSentinelSet()
    try:
        yield deployment.start()
    finally:
        deployment.stop()


def _prefix() -> str:
    return f"hfauth-test-{uuid.uuid4().hex[:12]}"


def _shared(url: str, prefix: str, **options: Any) -> SharedCache:
    return SharedCache.from_url(
        url, secret=SECRET, prefix=prefix, socket_timeout=SOCKET_TIMEOUT, **options
    )


def _keys(shared: SharedCache, auth: Authenticator, token: str) -> Any:
    return shared.keys(auth._namespace, token_digest(token))


# --- URLs --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "kind", "nodes", "service", "db"),
    [
        pytest.param("redis://127.0.0.1:6379/3", "single", (), "", 0, id="one-server"),
        pytest.param(
            "redis+sentinel://s1:26379,s2,[::1]:26380/mymaster/2",
            "sentinel",
            (("s1", 26379), ("s2", 26379), ("::1", 26380)),
            "mymaster",
            2,
            id="sentinel-three-nodes-default-port-ipv6",
        ),
        pytest.param(
            "rediss+cluster://u:pw@c1:7000,c2:7001",
            "cluster",
            (("c1", 7000), ("c2", 7001)),
            "",
            0,
            id="cluster-tls-seeds",
        ),
    ],
)
def test_the_url_scheme_chooses_the_topology(url, kind, nodes, service, db):
    from hfauth_mw._redis import parse_target

    target = parse_target(url)
    assert (target.kind, target.nodes, target.service, target.db) == (kind, nodes, service, db)
    shared = SharedCache.from_url(url, secret=SECRET)  # no network until the first call
    assert "pw" not in repr(shared)
    shared.close()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param("redis+sentinel://s1:26379", "must name the service", id="no-service"),
        pytest.param("redis+sentinel://s1:26379/m/x", "DB number", id="bad-db"),
        pytest.param("redis+cluster://c1:7000/3", "only DB 0", id="cluster-db"),
        pytest.param("redis+cluster://c1:99999", "bad port", id="bad-port"),
        pytest.param("redis+cluster://", "names no cluster node", id="no-node"),
        pytest.param("redis+cluster://c1?db=3", "unknown parameters", id="unknown-option"),
        pytest.param("sentinel://s1/m", r"redis\+sentinel://", id="other-scheme"),
    ],
)
def test_topology_url_mistakes_stop_start_up(url, message):
    with pytest.raises(ConfigurationError, match=message):
        SharedCache.from_url(url, secret=SECRET)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis+sentinel://:pa55word@s1/m?sentinel_password=pa55word", id="sentinel"),
        pytest.param("rediss+cluster://user:pa55word@c1:7000,c2:7000", id="cluster"),
    ],
)
def test_topology_urls_never_show_a_password(url):
    shared = SharedCache.from_url(url, secret=SECRET)
    try:
        assert "pa55word" not in repr(shared) + repr(shared.backend)
    finally:
        shared.close()


# --- Redis Cluster -----------------------------------------------------------------------------


def _tokens_on_every_node(cluster, hub_store, shared, auth) -> list[str]:
    """Tokens whose keys land on each of the cluster's primaries (at least one each)."""
    tokens, nodes = [], set()
    while nodes != {node.port for node in cluster.nodes}:
        assert len(tokens) < 300, "token keys never reached every primary"
        token = hub_store.create_token(user=f"user{len(tokens)}", role="read").token
        tokens.append(token)
        nodes.add(cluster.node_of(_keys(shared, auth, token).entry))
    return tokens


@pytest.mark.anyio
async def test_cluster_shares_answers_across_three_primaries(
    redis_cluster, hub_store, hub_emulator
):
    """Every script runs in one slot (no CROSSSLOT, no error) on whichever
    primary owns the token, and a second process (async) reads what the first
    (sync) stored: one Hub call per token."""
    from redis.cluster import key_slot

    prefix = _prefix()
    source = HubWhoamiSource(hub_emulator.url, timeout=5.0)
    first_shared, second_shared = (_shared(redis_cluster.url, prefix) for _ in range(2))
    first = Authenticator(source, shared=first_shared)
    second = Authenticator(source, shared=second_shared)
    try:
        tokens = _tokens_on_every_node(redis_cluster, hub_store, first_shared, first)
        for token in tokens:
            keys = _keys(first_shared, first, token)
            assert len({key_slot(k.encode()) for k in (keys.entry, keys.lock, keys.tomb)}) == 1
            assert first.authenticate_sync(Credentials.from_token(token)).name.startswith("user")
        for token in tokens:
            principal = await second.authenticate(Credentials.from_token(token))
            assert principal.name.startswith("user")
        assert hub_emulator.whoami_calls == len(tokens)
        assert first.stats()["shared_stores"] == len(tokens)
        assert second.stats()["shared_hits"] == len(tokens)
        assert first.stats()["shared_errors"] == second.stats()["shared_errors"] == 0
    finally:
        first_shared.close()
        await second_shared.aclose()


def test_cluster_revocation_reaches_a_subscriber_on_another_node(
    redis_cluster, hub_store, hub_emulator
):
    """The tombstone is written on the token's primary; the listener is
    connected to the primary of the channel's slot: PUBLISH crosses the cluster."""
    from redis.cluster import key_slot

    prefix = _prefix()
    source = HubWhoamiSource(hub_emulator.url, timeout=5.0)
    holder_shared, revoker_shared = (_shared(redis_cluster.url, prefix) for _ in range(2))
    holder = Authenticator(source, shared=holder_shared)
    revoker = Authenticator(source, shared=revoker_shared)
    channel_node = redis_cluster.node_of(holder_shared.channel)
    try:
        token = None
        for index in range(300):
            candidate = hub_store.create_token(user=f"rev{index}", role="write").token
            keys = _keys(holder_shared, holder, candidate)
            if redis_cluster.node_of(keys.tomb) != channel_node:
                token = candidate
                break
        assert token is not None
        assert key_slot(holder_shared.channel.encode()) != key_slot(keys.tomb.encode())
        credentials = Credentials.from_token(token)
        holder.authenticate_sync(credentials)
        assert holder_shared.wait_ready(10)
        holder.authenticate_sync(credentials)  # cached again, under the subscription
        assert len(holder.cache) == 1

        assert revoker.revoke(token) >= 1  # listeners counted on every node

        wait_for(lambda: len(holder.cache) == 0, "the revocation to reach the holder", 5)
        assert holder.stats()["revocations_dropped"] == 1
        node = RedisServer(redis_cluster.node_of(keys.tomb)).client()
        try:
            assert node.exists(keys.tomb) == 1  # the tombstone sits on the token's primary
        finally:
            node.close()
    finally:
        holder_shared.close()
        revoker_shared.close()


# --- Redis Sentinel ----------------------------------------------------------------------------


def _stored_on(port: int, prefix: str) -> list[bytes]:
    client = RedisServer(port).client()
    try:
        return [key for key in client.scan_iter(match=f"{prefix}:*") if not key.endswith(b":lock")]
    finally:
        client.close()


@pytest.mark.parametrize(
    "how",
    [
        pytest.param("sentinel-failover", id="SENTINEL-FAILOVER"),
        pytest.param("primary-stopped", id="primary-stopped"),
    ],
)
def test_sentinel_failover_is_followed(redis_sentinel, hub_store, hub_emulator, clock, how):
    """After the primary changes, answers are stored on the new primary (after at
    most a few failed calls, which fall back to the source), and revocations
    still reach every process."""
    prefix = _prefix()
    source = HubWhoamiSource(hub_emulator.url, timeout=5.0)
    # The listener asks the Sentinels every health_check_interval whether its
    # primary is still the primary: 1 s here, 5 s by default.
    holder_backend = RedisBackend(
        redis_sentinel.url, socket_timeout=SOCKET_TIMEOUT, health_check_interval=1
    )
    holder_shared = SharedCache(holder_backend, secret=SECRET, prefix=prefix, timer=clock)
    revoker_shared = _shared(redis_sentinel.url, prefix)
    holder = Authenticator(source, shared=holder_shared, cache=TokenCache(timer=clock, clock=clock))
    revoker = Authenticator(source, shared=revoker_shared)
    old_primary = redis_sentinel.primary_port()
    try:
        alice = hub_store.create_token(user="alice", role="write").token
        holder.authenticate_sync(Credentials.from_token(alice))
        assert holder_shared.wait_ready(10)
        assert holder.stats()["shared_stores"] == 1
        assert _stored_on(old_primary, prefix)

        if how == "sentinel-failover":
            new_primary = redis_sentinel.fail_over()
        else:
            new_primary = redis_sentinel.stop_primary()
        assert new_primary != old_primary

        # New tokens: the first calls may meet a connection to the old primary.
        stores_before = holder.stats()["shared_stores"]
        for index in range(6):
            clock.advance(6)  # past the Redis breaker's cool-down, should it have opened
            token = hub_store.create_token(user=f"after{index}", role="read").token
            assert holder.authenticate_sync(Credentials.from_token(token)).name == f"after{index}"
            if holder.stats()["shared_stores"] > stores_before:
                break
        assert holder.stats()["shared_stores"] > stores_before
        assert holder.stats()["shared_errors"] <= 3
        assert _stored_on(new_primary, prefix)

        # Revocation after the failover: the holder's in-process entry goes.
        holder.cache.clear()
        holder.authenticate_sync(Credentials.from_token(alice))
        assert len(holder.cache) == 1
        deadline = time.monotonic() + 15
        while len(holder.cache):
            assert time.monotonic() < deadline, "the revocation never reached the holder"
            with contextlib.suppress(SharedCacheUnavailable):  # Redis still settling
                revoker.revoke(alice)
            time.sleep(0.05)  # polling the effect, bounded by the deadline
        revocations = holder_shared.stats()
        assert revocations["revocations_dropped"] + revocations["revocations_resubscribed"] >= 1
        assert holder.stats()["decisions_unavailable"] == 0  # Redis trouble never reached a client
    finally:
        holder_shared.close()
        revoker_shared.close()


def test_cli_revoke_broadcasts_on_the_cluster(
    redis_cluster, hub_store, hub_emulator, monkeypatch, capsys
):
    """`hfauth-mw token revoke --redis-url redis+cluster://...` reaches a listener."""
    from hfauth_mw._cli import main as cli_main

    prefix = _prefix()
    issued = hub_store.create_token(user="alice", role="write")
    holder_shared = _shared(redis_cluster.url, prefix)
    holder = Authenticator(HubWhoamiSource(hub_emulator.url, timeout=5.0), shared=holder_shared)
    try:
        assert holder_shared.wait_ready(10)
        holder.authenticate_sync(Credentials.from_token(issued.token))
        assert len(holder.cache) == 1
        monkeypatch.setenv("HFAUTH_TEST_REDIS_SECRET", SECRET)
        code = cli_main(
            [
                "token",
                "revoke",
                "--store",
                str(hub_store.path),
                "--redis-url",
                redis_cluster.url,
                "--redis-secret-env",
                "HFAUTH_TEST_REDIS_SECRET",
                "--redis-prefix",
                prefix,
                issued.record.fingerprint,
            ]
        )
        assert code == 0, capsys.readouterr().err
        assert "1 process" in capsys.readouterr().out
        wait_for(lambda: len(holder.cache) == 0, "the revocation to reach the holder", 5)
    finally:
        holder_shared.close()
