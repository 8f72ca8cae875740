"""Reading a token out of a request: ``Authorization`` (Bearer or Basic) or,
when the server opts in, one query-string parameter.

Everything here is pure: headers in, :class:`Credentials` or an
:class:`~hfauth_mw.InvalidRequest` out. Tokens are never normalised: no case
folding, no trimming inside, no decoding beyond what Basic itself requires;
only the spaces and tabs around the whole header value, which HTTP says are
not part of it, are dropped.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from typing import Literal

from ._exceptions import InvalidRequest
from ._principal import fingerprint_of, sha256, token_digest

__all__ = [
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_TOKEN_BYTES",
    "Credentials",
    "CredentialsStep",
    "bare_credentials",
    "parse_credentials",
    "read_credentials",
]

#: OWASP advises refusing oversized Authorization headers before any hashing.
DEFAULT_MAX_HEADER_BYTES = 8192
#: The longest token sent upstream by default: a Hub access token is 37 bytes,
#: but a Hub OAuth token is ``hf_oauth_`` and a JWT (hundreds of bytes, more
#: with many scopes); far longer ones can only make a proxy or WAF in front of
#: the source refuse the request (see ``HubWhoamiSource(max_token_bytes=...)``).
DEFAULT_MAX_TOKEN_BYTES = 4096

# RFC 6750 section 2.1: b64token = 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/" ) *"="
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
_BEARER_BYTES = re.compile(rb"[Bb][Ee][Aa][Rr][Ee][Rr] +([A-Za-z0-9\-._~+/]+=*)")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9!#$%&'*+\-.^_`|~]*)(?: +(.*))?", re.DOTALL)

Scheme = Literal["bearer", "basic", "query"]


class Credentials:
    """A token taken from a request, with the SHA-256 digest used as its only key.

    Read-only by convention (a plain slotted class: it is built on every
    request, and frozen dataclasses cost a microsecond more). ``username`` is
    the Basic user name, kept for logs and never trusted: the Hub ignores it,
    and so do the access rules. The token may be given as the ASCII bytes of
    the header: it is decoded only when something reads :attr:`token` (a
    source, on a cache miss), not on every cached request.
    """

    __slots__ = ("_token", "digest", "scheme", "username")

    def __init__(
        self, token: str | bytes, scheme: Scheme, digest: bytes, username: str | None = None
    ) -> None:
        self._token = token
        self.scheme = scheme
        self.digest = digest
        self.username = username

    @property
    def token(self) -> str:
        token = self._token
        if isinstance(token, bytes):
            token = self._token = token.decode("ascii")
        return token

    @property
    def size(self) -> int:
        """The token's length in bytes (a token is ASCII), without decoding it."""
        return len(self._token)

    @classmethod
    def from_token(
        cls, token: str, scheme: Scheme = "bearer", username: str | None = None
    ) -> Credentials:
        return cls(token, scheme, token_digest(token), username)

    @property
    def fingerprint(self) -> str:
        """A short SHA-256 fingerprint, safe to log."""
        return fingerprint_of(self.digest)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Credentials):
            return NotImplemented
        return (self.digest, self.scheme, self.username) == (
            other.digest,
            other.scheme,
            other.username,
        )

    def __hash__(self) -> int:
        return hash((self.digest, self.scheme, self.username))

    def __repr__(self) -> str:
        return f"Credentials(scheme={self.scheme!r}, fingerprint={self.fingerprint!r})"

    __str__ = __repr__


def bearer_token(header: bytes) -> bytes | None:
    """The token of a well-formed ``Bearer`` header value (RFC 6750 b64token),
    else ``None`` (then the full parser says what is wrong)."""
    # The commonest header, "Bearer hf_" and ASCII letters and digits, is a
    # b64token the regex would accept: answered without it (about 40% quicker).
    if header[:10] == b"Bearer hf_" and header[10:].isalnum():
        return header[7:]
    match = _BEARER_BYTES.fullmatch(header)
    return None if match is None else match.group(1)


def _decode_header(raw: bytes | str, max_bytes: int) -> str:
    if len(raw) > max_bytes:
        raise InvalidRequest(f"The Authorization header is longer than {max_bytes} bytes")
    if isinstance(raw, str):
        raw = raw.encode("latin-1", errors="replace")
    try:
        # Spaces and tabs around a field value are not part of it (RFC 9110 5.5):
        # werkzeug's server keeps them where wsgiref, gunicorn and h11 drop them.
        return raw.decode("ascii").strip(" \t")
    except UnicodeDecodeError:
        raise InvalidRequest("The Authorization header is not ASCII") from None


def _parse_basic(value: str) -> Credentials:
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        raise InvalidRequest("The Basic credentials are not valid base64 of UTF-8 text") from None
    username, colon, password = decoded.partition(":")
    if not colon:
        raise InvalidRequest("The Basic credentials have no ':' between user name and token")
    if not password:
        # `curl -u TOKEN:` is a common slip: say which half is empty, never what the other holds.
        half = (
            "password is empty (the user name is not)"
            if username
            else "user name and password are both empty"
        )
        raise InvalidRequest(
            f"The Basic {half}: the token goes in the password, "
            "as in curl -u user:TOKEN or curl -u :TOKEN"
        )
    if not _B64TOKEN.fullmatch(password):
        raise InvalidRequest("The Basic password is not a well-formed access token")
    return Credentials.from_token(password, "basic", username)


def _parse_authorization(header: str, allow_basic: bool) -> Credentials:
    match = _SCHEME.fullmatch(header)
    if match is None:
        raise InvalidRequest("The Authorization header is malformed")
    scheme, value = match.group(1).lower(), match.group(2)
    if scheme not in ("bearer", "basic") or (scheme == "basic" and not allow_basic):
        accepted = "Bearer or Basic" if allow_basic else "Bearer"
        raise InvalidRequest(f"Unsupported authorization scheme; use {accepted}")
    if not value:
        raise InvalidRequest("The Authorization header carries an empty token")
    if "," in value:
        # No token or base64 has a comma: WSGI servers join repeated headers with one.
        raise InvalidRequest(
            "The Authorization header holds a comma: the request sent it twice "
            "(the server joined the two), or the token is malformed"
        )
    if scheme == "basic":
        return _parse_basic(value)
    if not _B64TOKEN.fullmatch(value):
        raise InvalidRequest("The Bearer token is not well formed (RFC 6750 b64token)")
    return Credentials.from_token(value, "bearer")


class CredentialsStep:
    """The pipeline's credentials step, with the options it reads.

    :class:`~hfauth_mw._pipeline.Guard` is one, and :meth:`credentials` is its
    hook: override it there for checks of one's own. It lives here, beside the
    grammar it applies, so that the step is a single call on every request.
    """

    __slots__ = ()
    query_param: str | None
    allow_basic: bool
    max_header_bytes: int

    def credentials(
        self, authorization: Sequence[bytes | str], query_tokens: Sequence[str] = ()
    ) -> Credentials | None:
        """Step 3: the request's credentials, ``None`` when it carries none
        (query tokens count only where :attr:`query_param` is set)."""
        if len(authorization) == 1 and not query_tokens:
            # The common case, without decoding or copying: one well-formed Bearer header
            # (WSGI servers hand it over as latin-1 text; a token is ASCII).
            raw = authorization[0]
            if type(raw) is str and raw.isascii():
                raw = raw.encode("ascii")
            if type(raw) is bytes and len(raw) <= self.max_header_bytes:
                # bearer_token's own first test, made here: the call costs more than it.
                if raw.startswith(b"Bearer hf_") and raw[10:].isalnum():
                    bearer: bytes | None = raw[7:]
                else:
                    bearer = bearer_token(raw)
                if bearer is not None:
                    return Credentials(bearer, "bearer", sha256(bearer).digest())
        return read_credentials(
            authorization,
            query_tokens if self.query_param else (),
            self.allow_basic,
            self.max_header_bytes,
        )


class _Options(CredentialsStep):
    __slots__ = ("allow_basic", "max_header_bytes", "query_param")

    def __init__(self, allow_basic: bool, max_header_bytes: int) -> None:
        self.query_param = "given"  # the caller passes only the values it accepts
        self.allow_basic = allow_basic
        self.max_header_bytes = max_header_bytes


def parse_credentials(
    authorization: Sequence[bytes | str],
    *,
    query_tokens: Sequence[str] = (),
    allow_basic: bool = True,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> Credentials | None:
    """Return the request's credentials, ``None`` when it carries none.

    ``authorization`` holds every ``Authorization`` header value of the request;
    ``query_tokens`` every value of the opted-in query parameter (empty when the
    server did not opt in). Raises :class:`~hfauth_mw.InvalidRequest` for two
    headers, a token sent two ways, an unknown scheme, bad base64 or an empty or
    malformed token.
    """
    return _Options(allow_basic, max_header_bytes).credentials(authorization, query_tokens)


def bare_credentials(token: str) -> Credentials:
    """A token given alone (by code outside a request, or the CLI) as Bearer
    credentials, held to the grammar a request's token is held to: a
    malformed one raises :class:`~hfauth_mw.InvalidRequest` and is never
    sent anywhere (a pasted non-ASCII character failed inside the source)."""
    if len(token) > DEFAULT_MAX_HEADER_BYTES:
        raise InvalidRequest(f"The access token is longer than {DEFAULT_MAX_HEADER_BYTES} bytes")
    if not _B64TOKEN.fullmatch(token):
        raise InvalidRequest(
            "The access token is not well formed: letters, digits and -._~+/ only "
            "(RFC 6750), no spaces"
        )
    return Credentials.from_token(token)


def read_credentials(
    authorization: Sequence[bytes | str],
    query_tokens: Sequence[str],
    allow_basic: bool,
    max_header_bytes: int,
) -> Credentials | None:
    """The whole grammar, which :meth:`CredentialsStep.credentials` applies to
    every request its quick reading of one Bearer header does not settle."""
    if len(authorization) > 1:
        raise InvalidRequest("The request has more than one Authorization header")
    if len(query_tokens) > 1:
        raise InvalidRequest("The access token appears more than once in the query string")
    if authorization and query_tokens:
        raise InvalidRequest("The access token was sent both in a header and in the query string")
    if authorization:
        return _parse_authorization(_decode_header(authorization[0], max_header_bytes), allow_basic)
    if query_tokens:
        token = query_tokens[0]
        if len(token) > max_header_bytes:
            raise InvalidRequest(f"The access token is longer than {max_header_bytes} bytes")
        if not _B64TOKEN.fullmatch(token):
            raise InvalidRequest("The access token in the query string is not well formed")
        return Credentials.from_token(token, "query")
    return None
