from __future__ import annotations

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
