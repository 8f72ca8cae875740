"""Options are checked once, at start-up: a wrong type is a ConfigurationError that
says what to pass, never a 500 (or an open door) on the first request."""

from __future__ import annotations

import string
import subprocess
import sys

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st

from hfauth_mw import (
    Authenticator,
    ConfigurationError,
    HFAuthMiddleware,
    HFAuthWSGIMiddleware,
    HubWhoamiSource,
    LocalStoreSource,
    LocalTokenStore,
    OAuthIntrospectionSource,
    require_read,
)
from hfauth_mw._validation import shown

TOKEN = "hf_" + "aB3" * 12


async def asgi_app(scope, receive, send):  # pragma: no cover - never called
    raise AssertionError


def wsgi_app(environ, start_response):  # pragma: no cover - never called
    raise AssertionError


@pytest.fixture
def source(tmp_path):
    return LocalStoreSource(LocalTokenStore(tmp_path / "tokens.sqlite3"))


BAD_OPTIONS = [
    # Text read from the environment: "false" is true in Python.
    pytest.param(
        {"allow_anonymous": "false"}, "allow_anonymous must be True or False", id="anon-text"
    ),
    pytest.param({"allow_anonymous": 1}, "allow_anonymous must be True or False", id="anon-int"),
    pytest.param({"allow_basic": "no"}, "allow_basic must be True or False", id="basic-text"),
    pytest.param(
        {"method_policy": "off"},
        "method_policy must be True (the default method map)",
        id="policy-text",
    ),
    pytest.param(
        {"private_responses": "no"}, "private_responses must be True or False", id="private-text"
    ),
    pytest.param(
        {"limiter": "off"}, "limiter must be 'default', None (off), or a Fail", id="limiter-off"
    ),
    pytest.param({"policy": {}}, "policy must be an hfauth_mw.AccessPolicy", id="policy-dict"),
    pytest.param(
        {"max_header_bytes": "8192"}, "max_header_bytes must be a whole number", id="bytes-text"
    ),
    pytest.param(
        {"max_header_bytes": True}, "max_header_bytes must be a whole number", id="bytes-bool"
    ),
    pytest.param({"max_header_bytes": 100}, "from 256 to 65536", id="bytes-small"),
    pytest.param(
        {"rules": require_read("GET /m/{owner}/{name}")}, "rules must be a list", id="one-rule"
    ),
    pytest.param({"rules": "GET /m/{owner}/{name}"}, "rules must be a list", id="rules-text"),
    pytest.param({"rules": ["GET /m/{owner}/{name}"]}, "require_read()", id="rule-text"),
    pytest.param({"public_paths": None}, "public_paths must be a list", id="paths-none"),
    pytest.param({"public_paths": "/health"}, "public_paths must be a list", id="paths-text"),
    pytest.param({"query_param": 5}, "query_param 5 is not a parameter name", id="query-int"),
    pytest.param({"realm": None}, "realm must be non-empty printable ASCII", id="realm-none"),
    pytest.param({"realm": ""}, "realm must be non-empty printable ASCII", id="realm-empty"),
    # Accepted at start-up, these made every 401 fail to encode (or carried controls).
    pytest.param({"realm": "\u8ba4\u8bc1"}, "printable ASCII", id="realm-not-latin-1"),
    pytest.param({"realm": "caf\u00e9"}, "printable ASCII", id="realm-latin-1"),
    pytest.param({"realm": "a\x85b"}, "printable ASCII", id="realm-c1-control"),
    pytest.param({"realm": "a\\b"}, "printable ASCII", id="realm-backslash"),
    pytest.param({"cache": 60}, "cache must be an hfauth_mw.TokenCache", id="cache-int"),
]


@pytest.mark.parametrize("adapter", [HFAuthMiddleware, HFAuthWSGIMiddleware], ids=["asgi", "wsgi"])
@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_bad_options_fail_at_start_up(source, adapter, options, message):
    app = asgi_app if adapter is HFAuthMiddleware else wsgi_app
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        adapter(app, source=source, **options)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param(
            {"hub_url": "https://huggingface.co/api/whoami-v2"},
            "without the endpoint's path: 'https://huggingface.co'",
            id="whoami-path",
        ),
        pytest.param(
            {"hub_url": "https://hub.example/api/whoami/"}, "'https://hub.example'", id="whoami-v1"
        ),
        pytest.param({"hub_url": "huggingface.co"}, "must be an http(s) URL", id="no-scheme"),
        pytest.param({"hub_url": 443}, "must be an http(s) URL, not 443", id="not-text"),
        pytest.param({"timeout": None}, "timeout must be seconds or an httpx.Timeout", id="none"),
        pytest.param({"timeout": httpx.Timeout(None)}, "every phase", id="unbounded"),
        pytest.param({"timeout": 0}, "from 0 to 300 seconds", id="zero"),
        pytest.param({"allow_insecure_http": "yes"}, "True or False", id="insecure-text"),
    ],
)
def test_bad_hub_source_options_fail_at_start_up(options, message):
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        HubWhoamiSource(**options)


def test_hub_url_with_a_path_prefix_is_kept():
    # A private hub mounted under a path prefix is a base URL like any other.
    assert HubWhoamiSource("https://corp.example/hub/").whoami_url == (
        "https://corp.example/hub/api/whoami-v2"
    )


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        pytest.param(5, httpx.Timeout(5.0), id="seconds"),
        pytest.param(0.5, httpx.Timeout(0.5), id="fraction"),
        pytest.param(
            httpx.Timeout(2.0, connect=1.0), httpx.Timeout(2.0, connect=1.0), id="timeout"
        ),
    ],
)
def test_timeouts_as_seconds_or_httpx(timeout, expected):
    assert HubWhoamiSource(timeout=timeout).timeout == expected
    source = OAuthIntrospectionSource(
        "https://idp.example/introspect", client_id="c", client_secret="s", timeout=timeout
    )
    assert source.timeout == expected


@pytest.mark.parametrize(
    "options",
    [
        pytest.param({"hub_url": TOKEN}, id="hub-url"),
        pytest.param({"query_param": TOKEN + "!"}, id="query-param"),
        pytest.param({"allow_anonymous": TOKEN}, id="flag"),
        pytest.param({"public_paths": TOKEN}, id="paths"),
    ],
)
def test_a_token_pasted_into_an_option_is_not_echoed(options):
    with pytest.raises(ConfigurationError) as caught:
        HFAuthMiddleware(asgi_app, **options)
    assert TOKEN not in str(caught.value)
    assert "hf_***" in str(caught.value)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        pytest.param({"source": "hub"}, "source must be an introspection source", id="source-text"),
        pytest.param({"max_answer_bytes": "1MB"}, "max_answer_bytes must be a whole", id="bytes"),
        pytest.param({"client": object()}, "client must be an httpx.Client", id="client"),
        pytest.param({"breaker": 5}, "breaker must be an hfauth_mw.UpstreamBreaker", id="breaker"),
        pytest.param(
            {"shared": "redis://"}, "shared must be an hfauth_mw.SharedCache", id="shared"
        ),
    ],
)
def test_bad_authenticator_options_fail_at_start_up(source, options, message):
    options = {"source": source, **options}
    with pytest.raises(ConfigurationError, match=message):
        Authenticator(**options)


@given(st.text(alphabet=string.ascii_letters + string.digits, min_size=8, max_size=80))
def test_shown_never_holds_a_token(secret):
    for value in (
        "hf_" + secret,
        "api_org_" + secret,
        {"key": "hf_" + secret},
        ["x", "hf_" + secret],
    ):
        text = shown(value, limit=1000)
        assert secret not in text
        assert "hf_***" in text


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("false", "'false'", id="short"),
        pytest.param("x" * 100, "'" + "x" * 56 + "...", id="cut"),
        pytest.param(None, "None", id="none"),
    ],
)
def test_shown(value, expected):
    assert shown(value) == expected


_BLOCK_AND_IMPORT = """
import sys

class Uninstalled:
    def find_spec(self, name, path=None, target=None):
        if name == sys.argv[2] or name.startswith(sys.argv[2] + "."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)

sys.meta_path.insert(0, Uninstalled())
try:
    __import__("hfauth_mw." + sys.argv[1])
except ImportError as error:
    print(error)
"""


@pytest.mark.parametrize(
    ("module", "uninstalled"),
    [
        pytest.param("flask", "flask", id="flask"),
        pytest.param("django", "django", id="django"),
        pytest.param("django", "asgiref", id="django-without-asgiref"),
        pytest.param("fastapi", "fastapi", id="fastapi"),
    ],
)
def test_an_adapter_without_its_framework_says_what_to_install(module, uninstalled):
    result = subprocess.run(
        [sys.executable, "-c", _BLOCK_AND_IMPORT, module, uninstalled],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.stdout.strip() == (
        f"hfauth_mw.{module} needs {module}: pip install 'hfauth-mw[{module}]'"
    ), result.stderr
