"""Which requests need what: path classes, repository rules, the method map.

Built once from the options and read on every request:

* :class:`PathRules`: whether a path is public (served unchecked), optional
  (a token is checked if one is sent) or protected (a token is needed).
* :class:`RepoRule` (:func:`require_read`, :func:`require_write`): requests
  whose path names a repository need read or write access to it.
* :class:`RouteRules`: the rules, then the method map for requests no rule
  matches, as one :meth:`RouteRules.authorize`.
* :class:`RepoRequirement`: the same question asked by a route decorator or a
  dependency, with the repository taken from the route's parameters.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from ._answers import denial
from ._exceptions import AuthenticationError, ConfigurationError, InvalidRequest, SourceUnavailable
from ._principal import Principal
from ._request_auth import RequestAuth
from ._rules import (
    READ_PERMISSION,
    REPO_TYPES,
    WRITE_PERMISSION,
    Access,
    AccessPolicy,
    Decision,
    Repo,
)

__all__ = [
    "DEFAULT_METHOD_ACCESS",
    "SAFE_METHODS",
    "PathClass",
    "PathRules",
    "RepoRequirement",
    "RepoRule",
    "RouteRules",
    "require_read",
    "require_write",
]

logger = logging.getLogger("hfauth_mw")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: What a request no rule matches needs, by method. Inference is a read: the
#: Hub documents read tokens for "doing inference", and every inference call
#: of the OpenAI-compatible and TGI APIs is a POST. Methods not listed need write.
DEFAULT_METHOD_ACCESS: Mapping[str, Access] = {
    "GET": "read",
    "HEAD": "read",
    "OPTIONS": "read",
    "POST": "read",
    "PUT": "write",
    "PATCH": "write",
    "DELETE": "write",
}

PathClass = Literal["public", "optional", "protected"]

_REPO_TYPES = frozenset(REPO_TYPES)
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNSAFE_PATH = re.compile(r"(?:^|/)\.{1,2}(?:/|$)|//|[\x00-\x1f\x7f]")
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_SLASH_RUNS = re.compile(r"//+")


class _PathSet:
    """Exact paths and ``prefix*`` paths; paths with ``.``/``..`` segments, ``//``
    or control characters never match (a router may serve them as another path)."""

    __slots__ = ("exact", "prefixes")

    def __init__(self, what: str, paths: Iterable[str]) -> None:
        exact, prefixes = set(), []
        for path in paths:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ConfigurationError(f"{what} {path!r} must start with '/'")
            if path.endswith("*"):
                prefixes.append(path[:-1])
            elif "*" in path:
                raise ConfigurationError(f"{what} {path!r}: '*' is allowed only at the end")
            else:
                exact.add(path)
        self.exact = frozenset(exact)
        self.prefixes = tuple(prefixes)

    def __bool__(self) -> bool:
        return bool(self.exact or self.prefixes)

    def matches(self, path: str) -> bool:
        if path in self.exact or (self.prefixes and path.startswith(self.prefixes)):
            return not _UNSAFE_PATH.search(path)
        return False


class PathRules:
    """Which paths need a token.

    ``public_paths`` are served unchecked; ``optional_paths`` check a token
    when one is sent (none: the anonymous principal; a bad one: refused);
    every other path needs a token (default deny). ``protected_paths``
    inverts the default: only those paths need a token (and
    ``optional_paths`` are still checked), every other path is served
    unchecked; it cannot be combined with ``public_paths``.
    """

    __slots__ = ("_default", "optional", "protected", "public")

    def __init__(
        self,
        public_paths: Iterable[str] = (),
        optional_paths: Iterable[str] = (),
        protected_paths: Iterable[str] | None = None,
    ) -> None:
        self.public = _PathSet("public path", public_paths)
        self.optional = _PathSet("optional path", optional_paths)
        self.protected = _PathSet("protected path", protected_paths or ())
        if protected_paths is not None and self.public:
            raise ConfigurationError(
                "give public_paths (everything else needs a token) or protected_paths "
                "(only those need a token), not both"
            )
        if protected_paths is not None and not self.protected:
            raise ConfigurationError(
                "protected_paths is empty: no path would need a token; leave it out to "
                "protect every path"
            )
        self._default: PathClass = "public" if protected_paths is not None else "protected"

    @property
    def everything_protected(self) -> bool:
        """No path is public or optional: the check for every request."""
        return self._default == "protected" and not self.public and not self.optional

    def classify(self, path: str) -> PathClass:
        if self.public and self.public.matches(path):
            return "public"
        if self.optional and self.optional.matches(path):
            return "optional"
        if self._default == "protected" or self.protected.matches(path):
            return "protected"
        # Only listed paths are protected: a path that is not safely one of them
        # (a "..", "//" or control-character spelling of it) is still checked.
        return "protected" if _UNSAFE_PATH.search(path) else "public"


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


def method_access_map(method_policy: bool | Mapping[str, str]) -> dict[str, Access] | None:
    """The validated method map: ``True`` the default, ``False`` none (any valid
    token for any method), or a mapping of methods to ``"read"``/``"write"``."""
    if method_policy is True:
        return dict(DEFAULT_METHOD_ACCESS)
    if method_policy is False:
        return None
    if not isinstance(method_policy, Mapping):
        raise ConfigurationError(
            "method_policy must be True (the default method map), False (any valid token "
            "for any method), or a mapping of methods to 'read' or 'write' such as "
            "{'POST': 'write'}"
        )
    merged: dict[str, Access] = dict(DEFAULT_METHOD_ACCESS)
    for method, access in method_policy.items():
        if not isinstance(method, str) or not method.isalpha():
            raise ConfigurationError(f"method_policy: {method!r} is not an HTTP method")
        if access not in ("read", "write"):
            raise ConfigurationError(
                f"method_policy[{method!r}] must be 'read' or 'write', not {access!r}"
            )
        merged[method.upper()] = "read" if access == "read" else "write"
    return merged


class RouteRules:
    """The repository rules, then the method map, for one request."""

    __slots__ = ("method_access", "open_methods", "policy", "rules")

    def __init__(
        self,
        rules: Sequence[RepoRule],
        method_access: Mapping[str, Access] | None,
        policy: AccessPolicy,
    ) -> None:
        self.rules = tuple(rules)
        self.method_access = method_access
        self.policy = policy
        #: Methods for which, on a printable path, any valid token is enough (no
        #: rule can match, and the method map asks only for a read): ``None``
        #: for every method (no rules, no method map).
        self.open_methods: frozenset[str] | None = frozenset()
        if not self.rules:
            self.open_methods = (
                None
                if method_access is None
                else frozenset(m for m, access in method_access.items() if access == "read")
            )

    def allows_any_token(self, method: str) -> bool:
        """Whether, with no rule, ``method`` needs nothing more than a valid token."""
        return self.method_access is None or self.method_access.get(method) == "read"

    def authorize(self, method: str, path: str, principal: Principal) -> None:
        """Apply the rules, then the method map; raises the 400/401/403/503 to answer.

        The first rule whose method and path match decides. A path some rule
        guards, asked with a method no rule names, still needs access to that
        repository: read for safe methods, write for the others (a POST no
        rule names, on a repository's path, may create or change it). A
        guarded path that names no valid repository is refused, never waved
        through.

        The rules see the path the app's router serves, not a variant of it
        that matches no rule: a path with control characters is refused
        (Starlette's route regexes end in ``$``, which also matches before a
        final newline, so ``/infer%0A`` would be served as ``/infer``), and
        runs of slashes count as one (Werkzeug's router drops leading ones,
        so ``//v1/...`` would be served as ``/v1/...``).
        """
        if not path.isprintable() and _CONTROL_CHARS.search(path):
            raise InvalidRequest("The request path holds control characters")
        if not self.rules:
            method_access = self.method_access
            if method_access is not None and method_access.get(method) != "read":
                self._by_method(method, principal)
            return
        if "//" in path:
            path = _SLASH_RUNS.sub("/", path)
        guarded: tuple[RepoRule, re.Match[str]] | None = None
        for rule in self.rules:
            match = rule.pattern.fullmatch(path)
            if match is None:
                continue
            if rule.accepts(method):
                self._require_repo(principal, rule.repo_from(match), rule.access)
                return
            if guarded is None:
                guarded = rule, match
        if guarded is not None:
            access: Access = "read" if method in SAFE_METHODS else "write"
            self._require_repo(principal, guarded[0].repo_from(guarded[1]), access)
            return
        self._by_method(method, principal)

    def _by_method(self, method: str, principal: Principal) -> None:
        if self.allows_any_token(method) or _can_write_somewhere(principal):
            return
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


def _can_write_somewhere(principal: Principal) -> bool:
    if principal.token_role == "write":
        return True
    if principal.token_role == "fineGrained":
        return any("repo.write" in grant.permissions for grant in principal.scoped)
    return False


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
