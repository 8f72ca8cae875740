"""Counters and a latency histogram, as a ``stats()`` mapping and for Prometheus.

Cost on the hot path (a token answered from the in-process cache): the cache
counts its hit inside the lock it already holds, and the decision is counted
with ``next()`` on an :class:`itertools.count` (atomic under the GIL, no
lock). Everything else is counted on the miss path only. Cache hits are not
timed: timing a ~1 µs lookup would cost as much as the lookup. The latency
histogram measures what matters for capacity, the time to resolve a token
that was not in the in-process cache (shared-tier hit, upstream call, or
failure).

Prometheus: :func:`register_prometheus` adds a collector that reads these
counters at scrape time, so scrapes cost nothing per request. No label holds
a token, a fingerprint or a key: only the source name and fixed words.
"""

from __future__ import annotations

import bisect
import itertools
import threading
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Protocol

from ._exceptions import ConfigurationError

__all__ = [
    "LATENCY_BUCKETS",
    "Histogram",
    "Metrics",
    "register_prometheus",
]

#: Held from checking a registry for colliding series to registering on it.
_registering = threading.Lock()

#: Upper bounds (seconds) of the resolve-latency buckets.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

#: Counters kept on the miss path (lock-protected).
COUNTERS = (
    "upstream_calls",
    "upstream_errors",
    "stale_served",
    "shared_hits",
    "shared_misses",
    "shared_waits",
    "shared_takeovers",
    "shared_stores",
    "shared_errors",
    "shared_skipped",
    "revocations_sent",
)
DECISIONS = ("valid", "invalid", "expired", "unavailable")


class _Named(Protocol):
    @property
    def name(self) -> str: ...


class Authenticator(Protocol):
    """What :func:`register_prometheus` reads of an :class:`~hfauth_mw.Authenticator`
    (a protocol, so that this module does not import the authenticator's)."""

    @property
    def source(self) -> _Named: ...

    @property
    def metrics(self) -> Metrics: ...

    def stats(self) -> dict[str, int]: ...


def count_value(counter: itertools.count[int]) -> int:
    """The next value an :class:`itertools.count` would return, without taking it."""
    text = repr(counter)  # "count(42)"
    return int(text[text.index("(") + 1 : -1])


class Histogram:
    """A fixed-bucket histogram (Prometheus semantics: cumulative ``le`` buckets)."""

    def __init__(self, buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        if list(buckets) != sorted(set(buckets)) or not buckets:
            raise ConfigurationError("histogram buckets must be increasing")
        self.buckets = tuple(buckets)
        self._counts = [0] * (len(self.buckets) + 1)
        self._sum = 0.0
        self._lock = threading.Lock()

    def observe(self, seconds: float) -> None:
        index = bisect.bisect_left(self.buckets, seconds)
        with self._lock:
            self._counts[index] += 1
            self._sum += seconds

    def snapshot(self) -> tuple[list[tuple[float, int]], float, int]:
        """Cumulative ``(le, count)`` pairs (``inf`` last), the sum and the count."""
        with self._lock:
            counts, total = list(self._counts), self._sum
        cumulative = list(itertools.accumulate(counts))
        pairs = list(zip((*self.buckets, float("inf")), cumulative, strict=True))
        return pairs, total, cumulative[-1]


class Metrics:
    """The counters of one :class:`~hfauth_mw.Authenticator`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        # Hot path: one next() each, no lock.
        self.valid = itertools.count()
        self.invalid = itertools.count()
        self.expired = itertools.count()
        self.unavailable = itertools.count()
        self.latency = Histogram()

    def count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def counters(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self._counts)
        counts["decisions_valid"] = count_value(self.valid)
        counts["decisions_invalid"] = count_value(self.invalid)
        counts["decisions_expired"] = count_value(self.expired)
        counts["decisions_unavailable"] = count_value(self.unavailable)
        buckets, total, observed = self.latency.snapshot()
        counts["resolve_count"] = observed
        counts["resolve_sum_us"] = round(total * 1_000_000)
        for bound, value in buckets:
            if bound != float("inf"):
                counts[f"resolve_le_{bound * 1000:g}ms"] = value
        return counts


# --- Prometheus -------------------------------------------------------------------------------


def register_prometheus(
    *authenticators: Authenticator, registry: Any = None, prefix: str = "hfauth"
) -> Any:
    """Expose the counters of ``authenticators`` as Prometheus metrics.

    Registers (and returns) a collector on ``registry`` (default:
    ``prometheus_client.REGISTRY``). Metrics, each labelled with ``source``
    (the source's name):

    * ``{prefix}_cache_hits_total{tier="local"|"shared"}``,
      ``{prefix}_cache_misses_total{tier=...}``, ``{prefix}_cache_entries``
    * ``{prefix}_upstream_calls_total``, ``{prefix}_upstream_errors_total``,
      ``{prefix}_shared_errors_total``,
      ``{prefix}_breaker_rejected_total{breaker="upstream"|"shared"}``
    * ``{prefix}_decisions_total{reason="valid"|"invalid"|"expired"|"unavailable"}``
    * ``{prefix}_resolve_seconds`` (histogram of in-process cache misses)
    * ``{prefix}_revocations_received_total``

    With several worker processes each one has its own counters: scrape every
    worker (or sum ``stats()`` yourself); prometheus_client's multiprocess mode
    does not read custom collectors. Raises
    :class:`~hfauth_mw.ConfigurationError` if ``prometheus_client`` is missing,
    or if two authenticators would export series of one source name under one
    ``prefix`` to one registry (Prometheus would keep one of each): two of
    ``authenticators``, or one of them and one registered by an earlier call.
    The earlier ones are found by reading ``registry`` once (a collection, at
    start-up); one unregistered since no longer counts.
    """
    try:
        from prometheus_client import REGISTRY
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )
    except ImportError:
        raise ConfigurationError(
            "Prometheus metrics need prometheus_client: pip install prometheus-client"
        ) from None
    if not authenticators:
        raise ConfigurationError("register_prometheus needs at least one authenticator")
    targets = tuple(dict.fromkeys(authenticators))  # one authenticator named twice is one
    names = [authenticator.source.name for authenticator in targets]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        # Their series would carry the same labels, and Prometheus keeps one of each.
        raise ConfigurationError(
            f"two authenticators have the source {twice[0]!r}: share one Authenticator "
            "between the adapters (authenticator=...), or give the sources distinct name=..."
        )
    registry = registry if registry is not None else REGISTRY

    class _Collector:
        def __init__(self, targets: Iterable[Authenticator]) -> None:
            self.targets = tuple(targets)

        def describe(self) -> list[Any]:
            return []

        def collect(self) -> Iterator[Any]:
            families: dict[str, Any] = {}

            def counter(name: str, doc: str, labels: Sequence[str]) -> Any:
                if name not in families:
                    families[name] = CounterMetricFamily(
                        f"{prefix}_{name}", doc, labels=["source", *labels]
                    )
                return families[name]

            entries = GaugeMetricFamily(
                f"{prefix}_cache_entries", "In-process cache entries", labels=["source"]
            )
            latency = HistogramMetricFamily(
                f"{prefix}_resolve_seconds",
                "Time to resolve a token not in the in-process cache",
                labels=["source"],
            )
            for authenticator in self.targets:
                source = authenticator.source.name
                stats = authenticator.stats()
                hits = counter("cache_hits", "Tokens answered from a cache", ["tier"])
                hits.add_metric([source, "local"], stats["local_hits"])
                hits.add_metric([source, "shared"], stats["shared_hits"])
                misses = counter("cache_misses", "Tokens not found in a cache", ["tier"])
                misses.add_metric([source, "local"], stats["local_misses"])
                misses.add_metric([source, "shared"], stats["shared_misses"])
                counter("upstream_calls", "Introspection calls to the source", []).add_metric(
                    [source], stats["upstream_calls"]
                )
                counter("upstream_errors", "Failed introspection calls", []).add_metric(
                    [source], stats["upstream_errors"]
                )
                counter("shared_errors", "Failed shared-cache (Redis) calls", []).add_metric(
                    [source], stats["shared_errors"]
                )
                rejected = counter(
                    "breaker_rejected", "Calls refused by a circuit breaker", ["breaker"]
                )
                rejected.add_metric([source, "upstream"], stats["breaker_rejected"])
                rejected.add_metric([source, "shared"], stats["shared_skipped"])
                decisions = counter("decisions", "Authentication decisions", ["reason"])
                for reason in DECISIONS:
                    decisions.add_metric([source, reason], stats[f"decisions_{reason}"])
                counter(
                    "revocations_received", "Revocation tags received from Redis", []
                ).add_metric([source], stats["revocations_received"])
                entries.add_metric([source], stats["cached"])
                buckets, total, _ = authenticator.metrics.latency.snapshot()
                latency.add_metric(
                    [source],
                    [("+Inf" if le == float("inf") else repr(le), n) for le, n in buckets],
                    total,
                )
            yield from families.values()
            yield entries
            yield latency

    collector = _Collector(targets)
    with _registering:  # no other call registers between the check and the registration
        # Every collector of ours exports {prefix}_cache_entries once per source: a
        # source already there was registered by an earlier call (a FastAPI install()
        # and a middleware each calling this, say).
        gauge = f"{prefix}_cache_entries"
        exported = [
            name for name in names if registry.get_sample_value(gauge, {"source": name}) is not None
        ]
        if exported:
            raise ConfigurationError(
                f"the source {exported[0]!r} is already exported to this registry under "
                f"the prefix {prefix!r} by an earlier register_prometheus call: register "
                "each authenticator once, share one Authenticator between the adapters "
                "(authenticator=...), or give the sources distinct name=..."
            )
        registry.register(collector)
    return collector
