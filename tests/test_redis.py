"""The shared cache tier: the flow against an in-memory store on the fake clock,
then real Redis (the test DB of 127.0.0.1:6379, or a server this session starts;
see conftest.py) with worker processes, revocation broadcast and Redis dying
mid-run. Sentinel and Cluster: tests/test_redis_topologies.py."""

from __future__ import annotations

import asyncio
import hashlib
import multiprocessing
import socket
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from hfauth_mw import (
    Authenticator,
    ConfigurationError,
    Credentials,
    HFAuthMiddleware,
    HFAuthWSGIMiddleware,
    HubWhoamiSource,
    Invalid,
    InvalidToken,
    OrgMembership,
    Principal,
    ResourceGroup,
    ScopedGrant,
    SharedCache,
    SharedCacheUnavailable,
    SourceUnavailable,
    TokenCache,
    TooManyFailures,
    Valid,
)
from hfauth_mw._cli import main as cli_main
from hfauth_mw._principal import ResourcePattern
from hfauth_mw._shared_tier import (
    CLAIM_HIT,
    CLAIM_LEAD,
    CLAIM_WAIT,
    Pause,
    SharedClaim,
    SharedCount,
    SharedDown,
    SharedFailureLimiter,
    SharedOp,
    SharedRelease,
    SharedRevoke,
    SharedStore,
)
from hfauth_mw._source_protocol import WaitFor

SECRET = "test-deployment-secret-0123456789"
#: Tests that count upstream calls exactly against the real Redis: a loaded CI
#: machine can take longer than the 100 ms production default to answer, and a
#: timed-out Redis call rightly falls back to the source (one more call).
COUNTING_SOCKET_TIMEOUT = 2.0
ALICE_TOKEN = "hf_" + "A1b2C3d4E5" * 3 + "f6G7"
BOB_TOKEN = "hf_" + "Zz9Yy8Xx7W" * 3 + "w6V5"


def forbidden_material(token: str, *, fingerprint: bool = True) -> list[bytes]:
    """What must never reach Redis: the token, its SHA-256 (hex and raw), its fingerprint.

    (A principal's token *name* is the source's data: the local store names
    unnamed tokens ``token-<fingerprint>``, so values from it may hold that.)
    """
    digest = hashlib.sha256(token.encode()).digest()
    material = [token.encode(), digest, digest.hex().encode()]
    return [*material, digest.hex()[:12].encode()] if fingerprint else material


# --- an in-memory store with the Lua scripts' semantics, on the fake clock -------------------


class FakeRedis:
    """Shared by several fake "processes"; time comes from the test's clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.data: dict[str, tuple[bytes, float]] = {}
        self.ops: list[SharedOp] = []
        self.subscribers: list[Callable[[list[str]], None]] = []
        self.down: str | None = None

    def get(self, key: str) -> bytes | None:
        item = self.data.get(key)
        if item is None or item[1] <= self.clock():
            self.data.pop(key, None)
            return None
        return item[0]

    def set(self, key: str, value: bytes, ms: int) -> None:
        self.data[key] = (value, self.clock() + ms / 1000)

    def execute(self, op: SharedOp) -> object:
        self.ops.append(op)
        if self.down is not None:
            return SharedDown(self.down)
        if isinstance(op, SharedClaim):
            value = self.get(op.keys.entry)
            if value is not None and (value[:1] == b"-" or self.get(op.keys.tomb) is None):
                return CLAIM_HIT, value
            held = self.data.get(op.keys.lock)
            if self.get(op.keys.lock) is None or (
                held is not None and held[1] - self.clock() > 60
            ):  # free, or planted to outlive any lock_ttl allowed: taken over
                self.set(op.keys.lock, op.owner.encode(), op.lock_ms)
                return CLAIM_LEAD, None
            return CLAIM_WAIT, None
        if isinstance(op, SharedStore):
            stored = op.value[:1] == b"-" or self.get(op.keys.tomb) is None
            if stored:
                self.set(op.keys.entry, op.value, op.ttl_ms)
            if self.get(op.keys.lock) == op.owner.encode():
                del self.data[op.keys.lock]
            return stored
        if isinstance(op, SharedCount):
            count = int(self.get(op.key) or b"0") + 1
            left = (
                self.data[op.key][1] - self.clock() if op.key in self.data else op.window_ms / 1000
            )
            self.set(op.key, str(count).encode(), max(1, round(left * 1000)))
            return count, max(1, round(left * 1000))
        if isinstance(op, SharedRelease):
            if self.get(op.keys.lock) == op.owner.encode():
                del self.data[op.keys.lock]
            return None
        assert isinstance(op, SharedRevoke)
        self.set(op.tomb, b"1", op.tomb_ms)
        for deliver in self.subscribers:
            deliver([op.tag])
        return len(self.subscribers)

    def count(self, kind: type) -> int:
        return sum(isinstance(op, kind) for op in self.ops)


class FakeBackend:
    def __init__(self, redis: FakeRedis) -> None:
        self.redis = redis
        self.started = 0

    def describe(self) -> str:
        return "fake"

    def execute(self, op: SharedOp) -> object:
        return self.redis.execute(op)

    async def execute_async(self, op: SharedOp) -> object:
        return self.redis.execute(op)

    def start_subscriber(
        self,
        channel: str,
        on_tags: Callable[[list[str]], None],
        on_subscribed: Callable[[bool], None],
    ) -> None:
        self.started += 1
        self.redis.subscribers.append(on_tags)

    def wait_subscribed(self, timeout: float) -> bool:
        return True

    def close(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


class FakeSource:
    """Answers from a dict, counting calls; no network."""

    name = "fake"
    wait_timeout = 2.0

    def __init__(self, answers: dict[str, Valid | Invalid | Exception]) -> None:
        self.answers = answers
        self.calls = 0

    def flow(self, credentials: Credentials) -> Any:
        self.calls += 1
        answer = self.answers.get(credentials.token, Invalid())
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, Valid):  # as real sources do
            return Valid(replace(answer.principal, fingerprint=credentials.fingerprint))
        return answer
        yield  # a generator that needs no I/O


def alice_principal(**changes: Any) -> Principal:
    return Principal(name="alice", id="u1", token_role="write", source="fake", **changes)


class Process:
    """One simulated worker process: its own cache and SharedCache over the shared fake."""

    def __init__(self, redis: FakeRedis, clock: Any, source: FakeSource, **cache: Any) -> None:
        self.backend = FakeBackend(redis)
        self.shared = SharedCache(self.backend, secret=SECRET, timer=clock, lock_ttl=2.0)
        self.auth = Authenticator(
            source, cache=TokenCache(timer=clock, clock=clock, **cache), shared=self.shared
        )
        self.clock = clock
        self.paused = 0.0

    def run(self, token: str, on_pause: Callable[[], None] | None = None) -> Principal:
        """Drive one flow by hand: Pause advances the fake clock (no sleeping)."""
        flow = self.auth.flow(Credentials.from_token(token))
        try:
            work: Any = next(flow)
            while True:
                if isinstance(work, Pause):
                    self.clock.advance(work.seconds)
                    self.paused += work.seconds
                    if on_pause is not None:
                        on_pause()
                    result: object = None
                elif isinstance(work, SharedOp):
                    result = self.backend.execute(work)
                elif isinstance(work, WaitFor):
                    result = work.future.result(timeout=0)
                else:
                    raise AssertionError(f"unexpected work {work!r}")
                work = flow.send(result)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]


@pytest.fixture
def fake_redis(clock) -> FakeRedis:
    return FakeRedis(clock)


def expiring(seconds: float, clock) -> Principal:
    return alice_principal(expires_at=datetime.fromtimestamp(clock() + seconds, UTC))


# --- the flow, on the fake clock --------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param("valid", id="valid"),
        pytest.param("invalid", id="invalid"),
        pytest.param("expiring", id="valid-with-expiry"),
    ],
)
def test_second_process_reads_first_process_answer(fake_redis, clock, answer):
    outcome = {
        "valid": Valid(alice_principal()),
        "invalid": Invalid(),
        "expiring": Valid(expiring(300, clock)),
    }[answer]
    source = FakeSource({ALICE_TOKEN: outcome})
    first, second = Process(fake_redis, clock, source), Process(fake_redis, clock, source)
    for process in (first, second):
        if isinstance(outcome, Invalid):
            with pytest.raises(InvalidToken):
                process.run(ALICE_TOKEN)
        else:
            principal = process.run(ALICE_TOKEN)
            expected = replace(
                outcome.principal, fingerprint=Credentials.from_token(ALICE_TOKEN).fingerprint
            )
            assert principal == expected  # the round trip through the value is exact
    assert source.calls == 1
    assert first.auth.stats()["shared_misses"] == 1
    assert first.auth.stats()["upstream_calls"] == 1
    assert second.auth.stats()["shared_hits"] == 1
    assert second.auth.stats()["upstream_calls"] == 0
    assert fake_redis.get(fake_redis.ops[0].keys.lock) is None  # lock released


@pytest.mark.parametrize(
    ("answer", "cache", "stored_ms"),
    [
        pytest.param("valid", {"ttl": 60}, 60_000, id="positive-ttl"),
        pytest.param("expiring-20s", {"ttl": 60}, 20_000, id="capped-by-expiry"),
        pytest.param("invalid", {"ttl": 60, "negative_ttl": 10}, 10_000, id="negative-ttl"),
        pytest.param("valid", {"ttl": 0, "negative_ttl": 0}, None, id="ttl-0-not-stored"),
    ],
)
def test_shared_ttl_follows_the_cache_rules(fake_redis, clock, answer, cache, stored_ms):
    outcome = {
        "valid": Valid(alice_principal()),
        "expiring-20s": Valid(expiring(20, clock)),
        "invalid": Invalid(),
    }[answer]
    process = Process(fake_redis, clock, FakeSource({ALICE_TOKEN: outcome}), **cache)
    with pytest.raises(InvalidToken) if isinstance(outcome, Invalid) else _nothing():
        process.run(ALICE_TOKEN)
    stores = [op for op in fake_redis.ops if isinstance(op, SharedStore)]
    if stored_ms is None:
        assert stores == []
        assert fake_redis.count(SharedRelease) == 1  # the lock is given back at once
    else:
        assert [op.ttl_ms for op in stores] == [stored_ms]
    assert not any(key.endswith(":lock") for key in fake_redis.data)


@pytest.mark.parametrize(
    "cancel_after",
    [
        pytest.param("claim", id="redis-granted-the-lock-then-cancelled"),
        pytest.param("store", id="cancelled-before-the-answer-is-stored"),
    ],
)
def test_a_cancelled_leader_releases_the_lock_redis_may_have_granted(
    fake_redis, clock, cancel_after
):
    process = Process(fake_redis, clock, FakeSource({ALICE_TOKEN: Valid(alice_principal())}))
    flow = process.auth.flow(Credentials.from_token(ALICE_TOKEN))
    claim = next(flow)
    assert isinstance(claim, SharedClaim)
    granted = process.backend.execute(claim)  # Redis runs it: the lock is ours
    if cancel_after == "store":
        assert isinstance(flow.send(granted), SharedStore)  # the source answered at once
    assert fake_redis.get(claim.keys.lock) is not None

    flow.close()  # the request is cancelled before it hears back
    process.auth.sync_driver.run_cleanup()  # what the driver does after closing a flow

    assert fake_redis.get(claim.keys.lock) is None


def test_a_cancelled_redis_call_leaves_the_redis_breaker_as_it_was(fake_redis, clock):
    process = Process(fake_redis, clock, FakeSource({ALICE_TOKEN: Valid(alice_principal())}))
    breaker = process.shared.breaker
    for _ in range(breaker.failure_threshold):
        breaker.acquire()
        breaker.release(SourceUnavailable("Redis failed"))
    clock.advance(breaker.cooldown)
    assert breaker.state == "half-open"
    flow = process.auth.flow(Credentials.from_token(ALICE_TOKEN))
    assert isinstance(next(flow), SharedOp)  # the trial call

    flow.close()  # its request is cancelled

    assert breaker.state == "half-open"  # not closed as if Redis had answered


def test_a_negative_answer_read_from_redis_keeps_only_its_remaining_life(fake_redis, clock):
    """A token refused 9 s ago elsewhere, then created: after the 10 s negative TTL
    it works everywhere, not 10 s later in the process that read the refusal."""
    source = FakeSource({})
    first = Process(fake_redis, clock, source, negative_ttl=10)
    second = Process(fake_redis, clock, source, negative_ttl=10)
    with pytest.raises(InvalidToken):
        first.run(ALICE_TOKEN)
    clock.advance(9)
    with pytest.raises(InvalidToken):
        second.run(ALICE_TOKEN)  # from Redis, 1 s of life left
    assert second.auth.stats()["shared_hits"] == 1
    source.answers[ALICE_TOKEN] = Valid(alice_principal())
    clock.advance(1.5)

    assert second.run(ALICE_TOKEN).name == "alice"
    assert source.calls == 2


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def test_waiter_reads_the_leader_answer_without_calling_the_source(fake_redis, clock):
    source = FakeSource({ALICE_TOKEN: Valid(alice_principal())})
    leader, waiter = Process(fake_redis, clock, source), Process(fake_redis, clock, source)
    keys = leader.shared.keys(leader.auth._namespace, hashlib.sha256(ALICE_TOKEN.encode()).digest())
    fake_redis.set(keys.lock, b"someone-else", 2000)  # the leader is busy elsewhere

    def leader_answers() -> None:
        value = leader.shared.encode(keys, Valid(alice_principal()), 60, clock())
        fake_redis.set(keys.entry, value, 60_000)

    assert waiter.run(ALICE_TOKEN, on_pause=leader_answers).name == "alice"
    assert source.calls == 0
    stats = waiter.auth.stats()
    assert (stats["shared_waits"], stats["shared_hits"], stats["upstream_calls"]) == (1, 1, 0)
    assert waiter.paused < 0.1


def test_crashed_leader_is_taken_over_at_lock_expiry(fake_redis, clock):
    source = FakeSource({ALICE_TOKEN: Valid(alice_principal())})
    waiter = Process(fake_redis, clock, source)
    keys = waiter.shared.keys(waiter.auth._namespace, hashlib.sha256(ALICE_TOKEN.encode()).digest())
    fake_redis.set(keys.lock, b"crashed-leader", 2000)  # never released
    assert waiter.run(ALICE_TOKEN).name == "alice"
    assert source.calls == 1
    assert 2.0 <= waiter.paused <= 2.0 + waiter.shared.max_poll_interval
    stats = waiter.auth.stats()
    assert (stats["shared_takeovers"], stats["shared_stores"]) == (1, 1)


@pytest.mark.redis
def test_a_lock_planted_to_outlive_ours_is_taken_over_at_once(redis_url, prefix):
    """Someone with access to Redis (not the secret) planted an hour-long lock
    beside a token's entry: every cold lookup of it waited 10 s, again and again."""
    import redis

    source = FakeSource({ALICE_TOKEN: Valid(alice_principal())})
    [auth, _] = _workers(redis_url, prefix, source)
    try:
        digest = hashlib.sha256(ALICE_TOKEN.encode()).digest()
        keys = auth.shared.keys(auth._namespace, digest)
        planted = redis.Redis.from_url(redis_url)
        planted.set(keys.lock, b"planted", px=3600 * 1000)
        assert auth.authenticate_sync(ALICE_TOKEN).name == "alice"
        assert source.calls == 1
        assert auth.stats()["shared_waits"] == 0  # taken over, not waited on
        # Another process's live lock, longer than ours but within lock_ttl's
        # limit (60 s), is waited on: its holder is asking the source.
        other = hashlib.sha256(b"hf_other").digest()
        other_keys = auth.shared.keys(auth._namespace, other)
        planted.set(other_keys.lock, b"another-process", px=30_000)
        claim = auth.shared.backend.execute(SharedClaim(other_keys, "me", 10_000))
        assert claim[0] == CLAIM_WAIT
        planted.close()
    finally:
        auth.shared.close()


def test_one_process_makes_one_lock_attempt_per_cold_token(fake_redis, clock):
    process = Process(fake_redis, clock, FakeSource({ALICE_TOKEN: Valid(alice_principal())}))
    credentials = Credentials.from_token(ALICE_TOKEN)
    flows = [process.auth.flow(credentials) for _ in range(20)]
    first = [next(flow) for flow in flows]
    assert isinstance(first[0], SharedClaim)
    assert all(isinstance(work, WaitFor) for work in first[1:])  # in-process single flight
    for flow in flows:
        flow.close()


@pytest.mark.parametrize(
    "reason",
    [
        pytest.param("ConnectionError", id="down"),
        pytest.param("TimeoutError", id="slow"),
        pytest.param("ResponseError", id="full"),
    ],
)
def test_redis_trouble_falls_back_to_the_source_behind_a_breaker(fake_redis, clock, reason):
    tokens = {f"hf_{'k' * 30}{i:04d}": Valid(alice_principal()) for i in range(6)}
    source = FakeSource(dict(tokens))
    process = Process(fake_redis, clock, source)
    fake_redis.down = reason
    for token in tokens:
        assert process.run(token).name == "alice"
    with pytest.raises(InvalidToken):
        process.run("hf_" + "n" * 34)  # unknown: still refused, never let through
    stats = process.auth.stats()
    assert len(fake_redis.ops) == 3  # the breaker opened after 3 failures in a row
    assert (stats["shared_errors"], stats["shared_skipped"]) == (3, 4)
    assert stats["upstream_calls"] == source.calls == 7
    clock.advance(5)  # the breaker's cool-down: one trial call, Redis back
    fake_redis.down = None
    with pytest.raises(InvalidToken):
        process.run("hf_" + "t" * 34)
    assert [type(op) for op in fake_redis.ops[3:]] == [SharedClaim, SharedStore]


def test_source_failure_releases_the_lock(fake_redis, clock):
    source = FakeSource({ALICE_TOKEN: SourceUnavailable("hub down")})
    process = Process(fake_redis, clock, source)
    with pytest.raises(SourceUnavailable):
        process.run(ALICE_TOKEN)
    assert fake_redis.count(SharedRelease) == 1
    assert not fake_redis.data  # nothing stored, no lock left behind
    assert process.auth.stats()["decisions_unavailable"] == 1


def _tamper(value: bytes, kind: str, shared: SharedCache, keys: Any, clock: Any) -> bytes:
    if kind == "flipped-bit":
        return value[:-2] + bytes([value[-2] ^ 1]) + value[-1:]
    if kind == "truncated":
        return value[:20]
    if kind == "negative-marker":
        return b"-" + value[1:]
    if kind == "expired":
        return shared.encode(keys, Valid(alice_principal()), 60, clock() - 61)
    if kind == "forged-admin":
        other = SharedCache(FakeBackend(FakeRedis(clock)), secret="another-secret-of-16+bytes")
        return other.encode(keys, Valid(Principal(name="root", token_role="write")), 60, clock())
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param("flipped-bit", id="flipped-bit"),
        pytest.param("truncated", id="truncated"),
        pytest.param("negative-marker", id="marker-swapped"),
        pytest.param("expired", id="expired"),
        pytest.param("forged-admin", id="signed-with-another-secret"),
    ],
)
def test_damaged_or_forged_values_are_ignored(fake_redis, clock, kind):
    source = FakeSource({ALICE_TOKEN: Valid(alice_principal())})
    process = Process(fake_redis, clock, source)
    keys = process.shared.keys(
        process.auth._namespace, hashlib.sha256(ALICE_TOKEN.encode()).digest()
    )
    good = process.shared.encode(keys, Valid(alice_principal()), 60, clock())
    fake_redis.set(keys.entry, _tamper(good, kind, process.shared, keys, clock), 60_000)
    assert process.run(ALICE_TOKEN).name == "alice"
    assert source.calls == 1  # the source decided, not the value
    assert process.shared.decode(keys, fake_redis.get(keys.entry) or b"", "", clock()) is not None


def test_a_value_moved_to_another_token_is_ignored(fake_redis, clock):
    source = FakeSource({ALICE_TOKEN: Valid(alice_principal()), BOB_TOKEN: Invalid()})
    process = Process(fake_redis, clock, source)
    process.run(ALICE_TOKEN)
    digest = hashlib.sha256
    alice = process.shared.keys(process.auth._namespace, digest(ALICE_TOKEN.encode()).digest())
    bob = process.shared.keys(process.auth._namespace, digest(BOB_TOKEN.encode()).digest())
    fake_redis.set(bob.entry, fake_redis.get(alice.entry) or b"", 60_000)
    with pytest.raises(InvalidToken):
        process.run(BOB_TOKEN)


@pytest.mark.parametrize(
    "principal",
    [
        pytest.param(alice_principal(), id="classic-write"),
        pytest.param(
            Principal(
                name="alice",
                type="user",
                id="u1",
                fullname="Alice",
                email=None,
                token_role="fineGrained",
                token_name="prod-inference",
                orgs=(
                    OrgMembership(
                        "acme",
                        "write",
                        id="o1",
                        plan="team",
                        is_enterprise=True,
                        resource_groups=(ResourceGroup("rg1", "research", "read"),),
                    ),
                ),
                scoped=(
                    ScopedGrant("model", "acme/sentiment", frozenset({"repo.content.read"}), "m1"),
                    ScopedGrant("resource-group", None, frozenset({"repo.write"}), "rg1"),
                ),
                global_permissions=frozenset({"inference.serverless.write"}),
                can_read_gated_repos=True,
                source="hub:https://huggingface.co",
            ),
            id="fine-grained",
        ),
        pytest.param(
            Principal(
                name="bob",
                auth_type="oauth",
                expires_at=datetime(2030, 1, 1, tzinfo=UTC),
                source="hub",
            ),
            id="oauth",
        ),
        pytest.param(
            # Every fact that refuses access survives the shared tier: a copy that
            # dropped one would grant more in the other processes.
            Principal(
                name="erin",
                token_role="fineGrained",
                orgs=(
                    OrgMembership(
                        "acme", "admin", security_restrictions=("mfa", "sso"), missing_mfa=True
                    ),
                    OrgMembership("beta", "write", pending_sso=True),
                ),
                scoped=(
                    ScopedGrant(
                        "user",
                        "erin",
                        frozenset({"inference.endpoints.infer.write"}),
                        "u1",
                        patterns=(ResourcePattern("inference-endpoint", ("prod-*",)),),
                    ),
                ),
                source="hub",
            ),
            id="restrictions-and-patterns",
        ),
        pytest.param(
            Principal(
                name="svc",
                id="sub-1",
                auth_type="oauth2_introspection",
                token_role="read",
                oauth_scopes=frozenset({"read", "openid"}),
                expires_at=datetime(2030, 1, 1, 12, 30, tzinfo=UTC),
                source="rfc7662:https://idp.example",
            ),
            id="rfc7662",
        ),
    ],
)
def test_principals_round_trip_through_the_shared_value(fake_redis, clock, principal):
    shared = SharedCache(FakeBackend(fake_redis), secret=SECRET)
    keys = shared.keys(b"src\x00", b"\x01" * 32)
    value = shared.encode(keys, Valid(principal), 60, clock())
    decoded = shared.decode(keys, value, principal.fingerprint, clock())
    assert decoded is not None
    assert decoded[0] == Valid(principal)
    assert decoded[1] == pytest.approx(60)


def test_keys_and_values_never_hold_token_material(fake_redis, clock):
    source = FakeSource({ALICE_TOKEN: Valid(alice_principal()), BOB_TOKEN: Invalid()})
    process = Process(fake_redis, clock, source)
    process.run(ALICE_TOKEN)
    with pytest.raises(InvalidToken):
        process.run(BOB_TOKEN)
    process.auth.revoke(ALICE_TOKEN)
    blobs = [key.encode() for key in fake_redis.data] + [v for v, _ in fake_redis.data.values()]
    blobs += [repr(op).encode() for op in fake_redis.ops]
    assert len(fake_redis.data) == 3  # two answers and a tombstone
    for token in (ALICE_TOKEN, BOB_TOKEN):
        for material in forbidden_material(token):
            assert not any(material in blob for blob in blobs)


def test_revoke_drops_every_process_entry_and_keeps_positives_out(fake_redis, clock):
    source = FakeSource({ALICE_TOKEN: Valid(alice_principal())})
    processes = [Process(fake_redis, clock, source) for _ in range(3)]
    for process in processes:
        process.run(ALICE_TOKEN)
    assert source.calls == 1
    assert processes[0].auth.revoke(ALICE_TOKEN) == 3
    source.answers[ALICE_TOKEN] = Invalid()  # revoked at the source too
    for process in processes:
        assert len(process.auth.cache) == 0
        with pytest.raises(InvalidToken):
            process.run(ALICE_TOKEN)
    assert source.calls == 2  # the negative answer is shared
    assert [p.auth.stats()["revocations_received"] for p in processes] == [1, 1, 1]
    assert processes[0].auth.stats()["revocations_sent"] == 1


def test_revoked_token_positive_answers_are_not_shared(fake_redis, clock):
    # Revoked in our caches but the source still says valid (e.g. not revoked there yet).
    source = FakeSource({ALICE_TOKEN: Valid(alice_principal())})
    first, second = Process(fake_redis, clock, source), Process(fake_redis, clock, source)
    first.run(ALICE_TOKEN)
    first.auth.revoke(ALICE_TOKEN)
    second.run(ALICE_TOKEN)
    assert source.calls == 2  # the old positive answer was not served from Redis
    assert second.auth.stats()["shared_stores"] == 0  # and the new one was not stored


def test_revoke_without_redis_raises_and_still_drops_locally(fake_redis, clock):
    process = Process(fake_redis, clock, FakeSource({ALICE_TOKEN: Valid(alice_principal())}))
    process.run(ALICE_TOKEN)
    fake_redis.down = "ConnectionError"
    with pytest.raises(SharedCacheUnavailable):
        process.auth.revoke(ALICE_TOKEN)
    assert len(process.auth.cache) == 0


def test_answer_of_a_flight_overtaken_by_a_revocation_is_not_stored(clock):
    cache = TokenCache(timer=clock, clock=clock)
    leader = cache.begin(b"k")
    cache.drop_matching(lambda key: False)  # any revocation arriving mid-flight
    cache.complete(leader, Valid(alice_principal()))  # type: ignore[arg-type]
    assert cache.get(b"k") is None


def test_resubscription_clears_in_process_caches(fake_redis, clock):
    process = Process(fake_redis, clock, FakeSource({ALICE_TOKEN: Valid(alice_principal())}))
    process.run(ALICE_TOKEN)
    process.shared._on_subscribed(True)
    assert len(process.auth.cache) == 0


def test_first_subscription_clears_what_was_cached_before_it(fake_redis, clock):
    """Answers cached while the listener was starting (or Redis was down) may have
    missed a revocation: the first subscription drops them too."""
    process = Process(fake_redis, clock, FakeSource({ALICE_TOKEN: Valid(alice_principal())}))
    process.run(ALICE_TOKEN)
    assert len(process.auth.cache) == 1
    process.shared._on_subscribed(False)
    assert len(process.auth.cache) == 0


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(
            lambda: SharedCache.from_url("redis://x", secret=""), "secret", id="no-secret"
        ),
        pytest.param(
            lambda: SharedCache.from_url("redis://x", secret="short"), "16 bytes", id="short-secret"
        ),
        pytest.param(
            lambda: SharedCache.from_url("http://x", secret=SECRET), "redis://", id="bad-scheme"
        ),
        pytest.param(
            lambda: SharedCache.from_url("redis://x", secret=SECRET, prefix="a{b}"),
            "prefix",
            id="bad-prefix",
        ),
        pytest.param(
            lambda: SharedCache.from_url("redis://x", secret=SECRET, lock_ttl=0),
            "lock_ttl",
            id="bad-lock-ttl",
        ),
        pytest.param(  # a tombstone must outlive every answer stored before it
            lambda: SharedCache.from_url("redis://x", secret=SECRET, revocation_ttl=60),
            "revocation_ttl",
            id="revocation-ttl-below-the-longest-answer",
        ),
    ],
)
def test_configuration_errors(build, message):
    with pytest.raises(ConfigurationError, match=message) as caught:
        build()
    assert SECRET not in str(caught.value)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("redis://user:pa55word@127.0.0.1:1/3", id="password-in-authority"),
        pytest.param("redis://127.0.0.1:1/3?password=pa55word", id="password-in-query"),
        pytest.param("unix:///tmp/redis.sock?db=0&password=pa55word", id="unix-socket-query"),
    ],
)
def test_repr_masks_the_secret_and_the_url_password(url):
    shared = SharedCache.from_url(url, secret=SECRET)
    text = repr(shared) + repr(shared.backend)
    assert "pa55word" not in text
    assert SECRET not in text
    assert "***" in text
    shared.close()


def test_unreachable_redis_is_reported_as_down_quickly():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connection refused
        shared = SharedCache.from_url(f"redis://127.0.0.1:{port}/0", secret=SECRET)
        started = time.monotonic()
        keys = shared.keys(b"x\x00", b"\x00" * 32)
        result = shared.backend.execute(SharedClaim(keys, "me", 1000))
        assert isinstance(result, SharedDown)
        assert result.reason == "ConnectionError"
        assert time.monotonic() - started < 1.0
        with pytest.raises(SharedCacheUnavailable):
            shared.revoke_fingerprint("0123456789ab")
        shared.close()


# --- real Redis ------------------------------------------------------------------------------


def redis_dump(url: str, prefix: str) -> list[bytes]:
    import redis

    client = redis.Redis.from_url(url)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*"))
        return keys + [value for value in client.mget(keys) if value is not None] if keys else []
    finally:
        client.close()


@pytest.mark.redis
@pytest.mark.anyio
async def test_async_driver_shares_answers_through_redis(
    redis_url, prefix, hub_store, hub_emulator
):
    alice = hub_store.create_token(user="alice", role="write").token
    source = HubWhoamiSource(hub_emulator.url, timeout=httpx.Timeout(5.0))
    shareds = [
        SharedCache.from_url(
            redis_url, secret=SECRET, prefix=prefix, socket_timeout=COUNTING_SOCKET_TIMEOUT
        )
        for _ in range(2)
    ]
    auths = [Authenticator(source, shared=shared) for shared in shareds]
    try:
        for auth in auths:
            principal = await auth.authenticate(Credentials.from_token(alice))
            assert principal.name == "alice"
        bogus = Credentials.from_token("hf_" + "q" * 34)
        for auth in auths:
            with pytest.raises(InvalidToken):
                await auth.authenticate(bogus)
        assert hub_emulator.whoami_calls == 2  # one per token, not one per process
        assert auths[1].stats()["shared_hits"] == 2
        assert sum(a.stats()["upstream_calls"] for a in auths) == hub_emulator.whoami_calls
        dump = redis_dump(redis_url, prefix)
        assert len(dump) == 4  # two keys, two values; locks released
        for token in (alice, bogus.token):
            for material in forbidden_material(token, fingerprint=False):
                assert not any(material in blob for blob in dump)
            fingerprint = Credentials.from_token(token).fingerprint.encode()
            assert not any(fingerprint in blob for blob in dump[:2])  # keys
    finally:
        for shared in shareds:
            await shared.aclose()


@pytest.mark.redis
@pytest.mark.anyio
async def test_a_cancelled_leader_gives_its_redis_lock_back(
    redis_url, prefix, hub_store, hub_emulator
):
    """A client that hangs up during a cold lookup must not make every process wait
    for the lock's expiry (about 10 s): its lock is released when it is cancelled."""
    alice = Credentials.from_token(hub_store.create_token(user="alice", role="write").token)
    shared = SharedCache.from_url(redis_url, secret=SECRET, prefix=prefix)
    auth = Authenticator(
        HubWhoamiSource(hub_emulator.url, timeout=httpx.Timeout(5.0)), shared=shared
    )
    try:
        hub_emulator.delay = 30  # held until released
        leader = asyncio.create_task(auth.authenticate(alice))
        assert await asyncio.to_thread(hub_emulator.wait_for_held, 1)
        assert any(key.endswith(b":lock") for key in redis_dump(redis_url, prefix))
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
        await asyncio.gather(*auth.async_driver.cleanups)  # the release runs as a task of its own

        assert not any(key.endswith(b":lock") for key in redis_dump(redis_url, prefix))
        hub_emulator.release_held()
        hub_emulator.delay = 0
        assert (await auth.authenticate(alice)).name == "alice"
        assert auth.stats()["shared_waits"] == 0  # nobody waited for the dead lock
    finally:
        hub_emulator.release_held()
        await shared.aclose()


# The worker of the multi-process test (module level: spawned processes import it).
def _worker(
    index: int,
    hub_url: str,
    redis_url: str,
    prefix: str,
    token: str,
    requests: int,
    go: Any,
    revoked: Any,
    revoked_at: Any,
    results: Any,
) -> None:
    try:
        shared = SharedCache.from_url(
            redis_url, secret=SECRET, prefix=prefix, socket_timeout=COUNTING_SOCKET_TIMEOUT
        )
        auth = Authenticator(HubWhoamiSource(hub_url, timeout=httpx.Timeout(5.0)), shared=shared)
        credentials = Credentials.from_token(token)
        results.put(("ready", index, shared.wait_ready(10)))
        go.wait(60)
        with ThreadPoolExecutor(8) as pool:
            names = list(
                pool.map(lambda _: auth.authenticate_sync(credentials).name, range(requests))
            )
        results.put(("served", index, names.count("alice")))
        revoked.wait(60)
        deadline = time.monotonic() + 5
        refused_after = None
        while time.monotonic() < deadline:
            try:
                auth.authenticate_sync(credentials)
            except InvalidToken:
                refused_after = time.monotonic() - revoked_at.value
                break
            time.sleep(0.002)  # polling the answer, bounded by the deadline
        results.put(("refused", index, refused_after, auth.stats()))
        shared.close()
    except BaseException as exc:  # report, never hang the parent
        results.put(("error", index, repr(exc)))


@pytest.mark.redis
def test_four_workers_one_cold_token_then_revocation(
    redis_url, prefix, hub_store, hub_emulator, monkeypatch, capsys
):
    issued = hub_store.create_token(user="alice", role="write")
    hub_emulator.delay = 0.05  # a realistic hub: the flight stays open while others pile up
    context = multiprocessing.get_context("spawn")
    go, revoked = context.Event(), context.Event()
    revoked_at = context.Value("d", 0.0)
    results = context.Queue()
    workers = [
        context.Process(
            target=_worker,
            args=(
                i,
                hub_emulator.url,
                redis_url,
                prefix,
                issued.token,
                250,
                go,
                revoked,
                revoked_at,
                results,
            ),
            daemon=True,
        )
        for i in range(4)
    ]
    for worker in workers:
        worker.start()
    try:

        def collect(kind: str) -> list[tuple[Any, ...]]:
            got = [results.get(timeout=60) for _ in workers]
            errors = [item for item in got if item[0] == "error"]
            assert not errors, errors
            assert {item[0] for item in got} == {kind}
            return sorted(got, key=lambda item: item[1])

        assert all(item[2] for item in collect("ready"))  # every subscriber listens
        go.set()
        assert [item[2] for item in collect("served")] == [250] * 4
        assert hub_emulator.whoami_calls <= 2
        before_revocation = hub_emulator.whoami_calls

        monkeypatch.setenv("HFAUTH_TEST_REDIS_SECRET", SECRET)
        revoked_at.value = time.monotonic()
        code = cli_main(
            [
                "token",
                "revoke",
                "--store",
                str(hub_store.path),
                "--redis-url",
                redis_url,
                "--redis-secret-env",
                "HFAUTH_TEST_REDIS_SECRET",
                "--redis-prefix",
                prefix,
                issued.record.fingerprint,
            ]
        )
        assert code == 0, capsys.readouterr().err
        assert "4 process" in capsys.readouterr().out
        revoked.set()
        refused = collect("refused")
        delays = [item[2] for item in refused]
        assert all(delay is not None and delay < 1.0 for delay in delays), delays
        stats = [item[3] for item in refused]
        # Metrics equal the emulator's own count, and every request was decided.
        assert sum(s["upstream_calls"] for s in stats) == hub_emulator.whoami_calls
        assert hub_emulator.whoami_calls - before_revocation <= 2  # the refusal is shared too
        assert sum(s["decisions_valid"] for s in stats) >= 1000
        assert sum(s["decisions_invalid"] for s in stats) == 4
        assert all(s["revocations_received"] == 1 for s in stats)
        assert sum(s["shared_hits"] for s in stats) + sum(s["upstream_calls"] for s in stats) >= 4
        for material in forbidden_material(issued.token, fingerprint=False):
            assert not any(material in blob for blob in redis_dump(redis_url, prefix))
    finally:
        go.set()
        revoked.set()
        for worker in workers:
            worker.join(timeout=20)
            if worker.is_alive():
                worker.kill()


def _ok_app(scope: Any, receive: Any, send: Any) -> Any:
    async def app() -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app()


@pytest.mark.redis
@pytest.mark.anyio
async def test_redis_stopped_mid_run_keeps_answers_correct(
    private_redis, hub_store, hub_emulator, clock
):
    users = [hub_store.create_token(user=f"user{i}", role="read").token for i in range(6)]
    shared = SharedCache.from_url(private_redis.url, secret=SECRET, timer=clock)
    auth = Authenticator(
        HubWhoamiSource(hub_emulator.url, timeout=httpx.Timeout(5.0)),
        cache=TokenCache(timer=clock, clock=clock),
        shared=shared,
    )
    app = HFAuthMiddleware(_ok_app, authenticator=auth, limiter=None)
    transport = httpx.ASGITransport(app)
    statuses: dict[int, int] = {}

    async def round_of_requests(client: httpx.AsyncClient, label: str) -> None:
        clock.advance(61)  # in-process entries expire: every round goes past them
        for n, token in enumerate(users):
            answer = await client.get("/", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == 200, (label, answer.status_code)
            statuses[200] = statuses.get(200, 0) + 1
            bogus = f"hf_{label}{n:02d}{'x' * (32 - len(label))}"
            answer = await client.get("/", headers={"Authorization": f"Bearer {bogus}"})
            assert answer.status_code == 401, (label, answer.status_code)
            assert "invalid_token" in answer.headers["www-authenticate"]
            statuses[401] = statuses.get(401, 0) + 1
        for token in users[:2]:  # and the sync driver
            assert auth.authenticate_sync(Credentials.from_token(token)).name.startswith("user")

    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            await round_of_requests(client, "up")
            assert auth.stats()["shared_stores"] >= 6
            private_redis.stop()  # Redis dies mid-run
            for label in ("downa", "downb", "downc"):
                await round_of_requests(client, label)
            stats = auth.stats()
            # 3 failures opened the breaker; later rounds (the clock moves 61 s) let
            # one trial call through each; every other call was kept off Redis.
            assert stats["shared_errors"] == 3 + 2
            assert stats["shared_skipped"] > 0
            private_redis.start()  # back on the same port; the breaker lets a trial through
            clock.advance(5)
            await round_of_requests(client, "back")
            assert auth.stats()["shared_stores"] > stats["shared_stores"]
            assert shared.wait_ready(10)  # the subscriber reconnected by itself
        stats = auth.stats()
        assert stats["upstream_calls"] == hub_emulator.whoami_calls
        assert stats["upstream_errors"] == 0
        assert set(statuses) == {200, 401}
        assert stats["decisions_unavailable"] == 0
    finally:
        await shared.aclose()


@pytest.mark.redis
def test_revoke_api_reaches_a_subscriber_in_this_process(
    redis_url, prefix, hub_store, hub_emulator
):
    alice = hub_store.create_token(user="alice", role="write").token
    source = HubWhoamiSource(hub_emulator.url, timeout=httpx.Timeout(5.0))
    holder_shared = SharedCache.from_url(
        redis_url, secret=SECRET, prefix=prefix, socket_timeout=COUNTING_SOCKET_TIMEOUT
    )
    revoker_shared = SharedCache.from_url(
        redis_url, secret=SECRET, prefix=prefix, socket_timeout=COUNTING_SOCKET_TIMEOUT
    )
    holder = Authenticator(source, shared=holder_shared)
    revoker = Authenticator(source, shared=revoker_shared)
    try:
        holder.authenticate_sync(Credentials.from_token(alice))  # starts the listener
        assert holder_shared.wait_ready(10)
        # What was cached before the listener listened is dropped when it subscribes;
        # cache the token again, now under the subscription.
        holder.authenticate_sync(Credentials.from_token(alice))
        assert len(holder.cache) == 1
        started = time.monotonic()
        assert revoker.revoke(alice) >= 1
        while len(holder.cache) and time.monotonic() - started < 1.0:
            time.sleep(0.002)  # polling the effect, bounded
        assert len(holder.cache) == 0
        assert holder.stats()["revocations_dropped"] == 1
    finally:
        holder_shared.close()
        revoker_shared.close()


def test_cli_revoke_broadcast_needs_the_secret(hub_store, monkeypatch, capsys):
    issued = hub_store.create_token(user="alice", role="write")
    monkeypatch.delenv("HFAUTH_TEST_MISSING", raising=False)
    code = cli_main(
        [
            "token",
            "revoke",
            "--store",
            str(hub_store.path),
            "--redis-url",
            "redis://127.0.0.1:1",
            "--redis-secret-env",
            "HFAUTH_TEST_MISSING",
            issued.record.fingerprint,
        ]
    )
    assert code == 2
    assert "HFAUTH_TEST_MISSING" in capsys.readouterr().err
    assert len(hub_store.list_tokens()) == 1  # nothing revoked when the broadcast cannot happen


# --- the test suite's own Redis DB (issue 18, item E) ----------------------------------------


@pytest.mark.redis
def test_the_suite_keeps_to_its_own_redis_db(redis_url, prefix):
    """Other software keeps its data in DB 0 of the machine's Redis: the suite
    writes only to its own DB (HFAUTH_TEST_REDIS_DB, default 9), under its prefix."""
    import redis

    from conftest import REDIS_TEST_DB

    assert REDIS_TEST_DB != 0
    assert redis_url.endswith(f"/{REDIS_TEST_DB}")
    shared = SharedCache.from_url(redis_url, secret=SECRET, prefix=prefix, socket_timeout=2.0)
    try:
        shared.revoke_fingerprint("0123456789ab")  # writes one tombstone key
    finally:
        shared.close()
    base = redis_url.rsplit("/", 1)[0]
    ours, zero = redis.Redis.from_url(redis_url), redis.Redis.from_url(f"{base}/0")
    try:
        assert list(ours.scan_iter(match=f"{prefix}:*"))
        assert not list(zero.scan_iter(match=f"{prefix}:*"))
    finally:
        ours.close()
        zero.close()


# --- the async pool (issue 18, item C) ---------------------------------------------------------


@pytest.mark.redis
@pytest.mark.anyio
async def test_async_pool_works_under_warnings_as_errors(
    redis_url, prefix, hub_store, hub_emulator
):
    """redis-py 8 warns when an asyncio client gets the sync Retry; under -W error
    (or filterwarnings=error) the old pool made every request a 500. Now: no
    warning, and the answer really goes through Redis."""
    import warnings

    alice = Credentials.from_token(hub_store.create_token(user="alice", role="write").token)
    shared = SharedCache.from_url(
        redis_url, secret=SECRET, prefix=prefix, socket_timeout=COUNTING_SOCKET_TIMEOUT
    )
    auth = Authenticator(HubWhoamiSource(hub_emulator.url, timeout=5.0), shared=shared)
    app = HFAuthMiddleware(_ok_app, authenticator=auth, limiter=None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app), base_url="http://t"
            ) as client:
                answer = await client.get("/", headers={"Authorization": f"Bearer {alice.token}"})
        assert answer.status_code == 200
        stats = auth.stats()
        assert (stats["shared_errors"], stats["shared_stores"]) == (0, 1)
    finally:
        await shared.aclose()


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(RuntimeError("pool exploded"), id="any-exception"),
        pytest.param(UserWarning("a warning raised as an error"), id="warning-as-error"),
    ],
)
@pytest.mark.anyio
async def test_an_error_building_the_async_pool_falls_back_to_the_source(
    monkeypatch, hub_store, hub_emulator, failure
):
    """Building a pool is part of calling Redis: whatever it raises is a Redis
    failure (the breaker counts it; the source decides), never a 500."""
    import redis.asyncio

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise failure

    monkeypatch.setattr(redis.asyncio.BlockingConnectionPool, "from_url", broken)
    alice = hub_store.create_token(user="alice", role="write").token
    shared = SharedCache.from_url("redis://127.0.0.1:1/9", secret=SECRET)
    auth = Authenticator(HubWhoamiSource(hub_emulator.url, timeout=5.0), shared=shared)
    app = HFAuthMiddleware(_ok_app, authenticator=auth, limiter=None)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://t") as c:
            answer = await c.get("/", headers={"Authorization": f"Bearer {alice}"})
        assert answer.status_code == 200
        assert auth.stats()["shared_errors"] == 1
        assert auth.stats()["upstream_calls"] == 1
    finally:
        await shared.aclose()


def test_the_async_pool_is_built_with_the_asyncio_retry():
    """The cause of the warning: the sync redis.retry.Retry given to an asyncio pool."""
    from redis.asyncio.retry import Retry as AsyncRetry

    from hfauth_mw._redis import RedisBackend

    backend = RedisBackend("redis://127.0.0.1:1/9")
    options = backend._options(asynchronous=True, timeout=0.1, name="x")
    assert isinstance(options["retry"], AsyncRetry)


# --- no import circle in the Redis tier (issue 16, asked of issue 18) -------------------------


def _runtime_imports(module: str) -> set[str]:
    """The package modules ``module`` imports when it runs (lazy imports included,
    ``if TYPE_CHECKING:`` blocks left out)."""
    import ast
    from pathlib import Path

    import hfauth_mw

    tree = ast.parse((Path(hfauth_mw.__file__).parent / f"{module}.py").read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 1 and id(node) not in skipped:
            found.add(node.module or "")
    return found


def test_the_redis_tier_has_no_import_circle():
    from pathlib import Path

    import hfauth_mw

    modules = [path.stem for path in Path(hfauth_mw.__file__).parent.glob("_*.py")]
    graph = {module: _runtime_imports(module) for module in modules if module != "__init__"}
    tier = {"_shared_tier", "_redis", "_shared_tier_protocol"}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph.get(start, ()):
            if nxt == goal:
                return True
            if nxt not in seen:
                seen.add(nxt)
                if reaches(nxt, goal, seen):
                    return True
        return False

    circles = sorted(module for module in tier if reaches(module, module, set()))
    assert circles == []
    assert "_shared" not in graph["_redis"]  # the backend knows only the protocol


# --- issue 18 item 5: one failure count per client across workers and replicas -------------------


def _workers(redis_url: str, prefix: str, source: Any, **options: Any) -> list[Authenticator]:
    """Two workers' authenticators on one Redis, as two processes would have them."""
    return [
        Authenticator(
            source,
            shared=SharedCache.from_url(
                redis_url, secret=SECRET, prefix=prefix, socket_timeout=COUNTING_SOCKET_TIMEOUT
            ),
            **options,
        )
        for _ in range(2)
    ]


@pytest.mark.redis
def test_failure_counts_are_cluster_wide(redis_url, prefix, clock):
    # Before: each worker counted alone: 2 workers let a client fail 58 times
    # (29 each) unchallenged, 4 workers about 120, each a whoami-v2 call.
    source = FakeSource({})
    first, second = (auth.limiter for auth in _workers(redis_url, prefix, source))
    try:
        assert isinstance(first, SharedFailureLimiter)
        for n in range(29):
            (first if n % 2 else second).failed("203.0.113.66")
        first.check("203.0.113.66")
        second.check("203.0.113.66")
        second.failed("203.0.113.66")  # the 30th failure, counted in Redis
        with pytest.raises(TooManyFailures):
            second.check("203.0.113.66")
        first.check("203.0.113.66")  # not yet told: locks out at its first failure
        first.failed("203.0.113.66")
        with pytest.raises(TooManyFailures):
            first.check("203.0.113.66")
        first.check("198.51.100.7")  # nobody else
        # No address in Redis: a keyed hash of it.
        assert not any(b"203.0.113" in item for item in redis_dump(redis_url, prefix))
    finally:
        first.shared.close()
        second.shared.close()


@pytest.mark.redis
def test_a_count_planted_in_redis_locks_out_for_one_window_at_most(redis_url, prefix):
    """Someone with access to Redis (not the secret) gave a client's count a
    year to live: its next typo locked it out for that year."""
    import redis

    [auth, _] = _workers(redis_url, prefix, FakeSource({}))
    limiter = auth.limiter
    try:
        assert isinstance(limiter, SharedFailureLimiter)
        planted = redis.Redis.from_url(redis_url)
        year_ms = 365 * 24 * 3600 * 1000
        planted.set(limiter.shared.failure_key("203.0.113.66"), 29, px=year_ms)
        limiter.failed("203.0.113.66")
        with pytest.raises(TooManyFailures) as locked:
            limiter.check("203.0.113.66")
        assert locked.value.retry_after <= limiter.window
        assert planted.pttl(limiter.shared.failure_key("203.0.113.66")) <= limiter.window * 1000
        planted.close()
    finally:
        auth.shared.close()


@pytest.mark.redis
def test_without_redis_the_counts_are_per_process_and_never_an_error():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))  # bound, not listening: Redis "down"
        shared = SharedCache.from_url(f"redis://127.0.0.1:{sock.getsockname()[1]}/0", secret=SECRET)
        limiter = Authenticator(FakeSource({}), shared=shared).limiter
        for _ in range(29):
            limiter.failed("203.0.113.66")
        limiter.check("203.0.113.66")
        limiter.failed("203.0.113.66")
        with pytest.raises(TooManyFailures):
            limiter.check("203.0.113.66")
        assert shared.breaker.state == "open"  # Redis left alone after 3 failures
        shared.close()


@asynccontextmanager
async def _asgi_worker(auth: Authenticator) -> AsyncIterator[Callable[[str], Awaitable[int]]]:
    app = HFAuthMiddleware(_ok_app, authenticator=auth)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

        async def send(token: str) -> int:
            status = (
                await client.get("/", headers={"Authorization": f"Bearer {token}"})
            ).status_code
            await auth.limiter.flush()  # type: ignore[attr-defined]  # the count reached Redis
            return status

        yield send


@asynccontextmanager
async def _wsgi_worker(auth: Authenticator) -> AsyncIterator[Callable[[str], Awaitable[int]]]:
    from werkzeug.serving import make_server

    def ok(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = make_server(
        "127.0.0.1", 0, HFAuthWSGIMiddleware(ok, authenticator=auth), threaded=True
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.server_port}") as client:

            async def send(token: str) -> int:
                response = await client.get("/", headers={"Authorization": f"Bearer {token}"})
                return response.status_code

            yield send
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.mark.redis
@pytest.mark.anyio
@pytest.mark.parametrize("worker", [_asgi_worker, _wsgi_worker], ids=["asgi", "wsgi"])
async def test_two_workers_lock_a_guesser_out_after_the_one_limit(
    worker, redis_url, prefix, hub_emulator
):
    source = HubWhoamiSource(hub_emulator.url, timeout=httpx.Timeout(5.0))
    auths = _workers(redis_url, prefix, source)
    statuses: list[int] = []
    try:
        async with worker(auths[0]) as first, worker(auths[1]) as second:
            for n in range(80):  # round robin, as a load balancer spreads one client
                statuses.append(await (first, second)[n % 2](f"hf_guess{n:030d}"))
    finally:
        for auth in auths:
            assert auth.shared is not None
            await auth.shared.aclose()
    # 30 failures cluster-wide, then the other worker's one more, then 429 only.
    assert statuses[:30] == [401] * 30
    assert statuses[30] == 401
    assert set(statuses[31:]) == {429}
    assert hub_emulator.whoami_calls == 31  # before: 60 (30 per worker)
