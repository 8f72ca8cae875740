"""The Flask extension in a real Flask app, against the hub emulator over loopback."""

import base64
import importlib.util
from pathlib import Path

import pytest
from flask import (
    Blueprint,
    Flask,
    Response,
    copy_current_request_context,
    request,
    stream_with_context,
)

from contract import ADAPTER_ACCESS_ROWS, BODY_RULE_ROWS
from hfauth_mw import (
    AccessPolicy,
    AuthenticationError,
    Authenticator,
    ConfigurationError,
    HFAuthWSGIMiddleware,
    HubWhoamiSource,
    Repo,
    TokenCache,
    Visibility,
)
from hfauth_mw.flask import HFAuth, current_auth, current_principal

PUBLIC = {Repo.parse("model:acme/public-demo"): Visibility.PUBLIC}


@pytest.fixture
def authenticator(hub_emulator, clock):
    return Authenticator(
        HubWhoamiSource(hub_emulator.url), cache=TokenCache(timer=clock, clock=clock)
    )


def create_app(hfauth: HFAuth, **config) -> Flask:
    """A toy model server: read to infer, write to replace the weights."""
    app = Flask(__name__)
    app.config.update(config)
    hfauth.init_app(app)

    @app.get("/health")
    def health():
        return {"ok": True}

    @app.get("/whoami")
    def whoami():
        return {"user": current_principal.name, "scheme": current_auth.scheme}

    @app.post("/v1/models/<owner>/<name>/infer")
    @hfauth.require_repo("read")
    def infer(owner: str, name: str):
        return {"model": f"{owner}/{name}", "outputs": "POSITIVE", "by": current_principal.name}

    @app.put("/v1/models/<owner>/<name>")
    @hfauth.require_repo("write")
    def upload(owner: str, name: str):
        return {"model": f"{owner}/{name}", "revision": 1}

    @app.get("/v1/async/models/<owner>/<name>")
    @hfauth.require_repo("read")
    async def card(owner: str, name: str):
        return {"model": f"{owner}/{name}", "by": current_principal.name}

    @app.get("/v1/datasets/<org>/<ds>")
    @hfauth.require_repo("read", repo_type="dataset", owner_arg="org", name_arg="ds")
    def dataset(org: str, ds: str):
        return {"dataset": f"{org}/{ds}"}

    @app.post("/v1/serverless")
    @hfauth.require_permission("inference.endpoints.infer.write")
    def serverless():
        return {"ok": True}

    @app.get("/public/models/<owner>/<name>")
    @hfauth.require_repo("read")
    def public_card(owner: str, name: str):
        return {"model": f"{owner}/{name}"}

    @app.get("/public/stream/early")
    def stream_early():
        name = current_principal.name  # before the response starts
        return Response(stream_with_context(iter([f"hello {name}"])))

    @app.get("/public/stream/late")
    def stream_late():
        return Response(stream_with_context(f"hello {current_principal.name}" for _ in [1]))

    @app.get("/public/teardown")
    def public_teardown():
        return "ok"

    @app.teardown_request
    def audit(error):
        # An audit hook reads the caller once the response is made.
        if request.path == "/public/teardown":
            app.config["TEARDOWN_SAW"] = current_principal.name

    @app.post("/public/chat")
    def public_chat():
        # Checked lazily on a public path, then the body read by the view itself.
        return {"user": current_principal.name, "model": request.get_json()["model"]}

    @app.get("/route-check")
    def route_check():
        current_auth.require("model:acme/sentiment", "write")
        return {"ok": True}

    return app


@pytest.fixture
def make_app(authenticator):
    def make(**config) -> Flask:
        settings = {
            "HFAUTH_AUTHENTICATOR": authenticator,
            "HFAUTH_PUBLIC_PATHS": ["/health", "/public/*"],
            "HFAUTH_POLICY": AccessPolicy(visibility=lambda r: PUBLIC.get(r, Visibility.PRIVATE)),
            # The local rules and their policy callbacks (the hub's: test_authority.py).
            "HFAUTH_AUTHORITY": "local",
            "HFAUTH_METHOD_POLICY": False,  # every route states its needs with a decorator
            **config,
        }
        return create_app(HFAuth(), **settings)

    return make


@pytest.fixture
def client(make_app):
    return make_app().test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize(
    ("who", "model", "status"),
    [
        *BODY_RULE_ROWS,
        pytest.param(None, "acme/sentiment", 401, id="no-token"),
    ],
)
def test_a_lazy_check_on_a_public_path_reads_the_body_for_a_body_rule(
    make_app, tokens, who, model, status
):
    from hfauth_mw import from_body, require_read

    app = make_app(
        HFAUTH_RULES=[require_read("POST /public/chat", repo=from_body("model"))],
        HFAUTH_MAX_BODY_BYTES=1024,
    )
    headers = bearer(tokens[who]) if who else {}
    response = app.test_client().post("/public/chat", json={"model": model}, headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 200:
        assert response.get_json() == {"user": "bob", "model": model}


def basic(token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"hf_user:{token}".encode()).decode()}


def test_no_token_gets_challenge(client):
    response = client.get("/whoami")
    assert response.status_code == 401
    assert response.headers.getlist("WWW-Authenticate") == [
        'Bearer realm="hfauth-mw"',
        'Basic realm="hfauth-mw"',
    ]
    assert response.json == {
        "error": "unauthorized",
        "error_description": "Authentication required",
    }


@pytest.mark.parametrize(
    ("who", "method", "path", "status", "error"),
    [
        *ADAPTER_ACCESS_ROWS,
        pytest.param("reader", "GET", "/v1/async/models/acme/sentiment", 200, None, id="async"),
        pytest.param(
            "serverless",
            "GET",
            "/v1/async/models/acme/other",
            403,
            "insufficient_scope",
            id="async-denied",
        ),
        pytest.param("reader", "GET", "/v1/datasets/acme/corpus", 200, None, id="dataset-args"),
        pytest.param("serverless", "POST", "/v1/serverless", 200, None, id="permission"),
        pytest.param(
            "reader", "POST", "/v1/serverless", 403, "insufficient_scope", id="no-permission"
        ),
        pytest.param(
            "writer",
            "POST",
            "/v1/models/acme/bad%20name/infer",
            403,
            "insufficient_scope",
            id="not-a-repo-id",
        ),
        pytest.param(
            "reader", "GET", "/route-check", 403, "insufficient_scope", id="raised-in-view"
        ),
    ],
)
def test_access_rules_enforced(client, tokens, who, method, path, status, error):
    response = client.open(path, method=method, headers=bearer(tokens[who]))
    assert response.status_code == status, response.data
    if error:
        body = response.json
        assert set(body) == {"error", "error_description", "scope"}
        assert body["error"] == error
        assert f'scope="{body["scope"]}"' in response.headers["WWW-Authenticate"]


def test_write_token_reads_and_writes(client, tokens):
    assert client.put("/v1/models/acme/sentiment", headers=bearer(tokens["writer"])).json == {
        "model": "acme/sentiment",
        "revision": 1,
    }
    infer = client.post("/v1/models/acme/sentiment/infer", headers=bearer(tokens["writer"]))
    assert infer.json["by"] == "alice"


def test_basic_password_works(client, tokens):
    response = client.get("/whoami", headers=basic(tokens["writer"]))
    assert response.status_code == 200
    assert response.json == {"user": "alice", "scheme": "basic"}


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
    assert response.json["error"] == "temporarily_unavailable"


def test_one_enforcement_path(make_app):
    """The extension wraps app.wsgi_app: the WSGI middleware checks every request."""
    app = make_app()
    assert isinstance(app.wsgi_app, HFAuthWSGIMiddleware)
    assert app.extensions["hfauth"] is app.wsgi_app


def test_method_policy_applies_by_default(make_app, tokens):
    client = make_app(HFAUTH_METHOD_POLICY=True).test_client()
    response = client.delete("/v1/anything", headers=bearer(tokens["reader"]))
    assert response.status_code == 403
    assert response.json["scope"] == "repo.write"
    # Inference is a read: a POST needs no more than a valid token.
    assert client.post("/v1/anything", headers=bearer(tokens["reader"])).status_code == 404


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({}, 401, id="no-token"),
        pytest.param("reader", 200, id="reader"),
    ],
)
def test_public_path_decorator_authenticates_once(make_app, hub_emulator, tokens, headers, status):
    client = make_app().test_client()
    headers = bearer(tokens[headers]) if isinstance(headers, str) else headers
    response = client.get("/public/models/acme/sentiment", headers=headers)
    assert response.status_code == status
    assert hub_emulator.whoami_calls == (1 if headers else 0)
    if headers:
        assert response.headers["Cache-Control"] == "private"
        assert "Authorization" in response.headers["Vary"]


@pytest.mark.parametrize(
    "headers", [pytest.param({}, id="no-token"), pytest.param("reader", id="reader")]
)
def test_public_stream_reading_the_caller_too_late_fails_loudly(make_app, tokens, headers):
    """Past the start of the response, no 401 and no private marks can be sent."""
    headers = bearer(tokens[headers]) if isinstance(headers, str) else headers
    client = make_app().test_client()
    with pytest.raises(RuntimeError, match="while its streamed body was being sent"):
        client.get("/public/stream/late", headers=headers).get_data()


def test_public_stream_reading_the_caller_first_is_private(make_app, tokens):
    client = make_app().test_client()
    assert client.get("/public/stream/early").status_code == 401
    response = client.get("/public/stream/early", headers=bearer(tokens["reader"]))
    assert response.get_data(as_text=True) == "hello bob"
    assert response.headers["Cache-Control"] == "private"
    assert "Authorization" in response.headers["Vary"]


def test_public_path_caller_can_be_read_in_teardown(make_app, tokens):
    app = make_app()
    response = app.test_client().get("/public/teardown", headers=bearer(tokens["reader"]))
    assert response.status_code == 200
    assert app.config["TEARDOWN_SAW"] == "bob"


def test_a_caller_checked_in_teardown_is_not_handed_to_a_streamed_body(make_app, tokens):
    """The teardown read comes after the headers went out without the private
    marks: the body, streamed later, must not show the caller."""
    app = make_app()

    @app.get("/public/feed")
    def feed():
        @copy_current_request_context
        def greeting() -> bytes:
            return f"hello {current_principal.name}".encode()

        return Response(greeting() for _ in [1])

    @app.teardown_request
    def audit(error):
        if request.path == "/public/feed" and "FEED_SAW" not in app.config:
            app.config["FEED_SAW"] = current_principal.name

    client = app.test_client()
    with pytest.raises(RuntimeError, match="while its streamed body was being sent"):
        client.get("/public/feed", headers=bearer(tokens["reader"])).get_data()
    assert app.config["FEED_SAW"] == "bob"


def test_decorator_denials_are_rendered_past_a_blueprint_catch_all(make_app, tokens):
    """A blueprint's errorhandler(Exception) is asked before the app's handlers."""
    app = make_app()
    hfauth = HFAuth()
    models = Blueprint("models", __name__)

    @models.errorhandler(Exception)
    def crash(error):
        return {"error": "internal"}, 500

    @models.put("/bp/models/<owner>/<name>")
    @hfauth.require_repo("write")
    def replace(owner: str, name: str):
        return {"ok": True}

    app.register_blueprint(models)
    client = app.test_client()
    response = client.put("/bp/models/acme/sentiment", headers=bearer(tokens["reader"]))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]
    assert client.put("/bp/models/acme/sentiment", headers=bearer(tokens["writer"])).json == {
        "ok": True
    }


def test_a_blueprint_catch_all_can_answer_denials_as_the_extension_does(make_app, tokens):
    app = make_app()
    models = Blueprint("models", __name__)

    @models.errorhandler(Exception)
    def crash(error):
        if isinstance(error, AuthenticationError):
            return HFAuth.error_response(error)
        return {"error": "internal"}, 500

    @models.put("/bp/models/<owner>/<name>")
    def replace(owner: str, name: str):
        current_auth.require(f"{owner}/{name}", "write")
        return {"ok": True}

    app.register_blueprint(models)
    response = app.test_client().put("/bp/models/acme/sentiment", headers=bearer(tokens["reader"]))
    assert response.status_code == 403
    assert 'error="insufficient_scope"' in response.headers["WWW-Authenticate"]


def test_health_needs_no_token(client, hub_emulator):
    assert client.get("/health").status_code == 200
    assert hub_emulator.whoami_calls == 0


def test_authenticated_responses_are_private(client, tokens):
    response = client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.headers["Cache-Control"] == "private"
    assert "Authorization" in response.headers["Vary"]


def test_anonymous_mode(make_app):
    client = make_app(HFAUTH_ALLOW_ANONYMOUS=True).test_client()
    assert client.post("/v1/models/acme/public-demo/infer").status_code == 200
    private = client.post("/v1/models/acme/sentiment/infer")
    assert private.status_code == 401
    assert "WWW-Authenticate" in private.headers


def test_constructor_options_are_defaults_config_wins(authenticator, hub_emulator, tokens):
    hfauth = HFAuth(realm="from-constructor", public_paths=["/health"])
    app = create_app(hfauth, HFAUTH_AUTHENTICATOR=authenticator, HFAUTH_REALM="from-config")
    response = app.test_client().get("/whoami")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="from-config"'
    assert app.test_client().get("/health").status_code == 200


@pytest.mark.parametrize(
    ("constructor", "setting"),
    [
        pytest.param({"hub_url": "https://hub.invalid"}, "HFAUTH_AUTHENTICATOR", id="url-by-auth"),
        pytest.param({"cache": TokenCache()}, "HFAUTH_AUTHENTICATOR", id="cache-by-auth"),
        pytest.param({"hub_url": "https://hub.invalid"}, "HFAUTH_HUB_URL", id="url-by-url"),
        pytest.param(
            {"source": HubWhoamiSource("https://hub.invalid")}, "HFAUTH_HUB_URL", id="source-by-url"
        ),
    ],
)
def test_the_source_named_in_config_replaces_the_constructors(
    authenticator, hub_emulator, tokens, constructor, setting
):
    value = authenticator if setting == "HFAUTH_AUTHENTICATOR" else hub_emulator.url
    app = create_app(HFAuth(**constructor), **{setting: value}, HFAUTH_METHOD_POLICY=False)
    response = app.test_client().get("/whoami", headers=bearer(tokens["reader"]))
    assert response.status_code == 200
    assert response.json["user"] == "bob"


@pytest.mark.parametrize("setting", ["HFAUTH_HUB_URL", "HFAUTH_SOURCE", "HFAUTH_AUTHENTICATOR"])
def test_a_source_setting_left_none_keeps_the_constructors(authenticator, tokens, setting):
    """``app.config["HFAUTH_HUB_URL"] = os.environ.get(...)`` with the variable unset."""
    app = create_app(HFAuth(authenticator=authenticator), **{setting: None})
    assert HFAuth().middleware(app).authenticator is authenticator
    response = app.test_client().get("/whoami", headers=bearer(tokens["reader"]))
    assert response.status_code == 200


def test_app_factory_pattern_serves_two_apps(make_app, tokens):
    first, second = make_app(), make_app(HFAUTH_ALLOW_ANONYMOUS=True)
    assert first.test_client().get("/whoami").status_code == 401
    assert second.test_client().post("/v1/models/acme/public-demo/infer").status_code == 200


@pytest.mark.parametrize(
    "config",
    [
        pytest.param({"HFAUTH_PUBLIC_PATH": ["/health"]}, id="typo"),
        pytest.param({"HFAUTH_REALM": 'a"b'}, id="bad-realm"),
        pytest.param({"HFAUTH_HUB_URL": "http://hub.example"}, id="plain-http"),
        # Settings read from the environment arrive as text, and "false" is true.
        pytest.param({"HFAUTH_ALLOW_ANONYMOUS": "false"}, id="anonymous-as-text"),
        pytest.param({"HFAUTH_METHOD_POLICY": "0"}, id="method-policy-as-text"),
    ],
)
def test_bad_config_fails_at_init_app(config):
    app = Flask(__name__)
    app.config.update(config)
    with pytest.raises(ConfigurationError):
        HFAuth(app)


def test_init_app_twice_is_an_error(make_app):
    app = make_app()
    with pytest.raises(ConfigurationError):
        HFAuth(app)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        pytest.param(("admin",), {}, id="bad-access"),
        pytest.param(("read",), {"repo_type": "models"}, id="bad-repo-type"),
    ],
)
def test_bad_decorator_arguments(args, kwargs):
    with pytest.raises(ConfigurationError):
        HFAuth.require_repo(*args, **kwargs)


# --- the example ----------------------------------------------------------------------------


def load_example(name: str):
    path = Path(__file__).resolve().parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"hfauth_example_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("who", "method", "path", "status"),
    [
        pytest.param(None, "GET", "/health", 200, id="health"),
        pytest.param(None, "POST", "/v1/models/acme/sentiment/infer", 401, id="no-token"),
        pytest.param("reader", "POST", "/v1/models/acme/sentiment/infer", 200, id="read"),
        pytest.param("reader", "PUT", "/v1/models/acme/sentiment", 403, id="read-cannot-write"),
        pytest.param("writer", "PUT", "/v1/models/acme/sentiment", 200, id="write"),
    ],
)
def test_example_app(hub_emulator, tokens, who, method, path, status):
    app = load_example("flask_app").create_app(HubWhoamiSource(hub_emulator.url))
    headers = bearer(tokens[who]) if who else {}
    response = app.test_client().open(path, method=method, headers=headers, json={"inputs": "a b"})
    assert response.status_code == status


def test_private_responses_can_be_switched_off(make_app, tokens):
    client = make_app(HFAUTH_PRIVATE_RESPONSES=False).test_client()
    response = client.get("/whoami", headers=bearer(tokens["reader"]))
    assert response.status_code == 200
    assert "Vary" not in response.headers


# --- class-based views, optional and protected paths (issue 19) ---------------------------


def add_class_based_views(app: Flask) -> None:
    from flask.views import MethodView, View

    hfauth = HFAuth()

    class ModelAPI(MethodView):
        @hfauth.require_repo("read")
        def get(self, owner: str, name: str):
            return {"by": current_principal.name}

        @hfauth.require_repo("write")
        def put(self, owner: str, name: str):
            return {"by": current_principal.name}

    @hfauth.require_repo("write")
    class WritersOnly(MethodView):
        def get(self, owner: str, name: str):
            return {"by": current_principal.name}

    @hfauth.require_permission("inference.endpoints.infer.write")
    class Serverless(View):
        methods = ["POST"]  # noqa: RUF012 - Flask's own attribute

        def dispatch_request(self):
            return {"by": current_principal.name}

    app.add_url_rule("/cbv/models/<owner>/<name>", view_func=ModelAPI.as_view("model_api"))
    app.add_url_rule("/cbv/writers/<owner>/<name>", view_func=WritersOnly.as_view("writers"))
    app.add_url_rule("/cbv/serverless", view_func=Serverless.as_view("cbv_serverless"))


@pytest.mark.parametrize(
    ("who", "method", "path", "status"),
    [
        pytest.param("reader", "GET", "/cbv/models/acme/sentiment", 200, id="method-read"),
        pytest.param("reader", "PUT", "/cbv/models/acme/sentiment", 403, id="method-denied"),
        pytest.param("writer", "PUT", "/cbv/models/acme/sentiment", 200, id="method-write"),
        pytest.param("fine", "GET", "/cbv/models/acme/other", 403, id="method-fine-denied"),
        pytest.param("reader", "GET", "/cbv/writers/acme/sentiment", 403, id="class-needs-write"),
        pytest.param("writer", "GET", "/cbv/writers/acme/sentiment", 200, id="class-write"),
        pytest.param("serverless", "POST", "/cbv/serverless", 200, id="view-permission"),
        pytest.param("reader", "POST", "/cbv/serverless", 403, id="view-no-permission"),
    ],
)
def test_decorators_on_method_views(make_app, tokens, who, method, path, status):
    app = make_app()
    add_class_based_views(app)
    response = app.test_client().open(path, method=method, headers=bearer(tokens[who]))
    assert response.status_code == status, response.data
    if status == 200:
        assert (
            response.json["by"]
            == {
                "reader": "bob",
                "writer": "alice",
                "serverless": "sam",
            }[who]
        )
    else:
        assert response.json["error"] == "insufficient_scope"


def test_decorating_a_class_without_dispatch_is_an_error():
    with pytest.raises(ConfigurationError, match="dispatch_request"):
        HFAuth.require_repo("read")(type("NotAView", (), {}))


@pytest.mark.parametrize(
    ("who", "path", "status", "user"),
    [
        pytest.param(None, "/whoami", 200, "anonymous", id="optional-no-token"),
        pytest.param("reader", "/whoami", 200, "bob", id="optional-token"),
        pytest.param("bad", "/whoami", 401, None, id="optional-bad-token"),
        pytest.param(None, "/route-check", 401, None, id="protected-no-token"),
    ],
)
def test_optional_paths(make_app, tokens, who, path, status, user):
    client = make_app(HFAUTH_OPTIONAL_PATHS=["/whoami"]).test_client()
    token = "hf_" + "Z" * 34 if who == "bad" else tokens.get(who)
    response = client.get(path, headers=bearer(token) if token else {})
    assert response.status_code == status
    if user:
        assert response.json["user"] == user


@pytest.mark.parametrize(
    ("who", "method", "path", "status"),
    [
        pytest.param(None, "GET", "/health", 200, id="unlisted-no-token"),
        pytest.param("bad", "GET", "/health", 200, id="unlisted-bad-token-unchecked"),
        pytest.param(None, "POST", "/v1/models/acme/sentiment/infer", 401, id="listed-no-token"),
        pytest.param("reader", "POST", "/v1/models/acme/sentiment/infer", 200, id="listed-read"),
        pytest.param("reader", "PUT", "/v1/models/acme/sentiment", 403, id="listed-denied"),
        pytest.param(None, "GET", "/v1//models/x", 401, id="unsafe-spelling-still-checked"),
    ],
)
def test_protected_paths(make_app, hub_emulator, tokens, who, method, path, status):
    client = make_app(HFAUTH_PUBLIC_PATHS=(), HFAUTH_PROTECTED_PATHS=["/v1/*"]).test_client()
    token = "hf_" + "Z" * 34 if who == "bad" else tokens.get(who)
    response = client.open(path, method=method, headers=bearer(token) if token else {})
    assert response.status_code == status
    if path == "/health":
        assert hub_emulator.whoami_calls == 0


def test_protected_and_public_paths_together_fail_at_init_app(make_app):
    with pytest.raises(ConfigurationError, match="not both"):
        make_app(HFAUTH_PROTECTED_PATHS=["/v1/*"])
