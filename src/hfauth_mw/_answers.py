"""What a refused request is answered: RFC 6750 status, challenges and body.

:class:`Answers` is built once from the options (realm, whether Basic is
accepted, the body format); :meth:`Answers.render` turns any
:class:`~hfauth_mw.AuthenticationError` into an :class:`ErrorResponse` that
every adapter sends as it is. Besides RFC 6750's ``WWW-Authenticate``, each
denial carries ``X-Error-Code`` and ``X-Error-Message``, as the Hub's answers
do (huggingface_hub shows ``X-Error-Message`` to its users).

Body formats (``error_format``):

* ``"rfc6750"`` (default): ``{"error": code, "error_description": reason}``
  (and ``scope`` for a 403);
* ``"openai"``: ``{"error": {"message", "type", "param", "code"}}``, what the
  ``openai`` client shows (``Error code: 403 - {...}``);
* ``"hub"``: ``{"error": reason}``, the Hugging Face Hub's own shape (TGI and
  the HF Inference API answer so);
* a function ``(error, response) -> ErrorResponse`` of your own, given the
  RFC 6750 answer to change (keep its headers: the challenge and
  ``Retry-After`` are what clients act on).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Literal

from ._exceptions import (
    AuthenticationError,
    ConfigurationError,
    InsufficientScope,
    MissingCredentials,
    SourceUnavailable,
    TooManyFailures,
    UnknownModel,
)
from ._principal import Principal
from ._rules import Decision
from ._validation import shown

__all__ = ["Answers", "ErrorFormat", "ErrorResponse", "denial"]

# A realm is a quoted-string in a header: printable ASCII without '"' or '\\'
# (anything else fails to encode, or is a control character, at the first 401).
_REALM = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")
# RFC 6750 error_description: printable ASCII except '"' and '\\' (and latin-1 for the server).
_DESCRIPTION_UNSAFE = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")
_BODY_ERROR = {
    401: "unauthorized",
    413: "payload_too_large",
    429: "too_many_requests",
    503: "temporarily_unavailable",
}
# OpenAI's error types, by status (what its client maps to exception classes).
_OPENAI_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_error",
}


def denial(principal: Principal, decision: Decision) -> AuthenticationError:
    """The error for a denied decision: 401 for anonymous callers, else 403."""
    if principal.is_anonymous:
        return MissingCredentials(decision.reason)
    return InsufficientScope(decision.reason, scope=decision.needed)


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    """A rendered error: status, headers (latin-1 safe) and a JSON body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


ErrorFormat = (
    Literal["rfc6750", "openai", "hub"]
    | Callable[[AuthenticationError, ErrorResponse], ErrorResponse]
)


#: How a 503 (the token could not be checked) begins, for the client.
_CANNOT_CHECK = "The access token cannot be checked right now: "


class Answers:
    """The answers of one middleware: its realm, Basic offered or not, the body format."""

    __slots__ = ("_challenges", "_format", "_token_shape", "realm")

    def __init__(
        self,
        realm: str,
        allow_basic: bool,
        error_format: ErrorFormat = "rfc6750",
        token_shape: re.Pattern[str] | None = None,
    ) -> None:
        if not isinstance(realm, str) or not _REALM.fullmatch(realm):
            raise ConfigurationError(
                "realm must be non-empty printable ASCII text, without quotes or backslashes, "
                f"not {shown(realm)}"
            )
        if not callable(error_format) and error_format not in ("rfc6750", "openai", "hub"):
            raise ConfigurationError(
                "error_format must be 'rfc6750', 'openai', 'hub' or a function "
                f"(error, response) -> ErrorResponse, not {shown(error_format)}"
            )
        self.realm = realm
        self._format = error_format
        #: The source's tokens besides the Hub's (which reasons mask already): a
        #: reason quoting the request must not carry one into a header or a body.
        self._token_shape = token_shape
        self._challenges = [("www-authenticate", f'Bearer realm="{realm}"')]
        if allow_basic:
            self._challenges.append(("www-authenticate", f'Basic realm="{realm}"'))

    def message(self, error: AuthenticationError) -> str:
        """What the answer to ``error`` tells the client, in every format."""
        text = error.description
        if isinstance(error, SourceUnavailable):
            # What a client of the server can act on first: its token is not at
            # fault, and the answer may change soon (Retry-After says when).
            text = f"{_CANNOT_CHECK}{text[:1].lower()}{text[1:]}"
        if self._token_shape is not None:
            text = self._token_shape.sub("***", text)
        return text

    def render(self, error: AuthenticationError) -> ErrorResponse:
        text = self.message(error)
        description = _DESCRIPTION_UNSAFE.sub("?", text.replace('"', "'"))
        code = error.error or _BODY_ERROR.get(error.status_code, "unauthorized")
        headers = [("content-type", "application/json"), ("cache-control", "no-store")]
        if error.status_code == 401 and error.error is None:
            headers += self._challenges
        elif error.status_code in (400, 401, 403) and error.error is not None:
            params = f'Bearer realm="{self.realm}", error="{error.error}"'
            if isinstance(error, InsufficientScope):
                params += f', scope="{_DESCRIPTION_UNSAFE.sub("", error.scope)}"'
            params += f', error_description="{description}"'
            headers.append(("www-authenticate", params))
        if isinstance(error, SourceUnavailable | TooManyFailures):
            headers.append(("retry-after", str(error.retry_after)))
        headers += [("x-error-code", code), ("x-error-message", description)]
        error_format = self._format
        body: dict[str, Any]
        if error_format == "openai":
            param = error.param if isinstance(error, UnknownModel) else None
            body = {
                "error": {
                    "message": text,
                    "type": _OPENAI_TYPES.get(error.status_code, "invalid_request_error"),
                    "param": param,
                    "code": code,
                }
            }
        elif error_format == "hub":
            body = {"error": text}
        else:
            body = {"error": code, "error_description": text}
            if isinstance(error, InsufficientScope):
                body["scope"] = error.scope
        response = ErrorResponse(error.status_code, headers, json.dumps(body).encode("utf-8"))
        if callable(error_format):
            custom = error_format(error, replace(response, headers=list(headers)))
            if not isinstance(custom, ErrorResponse):
                raise TypeError(
                    "error_format must return an hfauth_mw ErrorResponse, "
                    f"not {type(custom).__name__}"
                )
            return custom
        return response
