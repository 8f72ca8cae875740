"""The shared cache tier, sans-IO: work items, keys, signed values, revocation.

Several processes (workers of one server, replicas on several hosts) share
introspection answers through a store, today Redis (:mod:`hfauth_mw._redis`:
one server, a Sentinel service or a Redis Cluster), behind the small protocol
of :mod:`hfauth_mw._shared_tier_protocol`.
Everything that decides lives here and in
:meth:`~hfauth_mw.Authenticator.flow`; the store's backend only runs the work
items below and reports failures as :class:`SharedDown`.

What is kept where, and why:

* **Keys** are ``{prefix}:{<tag>}:<source>:<id>`` where ``id`` is
  HMAC-SHA256(secret-derived key, source name + SHA-256(token)) and ``tag`` is
  a keyed hash of the token's 12-digit fingerprint (the ``{...}`` hash tag
  keeps all keys of one token in one Redis Cluster slot). Neither the token
  nor its plain SHA-256 is ever sent to Redis, so a Redis dump cannot be
  matched against a list of leaked-token hashes without the secret.
* **Values** are ``+`` (valid) or ``-`` (invalid), then an HMAC-SHA256 over
  the key and the body, then a JSON body holding the principal in the
  whoami-v2 shape (read back by the same parser as the Hub's answers) and an
  absolute expiry. A value that fails the check, does not parse or has
  expired is ignored. Someone who can write to Redis but lacks the secret
  cannot forge a principal or move one to another token; they can delete
  entries (the source is then asked again).
* **TTL**: the same rules as the in-process cache: positive answers for the
  cache's ``ttl`` capped by the token's expiry, negative answers for
  ``negative_ttl``, "unavailable" never.
* **Single flight**: one round trip either reads the answer or takes a
  ``SET NX PX`` lock for the token; the lock holder introspects and writes the
  answer (releasing the lock); the others poll for it with bounded back-off.
  A lock lives ``lock_ttl`` seconds (default: the source's own wait bound),
  so a crashed leader delays the others by at most that long; then one of
  them takes over.
* **Repository decisions** (the hub's auth-check answers, see
  :mod:`hfauth_mw._authority`) live next to the token's answer, under
  ``<token entry>:repo:<id>`` where ``id`` is a keyed hash of the token, the
  repository (type and id) and the access: same hash tag, same tombstone,
  values signed the same way (:meth:`SharedCache.encode_decision`). Positive
  decisions 60 s capped by the token's expiry, negative ones 10 s.
* **Revocation**: :meth:`SharedCache.revoke_fingerprint` (through
  :meth:`Authenticator.revoke <hfauth_mw.Authenticator.revoke>`) sets a tombstone on the token's
  tag (positive answers for it, and its positive repository decisions, are
  then neither read nor written by any process for ``revocation_ttl``) and
  publishes the tag; each process's subscriber thread drops matching
  in-process entries (token answers and repository decisions). A process whose
  subscription broke drops its whole in-process cache when it reconnects,
  because it may have missed revocations.

Security caveats, stated plainly: Redis then holds the principals (user and
org names, e-mail addresses, token names and permissions) for up to the TTL:
give it a password or ACL user, TLS (``rediss://``) when it leaves the host,
and no public interface. The secret protects keys and values; anyone who holds
it and can reach Redis can mint principals. Rotate it by deploying a new one
everywhere (the old entries are then ignored and expire).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Generator, Mapping
from dataclasses import replace
from typing import Any, Protocol

from ._breaker_limiter import FailureLimiter, UpstreamBreaker, _client_key
from ._cache import MAX_TTL
from ._exceptions import ConfigurationError, HFAuthError, MalformedAnswer, SourceUnavailable
from ._principal import (
    FINGERPRINT_LENGTH,
    Principal,
    fingerprint_of,
    principal_as_whoami,
    principal_from_whoami,
)
from ._rules import Decision
from ._shared_tier_protocol import (
    CLAIM_HIT,
    CLAIM_LEAD,
    CLAIM_WAIT,
    Pause,
    SharedBackend,
    SharedClaim,
    SharedCount,
    SharedDown,
    SharedKeys,
    SharedOp,
    SharedRelease,
    SharedRevoke,
    SharedStore,
)
from ._source_protocol import Invalid, Outcome, Valid

__all__ = [
    "CLAIM_HIT",
    "CLAIM_LEAD",
    "CLAIM_WAIT",
    "MIN_SECRET_BYTES",
    "Pause",
    "RevocationBroadcast",
    "SharedBackend",
    "SharedCache",
    "SharedCacheUnavailable",
    "SharedClaim",
    "SharedCount",
    "SharedDown",
    "SharedFailureLimiter",
    "SharedKeys",
    "SharedOp",
    "SharedRelease",
    "SharedRevoke",
    "SharedStore",
    "claim",
    "principal_to_whoami",
    "revocation_broadcaster",
]

logger = logging.getLogger("hfauth_mw.shared")

#: A deployment secret shorter than this is refused (it keys every HMAC).
MIN_SECRET_BYTES = 16
_VALUE_VERSION = 1
_MAC_BYTES = 32
_TAG_HEX = 32
_POSITIVE, _NEGATIVE = b"+", b"-"
_DIGEST_BYTES = 32  # a SHA-256 digest, the start of every in-process key after the namespace
_DECIDERS = ("hub", "local")


class Droppable(Protocol):
    """An in-process cache that revocations reach (:class:`~hfauth_mw.TokenCache`,
    :class:`~hfauth_mw._authority.DecisionCache`): keys are a namespace, then
    the token's SHA-256 digest, then anything."""

    def drop_matching(self, predicate: Callable[[bytes], bool]) -> int: ...

    def clear(self) -> None: ...

    def __len__(self) -> int: ...


class SharedCacheUnavailable(HFAuthError):
    """The shared cache (Redis) could not be reached for an explicit operation
    such as a revocation broadcast. Request handling never raises this: it
    falls back to the in-process cache and the source."""


# --- the principal in the whoami-v2 shape ---------------------------------------------------


def principal_to_whoami(principal: Principal) -> dict[str, Any]:
    """The principal as a whoami-v2 answer, so that one parser
    (:func:`~hfauth_mw.principal_from_whoami`) reads it back: the writer next
    to that parser (:func:`~hfauth_mw._principal.principal_as_whoami`), which
    keeps every fact that can refuse access. Fields whoami-v2 does not have
    (``source``, ``oauth_scopes``) go under ``hfauth``. The token fingerprint
    is left out (it is a prefix of the token's plain SHA-256)."""
    answer = principal_as_whoami(principal)
    answer["hfauth"] = {"source": principal.source, "oauthScopes": sorted(principal.oauth_scopes)}
    return answer


def _principal_from_value(answer: Mapping[str, Any], fingerprint: str) -> Principal:
    extra = answer.get("hfauth") or {}
    if not isinstance(extra, Mapping):
        raise MalformedAnswer("hfauth is not an object")
    source = extra.get("source", "")
    scopes = extra.get("oauthScopes", [])
    if not isinstance(source, str) or not isinstance(scopes, list):
        raise MalformedAnswer("hfauth has the wrong shape")
    if not all(isinstance(scope, str) for scope in scopes):
        raise MalformedAnswer("hfauth.oauthScopes holds a non-string")
    principal = principal_from_whoami(answer, fingerprint=fingerprint, source=source)
    return replace(principal, oauth_scopes=frozenset(scopes)) if scopes else principal


# --- the shared cache -----------------------------------------------------------------------


def _secret_bytes(secret: object) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes) or not secret:
        raise ConfigurationError(
            "a shared cache needs a deployment secret (secret=...): the same random value "
            "in every process, e.g. from `python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'`, kept out of the code"
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigurationError(
            f"the shared cache secret must be at least {MIN_SECRET_BYTES} bytes long"
        )
    return secret


class SharedCache:
    """The shared cache tier (Redis), for many workers and many replicas.

    Build one per process with :meth:`from_url` and give it to every
    :class:`~hfauth_mw.Authenticator` of the process
    (``Authenticator(source, shared=shared)``). It is off unless you do.

    ``secret`` (required, at least 16 bytes, the same in every process)
    keys every Redis key and signs every value; it is never stored on this
    object (only keys derived from it) and is masked in ``repr``.
    ``prefix`` namespaces keys and the revocation channel: deployments that
    must not share answers need different prefixes or different secrets.
    ``lock_ttl`` bounds how long a cold token's lock lives (default: the
    source's own wait bound). ``poll_interval``/``max_poll_interval``: how
    often waiters look for the leader's answer (doubling). ``revocation_ttl``:
    how long a revoked token's positive answers stay out of the shared tier
    (default and least one hour, the longest TTL allowed, so that no answer
    stored before the revocation outlives it). The ``breaker`` (default: 3
    failures in a row open it for 5 s, at most 64 concurrent calls) keeps
    requests from waiting on a dead or slow Redis: they use the in-process
    cache and the source directly.
    """

    def __init__(
        self,
        backend: SharedBackend,
        *,
        secret: str | bytes,
        prefix: str = "hfauth",
        lock_ttl: float | None = None,
        poll_interval: float = 0.005,
        max_poll_interval: float = 0.1,
        revocation_ttl: float = MAX_TTL,
        breaker: UpstreamBreaker | None = None,
        timer: Callable[[], float] = time.monotonic,
    ) -> None:
        key = _secret_bytes(secret)
        if not prefix or any(ch in prefix for ch in "{} \r\n"):
            raise ConfigurationError("prefix must be non-empty, without braces or whitespace")
        if lock_ttl is not None and not 0 < lock_ttl <= 60:
            raise ConfigurationError("lock_ttl must be between 0 and 60 seconds")
        if not 0 < poll_interval <= max_poll_interval <= 5:
            raise ConfigurationError("need 0 < poll_interval <= max_poll_interval <= 5 seconds")
        if not MAX_TTL <= revocation_ttl <= 7 * 24 * 3600:
            # A tombstone that ended before the answers it hides would bring a
            # revoked token back from Redis; no answer is stored longer than MAX_TTL.
            raise ConfigurationError(
                f"revocation_ttl must be from {MAX_TTL:g} s (the longest an answer can "
                "live in Redis) to a week"
            )
        self.backend = backend
        self.prefix = prefix
        self.lock_ttl = lock_ttl
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.revocation_ttl = revocation_ttl
        self.breaker = breaker or UpstreamBreaker(
            max_concurrent=64, failure_threshold=3, cooldown=5.0, timer=timer
        )
        self.channel = f"{prefix}:revocations"
        self._id_key = hmac.digest(key, b"hfauth-mw/v1/entry-id", "sha256")
        self._tag_key = hmac.digest(key, b"hfauth-mw/v1/revocation-tag", "sha256")
        self._mac_key = hmac.digest(key, b"hfauth-mw/v1/value-mac", "sha256")
        self._client_key = hmac.digest(key, b"hfauth-mw/v1/client-failures", "sha256")
        self._decision_key = hmac.digest(key, b"hfauth-mw/v1/repo-decision-id", "sha256")
        self._attached: list[tuple[weakref.ref[Droppable], bytes]] = []
        self._attached_lock = threading.Lock()
        self._started_pid: int | None = None
        self._start_lock = threading.Lock()
        self._received = 0
        self._dropped = 0
        self._resubscribed = 0

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        secret: str | bytes,
        socket_timeout: float = 0.1,
        max_connections: int = 32,
        **options: Any,
    ) -> SharedCache:
        """A shared cache on the Redis at ``url``: ``redis://``, ``rediss://`` or
        ``unix://`` for one server (user, password and DB number as redis-py
        reads them); ``redis+sentinel://host:26379[,host:26379...]/service[/db]``
        for the primary the Sentinels name (failover followed);
        ``redis+cluster://host:6379[,host:6379...]`` for a Redis Cluster (every
        key of a token in one slot). ``rediss+...`` for TLS. See
        ``docs/deployment.md``.

        ``socket_timeout`` (default 100 ms) bounds every Redis call, connecting
        included; ``max_connections`` bounds each connection pool. Other
        keyword arguments go to :class:`SharedCache`. Needs ``hfauth-mw[redis]``.
        """
        _secret_bytes(secret)  # fail on a missing secret before touching the network
        from ._redis import RedisBackend

        backend = RedisBackend(url, socket_timeout=socket_timeout, max_connections=max_connections)
        return cls(backend, secret=secret, **options)

    def __repr__(self) -> str:
        return (
            f"SharedCache({self.backend.describe()}, prefix={self.prefix!r}, secret='***', "
            f"breaker={self.breaker.state!r})"
        )

    # --- keys and values --------------------------------------------------------------

    def revocation_tag(self, fingerprint: str) -> str:
        """The keyed tag of a token fingerprint: published on revocation, never the fingerprint."""
        return hmac.new(self._tag_key, fingerprint.encode("ascii"), "sha256").hexdigest()[:_TAG_HEX]

    def keys(self, namespace: bytes, digest: bytes) -> SharedKeys:
        """The store keys of the token with SHA-256 ``digest`` under a source ``namespace``."""
        tag = self.revocation_tag(fingerprint_of(digest))
        token_id = hmac.new(self._id_key, namespace + digest, "sha256").hexdigest()
        source = hashlib.sha256(namespace).hexdigest()[:12]
        entry = f"{self.prefix}:{{{tag}}}:{source}:{token_id}"
        return SharedKeys(entry, entry + ":lock", f"{self.prefix}:{{{tag}}}:revoked")

    def decision_keys(self, namespace: bytes, digest: bytes, repo: str, access: str) -> SharedKeys:
        """The store keys of one repository decision (``repo`` is ``type:id``) for
        the token with SHA-256 ``digest``: next to the token's own answer (same
        hash tag, same tombstone, so a revocation hides both), named by a keyed
        hash of token, repository and access (no repository name in Redis either)."""
        token = self.keys(namespace, digest)
        material = b"\x00".join((namespace, digest, repo.encode("utf-8"), access.encode("ascii")))
        decision_id = hmac.new(self._decision_key, material, "sha256").hexdigest()[:_TAG_HEX]
        entry = f"{token.entry}:repo:{decision_id}"
        return SharedKeys(entry, entry + ":lock", token.tomb)

    def failure_key(self, client: str) -> str:
        """The store key of one client's failure count (keyed: no address in Redis)."""
        name = hmac.new(self._client_key, client.encode("utf-8"), "sha256").hexdigest()[:32]
        return f"{self.prefix}:failures:{name}"

    def _mac(self, keys: SharedKeys, marker: bytes, body: bytes) -> bytes:
        return hmac.digest(
            self._mac_key, keys.entry.encode("ascii") + b"\x00" + marker + body, "sha256"
        )

    def _sign(self, keys: SharedKeys, positive: bool, document: dict[str, Any]) -> bytes:
        """``+`` (hidden by a tombstone) or ``-``, the MAC over key and body, the body."""
        marker = _POSITIVE if positive else _NEGATIVE
        body = json.dumps(document, separators=(",", ":")).encode("utf-8")
        return marker + self._mac(keys, marker, body) + body

    def _open(
        self, keys: SharedKeys, value: bytes, now: float, what: str
    ) -> tuple[bool, dict[str, Any], float] | None:
        """A signed value's (positive, document, seconds left), or None if it is
        forged, damaged, of another key or version, or expired."""
        marker, mac, body = value[:1], value[1 : 1 + _MAC_BYTES], value[1 + _MAC_BYTES :]
        if marker not in (_POSITIVE, _NEGATIVE) or not hmac.compare_digest(
            mac, self._mac(keys, marker, body)
        ):
            logger.warning("ignored a %s that failed its integrity check", what)
            return None
        try:
            document = json.loads(body)
            remaining = float(document["exp"]) - now
        except (ValueError, KeyError, TypeError):
            logger.warning("ignored a %s that does not parse", what)
            return None
        if document.get("v") != _VALUE_VERSION or not math.isfinite(remaining):
            logger.warning("ignored a %s of the wrong shape", what)
            return None
        if remaining <= 0:
            return None
        return marker == _POSITIVE, document, remaining

    def encode(self, keys: SharedKeys, outcome: Outcome, ttl: float, now: float) -> bytes:
        """The signed value for ``outcome``, valid until ``now + ttl`` (wall clock)."""
        document: dict[str, Any] = {"v": _VALUE_VERSION, "exp": now + ttl}
        if isinstance(outcome, Valid):
            document["whoami"] = principal_to_whoami(outcome.principal)
        else:
            document["reason"] = outcome.reason
        return self._sign(keys, isinstance(outcome, Valid), document)

    def decode(
        self, keys: SharedKeys, value: bytes, fingerprint: str, now: float
    ) -> tuple[Outcome, float] | None:
        """The outcome in a stored value and the seconds it stays fresh, or None
        if the value is forged, damaged, of another key, or expired."""
        opened = self._open(keys, value, now, "shared cache value")
        if opened is None:
            return None
        positive, document, remaining = opened
        if not positive:
            reason = document.get("reason")
            return Invalid(reason if isinstance(reason, str) else Invalid().reason), remaining
        try:
            return Valid(_principal_from_value(document["whoami"], fingerprint)), remaining
        except (ValueError, KeyError, TypeError, MalformedAnswer):
            logger.warning("ignored a shared cache value that does not parse")
            return None

    def encode_decision(
        self, keys: SharedKeys, decision: Decision, ttl: float, now: float
    ) -> bytes:
        """The signed value of a repository decision, valid until ``now + ttl``
        (wall clock), signed as token answers are."""
        document = {
            "v": _VALUE_VERSION,
            "kind": "repo",
            "exp": now + ttl,
            "reason": decision.reason,
            "needed": decision.needed,
            "by": decision.decided_by,
        }
        return self._sign(keys, decision.allowed, document)

    def decode_decision(
        self, keys: SharedKeys, value: bytes, now: float
    ) -> tuple[Decision, float] | None:
        """The decision in a stored value and the seconds it stays fresh, or None
        if the value is forged, damaged, of another key or kind, or expired."""
        opened = self._open(keys, value, now, "shared repository decision")
        if opened is None:
            return None
        allowed, document, remaining = opened
        reason, needed, by = document.get("reason"), document.get("needed"), document.get("by")
        if (
            document.get("kind") != "repo"
            or not isinstance(reason, str)
            or not isinstance(needed, str)
            or by not in _DECIDERS
        ):
            logger.warning("ignored a shared repository decision of the wrong shape")
            return None
        return Decision(allowed, reason, needed, by), remaining

    # --- revocation -------------------------------------------------------------------

    def revoke_op(self, fingerprint: str) -> SharedRevoke:
        """The work item that revokes the token with this 12-digit fingerprint everywhere."""
        fingerprint = fingerprint.strip().lower()
        if len(fingerprint) != FINGERPRINT_LENGTH or any(
            ch not in "0123456789abcdef" for ch in fingerprint
        ):
            raise ConfigurationError(
                f"a revocation broadcast needs the token's full {FINGERPRINT_LENGTH}-digit "
                "fingerprint (as `hfauth-mw token list` shows it)"
            )
        tag = self.revocation_tag(fingerprint)
        return SharedRevoke(
            tomb=f"{self.prefix}:{{{tag}}}:revoked",
            tomb_ms=math.ceil(self.revocation_ttl * 1000),
            channel=self.channel,
            tag=tag,
        )

    def revoke_fingerprint(self, fingerprint: str) -> int:
        """Revoke a token everywhere by fingerprint, blocking (for the CLI and
        admin tools that have no token). Returns how many processes listened.

        Raises :class:`SharedCacheUnavailable` if Redis cannot be reached: then
        nothing was broadcast and processes keep their entries up to their TTL.
        """
        result = self.backend.execute(self.revoke_op(fingerprint))
        if isinstance(result, SharedDown):
            raise SharedCacheUnavailable(
                f"the revocation could not be broadcast: Redis failed ({result.reason})"
            )
        return result if isinstance(result, int) else 0

    def attach(self, cache: Droppable, namespace: bytes) -> None:
        """Let revocations received by this process reach ``cache`` (held weakly):
        a token cache, or a cache of repository decisions."""
        with self._attached_lock:
            self._attached = [(ref, ns) for ref, ns in self._attached if ref() is not None]
            self._attached.append((weakref.ref(cache), namespace))

    def _caches(self) -> list[tuple[Droppable, bytes]]:
        with self._attached_lock:
            alive = [(ref(), ns) for ref, ns in self._attached]
        return [(cache, ns) for cache, ns in alive if cache is not None]

    def _on_tags(self, tags: list[str]) -> None:
        """Subscriber callback: drop every in-process entry whose token has one of ``tags``."""
        wanted = frozenset(tags)
        dropped = 0
        for cache, namespace in self._caches():
            size = len(namespace)

            def revoked(key: bytes, size: int = size, namespace: bytes = namespace) -> bool:
                if not key.startswith(namespace):
                    return False
                digest = key[size : size + _DIGEST_BYTES]
                return self.revocation_tag(fingerprint_of(digest)) in wanted

            dropped += cache.drop_matching(revoked)
        with self._attached_lock:
            self._received += len(tags)
            self._dropped += dropped
        logger.info(
            "revocation broadcast received: %d tag(s), %d in-process entr%s dropped",
            len(tags),
            dropped,
            "y" if dropped == 1 else "ies",
            extra={"hfauth_event": "revocation_received"},
        )

    def _on_subscribed(self, again: bool) -> None:
        """The listener listens: revocations published before that may have been
        missed, so every attached in-process cache is emptied (and flights that
        began before do not store their answers).

        On the first subscription the caches hold at most what this process
        learned while the listener was starting (or while Redis was down), and
        those answers may already be revoked.
        """
        held = False
        for cache, _ in self._caches():
            held = held or len(cache) > 0
            cache.clear()
        if not again:
            if held:
                logger.info(
                    "revocation channel listening: in-process answers cached before it "
                    "were cleared",
                    extra={"hfauth_event": "revocation_subscribed"},
                )
            return
        with self._attached_lock:
            self._resubscribed += 1
        logger.warning(
            "revocation channel reconnected: in-process caches cleared (messages may "
            "have been missed)",
            extra={"hfauth_event": "revocation_resubscribed"},
        )

    def start(self) -> None:
        """Start listening for revocations in this process (idempotent; called
        lazily on the first cache miss; again after a fork)."""
        pid = os.getpid()
        if self._started_pid == pid:
            return
        with self._start_lock:
            if self._started_pid == pid:
                return
            self.backend.start_subscriber(self.channel, self._on_tags, self._on_subscribed)
            self._started_pid = pid

    def wait_ready(self, timeout: float = 5.0) -> bool:
        """Start the subscriber if needed and wait until it listens; False on timeout."""
        self.start()
        return self.backend.wait_subscribed(timeout)

    def stats(self) -> dict[str, int]:
        """Revocation tags received, in-process entries they dropped, resubscriptions."""
        with self._attached_lock:
            return {
                "revocations_received": self._received,
                "revocations_dropped": self._dropped,
                "revocations_resubscribed": self._resubscribed,
                "shared_breaker_rejected": self.breaker.rejected,
            }

    def close(self) -> None:
        """Stop the subscriber thread and close connections (idempotent)."""
        self.backend.close()
        self._started_pid = None

    async def aclose(self) -> None:
        """Close the current event loop's connections (and everything :meth:`close` closes)."""
        await self.backend.aclose()
        self.close()


_ENV_NAME = re.compile(r"[A-Z_][A-Z0-9_]{0,63}")


#: How :func:`claim` ends besides CLAIM_HIT and CLAIM_LEAD: the shared tier
#: failed, or go on without the lock (its holder never answered, or the
#: value found could not be used).
CLAIM_DOWN, CLAIM_UNLOCKED = -1, -2


def claim(
    call: Callable[[SharedOp], Generator[Any, Any, Any]],
    tier: SharedCache,
    keys: SharedKeys,
    owner: str,
    lock_ttl: float,
    timer: Callable[[], float],
) -> Generator[Any, Any, tuple[int, bytes | None, bool]]:
    """Read the shared value under ``keys``, else take its lock; while another
    process holds the lock, poll (backing off to ``max_poll_interval``) until
    the lock must have expired. One loop for token answers and repository
    decisions alike.

    ``call`` runs one operation and answers ``None`` when the shared tier is
    failing. Returns ``(state, value, waited)``: ``(CLAIM_HIT, value, …)``,
    ``(CLAIM_LEAD, None, …)`` (the lock is ours), ``(CLAIM_UNLOCKED, None, …)``
    (its holder never answered: go on without the lock) or ``(CLAIM_DOWN,
    None, …)``; ``waited`` says whether another process held the lock first.
    """
    lock_ms = math.ceil(lock_ttl * 1000)
    deadline = timer() + lock_ttl + tier.max_poll_interval
    interval = tier.poll_interval
    waited = False
    while True:
        result = yield from call(SharedClaim(keys, owner, lock_ms))
        if result is None:
            return CLAIM_DOWN, None, waited
        state, value = result
        if state in (CLAIM_HIT, CLAIM_LEAD):
            return state, value, waited
        waited = True
        if timer() >= deadline:
            return CLAIM_UNLOCKED, None, waited
        yield Pause(interval)
        interval = min(interval * 2, tier.max_poll_interval)


class RevocationBroadcast:
    """One Redis connection for ``hfauth-mw token revoke --redis-url``, made by
    :func:`revocation_broadcaster` once Redis has answered: call it with a
    fingerprint to broadcast that token's revocation; close it when done
    (it is a context manager)."""

    def __init__(self, shared: SharedCache) -> None:
        self.shared = shared

    def describe(self) -> str:
        """Where the Redis is, without any password."""
        return self.shared.backend.describe()

    def __call__(self, fingerprint: str) -> int:
        """Broadcast the revocation of ``fingerprint``; how many processes listened.
        Raises :class:`SharedCacheUnavailable` if Redis failed meanwhile."""
        return self.shared.revoke_fingerprint(fingerprint)

    def close(self) -> None:
        self.shared.close()

    def __enter__(self) -> RevocationBroadcast:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def revocation_broadcaster(
    url: str, secret_env: str, prefix: str = "hfauth"
) -> RevocationBroadcast:
    """For ``hfauth-mw token revoke --redis-url``: check the configuration and
    reach Redis now, before the store changes (the secret comes from the
    environment variable ``secret_env``, never the command line).

    Raises :class:`~hfauth_mw.ConfigurationError` for a missing or short
    secret or a URL that is not a Redis URL, and :class:`SharedCacheUnavailable`
    when Redis does not answer: then nothing was done anywhere.
    """
    secret = os.environ.get(secret_env, "")
    if not secret:
        # Echo only a conventional variable name: what was typed may be the secret itself.
        named = secret_env if _ENV_NAME.fullmatch(secret_env) else "named by --redis-secret-env"
        raise ConfigurationError(
            f"--redis-url needs the deployment secret in the environment variable {named} "
            "(give the variable's name, never the secret itself)"
        )
    shared = SharedCache.from_url(url, secret=secret, prefix=prefix, socket_timeout=2.0)
    # One round trip that changes nothing (release a lock nobody holds) through the
    # same connection, authentication and scripts as the broadcast itself.
    probe = f"{shared.prefix}:probe"
    answer = shared.backend.execute(
        SharedRelease(SharedKeys(probe, probe + ":lock", probe + ":revoked"), os.urandom(8).hex())
    )
    if isinstance(answer, SharedDown):
        where = shared.backend.describe()
        shared.close()
        raise SharedCacheUnavailable(f"cannot reach Redis at {where} ({answer.reason})")
    return RevocationBroadcast(shared)


class SharedFailureLimiter(FailureLimiter):
    """The brute-force guard with cluster-wide counts: one limit per client
    across every worker and replica that shares the Redis of ``shared``.

    Each failure is counted in this process (as :class:`FailureLimiter` does)
    and in Redis, where the count of a client lives ``window`` seconds from
    its first failure anywhere. A process locks a client out when either
    count reaches ``max_failures``; a process that has not seen the client
    fail yet locks it out at its first failure there, so a client spreading
    guesses over N processes gets at most ``max_failures + N - 1``.

    Blocking code counts in Redis inline (bounded by the socket timeout);
    async code counts in a task on the running loop, so the lockout follows
    the failure by one Redis round trip. While Redis fails (or its breaker
    is open) the counts are per process: never an error, never a lockout of
    its own. Redis keys hold a keyed hash of the address, never the address.
    Built by :attr:`Authenticator.limiter <hfauth_mw.Authenticator.limiter>`
    when the authenticator has a shared tier.
    """

    def __init__(self, shared: SharedCache, **options: Any) -> None:
        super().__init__(**options)
        self.shared = shared
        self._window_ms = max(1, math.ceil(self.window * 1000))
        # Counting tasks in flight (the loop keeps only weak references).
        self._tasks: set[asyncio.Task[object]] = set()

    def __repr__(self) -> str:
        return (
            f"SharedFailureLimiter(max_failures={self.max_failures}, window={self.window:g}, "
            f"{self.shared.backend.describe()})"
        )

    def failed(self, client: str | None) -> None:
        if client is None:
            return
        super().failed(client)
        key = _client_key(client)
        breaker = self.shared.breaker
        try:
            breaker.acquire()
        except SourceUnavailable:
            return  # Redis is failing: this process's count stands alone
        op = SharedCount(self.shared.failure_key(key), self._window_ms)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            try:
                result = self.shared.backend.execute(op)
            except Exception as exc:  # a backend of one's own that raises: still no 500
                result = SharedDown(type(exc).__name__)
            self._counted(key, result)
            return
        task = loop.create_task(self._count_async(key, op))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        """Wait for the counts this event loop still has on their way to Redis
        (tests, and a clean shutdown)."""
        loop = asyncio.get_running_loop()
        pending = [task for task in self._tasks if task.get_loop() is loop]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    async def _count_async(self, key: str, op: SharedCount) -> object:
        try:
            result = await self.shared.backend.execute_async(op)
        except Exception as exc:
            result = SharedDown(type(exc).__name__)
        except BaseException:  # cancelled (the loop is closing): neither success nor failure
            self.shared.breaker.cancel()
            raise
        self._counted(key, result)
        return result

    def _counted(self, key: str, result: object) -> None:
        breaker = self.shared.breaker
        if isinstance(result, SharedDown) or not isinstance(result, tuple):
            breaker.release(SourceUnavailable("Redis failed"))
            logger.warning(
                "shared cache (Redis) could not count a failed authentication (%s); "
                "counting in this process only (breaker %s)",
                result.reason if isinstance(result, SharedDown) else "unexpected answer",
                breaker.state,
                extra={"hfauth_event": "shared_error"},
            )
            return
        breaker.release(None)
        count, remaining_ms = result
        if count >= self.max_failures:
            with self._lock:
                # Never past one window: a count key given a long life by someone
                # with access to Redis must not lock a client out for a year.
                until = self.timer() + min(max(remaining_ms, 1), self._window_ms) / 1000
                if len(self.lockouts) >= self._maxsize and key not in self.lockouts:
                    self._make_room_for_lockout(self.timer())
                self.lockouts[key] = max(self.lockouts.get(key, until), until)
