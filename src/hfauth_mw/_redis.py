"""The Redis backend of the shared cache tier (redis-py, sync and asyncio).

It only translates the work items of :mod:`hfauth_mw._shared_tier_protocol` into
Redis calls (one Lua script each, so every step is one round trip and atomic)
and reports any Redis trouble as :class:`~hfauth_mw._shared_tier_protocol.SharedDown`;
every decision stays in :meth:`~hfauth_mw.Authenticator.flow`. It never imports
:mod:`hfauth_mw._shared_tier` (no import circle).

Three deployments, chosen by the URL's scheme:

* ``redis://``, ``rediss://``, ``unix://``: one Redis (redis-py's own URL
  format: user, password, DB number).
* ``redis+sentinel://[user:password@]host:26379[,host2:26379...]/service[/db]``
  (``rediss+sentinel://`` for TLS): the primary of ``service`` as the
  Sentinels name it; a failover is followed (new connections ask the
  Sentinels again; connections to a demoted primary are dropped). Sentinel
  credentials, if any, go in ``?sentinel_username=...&sentinel_password=...``.
* ``redis+cluster://[user:password@]host:6379[,host2:6379...]``
  (``rediss+cluster://``): a Redis Cluster (or Valkey cluster, ElastiCache or
  Memorystore in cluster mode), found from any of the seed nodes. Every key
  of one token shares a ``{hash tag}``, so each script touches one slot;
  revocations use classic PUBLISH, which a cluster delivers on every node.

Every call has an explicit socket timeout (default 100 ms, connecting
included), no retries, and a bounded connection pool that fails rather than
queues for long. Clients are built on first use, and any error while building
one is a Redis failure like any other (the request falls back to the source),
never an exception out of a request. The revocation subscriber is one daemon
thread per process, started lazily, reconnecting with capped exponential
back-off.

Security caveat: a ``redis://`` URL sends everything, the password included,
in clear text; use ``rediss://`` (or ``rediss+sentinel://``,
``rediss+cluster://``) when Redis is not on the same host. The URL's
passwords never appear in ``repr`` or logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from ._exceptions import ConfigurationError
from ._shared_tier_protocol import (
    CLAIM_HIT,
    CLAIM_LEAD,
    CLAIM_WAIT,
    SharedClaim,
    SharedCount,
    SharedDown,
    SharedOp,
    SharedRelease,
    SharedRevoke,
    SharedStore,
)

try:
    import redis
    import redis.asyncio as aioredis
    import redis.asyncio.cluster as aiocluster
    import redis.asyncio.sentinel as aiosentinel
    import redis.cluster
    import redis.sentinel
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.backoff import NoBackoff
    from redis.connection import parse_url
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ConfigurationError(
        "the shared cache needs redis-py: pip install 'hfauth-mw[redis]'"
    ) from exc

__all__ = ["RedisBackend", "RedisTarget", "masked_url", "parse_target"]

logger = logging.getLogger("hfauth_mw.shared")

# KEYS: entry, lock, tomb. ARGV: owner, lock ms.
# A valid answer under a tombstone is not a hit; an invalid one still is. A lock that
# outlives any lock_ttl allowed (60 s; processes may differ below it) or has no expiry
# was planted by someone else with access to Redis: taken over, not waited on for
# every cold lookup.
_CLAIM = """
local value = redis.call('GET', KEYS[1])
if value and (string.sub(value, 1, 1) == '-' or redis.call('EXISTS', KEYS[3]) == 0) then
  return {1, value}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {2}
end
local left = redis.call('PTTL', KEYS[2])
if left == -1 or left > 60000 then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  return {2}
end
return {0}
"""
# KEYS: entry, lock, tomb. ARGV: owner, value, ttl ms.
_STORE = """
local stored = 0
if string.sub(ARGV[2], 1, 1) == '-' or redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  stored = 1
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return stored
"""
# KEYS: lock. ARGV: owner.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
# KEYS: tomb. ARGV: tomb ms, channel, tag.
_REVOKE = """
redis.call('SET', KEYS[1], '1', 'PX', ARGV[1])
return redis.call('PUBLISH', ARGV[2], ARGV[3])
"""
# KEYS: a client's failure count. ARGV: window ms. The window starts at the first failure;
# a count given a longer life (by someone else with access to Redis) gets the window's.
_COUNT = """
local count = redis.call('INCR', KEYS[1])
local left = redis.call('PTTL', KEYS[1])
if left < 0 or left > tonumber(ARGV[1]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  left = tonumber(ARGV[1])
end
return {count, left}
"""
_SCRIPTS = {
    "claim": _CLAIM,
    "store": _STORE,
    "release": _RELEASE,
    "revoke": _REVOKE,
    "count": _COUNT,
}

_MAX_BATCH = 1000  # revocation tags handled per scan of the in-process caches
_BACKOFF_START, _BACKOFF_CAP = 0.1, 5.0


_PASSWORD_PARAMETERS = frozenset({"password", "sentinel_password"})


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: in the authority and in the
    query string (redis-py reads ``?password=``, the only way for ``unix://``;
    Sentinel URLs carry ``?sentinel_password=``). Works on multi-host URLs."""
    parts = urlsplit(url)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    if at and ":" in userinfo:
        user = userinfo.split(":", 1)[0]
        parts = parts._replace(netloc=f"{user}:***@{hosts}")
    if parts.query:
        query = [
            (key, "***" if key.lower() in _PASSWORD_PARAMETERS else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


# --- what the URL names ---------------------------------------------------------------------

_SINGLE_SCHEMES = ("redis", "rediss", "unix")
_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")
_CLUSTER_SCHEMES = ("redis+cluster", "rediss+cluster")
_SCHEMES_TEXT = (
    "redis://, rediss://, unix://, redis+sentinel:// (rediss+sentinel://) or "
    "redis+cluster:// (rediss+cluster://)"
)
#: Query parameters of the Sentinel and Cluster URLs (anything else is a mistake).
_TOPOLOGY_PARAMETERS = {
    "sentinel": frozenset({"sentinel_username", "sentinel_password", "ssl_ca_certs"}),
    "cluster": frozenset({"ssl_ca_certs"}),
}


@dataclass(frozen=True)
class RedisTarget:
    """Where the shared tier's Redis is: one server, a Sentinel service or a cluster."""

    kind: str  # "single", "sentinel" or "cluster"
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    tls: bool = False
    username: str | None = None
    password: str | None = None
    options: dict[str, str] = field(default_factory=dict)


def _host_port(text: str, default_port: int, url: str) -> tuple[str, int]:
    host, port = text, default_port
    if text.startswith("["):  # [IPv6]:port
        closing = text.find("]")
        host, rest = text[1:closing], text[closing + 1 :]
        if rest.startswith(":"):
            port = _port(rest[1:], url)
    elif ":" in text:
        host, _, number = text.rpartition(":")
        port = _port(number, url)
    if not host:
        raise ConfigurationError(f"the Redis URL {masked_url(url)} names a node without a host")
    return host, port


def _port(text: str, url: str) -> int:
    if not text.isascii() or not text.isdigit() or not 0 < int(text) < 65536:
        raise ConfigurationError(f"the Redis URL {masked_url(url)} has a bad port")
    return int(text)


def parse_target(url: str) -> RedisTarget:
    """Read a shared-tier URL; :class:`ConfigurationError` (password masked) if it is wrong."""
    if not isinstance(url, str):
        raise ConfigurationError(f"the Redis URL must start with {_SCHEMES_TEXT}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in _SINGLE_SCHEMES:
        try:
            parse_url(url)  # type: ignore[no-untyped-call]  # redis-py's own reading, so that a bad URL fails at start-up
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {masked_url(url)}: {exc}") from None
        return RedisTarget("single", url)
    if scheme in _SENTINEL_SCHEMES:
        kind, default_port = "sentinel", 26379
    elif scheme in _CLUSTER_SCHEMES:
        kind, default_port = "cluster", 6379
    else:
        raise ConfigurationError(f"the Redis URL must start with {_SCHEMES_TEXT}")
    userinfo, at, hosts = parts.netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_host_port(text, default_port, url) for text in hosts.split(",") if text)
    if not nodes:
        raise ConfigurationError(f"the Redis URL {masked_url(url)} names no {kind} node")
    options = dict(parse_qsl(parts.query, keep_blank_values=True))
    unknown = sorted(set(options) - _TOPOLOGY_PARAMETERS[kind])
    if unknown:
        raise ConfigurationError(
            f"the Redis URL {masked_url(url)} has unknown parameters {unknown}; "
            f"{kind} URLs accept {sorted(_TOPOLOGY_PARAMETERS[kind])}"
        )
    path = [segment for segment in parts.path.split("/") if segment]
    service, db = "", 0
    if kind == "sentinel":
        if not path or len(path) > 2:
            raise ConfigurationError(
                f"the Sentinel URL {masked_url(url)} must name the service: "
                "redis+sentinel://host:26379/<service>[/<db>]"
            )
        service = unquote(path[0])
        if len(path) == 2:
            db = _db(path[1], url)
    elif path and path != ["0"]:
        raise ConfigurationError(
            f"the cluster URL {masked_url(url)} names a database: a Redis Cluster has only DB 0"
        )
    return RedisTarget(
        kind,
        url,
        nodes=nodes,
        service=service,
        db=db,
        tls=scheme.startswith("rediss"),
        username=username,
        password=password,
        options=options,
    )


def _db(text: str, url: str) -> int:
    if not text.isascii() or not text.isdigit():
        raise ConfigurationError(f"the Redis URL {masked_url(url)} has a bad DB number")
    return int(text)


def _args(op: SharedOp) -> tuple[str, list[str], list[str | int | bytes]]:
    if isinstance(op, SharedClaim):
        keys = op.keys
        return "claim", [keys.entry, keys.lock, keys.tomb], [op.owner, op.lock_ms]
    if isinstance(op, SharedStore):
        keys = op.keys
        return "store", [keys.entry, keys.lock, keys.tomb], [op.owner, op.value, op.ttl_ms]
    if isinstance(op, SharedRelease):
        return "release", [op.keys.lock], [op.owner]
    if isinstance(op, SharedCount):
        return "count", [op.key], [op.window_ms]
    return "revoke", [op.tomb], [op.tomb_ms, op.channel, op.tag]


def _result(op: SharedOp, raw: Any) -> object:
    if isinstance(op, SharedClaim):
        state = int(raw[0])
        if state == CLAIM_HIT:
            return CLAIM_HIT, bytes(raw[1])
        return (CLAIM_LEAD if state == CLAIM_LEAD else CLAIM_WAIT), None
    if isinstance(op, SharedStore):
        return bool(raw)
    if isinstance(op, SharedRevoke):
        return int(raw)
    if isinstance(op, SharedCount):
        return int(raw[0]), int(raw[1])
    return None


def _down(exc: BaseException) -> SharedDown:
    # The class name only: messages can quote the server's reply.
    return SharedDown(type(exc).__name__)


class _AsyncHandle:
    def __init__(self, client: Any, scripts: dict[str, Any], closers: list[Any]) -> None:
        self.client = client
        self.scripts = scripts
        self.closers = closers  # the Sentinel connections, for a Sentinel target


class RedisBackend:
    """Runs shared-cache work items on the Redis at ``url`` (see the module
    docstring for the three kinds of URL).

    ``socket_timeout`` bounds each call (connect, send, read);
    ``max_connections`` bounds each pool (one sync pool per process, one async
    pool per event loop; per node for a cluster); a call that finds the pool
    empty waits at most ``socket_timeout`` too (a Sentinel or cluster pool
    fails at once instead). The subscriber connection reads with a longer
    ``subscriber_timeout`` and pings every ``health_check_interval`` seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        socket_timeout: float = 0.1,
        max_connections: int = 32,
        subscriber_timeout: float = 5.0,
        health_check_interval: int = 5,
    ) -> None:
        self.target = parse_target(url)
        if not 0 < socket_timeout <= 5:
            raise ConfigurationError("socket_timeout must be between 0 and 5 seconds")
        if max_connections < 1:
            raise ConfigurationError("max_connections must be at least 1")
        self._url = url
        self._describe = masked_url(url)
        self.socket_timeout = socket_timeout
        self.max_connections = max_connections
        self.subscriber_timeout = subscriber_timeout
        self.health_check_interval = health_check_interval
        self._sync: Any = None
        self._sync_scripts: dict[str, Any] = {}
        self._sync_closers: list[Any] = []
        self._sync_lock = threading.Lock()
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncHandle] = (
            weakref.WeakKeyDictionary()
        )
        self._thread: threading.Thread | None = None
        self._thread_pid: int | None = None
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread_lock = threading.Lock()

    @property
    def kind(self) -> str:
        """``single``, ``sentinel`` or ``cluster``."""
        return self.target.kind

    def describe(self) -> str:
        return self._describe

    def __repr__(self) -> str:
        return f"RedisBackend({self._describe!r})"

    # --- building clients ---------------------------------------------------------------

    def _options(self, *, asynchronous: bool, timeout: float, name: str) -> dict[str, Any]:
        """Per-connection options: bounded, no retries (the breaker decides), and the
        retry object of the client's own flavour (redis-py warns when an asyncio
        client gets the sync one, and that warning is an error under -W error)."""
        retry = AsyncRetry(NoBackoff(), 0) if asynchronous else Retry(NoBackoff(), 0)
        options: dict[str, Any] = {
            "socket_timeout": timeout,
            "socket_connect_timeout": max(self.socket_timeout, min(timeout, 1.0)),
            "retry": retry,
            "client_name": name,
        }
        target = self.target
        if target.kind != "single":
            if target.username is not None:
                options["username"] = target.username
            if target.password is not None:
                options["password"] = target.password
            if target.tls:
                options["ssl"] = True
                if "ssl_ca_certs" in target.options:
                    options["ssl_ca_certs"] = target.options["ssl_ca_certs"]
        return options

    def _sentinel(self, module: Any, options: dict[str, Any]) -> Any:
        target = self.target
        sentinel_options = {
            key: value
            for key, value in options.items()
            if key in ("socket_timeout", "socket_connect_timeout", "retry", "ssl", "ssl_ca_certs")
        }
        # The Sentinels have their own credentials (often none), never the data nodes'.
        if "sentinel_username" in target.options:
            sentinel_options["username"] = target.options["sentinel_username"]
        if "sentinel_password" in target.options:
            sentinel_options["password"] = target.options["sentinel_password"]
        return module.Sentinel(list(target.nodes), sentinel_kwargs=sentinel_options, **options)

    def _build(self, *, asynchronous: bool, timeout: float, name: str, pooled: bool) -> Any:
        """A client of the target: returns ``(client, closers)``."""
        target = self.target
        options = self._options(asynchronous=asynchronous, timeout=timeout, name=name)
        if not pooled:  # the subscriber's one long-lived connection
            options["health_check_interval"] = self.health_check_interval
        if target.kind == "single":
            if not pooled:
                return (aioredis if asynchronous else redis).Redis.from_url(
                    self._url, **options
                ), []
            pool_class = (
                aioredis.BlockingConnectionPool if asynchronous else redis.BlockingConnectionPool
            )
            pool = pool_class.from_url(
                self._url,
                max_connections=self.max_connections,
                timeout=self.socket_timeout,
                **options,
            )
            return (aioredis if asynchronous else redis).Redis(connection_pool=pool), []
        if target.kind == "sentinel":
            module = aiosentinel if asynchronous else redis.sentinel
            sentinel = self._sentinel(module, options)
            extra = {"max_connections": self.max_connections} if pooled else {}
            client = sentinel.master_for(
                target.service,
                redis_class=aioredis.Redis if asynchronous else redis.Redis,
                db=target.db,
                **extra,
            )
            return client, list(sentinel.sentinels)
        module = aiocluster if asynchronous else redis.cluster
        nodes = [module.ClusterNode(host, port) for host, port in target.nodes]
        if pooled:
            options["max_connections"] = self.max_connections
        # A dead node's slots are a Redis failure (fallback), not a reason to wait.
        options["require_full_coverage"] = False
        return module.RedisCluster(startup_nodes=nodes, **options), []

    def _sync_client(self) -> tuple[Any, dict[str, Any]]:
        if self._sync is None:
            with self._sync_lock:
                if self._sync is None:
                    client, closers = self._build(
                        asynchronous=False,
                        timeout=self.socket_timeout,
                        name="hfauth-mw",
                        pooled=True,
                    )
                    self._sync_scripts = {
                        name: client.register_script(lua) for name, lua in _SCRIPTS.items()
                    }
                    self._sync_closers = closers
                    self._sync = client
        return self._sync, self._sync_scripts

    def _async_handle(self) -> _AsyncHandle:
        loop = asyncio.get_running_loop()
        handle = self._async.get(loop)
        if handle is None:
            client, closers = self._build(
                asynchronous=True, timeout=self.socket_timeout, name="hfauth-mw", pooled=True
            )
            scripts = {name: client.register_script(lua) for name, lua in _SCRIPTS.items()}
            handle = _AsyncHandle(client, scripts, closers)
            self._async[loop] = handle
        return handle

    # --- calls --------------------------------------------------------------------------

    def execute(self, op: SharedOp) -> object:
        name, keys, args = _args(op)
        try:
            client, scripts = self._sync_client()
            result = _result(op, scripts[name](keys=keys, args=args))
            if isinstance(op, SharedRevoke) and self.kind == "cluster":
                # PUBLISH counts the listeners of one node; a cluster delivers to all.
                result = _numsub(client.pubsub_numsub(op.channel, target_nodes="all"))
            return result
        except Exception as exc:
            # redis-py raises RedisError, OSError, RedisClusterException (not a
            # RedisError) and, while building a client, anything: none of it may
            # fail a request that the source can still decide.
            return _down(exc)

    async def execute_async(self, op: SharedOp) -> object:
        name, keys, args = _args(op)
        try:
            handle = self._async_handle()
            result = _result(op, await handle.scripts[name](keys=keys, args=args))
            if isinstance(op, SharedRevoke) and self.kind == "cluster":
                result = _numsub(await handle.client.pubsub_numsub(op.channel, target_nodes="all"))
            return result
        except Exception as exc:
            return _down(exc)

    # --- the revocation subscriber ------------------------------------------------------

    def start_subscriber(
        self,
        channel: str,
        on_tags: Callable[[list[str]], None],
        on_subscribed: Callable[[bool], None],
    ) -> None:
        with self._thread_lock:
            pid = os.getpid()
            if self._thread is not None and self._thread_pid == pid and self._thread.is_alive():
                return
            self._stop = threading.Event()
            self._subscribed = threading.Event()
            thread = threading.Thread(
                target=self._listen,
                args=(channel, on_tags, on_subscribed, self._stop, self._subscribed),
                name="hfauth-mw-revocations",
                daemon=True,
            )
            self._thread, self._thread_pid = thread, pid
            thread.start()

    def wait_subscribed(self, timeout: float) -> bool:
        return self._subscribed.wait(timeout)

    def _subscriber_client(self) -> tuple[Any, list[Any], Callable[[], bool] | None]:
        """The listener's client, what to close with it, and (Sentinel only) a check
        that the primary it listens on is still the primary."""
        client, closers = self._build(
            asynchronous=False,
            timeout=self.subscriber_timeout,
            name="hfauth-mw-revocations",
            pooled=False,
        )
        if self.kind != "sentinel":
            return client, closers, None
        # A demoted primary may keep our subscription open while the new primary's
        # PUBLISHes never reach it: follow the Sentinels' answer instead.
        manager = client.connection_pool.sentinel_manager
        service = self.target.service
        listening_on = manager.discover_master(service)
        return client, closers, lambda: bool(manager.discover_master(service) == listening_on)

    def _listen(
        self,
        channel: str,
        on_tags: Callable[[list[str]], None],
        on_subscribed: Callable[[bool], None],
        stop: threading.Event,
        subscribed: threading.Event,
    ) -> None:
        backoff = _BACKOFF_START
        ever_subscribed = False
        while not stop.is_set():
            client = None
            pubsub = None
            closers: list[Any] = []
            try:
                client, closers, same_primary = self._subscriber_client()
                pubsub = client.pubsub()
                pubsub.subscribe(channel)
                next_check = time.monotonic() + self.health_check_interval
                while not stop.is_set():
                    if same_primary is not None and time.monotonic() >= next_check:
                        next_check = time.monotonic() + self.health_check_interval
                        if not same_primary():
                            # Resubscribing empties the in-process caches: nothing
                            # published to the new primary meanwhile is missed.
                            raise redis.ConnectionError("the Sentinels named a new primary")
                    message = pubsub.get_message(timeout=0.25)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        on_subscribed(ever_subscribed)
                        ever_subscribed = True
                        backoff = _BACKOFF_START
                        subscribed.set()
                        continue
                    if message["type"] != "message":
                        continue
                    tags = [message["data"]]
                    while len(tags) < _MAX_BATCH:
                        more = pubsub.get_message(timeout=0.0)
                        if more is None:
                            break
                        if more["type"] == "message":
                            tags.append(more["data"])
                    on_tags([tag.decode("ascii", "replace") for tag in tags])
            except (redis.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
                subscribed.clear()
                if not stop.is_set():
                    logger.warning(
                        "revocation channel lost (%s); reconnecting in %.1f s",
                        type(exc).__name__,
                        backoff,
                        extra={"hfauth_event": "revocation_channel_lost"},
                    )
            except Exception:  # a bug in a callback must not end the listener
                subscribed.clear()
                logger.exception("revocation listener failed; restarting it")
            finally:
                for closable in (pubsub, client, *closers):
                    if closable is not None:
                        with contextlib.suppress(Exception):
                            closable.close()
            stop.wait(backoff)
            backoff = min(backoff * 2, _BACKOFF_CAP)

    # --- closing ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the subscriber (waits up to 2 s) and close the sync pool. Idempotent."""
        with self._thread_lock:
            thread, self._thread = self._thread, None
            self._stop.set()
            self._subscribed.clear()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=2.0)
        with self._sync_lock:
            client, self._sync = self._sync, None
            closers, self._sync_closers = self._sync_closers, []
        for closable in (client, *closers):
            if closable is not None:
                with contextlib.suppress(Exception):
                    closable.close()

    async def aclose(self) -> None:
        """Close the current event loop's pool."""
        handle = self._async.pop(asyncio.get_running_loop(), None)
        if handle is not None:
            for closable in (handle.client, *handle.closers):
                with contextlib.suppress(Exception):
                    await closable.aclose()
            pool = getattr(handle.client, "connection_pool", None)
            if pool is not None:
                with contextlib.suppress(Exception):
                    await pool.disconnect()


def _numsub(answer: Any) -> int:
    """The subscriber count of one channel from PUBSUB NUMSUB (a list of pairs)."""
    if isinstance(answer, dict):  # some redis-py versions answer per node
        return sum(_numsub(value) for value in answer.values())
    return sum(int(count) for _, count in answer)
