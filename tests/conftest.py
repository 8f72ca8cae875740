from __future__ import annotations

import logging
import os
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest_plugins = ["hfauth_mw.testing"]


class FakeClock:
    """One injectable clock for cache TTLs (monotonic) and token expiry (wall clock)."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


# Every test token is Hub-shaped (hf_ + letters/digits), created by the store or
# made up; none may reach a log record, whatever the path (including errors).
_TOKEN_SHAPED = re.compile(r"hf_[A-Za-z0-9]{16,}")


class _RecordEverything(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def record_text(record: logging.LogRecord) -> str:
    """Everything a log record could show: message, arguments, extra fields, traceback."""
    parts = [record.getMessage(), repr(record.args), repr(vars(record))]
    if record.exc_info and record.exc_info[1] is not None:
        parts.append(repr(record.exc_info[1]))
        parts.append(logging.Formatter().formatException(record.exc_info))
    return "\n".join(parts)


@pytest.fixture(autouse=True)
def no_token_in_logs() -> Iterator[list[logging.LogRecord]]:
    """Capture all logging at DEBUG during each test and fail if a token appears."""
    handler = _RecordEverything()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler.records
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)
    leaks = [record for record in handler.records if _TOKEN_SHAPED.search(record_text(record))]
    assert not leaks, f"token-shaped text in {len(leaks)} log record(s) from {leaks[0].name}"


@pytest.fixture
def client_logs_urls_with_tokens() -> Iterator[None]:
    """For tests that put a token in a URL on purpose: the *test client*
    (httpx) logs request URLs at INFO, which is exactly why RFC 6750 advises
    against query tokens. Our own code never sends one in a URL."""
    # Starlette's TestClient logs through "httpx2" on recent versions.
    client_loggers = [logging.getLogger(name) for name in ("httpx", "httpx2")]
    previous = [logger.level for logger in client_loggers]
    for logger in client_loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(client_loggers, previous, strict=True):
            logger.setLevel(level)


@pytest.fixture
def tokens(hub_store) -> dict[str, str]:
    """The callers every adapter's tests use (tests/test_asgi.py has its own set).

    writer: write token, acme write member; reader and other: read tokens, acme
    write members; fine: fine-grained, reads model acme/sentiment only;
    serverless: fine-grained, reads acme/sentiment and holds the global
    permission inference.endpoints.infer.write.
    """
    from hfauth_mw import FineGrainedEntry, OrgGrant

    acme_write = [OrgGrant("acme", "write")]
    read_sentiment = [FineGrainedEntry("model", "acme/sentiment", ("repo.content.read",))]
    return {
        "writer": hub_store.create_token(user="alice", role="write", orgs=acme_write).token,
        "reader": hub_store.create_token(user="bob", role="read", orgs=acme_write).token,
        "other": hub_store.create_token(user="erin", role="read", orgs=acme_write).token,
        "fine": hub_store.create_token(
            user="carol", role="fineGrained", orgs=acme_write, fine_grained=read_sentiment
        ).token,
        "serverless": hub_store.create_token(
            user="sam",
            role="fineGrained",
            orgs=acme_write,
            fine_grained=read_sentiment,
            global_permissions=("inference.endpoints.infer.write",),
        ).token,
    }


# --- Redis -------------------------------------------------------------------------------------
# The Redis tests use their own DB of the machine's Redis (127.0.0.1:6379), never
# DB 0 where other software keeps its data, and delete only the keys under their
# own per-test prefix. HFAUTH_TEST_REDIS_DB picks another DB.

#: The DB number of the machine's Redis that the test suite writes to.
REDIS_TEST_DB = int(os.environ.get("HFAUTH_TEST_REDIS_DB", "9"))
if not 0 < REDIS_TEST_DB < 16:
    raise pytest.UsageError("HFAUTH_TEST_REDIS_DB must be 1 to 15 (DB 0 is left alone)")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """``redis://`` for the test DB: the machine's Redis, else a server this session starts."""
    from redis_servers import RedisServer, ping

    if ping(6379):
        yield f"redis://127.0.0.1:6379/{REDIS_TEST_DB}"
        return
    server = RedisServer().start()
    try:
        yield f"redis://127.0.0.1:{server.port}/{REDIS_TEST_DB}"
    finally:
        server.stop()


@pytest.fixture
def prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own; its keys (and only those) are deleted afterwards."""
    import redis

    name = f"hfauth-test-{uuid.uuid4().hex[:12]}"
    yield name
    client = redis.Redis.from_url(redis_url)
    try:
        keys = list(client.scan_iter(match=f"{name}:*"))
        if keys:
            client.delete(*keys)
    finally:
        client.close()


@pytest.fixture
def private_redis() -> Iterator[Any]:
    """A redis-server of this test's own (it may be stopped and restarted)."""
    from redis_servers import RedisServer

    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
