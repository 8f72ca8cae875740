"""The WSGI middleware around a bare WSGI app, against the hub emulator over loopback.

In-process requests go through werkzeug's test client; the concurrency tests
run a real threaded werkzeug server on 127.0.0.1.
"""

import base64
import inspect
import json
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient
from werkzeug.middleware.dispatcher import DispatcherMiddleware
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.test import Client

from contract import ADAPTER_ACCESS_ROWS
from hfauth_mw import (
    ANONYMOUS,
    AccessPolicy,
    Authenticator,
    ConfigurationError,
    HFAuthMiddleware,
    HFAuthWSGIMiddleware,
    HubWhoamiSource,
    Repo,
    RequestAuth,
    TokenCache,
    Visibility,
    get_request_auth,
    require_read,
    require_write,
)
from hfauth_mw._options import MiddlewareOptions
from hfauth_mw._pipeline import Guard, GuardOptions

RULES = [
    require_read("POST /v1/models/{owner}/{name}/infer"),
    require_write("PUT /v1/models/{owner}/{name}"),
]
PUBLIC = {Repo.parse("model:acme/public-demo"): Visibility.PUBLIC}


def visibility(repo: Repo) -> Visibility:
    return PUBLIC.get(repo, Visibility.PRIVATE)


def wsgi_app(environ, start_response):
    """Echoes what the middleware attached; ``/cached`` sets its own Cache-Control."""
    auth = environ.get("hfauth")
    principal = environ.get("hfauth.principal")
    body = json.dumps(
        {
            "user": principal.name if principal else None,
            "scheme": auth.scheme if auth else None,
            "same": principal is (auth.principal if auth else None),
            "script_name": environ.get("SCRIPT_NAME", ""),
            "path_info": environ.get("PATH_INFO", ""),
        }
    ).encode()
    headers = [("Content-Type", "application/json")]
    if environ["PATH_INFO"] == "/cached":
        headers.append(("Cache-Control", "max-age=60"))
    start_response("200 OK", headers)
    return [body]


@pytest.fixture
def authenticator(hub_emulator, clock):
    return Authenticator(
        HubWhoamiSource(hub_emulator.url), cache=TokenCache(timer=clock, clock=clock)
    )


OPTIONS = {"public_paths": ["/health", "/docs/*"], "rules": RULES}


@pytest.fixture
def make_middleware(authenticator):
    def make(app=wsgi_app, **options) -> HFAuthWSGIMiddleware:
        # The local rules and their policy callbacks (the hub's auth-check: test_authority.py).
        merged = {
            **OPTIONS,
            "policy": AccessPolicy(visibility=visibility),
            "authority": "local",
            **options,
        }
        if "source" not in merged and "hub_url" not in merged:
            merged.setdefault("authenticator", authenticator)
        return HFAuthWSGIMiddleware(app, **merged)

    return make


@pytest.fixture
def client(make_middleware):
    return Client(make_middleware())


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str, user: str = "hf_user") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def test_no_token_gets_challenge(client):
    response = client.get("/whoami")
    assert response.status_code == 401
    assert response.headers.getlist("WWW-Authenticate") == [
        'Bearer realm="hfauth-mw"',
        'Basic realm="hfauth-mw"',
    ]
    assert response.headers["Cache-Control"] == "no-store"
    assert response.headers["Content-Type"] == "application/json"
    assert response.json == {
        "error": "unauthorized",
        "error_description": "Authentication required",
    }
    assert int(response.headers["Content-Length"]) == len(response.data)


@pytest.mark.parametrize(
    ("who", "method", "path", "status", "error"),
    [
        *ADAPTER_ACCESS_ROWS,
        pytest.param("fine", "POST", "/v1/models/acme/sentiment/infer", 200, None, id="fine"),
        pytest.param(
            "fine", "POST", "/v1/models/acme/other/infer", 403, "insufficient_scope", id="unlisted"
        ),
        pytest.param(
            "reader", "POST", "/v1/models/acme/public-demo/infer", 200, None, id="public-repo"
        ),
        pytest.param(
            "reader", "DELETE", "/anything", 403, "insufficient_scope", id="method-policy"
        ),
        pytest.param("reader", "GET", "/anything", 200, None, id="method-policy-get"),
    ],
)
def test_access_rules_enforced(client, tokens, who, method, path, status, error):
    response = client.open(path, method=method, headers=bearer(tokens[who]))
    assert response.status_code == status, response.data
    if error:
        assert response.json["error"] == error
        challenge = response.headers["WWW-Authenticate"]
        assert f'error="{error}"' in challenge
        assert f'scope="{response.json["scope"]}"' in challenge


def test_basic_password_is_the_token(client, tokens):
    response = client.put("/v1/models/acme/sentiment", headers=basic(tokens["writer"]))
    assert response.status_code == 200
    assert response.json["scheme"] == "basic"


def test_made_up_token_is_invalid(client):
    response = client.get("/whoami", headers=bearer("hf_" + "Z" * 34))
    assert response.status_code == 401
    assert response.json["error"] == "invalid_token"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Token abc", id="unknown-scheme"),
        pytest.param("Basic %%%", id="bad-base64"),
        pytest.param("Bearer a,Bearer b", id="two-headers-joined-by-server"),
        pytest.param("Bearer " + "a" * 9000, id="oversized"),
    ],
)
def test_malformed_credentials_are_400(client, authorization):
    response = client.get("/whoami", headers={"Authorization": authorization})
    assert response.status_code == 400
    assert response.json["error"] == "invalid_request"
    assert 'error="invalid_request"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [
        pytest.param({"status": 503, "headers": {"Retry-After": "12"}}, "12", id="hub-503"),
        pytest.param(
            {"status": 429, "headers": {"RateLimit": '"api";r=0;t=60'}}, "60", id="hub-429"
        ),
    ],
)
def test_hub_failure_is_503_with_retry_after(client, hub_emulator, tokens, fault, retry_after):
    hub_emulator.fail_next(fault["status"], headers=fault["headers"])
    response = client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.status_code == 503
    assert response.headers["Retry-After"] == retry_after
    assert response.json["error"] == "temporarily_unavailable"
    assert "WWW-Authenticate" not in response.headers


def test_hub_stopped_is_503(client, hub_emulator, tokens):
    hub_emulator.stop()
    response = client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/health", 200, id="exact"),
        pytest.param("/docs/intro", 200, id="prefix"),
        pytest.param("/health/", 401, id="exact-is-exact"),
        pytest.param("/docs/../whoami", 401, id="dot-dot-never-public"),
        pytest.param("/docs//x", 401, id="double-slash-never-public"),
    ],
)
def test_public_paths(client, path, status):
    assert client.get(path).status_code == status


def test_principal_in_namespaced_environ_keys(make_middleware, tokens):
    seen = {}

    def app(environ, start_response):
        seen.update(environ)
        start_response("204 No Content", [])
        return []

    Client(make_middleware(app)).get("/whoami", headers=bearer(tokens["writer"]))
    assert isinstance(seen["hfauth"], RequestAuth)
    assert seen["hfauth.principal"].name == "alice"
    assert get_request_auth(seen) is seen["hfauth"]


def test_spoofed_environ_keys_are_removed(make_middleware):
    forged = RequestAuth(ANONYMOUS, AccessPolicy(), "bearer")
    inner = make_middleware()

    def outer(environ, start_response):
        environ["hfauth"] = forged
        environ["hfauth.principal"] = "mallory"
        return inner(environ, start_response)

    response = Client(outer).get("/health")
    assert response.json["user"] is None
    assert response.json["scheme"] is None


@pytest.mark.parametrize(
    ("path", "cache_control"),
    [
        pytest.param("/whoami", "private", id="added"),
        pytest.param("/cached", "max-age=60", id="app-choice-kept"),
    ],
)
def test_authenticated_responses_are_private(client, tokens, path, cache_control):
    response = client.get(path, headers=bearer(tokens["reader"]))
    assert response.headers["Cache-Control"] == cache_control
    assert "Authorization" in response.headers["Vary"]


def test_public_responses_are_left_alone(client):
    response = client.get("/health")
    assert "Vary" not in response.headers
    assert "Cache-Control" not in response.headers


def test_script_name_aware(make_middleware, tokens):
    """Mounted at /api: rules and public paths are written as the app's own paths."""

    def not_found(environ, start_response):
        start_response("404 Not Found", [])
        return []

    client = Client(DispatcherMiddleware(not_found, {"/api": make_middleware()}))
    health = client.get("/api/health")
    assert health.status_code == 200
    assert health.json["script_name"] == "/api"
    denied = client.put("/api/v1/models/acme/sentiment", headers=bearer(tokens["reader"]))
    assert denied.status_code == 403
    allowed = client.put("/api/v1/models/acme/sentiment", headers=bearer(tokens["writer"]))
    assert allowed.json["path_info"] == "/v1/models/acme/sentiment"


def test_anonymous_mode(make_middleware):
    client = Client(make_middleware(allow_anonymous=True))
    anonymous = client.get("/whoami")
    assert anonymous.status_code == 200
    assert anonymous.json["scheme"] is None
    assert "Vary" not in anonymous.headers
    assert client.post("/v1/models/acme/public-demo/infer").status_code == 200
    private = client.post("/v1/models/acme/sentiment/infer")
    assert private.status_code == 401
    assert "WWW-Authenticate" in private.headers
    assert client.get("/whoami", headers=bearer("hf_" + "Q" * 34)).status_code == 401


def test_query_param_opt_in(make_middleware, tokens):
    client = Client(make_middleware(query_param="access_token"))
    assert client.get(f"/whoami?access_token={tokens['reader']}").status_code == 200
    both = client.get(f"/whoami?access_token={tokens['reader']}", headers=bearer(tokens["reader"]))
    assert both.status_code == 400
    default = Client(make_middleware())
    assert default.get(f"/whoami?access_token={tokens['reader']}").status_code == 401


def test_head_refusal_has_no_body(client):
    response = client.head("/whoami")
    assert response.status_code == 401
    assert response.data == b""


@pytest.mark.parametrize(
    ("method", "path", "who"),
    [
        pytest.param("GET", "/whoami", None, id="no-token"),
        pytest.param("GET", "/whoami", "made-up", id="invalid"),
        pytest.param("PUT", "/v1/models/acme/sentiment", "reader", id="forbidden"),
        pytest.param("GET", "/whoami", "malformed", id="malformed"),
        pytest.param("GET", "/whoami", "down", id="hub-down"),
    ],
)
def test_same_answers_as_asgi(
    make_middleware, authenticator, hub_emulator, clock, tokens, method, path, who
):
    """The WSGI and ASGI adapters refuse with the same status, headers and body."""
    headers = {
        None: {},
        "made-up": bearer("hf_" + "Y" * 34),
        "reader": bearer(tokens["reader"]),
        "malformed": {"Authorization": "Bearer"},
        "down": bearer(tokens["writer"]),
    }[who]
    starlette = Starlette(routes=[Route("/{path:path}", lambda r: PlainTextResponse("ok"))])
    starlette.add_middleware(
        HFAuthMiddleware,
        authenticator=authenticator,
        policy=AccessPolicy(visibility=visibility),
        authority="local",
        **OPTIONS,
    )
    names = ("www-authenticate", "retry-after", "cache-control", "content-type")
    answers = []
    if who == "down":
        hub_emulator.fail_next(503, headers={"Retry-After": "7"}, times=2)
    asgi = TestClient(starlette).request(method, path, headers=headers)
    answers.append((asgi.status_code, {n: asgi.headers.get_list(n) for n in names}, asgi.json()))
    own = Authenticator(  # its own breaker: the ASGI call's 503 must not open the WSGI one's
        HubWhoamiSource(hub_emulator.url), cache=TokenCache(timer=clock, clock=clock)
    )
    wsgi = Client(make_middleware(authenticator=own)).open(path, method=method, headers=headers)
    answers.append((wsgi.status_code, {n: wsgi.headers.getlist(n) for n in names}, wsgi.json))
    assert answers[0] == answers[1]
    assert answers[0][0] >= 400


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"hub_url": "https://a.example", "source": object()}, id="two-sources"),
        pytest.param({"realm": 'a"b'}, id="quote-in-realm"),
        pytest.param({"public_paths": ["health"]}, id="relative-public-path"),
        pytest.param({"rules": ["POST /x"]}, id="rule-not-built"),
        pytest.param({"hub_url": "http://hub.example"}, id="plain-http"),
    ],
)
def test_bad_options_fail_at_startup(options):
    with pytest.raises(ConfigurationError):
        HFAuthWSGIMiddleware(wsgi_app, **options)


def test_repr_shows_no_token(make_middleware, tokens):
    middleware = make_middleware()
    Client(middleware).get("/whoami", headers=bearer(tokens["writer"]))
    assert tokens["writer"] not in repr(middleware)
    assert tokens["writer"] not in repr(middleware.authenticator.cache)


# --- a real threaded server ------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: object) -> None:
        return


@pytest.fixture
def serve():
    """Serve a WSGI app on 127.0.0.1 with werkzeug's threaded server; yields its URL."""
    running = []

    def start(app) -> str:
        server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=_QuietHandler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        running.append((server, thread))
        return f"http://127.0.0.1:{server.server_port}"

    yield start
    for server, thread in running:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("status", "line"),
    [
        pytest.param(429, "429 Too Many Requests", id="named"),
        pytest.param(499, "499 Refused", id="unnamed"),
    ],
)
def test_an_error_format_of_ones_own_may_pick_any_status(make_middleware, status, line):
    from dataclasses import replace

    lines = []

    def start_response(status_line, headers, exc_info=None):
        lines.append(status_line)

    middleware = make_middleware(
        error_format=lambda error, response: replace(response, status=status)
    )
    middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/x", "wsgi.input": None}, start_response)
    assert lines == [line]


def _checks_then_answers(environ, start_response):
    environ["hfauth"].require("model:acme/sentiment", "write")
    start_response("200 OK", [("content-type", "text/plain")])
    return [b"written"]


def _answers_then_checks(environ, start_response):
    start_response("200 OK", [("content-type", "text/plain")])
    environ["hfauth"].require("model:acme/sentiment", "write")
    return [b"written"]


def _checks_inside_the_body(environ, start_response):
    start_response("200 OK", [("content-type", "text/plain")])
    yield b"part "
    environ["hfauth"].require("model:acme/sentiment", "write")
    yield b"written"


@pytest.mark.parametrize(
    ("app", "reader_status"),
    [
        pytest.param(_checks_then_answers, 403, id="raised-before-start-response"),
        pytest.param(_answers_then_checks, 403, id="raised-after-start-response"),
        pytest.param(_checks_inside_the_body, None, id="raised-inside-the-body"),
    ],
)
def test_a_denial_the_app_raises_is_answered_until_its_body_goes_out(
    serve, make_middleware, tokens, app, reader_status
):
    """Over werkzeug's real server, as the ASGI middleware answers it: the RFC
    6750 403, while the app has not returned its body; after that, too late."""
    url = serve(make_middleware(app))
    written = httpx.get(url + "/", headers=bearer(tokens["writer"]))
    assert (written.status_code, written.text) == (
        200,
        "part written" if reader_status is None else "written",
    )
    if reader_status is None:
        with pytest.raises(httpx.RemoteProtocolError):  # the half-sent answer is cut off
            httpx.get(url + "/", headers=bearer(tokens["reader"]))
        return
    denied = httpx.get(url + "/", headers=bearer(tokens["reader"]))
    assert denied.status_code == reader_status
    assert 'error="insufficient_scope"' in denied.headers["www-authenticate"]


def test_threaded_cold_token_makes_one_upstream_call(serve, make_middleware, hub_emulator, tokens):
    middleware = make_middleware()
    arrived = threading.Condition()
    count = 0

    def counting(environ, start_response):
        nonlocal count
        with arrived:
            count += 1
            arrived.notify_all()
        return middleware(environ, start_response)

    url = serve(counting)
    hub_emulator.delay = 30  # the one upstream call is held until released below
    limits = httpx.Limits(max_connections=60)
    with (
        httpx.Client(base_url=url, timeout=20, limits=limits) as http,
        ThreadPoolExecutor(max_workers=50) as pool,
    ):
        futures = [
            pool.submit(http.get, "/whoami", headers=bearer(tokens["writer"])) for _ in range(50)
        ]
        with arrived:
            assert arrived.wait_for(lambda: count == 50, timeout=10)
        assert hub_emulator.wait_for_held(1)
        hub_emulator.release_held()
        responses = [future.result(timeout=20) for future in futures]
    assert [response.status_code for response in responses] == [200] * 50
    assert {response.json()["user"] for response in responses} == {"alice"}
    assert hub_emulator.whoami_calls == 1
    assert middleware.authenticator.stats()["upstream_calls"] == 1


def test_slow_token_does_not_delay_other_tokens(serve, make_middleware, hub_emulator, tokens):
    url = serve(make_middleware())
    with (
        httpx.Client(base_url=url, timeout=10) as http,
        ThreadPoolExecutor(max_workers=32) as pool,
    ):
        assert http.get("/whoami", headers=bearer(tokens["writer"])).status_code == 200  # cached
        hub_emulator.delay_token(tokens["reader"], 30)
        slow = pool.submit(http.get, "/whoami", headers=bearer(tokens["reader"]))
        assert hub_emulator.wait_for_held(1)

        fast = [
            pool.submit(http.get, "/whoami", headers=bearer(tokens[who]))
            for who in ["writer"] * 20 + ["other"]  # cached, and one cold token
        ]
        answers = [future.result(timeout=10) for future in fast]
        assert [answer.status_code for answer in answers] == [200] * 21
        assert not slow.done()
        assert hub_emulator.held == 1

        hub_emulator.release_held()
        assert slow.result(timeout=10).json()["user"] == "bob"
    assert hub_emulator.whoami_calls == 3


def test_same_options_as_asgi():
    """GuardOptions lists every Guard option (a new core option cannot be forgotten),
    and both middlewares are declared with the one shared option set."""
    guard = set(inspect.signature(Guard.__init__).parameters) - {"self", "authenticator"}
    assert guard == GuardOptions.__optional_keys__
    for middleware in (HFAuthMiddleware, HFAuthWSGIMiddleware):
        parameters = inspect.signature(middleware.__init__).parameters
        assert set(parameters) - {"self", "app"} == {"private_responses", "options"}
        assert "Unpack[AdapterOptions]" in str(parameters["options"].annotation)
    assert MiddlewareOptions.__optional_keys__ == GuardOptions.__optional_keys__ | {
        "hub_url",
        "source",
        "authenticator",
        "cache",
        "private_responses",
    }


def test_two_authorization_headers_are_named_as_such(client, tokens):
    # The WSGI server joins the two header lines into one value, with a comma.
    response = client.get(
        "/whoami",
        headers=[("Authorization", bearer(tokens["reader"])["Authorization"])] * 2,
    )
    assert response.status_code == 400
    assert "sent it twice" in response.json["error_description"]
    assert tokens["reader"] not in response.get_data(as_text=True)


@pytest.mark.parametrize(
    ("method", "path_info", "status"),
    [
        pytest.param("POST", "/v1/models/acme/other/infer", 403, id="plain"),
        # Werkzeug's router drops leading slashes: //v1/... is served as /v1/...
        # (gunicorn passes "//" as sent; servers decode %2F into "/").
        pytest.param("POST", "//v1/models/acme/other/infer", 403, id="leading-slashes"),
        pytest.param("PUT", "///v1/models/acme/other", 403, id="three-slashes-write"),
        pytest.param("POST", "/v1/models/acme/other/infer\n", 400, id="trailing-newline"),
        # strict_slashes=False: Werkzeug serves /x/ as /x.
        pytest.param("PUT", "/v1/models/acme/other/", 403, id="trailing-slash-write"),
        pytest.param("POST", "/v1/models/acme/other/infer/", 403, id="trailing-slash-read"),
        pytest.param("POST", "/v1/models/acme/sentiment/infer", 200, id="allowed"),
        pytest.param("POST", "/v1/models/acme/sentiment/infer/", 200, id="allowed-slash"),
    ],
)
def test_rules_see_the_path_flask_serves(make_middleware, tokens, method, path_info, status):
    """Rules on a Flask app whose routes have no decorators of their own. PATH_INFO is
    set as a server sets it (the test client would read a leading "//" as a host)."""
    from flask import Flask

    app = Flask(__name__)
    app.url_map.strict_slashes = False
    app.add_url_rule(
        "/v1/models/<owner>/<name>/infer", "infer", lambda owner, name: "served", methods=["POST"]
    )
    app.add_url_rule("/v1/models/<owner>/<name>", "put", lambda owner, name: "put", methods=["PUT"])
    app.wsgi_app = make_middleware(app.wsgi_app, method_policy=False)  # type: ignore[method-assign]

    response = app.test_client().open(
        "/",
        method=method,
        headers=bearer(tokens["fine"]),
        environ_overrides={"PATH_INFO": path_info},
    )

    assert response.status_code == status, response.data


def test_public_body_is_closed_and_lists_and_files_pass_as_they_are(make_middleware):
    """Public bodies are watched (to catch a caller read inside a stream) without
    losing what WSGI servers rely on: close(), and their wsgi.file_wrapper."""

    class FileWrapper:
        def __init__(self, data: bytes) -> None:
            self.data = data

        def __iter__(self):
            return iter([self.data])

    closed: list[bool] = []

    class Body:
        def __iter__(self):
            return iter([b"ok"])

        def close(self) -> None:
            closed.append(True)

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        if environ["PATH_INFO"] == "/health":
            return Body()
        return environ["wsgi.file_wrapper"](b"file")

    middleware = make_middleware(app)
    listed = make_middleware(lambda environ, start_response: [b"one item"])
    ignore = lambda status, headers, exc_info=None: None  # noqa: E731
    health = {"REQUEST_METHOD": "GET", "PATH_INFO": "/health"}
    assert listed(dict(health), ignore) == [b"one item"]  # a list stays a list: len() works
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/health", "wsgi.file_wrapper": FileWrapper}
    body = middleware(dict(environ), lambda status, headers, exc_info=None: None)
    assert b"".join(body) == b"ok"
    body.close()
    assert closed == [True]
    file_body = middleware(
        {**environ, "PATH_INFO": "/docs/manual.pdf"}, lambda status, headers, exc_info=None: None
    )
    assert isinstance(file_body, FileWrapper)


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({}, 401, id="no-token"),
        pytest.param({"Authorization": "Bearer not a token"}, 400, id="malformed"),
    ],
)
def test_a_request_refused_whatever_its_body_says_is_refused_unread(
    make_middleware, headers, status
):
    """A client without a token used to hold a worker while its body (up to
    1 MiB) trickled in, only to get 401: it is answered before any is read."""
    from hfauth_mw import openai_rules

    class NeverRead:
        def read(self, *args):
            raise AssertionError("the body was read")

        readline = read

    middleware = make_middleware(rules=openai_rules())
    response = Client(middleware).post(
        "/v1/chat/completions",
        headers={**headers, "Content-Type": "application/json"},
        environ_overrides={"wsgi.input": NeverRead(), "CONTENT_LENGTH": "900000"},
    )
    assert response.status_code == status
