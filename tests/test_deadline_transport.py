"""The whole-call deadline of blocking upstream calls (the drip tests are in test_failures)."""

from __future__ import annotations

import time

import httpcore
import httpx
import pytest

from hfauth_mw._deadline_transport import _left, bounded_transport, within
from hfauth_mw._drivers import shared_sync_client


def test_this_httpx_lets_the_transport_be_bounded() -> None:
    """If an httpx upgrade moves the pool's network backend, this fails loudly
    instead of the deadline quietly not applying."""
    _, bounded = bounded_transport(httpx.Limits())
    assert bounded


def test_the_library_s_own_sync_client_is_bounded() -> None:
    pool = shared_sync_client()._transport._pool  # type: ignore[attr-defined]
    assert type(pool._network_backend).__name__ == "_BoundedBackend"


@pytest.mark.parametrize(
    ("timeout", "left_at_most"),
    [
        pytest.param(3.0, 1.0, id="cut-to-the-deadline"),
        pytest.param(0.5, 0.5, id="a-shorter-timeout-stays"),
        pytest.param(None, 1.0, id="no-timeout-gets-the-deadline"),
    ],
)
def test_operations_get_what_is_left(timeout: float | None, left_at_most: float) -> None:
    with within(time.monotonic() + 1.0):
        left = _left(timeout)
    assert left is not None
    assert 0 < left <= left_at_most


def test_past_the_deadline_an_operation_times_out_and_outside_it_nothing_changes() -> None:
    with within(time.monotonic() - 1), pytest.raises(httpcore.ReadTimeout):
        _left(3.0)
    assert _left(3.0) == 3.0  # the deadline ended with its block
    assert _left(None) is None
