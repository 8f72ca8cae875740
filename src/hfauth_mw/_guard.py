"""What every adapter shares: the per-request decision and the error answers.

A :class:`Guard` holds the validated options. For each request an adapter
asks :meth:`Guard.is_public`, then drives :meth:`Guard.flow` with the
authenticator's sync or async driver, and renders any
:class:`~hfauth_mw.AuthenticationError` with :meth:`Guard.error_response`.
Nothing here does I/O.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable, Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypedDict, TypeVar, get_args

from ._authenticator import Authenticator, Work
from ._checks import (
    TOKEN_SHAPED,
    require_bool,
    require_instance,
    require_int,
    require_items,
    shown,
)
from ._credentials import (
    DEFAULT_MAX_HEADER_BYTES,
    Credentials,
    Scheme,
    bearer_token,
    parse_credentials,
)
from ._exceptions import (
    AuthenticationError,
    ConfigurationError,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingCredentials,
    SourceUnavailable,
    TooManyFailures,
)
from ._principal import ANONYMOUS, Principal, sha256
from ._protection import FailureLimiter, client_address
from ._rules import READ_PERMISSION, WRITE_PERMISSION, AccessPolicy, Decision, Entity, Repo

__all__ = [
    "SAFE_METHODS",
    "Guard",
    "GuardOptions",
    "RepoRequirement",
    "RepoRule",
    "RequestAuth",
    "require_read",
    "require_write",
]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
V = TypeVar("V")

Access = Literal["read", "write"]
_REPO_TYPES = frozenset({"model", "dataset", "space"})
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNSAFE_PATH = re.compile(r"(?:^|/)\.{1,2}(?:/|$)|//|[\x00-\x1f\x7f]")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_SLASH_RUNS = re.compile(r"//+")
# A realm is a quoted-string in a header: printable ASCII without '"' or '\\'
# (anything else fails to encode, or is a control character, at the first 401).
_REALM = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+")
# RFC 6750 error_description: printable ASCII except '"' and '\\' (and latin-1 for the server).
_DESCRIPTION_UNSAFE = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")

#: One event per decision: allowed (INFO), denied (INFO), unavailable (WARNING).
#: Fields are in ``extra`` (``hfauth_*``); no token, only its fingerprint.
audit_logger = logging.getLogger("hfauth_mw.audit")
logger = logging.getLogger("hfauth_mw")


class PrincipalMemo(Generic[V]):
    """Values built once per cached principal, for the hot path.

    A cached token yields the same :class:`~hfauth_mw.Principal` object on
    every request, so what is derived from it (a RequestAuth, a Starlette
    user) can be built once. Keyed by ``id()``: each entry holds its
    principal, so no other object can have that id while the entry lives.
    Bounded: at ``maxsize`` entries the table starts again empty, so make it
    at least the token cache's size, or busy principals are rebuilt over
    and over.

    The hot path reads ``table`` itself (``table.get(id(principal))``, then
    :meth:`get` on a miss): a method call per request costs more than the lookup.
    """

    __slots__ = ("_build", "_maxsize", "table")

    def __init__(self, build: Callable[[Principal], V], maxsize: int) -> None:
        self._build = build
        self._maxsize = maxsize
        self.table: dict[int, tuple[Principal, V]] = {}

    def get(self, principal: Principal) -> V:
        hit = self.table.get(id(principal))
        if hit is not None:
            return hit[1]
        if len(self.table) >= self._maxsize:
            self.table.clear()
        value = self._build(principal)
        self.table[id(principal)] = (principal, value)
        return value


@dataclass(frozen=True, slots=True)
class RepoRule:
    """Requests matching ``method`` and ``path`` need ``access`` on a repository
    built from the path's ``{owner}`` and ``{name}`` (and optional ``{type}``:
    ``model``/``models``/``dataset``/``datasets``/``space``/``spaces``).

    Use :func:`require_read` and :func:`require_write` to build them.
    """

    methods: frozenset[str]
    template: str
    access: Access
    repo_type: str = "model"
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = _PLACEHOLDER.findall(self.template)
        if not self.template.startswith("/") or not {"owner", "name"} <= set(names):
            raise ConfigurationError(
                f"rule path {self.template!r} must start with '/' "
                "and contain {owner} and {name}"
            )
        if len(names) != len(set(names)) or not set(names) <= {"owner", "name", "type"}:
            raise ConfigurationError(
                f"rule path {self.template!r} may use {{owner}}, {{name}} and {{type}}, once each"
            )
        if self.repo_type not in _REPO_TYPES:
            raise ConfigurationError(f"repo_type must be one of {sorted(_REPO_TYPES)}")
        regex, position = "", 0
        for match in _PLACEHOLDER.finditer(self.template):
            regex += re.escape(self.template[position : match.start()])
            regex += f"(?P<{match.group(1)}>[^/]+)"
            position = match.end()
        # One trailing slash either way: Werkzeug with strict_slashes=False and
        # many hand-written routers serve "/x/" as "/x", and a rule that missed
        # the variant would let it through unguarded.
        regex += re.escape(self.template[position:].rstrip("/")) + "/?"
        object.__setattr__(self, "pattern", re.compile(regex))

    def accepts(self, method: str) -> bool:
        """Whether the rule names ``method`` (a GET rule covers HEAD: servers answer
        HEAD with the GET handler)."""
        methods = self.methods
        return "*" in methods or method in methods or (method == "HEAD" and "GET" in methods)

    def repo_from(self, match: re.Match[str]) -> Repo | None:
        """The repository a matching path names, or ``None`` if it names no valid one."""
        values = match.groupdict()
        repo_type = values.get("type") or self.repo_type
        repo_type = repo_type[:-1] if repo_type.endswith("s") else repo_type
        if repo_type not in _REPO_TYPES:
            return None
        try:
            return Repo.parse(f"{repo_type}:{values['owner']}/{values['name']}")
        except ValueError:
            return None


def _rule(spec: str, access: Access, repo_type: str) -> RepoRule:
    method, _, path = spec.strip().partition(" ")
    if not path:
        raise ConfigurationError(f"rule {spec!r} must look like 'POST /models/{{owner}}/{{name}}'")
    methods = frozenset(m.strip().upper() for m in method.split(","))
    return RepoRule(methods, path.strip(), access, repo_type)


def require_read(spec: str, *, repo_type: str = "model") -> RepoRule:
    """``require_read("POST /v1/models/{owner}/{name}/infer")``: read access on that repo."""
    return _rule(spec, "read", repo_type)


def require_write(spec: str, *, repo_type: str = "model") -> RepoRule:
    """``require_write("PUT /v1/models/{owner}/{name}")``: write access on that repo."""
    return _rule(spec, "write", repo_type)


@dataclass(frozen=True, slots=True)
class RequestAuth:
    """What the middleware attached to a request: the caller and the rules.

    Route code uses it to check access on repositories it picks itself::

        auth.require(Repo.parse("model:acme/sentiment"), "write")
    """

    principal: Principal
    policy: AccessPolicy
    scheme: str | None = None

    def can_read(self, repo: Repo | str) -> Decision:
        return self.policy.can_read(self.principal, _as_repo(repo))

    def can_write(self, repo: Repo | str) -> Decision:
        return self.policy.can_write(self.principal, _as_repo(repo))

    def has_permission(self, permission: str, entity: Entity | Repo | None = None) -> Decision:
        return self.policy.has_permission(self.principal, permission, entity)

    def require(self, repo: Repo | str, access: Access = "read") -> Decision:
        """Return the decision if allowed; raise the matching 401/403 error if not
        (503 when the policy's callbacks fail)."""
        decision = self.policy.check(self.principal, _as_repo(repo), access)
        if not decision:
            raise denial(self.principal, decision)
        return decision

    def require_permission(self, permission: str, entity: Entity | Repo | None = None) -> Decision:
        decision = self.has_permission(permission, entity)
        if not decision:
            raise denial(self.principal, decision)
        return decision


#: What :meth:`Guard.begin` hands a driver when a request needs I/O.
RequestFlow = Generator[Work, Any, RequestAuth]


def _as_repo(repo: Repo | str) -> Repo:
    return repo if isinstance(repo, Repo) else Repo.parse(repo)


@dataclass(frozen=True, slots=True)
class RepoRequirement:
    """What a route decorator or dependency needs: ``access`` on the repository
    ``repo_type:{owner}/{name}`` built from the route's ``owner_arg`` and
    ``name_arg`` parameters. Validated once, when the route is declared."""

    access: Access
    repo_type: str = "model"
    owner_arg: str = "owner"
    name_arg: str = "name"

    def __post_init__(self) -> None:
        if self.access not in ("read", "write"):
            raise ConfigurationError(f"access must be 'read' or 'write', not {self.access!r}")
        if self.repo_type not in _REPO_TYPES:
            raise ConfigurationError(f"repo_type must be one of {sorted(_REPO_TYPES)}")

    @property
    def needed(self) -> str:
        """The permission this needs: ``repo.content.read`` or ``repo.write``."""
        return WRITE_PERMISSION if self.access == "write" else READ_PERMISSION

    def check(self, auth: RequestAuth, params: Mapping[str, object]) -> Decision:
        """The decision if ``auth`` may; else raise the 401/403 error. An owner or
        name that is not a valid repository id is denied."""
        for arg in (self.owner_arg, self.name_arg):
            if arg not in params:
                raise RuntimeError(f"hfauth-mw: the route has no {arg!r} parameter")
        owner, name = params[self.owner_arg], params[self.name_arg]
        try:
            repo = Repo.parse(f"{self.repo_type}:{owner}/{name}")
        except ValueError:
            reason = f"{self.access} denied: not a valid {self.repo_type} repository id"
            raise denial(auth.principal, Decision(False, reason, self.needed)) from None
        return auth.require(repo, self.access)


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


class GuardOptions(TypedDict, total=False):
    """The keyword options of :class:`Guard`, shared by every adapter's signature."""

    realm: str
    public_paths: Iterable[str]
    allow_anonymous: bool
    allow_basic: bool
    query_param: str | None
    max_header_bytes: int
    rules: Sequence[RepoRule]
    method_policy: bool
    policy: AccessPolicy | None
    limiter: FailureLimiter | Literal["default"] | None


class Guard:
    """The validated options of a middleware and the per-request decision.

    Options (all validated here, once):

    ``realm``: the realm of the ``WWW-Authenticate`` challenges.
    ``public_paths``: paths served without credentials; ``"/health"`` is
    exact, ``"/docs/*"`` is a prefix. Paths with ``.``/``..`` segments or
    ``//`` are never public.
    ``allow_anonymous``: requests without credentials go on as the anonymous
    principal; bad credentials are still refused.
    ``allow_basic``: accept the token as the HTTP Basic password.
    ``query_param``: name of a query parameter that may carry the token (off:
    RFC 6750 says SHOULD NOT).
    ``rules``: :class:`RepoRule` list, first match wins.
    ``method_policy``: for requests no rule matches, safe methods need any
    valid token and other methods a token that can write.
    ``policy``: the :class:`~hfauth_mw.AccessPolicy` telling which repos are
    public or gated and who created what.
    ``limiter``: the brute-force guard (:class:`~hfauth_mw.FailureLimiter`,
    on by default: 30 failures per minute per client); ``None`` turns it off.

    :meth:`credentials` and :meth:`authorize` are the hooks for checks of
    one's own: override them in a subclass (or set them on the instance), and
    they are called on every request, the cached ones included.
    """

    def __init__(
        self,
        authenticator: Authenticator,
        *,
        realm: str = "hfauth-mw",
        public_paths: Iterable[str] = (),
        allow_anonymous: bool = False,
        allow_basic: bool = True,
        query_param: str | None = None,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        rules: Sequence[RepoRule] = (),
        method_policy: bool = True,
        policy: AccessPolicy | None = None,
        limiter: FailureLimiter | Literal["default"] | None = "default",
    ) -> None:
        require_instance(
            "authenticator", authenticator, Authenticator, "an hfauth_mw.Authenticator"
        )
        if not isinstance(realm, str) or not _REALM.fullmatch(realm):
            raise ConfigurationError(
                "realm must be non-empty printable ASCII text, without quotes or backslashes, "
                f"not {shown(realm)}"
            )
        require_int("max_header_bytes", max_header_bytes, 256, 65536)
        if query_param is not None and not (
            isinstance(query_param, str) and re.fullmatch(r"[A-Za-z0-9_\-.]+", query_param)
        ):
            raise ConfigurationError(f"query_param {shown(query_param)} is not a parameter name")
        rules = require_items("rules", rules, "[require_read('GET /models/{owner}/{name}')]")
        if not all(isinstance(rule, RepoRule) for rule in rules):
            raise ConfigurationError("rules must be built with require_read() or require_write()")
        if policy is not None:
            require_instance("policy", policy, AccessPolicy, "an hfauth_mw.AccessPolicy or None")
        if limiter is not None and limiter != "default" and not _is_limiter(limiter):
            raise ConfigurationError(
                "limiter must be 'default', None (off), or a FailureLimiter (or an object "
                f"with its check(), failed() and trusted_proxies), not {shown(limiter)}"
            )
        self.authenticator = authenticator
        self.realm = realm
        self.exact_public, self.prefix_public = _split_public_paths(
            require_items("public_paths", public_paths, "['/health', '/docs/*']")
        )
        self.allow_anonymous = require_bool("allow_anonymous", allow_anonymous)
        self.allow_basic = require_bool("allow_basic", allow_basic)
        self.query_param = query_param
        self.max_header_bytes = max_header_bytes
        self.rules = rules
        self.method_policy = require_bool("method_policy", method_policy)
        self.policy = policy if policy is not None else AccessPolicy()
        self.limiter = (
            FailureLimiter(timer=authenticator.cache.timer) if limiter == "default" else limiter
        )
        self._plan_short_path()
        # RequestAuth is immutable: one per cached principal and scheme.
        self._request_auth: dict[str | None, PrincipalMemo[RequestAuth]] = {
            scheme: self._request_auth_memo(scheme) for scheme in (None, *get_args(Scheme))
        }
        self._bearer_auth = self._request_auth["bearer"]
        challenge = f'Bearer realm="{realm}"'
        self._challenges = [("www-authenticate", challenge)]
        if allow_basic:
            self._challenges.append(("www-authenticate", f'Basic realm="{realm}"'))

    def __setattr__(self, name: str, value: object) -> None:
        object.__setattr__(self, name, value)
        if name in _SHORT_PATH_INPUTS and "_plain_limiter" in self.__dict__:
            self._plan_short_path()  # a hook or limiter set on the instance after start-up

    def _plan_short_path(self) -> None:
        """What the cached short path of :meth:`begin` may take for granted.

        Only our own limiter's lockouts are known without asking ``check()``;
        ``authorize()`` may be skipped, and ``credentials()`` read past, only
        where they are ours: one a subclass or the instance defines is called
        on every request, as the long path calls it.
        """
        hooks = self.__dict__
        self._plain_limiter = type(self.limiter) is FailureLimiter
        self._own_authorize = type(self).authorize is _AUTHORIZE and "authorize" not in hooks
        self._own_credentials = (
            type(self).credentials is _CREDENTIALS and "credentials" not in hooks
        )

    def _request_auth_memo(self, scheme: str | None) -> PrincipalMemo[RequestAuth]:
        return PrincipalMemo(
            lambda principal: RequestAuth(principal, self.policy, scheme),
            self.authenticator.cache.maxsize,
        )

    def __repr__(self) -> str:
        return (
            f"Guard(realm={self.realm!r}, source={self.authenticator.source!r}, "
            f"allow_anonymous={self.allow_anonymous}, rules={len(self.rules)})"
        )

    # --- per request -----------------------------------------------------------------

    def is_public(self, path: str) -> bool:
        if path in self.exact_public:
            return not _UNSAFE_PATH.search(path)
        if self.prefix_public and path.startswith(self.prefix_public):
            return not _UNSAFE_PATH.search(path)
        return False

    def credentials(
        self, authorization: Sequence[bytes | str], query_tokens: Sequence[str] = ()
    ) -> Credentials | None:
        return parse_credentials(
            authorization,
            query_tokens=query_tokens if self.query_param else (),
            allow_basic=self.allow_basic,
            max_header_bytes=self.max_header_bytes,
        )

    def begin(
        self,
        method: str,
        path: str,
        authorization: Sequence[bytes | str],
        query_tokens: Sequence[str] = (),
        peer: str | None = None,
        forwarded_for: str | None = None,
    ) -> RequestAuth | RequestFlow:
        """The decision for one request, from its raw headers.

        ``peer`` is the address the connection comes from and
        ``forwarded_for`` the ``X-Forwarded-For`` header; the brute-force guard
        resolves the client from them (see :meth:`client_address`) only when
        it needs to. Applies the brute-force guard, parses the credentials,
        authenticates, authorizes, and writes one audit event. Raises
        :class:`~hfauth_mw.AuthenticationError` when the request must stop.

        Returns the :class:`RequestAuth` at once when no I/O is needed (a
        cached token: the hot path, no generator), else a flow for the
        authenticator's ``run_sync``/``run_async`` that finishes the job. The
        commonest request, one canonical ``Bearer`` header with a cached
        token, skips the parser (:meth:`_cached_bearer`); the answers are the same.
        """
        started = time.perf_counter()
        limiter = self.limiter
        if (
            len(authorization) == 1
            and not query_tokens
            and self._own_credentials
            # Not while some client is locked out: the brute-force guard then
            # needs every client's address. (_blocked is read lock-free, as
            # FailureLimiter.check does; the call is only for the rare case.)
            # A limiter of another kind always gets every client's address.
            and (
                limiter is None
                or (self._plain_limiter and not (limiter._blocked and limiter.locking_out()))
            )
        ):
            answer = self._cached_bearer(
                method, path, authorization[0], peer, forwarded_for, started
            )
            if isinstance(answer, RequestAuth):
                return answer
            parsed = answer
        else:
            parsed = None
        method = method.upper()  # servers pass "get" through; routers may still serve it
        client = self.client_address(peer, forwarded_for)
        credentials: Credentials | None = None
        principal: Principal | None = None
        try:
            if self.limiter is not None:
                self.limiter.check(client)
            if parsed is not None:
                # A well-formed Bearer token the cache has no fresh answer for:
                # already parsed and hashed once, and the flow reads the cache itself.
                credentials = parsed
                return self._resume(method, path, client, credentials, started)
            credentials = self.credentials(authorization, query_tokens)
            if credentials is None:
                if not self.allow_anonymous:
                    raise MissingCredentials()
                principal = ANONYMOUS
            else:
                principal = self.authenticator.cached(credentials)
                if principal is None:
                    return self._resume(method, path, client, credentials, started)
            self.authorize(method, path, principal)
        except AuthenticationError as error:
            self._refused(error, method, path, client, credentials, principal, started)
            raise
        return self._allowed(method, path, client, credentials, principal, started)

    def _cached_bearer(
        self,
        method: str,
        path: str,
        authorization: bytes | str,
        peer: str | None,
        forwarded_for: str | None,
        started: float,
    ) -> RequestAuth | Credentials | None:
        """:meth:`begin` for the common request, cheaply; else what the long way needs.

        Decides only when the one ``Authorization`` header is a well-formed
        ``Bearer`` header (the parser's own grammar) and the token is fresh in
        the in-process cache: then no :class:`Credentials` and no client
        address are needed unless an audit event is written. A well-formed
        token without a fresh answer comes back as its :class:`Credentials`,
        so that the long way does not parse and hash it again; anything else
        comes back as ``None``.
        """
        if isinstance(authorization, str):
            # WSGI servers hand headers over as latin-1 text; tokens are ASCII.
            if not authorization.isascii():
                return None
            authorization = authorization.encode("ascii")
        if len(authorization) > self.max_header_bytes:
            return None
        # The parser's own grammar: a token cached through the API without
        # the parser must not be accepted in a header the parser refuses.
        # bearer_token's own first test, made here: the call costs more than it.
        if authorization[:10] == b"Bearer hf_" and authorization[10:].isalnum():
            token = authorization[7:]
        else:
            parsed = bearer_token(authorization)
            if parsed is None:
                return None
            token = parsed
        digest = sha256(token).digest()
        principal = self.authenticator.fresh(digest)
        if principal is None:
            return Credentials(token.decode("ascii"), "bearer", digest)
        method = method.upper()
        # With no rules, a safe method on a printable path is always allowed
        # (authorize would only look for control characters): skip the call.
        if (
            self.rules
            or method not in SAFE_METHODS
            or not path.isprintable()
            or not self._own_authorize
        ):
            try:
                self.authorize(method, path, principal)
            except AuthenticationError as error:
                client, credentials = self._audited(token, digest, peer, forwarded_for)
                self._refused(error, method, path, client, credentials, principal, started)
                raise
        if not audit_logger.isEnabledFor(logging.INFO):
            hit = self._bearer_auth.table.get(id(principal))
            return hit[1] if hit is not None else self._bearer_auth.get(principal)
        client, credentials = self._audited(token, digest, peer, forwarded_for)
        return self._allowed(method, path, client, credentials, principal, started)

    def _audited(
        self, token: bytes, digest: bytes, peer: str | None, forwarded_for: str | None
    ) -> tuple[str | None, Credentials]:
        """The client and credentials of a short-path request, built only for an audit event."""
        credentials = Credentials(token.decode("ascii"), "bearer", digest)
        return self.client_address(peer, forwarded_for), credentials

    def _resume(
        self, method: str, path: str, client: str | None, credentials: Credentials, started: float
    ) -> RequestFlow:
        principal: Principal | None = None
        try:
            principal = yield from self.authenticator.flow(credentials)
            self.authorize(method, path, principal)
        except AuthenticationError as error:
            self._refused(error, method, path, client, credentials, principal, started)
            raise
        return self._allowed(method, path, client, credentials, principal, started)

    def request_flow(
        self,
        method: str,
        path: str,
        authorization: Sequence[bytes | str],
        query_tokens: Sequence[str] = (),
        peer: str | None = None,
        forwarded_for: str | None = None,
    ) -> RequestFlow:
        """:meth:`begin` as one flow, for callers that always drive a flow."""
        step = self.begin(method, path, authorization, query_tokens, peer, forwarded_for)
        if isinstance(step, RequestAuth):
            return step
        return (yield from step)

    def _refused(
        self,
        error: AuthenticationError,
        method: str,
        path: str,
        client: str | None,
        credentials: Credentials | None,
        principal: Principal | None,
        started: float,
    ) -> None:
        if self.limiter is not None and isinstance(error, InvalidToken | InvalidRequest):
            self.limiter.failed(client)
        self._audit(error, method, path, client, credentials, principal, started)

    def _allowed(
        self,
        method: str,
        path: str,
        client: str | None,
        credentials: Credentials | None,
        principal: Principal,
        started: float,
    ) -> RequestAuth:
        if audit_logger.isEnabledFor(logging.INFO):
            self._audit(None, method, path, client, credentials, principal, started)
        return self._request_auth[credentials.scheme if credentials else None].get(principal)

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The address the brute-force guard keys on (see :func:`client_address`)."""
        if self.limiter is None:
            return None
        return client_address(peer, forwarded_for, self.limiter.trusted_proxies)

    def _audit(
        self,
        error: AuthenticationError | None,
        method: str,
        path: str,
        client: str | None,
        credentials: Credentials | None,
        principal: Principal | None,
        started: float,
    ) -> None:
        if error is None:
            event, status, level, reason = "allowed", 200, logging.INFO, "allowed"
        elif isinstance(error, SourceUnavailable):
            event, status, level, reason = "unavailable", 503, logging.WARNING, error.description
        else:
            event, status, level = "denied", error.status_code, logging.INFO
            reason = error.description
        if not audit_logger.isEnabledFor(level):
            return
        fingerprint = credentials.fingerprint if credentials else None
        name = _loggable(principal.name) if principal else None
        method, path = _loggable(method), _loggable(path)
        latency_ms = round((time.perf_counter() - started) * 1000, 3)
        audit_logger.log(
            level,
            "%s %s %s: %s (user %s, token %s, %.1f ms)",
            event,
            method,
            path,
            reason,
            name or "-",
            fingerprint or "-",
            latency_ms,
            extra={
                "hfauth_event": event,
                "hfauth_status": status,
                "hfauth_method": method,
                "hfauth_path": path,
                "hfauth_client": client,
                "hfauth_fingerprint": fingerprint,
                "hfauth_principal": name,
                "hfauth_token_role": principal.token_role if principal else None,
                "hfauth_source": self.authenticator.source.name,
                "hfauth_reason": reason,
                "hfauth_latency_ms": latency_ms,
            },
        )

    def authorize(self, method: str, path: str, principal: Principal) -> None:
        """Apply the rules, then the method policy; raises the 401/403/503 to answer.

        The first rule whose method and path match decides. A path some rule
        guards, asked with a method no rule names, still needs access to that
        repository: read for safe methods, write for the others. A guarded path
        that names no valid repository is refused, never waved through.

        The rules see the path the app's router serves, not a variant of it
        that matches no rule: a path with control characters is refused
        (Starlette's route regexes end in ``$``, which also matches before a
        final newline, so ``/infer%0A`` would be served as ``/infer``), and
        runs of slashes count as one (Werkzeug's router drops leading ones,
        so ``//v1/...`` would be served as ``/v1/...``).
        """
        if not path.isprintable() and _CONTROL_CHARS.search(path):
            raise InvalidRequest("The request path holds control characters")
        if "//" in path:
            path = _SLASH_RUNS.sub("/", path)
        guarded: RepoRule | None = None
        for rule in self.rules:
            match = rule.pattern.fullmatch(path)
            if match is None:
                continue
            if rule.accepts(method):
                self._require_repo(principal, rule.repo_from(match), rule.access)
                return
            if guarded is None:
                guarded, guarded_match = rule, match
        if guarded is not None:
            access: Access = "read" if method in SAFE_METHODS else "write"
            self._require_repo(principal, guarded.repo_from(guarded_match), access)
            return
        if (
            self.method_policy
            and method not in SAFE_METHODS
            and not _can_write_somewhere(principal)
        ):
            role = principal.token_role or principal.auth_type
            raise denial(
                principal,
                Decision(
                    False,
                    f"write denied: {method} needs a token that can write (token role {role})",
                    WRITE_PERMISSION,
                ),
            )

    def _require_repo(self, principal: Principal, repo: Repo | None, access: Access) -> None:
        needed = READ_PERMISSION if access == "read" else WRITE_PERMISSION
        if repo is None:
            reason = f"{access} denied: the path does not name a valid repository"
            raise denial(principal, Decision(False, reason, needed))
        try:
            decision = self.policy.check(principal, repo, access)
        except AuthenticationError:
            raise  # the policy's callbacks failed: a 503 already
        except Exception:
            # A policy of the server's own failed in the middleware's rules: 503.
            logger.exception("hfauth-mw: the access policy failed on %s", repo)
            raise SourceUnavailable(
                "Access to this repository cannot be checked right now"
            ) from None
        if not decision:
            raise denial(principal, decision)

    # --- answers ---------------------------------------------------------------------

    def error_response(self, error: AuthenticationError) -> ErrorResponse:
        description = _DESCRIPTION_UNSAFE.sub("?", error.description.replace('"', "'"))
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
        body: dict[str, Any] = {
            "error": error.error or _BODY_ERROR.get(error.status_code, "unauthorized"),
            "error_description": error.description,
        }
        if isinstance(error, InsufficientScope):
            body["scope"] = error.scope
        return ErrorResponse(error.status_code, headers, json.dumps(body).encode("utf-8"))


_BODY_ERROR = {401: "unauthorized", 429: "too_many_requests", 503: "temporarily_unavailable"}
# Guard's own hooks, kept before anything can patch the class, and the attributes
# whose change on an instance re-plans the short path.
_AUTHORIZE = Guard.authorize
_CREDENTIALS = Guard.credentials
_SHORT_PATH_INPUTS = frozenset({"authorize", "credentials", "limiter"})


def _loggable(text: str) -> str:
    """``text`` for one audit line: control characters escaped (a decoded ``%0A``
    in a path would start a forged line of its own) and anything shaped like a
    token masked (a token pasted into a URL by mistake)."""
    if not text.isprintable():
        text = "".join(
            char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
            for char in text
        )
    return TOKEN_SHAPED.sub("hf_***", text) if "hf_" in text or "api_org_" in text else text


def _can_write_somewhere(principal: Principal) -> bool:
    if principal.token_role == "write":
        return True
    if principal.token_role == "fineGrained":
        return any("repo.write" in grant.permissions for grant in principal.scoped)
    return False


def _is_limiter(limiter: object) -> bool:
    """What the guard uses of a limiter (a FailureLimiter, or one of the user's own)."""
    return (
        callable(getattr(limiter, "check", None))
        and callable(getattr(limiter, "failed", None))
        and hasattr(limiter, "trusted_proxies")
    )


def _split_public_paths(paths: Iterable[str]) -> tuple[frozenset[str], tuple[str, ...]]:
    exact, prefixes = set(), []
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(f"public path {path!r} must start with '/'")
        if path.endswith("*"):
            prefixes.append(path[:-1])
        elif "*" in path:
            raise ConfigurationError(f"public path {path!r}: '*' is allowed only at the end")
        else:
            exact.add(path)
    return frozenset(exact), tuple(prefixes)
