"""Exceptions raised by hfauth-mw.

The hierarchy::

    HFAuthError                      base of everything this library raises
    ├── ConfigurationError           bad options, raised once at start-up (also a ValueError)
    ├── TokenStoreError              the local token store cannot be read or written
    ├── MalformedAnswer              an introspection answer has the wrong shape (a ValueError);
    │                                sources turn it into SourceUnavailable
    └── AuthenticationError          a request cannot go on; carries its HTTP answer
        ├── InvalidRequest           400 invalid_request: malformed or ambiguous credentials
        ├── InvalidBody              400 invalid_request: the body a rule reads to find the
        │   │                        repository is not JSON, or lacks the field
        │   └── BodyTooLarge         413: that body is over the cap
        ├── UnknownModel             404 model_not_found: a rule's model is not served here
        ├── MissingCredentials       401, no error code: a protected route and no credentials
        ├── InvalidToken             401 invalid_token: unknown, revoked, expired or inactive
        ├── InsufficientScope        403 insufficient_scope: valid token, not enough rights
        ├── TooManyFailures          429: too many failed authentications from one client
        └── SourceUnavailable        503 + Retry-After: the introspection source cannot answer
            ├── TransportFailure     the call failed on the wire (``detail``: URL and error
            │                        class, for the log line only)
            └── TokenRefusedUpstream a proxy or WAF refused the request carrying this token
                                     (400/403/404/413/414/431): charged to the client, not
                                     to the breaker, never cached

No message or attribute of any of these ever holds a token: they carry a short
SHA-256 fingerprint at most. ``AuthenticationError.description`` is written for
the client and goes into the ``error_description`` of the answer.
"""

from __future__ import annotations

__all__ = [
    "AuthenticationError",
    "BodyTooLarge",
    "ConfigurationError",
    "HFAuthError",
    "InsufficientScope",
    "InvalidBody",
    "InvalidRequest",
    "InvalidToken",
    "MalformedAnswer",
    "MissingCredentials",
    "SourceUnavailable",
    "TokenRefusedUpstream",
    "TokenStoreError",
    "TooManyFailures",
    "TransportFailure",
    "UnknownModel",
]


class HFAuthError(Exception):
    """Base class of every exception raised by hfauth-mw."""


class ConfigurationError(HFAuthError, ValueError):
    """An option given to a middleware, source or cache is invalid."""


class TokenStoreError(HFAuthError):
    """The local token store could not be opened, read or written."""


class MalformedAnswer(HFAuthError, ValueError):
    """An introspection answer does not have the documented shape."""


class AuthenticationError(HFAuthError):
    """A request cannot go on; subclasses say which HTTP answer it gets."""

    status_code: int = 401
    error: str | None = None

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description


class InvalidRequest(AuthenticationError):
    """The credentials are malformed or ambiguous (400 ``invalid_request``)."""

    status_code = 400
    error = "invalid_request"


class InvalidBody(AuthenticationError):
    """The body a rule reads to find the repository is not a JSON object, or
    lacks the field (400 ``invalid_request``). Not a failed authentication:
    the brute-force guard does not count it."""

    status_code = 400
    error: str | None = "invalid_request"


class BodyTooLarge(InvalidBody):
    """The body a rule must read to find the repository is over the cap (413)."""

    status_code = 413
    error = None


class UnknownModel(AuthenticationError):
    """The model a request names is not one this server serves (404
    ``model_not_found``, as the OpenAI API answers). ``param`` names where the
    request named it (``"model"``)."""

    status_code = 404
    error = "model_not_found"

    def __init__(self, description: str, param: str | None = None) -> None:
        super().__init__(description)
        self.param = param


class MissingCredentials(AuthenticationError):
    """A protected route was called without credentials (401, no error code)."""

    status_code = 401
    error = None

    def __init__(self, description: str = "Authentication required") -> None:
        super().__init__(description)


class InvalidToken(AuthenticationError):
    """The token is unknown, revoked, expired or inactive (401 ``invalid_token``)."""

    status_code = 401
    error = "invalid_token"

    def __init__(
        self, description: str = "The access token is invalid, revoked or expired"
    ) -> None:
        super().__init__(description)


class InsufficientScope(AuthenticationError):
    """The token is valid but lacks a right the route needs (403 ``insufficient_scope``).

    ``scope`` names what was needed, e.g. ``"repo.write"``.
    """

    status_code = 403
    error = "insufficient_scope"

    def __init__(self, description: str, scope: str) -> None:
        super().__init__(description)
        self.scope = scope


class TooManyFailures(AuthenticationError):
    """A client failed authentication too often (429 with ``Retry-After``)."""

    status_code = 429
    error = None

    def __init__(self, description: str, retry_after: int) -> None:
        super().__init__(description)
        self.retry_after = retry_after


class SourceUnavailable(AuthenticationError):
    """The introspection source could not answer (503 with ``Retry-After``).

    Raised for timeouts, connection errors, 429 and 5xx answers and answers of
    the wrong shape. It never means the token is invalid and is never cached.
    """

    status_code = 503
    error = None

    def __init__(
        self,
        description: str = "The token could not be checked",
        retry_after: int = 5,
        *,
        upstream_asked: bool = False,
    ) -> None:
        super().__init__(description)
        self.retry_after = max(1, int(retry_after))
        #: True when the upstream itself said when to come back (Retry-After, RateLimit).
        self.upstream_asked = upstream_asked


class TransportFailure(SourceUnavailable):
    """A 503 because the call to the source failed on the wire. :attr:`detail`
    says where and how, for the log line only (never sent to the client):
    the URL without credentials or query, and the error class."""

    def __init__(self, description: str, detail: str) -> None:
        super().__init__(description)
        self.detail = detail


class TokenRefusedUpstream(SourceUnavailable):
    """A 503 caused by the request's own token: something between us and the
    source (nginx, a WAF) refused the request that carried it.

    The token was not judged, so it is never cached as invalid; the answer
    says nothing about the source's health, so it does not count against the
    breaker (one client sending such tokens would otherwise open it for
    everyone); and it is charged to the client in the brute-force guard, like
    an invalid token (:attr:`charged_to_client`).
    """

    #: Read by the request pipeline: the limiter counts this against the client.
    charged_to_client = True
