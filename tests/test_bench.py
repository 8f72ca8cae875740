"""The benchmark harness runs end to end in smoke mode (no wrk, no uvicorn, no timing checks)."""

from __future__ import annotations

import importlib.util
import logging
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

bench_run = pytest.importorskip("bench.run")


@pytest.fixture(autouse=True)
def _quiet_audit(caplog: pytest.LogCaptureFixture) -> None:
    # One audit event per benchmarked request would flood the captured log.
    caplog.set_level(logging.WARNING, logger="hfauth_mw.audit")


def test_smoke_run_writes_the_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "benchmarks.md"

    status = bench_run.main(["--smoke", "--no-plot", "--out", str(out)])

    printed = capsys.readouterr().out
    assert status == 0, printed
    report = out.read_text(encoding="utf-8")
    for title in (
        "In-process ASGI overhead per request",
        "Where the cached path spends its time",
        "Cold stampede",
        "Scale of the cache",
    ):
        assert title in report
        assert title in printed
    assert "## Targets" in report
    assert "== Targets" in printed
    assert "smoke run" in report
    # Every target is reported with a verdict; the end-to-end one is skipped in smoke mode.
    assert "SKIP  uvicorn end to end" in printed
    assert any(
        f"{verdict}  Cold stampede: upstream calls" in printed for verdict in ("PASS", "FAIL")
    )
    assert "hfauth-mw HFAuthMiddleware, cached token" in printed
    assert "hfauth-mw, body rule: openai_rules(), model in the JSON" in printed
    assert "hfauth-mw, path rule: POST /v1/models/{owner}/{name}/chat" in printed
    assert "body rule vs path rule, cached token, 2,048-byte JSON body" in printed
    if importlib.util.find_spec("uvicorn") is not None:
        # uvicorn's protocol is driven in process: the section ran, it was not skipped.
        assert "Server CPU per request: uvicorn's HTTP/1.1 protocol in process" in printed
        assert "share of bare" in printed
        assert "no authentication, only those two response headers" in printed
    if importlib.util.find_spec("httptools") is not None:
        assert "uvicorn[standard]'s httptools protocol in process" in printed
        assert "on uvicorn[standard] (httptools) in process" not in printed  # no e2e: no target


@pytest.mark.skipif(importlib.util.find_spec("flask") is None, reason="needs flask")
def test_smoke_wsgi_section_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = bench_run.main(["--smoke", "--only", "wsgi", "--no-write"])

    printed = capsys.readouterr().out
    assert status == 0, printed
    assert "bare Flask" in printed


def test_unknown_section_is_refused() -> None:
    with pytest.raises(SystemExit):
        bench_run.main(["--only", "nope", "--no-write"])


@pytest.mark.anyio
async def test_headers_only_app_adds_the_two_headers_without_a_token(tmp_path: Path) -> None:
    """The protocol section's headers-only row measures the headers: they must be there."""
    import httpx
    from bench.apps import ASGI_APPS, PATH, make_fixture

    app = ASGI_APPS["headers-only"](make_fixture(tmp_path))
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(PATH)  # no token: nothing authenticates here

    assert response.status_code == 200
    assert response.headers["cache-control"] == "private"
    assert response.headers["vary"] == "Authorization"


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        pytest.param(None, 200, id="the-fixture-token"),
        pytest.param("Bearer hf_not_a_token_in_the_dict", 401, id="unknown-token"),
        pytest.param("Basic abc", 401, id="other-scheme"),
        pytest.param("", 401, id="no-header"),
    ],
)
@pytest.mark.parametrize("floor", ["token-cache-floor", "private-token-cache-floor"])
async def test_token_cache_floor_really_checks_the_token(
    tmp_path: Path, authorization: str | None, status: int, floor: str
) -> None:
    """The floor rows are lower bounds only if they do the lookup they claim to."""
    import httpx
    from bench.apps import ASGI_APPS, PATH, make_fixture

    fixture = make_fixture(tmp_path)
    app = ASGI_APPS[floor](fixture)
    headers = {}
    if authorization is None:
        headers["authorization"] = fixture.authorization.decode()
    elif authorization:
        headers["authorization"] = authorization
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(PATH, headers=headers)

    assert response.status_code == status


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("floor", "marked_private"),
    [
        pytest.param("token-cache-floor", False, id="floor"),
        pytest.param("private-token-cache-floor", True, id="floor-with-private-headers"),
    ],
)
async def test_only_the_private_floor_adds_the_two_headers(
    tmp_path: Path, floor: str, marked_private: bool
) -> None:
    """The private floor row measures the headers on top of the floor: exactly them."""
    import httpx
    from bench.apps import ASGI_APPS, PATH, make_fixture

    fixture = make_fixture(tmp_path)
    app = ASGI_APPS[floor](fixture)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get(PATH, headers={"authorization": fixture.authorization.decode()})

    assert response.status_code == 200
    assert response.headers.get("cache-control") == ("private" if marked_private else None)
    assert response.headers.get("vary") == ("Authorization" if marked_private else None)


def test_chat_body_is_the_size_it_claims() -> None:
    import json

    from bench.apps import CHAT_BODY_BYTES, CHAT_MODEL, chat_body

    body = chat_body()
    assert len(body) == CHAT_BODY_BYTES == 2048
    assert json.loads(body)["model"] == CHAT_MODEL


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("builder", "path", "model", "status"),
    [
        pytest.param("hfauth_body_rule", "/v1/chat/completions", "acme/bench-model", 200,
                     id="body-rule-readable-model"),
        pytest.param("hfauth_body_rule", "/v1/chat/completions", "zed/private", 403,
                     id="body-rule-other-model"),
        pytest.param("hfauth_path_rule", "/v1/models/acme/bench-model/chat", "zed/private", 200,
                     id="path-rule-readable-path"),
        pytest.param("hfauth_path_rule", "/v1/models/zed/private/chat", "acme/bench-model", 403,
                     id="path-rule-other-path"),
        pytest.param("bare_chat", "/v1/models/zed/private/chat", "zed/private", 200,
                     id="bare-app"),
    ],
)  # fmt: skip
async def test_rule_rows_check_the_model_where_they_claim(
    tmp_path: Path, builder: str, path: str, model: str, status: int
) -> None:
    """The body rule reads the model from the body, the path rule from the path,
    and the app gets the whole body: the rows measure what they are named for."""
    import httpx
    from bench import apps

    fixture = apps.make_fixture(tmp_path)
    app = getattr(apps, builder)(fixture)
    body = apps.chat_body(model)
    transport = httpx.ASGITransport(app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.post(
            path, content=body, headers={"authorization": fixture.authorization.decode()}
        )

    assert response.status_code == status
    if status == 200:
        assert response.text == str(len(body))
