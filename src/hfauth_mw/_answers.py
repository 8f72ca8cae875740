"""What a refused request is answered: RFC 6750 status, challenges and body.

:class:`Answers` is built once from the options (realm, whether Basic is
accepted); :meth:`Answers.render` turns any
:class:`~hfauth_mw.AuthenticationError` into an :class:`ErrorResponse` that
every adapter sends as it is. Besides RFC 6750's ``WWW-Authenticate``, each
denial carries ``X-Error-Code`` and ``X-Error-Message``, as the Hub's answers
do (huggingface_hub shows ``X-Error-Message`` to its users).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from ._checks import shown
from ._exceptions import (
    AuthenticationError,
    ConfigurationError,
    InsufficientScope,
    MissingCredentials,
    SourceUnavailable,
    TooManyFailures,
)
from ._principal import Principal
from ._rules import Decision

__all__ = ["Answers", "ErrorResponse", "denial"]

# A realm is a quoted-string in a header: printable ASCII without '"' or '\\'
# (anything else fails to encode, or is a control character, at the first 401).
_REALM = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")
# RFC 6750 error_description: printable ASCII except '"' and '\\' (and latin-1 for the server).
_DESCRIPTION_UNSAFE = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")
_BODY_ERROR = {401: "unauthorized", 429: "too_many_requests", 503: "temporarily_unavailable"}


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


class Answers:
    """The RFC 6750 answers of one middleware (its realm; Basic offered or not)."""

    __slots__ = ("_challenges", "realm")

    def __init__(self, realm: str, allow_basic: bool) -> None:
        if not isinstance(realm, str) or not _REALM.fullmatch(realm):
            raise ConfigurationError(
                "realm must be non-empty printable ASCII text, without quotes or backslashes, "
                f"not {shown(realm)}"
            )
        self.realm = realm
        self._challenges = [("www-authenticate", f'Bearer realm="{realm}"')]
        if allow_basic:
            self._challenges.append(("www-authenticate", f'Basic realm="{realm}"'))

    def render(self, error: AuthenticationError) -> ErrorResponse:
        description = _DESCRIPTION_UNSAFE.sub("?", error.description.replace('"', "'"))
        code = error.error or _BODY_ERROR.get(error.status_code, "unauthorized")
        headers = [("content-type", "application/json"), ("cache-control", "no-store")]
        if error.status_code == 401 and error.error is None:
            headers += self._challenges
        elif error.error is not None:
            params = f'Bearer realm="{self.realm}", error="{error.error}"'
            if isinstance(error, InsufficientScope):
                params += f', scope="{_DESCRIPTION_UNSAFE.sub("", error.scope)}"'
            params += f', error_description="{description}"'
            headers.append(("www-authenticate", params))
        if isinstance(error, SourceUnavailable | TooManyFailures):
            headers.append(("retry-after", str(error.retry_after)))
        headers += [("x-error-code", code), ("x-error-message", description)]
        body: dict[str, Any] = {"error": code, "error_description": error.description}
        if isinstance(error, InsufficientScope):
            body["scope"] = error.scope
        return ErrorResponse(error.status_code, headers, json.dumps(body).encode("utf-8"))
