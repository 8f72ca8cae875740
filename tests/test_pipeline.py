"""The request pipeline: audit events, brute-force guard, error answers, each step."""

import logging
from datetime import UTC, datetime
from functools import partial

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from conftest import FakeClock, record_text
from hfauth_mw import (
    AccessPolicy,
    AuthenticationError,
    Authenticator,
    Credentials,
    FailureLimiter,
    Guard,
    HFAuthMiddleware,
    HubWhoamiSource,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    LocalStoreSource,
    MissingCredentials,
    Principal,
    RequestAuth,
    SourceUnavailable,
    TokenCache,
    TooManyFailures,
    Valid,
    require_read,
)
from hfauth_mw._credentials import CredentialsStep
from hfauth_mw._principal import fingerprint_of, token_digest
from hfauth_mw._request import RequestContext

pytestmark = pytest.mark.anyio


async def ok(request):
    return PlainTextResponse("ok")


@pytest.fixture
def make_client(hub_emulator, clock):
    def make(**options) -> httpx.AsyncClient:
        authenticator = Authenticator(
            HubWhoamiSource(hub_emulator.url), cache=TokenCache(timer=clock, clock=clock)
        )
        app = Starlette(routes=[Route("/x", ok, methods=["GET", "POST", "DELETE"])])
        app.add_middleware(HFAuthMiddleware, authenticator=authenticator, **options)
        transport = httpx.ASGITransport(app, client=("203.0.113.7", 5000))
        return httpx.AsyncClient(transport=transport, base_url="http://t")

    return make


def audit_events(records):
    return [record for record in records if record.name == "hfauth_mw.audit"]


async def test_one_audit_event_per_decision(make_client, hub_store, hub_emulator, no_token_in_logs):
    token = hub_store.create_token(user="bob", role="read").token
    async with make_client() as client:
        await client.get("/x", headers={"Authorization": f"Bearer {token}"})
        await client.delete("/x", headers={"Authorization": f"Bearer {token}"})
        await client.get("/x")
        await client.get("/x", headers={"Authorization": "Token nope"})
        await client.get("/x", headers={"Authorization": "Bearer hf_" + "u" * 34})
        hub_emulator.fail_next(503)
        await client.get("/x", headers={"Authorization": "Bearer hf_" + "v" * 34})
    events = audit_events(no_token_in_logs)
    summary = [(e.hfauth_event, e.hfauth_status, e.levelno) for e in events]
    assert summary == [
        ("allowed", 200, logging.INFO),
        ("denied", 403, logging.INFO),
        ("denied", 401, logging.INFO),
        ("denied", 400, logging.INFO),
        ("denied", 401, logging.INFO),
        ("unavailable", 503, logging.WARNING),
    ]
    allowed = events[0]
    assert allowed.hfauth_principal == "bob"
    assert allowed.hfauth_token_role == "read"
    assert allowed.hfauth_client == "203.0.113.7"
    assert allowed.hfauth_source.startswith("hub:")
    assert allowed.hfauth_latency_ms >= 0
    assert len(allowed.hfauth_fingerprint) == 12
    assert events[1].hfauth_reason.startswith("write denied")
    for event in events:
        assert token not in record_text(event)


def test_log_scanner_sees_tokens_in_every_part_of_a_record():
    token = "hf_" + "k" * 34
    records = [
        logging.LogRecord("x", logging.INFO, __file__, 1, f"msg {token}", None, None),
        logging.LogRecord("x", logging.INFO, __file__, 1, "msg %s", (token,), None),
    ]
    with_extra = logging.LogRecord("x", logging.INFO, __file__, 1, "msg", None, None)
    with_extra.secret = token
    records.append(with_extra)
    try:
        raise ValueError(token)
    except ValueError as error:
        records.append(
            logging.LogRecord(
                "x", logging.ERROR, __file__, 1, "boom", None, (ValueError, error, None)
            )
        )
    for record in records:
        assert token in record_text(record)


async def test_brute_force_guard_answers_429(make_client, hub_store, clock):
    good = hub_store.create_token(user="bob").token
    limiter = FailureLimiter(max_failures=5, window=60, timer=clock)
    async with make_client(limiter=limiter) as client:
        for index in range(5):
            response = await client.get("/x", headers={"Authorization": f"Bearer hf_{index:034d}"})
            assert response.status_code == 401
        blocked = await client.get("/x", headers={"Authorization": f"Bearer {good}"})
        assert blocked.status_code == 429
        assert blocked.headers["retry-after"] == "60"
        assert blocked.json()["error"] == "too_many_requests"
        clock.advance(60)
        response = await client.get("/x", headers={"Authorization": f"Bearer {good}"})
        assert response.status_code == 200


async def test_missing_credentials_do_not_count_as_failures(make_client, clock):
    limiter = FailureLimiter(max_failures=2, timer=clock)
    async with make_client(limiter=limiter) as client:
        for _ in range(5):
            assert (await client.get("/x")).status_code == 401


async def test_brute_force_guard_behind_trusted_proxy(make_client, hub_store, clock):
    limiter = FailureLimiter(max_failures=2, trusted_proxies=["203.0.113.7"], timer=clock)
    good = hub_store.create_token(user="bob").token
    async with make_client(limiter=limiter) as client:
        for _ in range(2):
            await client.get(
                "/x",
                headers={
                    "Authorization": "Bearer hf_" + "w" * 34,
                    "X-Forwarded-For": "198.51.100.1",
                },
            )
        other = await client.get(
            "/x", headers={"Authorization": f"Bearer {good}", "X-Forwarded-For": "198.51.100.2"}
        )
        assert other.status_code == 200
        blocked = await client.get(
            "/x", headers={"Authorization": f"Bearer {good}", "X-Forwarded-For": "198.51.100.1"}
        )
        assert blocked.status_code == 429


async def test_guard_can_be_switched_off(make_client):
    async with make_client(limiter=None) as client:
        for index in range(40):
            response = await client.get("/x", headers={"Authorization": f"Bearer hf_{index:034d}"})
            assert response.status_code == 401


@pytest.fixture
def guard(clock):
    return Guard(Authenticator(HubWhoamiSource(), cache=TokenCache(timer=clock, clock=clock)))


@pytest.mark.parametrize(
    ("error", "status", "challenge", "body_error", "retry_after"),
    [
        pytest.param(
            MissingCredentials(),
            401,
            ['Bearer realm="hfauth-mw"', 'Basic realm="hfauth-mw"'],
            "unauthorized",
            None,
            id="missing",
        ),
        pytest.param(
            InvalidToken(),
            401,
            [
                'Bearer realm="hfauth-mw", error="invalid_token", '
                'error_description="The access token is invalid, revoked or expired"'
            ],
            "invalid_token",
            None,
            id="invalid",
        ),
        pytest.param(
            InvalidRequest('bad "header"'),
            400,
            [
                'Bearer realm="hfauth-mw", error="invalid_request", '
                "error_description=\"bad 'header'\""
            ],
            "invalid_request",
            None,
            id="invalid-request-quotes-escaped",
        ),
        pytest.param(
            InsufficientScope("write denied: token role read", scope="repo.write"),
            403,
            [
                'Bearer realm="hfauth-mw", error="insufficient_scope", scope="repo.write", '
                'error_description="write denied: token role read"'
            ],
            "insufficient_scope",
            None,
            id="insufficient-scope",
        ),
        pytest.param(
            SourceUnavailable(retry_after=9),
            503,
            [],
            "temporarily_unavailable",
            "9",
            id="unavailable",
        ),
        pytest.param(
            TooManyFailures("slow down", 30), 429, [], "too_many_requests", "30", id="429"
        ),
    ],
)
def test_error_responses(guard, error, status, challenge, body_error, retry_after):
    response = guard.error_response(error)
    headers = httpx.Headers(response.headers)
    assert response.status == status
    assert headers.get_list("www-authenticate") == challenge
    assert headers.get("retry-after") == retry_after
    assert headers["cache-control"] == "no-store"
    assert httpx.Response(200, content=response.body).json()["error"] == body_error


# --- the cached-Bearer hot path ----------------------------------------------------------


@pytest.fixture
def local_guard(hub_store, clock):
    def make(**options) -> Guard:
        cache = TokenCache(timer=clock, clock=clock)
        return Guard(Authenticator(LocalStoreSource(hub_store), cache=cache), **options)

    return make


def decide(guard, authorization, method="GET", path="/x", query=(), peer="203.0.113.7"):
    """What the guard answers: the RequestAuth, or (error class, status)."""
    try:
        step = guard.begin(method, path, authorization, query, peer)
        return step if isinstance(step, RequestAuth) else guard.authenticator.run_sync(step)
    except AuthenticationError as error:
        return type(error).__name__, error.status_code


def lock_out_someone_else(guard):
    """Closes the hot path: while any client is locked out, every request goes the long way."""
    for _ in range(guard.limiter.max_failures):
        guard.limiter.failed("198.51.100.99")
    assert guard.limiter.locking_out()


ALLOWED = "allowed"


@pytest.mark.parametrize(
    ("header", "method", "path", "options", "expected"),
    [
        pytest.param("Bearer {t}", "GET", "/x", {}, ALLOWED, id="canonical"),
        pytest.param("Bearer {t}", "get", "/x", {}, ALLOWED, id="lowercase-method"),
        pytest.param("bearer {t}", "GET", "/x", {}, ALLOWED, id="lowercase-scheme"),
        pytest.param("Bearer  {t}", "GET", "/x", {}, ALLOWED, id="two-spaces"),
        pytest.param("Bearer {t} ", "GET", "/x", {}, ALLOWED, id="trailing-space"),
        pytest.param("Bearer {t}x", "GET", "/x", {}, ("InvalidToken", 401), id="other-token"),
        pytest.param("Bearer {t}", "POST", "/x", {}, ALLOWED, id="read-posts-inference-is-a-read"),
        pytest.param(
            "Bearer {t}", "DELETE", "/x", {}, ("InsufficientScope", 403), id="read-deletes"
        ),
        pytest.param(
            "Bearer {t}", "delete", "/x", {}, ("InsufficientScope", 403), id="read-deletes-lc"
        ),
        pytest.param("Bearer {t}", "HEAD", "/x", {}, ALLOWED, id="head"),
        pytest.param("Bearer {t}", "OPTIONS", "/x", {}, ALLOWED, id="options"),
        pytest.param("Bearer {t}", "GET", "/x\n", {}, ("InvalidRequest", 400), id="newline-path"),
        pytest.param("Bearer {t}", "GET", "/x\x00y", {}, ("InvalidRequest", 400), id="nul-path"),
        pytest.param("Bearer {t}", "GET", "/caf\u00e9", {}, ALLOWED, id="non-ascii-path"),
        pytest.param("Bearer {t}", "GET", "/a\u2028b", {}, ALLOWED, id="unprintable-not-control"),
        pytest.param(
            "Bearer {t}",
            "GET",
            "/models/bob/m",
            {"rules": [require_read("GET /models/{owner}/{name}")]},
            ALLOWED,
            id="rule-own-repo",
        ),
        pytest.param(
            "Bearer {t}",
            "GET",
            "/models/acme/m",
            {"rules": [require_read("GET /models/{owner}/{name}")]},
            ("InsufficientScope", 403),
            id="rule-private-repo",
        ),
        pytest.param(
            "Bearer {t}",
            "GET",
            "/x",
            {"max_header_bytes": 256},
            ("InvalidRequest", 400),
            id="longer-than-this-guard-allows",
        ),
    ],
)
@pytest.mark.parametrize("as_text", [False, True], ids=["asgi-bytes", "wsgi-text"])
def test_cached_answers_match_the_long_path(
    local_guard, hub_store, header, method, path, options, expected, as_text
):
    # A token longer than the narrow guard's max_header_bytes: cached through a
    # wider guard that shares the authenticator, then refused by the narrow one.
    token = "hf_" + "Q" * 300
    hub_store.add_token(token, user="bob", role="read")
    guard = local_guard(**options)
    wide = Guard(guard.authenticator)
    assert isinstance(decide(wide, [f"Bearer {token}".encode()]), RequestAuth)
    value = header.format(t=token)
    raw = value if as_text else value.encode("latin-1")
    hot = decide(guard, [raw], method, path)
    lock_out_someone_else(guard)
    long = decide(guard, [raw], method, path)
    assert hot == long
    if expected == ALLOWED:
        assert isinstance(hot, RequestAuth)
        assert (hot.principal.name, hot.scheme) == ("bob", "bearer")
    else:
        assert hot == expected


def _closed_hours(guard, method, path, principal):
    Guard.authorize(guard, method, path, principal)
    if path == "/closed":
        raise InsufficientScope("closed outside business hours", scope="hours")


def _no_hf_prefix(guard, authorization, query_tokens=()):
    credentials = Guard.credentials(guard, authorization, query_tokens)
    if credentials is not None and credentials.token.startswith("hf_"):
        raise InvalidRequest("this server takes tokens of its own kind only")
    return credentials


class _Refusals:
    """A limiter of one's own (duck-typed), refusing one client."""

    trusted_proxies = frozenset()

    def check(self, client):
        if client == "203.0.113.7":
            raise TooManyFailures("locked out by our own limiter", retry_after=60)

    def failed(self, client):
        pass


@pytest.mark.parametrize(
    ("set_up", "path", "expected"),
    [
        pytest.param(
            lambda guard: setattr(guard, "authorize", partial(_closed_hours, guard)),
            "/closed",
            ("InsufficientScope", 403),
            id="authorize-set-on-the-instance",
        ),
        pytest.param(
            lambda guard: setattr(guard, "credentials", partial(_no_hf_prefix, guard)),
            "/x",
            ("InvalidRequest", 400),
            id="credentials-set-on-the-instance",
        ),
        pytest.param(
            lambda guard: setattr(guard, "limiter", _Refusals()),
            "/x",
            ("TooManyFailures", 429),
            id="limiter-replaced-after-start",
        ),
    ],
)
def test_hooks_set_after_start_up_are_honoured_on_the_short_path(
    local_guard, hub_store, set_up, path, expected
):
    token = hub_store.create_token(user="bob").token
    guard = local_guard()
    header = [f"Bearer {token}".encode()]
    assert isinstance(decide(guard, header, path=path), RequestAuth)  # now cached

    set_up(guard)

    assert decide(guard, header, path=path) == expected


def test_a_subclass_credentials_is_called_on_the_short_path_too(local_guard, hub_store):
    class OwnTokensOnly(Guard):
        def credentials(self, authorization, query_tokens=()):
            return _no_hf_prefix(self, authorization, query_tokens)

    token = hub_store.create_token(user="bob").token
    header = [f"Bearer {token}".encode()]
    plain = local_guard()
    assert isinstance(decide(plain, header), RequestAuth)  # cached, in the shared cache
    guard = OwnTokensOnly(plain.authenticator)
    assert decide(guard, header) == ("InvalidRequest", 400)


@pytest.mark.parametrize(
    ("path", "logged"),
    [
        pytest.param(
            "/x\nallowed GET /admin: allowed (user admin)",
            "/x\\nallowed GET /admin: allowed (user admin)",
            id="newline-forging-a-line",
        ),
        pytest.param("/x\r\x1b[2J", "/x\\r\\x1b[2J", id="carriage-return-and-escape"),
        pytest.param("/files/hf_" + "T" * 34, "/files/hf_***", id="token-pasted-in-the-path"),
        pytest.param("/v1/models/acme/x", "/v1/models/acme/x", id="plain"),
    ],
)
def test_an_audit_event_is_one_line_of_what_was_asked(local_guard, no_token_in_logs, path, logged):
    """The path comes from the client (ASGI servers decode %0A): it cannot start
    a forged audit line, and a token pasted into it is masked."""
    decide(local_guard(), [], path=path)  # no credentials: a 401, audited

    [event] = audit_events(no_token_in_logs)
    text = event.getMessage()
    assert not any(char in text for char in "\n\r\x1b")
    assert f"denied GET {logged}: " in text
    assert event.hfauth_path == logged


def test_a_subclass_authorize_is_called_on_the_short_path_too(local_guard, hub_store):
    """Skipping authorize() with no rules must not skip a subclass's own checks."""

    class BusinessHours(Guard):
        def authorize(self, method: str, path: str, principal: Principal) -> None:
            super().authorize(method, path, principal)
            if path == "/closed":
                raise InsufficientScope("closed outside business hours", scope="hours")

    token = hub_store.create_token(user="bob").token
    guard = BusinessHours(local_guard().authenticator)
    header = [f"Bearer {token}".encode()]
    assert isinstance(decide(guard, header, path="/open"), RequestAuth)  # now cached
    assert decide(guard, header, path="/closed") == ("InsufficientScope", 403)


@pytest.fixture
def parses(monkeypatch):
    """Counts the pipeline's calls of the credentials step (the real one runs)."""
    calls = []
    real = CredentialsStep.credentials

    def counted(self, *args, **kwargs):
        calls.append(args[0])
        return real(self, *args, **kwargs)

    monkeypatch.setattr(CredentialsStep, "credentials", counted)
    return calls


@pytest.mark.parametrize(
    "as_text", [pytest.param(False, id="asgi-bytes"), pytest.param(True, id="wsgi-text")]
)
def test_a_cached_request_runs_the_same_steps_as_a_cold_one(
    local_guard, hub_store, parses, as_text
):
    """One pipeline: a cached token is parsed once per request, as a cold one is,
    and answered without a flow (the cache step hits)."""
    token = hub_store.create_token(user="bob").token
    header = f"Bearer {token}"
    guard = local_guard()
    first = decide(guard, [header if as_text else header.encode()])
    assert len(parses) == 1
    step = guard.begin("GET", "/x", [header if as_text else header.encode()])
    assert step is first  # no generator: the RequestAuth itself
    assert len(parses) == 2


@pytest.mark.parametrize("issued", [True, False], ids=["valid", "unknown"])
def test_cold_bearer_token_is_parsed_and_hashed_once(local_guard, hub_store, parses, issued):
    token = hub_store.create_token(user="bob").token if issued else "hf_" + "z" * 34
    header = [f"Bearer {token}".encode()]
    guard = local_guard()
    answer = decide(guard, header)
    if issued:
        assert (answer.principal.name, answer.scheme) == ("bob", "bearer")
    else:
        assert answer == ("InvalidToken", 401)
    assert len(parses) == 1
    assert guard.authenticator.stats()["local_misses"] == 1


def test_locked_out_client_is_refused_even_with_a_cached_token(local_guard, hub_store, clock):
    token = hub_store.create_token(user="bob").token
    guard = local_guard(limiter=FailureLimiter(max_failures=3, window=60, timer=clock))
    header = [f"Bearer {token}".encode()]
    assert isinstance(decide(guard, header, peer="203.0.113.7"), RequestAuth)
    for index in range(3):
        assert decide(guard, [f"Bearer hf_{index:034d}".encode()], peer="203.0.113.7") == (
            "InvalidToken",
            401,
        )
    assert decide(guard, header, peer="203.0.113.7") == ("TooManyFailures", 429)
    assert isinstance(decide(guard, header, peer="203.0.113.8"), RequestAuth)
    clock.advance(60)
    assert not guard.limiter.locking_out()
    assert isinstance(decide(guard, header, peer="203.0.113.7"), RequestAuth)


@pytest.mark.parametrize("hot", [True, False], ids=["hot-path", "long-path"])
def test_cached_requests_are_counted_once(local_guard, hub_store, hot):
    token = hub_store.create_token(user="bob").token
    guard = local_guard()
    header = [f"Bearer {token}".encode()]
    decide(guard, header)
    if not hot:
        lock_out_someone_else(guard)
    before = guard.authenticator.stats()
    for _ in range(5):
        decide(guard, header)
    decide(guard, header, method="DELETE")
    after = guard.authenticator.stats()
    assert after["local_hits"] - before["local_hits"] == 6
    assert after["decisions_valid"] - before["decisions_valid"] == 6
    assert after["local_misses"] == before["local_misses"] == 1


def test_cached_path_with_audit_at_warning(local_guard, hub_store, caplog, no_token_in_logs):
    # The default deployment: "allowed" and "denied" events (INFO) are not written.
    caplog.set_level(logging.WARNING, logger="hfauth_mw.audit")
    token = hub_store.create_token(user="bob").token
    failing = AccessPolicy(visibility=lambda repo: 1 / 0)
    guard = local_guard(rules=[require_read("GET /models/{owner}/{name}")], policy=failing)
    header = [f"Bearer {token}".encode()]
    assert isinstance(decide(guard, header), RequestAuth)
    assert isinstance(decide(guard, header), RequestAuth)
    assert decide(guard, header, method="DELETE") == ("InsufficientScope", 403)
    assert not audit_events(no_token_in_logs)
    assert decide(guard, header, path="/models/acme/m") == ("SourceUnavailable", 503)
    (event,) = audit_events(no_token_in_logs)
    assert (event.hfauth_event, event.hfauth_client) == ("unavailable", "203.0.113.7")
    assert event.hfauth_fingerprint == fingerprint_of(token_digest(token))


def _set_audit_level(level: int) -> None:
    logging.getLogger("hfauth_mw.audit").setLevel(level)


def _disable_info(level: int) -> None:
    logging.getLogger("hfauth_mw.audit").setLevel(logging.INFO)
    logging.disable(logging.INFO)


def _disabled_logger(level: int) -> None:
    logger = logging.getLogger("hfauth_mw.audit")
    logger.setLevel(logging.INFO)
    logger.disabled = True  # as dictConfig(disable_existing_loggers=True) leaves it


@pytest.mark.parametrize(
    ("switch", "written"),
    [
        pytest.param(_set_audit_level, True, id="set-level-info"),
        pytest.param(_disable_info, False, id="logging-disable"),
        pytest.param(_disabled_logger, False, id="logger-disabled"),
    ],
)
def test_allowed_events_follow_the_audit_level_between_cached_requests(
    local_guard, hub_store, caplog, no_token_in_logs, switch, written
):
    """The cached path skips the audit check while allowed events are off, from
    what logging last answered; a level changed between two requests is seen
    on the next one."""
    logger = logging.getLogger("hfauth_mw.audit")
    caplog.set_level(logging.WARNING, logger="hfauth_mw.audit")
    token = hub_store.create_token(user="bob").token
    guard = local_guard()
    header = [f"Bearer {token}".encode()]
    try:
        assert isinstance(decide(guard, header), RequestAuth)
        assert isinstance(decide(guard, header), RequestAuth)  # cached, audit off
        assert not audit_events(no_token_in_logs)
        switch(logging.INFO)
        assert isinstance(decide(guard, header), RequestAuth)
        events = [e.hfauth_event for e in audit_events(no_token_in_logs)]
        assert events == (["allowed"] if written else [])
    finally:
        logging.disable(logging.NOTSET)
        logger.disabled = False


def test_token_expired_while_fresh_in_cache_is_refused(hub_store, clock):
    """Freshness never outlives a token's expiry, unless the wall clock jumps."""
    wall = FakeClock(clock.now)
    expires = datetime.fromtimestamp(wall.now + 3600, UTC)
    token = hub_store.create_token(user="bob", expires_at=expires).token
    cache = TokenCache(timer=clock, clock=wall)
    guard = Guard(Authenticator(LocalStoreSource(hub_store), cache=cache))
    header = [f"Bearer {token}".encode()]
    assert isinstance(decide(guard, header), RequestAuth)
    wall.advance(7200)
    before = guard.authenticator.stats()
    assert decide(guard, header) == ("InvalidToken", 401)
    after = guard.authenticator.stats()
    assert after["local_hits"] - before["local_hits"] == 1
    assert after["decisions_expired"] - before["decisions_expired"] == 1


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("hf_Secret!Token,123", id="not-b64token"),
        pytest.param("hf_SecretTokén123", id="not-ascii"),
    ],
)
def test_token_cached_through_the_api_is_still_parsed_in_headers(local_guard, hub_store, token):
    """A token the parser refuses stays refused in a header, even once the API cached it."""
    hub_store.add_token(token, user="bob")
    guard = local_guard()
    principal = guard.authenticator.authenticate_sync(Credentials.from_token(token))
    assert principal.name == "bob"
    raw = f"Bearer {token}".encode()
    hot = decide(guard, [raw])
    lock_out_someone_else(guard)
    assert hot == decide(guard, [raw]) == ("InvalidRequest", 400)


class DenyListLimiter(FailureLimiter):
    """A limiter with its own idea of who is locked out."""

    def check(self, client):
        if client == "203.0.113.66":
            raise TooManyFailures("denied", 60)
        super().check(client)


class DuckLimiter:
    """Not a FailureLimiter at all: only what the guard calls."""

    trusted_proxies = frozenset()

    def __init__(self):
        self.checked = []

    def check(self, client):
        self.checked.append(client)
        if client == "203.0.113.66":
            raise TooManyFailures("denied", 60)

    def failed(self, client):
        pass


@pytest.mark.parametrize("limiter", [DenyListLimiter, DuckLimiter], ids=["subclass", "duck"])
def test_a_limiter_of_another_kind_checks_every_request(local_guard, hub_store, limiter):
    token = hub_store.create_token(user="bob").token
    guard = local_guard(limiter=limiter())
    header = [f"Bearer {token}".encode()]
    assert isinstance(decide(guard, header, peer="203.0.113.7"), RequestAuth)
    assert isinstance(decide(guard, header, peer="203.0.113.7"), RequestAuth)
    assert decide(guard, header, peer="203.0.113.66") == ("TooManyFailures", 429)


def test_request_auth_is_built_once_per_token_beyond_ten_thousand(hub_store):
    """The per-principal tables grow with the cache: busy tokens are not rebuilt."""
    cache = TokenCache(maxsize=10_500)
    authenticator = Authenticator(LocalStoreSource(hub_store), cache=cache)
    guard = Guard(authenticator, limiter=None)
    tokens = [f"hf_{index:034d}" for index in range(10_200)]
    for index, token in enumerate(tokens):
        leader = cache.begin(authenticator.cache_key(token_digest(token)))
        cache.complete(leader, Valid(Principal(name=f"user{index}", token_role="read")))
    headers = [[f"Bearer {token}".encode()] for token in tokens]
    first = [decide(guard, header) for header in headers]
    assert all(isinstance(auth, RequestAuth) for auth in first)
    again = [decide(guard, header) for header in headers]
    assert all(a is b for a, b in zip(first, again, strict=True))


@pytest.mark.parametrize(
    ("spec", "path", "matches"),
    [
        pytest.param("GET /m/{owner}/{name}", "/m/a/b", True, id="as-written"),
        pytest.param("GET /m/{owner}/{name}", "/m/a/b/", True, id="added-slash"),
        pytest.param("GET /m/{owner}/{name}/", "/m/a/b", True, id="dropped-slash"),
        pytest.param("GET /m/{owner}/{name}/", "/m/a/b/", True, id="template-slash"),
        pytest.param("GET /m/{owner}/{name}/files", "/m/a/b/files/", True, id="literal-tail"),
        pytest.param("GET /m/{owner}/{name}", "/m/a/b/c", False, id="deeper-path"),
        pytest.param("GET /m/{owner}/{name}", "/m/a/", False, id="no-name"),
    ],
)
def test_rules_match_with_or_without_one_trailing_slash(spec, path, matches):
    match = require_read(spec).pattern.fullmatch(path)
    assert (match is not None) == matches
    if matches:
        assert (match["owner"], match["name"]) == ("a", "b")


@pytest.mark.parametrize(
    ("path", "public"),
    [
        pytest.param("/health", True, id="exact"),
        pytest.param("/docs/index.html", True, id="prefix"),
        pytest.param("/docs/../x", False, id="dot-segments"),
        pytest.param("/healthz", False, id="other"),
    ],
)
def test_is_public_answers_as_the_path_step(local_guard, path, public):
    guard = local_guard(public_paths=["/health", "/docs/*"])
    assert guard.is_public(path) is public
    if public:
        assert guard.decide(RequestContext("GET", path, [])) is None  # served unchecked
    else:
        with pytest.raises(MissingCredentials):
            guard.decide(RequestContext("GET", path, []))


def test_request_flow_is_one_flow_cached_or_cold(local_guard, hub_store):
    """For a caller that always drives a flow: the same RequestAuth either way."""
    token = hub_store.create_token(user="bob").token
    guard = local_guard()
    header = [f"Bearer {token}".encode()]
    cold = guard.authenticator.run_sync(guard.request_flow("GET", "/x", header))
    cached = guard.authenticator.run_sync(guard.request_flow("GET", "/x", header))
    assert cold.principal.name == cached.principal.name == "bob"
    assert cached is cold  # memoised per cached principal (local rules)
    with pytest.raises(MissingCredentials):
        guard.authenticator.run_sync(guard.request_flow("GET", "/x", []))
