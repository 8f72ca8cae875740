"""Counters, the latency histogram, the stats() mapping and Prometheus exposition."""

from __future__ import annotations

import itertools

import httpx
import pytest

from hfauth_mw import (
    Authenticator,
    ConfigurationError,
    Credentials,
    HubWhoamiSource,
    InvalidToken,
    SourceUnavailable,
    TokenCache,
    register_prometheus,
)
from hfauth_mw._metrics import Histogram, count_value


@pytest.fixture
def make_authenticator(hub_emulator, clock):
    def make(**cache_options) -> Authenticator:
        source = HubWhoamiSource(hub_emulator.url, timeout=httpx.Timeout(5.0))
        return Authenticator(source, cache=TokenCache(timer=clock, clock=clock, **cache_options))

    return make


@pytest.mark.parametrize(
    ("taken", "expected"),
    [
        pytest.param(0, 0, id="fresh"),
        pytest.param(1, 1, id="one"),
        pytest.param(300, 300, id="past-small-int-cache"),
    ],
)
def test_count_value_reads_without_consuming(taken, expected):
    counter = itertools.count()
    for _ in range(taken):
        next(counter)
    assert count_value(counter) == expected
    assert count_value(counter) == expected


@pytest.mark.parametrize(
    ("observations", "buckets"),
    [
        pytest.param([], [0, 0, 0], id="empty"),
        pytest.param([0.01], [1, 1, 1], id="on-a-bound-counts-as-le"),
        pytest.param([0.005, 0.02, 3.0], [1, 2, 3], id="spread"),
    ],
)
def test_histogram_is_cumulative(observations, buckets):
    histogram = Histogram((0.01, 0.1))
    for seconds in observations:
        histogram.observe(seconds)
    pairs, total, count = histogram.snapshot()
    assert [n for _, n in pairs] == buckets
    assert pairs[-1][0] == float("inf")
    assert count == len(observations)
    assert total == pytest.approx(sum(observations))


def test_histogram_rejects_unsorted_buckets():
    with pytest.raises(ConfigurationError):
        Histogram((0.1, 0.01))


def test_stats_count_every_request_exactly(make_authenticator, hub_store, hub_emulator, clock):
    authenticator = make_authenticator(ttl=60, negative_ttl=10)
    good = Credentials.from_token(hub_store.create_token(user="alice", role="read").token)
    bad = Credentials.from_token("hf_" + "b" * 34)
    for _ in range(10):
        authenticator.authenticate_sync(good)
    for _ in range(3):
        with pytest.raises(InvalidToken):
            authenticator.authenticate_sync(bad)
    hub_emulator.fail_next(503, times=1)
    clock.advance(61)
    with pytest.raises(SourceUnavailable):
        authenticator.authenticate_sync(good)
    stats = authenticator.stats()
    assert stats["local_hits"] == 9 + 2
    assert stats["local_misses"] == 3
    assert stats["upstream_calls"] == hub_emulator.whoami_calls == 3
    assert stats["upstream_errors"] == 1
    assert (stats["decisions_valid"], stats["decisions_invalid"]) == (10, 3)
    assert (stats["decisions_expired"], stats["decisions_unavailable"]) == (0, 1)
    assert stats["resolve_count"] == 3  # the misses, timed
    assert stats["resolve_le_10000ms"] == 3
    assert all(isinstance(value, int) for value in stats.values())
    for name in ("shared_hits", "shared_errors", "revocations_received"):
        assert stats[name] == 0  # present, zero without a shared cache


@pytest.mark.anyio
async def test_async_waiters_are_counted_as_joins(make_authenticator, hub_store, hub_emulator):
    import asyncio

    authenticator = make_authenticator()
    good = Credentials.from_token(hub_store.create_token(user="alice", role="read").token)
    hub_emulator.delay = 30
    tasks = [asyncio.create_task(authenticator.authenticate(good)) for _ in range(20)]
    assert await asyncio.to_thread(hub_emulator.wait_for_held, 1)
    await asyncio.sleep(0)
    hub_emulator.release_held()
    await asyncio.gather(*tasks)
    stats = authenticator.stats()
    assert (stats["local_misses"], stats["local_joins"], stats["local_hits"]) == (1, 19, 0)
    assert stats["decisions_valid"] == 20
    assert stats["upstream_calls"] == hub_emulator.whoami_calls == 1


def test_prometheus_exposition(make_authenticator, hub_store, hub_emulator):
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    authenticator = make_authenticator()
    token = hub_store.create_token(user="alice", role="read").token
    credentials = Credentials.from_token(token)
    for _ in range(4):
        authenticator.authenticate_sync(credentials)
    register_prometheus(authenticator, registry=registry)
    text = prometheus_client.generate_latest(registry).decode()
    source = authenticator.source.name

    def value(name: str, **labels: str) -> float | None:
        result: float | None = registry.get_sample_value(name, {"source": source, **labels})
        return result

    assert value("hfauth_cache_hits_total", tier="local") == 3
    assert value("hfauth_cache_misses_total", tier="local") == 1
    assert value("hfauth_upstream_calls_total") == hub_emulator.whoami_calls == 1
    assert value("hfauth_decisions_total", reason="valid") == 4
    assert value("hfauth_resolve_seconds_count") == 1
    assert value("hfauth_resolve_seconds_bucket", le="+Inf") == 1
    assert value("hfauth_cache_entries") == 1
    assert token not in text
    assert credentials.fingerprint not in text
    assert credentials.digest.hex() not in text


def test_register_prometheus_needs_an_authenticator():
    pytest.importorskip("prometheus_client")
    with pytest.raises(ConfigurationError):
        register_prometheus()


def test_register_prometheus_refuses_two_sources_of_one_name(make_authenticator):
    """Both would export the same label sets, and a scrape keeps one of each."""
    prometheus_client = pytest.importorskip("prometheus_client")
    first, second = make_authenticator(), make_authenticator()
    with pytest.raises(ConfigurationError, match="share one Authenticator"):
        register_prometheus(first, second, registry=prometheus_client.CollectorRegistry())
    # The same authenticator named twice is one.
    register_prometheus(first, first, registry=prometheus_client.CollectorRegistry())


def _named(make_authenticator, hub_emulator, name: str | None) -> Authenticator:
    authenticator: Authenticator = make_authenticator()
    if name is None:
        return authenticator
    source = HubWhoamiSource(hub_emulator.url, timeout=httpx.Timeout(5.0), name=name)
    return Authenticator(source)


@pytest.mark.parametrize(
    ("second", "registry_of_second", "prefix_of_second", "refused"),
    [
        pytest.param("same-name", "same", "hfauth", True, id="same-name-same-registry"),
        pytest.param("itself", "same", "hfauth", True, id="itself-again"),
        pytest.param("same-name", "other", "hfauth", False, id="same-name-other-registry"),
        pytest.param("same-name", "same", "other", False, id="same-name-other-prefix"),
        pytest.param("other-name", "same", "hfauth", False, id="distinct-names"),
    ],
)
def test_register_prometheus_twice_refuses_colliding_series(
    make_authenticator, hub_emulator, second, registry_of_second, prefix_of_second, refused
):
    """Two calls (a FastAPI install() and a middleware, each registering its own
    authenticator) collide as one call with both would: the docs say refused."""
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    first = make_authenticator()
    register_prometheus(first, registry=registry)
    other = {
        "same-name": lambda: make_authenticator(),
        "itself": lambda: first,
        "other-name": lambda: _named(make_authenticator, hub_emulator, "second-hub"),
    }[second]()
    target = registry if registry_of_second == "same" else prometheus_client.CollectorRegistry()

    if refused:
        with pytest.raises(
            ConfigurationError, match=r"already exported .* share one Authenticator"
        ):
            register_prometheus(other, registry=target, prefix=prefix_of_second)
    else:
        register_prometheus(other, registry=target, prefix=prefix_of_second)
    # Whatever happened, each series is exported once.
    for family in registry.collect():
        labels = [(sample.name, tuple(sorted(sample.labels.items()))) for sample in family.samples]
        assert len(labels) == len(set(labels)), family.name


def test_register_prometheus_again_after_unregister(make_authenticator):
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    authenticator = make_authenticator()
    registry.unregister(register_prometheus(authenticator, registry=registry))
    register_prometheus(make_authenticator(), registry=registry)
    assert (
        registry.get_sample_value("hfauth_cache_entries", {"source": authenticator.source.name})
        == 0
    )
