"""What an introspection source can say about a token, and the flow protocol.

A source is sans-IO: its :meth:`~IntrospectionSource.flow` is a generator that
yields the HTTP requests it needs and receives their responses, the way httpx
auth flows work. The sync and async drivers in ``_drivers`` do the I/O, so the
logic of each source is written once for both worlds.

A source answers :class:`Valid` or :class:`Invalid`, or raises
:class:`~hfauth_mw.SourceUnavailable` when it cannot tell. "Cannot tell" is
never turned into "invalid".
"""

from __future__ import annotations

from collections.abc import Generator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import httpx

from ._credentials import Credentials
from ._exceptions import SourceUnavailable
from ._principal import Principal

__all__ = [
    "MAX_TAKEOVERS",
    "Flow",
    "IntrospectionSource",
    "Invalid",
    "LeaderCancelled",
    "Outcome",
    "Valid",
    "WaitFor",
]


@dataclass(frozen=True, slots=True)
class Valid:
    """The token is good; ``principal`` says who it belongs to."""

    principal: Principal


@dataclass(frozen=True, slots=True)
class Invalid:
    """The token is unknown, revoked, expired or inactive. ``reason`` is log-safe."""

    reason: str = "unknown or revoked token"


#: What the cache keeps for a token that was valid but has expired: no source
#: will say otherwise again, so retries are answered here, not upstream.
EXPIRED = Invalid("the access token has expired")

Outcome = Valid | Invalid


@dataclass(frozen=True, slots=True)
class WaitFor:
    """Work item: wait for another request's flight (the introspection of the
    same token, or the hub's decision on the same repository) and take its result."""

    future: Future[Any]


#: How many times waiters may take over flights whose leading request went away.
MAX_TAKEOVERS = 3


class LeaderCancelled(SourceUnavailable):
    """The request leading a flight went away (cancelled): a request waiting
    for it (:class:`WaitFor`) takes the flight over rather than fail."""

    def __init__(self, message: str = "The token check was interrupted") -> None:
        super().__init__(message)


Flow = Generator[httpx.Request, httpx.Response, Outcome]


@runtime_checkable
class IntrospectionSource(Protocol):
    """Anything that can tell whether a token is valid and whose it is.

    ``name`` namespaces the cache and appears in logs; ``wait_timeout`` bounds
    how long a request waits for another request's introspection of the same
    token (at least the source's own network timeout).
    """

    @property
    def name(self) -> str: ...

    @property
    def wait_timeout(self) -> float: ...

    def flow(self, credentials: Credentials) -> Flow: ...
