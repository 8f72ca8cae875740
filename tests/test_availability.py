"""Availability under attack (issue 18, item 1): no client can trip the breaker
for everyone, and none keeps a revoked token working by holding it open.

Everything is real: the hub emulator behind a real reverse proxy on loopback
(``faults.Gateway``) that refuses requests because of the token they carry,
as nginx (400 for a long header line) and WAFs (403 for traversal-looking
text) do, and the middleware under test in front, as ASGI (Starlette through
``httpx.ASGITransport``) and as WSGI (a threaded werkzeug server). Clients are
told apart by ``X-Forwarded-For`` from the trusted proxy 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from adapters_support import ADAPTERS, PROXY, AppClient
from faults import Gateway
from hfauth_mw import (
    Authenticator,
    Credentials,
    FailureLimiter,
    HubWhoamiSource,
    TokenCache,
    require_read,
)

pytestmark = pytest.mark.anyio

ATTACKER = "203.0.113.66"


@pytest.fixture
def gateway(hub_emulator: Any) -> Iterator[Gateway]:
    with Gateway(hub_emulator.url, max_header_line=128) as gateway:
        yield gateway


async def call(client: httpx.AsyncClient, token: str, address: str) -> httpx.Response:
    return await client.get(
        "/whoami", headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": address}
    )


def tripping_token(i: int) -> str:
    """What the attacker sends, in turn: a token nginx refuses (400, long header
    line), one a WAF refuses (403), and one past the token-length cap."""
    kind = i % 3
    if kind == 0:
        return f"hf_{i:06d}" + "A" * 150  # 160 bytes: under the cap, over nginx's line
    if kind == 1:
        return f"hf_../../{i}/etc/passwd"
    return "hf_" + "B" * 5000  # over the 4096-byte cap: never sent


@pytest.mark.parametrize("limited", [True, False], ids=["limiter", "no-limiter"])
@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_one_client_sending_1000_tripping_tokens_denies_nobody(
    adapter: AppClient, limited: bool, gateway: Gateway, hub_store: Any
) -> None:
    # Before: each 400/403 counted against the one breaker (5 in a row open it
    # for 10 s), so the victims' cold tokens got 503, and the attacker was never
    # locked out (only invalid tokens counted).
    authenticator = Authenticator(HubWhoamiSource(gateway.url, timeout=5.0))
    limiter = FailureLimiter(trusted_proxies=[PROXY]) if limited else None
    victims = [hub_store.create_token(user=f"victim{i}", role="read").token for i in range(50)]
    attacker_statuses: list[int] = []
    victim_statuses: list[int] = []
    async with adapter(authenticator, limiter) as client:
        for i in range(1000):
            attacker_statuses.append((await call(client, tripping_token(i), ATTACKER)).status_code)
            if i % 20 == 19:
                victim = len(victim_statuses)
                response = await call(client, victims[victim], f"198.51.100.{victim + 1}")
                victim_statuses.append(response.status_code)

    assert victim_statuses.count(503) == 0
    assert victim_statuses == [200] * 50
    assert authenticator.breaker.state == "closed"
    if limited:
        # 30 failures (the refusals are charged to the attacker, the capped
        # tokens count as invalid ones), then 429 for everything it sends.
        assert attacker_statuses[:30].count(429) == 0
        assert set(attacker_statuses[30:]) == {429}
        assert sorted(set(attacker_statuses[:30])) == [401, 503]
        assert gateway.calls == 20 + 50  # two thirds of 30 reached it, and the victims
    else:
        assert attacker_statuses.count(429) == 0
        # The capped third never left the process.
        assert attacker_statuses.count(401) == 333
        assert gateway.calls == 667 + 50


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_no_stale_answer_for_a_client_holding_the_breaker_open(
    adapter: AppClient, gateway: Gateway, hub_store: Any, clock: Any
) -> None:
    # Before: with stale_if_error on, the attacker opened the breaker with junk
    # tokens and its revoked token went on working from the stale answer.
    cache = TokenCache(ttl=60, stale_if_error=600, timer=clock, clock=clock)
    authenticator = Authenticator(HubWhoamiSource(gateway.url, timeout=5.0), cache=cache)
    revoked = hub_store.create_token(user="mallory", role="write").token
    kept = hub_store.create_token(user="victim", role="read").token
    # The guard knows clients through the limiter's trusted proxies.
    limiter = FailureLimiter(trusted_proxies=[PROXY], timer=clock)
    async with adapter(authenticator, limiter) as client:
        assert (await call(client, revoked, ATTACKER)).status_code == 200
        assert (await call(client, kept, "198.51.100.7")).status_code == 200
        clock.advance(61)  # both answers stale now
        assert hub_store.revoke(Credentials.from_token(revoked).fingerprint) == 1
        for i in range(5):  # five upstream failures on cold tokens open the breaker
            response = await call(client, f"hf_explode{i:030d}", ATTACKER)
            assert response.status_code == 503
        assert authenticator.breaker.state == "open"

        refused = await call(client, revoked, ATTACKER)
        assert refused.status_code == 503
        assert authenticator.stats()["stale_served"] == 0
        # Another client is still served its stale answer while the Hub is out of reach.
        served = await call(client, kept, "198.51.100.7")
        assert served.status_code == 200
        assert served.json() == {"name": "victim"}
        assert authenticator.stats()["stale_served"] == 1


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_tokens_a_proxy_refuses_on_a_hub_decided_route_deny_nobody(
    adapter: AppClient, gateway: Gateway, hub_emulator: Any, hub_store: Any
) -> None:
    """The hub's auth-check goes out with the token too (with whoami-v2, for a cold
    token): a proxy's refusal of it must not count against the breaker either.
    Before: five such tokens opened it, and every client got 503 for 10 s."""
    hub_emulator.add_repo("model:acme/public", "public")
    authenticator = Authenticator(HubWhoamiSource(gateway.url, timeout=5.0))
    victim = hub_store.create_token(user="victim", role="read").token
    rules = [require_read("GET /whoami", repo="acme/public")]
    async with adapter(authenticator, None, rules=rules) as client:
        attacker = [(await call(client, tripping_token(3 * i), ATTACKER)) for i in range(10)]
        assert [response.status_code for response in attacker] == [503] * 10
        assert authenticator.breaker.state == "closed"
        assert (await call(client, victim, "198.51.100.9")).status_code == 200
