"""Source parsers, unit-tested through httpx.MockTransport-free flows.

Each flow is driven by hand (send the response it asks for): the parsers are
pure. The same sources are proven over real loopback HTTP in
test_authenticator.py and test_asgi.py.
"""

import base64
import http.server
import json
import threading
import time
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

import faults
from hfauth_mw import (
    Authenticator,
    ChainSource,
    ConfigurationError,
    Credentials,
    HubWhoamiSource,
    Invalid,
    InvalidToken,
    LocalStoreSource,
    OAuthIntrospectionSource,
    SourceUnavailable,
    TokenCache,
    TokenRefusedUpstream,
    Valid,
)
from hfauth_mw._sources import retry_after_from

TOKEN = "hf_" + "b" * 34
CREDENTIALS = Credentials.from_token(TOKEN)

WHOAMI_WRITE = {
    "type": "user",
    "id": "62f264b9f3c90f4b6514a269",
    "name": "hub.js",
    "fullname": "@huggingface/hub CI bot",
    "email": "ci@example.org",
    "emailVerified": True,
    "isPro": False,
    "orgs": [],
    "auth": {
        "type": "access_token",
        "accessToken": {
            "displayName": "ci-hub.js",
            "role": "write",
            "createdAt": "2024-05-01T10:00:00.000Z",
        },
    },
}
WHOAMI_FINE_GRAINED = {
    "type": "user",
    "id": "u1",
    "name": "alice",
    "orgs": [
        {
            "type": "org",
            "id": "o1",
            "name": "acme",
            "roleInOrg": "write",
            "plan": "team",
            "resourceGroups": [{"id": "rg1", "name": "research", "role": "read"}],
        }
    ],
    "auth": {
        "type": "access_token",
        "accessToken": {
            "displayName": "prod-inference",
            "role": "fineGrained",
            "fineGrained": {
                "canReadGatedRepos": True,
                "global": ["inference.serverless.write"],
                "scoped": [
                    {
                        "entity": {"_id": "m1", "type": "model", "name": "acme/sentiment"},
                        "permissions": ["repo.content.read"],
                    },
                    {"entity": {"_id": "rg", "type": "resource-group"}, "permissions": ["x"]},
                ],
            },
        },
    },
    "someFutureField": {"ignored": True},
}
WHOAMI_OAUTH = {"name": "alice", "auth": {"type": "oauth", "expiresAt": "2030-01-01T00:00:00Z"}}


def drive(source, *responses):
    """Run a source flow, answering its requests in turn; returns (requests, outcome)."""
    flow = source.flow(CREDENTIALS)
    requests = []
    try:
        request = next(flow)
        for response in responses:
            requests.append(request)
            request = flow.send(response)
    except StopIteration as done:
        return requests, done.value
    raise AssertionError("flow asked for more requests than given")


def answer(status: int, body=None, headers=None, raw: bytes | None = None) -> httpx.Response:
    if raw is not None:
        return httpx.Response(status, content=raw, headers=headers or {})
    return httpx.Response(status, json=body, headers=headers or {})


def test_whoami_request_carries_token_and_timeout():
    source = HubWhoamiSource("https://hub.example")
    requests, _ = drive(source, answer(200, WHOAMI_WRITE))
    (request,) = requests
    assert str(request.url) == "https://hub.example/api/whoami-v2"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    assert request.extensions["timeout"]["connect"] == 2.0


@pytest.mark.parametrize(
    ("body", "name", "role", "orgs", "scoped", "gated"),
    [
        pytest.param(WHOAMI_WRITE, "hub.js", "write", (), 0, False, id="classic-write"),
        pytest.param(
            WHOAMI_FINE_GRAINED, "alice", "fineGrained", ("acme",), 2, True, id="fine-grained"
        ),
        pytest.param(WHOAMI_OAUTH, "alice", None, (), 0, False, id="oauth-no-access-token"),
    ],
)
def test_whoami_answers(body, name, role, orgs, scoped, gated):
    _, outcome = drive(HubWhoamiSource(), answer(200, body))
    assert isinstance(outcome, Valid)
    principal = outcome.principal
    assert (principal.name, principal.token_role) == (name, role)
    assert tuple(org.name for org in principal.orgs) == orgs
    assert len(principal.scoped) == scoped
    assert principal.can_read_gated_repos is gated
    assert principal.fingerprint == CREDENTIALS.fingerprint
    assert TOKEN not in repr(principal)
    assert TOKEN not in json.dumps(principal.to_dict())


def test_oauth_expiry_is_parsed():
    _, outcome = drive(HubWhoamiSource(), answer(200, WHOAMI_OAUTH))
    assert outcome.principal.expires_at == datetime(2030, 1, 1, tzinfo=UTC)
    assert outcome.principal.auth_type == "oauth"


def _with_org(**fields):
    org = {"name": "acme", "roleInOrg": "write", **fields}
    return {**WHOAMI_FINE_GRAINED, "orgs": [org]}


@pytest.mark.parametrize(
    ("body", "check"),
    [
        pytest.param(
            {**WHOAMI_WRITE, "id": 12345}, lambda p: p.id == "12345", id="numeric-user-id"
        ),
        pytest.param({**WHOAMI_WRITE, "id": ["x"]}, lambda p: p.id is None, id="list-user-id"),
        pytest.param(_with_org(id=7), lambda p: p.orgs[0].id == "7", id="numeric-org-id"),
        pytest.param(
            _with_org(isEnterprise="yes"),
            lambda p: p.orgs[0].is_enterprise is False,
            id="text-is-enterprise",
        ),
        pytest.param(_with_org(plan=3), lambda p: p.orgs[0].plan == "3", id="numeric-plan"),
        pytest.param(
            _with_org(resourceGroups=[{"name": "research", "role": "write"}, "junk", {"id": "g"}]),
            lambda p: [g.id for g in p.orgs[0].resource_groups] == ["g"],
            id="resource-groups-without-id-skipped",
        ),
        pytest.param(
            _with_org(resourceGroups="none"),
            lambda p: p.orgs[0].resource_groups == (),
            id="resource-groups-not-a-list",
        ),
    ],
)
def test_fields_that_grant_nothing_never_refuse_a_token(body, check):
    """Odd values of informational fields are accepted (liberal), never a permanent 503."""
    _, outcome = drive(HubWhoamiSource(), answer(200, body))
    assert isinstance(outcome, Valid)
    assert check(outcome.principal)


@pytest.mark.parametrize(
    "expires_at",
    [
        pytest.param("2030-01-01T00:00:00.000Z", id="iso"),
        pytest.param(1893456000, id="epoch-seconds"),
        pytest.param(1893456000000, id="epoch-milliseconds"),
    ],
)
def test_expiry_as_iso_or_epoch(expires_at):
    body = {**WHOAMI_OAUTH, "auth": {**WHOAMI_OAUTH["auth"], "expiresAt": expires_at}}
    _, outcome = drive(HubWhoamiSource(), answer(200, body))
    assert outcome.principal.expires_at == datetime(2030, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    "expires_at",
    [
        pytest.param("soon", id="text"),
        pytest.param(True, id="bool"),
        pytest.param([2030], id="list"),
        pytest.param(1e300, id="out-of-range"),
        pytest.param(10**400, id="int-beyond-float"),
    ],
)
def test_an_expiry_that_cannot_be_read_is_unavailable(expires_at):
    """Granting without knowing when the token ends would be unsafe: 503, not valid."""
    body = {**WHOAMI_OAUTH, "auth": {**WHOAMI_OAUTH["auth"], "expiresAt": expires_at}}
    with pytest.raises(SourceUnavailable):
        drive(HubWhoamiSource(), answer(200, body))


def test_whoami_401_is_invalid():
    body = {"error": "Invalid credentials in Authorization header"}
    _, outcome = drive(HubWhoamiSource(), answer(401, body))
    assert isinstance(outcome, Invalid)


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(answer(429, {"error": "slow down"}), id="429"),
        pytest.param(answer(500, {}), id="500"),
        pytest.param(answer(502, raw=b"<html>bad gateway</html>"), id="502-html"),
        pytest.param(answer(503, {}), id="503"),
        pytest.param(answer(504, {}), id="504"),
        pytest.param(answer(403, {}), id="403"),
        pytest.param(answer(404, {}), id="404"),
        pytest.param(answer(302, headers={"location": "https://evil.example"}), id="redirect"),
        pytest.param(
            answer(200, raw=b"not json", headers={"content-type": "text/plain"}), id="text"
        ),
        pytest.param(
            answer(200, raw=b"{not json", headers={"content-type": "application/json"}),
            id="bad-json",
        ),
        pytest.param(answer(200, []), id="json-list"),
        pytest.param(answer(200, {"type": "user"}), id="no-name"),
        pytest.param(answer(200, {"name": 42}), id="name-not-string"),
        pytest.param(answer(200, {"name": "a", "orgs": "acme"}), id="orgs-not-list"),
        pytest.param(
            answer(200, {"name": "a", "orgs": [{"roleInOrg": "admin"}]}), id="org-no-name"
        ),
        pytest.param(
            answer(200, {"name": "a", "auth": {"accessToken": {"role": ["write"]}}}),
            id="role-not-string",
        ),
        pytest.param(
            answer(
                200,
                {"name": "a", "auth": {"accessToken": {"fineGrained": {"global": [1]}}}},
            ),
            id="global-not-strings",
        ),
        pytest.param(
            answer(200, {"name": "a", "auth": {"expiresAt": "tomorrow"}}), id="bad-expiry"
        ),
    ],
)
def test_whoami_trouble_is_unavailable_never_invalid(response):
    with pytest.raises(SourceUnavailable) as caught:
        drive(HubWhoamiSource(), response)
    assert caught.value.status_code == 503
    assert TOKEN not in str(caught.value)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param({}, 5, id="default"),
        pytest.param({"retry-after": "17"}, 17, id="seconds"),
        pytest.param({"retry-after": "0"}, 1, id="at-least-one"),
        pytest.param({"retry-after": "99999"}, 300, id="capped"),
        pytest.param({"retry-after": "soon"}, 5, id="garbage"),
        pytest.param({"ratelimit": '"api";r=0;t=42'}, 42, id="ratelimit-header"),
        # t= is the window's reset, on every answer: a wait only once r=0.
        pytest.param({"ratelimit": '"api";r=412;t=170'}, 5, id="ratelimit-with-requests-left"),
        pytest.param({"ratelimit": '"api";t=170'}, 5, id="ratelimit-without-remaining"),
        pytest.param({"retry-after": "Thu, 01 Jan 2099 00:00:00 GMT"}, 300, id="http-date"),
        # Latin-1 header text: str.isdigit() takes these, int() does not.
        pytest.param({"retry-after": b"\xb2"}, 5, id="superscript-two"),
        pytest.param({"retry-after": "9" * 5000}, 300, id="past-int-limit"),
        pytest.param({"ratelimit": '"api";r=0;t=' + "9" * 5000}, 300, id="ratelimit-past-limit"),
    ],
)
def test_retry_after(headers, expected):
    assert retry_after_from(httpx.Headers(headers)) == expected


def test_429_passes_on_retry_after():
    with pytest.raises(SourceUnavailable) as caught:
        drive(HubWhoamiSource(), answer(429, {}, headers={"retry-after": "30"}))
    assert caught.value.retry_after == 30


@pytest.mark.parametrize(
    ("url", "options"),
    [
        pytest.param("http://hub.example", {}, id="plain-http-remote"),
        pytest.param("ftp://hub.example", {}, id="not-http"),
        pytest.param("https://user:pw@hub.example", {}, id="credentials-in-url"),
        pytest.param("hub.example", {}, id="no-scheme"),
        pytest.param("https://hub.example/?x=1", {}, id="query"),
        pytest.param("https://hub.example/#top", {}, id="fragment"),
    ],
)
def test_unsafe_hub_urls_refused(url, options):
    with pytest.raises(ConfigurationError):
        HubWhoamiSource(url, **options)


@pytest.mark.parametrize(
    ("url", "options"),
    [
        pytest.param("http://127.0.0.1:9999", {}, id="loopback-v4"),
        pytest.param("http://[::1]:9999", {}, id="loopback-v6"),
        pytest.param("http://localhost:9999", {}, id="localhost"),
        pytest.param("http://hub.internal", {"allow_insecure_http": True}, id="opt-in"),
        pytest.param("https://huggingface.co/", {}, id="trailing-slash"),
    ],
)
def test_acceptable_hub_urls(url, options):
    source = HubWhoamiSource(url, **options)
    assert source.whoami_url.endswith("/api/whoami-v2")
    assert "//api" not in source.whoami_url


# --- RFC 7662 -------------------------------------------------------------------------

INTROSPECT = OAuthIntrospectionSource(
    "https://auth.example/introspect", client_id="mw", client_secret="s3cret"
)
#: An operator whose IdP is dedicated to this service, stating the generic scopes' meaning.
STATED = OAuthIntrospectionSource(
    "https://auth.example/introspect",
    client_id="mw",
    client_secret="s3cret",
    scope_roles={"read": "read", "write": "write", "repo.write": "write"},
)


def test_rfc7662_request():
    requests, _ = drive(INTROSPECT, answer(200, {"active": False}))
    (request,) = requests
    assert request.method == "POST"
    assert request.headers["authorization"].startswith("Basic ")
    assert b"token=" + TOKEN.encode() in request.content
    assert b"token_type_hint=access_token" in request.content
    assert "s3cret" not in repr(INTROSPECT)


@pytest.mark.parametrize(
    ("body", "name", "role"),
    [
        pytest.param(
            {"active": True, "username": "alice", "scope": "read"}, "alice", "read", id="read"
        ),
        pytest.param(
            {"active": True, "sub": "u-1", "scope": "read write"}, "u-1", "write", id="highest-wins"
        ),
        pytest.param({"active": True, "sub": "u-1", "scope": "openid"}, "u-1", None, id="no-role"),
        pytest.param({"active": True, "sub": "u-1"}, "u-1", None, id="no-scope"),
        # RFC 7662 2.2: sub and username are optional (a client-credentials token).
        pytest.param({"active": True, "client_id": "svc"}, "client:svc", None, id="client-only"),
        pytest.param({"active": True, "azp": "svc"}, "client:svc", None, id="keycloak-azp"),
        pytest.param({"active": True, "sub": ""}, "client:unknown", None, id="no-subject"),
        pytest.param(
            {"active": True, "sub": "u", "scope": "repo.write", "exp": 1900000000},
            "u",
            "write",
            id="exp",
        ),
    ],
)
def test_rfc7662_active(body, name, role):
    _, outcome = drive(STATED, answer(200, body))
    assert isinstance(outcome, Valid)
    assert (outcome.principal.name, outcome.principal.token_role) == (name, role)
    assert outcome.principal.auth_type == "oauth2_introspection"
    if "exp" in body:
        assert outcome.principal.expires_at.timestamp() == body["exp"]


def test_rfc7662_inactive_is_invalid():
    _, outcome = drive(INTROSPECT, answer(200, {"active": False}))
    assert isinstance(outcome, Invalid)


_SOON = int(time.time()) + 3600  # an hour ahead: past any clock-skew leeway


@pytest.mark.parametrize(
    ("extra", "valid"),
    [
        pytest.param({"token_type": "Bearer"}, True, id="bearer"),
        pytest.param({"token_type": "access_token"}, True, id="access-token"),
        pytest.param(
            {"token_type": "urn:ietf:params:oauth:token-type:access_token"}, True, id="urn-access"
        ),
        pytest.param({"token_type": "refresh_token"}, False, id="refresh-token"),
        pytest.param({"token_type": "id_token"}, False, id="id-token"),
        pytest.param({"token_type": "DPoP"}, False, id="dpop-proof-not-checked"),
        pytest.param({"nbf": _SOON}, False, id="not-valid-yet"),
        pytest.param({"nbf": int(time.time()) - 60}, True, id="valid-since-a-minute"),
        pytest.param({"nbf": int(time.time()) + 5}, True, id="nbf-within-clock-skew"),
    ],
)
def test_rfc7662_only_current_access_tokens_are_valid(extra, valid):
    body = {"active": True, "sub": "u", "scope": "write", **extra}
    _, outcome = drive(INTROSPECT, answer(200, body))
    assert isinstance(outcome, Valid if valid else Invalid)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({}, id="no-active"),
        pytest.param({"active": "true"}, id="active-string"),
        pytest.param({"active": 1}, id="active-int"),
        pytest.param({"active": True, "sub": 7}, id="subject-not-a-string"),
        pytest.param({"active": True, "sub": "u", "exp": "soon"}, id="exp-string"),
        pytest.param({"active": True, "sub": "u", "exp": True}, id="exp-bool"),
        pytest.param(b'{"active": true, "sub": "u", "exp": NaN}', id="exp-nan"),
        pytest.param(b'{"active": true, "sub": "u", "exp": Infinity}', id="exp-inf"),
        pytest.param({"active": True, "sub": "u", "exp": 1e300}, id="exp-huge-float"),
        pytest.param({"active": True, "sub": "u", "exp": 99999999999999}, id="exp-year-3170843"),
        pytest.param({"active": True, "sub": "u", "exp": 10**400}, id="exp-int-beyond-float"),
        pytest.param({"active": True, "sub": "u", "nbf": 10**400}, id="nbf-int-beyond-float"),
        pytest.param({"active": True, "sub": "u", "scope": ["read"]}, id="scope-list"),
        pytest.param({"active": True, "sub": "u", "nbf": "now"}, id="nbf-string"),
        pytest.param({"active": True, "sub": "u", "token_type": 1}, id="token-type-int"),
        pytest.param(["active"], id="not-object"),
    ],
)
def test_rfc7662_malformed_is_unavailable(body):
    if isinstance(body, bytes):  # JSON that Python's json module reads but httpx will not write
        response = answer(200, raw=body, headers={"content-type": "application/json"})
    else:
        response = answer(200, body)
    with pytest.raises(SourceUnavailable):
        drive(INTROSPECT, response)


def test_rfc7662_error_status_is_unavailable():
    with pytest.raises(SourceUnavailable):
        drive(INTROSPECT, answer(401, {"error": "invalid_client"}))


def test_rfc7662_bad_scope_roles():
    with pytest.raises(ConfigurationError):
        OAuthIntrospectionSource(
            "https://a.example", client_id="a", client_secret="b", scope_roles={"x": "admin"}
        )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@given(
    body=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"active": st.booleans()},
            optional={
                "sub": json_values,
                "username": json_values,
                "scope": json_values,
                "exp": json_values,
            },
        ),
    )
)
def test_rfc7662_never_crashes_and_never_grants_from_garbage(body):
    try:
        _, outcome = drive(INTROSPECT, answer(200, body))
    except SourceUnavailable:
        return
    if isinstance(outcome, Valid):
        assert body["active"] is True
        named = body.get("username") or body.get("sub")
        assert isinstance(named, str) or outcome.principal.name.startswith("client:")


whoami_like = st.fixed_dictionaries(
    {"name": st.one_of(st.text(max_size=10), json_values)},
    optional={
        "orgs": st.one_of(
            json_values,
            st.lists(
                st.fixed_dictionaries({"name": json_values}, optional={"roleInOrg": json_values})
            ),
        ),
        "auth": st.one_of(
            json_values,
            st.fixed_dictionaries(
                {},
                optional={
                    "type": json_values,
                    "expiresAt": json_values,
                    "accessToken": st.fixed_dictionaries(
                        {}, optional={"role": json_values, "fineGrained": json_values}
                    ),
                },
            ),
        ),
    },
)


@given(body=st.one_of(json_values, whoami_like))
def test_whoami_never_crashes_and_never_grants_from_garbage(body):
    try:
        _, outcome = drive(HubWhoamiSource(), answer(200, body))
    except SourceUnavailable:
        return
    assert isinstance(outcome, Valid)
    principal = outcome.principal
    assert isinstance(principal.name, str)
    assert principal.name
    assert principal.token_role is None or isinstance(principal.token_role, str)
    for org in principal.orgs:
        assert isinstance(org.role, str)


# --- local store and chain -----------------------------------------------------------


class DictStore:
    def __init__(self, answers):
        self.answers = answers

    def lookup(self, digest):
        return self.answers.get(digest)


def test_local_store_source():
    source = LocalStoreSource(DictStore({CREDENTIALS.digest: WHOAMI_WRITE}))
    requests, outcome = drive(source)
    assert requests == []
    assert outcome.principal.name == "hub.js"
    assert outcome.principal.source.startswith("local:")
    _, unknown = drive(LocalStoreSource(DictStore({})))
    assert isinstance(unknown, Invalid)


def test_local_store_malformed_entry_is_unavailable():
    with pytest.raises(SourceUnavailable):
        drive(LocalStoreSource(DictStore({CREDENTIALS.digest: {"orgs": 1}})))


def test_chain_first_that_knows_answers():
    local = LocalStoreSource(DictStore({}))
    chain = ChainSource(local, HubWhoamiSource())
    requests, outcome = drive(chain, answer(200, WHOAMI_WRITE))
    assert len(requests) == 1
    assert outcome.principal.name == "hub.js"


def test_chain_stops_at_first_valid():
    local = LocalStoreSource(DictStore({CREDENTIALS.digest: WHOAMI_FINE_GRAINED}))
    requests, outcome = drive(ChainSource(local, HubWhoamiSource()))
    assert requests == []
    assert outcome.principal.name == "alice"


def test_chain_unavailable_is_unavailable():
    chain = ChainSource(
        HubWhoamiSource(), LocalStoreSource(DictStore({CREDENTIALS.digest: WHOAMI_WRITE}))
    )
    with pytest.raises(SourceUnavailable):
        drive(chain, answer(503, {}))


def test_chain_needs_sources():
    with pytest.raises(ConfigurationError):
        ChainSource()


class BrokenStore:
    path = "/nonexistent/tokens.sqlite3"

    def lookup(self, digest):
        from hfauth_mw import TokenStoreError

        raise TokenStoreError("database is locked")


def test_local_store_failure_is_unavailable():
    with pytest.raises(SourceUnavailable, match="cannot be read"):
        drive(LocalStoreSource(BrokenStore()))


def test_two_local_stores_never_share_a_cache_namespace(tmp_path):
    from hfauth_mw import LocalTokenStore

    first = LocalStoreSource(LocalTokenStore(tmp_path / "a.sqlite3"))
    second = LocalStoreSource(LocalTokenStore(tmp_path / "b.sqlite3"))
    assert first.name != second.name
    assert LocalStoreSource(DictStore({})).name != LocalStoreSource(DictStore({})).name


# --- RFC 7662 over a real endpoint on the loopback ---------------------------------------


class _Introspection(http.server.BaseHTTPRequestHandler):
    """An RFC 7662 endpoint at /o/introspect/ (django-oauth-toolkit's path, with its
    slash) that tells each client something else: client "writer" hears the
    token is active with scope write-repos, any other client that it is inactive."""

    paths: list[str]

    def do_POST(self) -> None:
        self.paths.append(self.path)
        self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path != "/o/introspect/":
            self.send_response(301)
            self.send_header("Location", "/o/introspect/")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        client = base64.b64decode(self.headers["authorization"].split()[1]).split(b":")[0]
        body = (
            {"active": True, "sub": "alice", "scope": "write-repos"}
            if client == b"writer"
            else {"active": False}
        )
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def introspection_endpoint():
    handler = type("Handler", (_Introspection,), {"paths": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/o/introspect/", handler.paths
    finally:
        server.shutdown()
        server.server_close()


def test_rfc7662_endpoint_is_asked_at_the_url_given(introspection_endpoint):
    """A trailing slash is part of the endpoint: without it, a redirect (a 503)."""
    url, paths = introspection_endpoint
    source = OAuthIntrospectionSource(url, client_id="writer", client_secret="s")
    principal = Authenticator(source).authenticate_sync(Credentials.from_token(TOKEN))
    assert (principal.name, principal.token_role) == ("alice", "write")
    assert paths == ["/o/introspect/"]


@pytest.mark.parametrize(
    "second",
    [
        pytest.param({"client_id": "reader"}, id="another-client"),
        pytest.param({"client_id": "writer", "scope_roles": {"read": "read"}}, id="other-roles"),
        pytest.param({"client_id": "writer", "audience": "hub-api"}, id="an-audience-check"),
    ],
)
def test_rfc7662_sources_on_one_endpoint_never_share_answers(introspection_endpoint, second):
    """Each client of the endpoint hears its own answer, and each scope mapping
    makes its own principal: one cache (or one Redis) must keep them apart."""
    url, paths = introspection_endpoint
    cache = TokenCache()
    first = OAuthIntrospectionSource(url, client_id="writer", client_secret="s")
    other = OAuthIntrospectionSource(url, client_secret="s", **second)
    credentials = Credentials.from_token(TOKEN)
    assert Authenticator(first, cache=cache).authenticate_sync(credentials).token_role == "write"

    if second["client_id"] == "reader" or "audience" in second:
        with pytest.raises(InvalidToken):
            Authenticator(other, cache=cache).authenticate_sync(credentials)
    else:
        assert Authenticator(other, cache=cache).authenticate_sync(credentials).token_role is None
    assert len(paths) == 2  # asked again, not answered from the first source's entry


@pytest.mark.parametrize(
    ("url", "refused"),
    [
        pytest.param("https://idp.example/introspect?realm=a", False, id="query-kept"),
        pytest.param("https://idp.example/introspect#x", True, id="fragment"),
    ],
)
def test_rfc7662_url_query_and_fragment(url, refused):
    if refused:
        with pytest.raises(ConfigurationError, match="must not carry a fragment"):
            OAuthIntrospectionSource(url, client_id="c", client_secret="s")
    else:
        assert OAuthIntrospectionSource(url, client_id="c", client_secret="s").url == url


# --- RFC 7662: tokens for other APIs (issue 18, item 3) ---------------------------------


@pytest.mark.parametrize(
    ("scope", "role"),
    [
        pytest.param("write", None, id="bare-write-grants-nothing"),
        pytest.param("read", None, id="bare-read-grants-nothing"),
        pytest.param("read write openid", None, id="both-bare-grant-nothing"),
        pytest.param("write-repos", "write", id="hub-named-write"),
        pytest.param("repo.content.read", "read", id="hub-named-read"),
    ],
)
def test_rfc7662_default_maps_only_hub_named_scopes(scope, role):
    """A company IdP's token for the billing API with scope `write` must not upload
    models: the generic scopes mean nothing unless the operator says so."""
    _, outcome = drive(INTROSPECT, answer(200, {"active": True, "sub": "u", "scope": scope}))
    assert isinstance(outcome, Valid)
    assert outcome.principal.token_role == role


def _checked(**options):
    return OAuthIntrospectionSource(
        "https://auth.example/introspect",
        client_id="mw",
        client_secret="s3cret",
        scope_roles={"hub:write": "write"},
        **options,
    )


_ISS = "https://kc.example/realms/acme"


@pytest.mark.parametrize(
    ("options", "claims", "refusal"),
    [
        pytest.param({"audience": "hub-api"}, {"aud": "hub-api"}, None, id="aud-string"),
        pytest.param(
            {"audience": ["hub-api", "hub"]}, {"aud": ["account", "hub"]}, None, id="aud-list"
        ),
        pytest.param({"audience": "hub-api"}, {"aud": "billing-api"}, "audience", id="aud-other"),
        pytest.param({"audience": "hub-api"}, {"aud": ["billing", "x"]}, "audience", id="aud-none"),
        pytest.param({"audience": "hub-api"}, {}, "audience", id="aud-missing"),
        pytest.param({"issuer": _ISS}, {"iss": _ISS}, None, id="iss"),
        pytest.param({"issuer": _ISS}, {"iss": _ISS + "x"}, "issuer", id="iss-other"),
        pytest.param({"issuer": _ISS}, {}, "issuer", id="iss-missing"),
        pytest.param({"client_ids": ["hub-cli"]}, {"client_id": "hub-cli"}, None, id="client"),
        pytest.param({"client_ids": "hub-cli"}, {"azp": "hub-cli"}, None, id="keycloak-azp"),
        pytest.param({"client_ids": ["hub-cli"]}, {"client_id": "billing"}, "client", id="other"),
        pytest.param({"client_ids": ["hub-cli"]}, {}, "client", id="client-missing"),
        pytest.param(
            {"audience": "hub-api", "issuer": _ISS, "client_ids": ["hub-cli"]},
            {"aud": "hub-api", "iss": _ISS, "client_id": "billing"},
            "client",
            id="all-three-one-wrong",
        ),
        pytest.param({}, {"aud": "billing-api", "iss": "x"}, None, id="nothing-checked"),
    ],
)
def test_rfc7662_audience_issuer_and_client_checks(options, claims, refusal):
    body = {"active": True, "sub": "alice", "scope": "hub:write", **claims}
    _, outcome = drive(_checked(**options), answer(200, body))
    if refusal is None:
        assert isinstance(outcome, Valid)
        assert outcome.principal.token_role == "write"
    else:
        assert isinstance(outcome, Invalid)
        assert refusal in outcome.reason
        # Log-safe: fixed words, nothing quoted from the answer.
        for value in ("billing", "kc.example", "hub-api", "alice"):
            assert value not in outcome.reason


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"aud": 7}, id="aud-number"),
        pytest.param({"aud": ["hub-api", 7]}, id="aud-list-with-number"),
        pytest.param({"iss": ["x"]}, id="iss-list"),
        pytest.param({"client_id": 7}, id="client-id-number"),
    ],
)
def test_rfc7662_claims_of_the_wrong_type_are_unavailable(body):
    source = _checked(audience="hub-api", issuer=_ISS, client_ids=["hub-cli"])
    full = {"active": True, "sub": "u", "aud": "hub-api", "iss": _ISS, "client_id": "hub-cli"}
    with pytest.raises(SourceUnavailable):
        drive(source, answer(200, {**full, **body}))


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"audience": ""}, id="empty-audience"),
        pytest.param({"audience": []}, id="no-audience"),
        pytest.param({"audience": [""]}, id="blank-audience"),
        pytest.param({"issuer": ""}, id="empty-issuer"),
        pytest.param({"client_ids": []}, id="no-client-ids"),
        pytest.param({"client_ids": [7]}, id="client-id-number"),
    ],
)
def test_rfc7662_check_options_refused_at_start_up(options):
    with pytest.raises(ConfigurationError):
        _checked(**options)


def test_rfc7662_each_check_policy_has_its_own_cache_namespace():
    names = {
        _checked().name,
        _checked(audience="hub-api").name,
        _checked(audience="other").name,
        _checked(issuer=_ISS).name,
        _checked(client_ids="hub-cli").name,
        INTROSPECT.name,
    }
    assert len(names) == 6
    assert "s3cret" not in "".join(names)


class _CompanyIdP(http.server.BaseHTTPRequestHandler):
    """A Keycloak-shaped RFC 7662 endpoint: token "billing" was issued for the
    billing API with the generic scope `write`; token "hub" for this service."""

    answers: ClassVar[dict[str, Any]] = {
        "hf_billing": {
            "active": True,
            "username": "alice",
            "scope": "openid write",
            "aud": "billing-api",
            "iss": _ISS,
            "azp": "billing-frontend",
        },
        "hf_hubtoken": {
            "active": True,
            "username": "alice",
            "scope": "openid hub-write",
            "aud": ["account", "hub-api"],
            "iss": _ISS,
            "azp": "hub-cli",
        },
    }

    def do_POST(self) -> None:
        form = dict(
            pair.split("=", 1)
            for pair in self.rfile.read(int(self.headers["content-length"])).decode().split("&")
        )
        data = json.dumps(self.answers.get(form["token"], {"active": False})).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def company_idp():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _CompanyIdP)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/realms/acme/introspect"
    finally:
        server.shutdown()
        server.server_close()


def test_a_token_for_another_api_never_writes_here(company_idp):
    """Issue 18, item 3, reproduced over HTTP: the billing API's token is refused
    (401), this service's token is accepted with the role the operator stated."""
    source = OAuthIntrospectionSource(
        company_idp,
        client_id="hub-gateway",
        client_secret="s",
        audience="hub-api",
        issuer=_ISS,
        client_ids=["hub-cli"],
        scope_roles={"hub-read": "read", "hub-write": "write"},
    )
    auth = Authenticator(source)
    with pytest.raises(InvalidToken):
        auth.authenticate_sync(Credentials.from_token("hf_billing"))
    principal = auth.authenticate_sync(Credentials.from_token("hf_hubtoken"))
    assert (principal.name, principal.token_role) == ("alice", "write")


def test_rfc7662_401_is_our_credentials_never_the_token():
    """RFC 7662 section 2.1: a 401 refuses the *caller* (bad client secret); the
    token was never judged, so it is a 503 whatever the body or challenge says."""
    for response in (
        answer(401, {"error": "invalid_client"}),
        answer(401, {"error": "x"}, headers={"x-error-message": "Invalid credentials"}),
        answer(401, raw=b"<html/>", headers={"www-authenticate": 'Basic realm="sso"'}),
    ):
        with pytest.raises(SourceUnavailable):
            drive(INTROSPECT, response)


# --- a 401 that is not the Hub's (issue 18, item 4) -------------------------------------

_HUB_401 = {"error": "Invalid credentials in Authorization header"}
_SSO_PAGE = "<html><body><h1>Sign in to Acme SSO</h1></body></html>"


@pytest.mark.parametrize(
    ("fault", "hubs"),
    [
        pytest.param(faults.json_answer(_HUB_401, 401), True, id="hub-json-error"),
        pytest.param(
            faults.answer(401, "", content_type=None, headers=[("X-Error-Message", "Invalid")]),
            True,
            id="hub-x-error-message-only",
        ),
        pytest.param(
            faults.json_answer(_HUB_401, 401, headers=[("WWW-Authenticate", 'Bearer realm="hf"')]),
            True,
            id="hub-with-bearer-challenge",
        ),
        pytest.param(
            faults.answer(
                401,
                _SSO_PAGE,
                content_type="text/html",
                headers=[("WWW-Authenticate", 'Basic realm="Acme SSO"')],
            ),
            False,
            id="sso-proxy-html-basic",
        ),
        pytest.param(
            faults.json_answer(_HUB_401, 401, headers=[("WWW-Authenticate", "Negotiate")]),
            False,
            id="json-but-negotiate-challenge",
        ),
        pytest.param(
            faults.json_answer(
                _HUB_401, 401, headers=[("WWW-Authenticate", 'Bearer realm="a", Basic realm="b"')]
            ),
            False,
            id="basic-among-challenges",
        ),
        pytest.param(faults.answer(401, "", content_type=None), False, id="bare-401"),
        pytest.param(faults.json_answer({"message": "no"}, 401), False, id="json-without-error"),
        pytest.param(faults.answer(401, _SSO_PAGE, content_type="text/html"), False, id="html"),
    ],
)
def test_only_the_hubs_own_401_means_invalid_token(fault, hubs):
    """An SSO proxy's 401 in front of a private hub is upstream trouble (503, not
    cached: asked again next time), never "your token is bad"."""
    token = "hf_" + "S" * 34
    with faults.FaultServer(fault) as upstream:
        auth = Authenticator(HubWhoamiSource(upstream.url, timeout=5.0))
        for _ in range(2):
            expected = InvalidToken if hubs else SourceUnavailable
            with pytest.raises(expected) as caught:
                auth.authenticate_sync(Credentials.from_token(token))
            assert token not in str(caught.value)
        assert upstream.calls == (1 if hubs else 2)  # a refusal is cached, a 503 never
        if not hubs:
            assert "not the hub's" in str(caught.value)


# --- issue 18 item 1: refusals caused by the token, and the token-length cap --------------------


@pytest.mark.parametrize(
    ("status", "token_specific"),
    [
        *(pytest.param(status, True, id=str(status)) for status in (400, 403, 404, 413, 414, 431)),
        *(pytest.param(status, False, id=str(status)) for status in (429, 500, 502, 503, 418)),
    ],
)
@pytest.mark.parametrize("kind", ["hub", "rfc7662"])
def test_refusals_caused_by_the_token_are_told_apart(status, token_specific, kind):
    source = (
        HubWhoamiSource()
        if kind == "hub"
        else OAuthIntrospectionSource(
            "https://idp.example/introspect", client_id="a", client_secret="b"
        )
    )
    with pytest.raises(SourceUnavailable) as caught:
        drive(source, answer(status, raw=b"<html>no</html>", headers={"content-type": "text/html"}))
    assert caught.value.status_code == 503  # never "invalid": the token was not judged
    assert isinstance(caught.value, TokenRefusedUpstream) is token_specific
    assert getattr(caught.value, "charged_to_client", False) is token_specific


@pytest.mark.parametrize(
    ("make", "limit"),
    [
        pytest.param(lambda **o: HubWhoamiSource(**o), 4096, id="hub"),
        pytest.param(
            lambda **o: OAuthIntrospectionSource(
                "https://idp.example/introspect", client_id="a", client_secret="b", **o
            ),
            4096,
            id="rfc7662",
        ),
    ],
)
def test_tokens_past_the_cap_are_invalid_without_a_call(make, limit):
    under = make().flow(Credentials.from_token("hf_" + "A" * (limit - 3)))
    assert isinstance(next(under), httpx.Request)  # at the cap: asked
    over = make().flow(Credentials.from_token("hf_" + "A" * (limit - 2)))
    with pytest.raises(StopIteration) as done:  # one byte more: answered without a call
        next(over)
    assert isinstance(done.value.value, Invalid)
    assert f"{limit} bytes" in done.value.value.reason
    # The cap is the operator's to choose, and checked at start-up.
    assert make(max_token_bytes=64).max_token_bytes == 64
    for bad in (0, 15, 65537, "256", True, None):
        with pytest.raises(ConfigurationError, match="max_token_bytes"):
            make(max_token_bytes=bad)


def test_a_chain_masks_the_token_shapes_of_its_sources(tmp_path):
    idp = OAuthIntrospectionSource(
        "https://idp.example/introspect", client_id="a", client_secret="b"
    )
    chain = ChainSource(HubWhoamiSource(), idp)
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
    assert chain.token_shape is not None
    assert chain.token_shape.sub("***", f"/x/{jwt}") == "/x/***"
    assert ChainSource(HubWhoamiSource()).token_shape is None
