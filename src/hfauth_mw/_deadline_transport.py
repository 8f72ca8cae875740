"""One deadline for a whole blocking upstream call.

httpx's timeouts bound each network operation, not a call: an upstream that
sends its answer (headers included) a byte at a time never trips them. Async
calls are bounded as a whole by ``asyncio.timeout``; a blocking read cannot be
interrupted, so the library's own sync client reads through a network backend
that shortens every socket operation to what is left of the deadline its
thread is working under (:func:`within`).
"""

from __future__ import annotations

import contextlib
import ssl
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

import httpcore
import httpx

__all__ = ["bounded_transport", "within"]

_current = threading.local()


@contextlib.contextmanager
def within(deadline: float) -> Iterator[None]:
    """Network operations of this thread end by ``deadline`` (``time.monotonic()``)."""
    _current.deadline = deadline
    try:
        yield
    finally:
        _current.deadline = None


def _left(timeout: float | None) -> float | None:
    deadline: float | None = getattr(_current, "deadline", None)
    if deadline is None:
        return timeout
    left = deadline - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the whole call took longer than its deadline")
    return left if timeout is None else min(timeout, left)


class _BoundedStream(httpcore.NetworkStream):
    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> httpcore.NetworkStream:
        return _BoundedStream(self._stream.start_tls(ssl_context, server_hostname, _left(timeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _BoundedBackend(httpcore.NetworkBackend):
    def __init__(self, backend: httpcore.NetworkBackend) -> None:
        self._backend = backend

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        stream = self._backend.connect_tcp(
            host, port, _left(timeout), local_address, socket_options
        )
        return _BoundedStream(stream)

    def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        return _BoundedStream(
            self._backend.connect_unix_socket(path, _left(timeout), socket_options)
        )

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def bounded_transport(limits: httpx.Limits) -> tuple[httpx.HTTPTransport, bool]:
    """An httpx transport whose connections honour :func:`within`, and whether that
    took: httpx offers no public way to choose the network backend, so this wraps
    its pool's; if a later httpx moves it, the transport is left as it is (each
    read still bounded by the read timeout) and the caller is told."""
    transport = httpx.HTTPTransport(limits=limits, trust_env=False)
    pool = getattr(transport, "_pool", None)
    backend = getattr(pool, "_network_backend", None)
    if not isinstance(backend, httpcore.NetworkBackend):
        return transport, False
    pool._network_backend = _BoundedBackend(backend)  # type: ignore[union-attr]
    return transport, True
