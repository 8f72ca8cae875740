"""Introspection sources: the Hub's whoami-v2, RFC 7662 endpoints, the local
token store, and a chain of them.

Each source is sans-IO (see ``_source_protocol``): it builds requests and reads
responses; it never opens a socket itself. Every request it builds carries an
explicit timeout.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import ipaddress
import json
import math
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import quote_plus, urlsplit

import httpx

from ._credentials import DEFAULT_MAX_TOKEN_BYTES, Credentials
from ._exceptions import (
    ConfigurationError,
    MalformedAnswer,
    SourceUnavailable,
    TokenRefusedUpstream,
    TokenStoreError,
)
from ._principal import Principal, principal_from_whoami
from ._source_protocol import Flow, IntrospectionSource, Invalid, Outcome, Valid
from ._validation import require_bool, require_instance, require_int, require_items, shown

__all__ = [
    "DEFAULT_HUB_URL",
    "DEFAULT_TIMEOUT",
    "ChainSource",
    "HubWhoamiSource",
    "LocalStoreSource",
    "OAuthIntrospectionSource",
    "TokenLookup",
    "TokenRefusedUpstream",
]

DEFAULT_HUB_URL = "https://huggingface.co"
#: Gateways use 1-2 s (Envoy ext_authz: 200 ms). The Hub is far away for most
#: servers, so 2 s to connect and 3 s to read; a slower answer is a 503, not a wait.
DEFAULT_TIMEOUT = httpx.Timeout(3.0, connect=2.0, pool=1.0)
#: A whoami-v2 answer is a few KiB; more than this is not an answer.
DEFAULT_MAX_ANSWER_BYTES = 256 * 1024
#: Bounds on Retry-After we pass on: at least 1 s, never ask clients to wait hours.
MIN_RETRY_AFTER, MAX_RETRY_AFTER, DEFAULT_RETRY_AFTER = 1, 300, 5

#: What an IdP's access token looks like in a URL or a name, for the audit line:
#: a JWT (``eyJ...``), or an opaque run of 24 or more token characters holding a
#: letter and a digit. Masking a long path segment too is the price.
IDP_TOKEN_SHAPE = re.compile(
    # Anchored on the left, as the opaque branch is: unanchored, "eyJ" repeated
    # along a long path cost quadratic time.
    r"(?<![A-Za-z0-9_\-])eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*\.?[A-Za-z0-9_\-]*"
    r"|(?<![A-Za-z0-9\-._~+])(?=[A-Za-z0-9\-._~+]*[0-9])(?=[A-Za-z0-9\-._~+]*[A-Za-z])"
    r"[A-Za-z0-9\-._~+]{24,}=*"
)
#: What an RFC 7662 endpoint's tokens may run to (JWT access tokens are a few KiB).
IDP_MAX_TOKEN_BYTES = 4096

_RATELIMIT_RESET = re.compile(r"(?:^|[;,\s])t=([0-9]+)")
_RATELIMIT_REMAINING = re.compile(r"(?:^|[;,\s])r=([0-9]+)")
# ASCII digits only: str.isdigit() also takes "²", which int() refuses.
_SECONDS = re.compile(r"[0-9]+")
_USER_AGENT = "hfauth-mw"


def retry_after_from(headers: httpx.Headers, now: float | None = None) -> int:
    """Seconds to wait, from ``Retry-After`` (seconds or HTTP date) or
    ``RateLimit`` (``t=``, once ``r=0``).

    :data:`DEFAULT_RETRY_AFTER` when the upstream said nothing usable.
    """
    seconds = _upstream_retry_after(headers, now)
    return DEFAULT_RETRY_AFTER if seconds is None else seconds


def _upstream_retry_after(headers: httpx.Headers, now: float | None = None) -> int | None:
    seconds: float | None = None
    value = headers.get("retry-after")
    if value is not None:
        value = value.strip()
        if _SECONDS.fullmatch(value):
            seconds = _bounded_int(value)
        else:
            try:
                when = email.utils.parsedate_to_datetime(value)
                seconds = when.timestamp() - (time.time() if now is None else now)
            except (TypeError, ValueError, IndexError, OverflowError):
                seconds = None
    if seconds is None:
        # The Hub's RateLimit header is on every answer: its t= (the window's
        # reset) means "wait" only once nothing remains (r=0).
        ratelimit = headers.get("ratelimit", "")
        remaining = _RATELIMIT_REMAINING.search(ratelimit)
        match = _RATELIMIT_RESET.search(ratelimit)
        if match and remaining is not None and int(remaining.group(1)) == 0:
            seconds = _bounded_int(match.group(1))
    if seconds is None:
        return None
    return int(min(MAX_RETRY_AFTER, max(MIN_RETRY_AFTER, seconds)))


def _bounded_int(digits: str) -> int:
    # Past any wait we pass on, and short of int()'s limit on thousands of digits.
    return int(digits) if len(digits) <= 9 else MAX_RETRY_AFTER


#: Upstream answers that concern the request we sent for one token, not the
#: upstream's health: a proxy's 400 for a long header line, a WAF's 403 for a
#: traversal-looking token, 404, 413, 414, 431. See :class:`TokenRefusedUpstream`.
TOKEN_SPECIFIC_STATUSES = frozenset({400, 403, 404, 413, 414, 431})


def unavailable_for(response: httpx.Response, source: str) -> SourceUnavailable:
    """The 503 that stands for an upstream answer that says nothing about the token."""
    status = response.status_code
    if status == 429:
        description = "The token source is rate limiting us; try again later"
    elif status in TOKEN_SPECIFIC_STATUSES:
        return TokenRefusedUpstream(
            f"The token source (or a proxy in front of it) refused the request for this "
            f"token with HTTP {status}; the token was not checked",
            retry_after=DEFAULT_RETRY_AFTER,
        )
    else:
        description = f"The token source answered HTTP {status}; try again later"
    asked = _upstream_retry_after(response.headers)
    return SourceUnavailable(
        description,
        retry_after=DEFAULT_RETRY_AFTER if asked is None else asked,
        upstream_asked=asked is not None,
    )


#: ``WWW-Authenticate`` schemes the Hub may use on its own 401; any other is a proxy's.
_HUB_CHALLENGES = frozenset({"bearer"})
#: Named in the 503's reason; any other scheme is "non-Bearer" (no upstream text is echoed).
_KNOWN_SCHEMES = {"basic": "Basic", "negotiate": "Negotiate", "ntlm": "NTLM", "digest": "Digest"}
_CHALLENGE_SCHEME = re.compile(r"(?:^|,)\s*([A-Za-z0-9!#$%&'*+.^_`|~-]+)(?=\s|,|$)")


def _challenge_schemes(value: str) -> set[str]:
    # A challenge is `scheme [token68 | auth-params]`; schemes start the header or
    # follow a comma and are not followed by "=" (that would be a parameter name).
    schemes = set()
    for match in _CHALLENGE_SCHEME.finditer(value):
        rest = value[match.end() :].lstrip()
        if not rest.startswith("="):
            schemes.add(match.group(1).lower())
    return schemes


def foreign_401(response: httpx.Response) -> str | None:
    """Why a 401 is not the Hub's own "invalid token" answer, or None if it is.

    The Hub answers an unknown or revoked token with a JSON body carrying
    ``error`` and/or an ``X-Error-Message`` or ``X-Error-Code`` header, and no
    challenge other than ``Bearer``. An SSO or auth proxy in front of a private
    hub answers an HTML page with a ``Basic`` or ``Negotiate`` challenge: that
    says nothing about the token. The reason returned is log-safe (fixed words,
    no upstream text).
    """
    schemes: set[str] = set()
    for value in response.headers.get_list("www-authenticate"):
        schemes |= _challenge_schemes(value)
    others = sorted(schemes - _HUB_CHALLENGES)
    if others:
        named = [_KNOWN_SCHEMES[s] for s in others if s in _KNOWN_SCHEMES]
        return f"a {'/'.join(named) or 'non-Bearer'} challenge"
    if response.headers.get("x-error-message") or response.headers.get("x-error-code"):
        return None
    if "json" in response.headers.get("content-type", "").lower():
        try:
            body = json.loads(response.content)
        except (ValueError, RecursionError):
            return "a malformed JSON body"
        if isinstance(body, Mapping) and isinstance(body.get("error"), str):
            return None
        return "a JSON body without an error"
    return "no X-Error-Message and no JSON error body"


#: What a Hub token begins with (hub-tokens.md): ``hf_`` (user, OAuth and
#: trusted-publisher tokens) and ``api_org_`` (legacy organization tokens).
HUB_TOKEN_PREFIXES = ("hf_", "api_org_")


def too_long(limit: int) -> Invalid:
    """A token longer than a network source accepts: invalid, and never sent."""
    return Invalid(f"the token is longer than {limit} bytes (max_token_bytes)")


def decode_json(response: httpx.Response, source: str) -> Any:
    # Media types are case-insensitive (RFC 9110 section 8.3.1).
    content_type = response.headers.get("content-type", "").lower()
    if "json" not in content_type:
        raise SourceUnavailable("The token source answered something other than JSON")
    try:
        return json.loads(response.content)
    except (ValueError, RecursionError):
        raise SourceUnavailable("The token source answered malformed JSON") from None


def check_url(url: str, *, allow_insecure_http: bool, what: str) -> str:
    """Refuse URLs that would send tokens in clear text to another machine."""
    require_bool("allow_insecure_http", allow_insecure_http)
    parts = urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"{what} must be an http(s) URL, not {shown(url)}")
    if parts.username or parts.password:
        raise ConfigurationError(f"{what} must not carry credentials in the URL")
    if parts.fragment or (what == "hub_url" and parts.query):
        # The endpoint's path goes after the base URL: a query or fragment there
        # would make every check a 503, with nothing said at start-up.
        kept = "a query or a fragment" if what == "hub_url" else "a fragment"
        raise ConfigurationError(f"{what} must not carry {kept}, not {shown(url)}")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        how = (
            " (to a middleware: source=HubWhoamiSource(hub_url, allow_insecure_http=True))"
            if what == "hub_url"
            else ""
        )
        raise ConfigurationError(
            f"{what} {url!r} is plain http on a non-loopback host: tokens would cross the "
            f"network in clear text. Use https, or pass allow_insecure_http=True{how}."
        )
    return url


# A hub_url that already names the endpoint would ask for /api/whoami-v2/api/whoami-v2.
_WHOAMI_PATH = re.compile(r"/api/whoami(?:-v2)?$")


def request_timeout(timeout: httpx.Timeout | float) -> httpx.Timeout:
    """An :class:`httpx.Timeout`; a number of seconds is one for every phase."""
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool):
        if not 0 < timeout <= 300:
            raise ConfigurationError(f"timeout must be from 0 to 300 seconds, not {timeout!r}")
        return httpx.Timeout(float(timeout))
    timeout = require_instance("timeout", timeout, httpx.Timeout, "seconds or an httpx.Timeout")
    phases = (timeout.connect, timeout.read, timeout.write, timeout.pool)
    if any(phase is None for phase in phases):
        # Every network call has a bound: a phase without one could hang a request forever.
        raise ConfigurationError("timeout must bound every phase: httpx.Timeout(None) is refused")
    return timeout


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _timeout_extension(timeout: httpx.Timeout) -> dict[str, Any]:
    return {"timeout": timeout.as_dict()}


def _wait_timeout(timeout: httpx.Timeout) -> float:
    parts = (timeout.connect, timeout.read, timeout.write, timeout.pool)
    return sum(part for part in parts if part is not None) + 1.0


class HubWhoamiSource:
    """Validates tokens with ``GET {hub_url}/api/whoami-v2``, as the Hub's clients do.

    200 is a valid token; 401 an invalid one, but only when it is the Hub's
    answer (a JSON ``error`` body or an ``X-Error-Message`` header, and no
    challenge other than ``Bearer``: see :func:`foreign_401`). Everything else
    (429, 5xx, a redirect, a timeout, an answer that is not the documented
    JSON, an SSO proxy's HTML 401 with a ``Basic`` challenge) means the Hub
    could not tell, and becomes :class:`~hfauth_mw.SourceUnavailable` (503,
    never cached).

    ``hub_url`` may be huggingface.co, a private hub or a local emulator. Plain
    ``http`` is refused unless the host is loopback or ``allow_insecure_http``
    is set, because the token travels in every request.

    ``max_token_bytes`` (default 4096: a Hub access token is 37 bytes, an
    OAuth token ``hf_oauth_`` and a JWT): a longer token is invalid (401)
    without any call. A proxy or WAF in front of the Hub
    would refuse it (nginx answers 400 to a long header line), and such a
    refusal says nothing about the token.

    ``token_prefixes`` (default ``("hf_", "api_org_")``: user, OAuth and
    trusted-publisher tokens, and legacy organization tokens): a secret that
    begins with none of them is invalid (401) without any call. It cannot be
    a Hub token, and it may be something else entirely, such as a site
    user's own password sent as HTTP Basic: it must not leave the process.
    The prefix routes; it never proves a token valid.
    """

    #: Hub tokens are masked in audit lines anyway.
    token_shape: re.Pattern[str] | None = None

    def __init__(
        self,
        hub_url: str = DEFAULT_HUB_URL,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        allow_insecure_http: bool = False,
        name: str | None = None,
        max_token_bytes: int = DEFAULT_MAX_TOKEN_BYTES,
        token_prefixes: Sequence[str] = HUB_TOKEN_PREFIXES,
    ) -> None:
        self.max_token_bytes = require_int("max_token_bytes", max_token_bytes, 16, 65536)
        prefixes = require_items("token_prefixes", token_prefixes, "('hf_', 'api_org_')")
        if not prefixes or not all(isinstance(prefix, str) and prefix for prefix in prefixes):
            raise ConfigurationError(
                "token_prefixes must be non-empty strings, such as ('hf_', 'api_org_')"
            )
        self.token_prefixes = tuple(prefixes)
        self.hub_url = check_url(
            hub_url, allow_insecure_http=allow_insecure_http, what="hub_url"
        ).rstrip("/")
        endpoint = _WHOAMI_PATH.search(self.hub_url)
        if endpoint is not None:
            raise ConfigurationError(
                "hub_url is the hub's base URL, without the endpoint's path: "
                f"{self.hub_url[: endpoint.start()] or '/'!r}, not {self.hub_url!r}"
            )
        self.whoami_url = f"{self.hub_url}/api/whoami-v2"
        self.timeout = request_timeout(timeout)
        self._name = name or f"hub:{self.hub_url}"

    @property
    def name(self) -> str:
        return self._name

    @property
    def wait_timeout(self) -> float:
        return _wait_timeout(self.timeout)

    def __repr__(self) -> str:
        return f"HubWhoamiSource({self.hub_url!r})"

    def refuses_unasked(self, credentials: Credentials) -> Invalid | None:
        """Why ``credentials`` are invalid without asking the hub (too long, or
        no Hub token's prefix), else ``None``: nothing of theirs is sent then."""
        if credentials.size > self.max_token_bytes:
            return too_long(self.max_token_bytes)
        if not credentials.token.startswith(self.token_prefixes):
            return Invalid("the token does not begin as a Hub token does (token_prefixes)")
        return None

    def flow(self, credentials: Credentials) -> Flow:
        refused = self.refuses_unasked(credentials)
        if refused is not None:
            return refused
        response = yield httpx.Request(
            "GET",
            self.whoami_url,
            headers={
                "Authorization": f"Bearer {credentials.token}",
                "Accept": "application/json",
                "User-Agent": _USER_AGENT,
            },
            extensions=_timeout_extension(self.timeout),
        )
        if response.status_code == 401:
            foreign = foreign_401(response)
            if foreign is None:
                return Invalid("the hub does not know this token")
            # Not the Hub's refusal: an SSO or auth proxy in front of it refused
            # *us*. Saying "invalid token" would tell every client its token is
            # bad and cache that; the token was never judged.
            raise SourceUnavailable(
                f"The token source answered HTTP 401 that is not the hub's ({foreign}); "
                "is an SSO or auth proxy in front of it?",
                retry_after=DEFAULT_RETRY_AFTER,
            )
        if response.status_code != 200:
            raise unavailable_for(response, self.name)
        answer = decode_json(response, self.name)
        try:
            principal = principal_from_whoami(
                answer, fingerprint=credentials.fingerprint, source=self.name
            )
        except MalformedAnswer as exc:
            raise SourceUnavailable(
                f"The token source answered an unexpected shape ({exc})"
            ) from None
        return Valid(principal)


#: Default RFC 7662 scope -> token role mapping; the highest role wins. Only
#: Hub-named scopes: the bare ``read``/``write`` of a company IdP (the default
#: scopes of django-oauth-toolkit, say) may have been granted for any API, so
#: they map to nothing unless the operator says so in ``scope_roles``.
DEFAULT_SCOPE_ROLES: Mapping[str, str] = {
    "read-repos": "read",
    "repo.content.read": "read",
    "write-repos": "write",
    "repo.write": "write",
}
_ROLE_RANK = {"read": 1, "write": 2}


def _string_set(name: str, value: str | Iterable[str] | None) -> frozenset[str] | None:
    if value is None:
        return None
    values = [value] if isinstance(value, str) else list(value)
    if not values or not all(isinstance(item, str) and item for item in values):
        raise ConfigurationError(f"{name} must be a non-empty string or list of strings")
    return frozenset(values)


class OAuthIntrospectionSource:
    """Validates tokens at an RFC 7662 introspection endpoint.

    The request is ``POST url`` with ``token=<token>&token_type_hint=access_token``,
    authenticated with HTTP Basic ``client_id:client_secret`` (RFC 7662 section 2.1).

    The answer must carry a boolean ``active``; a missing or non-boolean one is
    an upstream error (503), never "inactive". ``username`` (else ``sub``)
    names the principal; with neither (a client-credentials token), it is
    ``client:<client_id>``, which no namespace can match. ``exp`` caps
    caching; a token whose ``nbf`` is more than :data:`NBF_LEEWAY` seconds
    ahead, or whose ``token_type`` is not an access token's (``Bearer``,
    ``access_token``: a refresh or ID token, say), is invalid; ``scope`` is
    split on spaces and mapped to a token role through ``scope_roles`` (default
    :data:`DEFAULT_SCOPE_ROLES`, Hub-named scopes only): the highest role
    listed wins, and a token with no mapped scope gets no role and can read
    public repositories only.
    Introspected principals have ``auth_type == "oauth2_introspection"``.

    Security caveat: an IdP issues tokens for many APIs, and "active" only
    means "a live token of ours". Say which tokens are for this service:
    ``audience`` (the answer's ``aud``, a string or a list, must name one of
    these), ``issuer`` (``iss`` must be exactly this) and ``client_ids``
    (``client_id``, else Keycloak's ``azp``, must be one of these). A claim
    that is configured but missing or different makes the token
    :class:`~hfauth_mw.Invalid`, with a reason that never quotes the answer.
    Without any of the three, every active token of the IdP is accepted.

    RFC 7662 401s: the endpoint answers 401 when *our* client credentials are
    wrong (section 2.1), never for the token being checked (an inactive token
    is a 200). So any status but 200 is a 503 here, never "invalid token".

    ``max_token_bytes`` (default :data:`IDP_MAX_TOKEN_BYTES`, 4096: JWT
    access tokens run to a few KiB): a longer token is invalid without any
    call. Audit lines mask :data:`IDP_TOKEN_SHAPE` text (JWTs, opaque tokens).
    """

    token_shape: re.Pattern[str] | None = IDP_TOKEN_SHAPE

    def __init__(
        self,
        url: str,
        *,
        client_id: str,
        client_secret: str,
        scope_roles: Mapping[str, str] = DEFAULT_SCOPE_ROLES,
        audience: str | Iterable[str] | None = None,
        issuer: str | None = None,
        client_ids: str | Iterable[str] | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        allow_insecure_http: bool = False,
        name: str | None = None,
        max_token_bytes: int = IDP_MAX_TOKEN_BYTES,
    ) -> None:
        self.max_token_bytes = require_int("max_token_bytes", max_token_bytes, 16, 65536)
        # The endpoint as given: django-oauth-toolkit's ends in "/", and without it
        # the server answers a redirect, which is never followed.
        self.url = check_url(url, allow_insecure_http=allow_insecure_http, what="url")
        if not client_id or not client_secret:
            raise ConfigurationError("client_id and client_secret are both required")
        if not isinstance(scope_roles, Mapping):
            raise ConfigurationError("scope_roles must map scope names to 'read' or 'write'")
        unknown = sorted(set(scope_roles.values()) - set(_ROLE_RANK))
        if unknown:
            raise ConfigurationError(f"scope_roles maps to unknown roles {unknown}; use read/write")
        if issuer is not None and (not isinstance(issuer, str) or not issuer):
            raise ConfigurationError("issuer must be a non-empty string (the IdP's `iss`)")
        self.audience = _string_set("audience", audience)
        self.issuer = issuer
        self.client_ids = _string_set("client_ids", client_ids)
        self.client_id = client_id
        # RFC 6749 section 2.3.1: form-encode both before joining them for Basic.
        pair = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
        self._auth_header = "Basic " + base64.b64encode(pair).decode("ascii")
        self.scope_roles = dict(scope_roles)
        self.timeout = request_timeout(timeout)
        # The cache's namespace: another client of the same endpoint may be told
        # otherwise about a token (RFC 7662 section 2.2), and other scope_roles or
        # audience/issuer/client_ids make other decisions on the same answer;
        # neither may read these entries. "v2": entries of versions that mapped
        # bare read/write by default are not read back either.
        policy = json.dumps(
            {
                "v": 2,
                "scope_roles": self.scope_roles,
                "audience": sorted(self.audience or ()),
                "issuer": self.issuer,
                "client_ids": sorted(self.client_ids or ()),
            },
            sort_keys=True,
        ).encode()
        digest = hashlib.sha256(policy).hexdigest()[:12]
        self._name = name or (
            f"rfc7662:{self.url}?client_id={quote_plus(client_id)}&policy={digest}"
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def wait_timeout(self) -> float:
        return _wait_timeout(self.timeout)

    def __repr__(self) -> str:
        return (
            f"OAuthIntrospectionSource({self.url!r}, client_id={self.client_id!r}, "
            "client_secret='***')"
        )

    def flow(self, credentials: Credentials) -> Flow:
        if credentials.size > self.max_token_bytes:
            return too_long(self.max_token_bytes)
        response = yield httpx.Request(
            "POST",
            self.url,
            data={"token": credentials.token, "token_type_hint": "access_token"},
            headers={
                "Authorization": self._auth_header,
                "Accept": "application/json",
                "User-Agent": _USER_AGENT,
            },
            extensions=_timeout_extension(self.timeout),
        )
        if response.status_code != 200:
            # RFC 7662 answers 200 for inactive tokens; any other status concerns us, not the token.
            raise unavailable_for(response, self.name)
        try:
            return self.parse_answer(decode_json(response, self.name), credentials)
        except MalformedAnswer as exc:
            raise SourceUnavailable(
                f"The token source answered an unexpected shape ({exc})"
            ) from None

    def parse_answer(self, answer: object, credentials: Credentials) -> Outcome:
        """Map an RFC 7662 answer to an outcome; raises MalformedAnswer on a bad shape."""
        if not isinstance(answer, Mapping):
            raise MalformedAnswer("answer is not an object")
        active = answer.get("active")
        if not isinstance(active, bool):
            raise MalformedAnswer("'active' is missing or not a boolean")
        if not active:
            return Invalid("the introspection endpoint says the token is inactive")
        name = answer.get("username") or answer.get("sub")
        if name is None or name == "":
            # RFC 7662 makes both optional (a client-credentials token may carry
            # neither): named after its client, in a form no repository owner can
            # take, so that it owns no namespace.
            client = answer.get("client_id") or answer.get("azp")
            name = f"client:{client}" if isinstance(client, str) and client else "client:unknown"
        elif not isinstance(name, str):
            raise MalformedAnswer("'username' or 'sub' is not a string")
        token_type = answer.get("token_type")
        if token_type is not None:
            if not isinstance(token_type, str):
                raise MalformedAnswer("'token_type' is not a string")
            if token_type.lower() not in _ACCESS_TOKEN_TYPES:
                # A refresh or ID token (or a DPoP one, whose proof we cannot check).
                return Invalid("the token is not an access token")
        refused = self._refusal(answer)
        if refused is not None:
            return Invalid(refused)
        exp = _numeric_date(answer, "exp")
        nbf = _numeric_date(answer, "nbf")
        if nbf is not None and nbf > time.time() + NBF_LEEWAY:
            return Invalid("the token is not valid yet")
        try:
            expires_at = datetime.fromtimestamp(exp, UTC) if exp is not None else None
        except (OverflowError, ValueError, OSError):
            raise MalformedAnswer("'exp' is out of range") from None
        scope = answer.get("scope", "")
        if not isinstance(scope, str):
            raise MalformedAnswer("'scope' is not a string")
        scopes = frozenset(scope.split())
        roles = [self.scope_roles[s] for s in scopes if s in self.scope_roles]
        sub = answer.get("sub")
        return Valid(
            Principal(
                name=name,
                id=sub if isinstance(sub, str) else None,
                auth_type="oauth2_introspection",
                token_role=max(roles, key=_ROLE_RANK.__getitem__) if roles else None,
                expires_at=expires_at,
                oauth_scopes=scopes,
                fingerprint=credentials.fingerprint,
                source=self.name,
            )
        )

    def _refusal(self, answer: Mapping[str, Any]) -> str | None:
        """Why this active token is not for this service, or None. Fixed words:
        the answer's values never reach a log line."""
        if self.issuer is not None:
            iss = answer.get("iss")
            if iss is None:
                return "the token's issuer is not stated (issuer is required)"
            if not isinstance(iss, str):
                raise MalformedAnswer("'iss' is not a string")
            if iss != self.issuer:
                return "the token was issued by another issuer"
        if self.audience is not None:
            aud = answer.get("aud")
            if aud is None:
                return "the token names no audience (an audience is required)"
            audiences = [aud] if isinstance(aud, str) else aud
            if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
                raise MalformedAnswer("'aud' is not a string or a list of strings")
            if self.audience.isdisjoint(audiences):
                return "the token was issued for another audience"
        if self.client_ids is not None:
            client = answer.get("client_id")
            if client is None:
                client = answer.get("azp")  # Keycloak's "authorized party"
            if client is None:
                return "the token names no client (client_ids is set)"
            if not isinstance(client, str):
                raise MalformedAnswer("'client_id' is not a string")
            if client not in self.client_ids:
                return "the token was issued to another client"
        return None


#: RFC 7662 ``token_type`` values of a token that may be used as a bearer access token.
_ACCESS_TOKEN_TYPES = frozenset(
    {"bearer", "access_token", "urn:ietf:params:oauth:token-type:access_token"}
)
#: Seconds an ``nbf`` may lie ahead of our clock (clock skew) before a token is refused.
NBF_LEEWAY = 60.0


def _numeric_date(answer: Mapping[str, Any], name: str) -> float | None:
    value = answer.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedAnswer(f"'{name}' is not a number")
    try:
        number = float(value)  # an integer too large for a float overflows here
    except OverflowError:
        raise MalformedAnswer(f"'{name}' is out of range") from None
    if not math.isfinite(number):
        raise MalformedAnswer(f"'{name}' is not a finite number")
    return number


class TokenLookup(Protocol):
    """What :class:`LocalStoreSource` needs of a store: a whoami-v2 answer by digest."""

    def lookup(self, digest: bytes) -> dict[str, Any] | None: ...


class LocalStoreSource:
    """Validates tokens against a local store of SHA-256 digests (no network).

    The store answers in the whoami-v2 shape, so the principal is built by the
    same parser as the Hub's. Lookups are local SQLite reads of well under a
    millisecond and run inline, also on the event loop; the cache in front
    keeps them off the hot path.
    """

    token_shape: re.Pattern[str] | None = None

    def __init__(self, store: TokenLookup, *, name: str | None = None) -> None:
        self.store = store
        # The name namespaces cache keys: two stores must never share answers.
        path = getattr(store, "path", None)
        self._name = name or (f"local:{path}" if path is not None else f"local:{id(store):x}")

    @property
    def name(self) -> str:
        return self._name

    @property
    def wait_timeout(self) -> float:
        return 5.0

    def __repr__(self) -> str:
        return f"LocalStoreSource({self.store!r})"

    def flow(self, credentials: Credentials) -> Flow:
        try:
            answer = self.store.lookup(credentials.digest)
        except TokenStoreError:
            raise SourceUnavailable("The local token store cannot be read") from None
        if answer is None:
            return Invalid("the local store does not know this token")
        try:
            return Valid(
                principal_from_whoami(answer, fingerprint=credentials.fingerprint, source=self.name)
            )
        except MalformedAnswer as exc:
            raise SourceUnavailable(
                f"The local token store holds a malformed entry ({exc})"
            ) from None
        yield  # a flow that needs no network: never reached, makes this a generator


class ChainSource:
    """Asks sources in order; the first that knows the token answers.

    Strict on trouble: if a source is unavailable, the chain is unavailable,
    even if a later source might know the token, so that the answer never
    depends on which upstream happens to be down. Put the local store first.
    """

    def __init__(self, *sources: IntrospectionSource, name: str | None = None) -> None:
        if not sources:
            raise ConfigurationError("ChainSource needs at least one source")
        self.sources: Sequence[IntrospectionSource] = sources
        self._name = name or "chain(" + ",".join(source.name for source in sources) + ")"
        shapes = [getattr(source, "token_shape", None) for source in sources]
        patterns = sorted({shape.pattern for shape in shapes if shape is not None})
        self.token_shape: re.Pattern[str] | None = (
            re.compile("|".join(f"(?:{pattern})" for pattern in patterns)) if patterns else None
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def wait_timeout(self) -> float:
        return sum(source.wait_timeout for source in self.sources)

    def __repr__(self) -> str:
        return f"ChainSource{tuple(self.sources)!r}"

    def flow(self, credentials: Credentials) -> Flow:
        outcome: Outcome = Invalid("no source knows this token")
        for source in self.sources:
            outcome = yield from source.flow(credentials)
            if isinstance(outcome, Valid):
                return outcome
        return outcome
