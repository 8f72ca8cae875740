"""Django REST framework: the authentication and permission classes in real DRF views,
through DRF's APIClient and a real server on 127.0.0.1, against the hub emulator.
The URL conf is this module."""

import base64
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import ClassVar
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import django
import httpx
import pytest
from django.conf import settings

if not settings.configured:  # as tests/test_django.py, whichever is imported first
    settings.configure(
        DEBUG=False,
        SECRET_KEY="hfauth-mw tests, not a secret",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=sys.modules[__name__],
        MIDDLEWARE=[],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,
        HFAUTH={"HUB_URL": "https://huggingface.co"},
    )
    django.setup()

# DRF reads the settings when imported: after settings.configure().
from django.test import override_settings
from django.urls import path
from rest_framework.authentication import (
    BaseAuthentication,
    SessionAuthentication,
)
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response
from rest_framework.test import APIClient
from rest_framework.views import APIView

from hfauth_mw import (
    AccessPolicy,
    Authenticator,
    ConfigurationError,
    HubWhoamiSource,
    MissingCredentials,
    Repo,
    TokenCache,
    Visibility,
)
from hfauth_mw.django import require_repo
from hfauth_mw.drf import (
    HasRepoAccess,
    HasTokenPermission,
    HubScopedRateThrottle,
    HubTokenAuthentication,
    HubUserRateThrottle,
    IsHubAuthenticated,
)

PUBLIC = {Repo.parse("model:acme/public-demo"): Visibility.PUBLIC}


# --- the views ------------------------------------------------------------------------------


class NextInLine(BaseAuthentication):
    """An authentication class after ours: records the requests handed on to it."""

    seen: ClassVar[list[str]] = []

    def authenticate(self, request):
        self.seen.append(request.META.get("HTTP_AUTHORIZATION", ""))
        return None


class HubAPIView(APIView):
    """The documented order, per view: DRF binds DEFAULT_AUTHENTICATION_CLASSES when
    a view class is made (here at import, before the tests' settings); the example
    project and tests/test_quickstarts.py use the setting itself."""

    authentication_classes = (HubTokenAuthentication, SessionAuthentication, NextInLine)


def caller(request) -> dict[str, object]:
    user = request.user
    return {
        "user": user.username if user is not None and user.is_authenticated else None,
        "auth": type(request.auth).__name__,
    }


class Infer(HubAPIView):
    permission_classes = (HasRepoAccess("read"),)

    def post(self, request, owner, name):
        return Response({"model": f"{owner}/{name}", **caller(request)})


class Upload(HubAPIView):
    permission_classes = (HasRepoAccess("write"),)

    def put(self, request, owner, name):
        return Response({"model": f"{owner}/{name}", "revision": 1})


class DrfIsAuthenticated(HubAPIView):
    """DRF's own permission: a valid token must count as authenticated."""

    permission_classes = (IsAuthenticated,)

    def get(self, request):
        return Response(caller(request))


class HubOnly(HubAPIView):
    permission_classes = (IsHubAuthenticated,)

    def get(self, request):
        return Response(caller(request))


class Optional(HubAPIView):
    permission_classes = ()

    def get(self, request):
        return Response(caller(request))


class Pinned(HubAPIView):
    permission_classes = (HasRepoAccess("read", lambda request, view: "dataset:acme/corpus"),)

    def get(self, request):
        return Response({"ok": True})


class Composed(HubAPIView):
    permission_classes = (IsHubAuthenticated & HasRepoAccess("read", repo_type="dataset"),)

    def get(self, request, owner, name):
        return Response({"dataset": f"{owner}/{name}"})


class Serverless(HubAPIView):
    permission_classes = (HasTokenPermission("inference.endpoints.infer.write"),)

    def post(self, request):
        return Response({"ok": True})


class DecoratedMethods(HubAPIView):
    """The Django decorators on DRF view methods (issue 19: a 500 before)."""

    permission_classes = ()

    @require_repo("read")
    def get(self, request, owner, name):
        return Response({"by": request.principal.name})

    @require_repo("write")
    def put(self, request, owner, name):
        return Response({"by": request.principal.name})


class RequireInView(HubAPIView):
    """The view checks the repository itself (request.auth is the RequestAuth)."""

    permission_classes = ()

    def put(self, request):
        if request.auth is None:
            raise MissingCredentials()
        request.auth.require("model:acme/sentiment", "write")
        return Response(caller(request))


class ThreeAMinute(HubUserRateThrottle):
    rate = "3/min"


class ThreeAMinuteScoped(HubScopedRateThrottle):
    THROTTLE_RATES: ClassVar[dict[str, str]] = {"infer": "3/min"}


class UserThrottled(HubAPIView):
    permission_classes = ()
    throttle_classes = (ThreeAMinute,)

    def get(self, request):
        return Response(caller(request))


class ScopeThrottled(UserThrottled):
    throttle_classes = (ThreeAMinuteScoped,)
    throttle_scope = "infer"


urlpatterns = [
    path("v1/throttled/user", UserThrottled.as_view()),
    path("v1/throttled/scoped", ScopeThrottled.as_view()),
    path("v1/require-in-view", RequireInView.as_view()),
    path("v1/models/<str:owner>/<str:name>/infer", Infer.as_view()),
    path("v1/models/<str:owner>/<str:name>", Upload.as_view()),
    path("v1/whoami", DrfIsAuthenticated.as_view()),
    path("v1/hub-only", HubOnly.as_view()),
    path("v1/optional", Optional.as_view()),
    path("v1/pinned", Pinned.as_view()),
    path("v1/datasets/<str:owner>/<str:name>", Composed.as_view()),
    path("v1/serverless", Serverless.as_view()),
    path("cbv/drf/<str:owner>/<str:name>", DecoratedMethods.as_view()),
]


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def configure(hub_emulator, clock):
    """Settings for one test: HFAUTH options, the DRF settings, the middleware."""
    applied = []

    def apply(middleware: bool = False, handler: bool = True, cache_ttl: float = 60, **options):
        cache = TokenCache(timer=clock, clock=clock, ttl=cache_ttl, negative_ttl=min(cache_ttl, 10))
        hfauth = {
            "AUTHENTICATOR": Authenticator(HubWhoamiSource(hub_emulator.url), cache=cache),
            "POLICY": AccessPolicy(visibility=lambda r: PUBLIC.get(r, Visibility.PRIVATE)),
            "METHOD_POLICY": False,
            **options,
        }
        rest_framework = {
            "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
            "UNAUTHENTICATED_USER": None,  # no django.contrib.auth in this project
        }
        if handler:
            rest_framework["EXCEPTION_HANDLER"] = "hfauth_mw.drf.exception_handler"
        override = override_settings(
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["testserver", "127.0.0.1"],
            HFAUTH=hfauth,
            REST_FRAMEWORK=rest_framework,
            MIDDLEWARE=["hfauth_mw.django.HFAuthMiddleware"] if middleware else [],
        )
        override.enable()
        applied.append(override)
        return hfauth

    yield apply
    for override in reversed(applied):
        override.disable()


@pytest.fixture(params=[pytest.param(False, id="alone"), pytest.param(True, id="with-middleware")])
def client(request, configure):
    """DRF alone, or behind the Django middleware, which checks tokens sent to
    /v1/* (an optional path for it) and leaves the rest to DRF."""
    if request.param:
        configure(middleware=True, OPTIONAL_PATHS=["/v1/*"], PROTECTED_PATHS=["/private/*"])
    else:
        configure()
    client = APIClient()
    client.middleware = request.param
    return client


def bearer(token: str) -> dict[str, str]:
    return {"HTTP_AUTHORIZATION": f"Bearer {token}"}


def basic(token: str, user: str = "hf_user") -> dict[str, str]:
    encoded = base64.b64encode(f"{user}:{token}".encode()).decode()
    return {"HTTP_AUTHORIZATION": f"Basic {encoded}"}


MADE_UP = "hf_" + "Z" * 34


# --- the table ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "method", "path", "status", "detail"),
    [
        pytest.param(
            None,
            "POST",
            "/v1/models/acme/sentiment/infer",
            401,
            "read denied: authentication required",
            id="no-token",
        ),
        pytest.param("bad", "POST", "/v1/models/acme/sentiment/infer", 401, None, id="bad-token"),
        pytest.param("reader", "POST", "/v1/models/acme/sentiment/infer", 200, None, id="read"),
        pytest.param(
            "reader", "PUT", "/v1/models/acme/sentiment", 403, "write denied", id="read-put"
        ),
        pytest.param("writer", "PUT", "/v1/models/acme/sentiment", 200, None, id="write-put"),
        pytest.param(
            "writer", "PUT", "/v1/models/other/x", 403, "write denied", id="write-foreign"
        ),
        pytest.param(
            "fine", "POST", "/v1/models/acme/sentiment/infer", 200, None, id="fine-listed"
        ),
        pytest.param(
            "fine", "POST", "/v1/models/acme/other/infer", 403, "read denied", id="fine-unlisted"
        ),
        pytest.param(
            None, "POST", "/v1/models/acme/public-demo/infer", 200, None, id="anonymous-public-repo"
        ),
        pytest.param("reader", "GET", "/v1/whoami", 200, None, id="drf-is-authenticated"),
        pytest.param(None, "GET", "/v1/whoami", 401, None, id="drf-is-authenticated-no-token"),
        pytest.param("reader", "GET", "/v1/hub-only", 200, None, id="hub-authenticated"),
        pytest.param(
            None,
            "GET",
            "/v1/hub-only",
            401,
            "Authentication required",
            id="hub-authenticated-no-token",
        ),
        pytest.param("reader", "GET", "/v1/pinned", 200, None, id="repo-callable"),
        pytest.param("fine", "GET", "/v1/pinned", 403, "read denied", id="repo-callable-denied"),
        pytest.param("reader", "GET", "/v1/datasets/acme/corpus", 200, None, id="composed"),
        pytest.param(None, "GET", "/v1/datasets/acme/corpus", 401, None, id="composed-no-token"),
        pytest.param("serverless", "POST", "/v1/serverless", 200, None, id="permission"),
        pytest.param("reader", "POST", "/v1/serverless", 403, "permission", id="no-permission"),
        pytest.param(None, "GET", "/v1/optional", 200, None, id="optional-anonymous"),
        pytest.param("reader", "GET", "/v1/optional", 200, None, id="optional-token"),
        pytest.param("bad", "GET", "/v1/optional", 401, None, id="optional-bad-token"),
    ],
)
def test_access_table(client, tokens, who, method, path, status, detail):
    token = MADE_UP if who == "bad" else tokens.get(who)
    headers = bearer(token) if token else {}
    response = client.generic(method, path, **headers)
    assert response.status_code == status, response.content
    body = response.json()
    if status >= 400 and who == "bad" and client.middleware:
        # The middleware refused the token before DRF ran: its own answer.
        assert body["error"] == "invalid_token"
    elif status >= 400:
        assert set(body) == {"detail"}  # DRF's shape
        if detail:
            assert detail in body["detail"]
        if path != "/v1/whoami":  # DRF's own IsAuthenticated answers without them
            assert response["X-Error-Message"]
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Bearer ")
    if status == 403:
        assert 'error="insufficient_scope"' in response["WWW-Authenticate"]
        assert response["X-Error-Code"] == "insufficient_scope"


@pytest.mark.parametrize(
    ("who", "expected"),
    [
        pytest.param("reader", {"user": "bob", "auth": "RequestAuth"}, id="token"),
        pytest.param(None, {"user": None, "auth": "NoneType"}, id="no-token"),
    ],
)
def test_request_user_and_auth(client, tokens, who, expected):
    headers = bearer(tokens[who]) if who else {}
    assert client.get("/v1/optional", **headers).json() == expected


@pytest.mark.parametrize(
    ("who", "status", "challenge"),
    [
        pytest.param("writer", 200, None, id="may-write"),
        pytest.param(
            "reader",
            403,
            'Bearer realm="hfauth-mw", error="insufficient_scope", scope="repo.write", '
            'error_description="write denied: ',
            id="may-not-write",
        ),
        pytest.param(None, 401, 'Bearer realm="hfauth-mw", Basic realm="hfauth-mw"', id="no-token"),
    ],
)
def test_a_core_error_raised_in_the_view_is_answered_in_drf_s_shape(
    client, tokens, who, status, challenge
):
    """A 500 before without the Django middleware (its RFC 6750 JSON with it)."""
    headers = bearer(tokens[who]) if who else {}
    response = client.put("/v1/require-in-view", **headers)
    assert response.status_code == status, response.content
    if status == 200:
        assert response.json()["user"] == "alice"
        return
    assert set(response.json()) == {"detail"}
    assert response["WWW-Authenticate"].startswith(challenge)
    assert response["X-Error-Code"] == ("insufficient_scope" if status == 403 else "unauthorized")
    assert response["Cache-Control"] == "no-store"


def test_no_token_challenge_lists_both_schemes(client):
    response = client.get("/v1/hub-only")
    assert response["WWW-Authenticate"] == 'Bearer realm="hfauth-mw", Basic realm="hfauth-mw"'
    assert response.json() == {"detail": "Authentication required"}
    assert response["X-Error-Code"] == "unauthorized"


def test_bad_token_challenge_says_invalid_token(client):
    response = client.get("/v1/hub-only", **bearer(MADE_UP))
    assert response.status_code == 401
    assert 'error="invalid_token"' in response["WWW-Authenticate"]
    assert response["X-Error-Code"] == "invalid_token"
    assert response["Cache-Control"] == "no-store"


def test_malformed_credentials_are_400(configure):
    configure()
    response = APIClient().get("/v1/hub-only", HTTP_AUTHORIZATION="Token abc")
    assert response.status_code == 400
    assert response.json() == {"detail": "Unsupported authorization scheme; use Bearer or Basic"}
    assert 'error="invalid_request"' in response["WWW-Authenticate"]


@pytest.mark.parametrize(
    ("who", "padding", "status"),
    [
        pytest.param("reader", 0, 200, id="token-small-body"),
        pytest.param("reader", 2000, 413, id="token-body-over-the-cap"),
        pytest.param(None, 2000, 401, id="no-token-body-over-the-cap"),
    ],
)
def test_a_body_rule_reads_the_body_only_for_credentials(configure, tokens, who, padding, status):
    """A body over MAX_BODY_BYTES is 413 for a caller with a token, never a 500; a
    request without one is not read at all (DRF's permission answers it)."""
    from hfauth_mw import from_body, require_read

    path = "/v1/models/acme/sentiment/infer"
    configure(RULES=[require_read(f"POST {path}", repo=from_body("model"))], MAX_BODY_BYTES=1024)
    body = json.dumps({"model": "acme/sentiment", "pad": "x" * padding})
    headers = bearer(tokens[who]) if who else {}
    response = APIClient().post(path, data=body, content_type="application/json", **headers)
    assert response.status_code == status


def test_without_the_handler_drf_default_shape_and_challenge(configure, tokens):
    configure(handler=False)
    client = APIClient()
    refused = client.post("/v1/models/acme/sentiment/infer")
    assert refused.status_code == 401
    assert refused["WWW-Authenticate"].startswith('Bearer realm="hfauth-mw"')
    assert "X-Error-Code" not in refused
    denied = client.put("/v1/models/acme/sentiment", **bearer(tokens["reader"]))
    assert denied.status_code == 403
    assert denied.json()["detail"].startswith("write denied")


@pytest.mark.parametrize(
    "down",
    [
        pytest.param(lambda hub: hub.fail_next(503, headers={"Retry-After": "9"}), id="503"),
        pytest.param(lambda hub: hub.stop(), id="stopped"),
    ],
)
def test_hub_down_is_503_with_retry_after(client, hub_emulator, tokens, down):
    down(hub_emulator)
    response = client.get("/v1/hub-only", **bearer(tokens["reader"]))
    assert response.status_code == 503
    assert int(response["Retry-After"]) >= 1
    assert response["X-Error-Code"] == "temporarily_unavailable"
    # The words every adapter's 503 begins with, in DRF's shape too.
    body = response.json()  # DRF's shape, or the Django middleware's RFC 6750 one
    detail = body.get("detail", body.get("error_description"))
    assert detail.startswith("The access token cannot be checked right now: ")
    assert response["X-Error-Message"] == detail


def test_basic_with_the_token_as_password(client, tokens):
    response = client.get("/v1/hub-only", **basic(tokens["writer"]))
    assert response.status_code == 200
    assert response.json()["user"] == "alice"


def test_basic_with_a_password_is_left_to_the_next_class(configure):
    """A Django user's password is not a token: DRF's BasicAuthentication's turn."""
    configure()
    NextInLine.seen.clear()
    response = APIClient().get("/v1/optional", **basic("s3cret", user="django-user"))
    assert response.status_code == 200
    assert response.json()["user"] is None
    assert NextInLine.seen == [basic("s3cret", user="django-user")["HTTP_AUTHORIZATION"]]


def test_a_bad_bearer_token_is_never_handed_on(configure):
    configure()
    NextInLine.seen.clear()
    assert APIClient().get("/v1/optional", **bearer(MADE_UP)).status_code == 401
    assert NextInLine.seen == []


def test_token_answers_are_private(client, tokens):
    response = client.get("/v1/hub-only", **bearer(tokens["reader"]))
    assert response["Cache-Control"] == "private"
    assert "Authorization" in response["Vary"]
    anonymous = client.get("/v1/optional")
    assert "Cache-Control" not in anonymous


@pytest.mark.parametrize(
    ("scheme", "status"),
    [
        pytest.param("bearer", 200, id="bearer-needs-no-csrf-token"),
        pytest.param("basic", 403, id="basic-keeps-the-csrf-check"),
    ],
)
@pytest.mark.parametrize("middleware", [False, True], ids=["alone", "with-middleware"])
def test_csrf_for_basic_only(configure, tokens, middleware, scheme, status):
    configure(middleware=middleware)
    headers = bearer(tokens["reader"]) if scheme == "bearer" else basic(tokens["reader"])
    response = APIClient(enforce_csrf_checks=True).post(
        "/v1/models/acme/sentiment/infer", **headers
    )
    assert response.status_code == status
    if status == 403:
        assert "CSRF" in response.json()["detail"]


def test_with_the_middleware_one_check_per_request(configure, hub_emulator, tokens):
    """The middleware checked the token: the DRF class reuses its answer (no cache)."""
    configure(middleware=True, cache_ttl=0)
    response = APIClient().post("/v1/models/acme/sentiment/infer", **bearer(tokens["reader"]))
    assert response.status_code == 200
    assert response.json()["user"] == "bob"
    assert hub_emulator.whoami_calls == 1


def test_with_the_middleware_an_optional_path(configure, tokens):
    configure(middleware=True, OPTIONAL_PATHS=["/v1/optional"])
    client = APIClient()
    assert client.get("/v1/optional").json() == {"user": None, "auth": "NoneType"}
    assert client.get("/v1/optional", **bearer(tokens["reader"])).json()["user"] == "bob"
    refused = client.get("/v1/optional", **bearer(MADE_UP))
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_token"  # the middleware's own answer


@pytest.mark.parametrize(
    ("who", "method", "path", "status"),
    [
        pytest.param("reader", "GET", "/cbv/drf/acme/sentiment", 200, id="drf-method-read"),
        pytest.param("reader", "PUT", "/cbv/drf/acme/sentiment", 403, id="drf-method-denied"),
        pytest.param(None, "GET", "/cbv/drf/acme/sentiment", 401, id="drf-method-no-token"),
    ],
)
def test_decorators_on_drf_view_methods(configure, tokens, who, method, path, status):
    """A 500 before ('Direct' object has no attribute 'META')."""
    configure()
    headers = bearer(tokens[who]) if who else {}
    response = APIClient().generic(method, path, **headers)
    assert response.status_code == status, response.content
    if status == 200:
        assert response.json()["by"] == "bob"
        assert response["Cache-Control"] == "private"
    else:
        assert response.json()["error"] in ("unauthorized", "insufficient_scope")


def test_has_repo_access_arguments_are_checked():
    with pytest.raises(ConfigurationError):
        HasRepoAccess("admin")
    with pytest.raises(ConfigurationError):
        HasRepoAccess("read", "model:acme/sentiment")  # a callable, not a string


def test_permission_instances_are_what_drf_instantiates():
    permission = HasRepoAccess("read")
    assert permission() is permission
    assert "HasRepoAccess('read'" in repr(permission)


def test_authenticate_header_without_a_refusal(configure):
    configure(ALLOW_BASIC=False)
    from rest_framework.request import Request
    from rest_framework.test import APIRequestFactory

    request = Request(APIRequestFactory().get("/v1/optional"))
    assert HubTokenAuthentication().authenticate_header(request) == 'Bearer realm="hfauth-mw"'


# --- a real server --------------------------------------------------------------------------


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # request lines carry no token,
        pass  # but keep the test output clean


@pytest.fixture
def server(configure):
    from django.core.handlers.wsgi import WSGIHandler

    configure()
    httpd: WSGIServer = make_server("127.0.0.1", 0, WSGIHandler(), handler_class=_QuietHandler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("who", "method", "path", "status"),
    [
        pytest.param(None, "POST", "/v1/models/acme/sentiment/infer", 401, id="no-token"),
        pytest.param("reader", "POST", "/v1/models/acme/sentiment/infer", 200, id="read"),
        pytest.param("reader", "PUT", "/v1/models/acme/sentiment", 403, id="read-put"),
        pytest.param("writer", "PUT", "/v1/models/acme/sentiment", 200, id="write"),
    ],
)
def test_over_a_real_server(server, tokens, who, method, path, status):
    headers = {"Authorization": f"Bearer {tokens[who]}"} if who else {}
    response = httpx.request(method, server + path, headers=headers, timeout=10)
    assert response.status_code == status
    if status == 401:
        assert response.headers.get_list("www-authenticate") == [
            'Bearer realm="hfauth-mw", Basic realm="hfauth-mw"'
        ]
    if status == 200:
        assert response.headers["cache-control"] == "private"


# --- the example project --------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "drf_app"
_EXAMPLE_SCRIPT = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
os.environ["DJANGO_SETTINGS_MODULE"] = "toyapi.settings"
import django
django.setup()
from rest_framework.test import APIClient
client = APIClient(HTTP_HOST="localhost")
answers = []
for token, method, path in json.loads(sys.argv[2]):
    headers = {"HTTP_AUTHORIZATION": f"Bearer {token}"} if token else {}
    response = client.generic(method, path, '{"inputs": "a b"}', "application/json", **headers)
    is_json = response["Content-Type"].startswith("application/json")
    answers.append([response.status_code, json.loads(response.content) if is_json else None])
print(json.dumps(answers))
"""


def test_example_project(hub_emulator, tokens):
    """The example DRF project, in its own process (Django settings are per process)."""
    calls = [
        (None, "GET", "/health", 200),
        (None, "GET", "/", 200),
        (None, "GET", "/api/v1/models", 200),
        ("bad", "GET", "/api/v1/models", 401),
        (None, "POST", "/api/v1/models/acme/sentiment/infer", 401),
        ("reader", "POST", "/api/v1/models/acme/sentiment/infer", 200),
        ("reader", "PUT", "/api/v1/models/acme/sentiment", 403),
        ("writer", "PUT", "/api/v1/models/acme/sentiment", 200),
    ]
    requests = json.dumps(
        [(MADE_UP if who == "bad" else tokens.get(who), m, p) for who, m, p, _ in calls]
    )
    env = {**os.environ, "HFAUTH_HUB_URL": hub_emulator.url}
    env.pop("HFAUTH_STORE", None)
    result = subprocess.run(
        [sys.executable, "-c", _EXAMPLE_SCRIPT, str(EXAMPLE), requests],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    answers = json.loads(result.stdout)
    assert [status for status, _ in answers] == [call[3] for call in calls]
    assert answers[2][1]["user"] is None
    assert answers[5][1]["by"] == "bob"
    assert set(answers[6][1]) == {"detail"}


def test_malformed_credentials_count_as_failures(configure, tokens, clock):
    """Refused before any lookup, but counted by the brute-force guard."""
    from hfauth_mw import FailureLimiter

    configure(LIMITER=FailureLimiter(max_failures=2, timer=clock))
    client = APIClient()
    for _ in range(2):
        assert client.get("/v1/optional", HTTP_AUTHORIZATION="Token x").status_code == 400
    locked = client.get("/v1/optional", **bearer(tokens["reader"]))
    assert locked.status_code == 429
    assert int(locked["Retry-After"]) >= 1
    assert set(locked.json()) == {"detail"}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/v1/throttled/user", id="user-rate"),
        pytest.param("/v1/throttled/scoped", id="scoped-rate"),
    ],
)
def test_throttles_keep_one_bucket_per_hub_account(client, tokens, path):
    """DRF's UserRateThrottle keys on request.user.pk, None for every HubUser:
    alice's three requests used to throttle bob and carol too."""
    from django.core.cache import cache

    cache.clear()
    callers = ["writer", "writer", "writer", "writer", "reader", "fine", None]
    statuses = [
        client.get(path, **(bearer(tokens[who]) if who else {})).status_code for who in callers
    ]
    assert statuses == [200, 200, 200, 429, 200, 200, 200]
