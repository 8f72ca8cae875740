"""The adapter kit: reading an ASGI scope, watching the response, marking it
private when the caller is known only later, and telling whether a request
carries credentials."""

import asyncio

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hfauth_mw import (
    AccessPolicy,
    Authenticator,
    BodyTooLarge,
    Guard,
    LocalStoreSource,
    LocalTokenStore,
    RequestAuth,
    from_body,
    require_read,
)
from hfauth_mw._adapters import (
    ENVIRON_AUTH,
    ENVIRON_SENT_UNMARKED,
    MALFORMED,
    AsgiRequest,
    SendWatch,
    carried_credentials,
    private_start_response,
    read_environ,
    take_body,
    take_body_async,
    varies_on_authorization,
    with_private_headers,
)
from hfauth_mw._principal import ANONYMOUS, Principal
from hfauth_mw._request import UNRESOLVED, RequestContext

TOKEN_HEADER = b"Bearer hf_" + b"a" * 34


def scope(**changes):
    base = {
        "type": "http",
        "method": "GET",
        "path": "/v1/ping",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"t"), (b"authorization", TOKEN_HEADER)],
        "client": ("203.0.113.7", 50000),
    }
    return {**base, **changes}


def facts(request):
    """Every field of a request context, by slot name (unset ones shown as such;
    a list and a tuple of the same values are the same sequence)."""
    values = {name: getattr(request, name, "<unset>") for name in RequestContext.__slots__}
    del values["started"]
    return {
        name: tuple(value) if isinstance(value, list) else value for name, value in values.items()
    }


@pytest.mark.parametrize(
    ("asgi", "expected"),
    [
        pytest.param(
            scope(),
            RequestContext("GET", "/v1/ping", [TOKEN_HEADER], (), "203.0.113.7"),
            id="bearer",
        ),
        pytest.param(
            scope(method="post"),
            RequestContext("POST", "/v1/ping", [TOKEN_HEADER], (), "203.0.113.7"),
            id="lower-case-method",
        ),
        pytest.param(
            scope(path="/api/v1/ping", root_path="/api"),
            RequestContext("GET", "/v1/ping", [TOKEN_HEADER], (), "203.0.113.7"),
            id="root-path",
        ),
        pytest.param(
            scope(headers=[(b"authorization", b"a"), (b"authorization", b"b")], client=None),
            RequestContext("GET", "/v1/ping", [b"a", b"b"], (), None),
            id="two-headers-unix-socket",
        ),
        pytest.param(
            scope(headers=[], query_string=b"access_token=x&other=1&access_token=y"),
            RequestContext("GET", "/v1/ping", [], ["x", "y"], "203.0.113.7"),
            id="query-tokens",
        ),
    ],
)
def test_a_scope_reads_as_the_same_request_facts(asgi, expected):
    """AsgiRequest sets RequestContext's fields itself: the two must not drift."""
    request = AsgiRequest(asgi, "access_token")
    expected.headers = asgi["headers"]
    assert facts(request) == facts(expected)
    assert request.forwarded_for == expected.forwarded_for
    assert request.client is UNRESOLVED
    assert request.started > 0


def test_query_tokens_are_read_only_when_opted_in():
    request = AsgiRequest(scope(query_string=b"access_token=x"), None)
    assert request.query_tokens == ()


def test_forwarded_for_is_read_from_the_headers_when_asked():
    request = AsgiRequest(
        scope(headers=[(b"x-forwarded-for", b"198.51.100.1"), (b"x-forwarded-for", b"10.0.0.1")]),
        None,
    )
    assert request.forwarded_for == "198.51.100.1, 10.0.0.1"


START = {"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]}
BODY = {"type": "http.response.body", "body": b"ok"}


def sent_through(watch_for, private, messages):
    out = []

    async def send(message):
        out.append(message)

    async def run():
        watch = watch_for(send)
        wrapped = watch.send_private if private else watch.send_watched
        assert asyncio.iscoroutinefunction(wrapped)
        assert watch.response_started is False
        for message in messages:
            awaitable = wrapped(message)
            # After the start, the server's own coroutine, not one of ours around it.
            starts = message["type"] == "http.response.start"
            assert (awaitable.cr_code is send.__code__) is not starts
            await awaitable
        return watch.response_started

    return asyncio.run(run()), out


WATCHES = [
    pytest.param(SendWatch, id="send-watch"),
    pytest.param(lambda send: AsgiRequest(scope(), None, send), id="asgi-request"),
]


@pytest.mark.parametrize("watch_for", WATCHES)
@pytest.mark.parametrize(
    ("headers", "added"),
    [
        pytest.param(
            [(b"x-app", b"1")],
            [(b"cache-control", b"private"), (b"vary", b"Authorization")],
            id="no-cache-control",
        ),
        pytest.param(
            ((b"Cache-Control", b"max-age=5"),), [(b"vary", b"Authorization")], id="app-chose"
        ),
        pytest.param(
            iter([(b"x-app", b"1")]),
            [(b"cache-control", b"private"), (b"vary", b"Authorization")],
            id="generator",
        ),
        pytest.param(
            [(b"Vary", b"Accept-Encoding, authorization")],
            [(b"Vary", b"Accept-Encoding, authorization"), (b"cache-control", b"private")],
            id="app-varies-on-it",
        ),
        pytest.param(
            [(b"vary", b"*"), (b"cache-control", b"no-store")],
            [(b"vary", b"*"), (b"cache-control", b"no-store")],
            id="app-varies-on-all-and-chose",
        ),
        pytest.param(
            [(b"vary", b"X-Authorization")],
            [(b"cache-control", b"private"), (b"vary", b"Authorization")],
            id="another-header",
        ),
    ],
)
def test_send_private_marks_the_start_and_leaves_the_app_message_alone(watch_for, headers, added):
    start = {**START, "headers": headers}
    kept = list(headers) if not isinstance(headers, type(iter([]))) else None
    started, out = sent_through(watch_for, True, [start, BODY])
    assert started is True
    assert out[0]["headers"][-len(added) :] == added
    assert out[0]["status"] == 200
    assert out[1] is BODY
    if kept is not None:
        assert list(start["headers"]) == kept  # the app's own list is never changed


@pytest.mark.parametrize(
    ("value", "varies"),
    [
        pytest.param("Authorization", True, id="alone"),
        pytest.param(b"accept-encoding,AUTHORIZATION", True, id="listed-bytes"),
        pytest.param(" Origin ,  authorization ", True, id="spaced"),
        pytest.param("*", True, id="everything"),
        pytest.param("X-Authorization", False, id="another-header"),
        pytest.param("Authorization-X, Origin", False, id="prefix"),
        pytest.param("", False, id="empty"),
    ],
)
def test_varies_on_authorization(value, varies):
    assert varies_on_authorization(value) is varies


field_names = st.sampled_from(["Accept", "Origin", "authorization", "Authorization", "*"]) | (
    st.text("abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=12)
)


@given(names=st.lists(field_names, max_size=5), space=st.sampled_from(["", " ", "  "]))
def test_varies_on_authorization_reads_every_listed_name(names, space):
    value = ("," + space).join(names)
    listed = {name.lower() for name in names}
    assert varies_on_authorization(value) is bool(listed & {"authorization", "*"})


@pytest.mark.parametrize(
    ("headers", "added"),
    [
        pytest.param([], [("Cache-Control", "private"), ("Vary", "Authorization")], id="none"),
        pytest.param([("cache-control", "max-age=5")], [("Vary", "Authorization")], id="chose"),
        pytest.param([("Vary", "authorization")], [("Cache-Control", "private")], id="varies"),
        pytest.param([("Cache-Control", "no-store"), ("Vary", "*")], [], id="both"),
    ],
)
def test_with_private_headers_adds_only_what_is_missing(headers, added):
    """WSGI: the same rule over ``start_response``'s header list."""
    marked = with_private_headers(headers)
    assert marked == [*headers, *added]
    assert marked is not headers


@pytest.mark.parametrize("watch_for", WATCHES)
def test_send_watched_passes_messages_unchanged(watch_for):
    started, out = sent_through(watch_for, False, [START, BODY])
    assert started is True
    assert out == [START, BODY]
    assert out[0] is START


@pytest.mark.parametrize("private", [True, False], ids=["private", "watched"])
def test_the_response_starts_when_the_app_awaits_the_start(private):
    """An app may make the start's awaitable, then check its caller: a denial
    raised before it awaits can still be answered."""

    async def send(message):
        pass

    async def run():
        watch = SendWatch(send)
        wrapped = watch.send_private if private else watch.send_watched
        pending = wrapped(START)
        before = watch.response_started
        await pending
        return before, watch.response_started

    assert asyncio.run(run()) == (False, True)


@pytest.mark.parametrize("private", [True, False], ids=["private", "watched"])
def test_nothing_started_before_the_start_message(private):
    started, _ = sent_through(SendWatch, private, [])
    assert started is False


BOB = Principal(name="bob", token_role="read")
PRIVATE = [(b"cache-control", b"private"), (b"vary", b"Authorization")]


@pytest.mark.parametrize(
    ("auth", "marked"),
    [
        pytest.param(RequestAuth(BOB, AccessPolicy(), "bearer"), True, id="token"),
        pytest.param(RequestAuth(ANONYMOUS, AccessPolicy()), False, id="anonymous"),
        pytest.param(None, False, id="not-checked"),
    ],
)
def test_send_marked_decides_when_the_response_starts(auth, marked):
    """A layer before the authentication (Starlette's AuthenticationMiddleware):
    what counts is scope["hfauth"] when the app starts its answer."""
    request_scope = scope()
    out = []

    async def send(message):
        out.append(message)

    async def run():
        watch = SendWatch(send, request_scope)
        if auth is not None:
            request_scope["hfauth"] = auth  # the backend ran after the watch was made
        await watch.send_marked(START)
        await watch.send_marked(BODY)
        return watch.response_started

    assert asyncio.run(run()) is True
    assert out[0]["headers"] == START["headers"] + (PRIVATE if marked else [])
    assert out[1] is BODY


@pytest.mark.parametrize(
    ("environ", "marked", "noted"),
    [
        pytest.param(None, True, False, id="authenticated-path"),
        pytest.param(
            {ENVIRON_AUTH: RequestAuth(BOB, AccessPolicy(), "basic")}, True, False, id="lazy"
        ),
        pytest.param({}, False, True, id="public-unchecked"),
        pytest.param(
            {ENVIRON_AUTH: RequestAuth(ANONYMOUS, AccessPolicy())}, False, True, id="anonymous"
        ),
    ],
)
def test_private_start_response_with_and_without_the_environ(environ, marked, noted):
    started = []

    def server_start(status, headers, exc_info=None):
        started.append(headers)

    start = private_start_response(server_start, *([] if environ is None else [environ]))
    start("200 OK", [("Content-Type", "text/plain")])
    private = [("Cache-Control", "private"), ("Vary", "Authorization")]
    assert started == [[("Content-Type", "text/plain"), *(private if marked else [])]]
    assert (environ or {}).get(ENVIRON_SENT_UNMARKED, False) is noted


@pytest.fixture
def guard(tmp_path):
    store = LocalTokenStore(tmp_path / "tokens.db")
    return Guard(Authenticator(LocalStoreSource(store)))


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([], None, id="none"),
        pytest.param([(b"authorization", TOKEN_HEADER)], "bearer", id="bearer"),
        pytest.param([(b"authorization", b"Bearer a b")], MALFORMED, id="malformed"),
        pytest.param(
            [(b"authorization", TOKEN_HEADER), (b"authorization", TOKEN_HEADER)],
            MALFORMED,
            id="two-headers",
        ),
    ],
)
def test_carried_credentials(guard, headers, expected):
    found = carried_credentials(guard, AsgiRequest(scope(headers=headers), None))
    if isinstance(expected, str):
        assert found is not None
        assert found is not MALFORMED
        assert found.scheme == expected
    else:
        assert found is expected


def _never_read() -> bytes:
    raise AssertionError("the body was read")


async def _never_read_async() -> bytes:
    raise AssertionError("the body was read")


@pytest.mark.parametrize(
    "request_of",
    [
        pytest.param(
            lambda length: read_environ(
                {
                    "REQUEST_METHOD": "POST",
                    "PATH_INFO": "/v1/chat",
                    "CONTENT_LENGTH": length.decode(),
                    # With credentials: a request without any is refused unread.
                    "HTTP_AUTHORIZATION": "Bearer hf_" + "T" * 34,
                },
                None,
            ),
            id="wsgi-environ",  # and Django's request.META: CONTENT_LENGTH, no HTTP_ prefix
        ),
        pytest.param(
            lambda length: AsgiRequest(
                scope(
                    method="POST",
                    path="/v1/chat",
                    headers=[
                        (b"content-length", length),
                        (b"authorization", b"Bearer hf_" + b"T" * 34),
                    ],
                ),
                None,
            ),
            id="asgi-scope",
        ),
    ],
)
@pytest.mark.parametrize("blocking", [True, False], ids=["take_body", "take_body_async"])
def test_a_declared_length_over_the_cap_is_refused_before_the_body_is_read(
    tmp_path, request_of, blocking
):
    store = LocalTokenStore(tmp_path / "tokens.db")
    rules = [require_read("POST /v1/chat", repo=from_body("model"))]
    guard = Guard(Authenticator(LocalStoreSource(store)), rules=rules, max_body_bytes=1024)
    request = request_of(b"200000000")

    def take() -> None:
        if blocking:
            take_body(guard, request, _never_read)
        else:
            asyncio.run(take_body_async(guard, request, _never_read_async))

    with pytest.raises(BodyTooLarge, match="larger than 1024 bytes"):
        take()
