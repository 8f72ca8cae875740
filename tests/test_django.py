"""The Django middleware and decorators in a real Django project configured here,
against the hub emulator over loopback. The URL conf is this module."""

import base64
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import django
import httpx
import pytest
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from django.views import View

from contract import ADAPTER_ACCESS_ROWS
from hfauth_mw import (
    AccessPolicy,
    Authenticator,
    ConfigurationError,
    HubWhoamiSource,
    Repo,
    RequestAuth,
    TokenCache,
    Visibility,
)
from hfauth_mw.django import HFAuthMiddleware, HubUser, require_permission, require_repo

PUBLIC = {Repo.parse("model:acme/public-demo"): Visibility.PUBLIC}

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="hfauth-mw tests, not a secret",
        ALLOWED_HOSTS=["testserver"],
        ROOT_URLCONF=sys.modules[__name__],
        MIDDLEWARE=["hfauth_mw.django.HFAuthMiddleware"],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        LOGGING_CONFIG=None,
        HFAUTH={"HUB_URL": "https://huggingface.co"},
    )
    django.setup()


# --- the toy model server -------------------------------------------------------------------


def health(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.user if hasattr(request, "user") else None
    return JsonResponse(
        {
            "user": request.principal.name,
            "scheme": request.hfauth.scheme,
            "django_user": type(user).__name__ if user is not None else None,
        }
    )


@require_repo("read")
def infer(request: HttpRequest, owner: str, name: str) -> JsonResponse:
    return JsonResponse({"model": f"{owner}/{name}", "by": request.principal.name})


@require_repo("write")
def upload(request: HttpRequest, owner: str, name: str) -> JsonResponse:
    return JsonResponse({"model": f"{owner}/{name}", "revision": 1})


@require_repo("read")
async def async_card(request: HttpRequest, owner: str, name: str) -> JsonResponse:
    return JsonResponse({"model": f"{owner}/{name}", "by": request.principal.name})


@require_permission("inference.endpoints.infer.write")
def serverless(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"ok": True})


@require_repo("read")
def checks_more_in_the_view(request: HttpRequest, owner: str, name: str) -> JsonResponse:
    request.hfauth.require("model:acme/sentiment", "write")  # raises for a read token
    return JsonResponse({"ok": True})


async def site_page(request: HttpRequest) -> JsonResponse:
    """A page of the site: what Django's own user and hfauth-mw's principal are."""
    user = getattr(request, "user", None)
    principal = getattr(request, "principal", None)
    return JsonResponse(
        {
            "principal": principal.name if principal is not None else None,
            "django_user": type(user).__name__ if user is not None else None,
        }
    )


async def async_whoami(request: HttpRequest) -> JsonResponse:
    user = await request.auser()
    return JsonResponse({"user": type(user).__name__, "name": user.get_username()})


def route_check(request: HttpRequest) -> JsonResponse:
    request.hfauth.require("model:acme/sentiment", "write")
    return JsonResponse({"ok": True})


class DjangoMethods(View):
    """A Django class-based view with the decorators on its methods."""

    @require_repo("read")
    def get(self, request: HttpRequest, owner: str, name: str) -> JsonResponse:
        return JsonResponse({"by": request.principal.name})

    @require_repo("write")
    def put(self, request: HttpRequest, owner: str, name: str) -> JsonResponse:
        return JsonResponse({"by": request.principal.name})


@require_repo("write")
class DjangoClass(View):
    """A Django class-based view decorated as a whole: every method needs write."""

    def get(self, request: HttpRequest, owner: str, name: str) -> JsonResponse:
        return JsonResponse({"by": request.principal.name})


@require_repo("read")
class AsyncDjangoClass(View):
    async def get(self, request: HttpRequest, owner: str, name: str) -> JsonResponse:
        return JsonResponse({"by": request.principal.name})


urlpatterns = [
    path("health", health),
    path("whoami", whoami),
    path("v1/models/<str:owner>/<str:name>/infer", infer),
    path("v1/models/<str:owner>/<str:name>", upload),
    path("v1/async/models/<str:owner>/<str:name>", async_card),
    path("public/models/<str:owner>/<str:name>", infer),
    path("v1/serverless", serverless),
    path("route-check", route_check),
    path("v1/checked/<str:owner>/<str:name>", checks_more_in_the_view),
    path("async-whoami", async_whoami),
    path("cbv/django/<str:owner>/<str:name>", DjangoMethods.as_view()),
    path("cbv/class/<str:owner>/<str:name>", DjangoClass.as_view()),
    path("cbv/async/<str:owner>/<str:name>", AsyncDjangoClass.as_view()),
    path("", site_page),
]


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture
def hfauth_settings(hub_emulator, clock):
    """Applies ``HFAUTH`` options for one test (the middleware reloads them)."""
    applied = []

    def apply(**options):
        config = {
            "AUTHENTICATOR": Authenticator(
                HubWhoamiSource(hub_emulator.url), cache=TokenCache(timer=clock, clock=clock)
            ),
            "PUBLIC_PATHS": ["/health", "/public/*"],
            "POLICY": AccessPolicy(visibility=lambda r: PUBLIC.get(r, Visibility.PRIVATE)),
            # The local rules and their policy callbacks (the hub's: test_authority.py).
            "AUTHORITY": "local",
            "METHOD_POLICY": False,  # every view states its needs with a decorator
            **options,
        }
        # The URL conf and middleware too: tests/test_drf.py may have configured
        # Django first in this process, with its own.
        override = override_settings(
            HFAUTH=config,
            ROOT_URLCONF=__name__,
            MIDDLEWARE=["hfauth_mw.django.HFAuthMiddleware"],
            ALLOWED_HOSTS=["testserver"],
        )
        override.enable()
        applied.append(override)
        return config

    yield apply
    for override in reversed(applied):
        override.disable()


@pytest.fixture
def client(hfauth_settings):
    hfauth_settings()
    return Client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"hf_user:{token}".encode()).decode()}


# --- tests ----------------------------------------------------------------------------------


def test_no_token_gets_challenge(client):
    response = client.get("/whoami")
    assert response.status_code == 401
    # One field listing both challenges (a Django response has one header per name).
    assert (
        response.headers["WWW-Authenticate"] == 'Bearer realm="hfauth-mw", Basic realm="hfauth-mw"'
    )
    assert response.headers["Content-Type"] == "application/json"
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json() == {
        "error": "unauthorized",
        "error_description": "Authentication required",
    }


@pytest.mark.parametrize(
    ("who", "method", "path", "status", "error"),
    [
        *ADAPTER_ACCESS_ROWS,
        pytest.param("reader", "GET", "/v1/async/models/acme/x", 200, None, id="async-view"),
        pytest.param(
            "serverless",
            "GET",
            "/v1/async/models/acme/x",
            403,
            "insufficient_scope",
            id="async-denied",
        ),
        pytest.param("serverless", "POST", "/v1/serverless", 200, None, id="permission"),
        pytest.param(
            "reader", "POST", "/v1/serverless", 403, "insufficient_scope", id="no-permission"
        ),
        pytest.param(
            "reader", "GET", "/route-check", 403, "insufficient_scope", id="raised-in-view"
        ),
    ],
)
def test_access_rules_enforced(client, tokens, who, method, path, status, error):
    response = client.generic(method, path, headers=bearer(tokens[who]))
    assert response.status_code == status, response.content
    if error:
        body = response.json()
        assert set(body) == {"error", "error_description", "scope"}
        assert body["error"] == error
        assert f'scope="{body["scope"]}"' in response.headers["WWW-Authenticate"]


def test_write_token_200(client, tokens):
    response = client.put("/v1/models/acme/sentiment", headers=bearer(tokens["writer"]))
    assert response.status_code == 200
    assert response.json() == {"model": "acme/sentiment", "revision": 1}


def test_basic_password_works(client, tokens):
    response = client.get("/whoami", headers=basic(tokens["writer"]))
    assert response.status_code == 200
    assert response.json()["scheme"] == "basic"


@pytest.mark.parametrize(
    "down",
    [
        pytest.param(lambda hub: hub.fail_next(503, headers={"Retry-After": "9"}), id="503"),
        pytest.param(lambda hub: hub.stop(), id="stopped"),
    ],
)
def test_hub_down_is_503_with_retry_after(client, hub_emulator, tokens, down):
    down(hub_emulator)
    response = client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.status_code == 503
    assert int(response.headers["Retry-After"]) >= 1
    assert response.json()["error"] == "temporarily_unavailable"
    assert "WWW-Authenticate" not in response.headers


def test_same_body_as_wsgi_adapter(client, hfauth_settings):
    response = client.get("/whoami", headers={"Authorization": "Token abc"})
    assert response.status_code == 400
    assert json.loads(response.content) == {
        "error": "invalid_request",
        "error_description": "Unsupported authorization scheme; use Bearer or Basic",
    }


def test_request_user_untouched_by_default(client, tokens):
    response = client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.json()["django_user"] is None


def test_set_user_opt_in(hfauth_settings, tokens):
    hfauth_settings(SET_USER=True)
    response = Client().get("/whoami", headers=bearer(tokens["reader"]))
    assert response.json()["django_user"] == "HubUser"


@pytest.mark.anyio
async def test_set_user_also_sets_the_async_user(hfauth_settings, tokens):
    """Async views and the async login_required read request.auser(), not request.user."""
    hfauth_settings(SET_USER=True)
    response = await AsyncClient().get("/async-whoami", headers=bearer(tokens["reader"]))
    assert response.json() == {"user": "HubUser", "name": "bob"}


@pytest.mark.parametrize(
    ("path", "status"),
    [
        pytest.param("/v1/models/acme/sentiment/infer", 200, id="allowed"),
        pytest.param("/v1/checked/acme/sentiment", 403, id="denied-in-the-view"),
    ],
)
def test_decorators_alone_answer_as_the_middleware_would(hfauth_settings, tokens, path, status):
    hfauth_settings()
    with override_settings(MIDDLEWARE=[]):
        response = Client().post(path, headers=bearer(tokens["reader"]))
    assert response.status_code == status
    if status == 403:
        assert response.json()["error"] == "insufficient_scope"
    else:
        assert response.headers["Cache-Control"] == "private"
        assert "Authorization" in response.headers["Vary"]


@pytest.mark.parametrize(
    "middleware",
    [
        pytest.param(
            ["django.middleware.csrf.CsrfViewMiddleware", "hfauth_mw.django.HFAuthMiddleware"],
            id="csrf-first",
        ),
        pytest.param(
            ["hfauth_mw.django.HFAuthMiddleware", "django.middleware.csrf.CsrfViewMiddleware"],
            id="hfauth-first",
        ),
    ],
)
@pytest.mark.parametrize(
    ("scheme", "checked_status"),
    [
        pytest.param("bearer", 200, id="bearer-needs-no-csrf-token"),
        # Browsers replay Basic credentials cross-site, as they do cookies.
        pytest.param("basic", 403, id="basic-keeps-the-csrf-check"),
    ],
)
@pytest.mark.parametrize(
    ("options", "path", "checked"),
    [
        pytest.param({}, "/v1/models/acme/sentiment/infer", True, id="checked-path"),
        # The middleware skips these paths: it validates no token there, so no
        # Bearer header lifts Django's CSRF check (a session view would lose it
        # to "Bearer junk"); the decorator comes after CsrfViewMiddleware.
        pytest.param({}, "/public/models/acme/sentiment", False, id="public-path"),
        pytest.param(
            {"PUBLIC_PATHS": [], "PROTECTED_PATHS": ["/v1/*"]},
            "/public/models/acme/sentiment",
            False,
            id="outside-protected-paths",
        ),
    ],
)
def test_csrf_is_skipped_for_validated_bearer_tokens_only(
    hfauth_settings, tokens, middleware, scheme, checked_status, options, path, checked
):
    status = checked_status if checked else 403
    hfauth_settings(**options)
    headers = bearer(tokens["reader"]) if scheme == "bearer" else basic(tokens["reader"])
    with override_settings(MIDDLEWARE=middleware):
        response = Client(enforce_csrf_checks=True).post(path, headers=headers)
    assert response.status_code == status
    if status == 403:
        assert b"CSRF" in response.content


def test_hub_user_has_no_django_powers(tokens):
    from hfauth_mw import ANONYMOUS

    user = HubUser(ANONYMOUS)
    assert not user.is_authenticated
    assert user.is_anonymous
    assert not user.is_staff
    assert not user.is_superuser
    assert not user.has_perm("auth.add_user")


def test_health_is_public(client, hub_emulator):
    assert client.get("/health").status_code == 200
    assert hub_emulator.whoami_calls == 0


def test_public_path_decorator_authenticates_once(client, hub_emulator, tokens):
    assert client.post("/public/models/acme/sentiment").status_code == 401
    response = client.post("/public/models/acme/sentiment", headers=bearer(tokens["reader"]))
    assert response.status_code == 200
    assert hub_emulator.whoami_calls == 1
    assert response.headers["Cache-Control"] == "private"


def test_authenticated_responses_are_private(client, tokens):
    response = client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.headers["Cache-Control"] == "private"
    assert "Authorization" in response.headers["Vary"]


def test_anonymous_mode(hfauth_settings):
    hfauth_settings(ALLOW_ANONYMOUS=True)
    client = Client()
    assert client.post("/v1/models/acme/public-demo/infer").status_code == 200
    private = client.post("/v1/models/acme/sentiment/infer")
    assert private.status_code == 401
    assert "WWW-Authenticate" in private.headers


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/v1/async/models/acme/sentiment", 200, id="async-view"),
        pytest.param("POST", "/v1/models/acme/sentiment/infer", 200, id="sync-view"),
        pytest.param("PUT", "/v1/models/acme/sentiment", 403, id="sync-write-denied"),
    ],
)
async def test_async_stack(
    hfauth_settings, tokens, hub_emulator, monkeypatch, method, path, status
):
    """Under ASGI the middleware runs async (run_async, never the blocking driver)."""
    authenticator = hfauth_settings()["AUTHENTICATOR"]
    monkeypatch.setattr(authenticator, "run_sync", None)
    response = await AsyncClient().generic(method, path, headers=bearer(tokens["reader"]))
    assert response.status_code == status
    assert hub_emulator.whoami_calls == 1


@pytest.mark.anyio
async def test_async_no_token_401(hfauth_settings):
    hfauth_settings()
    response = await AsyncClient().get("/v1/async/models/acme/sentiment")
    assert response.status_code == 401
    assert "Bearer" in response.headers["WWW-Authenticate"]


def test_middleware_is_async_capable():
    assert HFAuthMiddleware.sync_capable
    assert HFAuthMiddleware.async_capable


def test_request_auth_type(client, tokens):
    seen = []

    def capture(request):
        seen.append(request.hfauth)
        return JsonResponse({})

    middleware = HFAuthMiddleware(capture)
    from django.test import RequestFactory

    middleware(RequestFactory().get("/whoami", headers=bearer(tokens["writer"])))
    assert isinstance(seen[0], RequestAuth)
    assert seen[0].principal.name == "alice"


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"PUBLIC_PATH": ["/health"]}, id="typo"),
        pytest.param({"REALM": 'a"b'}, id="bad-realm"),
        pytest.param({"HUB_URL": "http://hub.example", "AUTHENTICATOR": None}, id="plain-http"),
        # Settings read from the environment arrive as text, and "false" is true.
        pytest.param({"ALLOW_ANONYMOUS": "false"}, id="anonymous-as-text"),
        pytest.param({"PRIVATE_RESPONSES": "False"}, id="private-responses-as-text"),
        pytest.param({"SET_USER": "0"}, id="set-user-as-text"),
    ],
)
def test_bad_settings_fail_when_middleware_loads(hfauth_settings, options):
    hfauth_settings(**options)
    with pytest.raises(ConfigurationError):
        HFAuthMiddleware(lambda request: JsonResponse({}))


# --- the example project --------------------------------------------------------------------

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "django_app"
_EXAMPLE_SCRIPT = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
os.environ["DJANGO_SETTINGS_MODULE"] = "toyhub.settings"
import django
import httpx
django.setup()
from django.test import Client
client = Client(HTTP_HOST="localhost", enforce_csrf_checks=True)
statuses = []
for token, method, path in json.loads(sys.argv[2]):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    body = b'{"inputs": "a b"}'
    response = client.generic(method, path, body, "application/json", headers=headers)
    statuses.append(response.status_code)
print(json.dumps(statuses))
"""


def test_example_project(hub_emulator, tokens):
    """The example project, in its own process (Django settings are per process)."""
    calls = [
        (None, "GET", "/health", 200),
        (None, "POST", "/v1/models/acme/sentiment/infer", 401),
        (tokens["reader"], "POST", "/v1/models/acme/sentiment/infer", 200),
        (tokens["reader"], "PUT", "/v1/models/acme/sentiment", 403),
        (tokens["writer"], "PUT", "/v1/models/acme/sentiment", 200),
    ]
    requests = json.dumps([call[:3] for call in calls])
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
    assert json.loads(result.stdout) == [call[3] for call in calls]


# --- class-based views, optional and protected paths (issue 19) ---------------------------


@pytest.mark.parametrize(
    ("who", "method", "path", "status"),
    [
        pytest.param("reader", "GET", "/cbv/django/acme/sentiment", 200, id="method-read"),
        pytest.param("reader", "PUT", "/cbv/django/acme/sentiment", 403, id="method-denied"),
        pytest.param("writer", "PUT", "/cbv/django/acme/sentiment", 200, id="method-write"),
        pytest.param(None, "GET", "/cbv/django/acme/sentiment", 401, id="method-no-token"),
        pytest.param("reader", "GET", "/cbv/class/acme/sentiment", 403, id="class-needs-write"),
        pytest.param("writer", "GET", "/cbv/class/acme/sentiment", 200, id="class-write"),
        pytest.param("reader", "GET", "/cbv/async/acme/sentiment", 200, id="async-class"),
        pytest.param("fine", "GET", "/cbv/async/acme/other", 403, id="async-class-denied"),
    ],
)
@pytest.mark.parametrize("middleware", [True, False], ids=["with-middleware", "decorators-alone"])
def test_decorators_on_class_based_views(
    hfauth_settings, tokens, middleware, who, method, path, status
):
    """A 500 before ('Direct' object has no attribute 'META')."""
    hfauth_settings()
    headers = bearer(tokens[who]) if who else {}
    with override_settings(MIDDLEWARE=["hfauth_mw.django.HFAuthMiddleware"] if middleware else []):
        response = Client().generic(method, path, headers=headers)
    assert response.status_code == status, response.content
    if status == 200:
        assert response.json()["by"] == {"reader": "bob", "writer": "alice"}[who]
        assert response.headers["Cache-Control"] == "private"
    else:
        assert response.json()["error"] in ("unauthorized", "insufficient_scope")


@pytest.mark.anyio
async def test_async_class_based_view_under_asgi(hfauth_settings, tokens):
    hfauth_settings()
    response = await AsyncClient().get(
        "/cbv/async/acme/sentiment", headers=bearer(tokens["reader"])
    )
    assert response.status_code == 200
    assert response.json() == {"by": "bob"}


def test_decorating_a_class_without_dispatch_is_an_error():
    with pytest.raises(ConfigurationError, match="dispatch"):
        require_repo("read")(type("NotAView", (), {}))


MADE_UP = "hf_" + "Z" * 34


@pytest.mark.parametrize(
    ("who", "status", "principal"),
    [
        pytest.param(None, 200, "anonymous", id="no-token"),
        pytest.param("reader", 200, "bob", id="token"),
        pytest.param("bad", 401, None, id="bad-token"),
    ],
)
def test_optional_paths(hfauth_settings, tokens, who, status, principal):
    hfauth_settings(OPTIONAL_PATHS=["/"])
    token = MADE_UP if who == "bad" else tokens.get(who)
    response = Client().get("/", headers=bearer(token) if token else {})
    assert response.status_code == status
    if principal:
        assert response.json()["principal"] == principal


@pytest.mark.parametrize(
    ("who", "status", "hub_user"),
    [
        pytest.param(None, 200, False, id="no-token-keeps-djangos-user"),
        pytest.param("reader", 200, True, id="token-sets-the-hub-user"),
    ],
)
def test_set_user_on_an_optional_path(hfauth_settings, tokens, who, status, hub_user):
    """Without a token, Django's own request.user stays (a site's session login);
    only a token replaces it. Here a stand-in for AuthenticationMiddleware."""

    class DjangoUser:
        is_authenticated = False

    def set_django_user(get_response):
        def middleware(request):
            request.user = DjangoUser()
            return get_response(request)

        return middleware

    sys.modules[__name__].set_django_user = set_django_user
    hfauth_settings(OPTIONAL_PATHS=["/"], SET_USER=True)
    stack = [f"{__name__}.set_django_user", "hfauth_mw.django.HFAuthMiddleware"]
    with override_settings(MIDDLEWARE=stack):
        response = Client().get("/", headers=bearer(tokens[who]) if who else {})
    assert response.status_code == status
    assert response.json()["django_user"] == ("HubUser" if hub_user else "DjangoUser")


@pytest.mark.parametrize(
    ("who", "method", "path", "status"),
    [
        pytest.param(None, "GET", "/", 200, id="unlisted-no-token"),
        pytest.param("bad", "GET", "/", 200, id="unlisted-bad-token-unchecked"),
        pytest.param(None, "POST", "/v1/models/acme/sentiment/infer", 401, id="listed-no-token"),
        pytest.param("reader", "POST", "/v1/models/acme/sentiment/infer", 200, id="listed-read"),
        pytest.param("reader", "PUT", "/v1/models/acme/sentiment", 403, id="listed-denied"),
    ],
)
def test_protected_paths(hfauth_settings, hub_emulator, tokens, who, method, path, status):
    hfauth_settings(PUBLIC_PATHS=[], PROTECTED_PATHS=["/v1/*"])
    token = MADE_UP if who == "bad" else tokens.get(who)
    response = Client().generic(method, path, headers=bearer(token) if token else {})
    assert response.status_code == status
    if path == "/":
        assert response.json() == {"principal": None, "django_user": None}
        assert hub_emulator.whoami_calls == 0


@pytest.mark.parametrize(
    ("body", "status"),
    [
        pytest.param(b'{"model": "acme/sentiment"}', 200, id="may-read"),
        pytest.param(b'{"model": "zed/private"}', 403, id="may-not-read"),
        pytest.param(b"{nope", 400, id="not-json"),
        pytest.param(
            b'{"model": "acme/sentiment", "pad": "' + b"x" * 2000 + b'"}', 413, id="too-big"
        ),
    ],
)
def test_a_body_rule_reads_django_s_request_body(hfauth_settings, tokens, body, status):
    from hfauth_mw import from_body, require_read

    hfauth_settings(
        RULES=[require_read("POST /whoami", repo=from_body("model"))], MAX_BODY_BYTES=1024
    )
    response = Client().post(
        "/whoami",
        data=body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {tokens['reader']}"},
    )
    assert response.status_code == status


class CountingInput(io.BytesIO):
    """A ``wsgi.input`` that counts the bytes the app reads from it."""

    read_bytes = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.read_bytes += len(chunk)
        return chunk

    def readline(self, size: int | None = -1) -> bytes:
        line = super().readline(size)
        self.read_bytes += len(line)
        return line


SMALL_JSON = b'{"model": "acme/sentiment", "pad": "' + b"x" * 700 + b'"}'


@pytest.mark.parametrize(
    ("options", "django_settings", "environ", "status", "description", "read_bytes"),
    [
        pytest.param(
            {"MAX_BODY_BYTES": 1024},
            {},
            {"CONTENT_LENGTH": "200000000"},  # 200 MB declared, 736 bytes sent so far
            413,
            "The request body is larger than 1024 bytes",
            0,
            id="declared-over-the-cap-refused-unread",
        ),
        pytest.param(
            {"MAX_BODY_BYTES": 1_000_000},
            {"DATA_UPLOAD_MAX_MEMORY_SIZE": 512},
            {},
            413,
            "The request body is larger than 512 bytes",
            0,  # Django refuses from CONTENT_LENGTH too
            id="over-djangos-data-upload-max-memory-size",
        ),
    ],
)
def test_a_body_rule_refuses_what_it_cannot_read(
    hfauth_settings, tokens, options, django_settings, environ, status, description, read_bytes
):
    from hfauth_mw import from_body, require_read

    hfauth_settings(RULES=[require_read("POST /whoami", repo=from_body("model"))], **options)
    stream = CountingInput(SMALL_JSON)
    with override_settings(**django_settings):
        response = Client().generic(
            "POST",
            "/whoami",
            SMALL_JSON,
            "application/json",
            headers=bearer(tokens["reader"]),
            **{"wsgi.input": stream, **environ},
        )
    assert response.status_code == status, response.content
    assert response.json()["error_description"] == description
    assert stream.read_bytes == read_bytes


_SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"
_AUTHENTICATION = "django.contrib.auth.middleware.AuthenticationMiddleware"
_HFAUTH = "hfauth_mw.django.HFAuthMiddleware"


@pytest.mark.parametrize(
    ("set_user", "middleware", "django_user"),
    [
        pytest.param(True, [_SESSIONS, _AUTHENTICATION, _HFAUTH], "HubUser", id="after-auth"),
        pytest.param(True, [_HFAUTH, _SESSIONS, _AUTHENTICATION], None, id="before-auth"),
        # Without SET_USER this middleware leaves request.user alone: any order.
        pytest.param(
            False, [_HFAUTH, _SESSIONS, _AUTHENTICATION], "SimpleLazyObject", id="no-set-user"
        ),
    ],
)
def test_set_user_before_django_s_authentication_middleware_fails_to_load(
    hfauth_settings, tokens, set_user, middleware, django_user
):
    """request.user silently became Django's AnonymousUser before."""
    hfauth_settings(SET_USER=set_user)
    apps = ["django.contrib.auth", "django.contrib.contenttypes", "django.contrib.sessions"]
    with override_settings(INSTALLED_APPS=apps, MIDDLEWARE=middleware):
        client = Client()
        if django_user is None:
            with pytest.raises(ConfigurationError, match=f"move the line '{_HFAUTH}' after"):
                client.get("/whoami", headers=bearer(tokens["reader"]))
            return
        response = client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.status_code == 200
    assert response.json()["django_user"] == django_user


@pytest.fixture
def werkzeug_server(hfauth_settings):
    """This project under werkzeug's WSGI server (it accepts chunked bodies and
    sets wsgi.input_terminated), in a thread."""
    from django.core.handlers.wsgi import WSGIHandler
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, WSGIHandler(), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("chunked", "status", "description"),
    [
        pytest.param(False, 200, None, id="content-length"),
        pytest.param(
            True,
            400,
            "Send Content-Length: Django reads no chunked request body",
            id="chunked-says-so",  # was 400 "The request body is not valid JSON"
        ),
    ],
)
def test_a_body_rule_and_a_chunked_body_under_wsgi(
    hfauth_settings, werkzeug_server, tokens, chunked, status, description
):
    from hfauth_mw import from_body, require_read

    hfauth_settings(RULES=[require_read("POST /whoami", repo=from_body("model"))])
    body = b'{"model": "acme/sentiment"}'
    response = httpx.post(
        werkzeug_server + "/whoami",
        content=iter([body]) if chunked else body,  # an iterator: sent chunked
        headers={**bearer(tokens["reader"]), "Content-Type": "application/json"},
        timeout=10,
    )
    assert ("transfer-encoding" in response.request.headers) is chunked
    assert response.status_code == status, response.content
    if description is not None:
        assert response.json() == {"error": "invalid_request", "error_description": description}
