"""The shared cache tier's work items and the protocol of the store behind it.

:mod:`hfauth_mw._shared_tier` (the decisions: keys, signed values, revocation) and
the flow in :mod:`hfauth_mw._authenticator` produce these work items; a
backend (:mod:`hfauth_mw._redis`) runs them. Both sides import this module and
neither imports the other at module level, so the tier has no import circle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = [
    "CLAIM_HIT",
    "CLAIM_LEAD",
    "CLAIM_WAIT",
    "Pause",
    "SharedBackend",
    "SharedClaim",
    "SharedCount",
    "SharedDown",
    "SharedKeys",
    "SharedOp",
    "SharedRelease",
    "SharedRevoke",
    "SharedStore",
]

CLAIM_WAIT, CLAIM_HIT, CLAIM_LEAD = 0, 1, 2


# --- work items -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SharedKeys:
    """The store keys of one token under one source: its answer, its lock, its tombstone."""

    entry: str
    lock: str
    tomb: str


@dataclass(frozen=True, slots=True)
class SharedClaim:
    """Work item: read the token's shared answer, else try to take its lock (one round trip).

    The driver answers ``(CLAIM_HIT, value)``, ``(CLAIM_LEAD, None)`` (the lock
    is ours) or ``(CLAIM_WAIT, None)`` (someone else holds it). A positive
    value under a tombstone is not a hit.
    """

    keys: SharedKeys
    owner: str
    lock_ms: int


@dataclass(frozen=True, slots=True)
class SharedStore:
    """Work item: store a value for ``ttl_ms`` (a positive one only if the
    token has no tombstone) and release our lock. The driver answers a bool:
    whether the value was stored."""

    keys: SharedKeys
    owner: str
    value: bytes
    ttl_ms: int


@dataclass(frozen=True, slots=True)
class SharedRelease:
    """Work item: release our lock on the token (if it is still ours)."""

    keys: SharedKeys
    owner: str


@dataclass(frozen=True, slots=True)
class SharedRevoke:
    """Work item: set a tombstone on ``tomb`` and publish ``tag`` on ``channel``.
    The driver answers how many subscribers got the message."""

    tomb: str
    tomb_ms: int
    channel: str
    tag: str


@dataclass(frozen=True, slots=True)
class SharedCount:
    """Work item: count one failed authentication of a client on ``key``, whose
    count lives ``window_ms`` from its first failure. The driver answers
    ``(count, remaining_ms)``: the cluster-wide count and what is left of its window."""

    key: str
    window_ms: int


@dataclass(frozen=True, slots=True)
class Pause:
    """Work item: sleep ``seconds`` (a waiter polling for another process's answer)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class SharedDown:
    """What a driver sends back instead of a result when the store failed
    (timeout, connection refused, out of memory, ...). ``reason`` is log-safe."""

    reason: str


SharedOp = SharedClaim | SharedStore | SharedRelease | SharedRevoke | SharedCount


class SharedBackend(Protocol):
    """What :class:`SharedCache` needs of a store. :mod:`hfauth_mw._redis` has the real one.

    ``execute`` and ``execute_async`` never raise for store trouble: they
    return :class:`SharedDown`. Every call is bounded by a socket timeout.
    """

    def describe(self) -> str:
        """Where the store is, without any password."""
        ...

    def execute(self, op: SharedOp) -> object: ...

    async def execute_async(self, op: SharedOp) -> object: ...

    def start_subscriber(
        self,
        channel: str,
        on_tags: Callable[[list[str]], None],
        on_subscribed: Callable[[bool], None],
    ) -> None:
        """Start (idempotently, once per process) a daemon thread that calls
        ``on_tags`` with batches of published tags, and ``on_subscribed`` each
        time it starts listening (with ``True`` when it had to reconnect)."""
        ...

    def wait_subscribed(self, timeout: float) -> bool: ...

    def close(self) -> None: ...

    async def aclose(self) -> None: ...
