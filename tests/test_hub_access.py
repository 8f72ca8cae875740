"""Tests of the Hub's per-repository check (src/hfauth_mw/_hub_access.py).

The answer mapping is unit-tested with httpx.MockTransport (one parser, one
table); the flow is then driven with a plain httpx.Client against the real
HubEmulator.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from hfauth_mw import ConfigurationError, Credentials, HubWhoamiSource, SourceUnavailable
from hfauth_mw._hub_access import (
    HubAccessCheck,
    HubAnswer,
    auth_check_flow,
    auth_check_path,
)
from hfauth_mw._rules import REPO_TYPES, Repo
from hfauth_mw._store import FineGrainedEntry, LocalTokenStore, OrgGrant
from hfauth_mw.testing import HubEmulator

HUB = "https://hub.example"
TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"
CREDENTIALS = Credentials.from_token(TOKEN)
LLAMA = Repo("model", "meta-llama", "Llama-3")
WAIT = 10.0


def drive(flow: Any, client: httpx.Client) -> HubAnswer:
    """The smallest driver: send what the flow yields, return what it returns."""
    request = next(flow)
    try:
        while True:
            request = flow.send(client.send(request))
    except StopIteration as stop:
        answer: HubAnswer = stop.value
        return answer


def hub_401() -> httpx.Response:
    """The Hub's own 401 for a token it does not accept."""
    return httpx.Response(401, json={"error": "Invalid credentials in Authorization header"})


def mock(*responses: httpx.Response) -> tuple[httpx.Client, list[httpx.Request]]:
    """A client answering ``responses`` in order, and the list of requests it saw."""
    seen: list[httpx.Request] = []
    queue = list(responses)

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return queue.pop(0)

    return httpx.Client(transport=httpx.MockTransport(handler)), seen


def check(
    *responses: httpx.Response,
    access: str = "read",
    credentials: Credentials | None = CREDENTIALS,
    repo: Repo = LLAMA,
) -> tuple[HubAnswer, list[httpx.Request]]:
    client, seen = mock(*responses)
    with client:
        flow = HubAccessCheck(HUB).flow(credentials, repo, access, user="alice")  # type: ignore[arg-type]
        return drive(flow, client), seen


# --- the answer mapping ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "access", "credentials", "allowed", "token_invalid", "reason"),
    [
        pytest.param(
            httpx.Response(200, json={}),
            "read",
            CREDENTIALS,
            True,
            False,
            "read allowed: the Hub allows model:meta-llama/Llama-3",
            id="200-read",
        ),
        pytest.param(
            httpx.Response(200),
            "write",
            CREDENTIALS,
            True,
            False,
            "write allowed: the Hub allows model:meta-llama/Llama-3",
            id="200-write-empty-body",
        ),
        pytest.param(
            httpx.Response(403, headers={"X-Error-Code": "GatedRepo"}, json={"error": "x"}),
            "read",
            CREDENTIALS,
            False,
            False,
            (
                "read denied: gated: alice has not been granted access to "
                "meta-llama/Llama-3 on the Hub"
            ),
            id="403-gated",
        ),
        pytest.param(
            httpx.Response(403, json={"error": "no"}),
            "write",
            CREDENTIALS,
            False,
            False,
            "write denied: the Hub refuses this token write access to model:meta-llama/Llama-3",
            id="403-plain",
        ),
        pytest.param(
            httpx.Response(404, headers={"X-Error-Code": "RepoNotFound"}),
            "read",
            CREDENTIALS,
            False,
            False,
            (
                "read denied: model:meta-llama/Llama-3 is not found or not visible "
                "to this token on the Hub"
            ),
            id="404",
        ),
        pytest.param(
            httpx.Response(401, json={"error": "Invalid credentials in Authorization header"}),
            "read",
            CREDENTIALS,
            False,
            True,
            "read denied: the Hub does not accept this token",
            id="401-token-invalid",
        ),
        pytest.param(
            httpx.Response(401, headers={"X-Error-Code": "GatedRepo"}),
            "read",
            None,
            False,
            False,
            "read denied: authentication required",
            id="401-anonymous-is-not-an-invalid-token",
        ),
    ],
)
def test_answers_map_to_hub_decisions(
    response: httpx.Response,
    access: str,
    credentials: Credentials | None,
    allowed: bool,
    token_invalid: bool,
    reason: str,
) -> None:
    answer, _ = check(response, access=access, credentials=credentials)
    assert answer.allowed is allowed
    assert answer.decision.allowed is allowed
    assert answer.token_invalid is token_invalid
    assert answer.decision.decided_by == "hub"
    assert answer.decision.reason == reason
    assert answer.decision.needed == ("repo.content.read" if access == "read" else "repo.write")
    assert answer.status == response.status_code
    assert answer.repo == LLAMA
    assert answer.renamed_from is None


def test_a_404_and_a_403_never_say_whether_the_repository_exists() -> None:
    not_found, _ = check(httpx.Response(404))
    forbidden, _ = check(httpx.Response(403))
    for answer in (not_found, forbidden):
        assert "exist" not in answer.decision.reason
        assert "missing" not in answer.decision.reason


@pytest.mark.parametrize(
    ("response", "retry_after", "upstream_asked"),
    [
        pytest.param(httpx.Response(429, headers={"Retry-After": "17"}), 17, True, id="429"),
        pytest.param(
            httpx.Response(429, headers={"RateLimit": '"api";r=0;t=42'}),
            42,
            True,
            id="429-ratelimit",
        ),
        pytest.param(httpx.Response(500), 5, False, id="500"),
        pytest.param(httpx.Response(502, text="<html>bad gateway</html>"), 5, False, id="502-html"),
        pytest.param(httpx.Response(503, headers={"Retry-After": "3"}), 3, True, id="503"),
        pytest.param(httpx.Response(400), 5, False, id="400-undocumented"),
        pytest.param(httpx.Response(302, headers={"Location": "/x"}), 5, False, id="302"),
        pytest.param(httpx.Response(204), 5, False, id="204"),
        pytest.param(httpx.Response(307), 5, False, id="307-without-location"),
        pytest.param(
            httpx.Response(
                307, headers={"Location": "https://evil.example/api/models/a/b/auth-check"}
            ),
            5,
            False,
            id="307-another-host",
        ),
        pytest.param(
            httpx.Response(
                307, headers={"Location": "http://hub.example/api/models/a/b/auth-check"}
            ),
            5,
            False,
            id="307-another-scheme",
        ),
        pytest.param(
            httpx.Response(
                307, headers={"Location": "https://hub.example:8443/api/models/a/b/auth-check"}
            ),
            5,
            False,
            id="307-another-port",
        ),
        pytest.param(
            httpx.Response(307, headers={"Location": "/api/models/a/b/auth-check/write"}),
            5,
            False,
            id="307-read-to-write",
        ),
        pytest.param(
            httpx.Response(307, headers={"Location": "/api/models/a/b/resolve/main/x"}),
            5,
            False,
            id="307-not-an-auth-check",
        ),
        pytest.param(
            httpx.Response(307, headers={"Location": "/api/widgets/a/b/auth-check"}),
            5,
            False,
            id="307-unknown-type",
        ),
        pytest.param(
            httpx.Response(307, headers={"Location": "/api/models/a/b..c/auth-check"}),
            5,
            False,
            id="307-invalid-repo-id",
        ),
    ],
)
def test_trouble_is_a_503_never_an_answer(
    response: httpx.Response, retry_after: int, upstream_asked: bool
) -> None:
    with pytest.raises(SourceUnavailable) as raised:
        check(response)
    assert raised.value.status_code == 503
    assert raised.value.retry_after == retry_after
    assert raised.value.upstream_asked is upstream_asked
    assert TOKEN not in str(raised.value)
    assert TOKEN not in raised.value.description


@pytest.mark.parametrize(
    ("location", "renamed_to"),
    [
        pytest.param(
            "/api/models/meta-llama/Llama-3.1/auth-check",
            Repo("model", "meta-llama", "Llama-3.1"),
            id="path",
        ),
        pytest.param(
            "https://hub.example/api/models/meta/Llama-3/auth-check",
            Repo("model", "meta", "Llama-3"),
            id="absolute-same-hub",
        ),
        pytest.param(
            "https://HUB.example:443/api/models/meta/Llama-3/auth-check/",
            Repo("model", "meta", "Llama-3"),
            id="default-port-and-case",
        ),
        pytest.param(
            "/api/datasets/meta/moved/auth-check",
            Repo("dataset", "meta", "moved"),
            id="another-type",
        ),
    ],
)
def test_a_rename_is_checked_once_at_the_new_id(location: str, renamed_to: Repo) -> None:
    answer, seen = check(
        httpx.Response(307, headers={"Location": location}), httpx.Response(200, json={})
    )
    assert answer.allowed
    assert answer.repo == renamed_to
    assert answer.renamed_from == LLAMA
    assert f"(renamed from {LLAMA.id})" in answer.decision.reason
    assert [str(request.url) for request in seen] == [
        f"{HUB}{auth_check_path(LLAMA, 'read')}",
        f"{HUB}{auth_check_path(renamed_to, 'read')}",
    ]
    assert seen[1].headers["Authorization"] == f"Bearer {TOKEN}"


def test_a_rename_keeps_the_write_check() -> None:
    answer, seen = check(
        httpx.Response(307, headers={"Location": "/api/models/meta/new/auth-check/write"}),
        httpx.Response(403),
        access="write",
    )
    assert not answer.allowed
    assert answer.repo == Repo("model", "meta", "new")
    assert seen[1].url.path == "/api/models/meta/new/auth-check/write"


def test_a_second_rename_is_not_followed() -> None:
    answer, seen = check(
        httpx.Response(307, headers={"Location": "/api/models/meta/b/auth-check"}),
        httpx.Response(307, headers={"Location": "/api/models/meta/c/auth-check"}),
    )
    assert len(seen) == 2
    assert not answer.allowed
    assert not answer.token_invalid
    assert "renamed more than once" in answer.decision.reason


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(
            httpx.Response(
                401,
                headers={"WWW-Authenticate": 'Basic realm="sso"', "Content-Type": "text/html"},
                text="<html>Sign in</html>",
            ),
            id="proxy-401-basic-challenge",
        ),
        pytest.param(httpx.Response(401), id="401-without-any-mark-of-the-hub"),
        pytest.param(
            httpx.Response(200, headers={"Content-Type": "text/html"}, text="<html>Hub</html>"),
            id="web-page-200",
        ),
    ],
)
def test_an_answer_the_hub_did_not_give_is_503_never_a_decision(response) -> None:
    """An SSO proxy's 401 says nothing about the token (it must not be dropped and
    revoked everywhere), and a fallback web page must never grant."""
    with pytest.raises(SourceUnavailable) as caught:
        check(response)
    assert caught.value.retry_after == 5


def test_a_rename_then_an_invalid_token() -> None:
    answer, _ = check(
        httpx.Response(307, headers={"Location": "/api/models/meta/b/auth-check"}),
        hub_401(),
    )
    assert answer.token_invalid
    assert not answer.allowed


def test_a_hub_under_a_path_prefix_keeps_redirects_under_it() -> None:
    client, seen = mock(
        httpx.Response(307, headers={"Location": "/mirror/api/models/a/b/auth-check"}),
        httpx.Response(200),
    )
    with client:
        answer = drive(HubAccessCheck(f"{HUB}/mirror").flow(CREDENTIALS, LLAMA, "read"), client)
    assert answer.allowed
    assert seen[0].url.path == "/mirror/api/models/meta-llama/Llama-3/auth-check"
    client, _ = mock(httpx.Response(307, headers={"Location": "/api/models/a/b/auth-check"}))
    with client, pytest.raises(SourceUnavailable):
        drive(HubAccessCheck(f"{HUB}/mirror").flow(CREDENTIALS, LLAMA, "read"), client)


# --- the requests ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", REPO_TYPES)
@pytest.mark.parametrize("access", ["read", "write"])
def test_requests_name_the_repository_and_carry_the_token_and_a_timeout(
    kind: str, access: str
) -> None:
    repo = Repo.parse(f"{kind}:acme/x")
    flow = HubAccessCheck(HUB, timeout=2.5).flow(CREDENTIALS, repo, access)  # type: ignore[arg-type]
    request = next(flow)
    suffix = "/write" if access == "write" else ""
    assert str(request.url) == f"{HUB}/api/{kind}s/acme/x/auth-check{suffix}"
    assert request.method == "GET"
    assert request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert request.headers["User-Agent"] == "hfauth-mw"
    assert request.extensions["timeout"] == httpx.Timeout(2.5).as_dict()


def test_an_anonymous_check_sends_no_authorization() -> None:
    request = next(HubAccessCheck(HUB).flow(None, LLAMA, "read"))
    assert "Authorization" not in request.headers


def test_access_must_be_read_or_write() -> None:
    with pytest.raises(ValueError, match="access must be"):
        next(HubAccessCheck(HUB).flow(CREDENTIALS, LLAMA, "admin"))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="access must be"):
        auth_check_path(LLAMA, "delete")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "hub_url",
    [
        pytest.param("http://hub.example", id="plain-http-remote"),
        pytest.param("https://user:pw@hub.example", id="credentials"),
        pytest.param("https://hub.example/api/whoami-v2", id="endpoint-path"),
        pytest.param("ftp://hub.example", id="scheme"),
    ],
)
def test_hub_url_is_checked_like_the_whoami_source(hub_url: str) -> None:
    with pytest.raises(ConfigurationError):
        HubAccessCheck(hub_url)


def test_for_source_reuses_the_sources_hub_timeout_and_name() -> None:
    source = HubWhoamiSource(HUB, timeout=1.5, name="hub:mine")
    access = HubAccessCheck.for_source(source)
    assert (access.hub_url, access.timeout, access.name) == (HUB, source.timeout, "hub:mine")
    assert access.wait_timeout >= source.wait_timeout
    with pytest.raises(ConfigurationError, match="HubWhoamiSource"):
        HubAccessCheck.for_source(object())  # type: ignore[arg-type]


def test_repr_and_reasons_never_hold_the_token() -> None:
    access = HubAccessCheck(HUB)
    assert TOKEN not in repr(access)
    for response in (httpx.Response(200), hub_401(), httpx.Response(403)):
        answer, _ = check(response)
        assert TOKEN not in repr(answer)


def test_a_hostile_user_name_is_kept_to_one_line() -> None:
    client, _ = mock(httpx.Response(403, headers={"X-Error-Code": "GatedRepo"}))
    with client:
        answer = drive(
            HubAccessCheck(HUB).flow(CREDENTIALS, LLAMA, "read", user=f"eve\n{TOKEN}"), client
        )
    assert "\n" not in answer.decision.reason
    assert TOKEN not in answer.decision.reason


# --- against the emulator ----------------------------------------------------------------


@pytest.fixture
def hub(hub_store: LocalTokenStore) -> Iterator[HubEmulator]:
    with HubEmulator(
        hub_store,
        repos={
            "model:meta-llama/Llama-3": "gated",
            "model:acme/private": "private",
            "model:acme/public": "public",
            "dataset:acme/grouped": "private",
        },
        unknown_repos="missing",
    ) as emulator:
        yield emulator


@pytest.fixture
def tokens(hub_store: LocalTokenStore, hub: HubEmulator) -> dict[str, str]:
    issued = {
        "alice": hub_store.create_token(user="alice", role="read"),
        "bob": hub_store.create_token(user="bob", role="write", orgs=[OrgGrant("acme", "write")]),
        "carol": hub_store.create_token(
            user="carol",
            role="fineGrained",
            fine_grained=[FineGrainedEntry("model", "meta-llama/Llama-3", ("repo.content.read",))],
        ),
        "dave": hub_store.create_token(user="dave", role="read", orgs=[OrgGrant("acme", "read")]),
    }
    hub.grant_gate("model:meta-llama/Llama-3", "alice")
    hub.grant_gate("model:meta-llama/Llama-3", "carol")
    hub.add_resource_group("acme", "rg1", name="research", repos=["dataset:acme/grouped"])
    hub.add_group_member("acme", "rg1", "bob", "read")
    hub.rename_repo("model:acme/old-name", "model:acme/private")
    hub.set_org_restrictions("acme", ["mfa"], users=["dave"])
    return {user: token.token for user, token in issued.items()}


def run(hub: HubEmulator, token: str | None, repo: str, access: str = "read") -> HubAnswer:
    credentials = Credentials.from_token(token) if token else None
    flow = auth_check_flow(hub.url, credentials, Repo.parse(repo), access, 5.0, user="u")  # type: ignore[arg-type]
    with httpx.Client(timeout=WAIT) as client:
        return drive(flow, client)


@pytest.mark.parametrize(
    ("who", "repo", "access", "allowed", "reason"),
    [
        pytest.param(
            "alice", "model:meta-llama/Llama-3", "read", True, "the Hub allows", id="gate-passed"
        ),
        pytest.param(
            "bob",
            "model:meta-llama/Llama-3",
            "read",
            False,
            "gated: u has not been granted",
            id="gate-not-passed",
        ),
        pytest.param(
            "carol",
            "model:meta-llama/Llama-3",
            "read",
            True,
            "the Hub allows",
            id="fine-entry-gate-passed",
        ),
        pytest.param(
            "alice",
            "model:meta-llama/Llama-3",
            "write",
            False,
            "refuses this token write",
            id="read-token-write",
        ),
        pytest.param("bob", "model:acme/private", "write", True, "the Hub allows", id="org-write"),
        pytest.param(
            "alice",
            "model:acme/private",
            "read",
            False,
            "not found or not visible",
            id="private-stranger",
        ),
        pytest.param(
            "alice",
            "model:acme/never-made",
            "read",
            False,
            "not found or not visible",
            id="missing",
        ),
        pytest.param("alice", "model:acme/public", "read", True, "the Hub allows", id="public"),
        pytest.param(
            None, "model:acme/public", "read", True, "the Hub allows", id="anonymous-public"
        ),
        pytest.param(
            None,
            "model:acme/private",
            "read",
            False,
            "authentication required",
            id="anonymous-private",
        ),
        pytest.param(
            "bob", "dataset:acme/grouped", "read", True, "the Hub allows", id="group-member"
        ),
        pytest.param(
            "bob",
            "dataset:acme/grouped",
            "write",
            False,
            "refuses this token write",
            id="group-role-caps",
        ),
        pytest.param(
            "dave",
            "model:acme/private",
            "read",
            False,
            "refuses this token read",
            id="restricted-org",
        ),
        pytest.param(
            "bob",
            "model:acme/old-name",
            "write",
            True,
            "(renamed from acme/old-name)",
            id="renamed",
        ),
    ],
)
def test_the_flow_against_the_emulator(
    hub: HubEmulator,
    tokens: dict[str, str],
    who: str | None,
    repo: str,
    access: str,
    allowed: bool,
    reason: str,
) -> None:
    answer = run(hub, tokens[who] if who else None, repo, access)
    assert answer.allowed is allowed, answer.decision.reason
    assert reason in answer.decision.reason
    assert answer.decision.decided_by == "hub"
    assert not answer.token_invalid


def test_an_unknown_token_is_invalid_at_the_emulator(hub: HubEmulator) -> None:
    answer = run(hub, "hf_" + "x" * 34, "model:acme/public")
    assert answer.token_invalid
    assert not answer.allowed


def test_a_revoked_token_becomes_invalid(
    hub: HubEmulator, hub_store: LocalTokenStore, tokens: dict[str, str]
) -> None:
    assert run(hub, tokens["bob"], "model:acme/private").allowed
    hub_store.revoke(Credentials.from_token(tokens["bob"]).fingerprint)
    assert run(hub, tokens["bob"], "model:acme/private").token_invalid


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        pytest.param(
            lambda hub: hub.fail_next(
                429, headers={"Retry-After": "9"}, times=1, endpoint="auth-check"
            ),
            9,
            id="429",
        ),
        pytest.param(lambda hub: hub.fail_next(503, times=1, endpoint="auth-check"), 5, id="503"),
        pytest.param(lambda hub: hub.fail_next(418, times=1, endpoint="auth-check"), 5, id="418"),
    ],
)
def test_emulator_faults_are_503s(
    hub: HubEmulator, tokens: dict[str, str], fault: Callable[[HubEmulator], None], retry_after: int
) -> None:
    fault(hub)
    with pytest.raises(SourceUnavailable) as raised:
        run(hub, tokens["bob"], "model:acme/private")
    assert raised.value.retry_after == retry_after
    # The fault was for auth-check only, and used up: the next check answers.
    assert run(hub, tokens["bob"], "model:acme/private").allowed


def test_a_timeout_is_raised_by_the_driver_not_turned_into_an_answer(
    hub: HubEmulator, tokens: dict[str, str]
) -> None:
    hub.auth_check_delay = 5.0
    flow = HubAccessCheck(hub.url, timeout=0.2).flow(
        Credentials.from_token(tokens["bob"]), Repo.parse("model:acme/private"), "read"
    )
    with httpx.Client() as client, pytest.raises(httpx.TimeoutException):
        drive(flow, client)
    hub.release_held()
