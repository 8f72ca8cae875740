"""Tests of the hub emulator, over real HTTP on loopback."""

from __future__ import annotations

import http.client
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from hfauth_mw._exceptions import ConfigurationError
from hfauth_mw._principal import fingerprint_of, principal_from_whoami, token_digest
from hfauth_mw._store import FineGrainedEntry, LocalTokenStore, OrgGrant
from hfauth_mw.testing import INVALID_CREDENTIALS, HubEmulator

WAIT = 10.0  # generous upper bound for things that should take milliseconds


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(hub_emulator: HubEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub_emulator.url, timeout=WAIT) as http:
        yield http


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=4) as executor:
        yield executor


# --- fixtures and lifecycle ------------------------------------------------------------


def test_fixtures_are_wired(hub_emulator: HubEmulator, hub_store: LocalTokenStore) -> None:
    assert hub_emulator.store is hub_store
    parts = urlsplit(hub_emulator.url)
    assert parts.scheme == "http"
    assert parts.hostname == "127.0.0.1"
    assert parts.port
    assert hub_emulator.whoami_calls == 0
    assert hub_emulator.auth_check_calls == 0


def test_url_needs_start(hub_store: LocalTokenStore) -> None:
    emulator = HubEmulator(hub_store)
    with pytest.raises(RuntimeError, match="start"):
        _ = emulator.url
    emulator.stop()  # stopping a stopped emulator is fine
    with emulator:
        assert emulator.url.startswith("http://127.0.0.1:")
        with pytest.raises(RuntimeError, match="already running"):
            emulator.start()
    with pytest.raises(RuntimeError):
        _ = emulator.url


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"port": -1}, "port", id="negative-port"),
        pytest.param({"port": 70000}, "port", id="port-too-big"),
        pytest.param({"host": ""}, "host", id="empty-host"),
        pytest.param({"repos": {"model:a/b": "secret"}}, "visibility", id="bad-visibility"),
        pytest.param({"repos": {"widget:a/b": "public"}}, "repos", id="bad-repo-type"),
        pytest.param({"repos": {"model:ab": "public"}}, "repos", id="repo-without-owner"),
    ],
)
def test_constructor_validation(
    hub_store: LocalTokenStore, kwargs: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message):
        HubEmulator(hub_store, **kwargs)


@pytest.mark.parametrize(
    ("host", "allow_remote", "refused", "url"),
    [
        pytest.param("0.0.0.0", False, True, None, id="all-interfaces-refused"),
        pytest.param("::", False, True, None, id="all-ipv6-interfaces-refused"),
        pytest.param("example.com", False, True, None, id="a-host-name-refused"),
        pytest.param("0.0.0.0", True, False, "http://0.0.0.0:", id="all-interfaces-allowed"),
        pytest.param("127.0.0.1", False, False, "http://127.0.0.1:", id="ipv4-loopback"),
        pytest.param("localhost", False, False, "http://", id="localhost"),
        pytest.param("[::1]", False, False, "http://[::1]:", id="bracketed-ipv6-loopback"),
    ],
)
def test_a_non_loopback_host_needs_allow_remote(
    hub_store: LocalTokenStore, host: str, allow_remote: bool, refused: bool, url: str | None
) -> None:
    """It tells anyone who asks whose each token is: all interfaces only when asked for."""
    if refused:
        with pytest.raises(ConfigurationError, match="pass allow_remote=True to insist"):
            HubEmulator(hub_store, host=host, allow_remote=allow_remote)
        return
    with HubEmulator(hub_store, host=host, allow_remote=allow_remote) as emulator:
        assert url is not None
        assert emulator.url.startswith(url)


# --- whoami-v2 ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        pytest.param(
            {"user": "alice", "role": "read"},
            {"name": "alice", "token_role": "read"},
            id="read",
        ),
        pytest.param(
            {"user": "bob", "role": "write", "orgs": [OrgGrant("acme", "admin")]},
            {"name": "bob", "token_role": "write"},
            id="write-with-org",
        ),
        pytest.param(
            {
                "user": "carol",
                "role": "fineGrained",
                "fine_grained": [FineGrainedEntry("model", "acme/x", ("repo.content.read",))],
                "can_read_gated_repos": True,
            },
            {"name": "carol", "token_role": "fineGrained", "can_read_gated_repos": True},
            id="fine-grained",
        ),
    ],
)
def test_whoami_answer_parses_to_principal(
    hub_emulator: HubEmulator,
    hub_store: LocalTokenStore,
    client: httpx.Client,
    kwargs: dict[str, Any],
    expected: dict[str, Any],
) -> None:
    issued = hub_store.create_token(display_name="test", **kwargs)
    response = client.get("/api/whoami-v2", headers=bearer(issued.token))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body == hub_store.lookup(token_digest(issued.token))
    principal = principal_from_whoami(body, fingerprint=issued.record.fingerprint)
    for attribute, value in expected.items():
        assert getattr(principal, attribute) == value, attribute
    assert principal.token_name == "test"
    assert principal.fingerprint == fingerprint_of(token_digest(issued.token))
    if kwargs.get("orgs"):
        assert [(org.name, org.role) for org in principal.orgs] == [("acme", "admin")]
    assert hub_emulator.whoami_calls == 1


@pytest.mark.parametrize(
    "case",
    [
        pytest.param("missing", id="no-header"),
        pytest.param("unknown", id="unknown-token"),
        pytest.param("revoked", id="revoked-token"),
        pytest.param("expired", id="expired-token"),
        pytest.param("basic", id="basic-scheme"),
        pytest.param("empty", id="bearer-without-token"),
        pytest.param("two-headers", id="two-authorization-headers"),
    ],
)
def test_whoami_401(
    hub_emulator: HubEmulator, hub_store: LocalTokenStore, client: httpx.Client, case: str
) -> None:
    good = hub_store.create_token(user="alice")
    headers: Any = bearer(good.token)
    if case == "missing":
        headers = {}
    elif case == "unknown":
        headers = bearer("hf_" + "x" * 34)
    elif case == "revoked":
        hub_store.revoke(good.record.fingerprint)
    elif case == "expired":
        expired = hub_store.create_token(
            user="alice", expires_at=datetime.now(UTC) - timedelta(seconds=1)
        )
        headers = bearer(expired.token)
    elif case == "basic":
        headers = {"Authorization": "Basic aGZfdXNlcjp4"}
    elif case == "empty":
        headers = {"Authorization": "Bearer"}
    elif case == "two-headers":
        headers = [("Authorization", f"Bearer {good.token}")] * 2
    response = client.get("/api/whoami-v2", headers=headers)
    assert response.status_code == 401
    assert response.json() == {"error": INVALID_CREDENTIALS}
    assert response.headers["X-Error-Message"] == INVALID_CREDENTIALS
    assert hub_emulator.whoami_calls == 1


def test_bearer_scheme_is_case_insensitive(
    hub_store: LocalTokenStore, client: httpx.Client
) -> None:
    issued = hub_store.create_token(user="alice")
    response = client.get("/api/whoami-v2", headers={"Authorization": f"bearer {issued.token}"})
    assert response.status_code == 200


def test_token_is_not_normalised(hub_store: LocalTokenStore, client: httpx.Client) -> None:
    hub_store.add_token("hf_MixedCase", user="alice")
    assert client.get("/api/whoami-v2", headers=bearer("hf_MixedCase")).status_code == 200
    assert client.get("/api/whoami-v2", headers=bearer("hf_mixedcase")).status_code == 401


def test_revocation_is_seen_at_once(hub_store: LocalTokenStore, client: httpx.Client) -> None:
    issued = hub_store.create_token(user="alice")
    assert client.get("/api/whoami-v2", headers=bearer(issued.token)).status_code == 200
    hub_store.revoke(issued.record.fingerprint)
    assert client.get("/api/whoami-v2", headers=bearer(issued.token)).status_code == 401


@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/", id="root"),
        pytest.param("GET", "/api/whoami", id="whoami-v1"),
        pytest.param("GET", "/api/whoami-v2/extra", id="whoami-suffix"),
        pytest.param("POST", "/api/whoami-v2", id="post-whoami"),
        pytest.param("DELETE", "/api/models/a/b/auth-check", id="delete-auth-check"),
        pytest.param("GET", "/api/widgets/a/b/auth-check", id="unknown-repo-type"),
        pytest.param("GET", "/api/models/a/auth-check", id="repo-without-owner"),
    ],
)
def test_anything_else_is_404_json(
    hub_emulator: HubEmulator, client: httpx.Client, method: str, path: str
) -> None:
    response = client.request(method, path, content=b"{}" if method == "POST" else None)
    assert response.status_code == 404
    assert response.json() == {"error": "Not Found"}
    assert hub_emulator.whoami_calls == 0
    assert hub_emulator.auth_check_calls == 0


def test_keep_alive_connection_serves_several_requests(
    hub_emulator: HubEmulator, hub_store: LocalTokenStore
) -> None:
    issued = hub_store.create_token(user="alice")
    parts = urlsplit(hub_emulator.url)
    assert parts.hostname is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=WAIT)
    try:
        for path in ("/api/whoami-v2", "/nope", "/api/whoami-v2"):
            connection.request("GET", path, headers=bearer(issued.token))
            response = connection.getresponse()
            response.read()
            assert response.status in (200, 404)
            assert response.getheader("Connection") != "close"
    finally:
        connection.close()
    assert hub_emulator.whoami_calls == 2


@pytest.mark.usefixtures("client_logs_urls_with_tokens")
@pytest.mark.usefixtures("client_logs_urls_with_tokens")  # the query-string token below
def test_nothing_is_logged(
    hub_store: LocalTokenStore, client: httpx.Client, capfd: pytest.CaptureFixture[str]
) -> None:
    # http.server writes request lines to stderr by default; the emulator must not.
    issued = hub_store.create_token(user="alice")
    client.get("/api/whoami-v2", headers=bearer(issued.token))
    client.get("/api/whoami-v2", headers=bearer("hf_not_a_known_token_value"))
    client.get("/api/models/alice/x/auth-check", headers=bearer(issued.token))
    client.get(f"/nope?token={issued.token}")
    out, err = capfd.readouterr()
    assert out == ""
    assert err == ""


# --- counters ------------------------------------------------------------------------------


def test_counters(
    hub_emulator: HubEmulator, hub_store: LocalTokenStore, client: httpx.Client
) -> None:
    issued = hub_store.create_token(user="alice")
    for _ in range(3):
        client.get("/api/whoami-v2", headers=bearer(issued.token))
    client.get("/api/whoami-v2")
    client.get("/api/models/alice/x/auth-check", headers=bearer(issued.token))
    client.get("/api/datasets/alice/x/auth-check/write", headers=bearer(issued.token))
    client.get("/elsewhere")
    assert (hub_emulator.whoami_calls, hub_emulator.auth_check_calls) == (4, 2)
    hub_emulator.reset_counters()
    assert (hub_emulator.whoami_calls, hub_emulator.auth_check_calls) == (0, 0)
    client.get("/api/whoami-v2", headers=bearer(issued.token))
    assert hub_emulator.whoami_calls == 1


# --- fault injection -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "body", "times"),
    [
        pytest.param(503, {}, b"", 1, id="503-once"),
        pytest.param(
            429,
            {
                "RateLimit": '"api";r=0;t=42',
                "RateLimit-Policy": '"fixed window";"api";q=500;w=300',
                "Retry-After": "42",
            },
            b'{"error": "rate limited"}',
            2,
            id="429-twice-with-headers",
        ),
        pytest.param(500, {"Content-Type": "text/plain"}, b"boom", 3, id="500-thrice"),
    ],
)
def test_fail_next_then_recover(
    hub_emulator: HubEmulator,
    hub_store: LocalTokenStore,
    client: httpx.Client,
    status: int,
    headers: dict[str, str],
    body: bytes,
    times: int,
) -> None:
    issued = hub_store.create_token(user="alice")
    hub_emulator.fail_next(status, headers=headers, body=body, times=times)
    for _ in range(times):
        response = client.get("/api/whoami-v2", headers=bearer(issued.token))
        assert response.status_code == status
        assert response.content == body
        for name, value in headers.items():
            assert response.headers[name] == value
    recovered = client.get("/api/whoami-v2", headers=bearer(issued.token))
    assert recovered.status_code == 200
    assert recovered.json()["name"] == "alice"
    assert hub_emulator.whoami_calls == times + 1  # faulted calls are counted


def test_fail_until_cleared(
    hub_emulator: HubEmulator, hub_store: LocalTokenStore, client: httpx.Client
) -> None:
    issued = hub_store.create_token(user="alice")
    hub_emulator.fail_next(503)
    statuses = [
        client.get("/api/whoami-v2", headers=bearer(issued.token)).status_code for _ in range(5)
    ]
    assert statuses == [503] * 5
    hub_emulator.clear_faults()
    assert client.get("/api/whoami-v2", headers=bearer(issued.token)).status_code == 200


def test_faults_queue_in_order_and_cover_auth_check(
    hub_emulator: HubEmulator, hub_store: LocalTokenStore, client: httpx.Client
) -> None:
    issued = hub_store.create_token(user="alice")
    hub_emulator.fail_next(429, times=1)
    hub_emulator.fail_next(502, times=1)
    first = client.get("/api/whoami-v2", headers=bearer(issued.token))
    second = client.get("/api/models/alice/x/auth-check", headers=bearer(issued.token))
    third = client.get("/api/models/alice/x/auth-check", headers=bearer(issued.token))
    assert [first.status_code, second.status_code, third.status_code] == [429, 502, 200]
    assert hub_emulator.auth_check_calls == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        pytest.param({"status": 99}, id="status-too-low"),
        pytest.param({"status": 600}, id="status-too-high"),
        pytest.param({"status": 503, "times": 0}, id="zero-times"),
        pytest.param({"status": 503, "body": "text"}, id="str-body"),
        pytest.param({"status": 503, "headers": {"Content-Length": "3"}}, id="content-length"),
    ],
)
def test_fail_next_validation(hub_emulator: HubEmulator, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigurationError):
        hub_emulator.fail_next(**kwargs)


@pytest.mark.parametrize(
    "seconds",
    [pytest.param(-1.0, id="negative"), pytest.param(float("inf"), id="infinite")],
)
def test_delay_validation(hub_emulator: HubEmulator, seconds: float) -> None:
    with pytest.raises(ConfigurationError):
        hub_emulator.delay = seconds
    with pytest.raises(ConfigurationError):
        hub_emulator.delay_token("hf_anything", seconds)


# --- latency -----------------------------------------------------------------------------------


def _whoami(client: httpx.Client, token: str) -> httpx.Response:
    return client.get("/api/whoami-v2", headers=bearer(token))


def test_delay_holds_whoami_until_released(
    hub_emulator: HubEmulator,
    hub_store: LocalTokenStore,
    client: httpx.Client,
    pool: ThreadPoolExecutor,
) -> None:
    issued = hub_store.create_token(user="alice")
    hub_emulator.delay = 600.0
    assert hub_emulator.delay == 600.0
    pending = pool.submit(_whoami, client, issued.token)
    assert hub_emulator.wait_for_held(1, timeout=WAIT)
    assert hub_emulator.held == 1
    assert not pending.done()
    hub_emulator.release_held()
    assert pending.result(timeout=WAIT).status_code == 200
    assert hub_emulator.held == 0
    assert hub_emulator.delay == 600.0  # release_held keeps the setting
    hub_emulator.clear_faults()
    assert hub_emulator.delay == 0.0


def test_delay_is_at_least_the_given_time(
    hub_emulator: HubEmulator, hub_store: LocalTokenStore, client: httpx.Client
) -> None:
    issued = hub_store.create_token(user="alice")
    hub_emulator.delay = 0.2
    started = time.monotonic()
    assert _whoami(client, issued.token).status_code == 200
    assert time.monotonic() - started >= 0.2  # a lower bound only: never flaky


def test_delay_token_slows_only_that_token(
    hub_emulator: HubEmulator,
    hub_store: LocalTokenStore,
    client: httpx.Client,
    pool: ThreadPoolExecutor,
) -> None:
    slow = hub_store.create_token(user="slow")
    fast = hub_store.create_token(user="fast")
    hub_emulator.delay_token(slow.token, 600.0)
    held: Future[httpx.Response] = pool.submit(_whoami, client, slow.token)
    assert hub_emulator.wait_for_held(1, timeout=WAIT)

    # The fast token answers while the slow one is still held back.
    answer = _whoami(client, fast.token)
    assert answer.status_code == 200
    assert answer.json()["name"] == "fast"
    assert not held.done()
    assert hub_emulator.held == 1

    hub_emulator.clear_faults()  # also releases held requests
    slow_answer = held.result(timeout=WAIT)
    assert slow_answer.status_code == 200
    assert slow_answer.json()["name"] == "slow"
    assert hub_emulator.whoami_calls == 2


def test_delay_token_zero_removes_the_delay(
    hub_emulator: HubEmulator, hub_store: LocalTokenStore, client: httpx.Client
) -> None:
    issued = hub_store.create_token(user="alice")
    hub_emulator.delay_token(issued.token, 600.0)
    hub_emulator.delay_token(issued.token, 0)
    assert _whoami(client, issued.token).status_code == 200
    assert hub_emulator.held == 0


def test_stop_releases_held_requests(hub_store: LocalTokenStore, pool: ThreadPoolExecutor) -> None:
    issued = hub_store.create_token(user="alice")
    emulator = HubEmulator(hub_store).start()
    emulator.delay = 600.0

    def call() -> int | None:
        with httpx.Client(base_url=emulator.url, timeout=WAIT) as http:
            try:
                return _whoami(http, issued.token).status_code
            except httpx.HTTPError:
                return None

    pending = pool.submit(call)
    assert emulator.wait_for_held(1, timeout=WAIT)
    emulator.stop()
    assert pending.result(timeout=WAIT) in (200, None)
    assert emulator.held == 0


def test_wait_for_held_times_out(hub_emulator: HubEmulator) -> None:
    assert hub_emulator.wait_for_held(1, timeout=0.01) is False


# --- auth-check --------------------------------------------------------------------------------

REPOS = {
    "model:alice/public-model": "public",
    "model:alice/gated-model": "gated",
    "model:alice/private-model": "private",
    "dataset:acme/private-data": "private",
    "space:acme/public-space": "public",
    "model:acme/gated-org-model": "gated",
}


@pytest.fixture
def seeded(hub_store: LocalTokenStore) -> Iterator[httpx.Client]:
    hub_store.add_token("hf_alice_write", user="alice", role="write")
    hub_store.add_token("hf_alice_read", user="alice", role="read")
    hub_store.add_token("hf_bob_write", user="bob", role="write", orgs=[OrgGrant("acme", "read")])
    hub_store.add_token(
        "hf_carol_admin", user="carol", role="write", orgs=[OrgGrant("acme", "admin")]
    )
    hub_store.add_token(
        "hf_dave_fine",
        user="dave",
        role="fineGrained",
        orgs=[OrgGrant("acme", "write")],
        fine_grained=[FineGrainedEntry("org", "acme", ("repo.content.read",))],
    )
    hub_store.add_token(
        "hf_erin_expired",
        user="erin",
        role="write",
        expires_at=datetime.now(UTC) - timedelta(minutes=1),
    )
    with (
        HubEmulator(hub_store, repos=REPOS) as emulator,
        httpx.Client(base_url=emulator.url, timeout=WAIT) as http,
    ):
        emulator.grant_gate(GATED, "carol")
        yield http


def _case(
    case_id: str, token: str | None, repo: str, access: str, status: int, code: str | None = None
) -> Any:
    kind, _, repo_id = repo.partition(":")
    path = f"/api/{kind}s/{repo_id}/auth-check" + ("/write" if access == "write" else "")
    return pytest.param(token, path, status, code, id=case_id)


PRIVATE = "model:alice/private-model"
PUBLIC = "model:alice/public-model"
GATED = "model:alice/gated-model"
UNLISTED = "model:alice/never-listed"
ORG_DATA = "dataset:acme/private-data"


@pytest.mark.parametrize(
    ("token", "path", "status", "error_code"),
    [
        # own repositories
        _case("owner-read", "hf_alice_write", PRIVATE, "read", 200),
        _case("owner-write", "hf_alice_write", PRIVATE, "write", 200),
        _case("read-token-cannot-write", "hf_alice_read", PRIVATE, "write", 403),
        _case("unlisted-own-repo", "hf_alice_write", UNLISTED, "read", 200),
        # other people's repositories
        _case("stranger-private-read", "hf_bob_write", PRIVATE, "read", 404, "RepoNotFound"),
        _case("stranger-private-write", "hf_bob_write", PRIVATE, "write", 404, "RepoNotFound"),
        _case("unlisted-is-private", "hf_bob_write", UNLISTED, "read", 404, "RepoNotFound"),
        _case("stranger-public-read", "hf_bob_write", PUBLIC, "read", 200),
        _case("stranger-public-write", "hf_bob_write", PUBLIC, "write", 403),
        _case("gate-not-passed", "hf_bob_write", GATED, "read", 403, "GatedRepo"),
        _case("gate-passed", "hf_carol_admin", GATED, "read", 200),
        _case("owner-needs-no-gate", "hf_alice_read", GATED, "read", 200),
        # organizations
        _case("org-read-member-reads", "hf_bob_write", ORG_DATA, "read", 200),
        _case("org-read-role-caps-write", "hf_bob_write", ORG_DATA, "write", 403),
        _case("org-admin-writes", "hf_carol_admin", ORG_DATA, "write", 200),
        _case("space-write", "hf_carol_admin", "space:acme/public-space", "write", 200),
        # fine-grained
        _case("fine-grained-org-read", "hf_dave_fine", ORG_DATA, "read", 200),
        _case("fine-grained-no-write", "hf_dave_fine", ORG_DATA, "write", 403),
        _case(
            "fine-grained-gated",
            "hf_dave_fine",
            "model:acme/gated-org-model",
            "read",
            403,
            "GatedRepo",
        ),
        _case("fine-grained-unlisted", "hf_dave_fine", PRIVATE, "read", 404, "RepoNotFound"),
        # anonymous and bad tokens
        _case("anonymous-public-read", None, PUBLIC, "read", 200),
        _case("anonymous-private", None, PRIVATE, "read", 401, "RepoNotFound"),
        _case("anonymous-gated", None, GATED, "read", 401, "GatedRepo"),
        _case("anonymous-write", None, PUBLIC, "write", 401),
        _case("unknown-token", "hf_unknown", PUBLIC, "read", 401),
        _case("expired-token", "hf_erin_expired", "model:erin/x", "read", 401),
    ],
)
def test_auth_check(
    seeded: httpx.Client, token: str | None, path: str, status: int, error_code: str | None
) -> None:
    response = seeded.get(path, headers=bearer(token) if token else {})
    assert response.status_code == status, response.text
    body = response.json()
    if status == 200:
        assert body == {}
        return
    assert isinstance(body["error"], str)
    assert body["error"]
    assert response.headers["X-Error-Message"]
    assert response.headers.get("X-Error-Code") == error_code
    if status == 404:
        assert body == {"error": "Repository not found"}
    if token and status == 401:
        assert body == {"error": INVALID_CREDENTIALS}
    if token:
        assert token not in response.text
        assert token not in str(response.headers)


@pytest.mark.parametrize(
    ("table", "assignment"),
    [
        pytest.param("tokens", "expires_at = 'next tuesday'", id="expiry-text"),
        pytest.param("users", "orgs = '['", id="orgs-cut-short"),
    ],
)
@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/api/whoami-v2", id="whoami"),
        pytest.param("/api/models/alice/demo/auth-check", id="auth-check"),
    ],
)
def test_malformed_store_entry_answers_500_json(
    hub_store: LocalTokenStore, client: httpx.Client, table: str, assignment: str, path: str
) -> None:
    issued = hub_store.create_token(user="alice", role="write")
    conn = sqlite3.connect(hub_store.path)
    conn.execute(f"UPDATE {table} SET {assignment}")  # noqa: S608 - constants of this test
    conn.commit()
    conn.close()
    response = client.get(path, headers=bearer(issued.token))
    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"error": "Internal Server Error"}
    assert issued.token not in response.text
    # The connection stays usable: the next request on it is answered too.
    assert client.get("/api/whoami-v2").status_code == 401


class _OddStore(LocalTokenStore):
    """A store whose answers do not have the Hub's shape (a subclass gone wrong)."""

    def lookup(self, digest: bytes) -> dict[str, Any] | None:
        return {"type": "user", "orgs": "not a list"}


def test_store_answer_of_the_wrong_shape_answers_500_json(tmp_path: Path) -> None:
    with (
        _OddStore(tmp_path / "odd.sqlite3") as store,
        HubEmulator(store) as hub,
        httpx.Client(base_url=hub.url, timeout=WAIT) as http,
    ):
        response = http.get("/api/models/alice/demo/auth-check", headers=bearer("hf_x"))
        assert response.status_code == 500
        assert response.json() == {"error": "Internal Server Error"}


# --- issue 17: the emulator speaks auth-check like the Hub -------------------------------


def _path(repo: str, access: str = "read") -> str:
    kind, _, repo_id = repo.partition(":")
    return f"/api/{kind}s/{repo_id}/auth-check" + ("/write" if access == "write" else "")


OAUTH_ANSWER: dict[str, Any] = {
    "type": "user",
    "id": "u-olga",
    "name": "olga",
    "fullname": "Olga",
    "orgs": [
        {"type": "org", "id": "o1", "name": "acme", "roleInOrg": "write"},
        {"type": "org", "id": "o2", "name": "beta", "roleInOrg": "admin"},
    ],
    "auth": {"type": "oauth", "expiresAt": "2099-01-01T00:00:00.000Z"},
}
APP_ANSWER: dict[str, Any] = {
    "type": "app",
    "id": "a1",
    "name": "my-app",
    "scope": {"role": "write", "entities": ["acme"]},
    "auth": {"type": "app_token"},
}
PATTERNED_ANSWER: dict[str, Any] = {
    "type": "user",
    "id": "u-pat",
    "name": "pat",
    "orgs": [{"type": "org", "id": "o1", "name": "acme", "roleInOrg": "write"}],
    "auth": {
        "type": "access_token",
        "accessToken": {
            "displayName": "endpoints",
            "role": "fineGrained",
            "fineGrained": {
                "scoped": [
                    {
                        "entity": {"_id": "o1", "type": "org", "name": "acme"},
                        "permissions": ["repo.content.read", "inference.endpoints.infer.write"],
                        "patterns": [
                            {"resourceType": "inference-endpoint", "wildcardPatterns": ["prod-*"]}
                        ],
                    }
                ]
            },
        },
    },
}
GOD_ANSWER: dict[str, Any] = {
    "type": "user",
    "id": "u-zeus",
    "name": "zeus",
    "orgs": [{"type": "org", "id": "o1", "name": "acme", "roleInOrg": "god"}],
    "auth": {"type": "access_token", "accessToken": {"displayName": "x", "role": "god"}},
}

HUB_REPOS = {
    "model:acme/private": "private",
    "model:acme/public": "public",
    "model:acme/gated": "gated",
    "model:meta/llama": "gated",
    "dataset:acme/grouped": "private",
    "dataset:acme/grouped-public": "public",
    "model:beta/private": "private",
    "bucket:acme/files": "private",
    "kernel:acme/kern": "public",
}


@pytest.fixture
def hub(hub_store: LocalTokenStore) -> Iterator[tuple[HubEmulator, httpx.Client]]:
    hub_store.add_token("hf_reader", user="rita", role="read", orgs=[OrgGrant("acme", "read")])
    hub_store.add_token("hf_writer", user="will", role="write", orgs=[OrgGrant("acme", "write")])
    hub_store.add_token("hf_member", user="mia", role="write", orgs=[OrgGrant("acme", "read")])
    hub_store.add_token(
        "hf_fine_entry",
        user="fay",
        role="fineGrained",
        orgs=[OrgGrant("acme", "read")],
        fine_grained=[FineGrainedEntry("model", "meta/llama", ("repo.content.read",))],
    )
    hub_store.add_token(
        "hf_fine_flag",
        user="flo",
        role="fineGrained",
        can_read_gated_repos=True,
        global_permissions=["discussion.write"],
    )
    hub_store.add_token(
        "hf_fine_none",
        user="fred",
        role="fineGrained",
        global_permissions=["discussion.write"],
    )
    hub_store.add_token("hf_locked", user="lou", role="write", orgs=[OrgGrant("acme", "admin")])
    with (
        HubEmulator(hub_store, repos=HUB_REPOS, unknown_repos="missing") as emulator,
        httpx.Client(base_url=emulator.url, timeout=WAIT) as http,
    ):
        for user in ("rita", "fay", "flo", "fred", "olga"):
            emulator.grant_gate("model:meta/llama", user)
        emulator.add_resource_group(
            "acme",
            "rg1",
            name="research",
            repos=["dataset:acme/grouped", "dataset:acme/grouped-public"],
        )
        emulator.add_group_member("acme", "rg1", "mia", "write")
        emulator.rename_repo("model:acme/old", "model:acme/private")
        emulator.set_org_restrictions("acme", ["mfa"], users=["lou"])
        emulator.register_token(
            "hf_oauth_olga",
            OAUTH_ANSWER,
            oauth_scopes=["openid", "read-repos"],
            oauth_orgs=["acme"],
        )
        emulator.register_token(
            "hf_oauth_gated", OAUTH_ANSWER, oauth_scopes=["gated-repos"], oauth_orgs=[]
        )
        emulator.register_token("hf_app", APP_ANSWER)
        emulator.register_token("hf_patterned", PATTERNED_ANSWER)
        emulator.register_token("hf_god", GOD_ANSWER)
        yield emulator, http


def _hub_case(case_id: str, token: str | None, repo: str, access: str, status: int, code=None):
    return pytest.param(token, repo, access, status, code, id=case_id)


@pytest.mark.parametrize(
    ("token", "repo", "access", "status", "code"),
    [
        # gates
        _hub_case("gate-passed-classic", "hf_reader", "model:meta/llama", "read", 200),
        _hub_case("gate-not-passed", "hf_writer", "model:meta/llama", "read", 403, "GatedRepo"),
        _hub_case(
            "gate-org-member-not-passed", "hf_reader", "model:acme/gated", "read", 403, "GatedRepo"
        ),
        _hub_case("gate-passed-fine-entry", "hf_fine_entry", "model:meta/llama", "read", 200),
        _hub_case("gate-passed-fine-flag", "hf_fine_flag", "model:meta/llama", "read", 200),
        _hub_case(
            "gate-passed-fine-neither", "hf_fine_none", "model:meta/llama", "read", 403, "GatedRepo"
        ),
        _hub_case("gated-write", "hf_reader", "model:meta/llama", "write", 403),
        _hub_case("anonymous-gated", None, "model:meta/llama", "read", 401, "GatedRepo"),
        # missing and private
        _hub_case("missing", "hf_writer", "model:acme/never", "read", 404, "RepoNotFound"),
        _hub_case("anonymous-missing", None, "model:acme/never", "read", 401, "RepoNotFound"),
        _hub_case(
            "private-stranger", "hf_writer", "model:beta/private", "read", 404, "RepoNotFound"
        ),
        _hub_case("private-member", "hf_reader", "model:acme/private", "read", 200),
        _hub_case("private-read-member-write", "hf_member", "model:acme/private", "write", 403),
        _hub_case("private-write-member", "hf_writer", "model:acme/private", "write", 200),
        # resource groups
        _hub_case(
            "group-non-member", "hf_writer", "dataset:acme/grouped", "read", 404, "RepoNotFound"
        ),
        _hub_case("group-member-role-replaces", "hf_member", "dataset:acme/grouped", "write", 200),
        _hub_case("group-public-read", "hf_writer", "dataset:acme/grouped-public", "read", 200),
        _hub_case(
            "group-public-write-non-member",
            "hf_writer",
            "dataset:acme/grouped-public",
            "write",
            403,
        ),
        # renames
        _hub_case("renamed", "hf_writer", "model:acme/old", "read", 307),
        _hub_case("renamed-anonymous", None, "model:acme/old", "read", 307),
        # security restrictions
        _hub_case("restricted-private", "hf_locked", "model:acme/private", "read", 403),
        _hub_case("restricted-public-read", "hf_locked", "model:acme/public", "read", 200),
        _hub_case("restricted-public-write", "hf_locked", "model:acme/public", "write", 403),
        # OAuth: read-repos over the selected org only
        _hub_case("oauth-selected-org", "hf_oauth_olga", "model:acme/private", "read", 200),
        _hub_case(
            "oauth-unselected-org",
            "hf_oauth_olga",
            "model:beta/private",
            "read",
            404,
            "RepoNotFound",
        ),
        _hub_case("oauth-read-never-writes", "hf_oauth_olga", "model:acme/private", "write", 403),
        _hub_case("oauth-gated-scope", "hf_oauth_gated", "model:meta/llama", "read", 200),
        _hub_case(
            "oauth-no-gated-scope", "hf_oauth_olga", "model:meta/llama", "read", 403, "GatedRepo"
        ),
        # apps, patterns, unconfirmed roles
        _hub_case("app-public", "hf_app", "model:acme/public", "read", 200),
        _hub_case("app-private", "hf_app", "model:acme/private", "read", 404, "RepoNotFound"),
        _hub_case(
            "patterned-entry-no-repo",
            "hf_patterned",
            "model:acme/private",
            "read",
            404,
            "RepoNotFound",
        ),
        _hub_case("god-role", "hf_god", "model:acme/private", "read", 404, "RepoNotFound"),
        # new repository types
        _hub_case("bucket", "hf_writer", "bucket:acme/files", "write", 200),
        _hub_case("kernel", None, "kernel:acme/kern", "read", 200),
    ],
)
def test_auth_check_like_the_hub(
    hub: tuple[HubEmulator, httpx.Client],
    token: str | None,
    repo: str,
    access: str,
    status: int,
    code: str | None,
) -> None:
    _, http = hub
    response = http.get(_path(repo, access), headers=bearer(token) if token else {})
    assert response.status_code == status, response.text
    assert response.headers.get("X-Error-Code") == code
    if status == 307:
        assert response.headers["Location"] == _path("model:acme/private", access)
    if status == 404:
        assert response.json() == {"error": "Repository not found"}
    if status == 403 and token == "hf_locked":
        assert "security restrictions: mfa" in response.json()["error"]


def test_a_rename_moves_visibility_gates_and_groups(hub: tuple[HubEmulator, httpx.Client]) -> None:
    emulator, http = hub
    emulator.rename_repo("model:meta/llama", "model:meta/llama-2")
    emulator.rename_repo("dataset:acme/grouped", "dataset:acme/grouped-2")
    assert http.get(_path("model:meta/llama"), headers=bearer("hf_reader")).status_code == 307
    assert http.get(_path("model:meta/llama-2"), headers=bearer("hf_reader")).status_code == 200
    assert http.get(_path("model:meta/llama-2"), headers=bearer("hf_writer")).status_code == 403
    assert http.get(_path("dataset:acme/grouped-2"), headers=bearer("hf_writer")).status_code == 404
    emulator.add_repo("model:meta/llama", "public")  # a new repository takes the old name
    assert http.get(_path("model:meta/llama"), headers=bearer("hf_writer")).status_code == 200


def test_gates_can_be_revoked(hub: tuple[HubEmulator, httpx.Client]) -> None:
    emulator, http = hub
    emulator.revoke_gate("model:meta/llama", "rita")
    response = http.get(_path("model:meta/llama"), headers=bearer("hf_reader"))
    assert (response.status_code, response.headers["X-Error-Code"]) == (403, "GatedRepo")


def test_whoami_shows_groups_and_restrictions_only_when_set(
    hub: tuple[HubEmulator, httpx.Client],
) -> None:
    emulator, http = hub
    mia = http.get("/api/whoami-v2", headers=bearer("hf_member")).json()
    acme = next(org for org in mia["orgs"] if org["name"] == "acme")
    assert acme["resourceGroups"] == [{"id": "rg1", "name": "research", "role": "write"}]
    assert "securityRestrictions" not in acme
    assert "missingMFA" not in acme
    assert "pendingSSO" not in acme
    lou = http.get("/api/whoami-v2", headers=bearer("hf_locked")).json()
    assert lou["orgs"][0]["securityRestrictions"] == ["mfa"]
    assert "missingMFA" not in lou["orgs"][0]
    emulator.set_org_restrictions("acme", missing_mfa=True, pending_sso=True)
    will = http.get("/api/whoami-v2", headers=bearer("hf_writer")).json()
    assert will["orgs"][0]["missingMFA"] is True
    assert will["orgs"][0]["pendingSSO"] is True
    assert "securityRestrictions" not in will["orgs"][0]
    principal = principal_from_whoami(will)
    assert principal.orgs[0].restrictions == ("missingMFA", "pendingSSO")
    emulator.set_org_restrictions("acme")  # nothing set: cleared
    cleared = http.get("/api/whoami-v2", headers=bearer("hf_writer")).json()
    assert "missingMFA" not in cleared["orgs"][0]


def test_registered_tokens_answer_as_given(hub: tuple[HubEmulator, httpx.Client]) -> None:
    _, http = hub
    oauth = http.get("/api/whoami-v2", headers=bearer("hf_oauth_olga")).json()
    assert oauth == OAUTH_ANSWER
    assert "accessToken" not in oauth["auth"]
    assert "email" not in oauth
    app = http.get("/api/whoami-v2", headers=bearer("hf_app")).json()
    assert app == APP_ANSWER
    patterned = http.get("/api/whoami-v2", headers=bearer("hf_patterned")).json()
    assert patterned == PATTERNED_ANSWER
    assert principal_from_whoami(patterned).scoped[0].patterns


def test_the_store_answer_keeps_its_shape(
    hub: tuple[HubEmulator, httpx.Client], hub_store: LocalTokenStore
) -> None:
    _, http = hub
    answer = http.get("/api/whoami-v2", headers=bearer("hf_writer")).json()
    assert answer == hub_store.lookup(token_digest("hf_writer"))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(lambda e: e.add_repo("widget:a/b"), "repo", id="repo-type"),
        pytest.param(lambda e: e.add_repo("model:a/b", "hidden"), "visibility", id="visibility"),
        pytest.param(lambda e: e.grant_gate("model:a/b", ""), "user", id="gate-user"),
        pytest.param(lambda e: e.rename_repo("model:a/b", "model:a/b"), "itself", id="rename-self"),
        pytest.param(
            lambda e: e.add_resource_group("acme", "rg", repos=["model:beta/x"]),
            "not in org",
            id="group-repo-of-another-org",
        ),
        pytest.param(
            lambda e: e.add_group_member("acme", "nope", "u", "read"),
            "no resource group",
            id="no-group",
        ),
        pytest.param(
            lambda e: e.set_org_restrictions("acme", missing_mfa="yes"), "True or False", id="flag"
        ),
        pytest.param(lambda e: e.register_token("", {"name": "a"}), "token", id="empty-token"),
        pytest.param(
            lambda e: e.register_token("hf_x", {"orgs": []}), "whoami-v2", id="bad-answer"
        ),
        pytest.param(lambda e: e.fail_next(503, endpoint="whoami-v2"), "endpoint", id="endpoint"),
        pytest.param(lambda e: setattr(e, "auth_check_delay", -1), "seconds", id="delay"),
    ],
)
def test_hub_facts_are_validated(hub_emulator: HubEmulator, call: Any, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        call(hub_emulator)


def test_unknown_repos_must_be_private_or_missing(hub_store: LocalTokenStore) -> None:
    with pytest.raises(ConfigurationError, match="unknown_repos"):
        HubEmulator(hub_store, unknown_repos="public")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("endpoint", "whoami_status", "auth_check_status"),
    [
        pytest.param("whoami", 503, 200, id="whoami-only"),
        pytest.param("auth-check", 200, 503, id="auth-check-only"),
        pytest.param(None, 503, 503, id="both"),
    ],
)
def test_faults_per_endpoint(
    hub_emulator: HubEmulator,
    hub_store: LocalTokenStore,
    client: httpx.Client,
    endpoint: Any,
    whoami_status: int,
    auth_check_status: int,
) -> None:
    issued = hub_store.create_token(user="alice", role="write")
    hub_emulator.fail_next(503, times=2, endpoint=endpoint)
    whoami = client.get("/api/whoami-v2", headers=bearer(issued.token))
    check = client.get("/api/models/alice/x/auth-check", headers=bearer(issued.token))
    assert (whoami.status_code, check.status_code) == (whoami_status, auth_check_status)


def test_a_fault_for_one_endpoint_does_not_block_the_others_queue(
    hub_emulator: HubEmulator, hub_store: LocalTokenStore, client: httpx.Client
) -> None:
    issued = hub_store.create_token(user="alice", role="write")
    hub_emulator.fail_next(429, times=1, endpoint="auth-check")
    hub_emulator.fail_next(502, times=1)
    assert client.get("/api/whoami-v2", headers=bearer(issued.token)).status_code == 502
    assert (
        client.get("/api/models/alice/x/auth-check", headers=bearer(issued.token)).status_code
        == 429
    )
    assert (
        client.get("/api/models/alice/x/auth-check", headers=bearer(issued.token)).status_code
        == 200
    )


def test_auth_check_delay_holds_until_released(
    hub_emulator: HubEmulator,
    hub_store: LocalTokenStore,
    client: httpx.Client,
    pool: ThreadPoolExecutor,
) -> None:
    issued = hub_store.create_token(user="alice", role="write")
    hub_emulator.auth_check_delay = 600.0
    held = pool.submit(client.get, "/api/models/alice/x/auth-check", headers=bearer(issued.token))
    assert hub_emulator.wait_for_held(1, timeout=WAIT)
    # whoami-v2 is not delayed by the auth-check delay.
    assert client.get("/api/whoami-v2", headers=bearer(issued.token)).status_code == 200
    assert not held.done()
    hub_emulator.release_held()
    assert held.result(timeout=WAIT).status_code == 200
    hub_emulator.clear_faults()
    assert hub_emulator.auth_check_delay == 0.0


def test_auth_checks_are_logged_and_reset(
    hub_emulator: HubEmulator, hub_store: LocalTokenStore, client: httpx.Client
) -> None:
    issued = hub_store.create_token(user="alice", role="write")
    client.get("/api/models/alice/x/auth-check", headers=bearer(issued.token))
    client.get("/api/kernels/alice/k/auth-check/write", headers=bearer(issued.token))
    client.get("/api/whoami-v2", headers=bearer(issued.token))
    assert hub_emulator.auth_checks == ["read model:alice/x", "write kernel:alice/k"]
    hub_emulator.reset_counters()
    assert hub_emulator.auth_checks == []
