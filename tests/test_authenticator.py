"""The authenticator against the hub emulator over real loopback HTTP."""

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import httpx
import pytest

from hfauth_mw import (
    Authenticator,
    ChainSource,
    Credentials,
    HubWhoamiSource,
    InvalidToken,
    LocalStoreSource,
    SourceUnavailable,
    TokenCache,
)

pytestmark = pytest.mark.anyio


@pytest.fixture
def make_authenticator(hub_emulator, clock):
    def make(**cache_options) -> Authenticator:
        source = HubWhoamiSource(hub_emulator.url, timeout=httpx.Timeout(5.0))
        return Authenticator(source, cache=TokenCache(timer=clock, clock=clock, **cache_options))

    return make


@pytest.fixture
def alice(hub_store):
    return Credentials.from_token(hub_store.create_token(user="alice", role="write").token)


async def test_sequential_requests_make_one_upstream_call(make_authenticator, hub_emulator, alice):
    authenticator = make_authenticator()
    for _ in range(200):
        principal = await authenticator.authenticate(alice)
        assert principal.name == "alice"
    assert hub_emulator.whoami_calls == 1


async def test_concurrent_cold_token_makes_one_upstream_call(
    make_authenticator, hub_emulator, alice
):
    authenticator = make_authenticator()
    hub_emulator.delay = 30  # held until released: the flight stays open while all pile up
    tasks = [asyncio.create_task(authenticator.authenticate(alice)) for _ in range(100)]
    assert await asyncio.to_thread(hub_emulator.wait_for_held, 1)
    await asyncio.sleep(0)
    hub_emulator.release_held()
    principals = await asyncio.gather(*tasks)
    assert {principal.name for principal in principals} == {"alice"}
    assert hub_emulator.whoami_calls == 1


def test_threads_with_cold_token_make_one_upstream_call(make_authenticator, hub_emulator, alice):
    authenticator = make_authenticator()
    hub_emulator.delay = 30
    results: list[str] = []
    barrier = threading.Barrier(50)

    def worker() -> None:
        barrier.wait()
        results.append(authenticator.authenticate_sync(alice).name)

    threads = [threading.Thread(target=worker) for _ in range(50)]
    for thread in threads:
        thread.start()
    assert hub_emulator.wait_for_held(1)
    hub_emulator.release_held()
    for thread in threads:
        thread.join(timeout=10)
    assert results == ["alice"] * 50
    assert hub_emulator.whoami_calls == 1


async def test_revoked_token_refused_once_ttl_passed(
    make_authenticator, hub_emulator, hub_store, alice, clock
):
    authenticator = make_authenticator(ttl=60)
    await authenticator.authenticate(alice)
    hub_store.revoke(alice.fingerprint)
    clock.advance(59)
    assert (await authenticator.authenticate(alice)).name == "alice"  # still cached
    clock.advance(1)
    with pytest.raises(InvalidToken):
        await authenticator.authenticate(alice)
    assert hub_emulator.whoami_calls == 2


@pytest.mark.parametrize("blocking", [False, True], ids=["arevoke", "revoke"])
async def test_revoke_forgets_a_cached_token_at_once(
    make_authenticator, hub_emulator, hub_store, alice, blocking
):
    """Revoked at its source, a token is refused on the next request once it is
    revoked here too, however fresh its cached answer (no shared tier: 0 listeners)."""
    authenticator = make_authenticator(ttl=60)
    await authenticator.authenticate(alice)
    hub_store.revoke(alice.fingerprint)
    assert (await authenticator.authenticate(alice)).name == "alice"  # still cached
    if blocking:
        listeners = await asyncio.to_thread(authenticator.revoke, alice.token)
    else:
        listeners = await authenticator.arevoke(alice.token)
    assert listeners == 0
    with pytest.raises(InvalidToken):
        await authenticator.authenticate(alice)
    assert hub_emulator.whoami_calls == 2


async def test_invalid_tokens_are_cached_negatively(make_authenticator, hub_emulator, clock):
    authenticator = make_authenticator(negative_ttl=10)
    bogus = Credentials.from_token("hf_" + "x" * 34)
    for _ in range(5):
        with pytest.raises(InvalidToken):
            await authenticator.authenticate(bogus)
    assert hub_emulator.whoami_calls == 1
    clock.advance(10)
    with pytest.raises(InvalidToken):
        await authenticator.authenticate(bogus)
    assert hub_emulator.whoami_calls == 2


@pytest.mark.parametrize(
    ("status", "headers", "retry_after"),
    [
        pytest.param(429, {"Retry-After": "42"}, 42, id="429-retry-after"),
        pytest.param(429, {"RateLimit": '"api";r=0;t=120'}, 120, id="429-ratelimit"),
        pytest.param(500, {}, 5, id="500"),
        pytest.param(502, {}, 5, id="502"),
        pytest.param(503, {"Retry-After": "7"}, 7, id="503"),
        pytest.param(504, {}, 5, id="504"),
    ],
)
async def test_upstream_errors_are_unavailable_and_not_cached(
    make_authenticator, hub_emulator, alice, clock, status, headers, retry_after
):
    authenticator = make_authenticator()
    hub_emulator.fail_next(status, headers=headers, times=1)
    with pytest.raises(SourceUnavailable) as caught:
        await authenticator.authenticate(alice)
    assert caught.value.retry_after == retry_after
    if "Retry-After" in headers or "RateLimit" in headers:
        # The hub said when to come back: not one call before then.
        with pytest.raises(SourceUnavailable):
            await authenticator.authenticate(alice)
        assert hub_emulator.whoami_calls == 1
        clock.advance(retry_after)
    assert (await authenticator.authenticate(alice)).name == "alice"
    assert hub_emulator.whoami_calls == 2


async def test_hub_down_is_unavailable(hub_store, clock, alice):
    from hfauth_mw.testing import HubEmulator

    emulator = HubEmulator(hub_store).start()
    url = emulator.url
    emulator.stop()
    authenticator = Authenticator(HubWhoamiSource(url), cache=TokenCache(timer=clock, clock=clock))
    with pytest.raises(SourceUnavailable, match="cannot be reached"):
        await authenticator.authenticate(alice)
    with pytest.raises(SourceUnavailable):
        authenticator.authenticate_sync(alice)


async def test_slow_hub_times_out(hub_emulator, clock, alice):
    hub_emulator.delay = 30
    source = HubWhoamiSource(hub_emulator.url, timeout=httpx.Timeout(0.2))
    authenticator = Authenticator(source, cache=TokenCache(timer=clock, clock=clock))
    with pytest.raises(SourceUnavailable, match="timed out"):
        await authenticator.authenticate(alice)
    hub_emulator.release_held()


async def test_oversized_answer_is_unavailable(hub_emulator, clock, alice):
    hub_emulator.fail_next(
        200, headers={"Content-Type": "application/json"}, body=b" " * 300_000, times=1
    )
    authenticator = Authenticator(
        HubWhoamiSource(hub_emulator.url), cache=TokenCache(timer=clock, clock=clock)
    )
    with pytest.raises(SourceUnavailable, match="more than we accept"):
        await authenticator.authenticate(alice)


async def test_expired_token_is_invalid_even_when_cached(make_authenticator, hub_store, clock):
    expires = datetime.fromtimestamp(clock() + 30, UTC)
    issued = hub_store.create_token(user="erin", role="read", expires_at=expires)
    credentials = Credentials.from_token(issued.token)
    authenticator = make_authenticator(ttl=60)
    assert (await authenticator.authenticate(credentials)).name == "erin"
    clock.advance(30)
    with pytest.raises(InvalidToken):
        await authenticator.authenticate(credentials)


async def test_an_expired_token_is_asked_upstream_once_not_at_every_retry(
    make_authenticator, hub_store, hub_emulator, clock
):
    """whoami-v2 is heavily rate-limited: a client retrying an expired token must
    not cost one upstream call per try."""
    expires = datetime.fromtimestamp(clock() - 60, UTC)
    issued = hub_store.create_token(user="erin", role="read", expires_at=expires)
    credentials = Credentials.from_token(issued.token)
    authenticator = make_authenticator(ttl=60, negative_ttl=10)
    for _ in range(20):
        with pytest.raises(InvalidToken, match="expired"):
            await authenticator.authenticate(credentials)
    assert hub_emulator.whoami_calls == 1
    assert authenticator.stats()["decisions_expired"] == 20
    clock.advance(10)  # the negative answer's life: asked again
    with pytest.raises(InvalidToken, match="expired"):
        await authenticator.authenticate(credentials)
    assert hub_emulator.whoami_calls == 2


async def test_a_waiter_takes_over_when_the_leader_is_cancelled(
    make_authenticator, hub_emulator, alice
):
    authenticator = make_authenticator()
    hub_emulator.delay = 30
    leader = asyncio.create_task(authenticator.authenticate(alice))
    assert await asyncio.to_thread(hub_emulator.wait_for_held, 1)
    follower = asyncio.create_task(authenticator.authenticate(alice))
    await asyncio.sleep(0)
    hub_emulator.delay = 0  # the first call stays held; the next one answers at once
    leader.cancel()
    assert (await follower).name == "alice"
    assert leader.cancelled()
    assert hub_emulator.whoami_calls == 2
    hub_emulator.clear_faults()


def wait_until(condition, timeout=10.0):
    """Poll a condition (not a fixed sleep): returns as soon as it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.001)


def test_a_thread_takes_over_when_the_leader_is_cancelled(make_authenticator, hub_emulator, alice):
    authenticator = make_authenticator()
    hub_emulator.delay = 30
    flow = authenticator.flow(alice)
    request = next(flow)  # this "request" leads the flight, then goes away
    assert request.url.path == "/api/whoami-v2"
    hub_emulator.delay = 0
    with ThreadPoolExecutor(1) as pool:
        waiter = pool.submit(authenticator.authenticate_sync, alice)
        wait_until(lambda: authenticator.cache.joins == 1)  # the thread waits on our flight
        flow.close()  # the leading request is cancelled before it sent anything
        assert waiter.result(timeout=10).name == "alice"
    assert hub_emulator.whoami_calls == 1


def test_a_waiter_takes_over_up_to_three_times_then_gives_up(make_authenticator, alice):
    """docs/caching.md: a cancelled leader's flight is taken over up to 3 times. Driven by
    hand: each round a new request leads, the waiter joins it, the leader goes away."""
    from hfauth_mw._source_protocol import WaitFor

    authenticator = make_authenticator()
    leader = authenticator.flow(alice)
    next(leader)
    waiter = authenticator.flow(alice)
    work = next(waiter)
    for takeover in range(4):
        assert isinstance(work, WaitFor)
        leader.close()  # the leading request is cancelled
        error = work.future.exception()
        leader = authenticator.flow(alice)
        next(leader)  # another request leads the next flight first
        if takeover == 3:
            with pytest.raises(SourceUnavailable, match="could not be checked"):
                waiter.throw(error)
        else:
            work = waiter.throw(error)  # the waiter joins that flight
    leader.close()


@pytest.mark.parametrize("on_the_network", [False, True], ids=["before-any-request", "after"])
async def test_a_source_bug_is_503_and_counts_against_the_breaker_once_on_the_network(
    clock, on_the_network
):
    """The breaker guards the network: a source failing before its first request
    (a local store, a bug there) is a 503 every time, and says nothing about
    the upstream the breaker protects."""

    class BrokenSource:
        name = "broken"
        wait_timeout = 1.0

        def flow(self, credentials):
            if on_the_network:
                yield httpx.Request("GET", "http://127.0.0.1:9/api/whoami-v2")
            raise KeyError("bug")

    from hfauth_mw import UpstreamBreaker

    authenticator = Authenticator(
        BrokenSource(),
        cache=TokenCache(timer=clock, clock=clock),
        breaker=UpstreamBreaker(failure_threshold=2, timer=clock),
        client=httpx.Client(transport=httpx.MockTransport(lambda request: httpx.Response(200))),
    )
    for _ in range(2):
        with pytest.raises(SourceUnavailable):
            authenticator.authenticate_sync(Credentials.from_token("hf_" + "b" * 34))
    assert authenticator.breaker.state == ("open" if on_the_network else "closed")
    assert authenticator.stats()["upstream_errors"] == 2


async def test_invalidate_forces_a_new_check(make_authenticator, hub_emulator, alice):
    authenticator = make_authenticator()
    await authenticator.authenticate(alice)
    authenticator.invalidate(alice.token)
    await authenticator.authenticate(alice)
    assert hub_emulator.whoami_calls == 2


async def test_local_store_first_in_chain_answers_without_network(
    hub_store, hub_emulator, clock, tmp_path
):
    from hfauth_mw import LocalTokenStore

    local_store = LocalTokenStore(tmp_path / "local.sqlite3")
    local = Credentials.from_token(local_store.create_token(user="svc", role="read").token)
    remote = Credentials.from_token(hub_store.create_token(user="alice", role="write").token)
    chain = ChainSource(LocalStoreSource(local_store), HubWhoamiSource(hub_emulator.url))
    authenticator = Authenticator(chain, cache=TokenCache(timer=clock, clock=clock))
    assert (await authenticator.authenticate(local)).name == "svc"
    assert hub_emulator.whoami_calls == 0
    assert (await authenticator.authenticate(remote)).name == "alice"
    assert hub_emulator.whoami_calls == 1


async def test_local_store_first_in_chain_answers_while_the_hub_breaker_is_open(
    hub_store, hub_emulator, clock, tmp_path
):
    """The breaker guards the network: a Hub outage opens it, and the local
    store first in the chain still answers its own tokens."""
    from hfauth_mw import LocalTokenStore, UpstreamBreaker

    local_store = LocalTokenStore(tmp_path / "local.sqlite3")
    local = Credentials.from_token(local_store.create_token(user="svc", role="read").token)
    remote = Credentials.from_token(hub_store.create_token(user="alice", role="write").token)
    chain = ChainSource(LocalStoreSource(local_store), HubWhoamiSource(hub_emulator.url))
    authenticator = Authenticator(
        chain,
        cache=TokenCache(timer=clock, clock=clock),
        breaker=UpstreamBreaker(failure_threshold=2, cooldown=10, timer=clock),
    )
    hub_emulator.fail_next(503, times=2)
    for _ in range(2):
        with pytest.raises(SourceUnavailable):
            await authenticator.authenticate(remote)
    assert authenticator.breaker.state == "open"

    assert (await authenticator.authenticate(local)).name == "svc"
    with pytest.raises(SourceUnavailable, match="not asking it again yet"):
        await authenticator.authenticate(remote)
    assert hub_emulator.whoami_calls == 2  # the open breaker kept the hub out of it


async def test_local_store_errors_never_open_the_breaker_for_the_hub(
    hub_store, hub_emulator, clock, tmp_path, monkeypatch
):
    """A local store that fails now and then, between good answers, must not
    shut the hub out: the breaker counts network failures in a row only."""
    from hfauth_mw import LocalTokenStore, TokenStoreError, UpstreamBreaker

    local_store = LocalTokenStore(tmp_path / "local.sqlite3")
    remote = Credentials.from_token(hub_store.create_token(user="alice", role="write").token)
    chain = ChainSource(LocalStoreSource(local_store), HubWhoamiSource(hub_emulator.url))
    authenticator = Authenticator(
        chain,
        cache=TokenCache(ttl=0, timer=clock, clock=clock),
        breaker=UpstreamBreaker(failure_threshold=2, timer=clock),
    )
    lookup = local_store.lookup

    def failing(digest: bytes) -> object:
        raise TokenStoreError("disk I/O error")

    for _ in range(3):
        monkeypatch.setattr(local_store, "lookup", failing)
        with pytest.raises(SourceUnavailable):
            await authenticator.authenticate(remote)
        monkeypatch.setattr(local_store, "lookup", lookup)
    assert authenticator.breaker.state == "closed"
    assert (await authenticator.authenticate(remote)).name == "alice"


def test_repr_never_holds_secrets(make_authenticator, alice):
    authenticator = make_authenticator()
    authenticator.authenticate_sync(alice)
    assert alice.token not in repr(authenticator)


# --- stale-if-error, breaker --------------------------------------------------------------


async def test_stale_if_error_serves_recent_answer_while_hub_fails(
    make_authenticator, hub_emulator, alice, clock, no_token_in_logs
):
    authenticator = make_authenticator(ttl=60, stale_if_error=30)
    await authenticator.authenticate(alice)
    hub_emulator.fail_next(503)
    clock.advance(60 + 29)
    assert (await authenticator.authenticate(alice)).name == "alice"
    assert authenticator.stats()["stale_served"] == 1
    stale_events = [r for r in no_token_in_logs if getattr(r, "hfauth_event", None) == "stale"]
    assert len(stale_events) == 1
    assert stale_events[0].hfauth_fingerprint == alice.fingerprint
    clock.advance(1)  # 30 s past freshness: no longer served
    with pytest.raises(SourceUnavailable):
        await authenticator.authenticate(alice)


async def test_stale_is_off_by_default(make_authenticator, hub_emulator, alice, clock):
    authenticator = make_authenticator(ttl=60)
    await authenticator.authenticate(alice)
    hub_emulator.fail_next(503)
    clock.advance(60)
    with pytest.raises(SourceUnavailable):
        await authenticator.authenticate(alice)


async def test_stale_never_past_token_expiry(make_authenticator, hub_emulator, hub_store, clock):
    expires = datetime.fromtimestamp(clock() + 70, UTC)
    credentials = Credentials.from_token(
        hub_store.create_token(user="erin", role="read", expires_at=expires).token
    )
    authenticator = make_authenticator(ttl=60, stale_if_error=30)
    await authenticator.authenticate(credentials)
    hub_emulator.fail_next(503)
    clock.advance(65)
    assert (await authenticator.authenticate(credentials)).name == "erin"
    clock.advance(5)  # token expired: stale window left, but never past expiry
    with pytest.raises((InvalidToken, SourceUnavailable)):
        await authenticator.authenticate(credentials)


async def test_negative_answers_are_never_served_stale(make_authenticator, hub_emulator, clock):
    authenticator = make_authenticator(ttl=60, negative_ttl=10, stale_if_error=30)
    bogus = Credentials.from_token("hf_" + "n" * 34)
    with pytest.raises(InvalidToken):
        await authenticator.authenticate(bogus)
    hub_emulator.fail_next(503)
    clock.advance(10)
    with pytest.raises(SourceUnavailable):
        await authenticator.authenticate(bogus)


async def test_a_token_the_hub_rejected_is_never_served_stale(
    make_authenticator, hub_emulator, hub_store, clock
):
    """Valid, then revoked (401), then the hub fails: the old valid answer stays dead."""
    issued = hub_store.create_token(user="carol", role="write")
    carol = Credentials.from_token(issued.token)
    authenticator = make_authenticator(ttl=60, negative_ttl=10, stale_if_error=30)
    await authenticator.authenticate(carol)
    hub_store.revoke(issued.record.fingerprint)
    clock.advance(60)
    with pytest.raises(InvalidToken):
        await authenticator.authenticate(carol)
    clock.advance(10)  # the negative entry is gone; the old positive one is in its stale window
    hub_emulator.fail_next(503)
    with pytest.raises(SourceUnavailable):
        await authenticator.authenticate(carol)
    assert authenticator.stats()["stale_served"] == 0


def test_a_token_revoked_during_its_refresh_is_not_served_stale(
    make_authenticator, hub_emulator, hub_store, clock
):
    """Stale-if-error on; the refresh is in flight when the token is revoked, then
    the hub fails: the stale answer the flight began with must not be served."""
    issued = hub_store.create_token(user="dave", role="write")
    dave = Credentials.from_token(issued.token)
    authenticator = make_authenticator(ttl=60, stale_if_error=30)
    authenticator.authenticate_sync(dave)
    clock.advance(61)  # stale, inside the stale window
    hub_emulator.fail_next(503)
    hub_emulator.delay = 30  # held until released
    outcome: list[object] = []

    def refresh() -> None:
        try:
            outcome.append(authenticator.authenticate_sync(dave).name)
        except SourceUnavailable as error:
            outcome.append(error)

    thread = threading.Thread(target=refresh)
    thread.start()
    assert hub_emulator.wait_for_held(1)
    authenticator.revoke(issued.token)
    hub_emulator.release_held()
    thread.join(timeout=10)

    assert len(outcome) == 1
    assert isinstance(outcome[0], SourceUnavailable)
    assert authenticator.stats()["stale_served"] == 0


async def test_breaker_stops_calls_to_a_failing_hub(hub_emulator, hub_store, clock):
    from hfauth_mw import UpstreamBreaker

    authenticator = Authenticator(
        HubWhoamiSource(hub_emulator.url),
        cache=TokenCache(timer=clock, clock=clock),
        breaker=UpstreamBreaker(failure_threshold=3, cooldown=10, timer=clock),
    )
    hub_emulator.fail_next(500)
    tokens = [hub_store.create_token(user=f"u{i}").token for i in range(10)]
    for token in tokens:
        with pytest.raises(SourceUnavailable):
            await authenticator.authenticate(Credentials.from_token(token))
    assert hub_emulator.whoami_calls == 3
    assert authenticator.stats()["breaker_rejected"] == 7
    hub_emulator.clear_faults()
    clock.advance(10)
    assert (await authenticator.authenticate(Credentials.from_token(tokens[0]))).name == "u0"
    assert hub_emulator.whoami_calls == 4


async def test_a_cancelled_call_counts_neither_for_nor_against_the_breaker(
    hub_emulator, hub_store, clock
):
    """Requests that give up (client gone, a server deadline) must not close the breaker."""
    from hfauth_mw import UpstreamBreaker

    breaker = UpstreamBreaker(failure_threshold=3, cooldown=10, timer=clock)
    authenticator = Authenticator(
        HubWhoamiSource(hub_emulator.url),
        cache=TokenCache(timer=clock, clock=clock),
        breaker=breaker,
    )
    hub_emulator.fail_next(500, times=3)
    for i in range(3):
        with pytest.raises(SourceUnavailable):
            await authenticator.authenticate(
                Credentials.from_token(hub_store.create_token(user=f"u{i}").token)
            )
    clock.advance(10)
    assert breaker.state == "half-open"
    hub_emulator.delay = 30  # the trial call hangs until released
    trial = asyncio.create_task(
        authenticator.authenticate(Credentials.from_token(hub_store.create_token(user="t").token))
    )
    assert await asyncio.to_thread(hub_emulator.wait_for_held, 1)
    trial.cancel()
    with pytest.raises(asyncio.CancelledError):
        await trial
    hub_emulator.release_held()
    hub_emulator.delay = 0

    assert breaker.state == "half-open"  # not closed by the cancelled trial
    hub_emulator.fail_next(500)
    with pytest.raises(SourceUnavailable):  # the next request is the new trial, and fails
        await authenticator.authenticate(
            Credentials.from_token(hub_store.create_token(user="n").token)
        )
    assert breaker.state == "open"


class _StuckSource:
    """A source whose flights another request leads forever (the test holds the lead)."""

    name = "stuck"
    wait_timeout = 0.05

    def flow(self, credentials):
        raise AssertionError("the test leads the flight itself")
        yield


async def test_waiters_share_one_relay_and_time_out(clock):
    authenticator = Authenticator(_StuckSource(), cache=TokenCache(timer=clock, clock=clock))
    credentials = Credentials.from_token("hf_" + "s" * 34)
    leader = authenticator.cache.begin(authenticator.cache_key(credentials.digest))
    waiters = [asyncio.create_task(authenticator.authenticate(credentials)) for _ in range(10)]
    await asyncio.sleep(0)
    assert len(authenticator.async_driver.loop_waiters) == 1
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert all(isinstance(result, SourceUnavailable) for result in results)
    assert authenticator.async_driver.loop_waiters == {}
    authenticator.cache.abandon(leader, SourceUnavailable())


async def test_waiters_after_a_timeout_still_get_the_flights_answer(clock):
    from hfauth_mw import Principal
    from hfauth_mw._source_protocol import Valid

    authenticator = Authenticator(_StuckSource(), cache=TokenCache(timer=clock, clock=clock))
    credentials = Credentials.from_token("hf_" + "t" * 34)
    leader = authenticator.cache.begin(authenticator.cache_key(credentials.digest))
    early = asyncio.create_task(authenticator.authenticate(credentials))
    with pytest.raises(SourceUnavailable, match="Timed out"):
        await early
    late = [asyncio.create_task(authenticator.authenticate(credentials)) for _ in range(3)]
    await asyncio.sleep(0)
    assert len(authenticator.async_driver.loop_waiters) == 1  # the late waiters' own relay
    authenticator.cache.complete(leader, Valid(Principal(name="tess", token_role="read")))
    assert [principal.name for principal in await asyncio.gather(*late)] == ["tess"] * 3
    assert authenticator.async_driver.loop_waiters == {}


async def test_cancelled_waiters_do_not_pile_up_while_a_flight_lasts(clock):
    from hfauth_mw import Principal
    from hfauth_mw._source_protocol import Valid

    source = _StuckSource()
    source.wait_timeout = 30.0
    authenticator = Authenticator(source, cache=TokenCache(timer=clock, clock=clock))
    credentials = Credentials.from_token("hf_" + "c" * 34)
    leader = authenticator.cache.begin(authenticator.cache_key(credentials.digest))
    for _ in range(10):  # requests that join the flight, then give up
        quitters = [
            asyncio.create_task(authenticator.authenticate(credentials)) for _ in range(100)
        ]
        await asyncio.sleep(0)
        for quitter in quitters:
            quitter.cancel()
        await asyncio.gather(*quitters, return_exceptions=True)
    stayer = asyncio.create_task(authenticator.authenticate(credentials))
    await asyncio.sleep(0)
    (waiting,) = authenticator.async_driver.loop_waiters.values()
    assert len(waiting) <= 2 * 100 + 1  # swept as it doubles, not 1,001 futures
    authenticator.cache.complete(leader, Valid(Principal(name="sam", token_role="read")))
    assert (await stayer).name == "sam"
    assert authenticator.async_driver.loop_waiters == {}


async def test_cancelled_waiter_leaves_the_others_waiting(make_authenticator, hub_emulator, alice):
    authenticator = make_authenticator()
    hub_emulator.delay = 30
    leader = asyncio.create_task(authenticator.authenticate(alice))
    assert await asyncio.to_thread(hub_emulator.wait_for_held, 1)
    quitter = asyncio.create_task(authenticator.authenticate(alice))
    stayer = asyncio.create_task(authenticator.authenticate(alice))
    await asyncio.sleep(0)
    quitter.cancel()
    hub_emulator.release_held()
    assert (await leader).name == "alice"
    assert (await stayer).name == "alice"
    assert quitter.cancelled()
    assert hub_emulator.whoami_calls == 1


_WHOAMI = {
    "type": "user",
    "name": "alice",
    "auth": {"type": "access_token", "accessToken": {"role": "read", "displayName": "t"}},
}


@pytest.mark.parametrize(
    "driver", [pytest.param("sync", id="sync"), pytest.param("async", id="async")]
)
@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        pytest.param(_WHOAMI, "alice", id="read-whole"),
        pytest.param({**_WHOAMI, "pad": "x" * 300_000}, SourceUnavailable, id="over-the-cap"),
    ],
)
async def test_a_client_that_hands_the_body_over_already_read(driver, answer, expected):
    """httpx.MockTransport (and caching transports) answer with the body read: no stream."""

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answer)

    authenticator = Authenticator(
        HubWhoamiSource(),
        client=httpx.Client(transport=httpx.MockTransport(handler)),
        async_client=httpx.AsyncClient(transport=httpx.MockTransport(handler)),
    )
    credentials = Credentials.from_token("hf_" + "m" * 34)
    check = (
        asyncio.to_thread(authenticator.authenticate_sync, credentials)
        if driver == "sync"
        else authenticator.authenticate(credentials)
    )
    if expected is SourceUnavailable:
        with pytest.raises(SourceUnavailable, match="more than we accept"):
            await check
    else:
        assert (await check).name == expected


class _ServiceToken(httpx.Auth):
    """What an app's own Hub client carries: its own token on every request."""

    def __init__(self, token: str) -> None:
        self.token = token

    def auth_flow(self, request: httpx.Request):  # type: ignore[no-untyped-def]
        request.headers["Authorization"] = f"Bearer {self.token}"
        yield request


@pytest.mark.parametrize(
    "driver", [pytest.param("sync", id="sync"), pytest.param("async", id="async")]
)
async def test_a_client_with_auth_of_its_own_never_replaces_the_callers_token(
    driver, hub_emulator, hub_store
):
    """A client built for the app's own Hub calls (auth=its token) must not turn
    every caller's token, garbage included, into the app's identity."""
    service = hub_store.create_token(user="service-bot", role="write").token
    authenticator = Authenticator(
        HubWhoamiSource(hub_emulator.url),
        client=httpx.Client(auth=_ServiceToken(service)),
        async_client=httpx.AsyncClient(auth=_ServiceToken(service)),
    )
    garbage = Credentials.from_token("hf_" + "g" * 34)
    check = (
        asyncio.to_thread(authenticator.authenticate_sync, garbage)
        if driver == "sync"
        else authenticator.authenticate(garbage)
    )
    with pytest.raises(InvalidToken):
        await check


# --- issue 18 item 5: one brute-force guard per app ------------------------------------------


def test_the_middleware_and_fastapi_install_share_one_limiter(hub_store):
    # Before: install() and the middleware each built a FailureLimiter, so a
    # client had 30 failures on the middleware's paths and 30 more on routes
    # the dependencies check.
    from fastapi import FastAPI

    from hfauth_mw import FailureLimiter, Guard, HFAuthMiddleware, LocalStoreSource, TooManyFailures
    from hfauth_mw.fastapi import install

    authenticator = Authenticator(LocalStoreSource(hub_store))
    middleware_guard = HFAuthMiddleware(FastAPI(), authenticator=authenticator).guard
    dependency_guard = install(FastAPI(), authenticator=authenticator)
    assert middleware_guard.limiter is dependency_guard.limiter is authenticator.limiter
    assert type(authenticator.limiter) is FailureLimiter  # per process without Redis
    for _ in range(15):
        middleware_guard.limiter.failed("203.0.113.66")
        dependency_guard.limiter.failed("203.0.113.66")
    with pytest.raises(TooManyFailures):
        dependency_guard.limiter.check("203.0.113.66")
    # A limiter of one's own, or none, is still each guard's own choice.
    own = FailureLimiter(trusted_proxies=["10.0.0.1"])
    assert Guard(authenticator, limiter=own).limiter is own
    assert Guard(authenticator, limiter=None).limiter is None


def test_the_authenticators_limiter_trusts_its_proxies(hub_store):
    from hfauth_mw import ConfigurationError, Guard, LocalStoreSource

    authenticator = Authenticator(LocalStoreSource(hub_store), trusted_proxies=["unix", "10.0.0.5"])
    assert authenticator.limiter.trusted_proxies == {"unix", "10.0.0.5"}
    assert Guard(authenticator).client_address("", "9.9.9.9") == "9.9.9.9"
    with pytest.raises(ConfigurationError, match="trusted proxy"):
        Authenticator(LocalStoreSource(hub_store), trusted_proxies=["proxy.internal"])


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("hf_" + "Q" * 33 + "\u00e9", id="non-ascii"),
        pytest.param("hf_abc def", id="space"),
        pytest.param("", id="empty"),
    ],
)
async def test_a_malformed_bare_token_is_refused_unasked(make_authenticator, hub_emulator, token):
    """Held to a request's grammar: a pasted accent failed inside the source (a
    503, its logged error holding the token)."""
    from hfauth_mw import InvalidRequest

    authenticator = make_authenticator()
    with pytest.raises(InvalidRequest, match="not well formed"):
        authenticator.authenticate_sync(token)
    with pytest.raises(InvalidRequest, match="not well formed"):
        await authenticator.authenticate(token)
    assert hub_emulator.whoami_calls == 0
