"""The README's quick starts work as printed (issue 19, "Done when").

Each framework's first ``python`` block in its "Quick start" section of
README.md is copied into a new file, as a reader would, with one change: the
Hub's address becomes the hub emulator's (a real HTTP server on 127.0.0.1).
Every app then answers the same table of cases, each in its framework's own
conventions: where the caller lands (``request.user``, ``current_principal``,
``request.principal``, a dependency's value) is what the app echoes, and the
error bodies are RFC 6750 JSON, or DRF's ``{"detail": ...}``.

The gated-model quick start (a Starlette app) runs against the emulator
with the gate granted to one user and not to another.

Django and DRF blocks are split into ``settings.py`` (appended to a settings
module like the one ``django-admin startproject`` writes), ``views.py`` and
``urls.py`` at their ``# <file>.py`` comments, and run in a process of their
own (Django's settings are per process).
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
HUB = "https://huggingface.co"
MADE_UP = "hf_" + "Z" * 34


def quick_start(title: str) -> str:
    """The first python block of the README section ``## Quick start: {title}``."""
    text = README.read_text(encoding="utf-8")
    section = re.search(rf"^## Quick start: {re.escape(title)}\n(.*?)(?=^## )", text, re.M | re.S)
    assert section, f"README.md has no section 'Quick start: {title}'"
    block = re.search(r"^```python\n(.*?)^```", section.group(1), re.M | re.S)
    assert block, f"the README section 'Quick start: {title}' has no python block"
    return block.group(1)


def pointed_at(code: str, hub_url: str) -> str:
    assert HUB in code, "the quick start no longer names the Hub"
    return code.replace(HUB, hub_url)


# --- the table ------------------------------------------------------------------------------

#: (case, caller, method, path) -> (status, the caller the app saw, the error code).
#: Callers are keys of the ``tokens`` fixture; "bad" is a made-up token.
CASES = [
    ("no-token", None, "POST", "/v1/models/acme/sentiment/infer", 401, None, "unauthorized"),
    ("bad-token", "bad", "POST", "/v1/models/acme/sentiment/infer", 401, None, "invalid_token"),
    ("read-token", "reader", "POST", "/v1/models/acme/sentiment/infer", 200, "bob", None),
    (
        "read-token-cannot-write",
        "reader",
        "PUT",
        "/v1/models/acme/sentiment",
        403,
        None,
        "insufficient_scope",
    ),
    ("write-token", "writer", "PUT", "/v1/models/acme/sentiment", 200, "alice", None),
    ("fine-grained-listed", "fine", "POST", "/v1/models/acme/sentiment/infer", 200, "carol", None),
    (
        "fine-grained-unlisted",
        "fine",
        "POST",
        "/v1/models/acme/other/infer",
        403,
        None,
        "insufficient_scope",
    ),
    ("public-path", None, "GET", "/health", 200, None, None),
    ("public-path-bad-token-unchecked", "bad", "GET", "/health", 200, None, None),
    ("optional-path-no-token", None, "GET", "/v1/models", 200, None, None),
    ("optional-path-token", "reader", "GET", "/v1/models", 200, "bob", None),
    ("optional-path-bad-token", "bad", "GET", "/v1/models", 401, None, "invalid_token"),
    ("unprotected-path", None, "GET", "/", 200, None, None),
    ("unprotected-path-bad-token-unchecked", "bad", "GET", "/", 200, None, None),
]

#: Where each framework puts the error: RFC 6750 JSON, or DRF's {"detail": ...}.
ERROR_SHAPE: dict[str, Callable[[dict[str, Any], str], bool]] = {
    "rfc6750": lambda body, code: body.get("error") == code and "error_description" in body,
    "drf": lambda body, code: set(body) == {"detail"} and bool(body["detail"]),
}

FRAMEWORKS = [
    pytest.param("Starlette (ASGI)", "rfc6750", id="starlette"),
    pytest.param("FastAPI", "rfc6750", id="fastapi"),
    pytest.param("Flask", "rfc6750", id="flask"),
    pytest.param("Django", "rfc6750", id="django"),
    pytest.param("Django REST framework", "drf", id="drf"),
]


def headers_for(who: str | None, tokens: dict[str, str]) -> dict[str, str]:
    if who is None:
        return {}
    token = MADE_UP if who == "bad" else tokens[who]
    return {"Authorization": f"Bearer {token}"}


Answer = tuple[int, dict[str, str], Any]  # status, headers (lower-case names), JSON or None


def check_table(answers: list[Answer], shape: str) -> None:
    """Every case of CASES against the app's answers, in order."""
    failures = []
    for case, (status, headers, body) in zip(CASES, answers, strict=True):
        name, _, _, _, want_status, want_user, want_code = case
        problems = []
        if status != want_status:
            problems.append(f"status {status}, expected {want_status}")
        elif want_status == 200 and isinstance(body, dict) and ("by" in body or "user" in body):
            user = body.get("by", body.get("user"))
            if user != want_user:
                problems.append(f"the app saw {user!r}, expected {want_user!r}")
        elif want_code is not None:
            if headers.get("x-error-code") != want_code:
                problems.append(f"X-Error-Code {headers.get('x-error-code')!r}, not {want_code}")
            if not isinstance(body, dict) or not ERROR_SHAPE[shape](body, want_code):
                problems.append(f"error body {body!r} is not the {shape} shape")
            if want_status == 401 and not headers.get("www-authenticate", "").startswith("Bearer "):
                problems.append("a 401 without the Bearer challenge")
        vary = headers.get("vary", "").lower()
        if want_status == 200 and want_user is not None and "authorization" not in vary:
            problems.append("a token's answer is not marked Vary: Authorization")
        if problems:
            failures.append(f"{name}: {'; '.join(problems)}")
    assert not failures, "\n".join(failures)


def as_answer(status: int, headers: Any, content: bytes) -> Answer:
    lowered: dict[str, str] = {}
    for name, value in headers.items():  # Werkzeug lists a repeated header once per value
        key = name.lower()
        lowered[key] = f"{lowered[key]}, {value}" if key in lowered else value
    is_json = lowered.get("content-type", "").startswith("application/json")
    return status, lowered, json.loads(content) if is_json else None


# --- running each quick start ---------------------------------------------------------------


def load_module(code: str, directory: Path, name: str) -> Any:
    path = directory / f"{name}.py"
    path.write_text(code, encoding="utf-8")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_asgi(app: Any, tokens: dict[str, str]) -> list[Answer]:
    import anyio

    async def run() -> list[Answer]:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            answers = []
            for _, who, method, path, *_ in CASES:
                response = await client.request(method, path, headers=headers_for(who, tokens))
                answers.append(as_answer(response.status_code, response.headers, response.content))
            return answers

    return anyio.run(run)


def run_flask(app: Any, tokens: dict[str, str]) -> list[Answer]:
    client = app.test_client()
    answers = []
    for _, who, method, path, *_ in CASES:
        response = client.open(path, method=method, headers=headers_for(who, tokens))
        answers.append(as_answer(response.status_code, response.headers, response.data))
    return answers


#: What ``django-admin startproject`` writes, in short (no admin: no templates needed).
DJANGO_BASE_SETTINGS = """
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "quick start test, not a secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "quickstart.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": BASE_DIR / "db.sqlite3"}}
USE_TZ = True
"""

_DJANGO_RUNNER = """
import json, os, sys
sys.path.insert(0, sys.argv[1])
os.environ["DJANGO_SETTINGS_MODULE"] = "quickstart.settings"
import django
django.setup()
from django.test import Client
client = Client(enforce_csrf_checks=True)
answers = []
for method, path, headers in json.loads(sys.argv[2]):
    response = client.generic(method, path, headers=headers)
    answers.append([response.status_code, dict(response.headers), response.content.decode()])
print(json.dumps(answers))
"""


def split_files(code: str) -> dict[str, str]:
    """A Django quick start's files, at its ``# settings.py`` / ``# views.py`` /
    ``# urls.py`` comments."""
    parts = re.split(r"^# (\w+\.py)\b.*\n", code, flags=re.M)
    files = dict(zip(parts[1::2], parts[2::2], strict=True))
    assert set(files) == {"settings.py", "views.py", "urls.py"}, sorted(files)
    return files


def run_django(code: str, directory: Path, tokens: dict[str, str]) -> list[Answer]:
    package = directory / "quickstart"
    package.mkdir()
    (package / "__init__.py").write_text("")
    files = split_files(code)
    files["settings.py"] = DJANGO_BASE_SETTINGS + "\n" + files["settings.py"]
    for name, text in files.items():
        (package / name).write_text(text, encoding="utf-8")
    requests = [[method, path, headers_for(who, tokens)] for _, who, method, path, *_ in CASES]
    env = {**os.environ}
    env.pop("DJANGO_SETTINGS_MODULE", None)
    result = subprocess.run(
        [sys.executable, "-c", _DJANGO_RUNNER, str(directory), json.dumps(requests)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [
        as_answer(status, headers, content.encode())
        for status, headers, content in json.loads(result.stdout)
    ]


@pytest.mark.parametrize(("title", "shape"), FRAMEWORKS)
def test_quick_start_answers_the_table(title, shape, hub_emulator, tokens, tmp_path):
    code = pointed_at(quick_start(title), hub_emulator.url)
    if title.startswith("Django"):
        answers = run_django(code, tmp_path, tokens)
    else:
        module = load_module(code, tmp_path, f"quickstart_{shape}_{len(title)}")
        answers = (
            run_flask(module.app, tokens) if title == "Flask" else run_asgi(module.app, tokens)
        )
    check_table(answers, shape)


def test_the_wsgi_quick_start(hub_emulator, tokens, tmp_path):
    """The plain WSGI quick start: default deny, the rules, the caller in the environ."""
    from werkzeug.test import Client

    code = pointed_at(quick_start("any WSGI app (gunicorn)"), hub_emulator.url)
    client = Client(load_module(code, tmp_path, "quickstart_wsgi").application)
    assert client.get("/health").status_code == 200
    assert client.get("/").status_code == 401
    read = client.post("/v1/models/acme/sentiment/infer", headers=headers_for("reader", tokens))
    assert (read.status_code, read.json) == (200, {"by": "bob"})
    denied = client.put("/v1/models/acme/sentiment", headers=headers_for("reader", tokens))
    assert denied.status_code == 403


def test_the_fastapi_quick_start_serves_its_docs_publicly(hub_emulator, tmp_path):
    """FastAPI's quick start: its own pages stay public (the README said they were locked)."""
    code = pointed_at(quick_start("FastAPI"), hub_emulator.url)
    app = load_module(code, tmp_path, "quickstart_fastapi_docs").app
    answers = []
    import anyio

    async def run() -> None:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
                answers.append((await client.get(path)).status_code)

    anyio.run(run)
    assert answers == [200, 200, 200, 200]


def test_a_basic_client_reads_through_the_drf_quick_start(hub_emulator, tokens, tmp_path):
    """The token as the Basic password reaches hfauth-mw's class, not DRF's Basic one."""
    code = pointed_at(quick_start("Django REST framework"), hub_emulator.url)
    package = tmp_path / "quickstart"
    package.mkdir()
    (package / "__init__.py").write_text("")
    files = split_files(code)
    files["settings.py"] = DJANGO_BASE_SETTINGS + "\n" + files["settings.py"]
    for name, text in files.items():
        (package / name).write_text(text, encoding="utf-8")
    basic = base64.b64encode(f"hf_user:{tokens['reader']}".encode()).decode()
    requests = [["GET", "/v1/models", {"Authorization": f"Basic {basic}"}]]
    result = subprocess.run(
        [sys.executable, "-c", _DJANGO_RUNNER, str(tmp_path), json.dumps(requests)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    [[status, _, content]] = json.loads(result.stdout)
    assert (status, json.loads(content)) == (200, {"user": "bob"})


GATED = "meta-llama/Llama-3.1-8B-Instruct"

#: (case, caller, model in the body) -> (status, X-Error-Code, the caller the app saw).
GATED_CASES = [
    pytest.param("granted", GATED, 200, None, "alice", id="gate-passed"),
    pytest.param("not-granted", GATED, 403, "insufficient_scope", None, id="gate-not-passed"),
    pytest.param("owner", GATED, 200, None, "meta-llama", id="owner-needs-no-gate"),
    pytest.param(None, GATED, 401, "unauthorized", None, id="no-token"),
    pytest.param("bad", GATED, 401, "invalid_token", None, id="bad-token"),
    pytest.param("granted", "acme/other", 404, "model_not_found", None, id="model-not-served"),
]


@pytest.mark.parametrize(("who", "model", "status", "code", "user"), GATED_CASES)
def test_the_gated_model_quick_start(
    hub_emulator, hub_store, tmp_path, who, model, status, code, user
):
    """The gated-model quick start: the Hub's gate decides, per token, and a
    decision is cached (one auth-check for two requests)."""
    hub_emulator.add_repo(f"model:{GATED}", "gated")
    hub_emulator.grant_gate(f"model:{GATED}", "alice")
    callers = {
        "granted": hub_store.create_token(user="alice", role="read").token,
        "not-granted": hub_store.create_token(user="bob", role="read").token,
        "owner": hub_store.create_token(user="meta-llama", role="read").token,
        "bad": MADE_UP,
    }
    code_text = pointed_at(
        quick_start("serve a gated model only to people who passed its gate"), hub_emulator.url
    )
    app = load_module(code_text, tmp_path, "quickstart_gated").app
    headers = {"Authorization": f"Bearer {callers[who]}"} if who else {}
    payload = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    import anyio

    async def run() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return [
                await client.post("/v1/chat/completions", json=payload, headers=headers)
                for _ in range(2)
            ]

    first, again = anyio.run(run)
    for response in (first, again):
        assert response.status_code == status, response.text
        assert response.headers.get("x-error-code") == code
        if status == 200:
            assert response.json() == {"model": GATED, "by": user}
        else:
            assert set(response.json()) == {"error"}, response.json()  # OpenAI's shape
    if who == "not-granted":
        assert (
            f"gated: bob has not been granted access to {GATED}"
            in (first.json()["error"]["message"])
        )
    if who not in (None, "bad") and model == GATED:
        # The hub is asked once per token and model; the second answer is cached.
        assert hub_emulator.auth_check_calls == 1
