from contextlib import nullcontext

import pytest

from conftest import FakeClock
from hfauth_mw import (
    ConfigurationError,
    FailureLimiter,
    SourceUnavailable,
    TooManyFailures,
    UpstreamBreaker,
)
from hfauth_mw._breaker_limiter import client_address

FAIL = SourceUnavailable("down")


def test_breaker_opens_after_threshold_and_half_opens_after_cooldown(clock):
    breaker = UpstreamBreaker(failure_threshold=3, cooldown=10, timer=clock)
    for _ in range(3):
        breaker.acquire()
        breaker.release(FAIL)
    assert breaker.state == "open"
    with pytest.raises(SourceUnavailable) as caught:
        breaker.acquire()
    assert caught.value.retry_after == 10
    clock.advance(10)
    assert breaker.state == "half-open"
    breaker.acquire()  # the one trial call
    with pytest.raises(SourceUnavailable):
        breaker.acquire()  # nobody else while the trial runs
    breaker.release(None)
    assert breaker.state == "closed"
    breaker.acquire()
    breaker.release(None)


def test_failed_trial_reopens(clock):
    breaker = UpstreamBreaker(failure_threshold=1, cooldown=5, timer=clock)
    breaker.acquire()
    breaker.release(FAIL)
    clock.advance(5)
    breaker.acquire()
    breaker.release(FAIL)
    assert breaker.state == "open"


def test_success_resets_the_failure_count(clock):
    breaker = UpstreamBreaker(failure_threshold=2, timer=clock)
    for outcome in (FAIL, None, FAIL, None, FAIL):
        breaker.acquire()
        breaker.release(outcome)
    assert breaker.state == "closed"


def test_cancelled_calls_free_the_slot_and_leave_the_state(clock):
    breaker = UpstreamBreaker(max_concurrent=1, failure_threshold=2, cooldown=5, timer=clock)
    for _ in range(2):
        breaker.acquire()
        breaker.release(FAIL)
    clock.advance(5)
    breaker.acquire()  # the trial
    breaker.cancel()
    assert breaker.state == "half-open"
    breaker.acquire()  # the slot and the trial are free again
    breaker.release(FAIL)
    assert breaker.state == "open"


def test_upstream_retry_after_is_honoured(clock):
    breaker = UpstreamBreaker(failure_threshold=100, timer=clock)
    breaker.acquire()
    breaker.release(FAIL, upstream_retry_after=30)
    clock.advance(29)
    with pytest.raises(SourceUnavailable) as caught:
        breaker.acquire()
    assert caught.value.retry_after == 1
    clock.advance(1)
    breaker.acquire()


@pytest.mark.parametrize(
    ("asked", "open_after_success"),
    [
        pytest.param(30, True, id="upstream-asked-to-wait"),
        pytest.param(None, False, id="failures-only"),
    ],
)
def test_a_success_already_running_does_not_lift_the_upstreams_wait(
    clock, asked, open_after_success
):
    """A call sent before the Hub's 429 succeeds after it: the Hub's
    Retry-After still holds, while a cool-down of our own ends with a success."""
    breaker = UpstreamBreaker(failure_threshold=1, cooldown=10, timer=clock)
    breaker.acquire()  # sent first, answered last
    breaker.acquire()
    breaker.release(FAIL, upstream_retry_after=asked)
    breaker.release(None)

    assert (breaker.state == "open") is open_after_success
    if open_after_success:
        with pytest.raises(SourceUnavailable) as caught:
            breaker.acquire()
        assert caught.value.retry_after == 30
        clock.advance(30)
    breaker.acquire()


def test_concurrency_bound(clock):
    breaker = UpstreamBreaker(max_concurrent=2, timer=clock)
    breaker.acquire()
    breaker.acquire()
    with pytest.raises(SourceUnavailable):
        breaker.acquire()
    assert breaker.rejected == 1
    breaker.release(None)
    breaker.acquire()


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"max_concurrent": 0}, id="no-concurrency"),
        pytest.param({"failure_threshold": 0}, id="no-threshold"),
        pytest.param({"cooldown": 0}, id="no-cooldown"),
    ],
)
def test_breaker_bad_options(options):
    with pytest.raises(ConfigurationError):
        UpstreamBreaker(**options)


def test_limiter_locks_out_after_max_failures_until_window_ends(clock):
    limiter = FailureLimiter(max_failures=3, window=60, timer=clock)
    for _ in range(3):
        limiter.check("10.0.0.1")
        limiter.failed("10.0.0.1")
    with pytest.raises(TooManyFailures) as caught:
        limiter.check("10.0.0.1")
    assert caught.value.status_code == 429
    assert caught.value.retry_after == 60
    limiter.check("10.0.0.2")  # others are not affected
    clock.advance(59)
    with pytest.raises(TooManyFailures) as caught:
        limiter.check("10.0.0.1")
    assert caught.value.retry_after == 1
    clock.advance(1)
    limiter.check("10.0.0.1")


@pytest.mark.parametrize(
    "max_failures", [pytest.param(1, id="all-locked-out"), pytest.param(30, id="counting")]
)
def test_limiter_memory_is_bounded(clock, max_failures):
    limiter = FailureLimiter(max_failures=max_failures, maxsize=100, timer=clock)
    for index in range(10_000):
        limiter.failed(f"client-{index}")
    assert len(limiter._counts) == 100
    assert len(limiter.lockouts) <= 100
    with pytest.raises(TooManyFailures) if max_failures == 1 else nullcontext():
        limiter.check("client-9999")


def test_limiter_ignores_unknown_clients(clock):
    limiter = FailureLimiter(max_failures=1, timer=clock)
    limiter.failed(None)
    limiter.check(None)


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        pytest.param("1.2.3.4", None, set(), "1.2.3.4", id="direct"),
        pytest.param("1.2.3.4", "9.9.9.9", set(), "1.2.3.4", id="untrusted-peer-header-ignored"),
        pytest.param("10.0.0.1", "9.9.9.9", {"10.0.0.1"}, "9.9.9.9", id="trusted-proxy"),
        pytest.param(
            "10.0.0.1", "6.6.6.6, 9.9.9.9", {"10.0.0.1"}, "9.9.9.9", id="rightmost-untrusted"
        ),
        pytest.param(
            "10.0.0.1",
            "9.9.9.9, 10.0.0.2",
            {"10.0.0.1", "10.0.0.2"},
            "9.9.9.9",
            id="two-proxies",
        ),
        pytest.param("10.0.0.1", "junk, 9.9.9.9", {"10.0.0.1"}, "9.9.9.9", id="junk-left"),
        # Unknown, not the proxy: as the proxy, every client behind it would share one count.
        pytest.param("10.0.0.1", "junk", {"10.0.0.1"}, None, id="junk-only"),
        pytest.param("10.0.0.1", "unknown", {"10.0.0.1"}, None, id="unknown"),
        # Proxies that write the port (Azure Application Gateway: ip:port).
        pytest.param("10.0.0.1", "9.9.9.9:51234", {"10.0.0.1"}, "9.9.9.9", id="ipv4-port"),
        pytest.param("10.0.0.1", "[2001:db8::7]:443", {"10.0.0.1"}, "2001:db8::7", id="ipv6-port"),
        pytest.param("10.0.0.1", "[2001:db8::7]", {"10.0.0.1"}, "2001:db8::7", id="ipv6-brackets"),
        pytest.param("10.0.0.1", "[2001:db8::7", {"10.0.0.1"}, None, id="unclosed-bracket"),
        pytest.param(None, "9.9.9.9", set(), None, id="no-peer"),
        # A dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d.
        pytest.param("::ffff:9.9.9.9", None, set(), "9.9.9.9", id="mapped-peer"),
        pytest.param(
            "::ffff:10.0.0.1", "9.9.9.9", {"10.0.0.1"}, "9.9.9.9", id="mapped-trusted-proxy"
        ),
        pytest.param(
            "10.0.0.1", "::ffff:9.9.9.9", {"10.0.0.1"}, "9.9.9.9", id="mapped-forwarded-hop"
        ),
        pytest.param("2001:db8::1", None, set(), "2001:db8::1", id="plain-ipv6-unchanged"),
        pytest.param("::ffff:a00:1", "9.9.9.9", {"10.0.0.1"}, "9.9.9.9", id="mapped-in-hex"),
        pytest.param("2001:DB8:0::1", "9.9.9.9", {"2001:db8::1"}, "9.9.9.9", id="ipv6-spelling"),
    ],
)
def test_client_address(peer, forwarded, trusted, expected):
    assert client_address(peer, forwarded, frozenset(trusted)) == expected


@pytest.mark.parametrize(
    "proxies",
    [
        pytest.param(["proxy.internal"], id="host-name"),
        pytest.param([167772161], id="a-number"),
        pytest.param("10.0.0.1/8", id="a-network"),
    ],
)
def test_limiter_refuses_non_ip_proxies(proxies):
    with pytest.raises(ConfigurationError):
        FailureLimiter(trusted_proxies=proxies)


@pytest.mark.parametrize(
    "proxies",
    [
        pytest.param("10.0.0.1", id="one-address-as-text"),
        pytest.param(["::ffff:10.0.0.1"], id="ipv4-mapped"),
        pytest.param(["::ffff:a00:1"], id="ipv4-mapped-in-hex"),
    ],
)
def test_limiter_trusts_a_proxy_however_it_is_written(proxies):
    assert FailureLimiter(trusted_proxies=proxies).trusted_proxies == {"10.0.0.1"}


def test_ipv4_clients_on_a_dual_stack_socket_are_counted_one_by_one(clock):
    """As ::ffff:a.b.c.d they would all fall in one /64: one sprayer would lock out everyone."""
    limiter = FailureLimiter(max_failures=3, timer=clock)
    for _ in range(3):
        limiter.failed("::ffff:127.0.0.1")
    with pytest.raises(TooManyFailures):
        limiter.check("::ffff:127.0.0.1")
    with pytest.raises(TooManyFailures):
        limiter.check("127.0.0.1")  # the same client, however the socket reports it
    limiter.check("::ffff:127.0.0.2")  # another client is not locked out
    with pytest.raises(TooManyFailures):
        limiter.check("::ffff:7f00:1")  # the same address written in hex


def test_ipv6_clients_are_counted_per_64(clock):
    limiter = FailureLimiter(max_failures=3, timer=clock)
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::9"):
        limiter.failed(host)
    with pytest.raises(TooManyFailures):
        limiter.check("2001:db8:1:2::abcd")
    limiter.check("2001:db8:1:3::1")  # the next /64 is someone else


def test_locking_out_forgets_lockouts_that_ended():
    clock = FakeClock()
    limiter = FailureLimiter(max_failures=2, window=30, timer=clock)
    assert not limiter.locking_out()
    limiter.failed("203.0.113.7")
    assert not limiter.locking_out()
    limiter.failed("203.0.113.7")
    assert limiter.locking_out()
    clock.advance(29)
    assert limiter.locking_out()
    clock.advance(1)
    assert not limiter.locking_out()
    limiter.check("203.0.113.7")  # no longer raises


# --- issue 18: who holds the breaker open; Unix-socket peers -------------------------------------


def test_the_breaker_knows_whose_failures_hold_it_open(clock):
    breaker = UpstreamBreaker(failure_threshold=3, cooldown=10, timer=clock)
    for client in ("9.9.9.9", "9.9.9.9", "8.8.8.8"):
        breaker.acquire()
        breaker.release(FAIL, client=client)
    assert breaker.state == "open"
    # Opened by two clients, neither alone: stale answers for both.
    assert not breaker.held_open_by("9.9.9.9")
    assert not breaker.held_open_by("8.8.8.8")
    clock.advance(10)
    breaker.acquire()
    breaker.release(FAIL, client="9.9.9.9")
    assert breaker.held_open_by("9.9.9.9")
    assert not breaker.held_open_by("8.8.8.8")
    assert not breaker.held_open_by(None)
    # A failure blamed on nobody (a warm token) blames nobody; a success forgets.
    clock.advance(10)
    breaker.acquire()
    breaker.release(None)
    assert breaker.state == "closed"
    assert not breaker.held_open_by("9.9.9.9")


def test_ipv6_clients_are_blamed_per_64(clock):
    breaker = UpstreamBreaker(failure_threshold=2, timer=clock)
    for address in ("2001:db8::1", "2001:db8::2"):
        breaker.acquire()
        breaker.release(FAIL, client=address)
    assert breaker.held_open_by("2001:db8::ffff")


@pytest.mark.parametrize(
    ("peer", "forwarded", "trusted", "expected"),
    [
        # uvicorn on a Unix socket: client=None; gunicorn: ''; werkzeug: '<local>'.
        pytest.param(None, "9.9.9.9", {"unix"}, "9.9.9.9", id="uvicorn-trusted"),
        pytest.param("", "9.9.9.9", {"unix"}, "9.9.9.9", id="gunicorn-trusted"),
        pytest.param("<local>", "9.9.9.9", {"unix"}, "9.9.9.9", id="werkzeug-trusted"),
        pytest.param("", "6.6.6.6, 9.9.9.9", {"unix"}, "9.9.9.9", id="rightmost-hop"),
        pytest.param(
            "", "9.9.9.9, 10.0.0.2", {"unix", "10.0.0.2"}, "9.9.9.9", id="unix-then-proxy"
        ),
        # Never one key for everyone: no header, junk, or an untrusted socket.
        pytest.param("", None, {"unix"}, None, id="trusted-no-header"),
        pytest.param("", "junk", {"unix"}, None, id="trusted-junk-header"),
        pytest.param("", "9.9.9.9", set(), None, id="gunicorn-untrusted"),
        pytest.param("<local>", "9.9.9.9", {"10.0.0.1"}, None, id="werkzeug-untrusted"),
        # An IP peer is never read as the socket.
        pytest.param("10.0.0.1", "9.9.9.9", {"unix"}, "10.0.0.1", id="ip-peer-not-unix"),
    ],
)
def test_unix_socket_peers(peer, forwarded, trusted, expected):
    assert client_address(peer, forwarded, frozenset(trusted)) == expected


def test_an_untrusted_unix_socket_is_named_once(no_token_in_logs, monkeypatch):
    monkeypatch.setattr("hfauth_mw._breaker_limiter._warned", set())
    for _ in range(3):
        assert client_address("", "9.9.9.9", frozenset()) is None
    warnings = [r for r in no_token_in_logs if getattr(r, "hfauth_event", None) == "unix_peer"]
    assert len(warnings) == 1
    assert "trusted_proxies=['unix']" in warnings[0].getMessage()


def test_a_unix_socket_never_shares_one_key_and_never_locks_out_everyone(clock):
    # Before: gunicorn's REMOTE_ADDR='' was one key: 30 bad tokens locked out every user.
    limiter = FailureLimiter(max_failures=3, timer=clock)
    for _ in range(10):
        limiter.failed(client_address("", None, limiter.trusted_proxies))
    limiter.check(client_address("", None, limiter.trusted_proxies))
    assert not limiter.lockouts


def test_unix_is_a_trusted_proxy_name():
    assert FailureLimiter(trusted_proxies=["unix", "10.0.0.1"]).trusted_proxies == {
        "unix",
        "10.0.0.1",
    }
    with pytest.raises(ConfigurationError, match="unix"):
        FailureLimiter(trusted_proxies=["unix:/run/nginx.sock"])


@pytest.mark.parametrize(
    ("client", "key"),
    [
        pytest.param("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64", id="ipv6-per-64"),
        # Every IPv4 client seen through NAT64 sat in one /64: one count for all.
        pytest.param("64:ff9b::c633:6407", "198.51.100.7", id="nat64-by-its-ipv4"),
        pytest.param("64:ff9b::cb00:7142", "203.0.113.66", id="nat64-another"),
        pytest.param("9.9.9.9", "9.9.9.9", id="ipv4"),
    ],
)
def test_what_the_guard_counts(client, key):
    from hfauth_mw._breaker_limiter import _client_key

    assert _client_key(client) == key
