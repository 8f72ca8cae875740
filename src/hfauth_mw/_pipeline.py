"""The request pipeline: one sequence of named steps for every request.

An adapter reads the request into a :class:`RequestContext` (see
:mod:`hfauth_mw._adapters`) and asks :meth:`Guard.decide`. The steps, in order:

1. **path**: public paths are served unchecked (``None``); optional paths
   let a request without credentials through as the anonymous principal.
2. **limit**: the brute-force guard refuses a locked-out client (429).
3. **credentials**: the token from ``Authorization`` (Bearer, or Basic with
   the token as password) or the opted-in query parameter, hashed once.
4. **resolve**: the in-process cache; on a miss, the authenticator's flow
   (the shared tier, then the source), which needs I/O.
5. **authorize**: the route rules, then the method map, then the access rules.
6. **audit**: one event per decision.
7. **attach**: the :class:`~hfauth_mw.RequestAuth` for the request, built once
   per cached principal (per request when the hub decides: it carries the
   request's credentials for route code's own checks).

A cached token runs the same steps; being fast is a property of each step
(the limiter skips resolving the client while nobody is locked out, a cache
hit answers without a generator, the rules skip work they cannot refuse). A
request whose token needs I/O gets a generator from step 4 on, which the
adapter hands to a driver (:mod:`hfauth_mw._drivers`); the remaining steps
are the same methods. Nothing here does I/O.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Generator, Iterable, Mapping, Sequence
from typing import Any, Literal, TypedDict, get_args

from ._answers import Answers, ErrorFormat, ErrorResponse, denial
from ._audit import audit_levels, audit_logger, write_event
from ._authenticator import Authenticator
from ._authority import Authority, HubAuthority, personal
from ._breaker_limiter import FailureLimiter, client_address
from ._credentials import DEFAULT_MAX_HEADER_BYTES, Credentials, CredentialsStep, Scheme
from ._drivers import Together, Work
from ._exceptions import (
    AuthenticationError,
    ConfigurationError,
    InvalidRequest,
    InvalidToken,
    MissingCredentials,
)
from ._hub_access import HubAccessCheck
from ._principal import ANONYMOUS, Principal
from ._request import UNRESOLVED, RequestContext
from ._request_auth import PrincipalMemo, RequestAuth
from ._routes import (
    DEFAULT_MAX_BODY_BYTES,
    PathClass,
    PathRules,
    RepoRule,
    RouteRules,
    method_access_map,
    named_repo,
)
from ._rules import Access, AccessPolicy, Decision, Repo
from ._shared_tier import SharedFailureLimiter
from ._source_protocol import Invalid
from ._sources import HubWhoamiSource
from ._validation import require_bool, require_instance, require_int, require_items, shown

__all__ = ["Guard", "GuardOptions", "RequestContext", "RequestFlow"]

#: What :meth:`Guard.decide` hands a driver when a request needs I/O.
RequestFlow = Generator[Work, Any, RequestAuth]

_INFO = logging.INFO
#: Limiters whose lockouts are all in their ``lockouts`` table (read lock-free).
_OWN_LIMITERS = (FailureLimiter, SharedFailureLimiter)


class GuardOptions(TypedDict, total=False):
    """The keyword options of :class:`Guard`, shared by every adapter's signature."""

    realm: str
    public_paths: Iterable[str]
    optional_paths: Iterable[str]
    protected_paths: Iterable[str] | None
    allow_anonymous: bool
    allow_basic: bool
    query_param: str | None
    max_header_bytes: int
    rules: Sequence[RepoRule]
    method_policy: bool | Mapping[str, str]
    policy: AccessPolicy | None
    limiter: FailureLimiter | Literal["default"] | None
    error_format: ErrorFormat
    max_body_bytes: int
    authority: Authority | None


class Guard(CredentialsStep):
    """The validated options of a middleware, and the request pipeline.

    Options (all validated here, once):

    ``realm``: the realm of the ``WWW-Authenticate`` challenges.
    ``public_paths``: paths served without credentials; ``"/health"`` is
    exact, ``"/docs/*"`` is a prefix. Paths with ``.``/``..`` segments or
    ``//`` are never public.
    ``optional_paths``: paths where a token is checked if one is sent: a
    valid one sets the principal, none leaves the anonymous one, a bad one is
    refused.
    ``protected_paths``: only these paths need a token; every other path is
    served unchecked (for a site with an API inside). Not with ``public_paths``.
    ``allow_anonymous``: requests without credentials go on as the anonymous
    principal; bad credentials are still refused.
    ``allow_basic``: accept the token as the HTTP Basic password.
    ``query_param``: name of a query parameter that may carry the token (off:
    RFC 6750 says SHOULD NOT).
    ``rules``: :class:`RepoRule` list, first match wins.
    ``method_policy``: what requests no rule matches need, by method. ``True``
    (default): any valid token for GET, HEAD, OPTIONS and POST (inference is a
    read), a token that can write for PUT, PATCH, DELETE and anything else;
    a mapping such as ``{"POST": "write"}`` changes single methods; ``False``:
    any valid token for any method.
    ``policy``: the :class:`~hfauth_mw.AccessPolicy` telling which repos are
    public or gated and who created what.
    ``limiter``: the brute-force guard (:class:`~hfauth_mw.FailureLimiter`,
    on by default: 30 failures per minute per client); ``None`` turns it off.
    ``error_format``: the body of refusals: ``"rfc6750"`` (default),
    ``"openai"``, ``"hub"``, or a function (see :mod:`hfauth_mw._answers`).
    ``max_body_bytes``: the most a rule that reads the repository from the
    body reads of it (1 MiB; 413 past it).
    ``authority``: who decides the rules' repository access: ``"hub"`` (the
    default when the token source is a :class:`~hfauth_mw.HubWhoamiSource`:
    the hub's own auth-check, which alone knows gate grants, org policies and
    resource groups) or ``"local"`` (the local rules and ``policy``: the
    default for every other source).

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
        optional_paths: Iterable[str] = (),
        protected_paths: Iterable[str] | None = None,
        allow_anonymous: bool = False,
        allow_basic: bool = True,
        query_param: str | None = None,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
        rules: Sequence[RepoRule] = (),
        method_policy: bool | Mapping[str, str] = True,
        policy: AccessPolicy | None = None,
        limiter: FailureLimiter | Literal["default"] | None = "default",
        error_format: ErrorFormat = "rfc6750",
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        authority: Authority | None = None,
    ) -> None:
        require_instance(
            "authenticator", authenticator, Authenticator, "an hfauth_mw.Authenticator"
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
        if isinstance(method_policy, bool):
            require_bool("method_policy", method_policy)
        self.authenticator = authenticator
        self.answers = Answers(
            realm,
            require_bool("allow_basic", allow_basic),
            error_format,
            getattr(authenticator.source, "token_shape", None),
        )
        self.realm = realm
        self.paths = PathRules(
            require_items("public_paths", public_paths, "['/health', '/docs/*']"),
            require_items("optional_paths", optional_paths, "['/v1/models']"),
            None
            if protected_paths is None
            else require_items("protected_paths", protected_paths, "['/v1/*']"),
        )
        self._classify_paths = not self.paths.everything_protected
        self.allow_anonymous = require_bool("allow_anonymous", allow_anonymous)
        self.allow_basic = allow_basic
        self.query_param = query_param
        self.max_header_bytes = max_header_bytes
        self.policy = policy if policy is not None else AccessPolicy()
        self.hub = _hub_authority(authenticator, authority)
        self.routes = RouteRules(
            rules, method_access_map(method_policy), self.policy, decide_repos=self.hub is None
        )
        self.max_body_bytes = require_int("max_body_bytes", max_body_bytes, 1024, 1 << 30)
        # "default": the authenticator's, shared by every adapter built on it.
        self.limiter = authenticator.limiter if limiter == "default" else limiter
        # RequestAuth is immutable: one per cached principal and scheme.
        self._request_auth: dict[str | None, PrincipalMemo[RequestAuth]] = {
            scheme: self._request_auth_memo(scheme) for scheme in (None, *get_args(Scheme))
        }

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

    @property
    def rules(self) -> tuple[RepoRule, ...]:
        return self.routes.rules

    @property
    def method_policy(self) -> bool:
        """Whether requests no rule matches are checked by method at all."""
        return self.routes.method_access is not None

    # --- the pipeline ---------------------------------------------------------------

    def decide(
        self, request: RequestContext, *, lazy: bool = False
    ) -> RequestAuth | RequestFlow | None:
        """The decision for one request: ``None`` for a public path (serve it
        unchecked), the :class:`~hfauth_mw.RequestAuth` when no I/O is needed,
        else a flow for a driver that finishes the job. Raises
        :class:`~hfauth_mw.AuthenticationError` when the request must stop.

        ``lazy`` is for a check the app asks for itself on a path the
        middleware let through (or where no middleware runs): the path step
        is skipped and the request is always checked.
        """
        # 1. path: public paths are served unchecked; optional ones admit no token.
        path_class: PathClass = "protected"
        if self._classify_paths and not lazy:
            path_class = self.paths.classify(request.path)
            if path_class == "public":
                return None
        try:
            # 2. limit: only our own limiter's lockouts are known without asking
            # check() (and resolving the client): while nobody is locked out.
            limiter = self.limiter
            if limiter is not None and (
                type(limiter) not in _OWN_LIMITERS or (limiter.lockouts and limiter.locking_out())
            ):
                limiter.check(self.client(request))
            # 3. credentials
            credentials = request.credentials = self.credentials(
                request.authorization, request.query_tokens
            )
            principal: Principal | None
            if credentials is None:
                if not (self.allow_anonymous or path_class == "optional"):
                    raise MissingCredentials()
                principal = ANONYMOUS
            else:
                # 4. resolve: a fresh answer in the in-process cache, or a flow that asks
                principal = self.authenticator.fresh(credentials.digest)
            if principal is None:
                assert credentials is not None
                flow = self._resolve(request, credentials, self._hub_read_wanted(request))
            else:
                concluded = self._conclude(request, principal)
                if isinstance(concluded, RequestAuth):
                    return concluded
                flow = concluded  # the hub must decide on a repository
        except AuthenticationError as error:
            self._refused(request, error)
            raise
        return self._refusing(request, flow)

    def _refusing(self, request: RequestContext, flow: RequestFlow) -> RequestFlow:
        """``flow``, with the refusal it raises counted and audited once."""
        try:
            return (yield from flow)
        except AuthenticationError as error:
            self._refused(request, error)
            raise

    def _hub_read_wanted(self, request: RequestContext) -> Repo | None:
        """The repository a cold request's rule will ask the hub to read, if any:
        then whoami-v2 and the auth-check go out together (one round trip).
        Writes are not asked ahead: a read token never writes, without a call."""
        if self.hub is None or not self.routes.rules:
            return None
        credentials = request.credentials
        authenticator = self.authenticator
        source = authenticator.source
        cache = authenticator.cache
        if credentials is not None and (
            isinstance(cache.get(authenticator.cache_key(credentials.digest)), Invalid)
            # Not a token the hub is ever sent (too long, or not shaped as one).
            or (isinstance(source, HubWhoamiSource) and source.refuses_unasked(credentials))
        ):
            return None  # invalid without asking the hub anything
        try:
            needed = self.routes.requirement(request)
        except AuthenticationError:
            return None  # refused in step 5, after the token is known
        if needed is None or needed[1] != "read":
            return None
        return needed[0]

    def _resolve(
        self, request: RequestContext, credentials: Credentials, hub_read: Repo | None = None
    ) -> RequestFlow:
        """Step 4 for a token the cache has no fresh answer for (the
        authenticator's flow), then steps 5 to 7. With ``hub_read``, the hub's
        auth-check of that repository goes out at the same time."""
        token_flow = self.authenticator.flow(credentials, self.client(request))
        decided: Decision | None = None
        if hub_read is None:
            principal = yield from token_flow
        else:
            assert self.hub is not None
            answers = yield Together(
                (token_flow, self.hub.flow(credentials, None, hub_read, "read"))
            )
            principal, decision = answers
            if isinstance(principal, BaseException):
                raise principal  # the token's answer comes first: 401, 503
            if isinstance(decision, BaseException):
                raise decision
            decided = personal(decision, principal)
        concluded = self._conclude(request, principal, decided)
        if not isinstance(concluded, RequestAuth):
            concluded = yield from concluded
        return concluded

    def _ask_hub(
        self, request: RequestContext, principal: Principal, repo: Repo, access: Access
    ) -> RequestFlow:
        """Step 5 when the hub must decide on a repository: its auth-check, then
        steps 5 to 7 with that decision."""
        assert self.hub is not None
        decision = yield from self.hub.flow(request.credentials, principal, repo, access)
        concluded = self._conclude(request, principal, decision)
        assert isinstance(concluded, RequestAuth)  # decided: nothing more to ask
        return concluded

    def _conclude(
        self, request: RequestContext, principal: Principal, decided: Decision | None = None
    ) -> RequestAuth | RequestFlow:
        """Steps 5 to 7: authorize, audit, attach; a flow when the hub must first
        decide on a repository (``decided``: what it said)."""
        request.principal = principal
        routes = self.routes
        hub = self.hub
        if routes.request_rules and hub is None:  # a rule reading the repository from the request
            routes.authorize_request(request, principal)
        self.authorize(request.method, request.path, principal)
        if hub is not None and routes.rules:
            needed = routes.requirement(request)
            if needed is not None:
                access = needed[1]
                repo = named_repo(principal, needed[0], access)
                decision = (
                    decided
                    if decided is not None
                    else hub.cached(request.credentials, principal, repo, access)
                )
                if decision is None:
                    return self._ask_hub(request, principal, repo, access)
                request.decided_by = decision.decided_by
                if not decision:
                    raise denial(principal, decision)
        if audit_levels.get(_INFO) is not False and audit_logger.isEnabledFor(_INFO):
            self._audit(None, request)
        credentials = request.credentials
        if hub is not None:  # route code may ask the hub too: it needs the credentials
            scheme = credentials.scheme if credentials else None
            return RequestAuth(principal, self.policy, scheme, hub, credentials)
        memo = self._request_auth[credentials.scheme if credentials else None]
        hit = memo.table.get(id(principal))
        return hit[1] if hit is not None else memo.get(principal)

    def authorize(self, method: str, path: str, principal: Principal) -> None:
        """Step 5: the route rules, then the method map; raises the 400/401/403/503
        to answer (see :meth:`RouteRules.authorize
        <hfauth_mw._routes.RouteRules.authorize>`)."""
        routes = self.routes
        open_methods = routes.open_methods
        # Any valid token may: nothing to look up (the common inference request).
        # The anonymous caller has no token: the method map decides for it.
        if (
            (open_methods is None or method in open_methods)
            and path.isprintable()
            and not principal.is_anonymous
        ):
            return
        routes.authorize(method, path, principal)

    def reads_body(self, request: RequestContext) -> bool:
        """Whether the adapter reads this request's body before :meth:`decide`
        (at most ``max_body_bytes``, handed to the app unchanged): a rule needs
        it, and the request can get as far as that rule. One refused whatever
        its body says (no credentials where they are needed, malformed ones, a
        locked-out client) is refused unread: a client without a token must
        not hold a connection and a buffer while it trickles a body in."""
        if not self.routes.reads_body(request.method, request.path):
            return False
        try:
            if self.limiter is not None:
                self.limiter.check(self.client(request))
            credentials = self.credentials(request.authorization, request.query_tokens)
        except AuthenticationError:
            return False  # decide() refuses it, the same way, at step 2 or 3
        return (
            credentials is not None
            or self.allow_anonymous
            or (self._classify_paths and self.paths.classify(request.path) == "optional")
        )

    def client(self, request: RequestContext) -> str | None:
        """The address the brute-force guard keys on, resolved once per request."""
        client = request.client
        if client is UNRESOLVED:
            client = request.client = self.client_address(request.peer, request.forwarded_for)
        return client

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The address the brute-force guard keys on (see :func:`client_address`)."""
        if self.limiter is None:
            return None
        return client_address(peer, forwarded_for, self.limiter.trusted_proxies)

    def _refused(self, request: RequestContext, error: AuthenticationError) -> None:
        if self.limiter is not None and (
            isinstance(error, InvalidToken | InvalidRequest)
            or getattr(error, "charged_to_client", False)  # a token the upstream refused
        ):
            self.limiter.failed(self.client(request))
        self._audit(error, request)

    def _audit(self, error: AuthenticationError | None, request: RequestContext) -> None:
        write_event(
            error,
            method=request.method,
            path=request.path,
            client=self.client(request),
            credentials=request.credentials,
            principal=request.principal,
            source=self.authenticator.source.name,
            started=request.started,
            decided_by=request.decided_by,
        )

    # --- the same, for callers that pass the request's parts ------------------------

    def is_public(self, path: str) -> bool:
        """Whether ``path`` is served unchecked."""
        return self.paths.classify(path) == "public"

    def begin(
        self,
        method: str,
        path: str,
        authorization: Sequence[bytes | str],
        query_tokens: Sequence[str] = (),
        peer: str | None = None,
        forwarded_for: str | None = None,
    ) -> RequestAuth | RequestFlow:
        """The decision for one request from its raw parts, public paths
        included (:meth:`decide` with ``lazy=True``): the
        :class:`~hfauth_mw.RequestAuth`, or a flow for the authenticator's
        ``run_sync``/``run_async``."""
        request = RequestContext(method, path, authorization, query_tokens, peer, forwarded_for)
        decided = self.decide(request, lazy=True)
        assert decided is not None  # a lazy decision never skips the path
        return decided

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

    def error_response(self, error: AuthenticationError) -> ErrorResponse:
        """The RFC 6750 answer to ``error``."""
        return self.answers.render(error)


def _hub_authority(
    authenticator: Authenticator, authority: Authority | None
) -> HubAuthority | None:
    """The hub that decides the rules' repository access, or ``None`` (local rules)."""
    source = authenticator.source
    if authority is None:
        authority = "hub" if isinstance(source, HubWhoamiSource) else "local"
    if authority == "local":
        return None
    if authority != "hub":
        raise ConfigurationError(f"authority must be 'hub' or 'local', not {shown(authority)}")
    if not isinstance(source, HubWhoamiSource):
        raise ConfigurationError(
            "authority='hub' needs a hub as the token source (hub_url= or a "
            f"HubWhoamiSource); {type(source).__name__} has no auth-check: use "
            "authority='local'"
        )
    return authenticator.hub_authority(HubAccessCheck.for_source(source))


def _is_limiter(limiter: object) -> bool:
    """What the guard uses of a limiter (a FailureLimiter, or one of the user's own)."""
    return (
        callable(getattr(limiter, "check", None))
        and callable(getattr(limiter, "failed", None))
        and hasattr(limiter, "trusted_proxies")
    )
