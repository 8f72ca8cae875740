"""Protecting the upstream and ourselves: circuit breaker, concurrency bound,
rate-limit back-off, and the per-client brute-force guard.

All state is bounded and guarded by a lock; all time comes from an injected
``timer`` so tests never sleep.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable

from cachetools import TTLCache

from ._exceptions import ConfigurationError, SourceUnavailable, TooManyFailures

__all__ = ["UNIX_PEER", "FailureLimiter", "UpstreamBreaker", "client_address"]

logger = logging.getLogger("hfauth_mw")

#: The ``trusted_proxies`` entry for the proxy on the other end of a Unix socket.
UNIX_PEER = "unix"
#: How servers report a Unix-socket peer: uvicorn ``client=None``, gunicorn
#: ``REMOTE_ADDR=''``, werkzeug ``REMOTE_ADDR='<local>'``.
_UNIX_PEERS = frozenset({"", "<local>"})
#: Clients whose breaker failures are remembered between two successes.
_MAX_BLAMED = 1024


class UpstreamBreaker:
    """Decides whether we may call the upstream now.

    * At most ``max_concurrent`` calls at once; one more gets 503 at once
      rather than a queue (bounded memory, and the caller learns fast).
    * After ``failure_threshold`` failures in a row the breaker opens for
      ``cooldown`` seconds: requests get 503 at once instead of piling onto a
      dead upstream. Then one trial call goes through (half-open): success
      closes the breaker, failure opens it again.
    * A ``Retry-After`` or ``RateLimit`` reset from the upstream opens it until
      that moment, so we never call a rate-limiting hub before it said to.

    Defaults: 32 concurrent calls, 5 failures, 10 s cool-down.
    """

    def __init__(
        self,
        *,
        max_concurrent: int = 32,
        failure_threshold: int = 5,
        cooldown: float = 10.0,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_concurrent < 1 or failure_threshold < 1 or cooldown <= 0:
            raise ConfigurationError(
                "max_concurrent and failure_threshold must be at least 1 and cooldown positive"
            )
        self.max_concurrent = max_concurrent
        self.failure_threshold = failure_threshold
        self.cooldown = cooldown
        self.timer = timer
        self._lock = threading.Lock()
        self._running = 0
        self._failures = 0
        self._open_until = -math.inf  # the cool-down after failures in a row
        # What the upstream asked for (Retry-After): a success of a call that was
        # already running does not lift it.
        self._asked_until = -math.inf
        self._trial_running = False
        self.rejected = 0
        # Who caused the failures since the last success (client key -> count):
        # only failures of tokens we had no answer for, see release().
        self._blamed: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"UpstreamBreaker(state={self.state!r}, running={self._running})"

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half-open``."""
        with self._lock:
            if self.timer() < max(self._open_until, self._asked_until):
                return "open"
            return "half-open" if self._failures >= self.failure_threshold else "closed"

    def acquire(self) -> None:
        """Take a slot for one upstream call, or raise SourceUnavailable."""
        with self._lock:
            now = self.timer()
            until = max(self._open_until, self._asked_until)
            if now < until:
                self.rejected += 1
                raise SourceUnavailable(
                    "The token source is failing; not asking it again yet",
                    retry_after=math.ceil(until - now),
                )
            if self._failures >= self.failure_threshold:
                if self._trial_running:
                    self.rejected += 1
                    raise SourceUnavailable("The token source is being re-tried; try again soon")
                self._trial_running = True
            if self._running >= self.max_concurrent:
                self.rejected += 1
                raise SourceUnavailable(
                    "Too many token checks are running; try again soon", retry_after=1
                )
            self._running += 1

    def cancel(self) -> None:
        """Give the slot back for a call that ended without an answer (the request
        was cancelled): neither a success nor a failure. A cancelled trial call
        lets the next request be the trial."""
        with self._lock:
            self._running -= 1
            self._trial_running = False

    def release(
        self,
        error: SourceUnavailable | None,
        *,
        upstream_retry_after: int | None = None,
        client: str | None = None,
    ) -> None:
        """Give the slot back, recording how the call went. ``client`` is the
        address a failure is blamed on (a cold token's: see :meth:`held_open_by`)."""
        with self._lock:
            self._running -= 1
            self._trial_running = False
            now = self.timer()
            if error is None:
                self._failures = 0
                self._open_until = -math.inf
                self._blamed.clear()
                return
            self._failures += 1
            if client is not None:
                key = _client_key(client)
                if key in self._blamed or len(self._blamed) < _MAX_BLAMED:
                    self._blamed[key] = self._blamed.get(key, 0) + 1
            if self._failures >= self.failure_threshold:
                self._open_until = max(self._open_until, now + self.cooldown)
            if upstream_retry_after is not None:
                self._asked_until = max(self._asked_until, now + upstream_retry_after)

    def held_open_by(self, client: str | None) -> bool:
        """Whether ``client``'s own failures hold the breaker open: it is not
        closed, and that client alone caused enough failures since the last
        success to open it. Such a client is never served a stale answer (it
        could otherwise keep a revoked token working by tripping the breaker
        with junk tokens)."""
        if client is None:
            return False
        with self._lock:
            if self._failures < self.failure_threshold:
                return False
            return self._blamed.get(_client_key(client), 0) >= self.failure_threshold


def client_address(
    peer: str | None, forwarded_for: str | None, trusted_proxies: frozenset[str]
) -> str | None:
    """The client's address: the peer, unless the peer is a trusted proxy.

    Behind trusted proxies, ``X-Forwarded-For`` is read from the right and the
    first address that is not a trusted proxy is the client. Entries that are
    not IP addresses end the walk (they cannot be trusted).

    A Unix-socket peer (ASGI ``client=None``, WSGI ``REMOTE_ADDR`` ``''`` or
    ``'<local>'``) has no address: with ``"unix"`` among the trusted proxies
    its ``X-Forwarded-For`` is read; without, or without the header, the
    client is unknown (``None``: not counted, never one key shared by every
    client), and a warning says so once per process.
    """
    if peer is None or peer in _UNIX_PEERS:
        if UNIX_PEER not in trusted_proxies:
            _warn_unix_peer(
                "hfauth-mw: requests arrive without a peer address (over a Unix socket) and "
                "trusted_proxies does not name 'unix': the brute-force guard cannot tell "
                "clients apart and does not count them. Behind a proxy on a Unix socket "
                "(nginx, ...), pass trusted_proxies=['unix'] and have the proxy set "
                "X-Forwarded-For."
            )
            return None
        if not forwarded_for:
            _warn_unix_peer(
                "hfauth-mw: a request over the trusted Unix socket carries no "
                "X-Forwarded-For: the brute-force guard cannot tell its client apart "
                "(have the proxy set X-Forwarded-For $remote_addr or "
                "$proxy_add_x_forwarded_for)."
            )
            return None
        peer = UNIX_PEER
    else:
        peer = unmapped(peer)
    if peer not in trusted_proxies or not forwarded_for:
        return peer
    client = peer
    for part in reversed(forwarded_for.split(",")):
        hop = _hop_address(part.strip())
        if hop is None:
            # Unknown: not counted. Never the proxy's own address (every client
            # behind it would share one count, and 30 bad tokens lock out all),
            # and never "unix" itself.
            return None
        hop = unmapped(hop)
        client = hop
        if hop not in trusted_proxies:
            return hop
    return client


def _hop_address(hop: str) -> str | None:
    """The address of one ``X-Forwarded-For`` entry: ``a.b.c.d``, an IPv6
    address, or either with a port as some proxies write it (``a.b.c.d:port``,
    ``[v6]:port``, ``[v6]``); ``None`` for anything else (``unknown``, junk)."""
    if hop.startswith("["):
        hop, bracket, _ = hop[1:].partition("]")
        if not bracket:
            return None
    elif hop.count(":") == 1:  # IPv4 with a port (an IPv6 address has two or more)
        hop = hop.partition(":")[0]
    try:
        ipaddress.ip_address(hop)
    except ValueError:
        return None
    return hop


_warned: set[str] = set()


def _warn_unix_peer(message: str) -> None:
    if message not in _warned:  # once per process each; a race may log it twice
        _warned.add(message)
        logger.warning(message, extra={"hfauth_event": "unix_peer"})


def unmapped(address: str) -> str:
    """One spelling per address: an IPv6 address in its canonical form, and an
    IPv4 address as itself, also when a dual-stack socket reports it IPv4-mapped
    (``::ffff:a.b.c.d`` or ``::ffff:a00:1``, uvicorn with ``--host ::``)."""
    if ":" not in address:
        return address
    try:
        parsed = ipaddress.IPv6Address(address)
    except ValueError:
        return address
    return str(parsed.ipv4_mapped or parsed)


def _client_key(client: str) -> str:
    """What the brute-force guard counts: an IPv4 address, or an IPv6 /64 (one
    subscriber's allocation, so rotating addresses inside it does not escape).
    An IPv4 client counts as itself even when reported IPv4-mapped: as part of
    ``::ffff:0:0/64`` every IPv4 client would share one count."""
    client = unmapped(client)
    if ":" not in client:
        return client
    try:
        address = ipaddress.IPv6Address(client)
    except ValueError:
        return client
    if address in _NAT64:  # an IPv4 client through NAT64: itself, not one /64 for all
        return str(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return str(ipaddress.IPv6Network((address, 64), strict=False))


#: The well-known NAT64 prefix (RFC 6052): the IPv4 address is the last 32 bits.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class FailureLimiter:
    """Per-client limit on failed authentications (the brute-force guard).

    A client with ``max_failures`` failed authentications (bad or malformed
    credentials) within ``window`` seconds gets 429 with ``Retry-After`` until
    the window ends, whatever it sends. At most ``maxsize`` clients are
    tracked (the oldest are forgotten first), so memory stays bounded under a
    flood from many addresses.

    IPv6 clients are counted per /64. Defaults: 30 failures per 60 s, 10,000
    clients. Behind a reverse proxy, every client has the proxy's address
    unless ``trusted_proxies`` names it: set it, or one sprayer can lock out
    everyone behind the proxy. A proxy on a Unix socket is ``"unix"``.

    Counts are per process (per worker) unless the authenticator has a
    shared tier (Redis): then see :class:`~hfauth_mw._shared_tier.SharedFailureLimiter`.
    """

    def __init__(
        self,
        *,
        max_failures: int = 30,
        window: float = 60.0,
        maxsize: int = 10_000,
        trusted_proxies: Iterable[str] = (),
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_failures < 1 or window <= 0 or maxsize < 1:
            raise ConfigurationError("max_failures and maxsize must be at least 1, window positive")
        if isinstance(trusted_proxies, str):
            trusted_proxies = [trusted_proxies]  # one address, not its characters
        proxies = set()
        for proxy in trusted_proxies:
            if proxy == UNIX_PEER:
                proxies.add(UNIX_PEER)
                continue
            try:
                if not isinstance(proxy, str):
                    raise ValueError
                canonical = str(ipaddress.ip_address(proxy))
            except ValueError:
                raise ConfigurationError(
                    f"trusted proxy {proxy!r} is not an IP address (or 'unix', the peer "
                    "of a Unix socket)"
                ) from None
            proxies.add(unmapped(canonical))
        self.max_failures = max_failures
        self.window = window
        self.trusted_proxies = frozenset(proxies)
        self.timer = timer
        # Each client's first failure in a window opens its entry; the entry
        # (and its count) expires with the window.
        #: Locked-out clients (client key -> end of lockout): a plain dict that
        #: every request reads without the lock (read only; empty most of the time).
        self._counts: TTLCache[str, list[float]] = TTLCache(maxsize, window, timer)
        self.lockouts: dict[str, float] = {}
        self._maxsize = maxsize
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def __repr__(self) -> str:
        return f"FailureLimiter(max_failures={self.max_failures}, window={self.window:g})"

    def check(self, client: str | None) -> None:
        """Raise TooManyFailures if ``client`` is locked out."""
        if client is None or not self.lockouts:
            return
        client = _client_key(client)
        until = self.lockouts.get(client)
        if until is None:
            return
        remaining = until - self.timer()
        if remaining <= 0:
            with self._lock:
                if self.lockouts.get(client) == until:
                    del self.lockouts[client]
            return
        raise TooManyFailures(
            "Too many failed authentications from this client; try again later",
            max(1, math.ceil(remaining)),
        )

    def locking_out(self) -> bool:
        """Whether any client may be locked out now: while none is, :meth:`check`
        has nothing to do and callers may skip resolving the client's address.
        Lock-free; once a second it forgets lockouts that have ended."""
        if not self.lockouts:
            return False
        now = self.timer()
        if now >= self._next_sweep:
            with self._lock:
                self._next_sweep = now + 1.0
                self._forget_ended_lockouts(now)
        return bool(self.lockouts)

    def failed(self, client: str | None) -> None:
        if client is None:
            return
        client = _client_key(client)
        with self._lock:
            now = self.timer()
            entry = self._counts.get(client)
            if entry is None:
                entry = self._counts[client] = [0, now]
            entry[0] += 1
            if entry[0] >= self.max_failures:
                if len(self.lockouts) >= self._maxsize:
                    self._make_room_for_lockout(now)
                self.lockouts[client] = entry[1] + self.window

    def _forget_ended_lockouts(self, now: float) -> None:
        ended = [client for client, until in self.lockouts.items() if until <= now]
        for client in ended:
            del self.lockouts[client]

    def _make_room_for_lockout(self, now: float) -> None:
        self._forget_ended_lockouts(now)
        if len(self.lockouts) >= self._maxsize:
            # Still full of live lockouts: drop the oldest (dicts keep insertion order).
            del self.lockouts[next(iter(self.lockouts))]
