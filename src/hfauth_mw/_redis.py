"""The Redis backend of the shared cache tier (redis-py, sync and asyncio).

It only translates the work items of :mod:`hfauth_mw._shared` into Redis
calls (one Lua script each, so every step is one round trip and atomic) and
reports any Redis trouble as :class:`~hfauth_mw._shared.SharedDown`; every
decision stays in :meth:`~hfauth_mw.Authenticator.flow`.

Every call has an explicit socket timeout (default 100 ms, connecting
included), no retries, and a bounded connection pool that fails rather than
queues for long. The revocation subscriber is one daemon thread per process,
started lazily, reconnecting with capped exponential back-off.

Security caveat: a ``redis://`` URL sends everything, the password included,
in clear text; use ``rediss://`` when Redis is not on the same host. The URL's
password never appears in ``repr`` or logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from ._exceptions import ConfigurationError
from ._shared import (
    CLAIM_HIT,
    CLAIM_LEAD,
    CLAIM_WAIT,
    SharedClaim,
    SharedDown,
    SharedOp,
    SharedRelease,
    SharedRevoke,
    SharedStore,
)

try:
    import redis
    import redis.asyncio as aioredis
    from redis.backoff import NoBackoff
    from redis.retry import Retry
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ConfigurationError(
        "the shared cache needs redis-py: pip install 'hfauth-mw[redis]'"
    ) from exc

__all__ = ["RedisBackend", "masked_url"]

logger = logging.getLogger("hfauth_mw.shared")

# KEYS: entry, lock, tomb. ARGV: owner, lock ms.
# A valid answer under a tombstone is not a hit; an invalid one still is.
_CLAIM = """
local value = redis.call('GET', KEYS[1])
if value and (string.sub(value, 1, 1) == '-' or redis.call('EXISTS', KEYS[3]) == 0) then
  return {1, value}
end
if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
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
_SCRIPTS = {"claim": _CLAIM, "store": _STORE, "release": _RELEASE, "revoke": _REVOKE}

_MAX_BATCH = 1000  # revocation tags handled per scan of the in-process caches
_BACKOFF_START, _BACKOFF_CAP = 0.1, 5.0


def masked_url(url: str) -> str:
    """``url`` with any password replaced by ``***``: in the authority and in the
    query string (redis-py reads ``?password=``, the only way for ``unix://``)."""
    parts = urlsplit(url)
    if parts.password is not None:
        user = parts.username or ""
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
        parts = parts._replace(netloc=f"{user}:***@{host}{port}")
    if parts.query:
        query = [
            (key, "***" if key.lower() == "password" else value)
            for key, value in parse_qsl(parts.query, keep_blank_values=True)
        ]
        parts = parts._replace(query=urlencode(query, safe="*"))
    return urlunsplit(parts)


def _args(op: SharedOp) -> tuple[str, list[str], list[str | int | bytes]]:
    if isinstance(op, SharedClaim):
        keys = op.keys
        return "claim", [keys.entry, keys.lock, keys.tomb], [op.owner, op.lock_ms]
    if isinstance(op, SharedStore):
        keys = op.keys
        return "store", [keys.entry, keys.lock, keys.tomb], [op.owner, op.value, op.ttl_ms]
    if isinstance(op, SharedRelease):
        return "release", [op.keys.lock], [op.owner]
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
    return None


def _down(exc: BaseException) -> SharedDown:
    # The class name only: messages can quote the server's reply.
    return SharedDown(type(exc).__name__)


class _AsyncHandle:
    def __init__(self, client: aioredis.Redis, scripts: dict[str, Any]) -> None:
        self.client = client
        self.scripts = scripts


class RedisBackend:
    """Runs shared-cache work items on the Redis at ``url``.

    ``socket_timeout`` bounds each call (connect, send, read);
    ``max_connections`` bounds each pool (one sync pool per process, one async
    pool per event loop); a call that finds the pool empty waits at most
    ``socket_timeout`` too. The subscriber connection reads with a longer
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
        if not isinstance(url, str) or urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError("the Redis URL must start with redis://, rediss:// or unix://")
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
        try:
            self._sync = redis.Redis(connection_pool=self._pool(redis.BlockingConnectionPool))
        except ValueError as exc:
            raise ConfigurationError(f"bad Redis URL {self._describe}: {exc}") from None
        self._sync_scripts = {
            name: self._sync.register_script(lua) for name, lua in _SCRIPTS.items()
        }
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _AsyncHandle] = (
            weakref.WeakKeyDictionary()
        )
        self._thread: threading.Thread | None = None
        self._thread_pid: int | None = None
        self._stop = threading.Event()
        self._subscribed = threading.Event()
        self._thread_lock = threading.Lock()

    def _connection_options(self) -> dict[str, Any]:
        return {
            "socket_timeout": self.socket_timeout,
            "socket_connect_timeout": self.socket_timeout,
            "retry": Retry(NoBackoff(), 0),
            "client_name": "hfauth-mw",
        }

    def _pool(self, pool_class: Any) -> Any:
        return pool_class.from_url(
            self._url,
            max_connections=self.max_connections,
            timeout=self.socket_timeout,
            **self._connection_options(),
        )

    def describe(self) -> str:
        return self._describe

    def __repr__(self) -> str:
        return f"RedisBackend({self._describe!r})"

    # --- calls --------------------------------------------------------------------------

    def execute(self, op: SharedOp) -> object:
        name, keys, args = _args(op)
        try:
            return _result(op, self._sync_scripts[name](keys=keys, args=args))
        except (redis.RedisError, OSError, IndexError, TypeError, ValueError) as exc:
            return _down(exc)

    def _async_handle(self) -> _AsyncHandle:
        loop = asyncio.get_running_loop()
        handle = self._async.get(loop)
        if handle is None:
            client = aioredis.Redis(connection_pool=self._pool(aioredis.BlockingConnectionPool))
            scripts = {name: client.register_script(lua) for name, lua in _SCRIPTS.items()}
            handle = _AsyncHandle(client, scripts)
            self._async[loop] = handle
        return handle

    async def execute_async(self, op: SharedOp) -> object:
        name, keys, args = _args(op)
        try:
            handle = self._async_handle()
            return _result(op, await handle.scripts[name](keys=keys, args=args))
        except (redis.RedisError, OSError, IndexError, TypeError, ValueError) as exc:
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
            try:
                client = redis.Redis.from_url(
                    self._url,
                    socket_timeout=self.subscriber_timeout,
                    socket_connect_timeout=max(self.socket_timeout, 1.0),
                    health_check_interval=self.health_check_interval,
                    retry=Retry(NoBackoff(), 0),
                    client_name="hfauth-mw-revocations",
                )
                pubsub = client.pubsub()  # type: ignore[no-untyped-call]
                pubsub.subscribe(channel)
                while not stop.is_set():
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
            except (redis.RedisError, OSError, ValueError) as exc:
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
                for closable in (pubsub, client):
                    if closable is not None:
                        with contextlib.suppress(redis.RedisError, OSError):
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
        self._sync.connection_pool.disconnect()

    async def aclose(self) -> None:
        """Close the current event loop's pool."""
        handle = self._async.pop(asyncio.get_running_loop(), None)
        if handle is not None:
            await handle.client.aclose()
            await handle.client.connection_pool.disconnect()
