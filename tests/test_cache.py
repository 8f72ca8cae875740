from concurrent.futures import Future
from datetime import UTC, datetime

import pytest

from hfauth_mw import ConfigurationError, Invalid, Principal, TokenCache, Valid
from hfauth_mw._cache import Leader
from hfauth_mw._source_protocol import EXPIRED


def valid(expires_in: float | None, clock) -> Valid:
    expires_at = None if expires_in is None else datetime.fromtimestamp(clock() + expires_in, UTC)
    return Valid(Principal(name="alice", expires_at=expires_at))


def settle(cache: TokenCache, key: bytes, outcome) -> None:
    step = cache.begin(key)
    assert isinstance(step, Leader)
    cache.complete(step, outcome)


@pytest.mark.parametrize(
    ("expires_in", "ttl", "alive_at", "gone_at"),
    [
        pytest.param(None, 60, 59.9, 60.0, id="ttl-without-expiry"),
        pytest.param(3600, 60, 59.9, 60.0, id="ttl-shorter-than-expiry"),
        pytest.param(20, 60, 19.9, 20.0, id="expiry-caps-ttl"),
    ],
)
def test_positive_lifetime(clock, expires_in, ttl, alive_at, gone_at):
    cache = TokenCache(ttl=ttl, timer=clock, clock=clock)
    outcome = valid(expires_in, clock)
    settle(cache, b"k", outcome)
    start = clock.now
    if alive_at is not None:
        clock.now = start + alive_at
        assert cache.get(b"k") is outcome
    clock.now = start + gone_at
    assert cache.get(b"k") is None


@pytest.mark.parametrize("expired_for", [pytest.param(1, id="a-second"), pytest.param(0, id="now")])
def test_an_expired_answer_is_remembered_as_a_negative_one(clock, expired_for):
    """No source will call an expired token valid again: its retries are answered
    here for negative_ttl, not by another upstream call each."""
    cache = TokenCache(ttl=60, negative_ttl=10, timer=clock, clock=clock)
    settle(cache, b"k", valid(-expired_for, clock))
    assert cache.fresh(b"k") is None
    clock.advance(9.9)
    assert cache.get(b"k") == EXPIRED
    assert not isinstance(cache.begin(b"k"), Leader)
    clock.advance(0.1)
    assert cache.get(b"k") is None


@pytest.mark.parametrize(
    ("expires_in", "kept_at", "dropped_at"),
    [
        pytest.param(None, 89.9, 90.0, id="ttl-plus-stale-window"),
        pytest.param(75, 74.9, 75.0, id="expiry-ends-the-stale-window"),
    ],
)
def test_entries_are_kept_for_stale_if_error_never_past_expiry(
    clock, expires_in, kept_at, dropped_at
):
    cache = TokenCache(ttl=60, stale_if_error=30, timer=clock, clock=clock)
    settle(cache, b"k", valid(expires_in, clock))
    start = clock.now
    clock.now = start + kept_at
    assert b"k" in cache.readable  # stale, but kept: what stale-if-error serves
    clock.now = start + dropped_at
    settle(cache, b"other", valid(None, clock))  # an insertion purges what expired
    assert b"k" not in cache.readable


def test_negative_answers_expire_on_their_own_ttl(clock):
    cache = TokenCache(ttl=60, negative_ttl=10, timer=clock, clock=clock)
    settle(cache, b"bad", Invalid())
    clock.advance(9.9)
    assert isinstance(cache.get(b"bad"), Invalid)
    clock.advance(0.1)
    assert cache.get(b"bad") is None


def test_flood_of_invalid_tokens_does_not_evict_good_entries(clock):
    cache = TokenCache(maxsize=2, negative_maxsize=2, timer=clock, clock=clock)
    good = valid(None, clock)
    settle(cache, b"good", good)
    for index in range(1000):
        settle(cache, f"random-{index}".encode(), Invalid())
    assert cache.get(b"good") is good
    assert len(cache) == 3


def test_size_is_bounded(clock):
    cache = TokenCache(maxsize=5, timer=clock, clock=clock)
    for index in range(50):
        settle(cache, str(index).encode(), valid(None, clock))
    assert len(cache) == 5


def test_single_flight_hands_followers_the_leaders_future(clock):
    cache = TokenCache(timer=clock, clock=clock)
    leader = cache.begin(b"k")
    assert isinstance(leader, Leader)
    followers = [cache.begin(b"k") for _ in range(10)]
    assert all(follower is leader.future for follower in followers)
    assert cache.inflight == 1
    outcome = valid(None, clock)
    cache.complete(leader, outcome)
    assert all(follower.result(timeout=0) is outcome for follower in followers)
    assert cache.inflight == 0
    assert cache.begin(b"k") is outcome


def test_abandon_stores_nothing_and_wakes_waiters(clock):
    cache = TokenCache(timer=clock, clock=clock)
    leader = cache.begin(b"k")
    follower = cache.begin(b"k")
    assert isinstance(leader, Leader)
    assert isinstance(follower, Future)
    error = RuntimeError("upstream down")
    cache.abandon(leader, error)
    assert follower.exception(timeout=0) is error
    assert cache.get(b"k") is None
    assert isinstance(cache.begin(b"k"), Leader)


def test_invalidate_and_clear(clock):
    cache = TokenCache(timer=clock, clock=clock)
    settle(cache, b"a", valid(None, clock))
    settle(cache, b"b", Invalid())
    cache.invalidate(b"a")
    assert cache.get(b"a") is None
    assert cache.get(b"b") is not None
    cache.clear()
    assert len(cache) == 0


def test_a_flight_begun_while_entries_are_dropped_cannot_use_them(clock):
    """A revocation runs drop_matching; a flight that begins while its predicate runs
    sees the doomed entry as its stale answer, and must not count as current."""
    cache = TokenCache(ttl=60, stale_if_error=30, timer=clock, clock=clock)
    settle(cache, b"a", valid(None, clock))
    clock.advance(61)  # stale, inside the stale window
    begun: list[Leader] = []

    def doomed(key: bytes) -> bool:
        if not begun:
            step = cache.begin(b"a")
            assert isinstance(step, Leader)
            begun.append(step)
        return key == b"a"

    assert cache.drop_matching(doomed) == 1
    assert begun[0].stale is not None
    assert not cache.is_current(begun[0])


@pytest.mark.parametrize(
    ("ttl", "negative_ttl"),
    [
        pytest.param(60, 10, id="default"),
        pytest.param(5, 5, id="never-longer-than-ttl"),
        pytest.param(0, 0, id="ttl-0-turns-caching-off"),
    ],
)
def test_negative_ttl_default_follows_a_short_ttl(ttl, negative_ttl):
    assert TokenCache(ttl=ttl).negative_ttl == negative_ttl


def test_zero_ttl_disables_caching(clock):
    cache = TokenCache(ttl=0, timer=clock, clock=clock)
    settle(cache, b"a", valid(None, clock))
    settle(cache, b"b", Invalid())
    assert len(cache) == 0


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"ttl": -1}, id="negative-ttl"),
        pytest.param({"ttl": 7200}, id="ttl-over-an-hour"),
        pytest.param({"ttl": 10, "negative_ttl": 20}, id="negative-longer-than-positive"),
        pytest.param({"maxsize": 0}, id="zero-size"),
        pytest.param({"negative_maxsize": 0}, id="zero-negative-size"),
    ],
)
def test_bad_options(options):
    with pytest.raises(ConfigurationError):
        TokenCache(**options)


def test_repr_shows_sizes_not_keys(clock):
    cache = TokenCache(timer=clock, clock=clock)
    settle(cache, b"secret-key-bytes", valid(None, clock))
    assert "secret" not in repr(cache)
    assert "size=1/" in repr(cache)


def test_lock_free_view_follows_evictions_expiry_and_invalidation(clock):
    cache = TokenCache(maxsize=3, ttl=10, timer=clock, clock=clock)
    for index in range(10):
        settle(cache, bytes([index]), valid(None, clock))
    assert sorted(cache.readable) == [bytes([7]), bytes([8]), bytes([9])]
    assert cache.fresh(bytes([0])) is None
    assert cache.fresh(bytes([9])) is not None
    clock.advance(10)
    assert cache.fresh(bytes([9])) is None  # expired entries are never served fresh
    settle(cache, b"new", valid(None, clock))  # insertion purges what expired
    assert list(cache.readable) == [b"new"]
    cache.invalidate(b"new")
    assert cache.readable == {}
    settle(cache, b"a", valid(None, clock))
    cache.clear()
    assert cache.readable == {}


def test_hits_are_counted(clock):
    cache = TokenCache(timer=clock, clock=clock)
    settle(cache, b"k", valid(None, clock))
    for _ in range(5):
        cache.begin(b"k")
    assert cache.hits == 5
