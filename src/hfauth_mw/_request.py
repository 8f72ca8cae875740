"""One request as the pipeline sees it: :class:`RequestContext`.

The adapter kit (:mod:`hfauth_mw._adapters`) builds one per request from an
ASGI scope or a WSGI environ; the pipeline's steps (:mod:`hfauth_mw._pipeline`)
read it and fill in what they find (the client, the credentials, the
principal, who decided on the repository).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._credentials import Credentials
from ._principal import Principal

__all__ = ["UNRESOLVED", "RequestContext"]

_perf_counter = time.perf_counter
#: RequestContext.client before a step needed it.
UNRESOLVED = "\x00unresolved"


class RequestContext:
    """One request, as the pipeline sees it: what the adapter read, and what
    the steps found so far. Built by the adapter kit, one per request."""

    __slots__ = (
        "_forwarded_for",
        "authorization",
        "body",
        "client",
        "credentials",
        "decided_by",
        "headers",
        "method",
        "path",
        "peer",
        "principal",
        "query_tokens",
        "started",
    )

    def __init__(
        self,
        method: str,
        path: str,
        authorization: Sequence[bytes | str],
        query_tokens: Sequence[str] = (),
        peer: str | None = None,
        forwarded_for: str | None = UNRESOLVED,
        headers: Sequence[tuple[bytes, bytes]] | Mapping[str, Any] | None = None,
    ) -> None:
        self.started = _perf_counter()
        # Servers pass "get" through, and routers may still serve it.
        self.method = method if method.isupper() else method.upper()
        self.path = path
        #: Every ``Authorization`` header value (WSGI servers join them into one).
        self.authorization = authorization
        #: Every value of the opted-in query parameter.
        self.query_tokens = query_tokens
        #: The address the connection comes from.
        self.peer = peer
        # UNRESOLVED: read from ``headers`` when the brute-force guard needs it
        # (rarely: only while someone is locked out, or on a refusal).
        self._forwarded_for = forwarded_for
        #: The brute-force guard's key, resolved only when a step needs it.
        self.client: str | None = UNRESOLVED
        self.credentials: Credentials | None = None
        self.principal: Principal | None = None
        #: The request's headers as the server gave them (an ASGI header list, or
        #: a WSGI environ), for a rule that reads one; the body, once a rule
        #: that reads it made the adapter read it.
        self.headers = headers
        self.body: bytes | None = None
        #: Who decided on the repository the request names: "hub" or "local".
        self.decided_by: str | None = None

    @property
    def forwarded_for(self) -> str | None:
        """The ``X-Forwarded-For`` lines, joined in order (each proxy may add
        its own line: the last alone would make the nearest proxy everyone's
        address)."""
        forwarded = self._forwarded_for
        if forwarded is UNRESOLVED:
            forwarded = self._forwarded_for = self.header("x-forwarded-for")
        return forwarded

    def header(self, name: str) -> str | None:
        """The value of header ``name`` (repeated ones joined with ``", "``)."""
        source = self.headers
        if source is None:
            return None
        if isinstance(source, Mapping):  # a WSGI environ
            value = source.get("HTTP_" + name.upper().replace("-", "_"))
            return None if value is None else str(value)
        wanted = name.lower().encode("latin-1")
        values = [value.decode("latin-1") for key, value in source if key == wanted]
        return ", ".join(values) if values else None

    def __repr__(self) -> str:
        return f"RequestContext({self.method} {self.path!r}, credentials={self.credentials!r})"
