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

import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from ._answers import denial
from ._exceptions import (
    AuthenticationError,
    ConfigurationError,
    InvalidBody,
    InvalidRequest,
    SourceUnavailable,
    UnknownModel,
)
from ._principal import Principal
from ._request_auth import RequestAuth
from ._rules import (
    NEEDED_PERMISSION,
    READ_PERMISSION,
    REPO_TYPES,
    WRITE_PERMISSION,
    Access,
    AccessPolicy,
    Decision,
    Repo,
    _line,
    can_write_somewhere,
)

if TYPE_CHECKING:
    from ._request import RequestContext

__all__ = [
    "DEFAULT_MAX_BODY_BYTES",
    "DEFAULT_METHOD_ACCESS",
    "SAFE_METHODS",
    "PathClass",
    "PathRules",
    "RepoFrom",
    "RepoRequirement",
    "RepoRule",
    "RouteRules",
    "from_body",
    "from_header",
    "openai_rules",
    "require_read",
    "require_write",
    "tgi_rules",
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
#: The most a rule that reads the repository from the body reads of it.
DEFAULT_MAX_BODY_BYTES = 1 << 20

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
class RepoFrom:
    """Where a rule finds the repository, when not in its path: a field of the
    JSON body (:func:`from_body`), a header (:func:`from_header`), or one fixed
    repository (a repo id given to :func:`require_read`).

    ``served`` lists what this server serves: repo ids, or a mapping of the
    names clients send to repo ids (``{"llama": "meta-llama/Llama-3.1-8B"}``).
    A name it does not list is answered 404 ``model_not_found``, as the OpenAI
    API answers. Without it, the name must itself be a repo id.
    """

    kind: Literal["body", "header", "fixed"]
    name: str
    served: Mapping[str, str] | None = None

    def repo(self, request: RequestContext, repo_type: str) -> Repo:
        """The repository this request names; raises InvalidBody (400) or
        UnknownModel (404)."""
        if self.kind == "fixed":
            value: object = self.name
        elif self.kind == "header":
            value = request.header(self.name)
            if value is None:
                raise InvalidBody(f"The request has no {self.name} header naming the model")
        else:
            value = _body_field(request.body, self.name)
        if not isinstance(value, str) or not value:
            raise InvalidBody(f"The {self.name!r} field must be a non-empty string")
        if self.served is not None:
            repo_id = self.served.get(value)
            if repo_id is None:
                raise UnknownModel(
                    f"The model {_shown_name(value)} does not exist or is not served here",
                    param=self.name if self.kind == "body" else None,
                )
        else:
            repo_id = value
        try:
            return Repo.parse(f"{repo_type}:{repo_id}")
        except ValueError:
            raise InvalidBody(
                f"The {self.name!r} field must name a repository as owner/name"
            ) from None


def _shown_name(value: str) -> str:
    """A client's model name for a message: printable, short, quoted, and with
    anything shaped like a token cut out (the message reaches the audit log,
    and a token pasted into the wrong field is a common slip)."""
    # Cut out tokens before shortening: a token cut in two would no longer match.
    text = _line(value[:256])
    return repr(text[:96] + ("..." if len(text) > 96 or len(value) > 256 else ""))


def _body_field(body: bytes | None, name: str) -> object:
    if body is None:  # pragma: no cover - the adapters read the body first
        raise InvalidBody("The request body was not read")
    try:
        document = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise InvalidBody("The request body is not valid JSON") from None
    except RecursionError:  # a few KiB of "[[[[...": the parser's stack, not the server's
        raise InvalidBody("The request body nests too deeply") from None
    if not isinstance(document, dict):
        raise InvalidBody("The request body must be a JSON object")
    if name not in document:
        raise InvalidBody(f"The request body has no {name!r} field")
    return document[name]


def _served(served: Mapping[str, str] | Iterable[str] | None) -> Mapping[str, str] | None:
    if served is None:
        return None
    if isinstance(served, str):
        raise ConfigurationError("served must be a list of repo ids or a mapping, not one string")
    mapping = dict(served) if isinstance(served, Mapping) else {repo: repo for repo in served}
    for name, repo_id in mapping.items():
        if not isinstance(name, str) or not name:
            raise ConfigurationError(f"served name {name!r} must be non-empty text")
        try:
            Repo.parse(f"model:{repo_id}")
        except (ValueError, TypeError):
            raise ConfigurationError(
                f"served[{name!r}] = {repo_id!r} is not a repo id (owner/name)"
            ) from None
    return mapping


def from_body(
    field: str = "model", *, served: Mapping[str, str] | Iterable[str] | None = None
) -> RepoFrom:
    """The repository is the JSON body's ``field`` (``"model"``, as in the
    OpenAI-compatible and TGI-style APIs), through ``served`` if given."""
    if not isinstance(field, str) or not field:
        raise ConfigurationError("from_body needs the name of a JSON field, e.g. 'model'")
    return RepoFrom("body", field, _served(served))


def from_header(name: str, *, served: Mapping[str, str] | Iterable[str] | None = None) -> RepoFrom:
    """The repository is the value of the header ``name``, through ``served`` if given."""
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9-]+", name):
        raise ConfigurationError(f"from_header needs a header name, not {name!r}")
    return RepoFrom("header", name.lower(), _served(served))


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
    #: Where the repository comes from when not from the path (``None``: the path).
    source: RepoFrom | None = None
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        names = _PLACEHOLDER.findall(self.template)
        if not self.template.startswith("/"):
            raise ConfigurationError(f"rule path {self.template!r} must start with '/'")
        if self.source is None and not {"owner", "name"} <= set(names):
            raise ConfigurationError(
                f"rule path {self.template!r} must contain {{owner}} and {{name}}, or the "
                "rule must say where the repository comes from (repo=from_body('model'), "
                "from_header(...), or a repo id)"
            )
        if self.source is not None and names:
            raise ConfigurationError(
                f"rule path {self.template!r}: a rule that takes the repository from "
                f"the {self.source.kind} has no placeholders in its path"
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


def _rule(spec: str, access: Access, repo_type: str, repo: RepoFrom | str | None) -> RepoRule:
    method, _, path = spec.strip().partition(" ")
    if not path:
        raise ConfigurationError(f"rule {spec!r} must look like 'POST /models/{{owner}}/{{name}}'")
    methods = frozenset(m.strip().upper() for m in method.split(","))
    if isinstance(repo, str):
        try:
            Repo.parse(f"{repo_type}:{repo}")
        except ValueError:
            raise ConfigurationError(f"repo {repo!r} is not a repo id (owner/name)") from None
        repo = RepoFrom("fixed", repo)
    elif repo is not None and not isinstance(repo, RepoFrom):
        raise ConfigurationError(
            "repo must be from_body(...), from_header(...) or a repo id such as 'acme/m'"
        )
    return RepoRule(methods, path.strip(), access, repo_type, repo)


def require_read(
    spec: str, *, repo_type: str = "model", repo: RepoFrom | str | None = None
) -> RepoRule:
    """Read access on a repository: named by the path
    (``require_read("POST /v1/models/{owner}/{name}/infer")``), by the body
    (``require_read("POST /v1/chat/completions", repo=from_body("model"))``),
    by a header, or fixed (``repo="acme/m"``, a server of one model)."""
    return _rule(spec, "read", repo_type, repo)


def require_write(
    spec: str, *, repo_type: str = "model", repo: RepoFrom | str | None = None
) -> RepoRule:
    """``require_write("PUT /v1/models/{owner}/{name}")``: write access on that repo
    (``repo`` as for :func:`require_read`)."""
    return _rule(spec, "write", repo_type, repo)


def openai_rules(
    served: Mapping[str, str] | Iterable[str] | None = None, *, prefix: str = "/v1"
) -> list[RepoRule]:
    """The OpenAI-compatible API's inference routes, each a read of the model its
    JSON body names: chat completions, completions and embeddings. ``GET
    /v1/models`` needs any valid token (list only what the caller may read:
    :meth:`RequestAuth.readable <hfauth_mw.RequestAuth.readable>`). Use with
    ``error_format="openai"``."""
    source = from_body("model", served=served)
    return [
        require_read(f"POST {prefix}{route}", repo=source)
        for route in ("/chat/completions", "/completions", "/embeddings")
    ]


def tgi_rules(model: str) -> list[RepoRule]:
    """A TGI-style server of one model: ``POST /generate``, ``/generate_stream``
    and ``/`` (what huggingface_hub's ``InferenceClient`` calls) read ``model``.
    Use with ``error_format="hub"``."""
    return [
        require_read(f"POST {route}", repo=model)
        for route in ("/generate", "/generate_stream", "/")
    ]


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

    __slots__ = (
        "decide_repos",
        "method_access",
        "open_methods",
        "path_rules",
        "policy",
        "request_rules",
        "rules",
    )

    def __init__(
        self,
        rules: Sequence[RepoRule],
        method_access: Mapping[str, Access] | None,
        policy: AccessPolicy,
        *,
        decide_repos: bool = True,
    ) -> None:
        self.rules = tuple(rules)
        #: Whether the rules decide repository access here, with the local rules
        #: (else a hub does: :mod:`hfauth_mw._authority`, asked by the pipeline).
        self.decide_repos = decide_repos
        #: Rules whose path names the repository (:meth:`authorize`) and rules that
        #: find it in the request itself, body or header (:meth:`request_rule`).
        self.path_rules = tuple(rule for rule in self.rules if rule.source is None)
        self.request_rules = tuple(rule for rule in self.rules if rule.source is not None)
        self.method_access = method_access
        self.policy = policy
        #: Methods for which, on a printable path, any valid token is enough (no
        #: path rule can match, and the method map asks only for a read): ``None``
        #: for every method (no path rules, no method map).
        self.open_methods: frozenset[str] | None = frozenset()
        if not self.path_rules:
            self.open_methods = (
                None
                if method_access is None
                else frozenset(m for m, access in method_access.items() if access == "read")
            )

    def request_rule(self, method: str, path: str) -> RepoRule | None:
        """The first rule that finds its repository in the request (body, header,
        fixed) and matches ``method`` and ``path``, if any."""
        if "//" in path:
            path = _SLASH_RUNS.sub("/", path)
        for rule in self.request_rules:
            if rule.accepts(method) and rule.pattern.fullmatch(path):
                return rule
        return None

    def reads_body(self, method: str, path: str) -> bool:
        """Whether a rule must read this request's body to find the repository
        (the adapter then reads it, capped, and hands it to the app unchanged)."""
        if not self.request_rules:
            return False
        rule = self.request_rule(method, path)
        return rule is not None and rule.source is not None and rule.source.kind == "body"

    def authorize_request(self, request: RequestContext, principal: Principal) -> None:
        """The rule that finds the repository in the request, if one guards its
        path: raises the 400/401/403/404/503 to answer."""
        needed = self.request_requirement(request)
        if needed is not None:
            self.require_repo(principal, *needed)

    def request_requirement(self, request: RequestContext) -> tuple[Repo | None, Access] | None:
        """What a rule that finds its repository in the request needs: its
        access, for the methods it names. On its path, another method that no
        path rule guards needs the same repository, read for a safe method and
        write for the others, as on a path rule's path; a body is read only for
        the methods the rule names, so there the request names no repository,
        and is refused."""
        method, path = request.method, request.path
        if "//" in path:
            path = _SLASH_RUNS.sub("/", path)
        # One pass: the first rule on this path that names the method decides;
        # else the first rule on this path guards it.
        guarding: RepoRule | None = None
        for rule in self.request_rules:
            if rule.source is not None and rule.pattern.fullmatch(path):
                if rule.accepts(method):
                    return rule.source.repo(request, rule.repo_type), rule.access
                guarding = guarding or rule
        if guarding is None or guarding.source is None:
            return None
        if self.path_rules and self.path_requirement(method, path) is not None:
            return None  # a path rule guards this method here, and decides it
        access: Access = "read" if method in SAFE_METHODS else "write"
        if guarding.source.kind == "body":
            return None, access
        return guarding.source.repo(request, guarding.repo_type), access

    def allows_any_token(self, method: str) -> bool:
        """Whether, with no rule, ``method`` needs nothing more than a valid token."""
        return self.method_access is None or self.method_access.get(method) == "read"

    def allows_anonymous(self, method: str) -> bool:
        """Whether, with no rule, the anonymous caller may use ``method``: a safe
        one, or any while there is no method map (``method_policy=False``)."""
        return self.method_access is None or method in SAFE_METHODS

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
        if not self.path_rules:
            method_access = self.method_access
            if method_access is not None and (
                method_access.get(method) != "read" or principal.is_anonymous
            ):
                self._by_method(method, path, principal)
            return
        needed = self.path_requirement(method, path)
        if needed is None:
            self._by_method(method, path, principal)
        elif self.decide_repos:
            self.require_repo(principal, *needed)

    def path_requirement(self, method: str, path: str) -> tuple[Repo | None, Access] | None:
        """What the first path rule that matches needs: the repository its path
        names (``None`` if it names no valid one) and the access; ``None`` when
        no path rule guards the path."""
        if "//" in path:
            path = _SLASH_RUNS.sub("/", path)
        guarded: tuple[RepoRule, re.Match[str]] | None = None
        for rule in self.path_rules:
            match = rule.pattern.fullmatch(path)
            if match is None:
                continue
            if rule.accepts(method):
                return rule.repo_from(match), rule.access
            if guarded is None:
                guarded = rule, match
        if guarded is not None:
            access: Access = "read" if method in SAFE_METHODS else "write"
            return guarded[0].repo_from(guarded[1]), access
        return None

    def requirement(self, request: RequestContext) -> tuple[Repo | None, Access] | None:
        """What the request needs of a repository, by the first rule that finds
        one in the request itself, else by the path rules; ``None`` if no rule
        guards it. Raises InvalidBody (400) or UnknownModel (404) for a body or
        header that names no repository this server serves."""
        if self.request_rules:
            needed = self.request_requirement(request)
            if needed is not None:
                return needed
        if not self.path_rules:
            return None
        return self.path_requirement(request.method, request.path)

    def _by_method(self, method: str, path: str, principal: Principal) -> None:
        if principal.is_anonymous:
            # A rule that finds its repository in the request decides for it.
            if self.allows_anonymous(method) or self.request_rule(method, path) is not None:
                return
            reason = f"{method} needs a valid token (only GET, HEAD and OPTIONS go without)"
            raise denial(principal, Decision(False, reason, READ_PERMISSION))
        if self.allows_any_token(method) or can_write_somewhere(principal):
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

    def require_repo(self, principal: Principal, repo: Repo | None, access: Access) -> None:
        named = named_repo(principal, repo, access)
        try:
            decision = self.policy.check(principal, named, access)
        except AuthenticationError:
            raise  # the policy's callbacks failed: a 503 already
        except Exception:
            # A policy of the server's own failed in the middleware's rules: 503.
            logger.exception("hfauth-mw: the access policy failed on %s", named)
            raise SourceUnavailable(
                "Access to this repository cannot be checked right now"
            ) from None
        if not decision:
            raise denial(principal, decision)


def named_repo(principal: Principal, repo: Repo | None, access: Access) -> Repo:
    """The repository a rule found in the request: denied (403, 401 for the
    anonymous caller) when the request names no valid one, whoever decides."""
    if repo is None:
        reason = f"{access} denied: the request does not name a valid repository"
        raise denial(principal, Decision(False, reason, NEEDED_PERMISSION[access]))
    return repo


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
        return NEEDED_PERMISSION[self.access]

    def repo_from(self, auth: RequestAuth, params: Mapping[str, object]) -> Repo:
        """The repository the route's parameters name; refused (401/403) when
        they name no valid repository id."""
        for arg in (self.owner_arg, self.name_arg):
            if arg not in params:
                raise RuntimeError(f"hfauth-mw: the route has no {arg!r} parameter")
        owner, name = params[self.owner_arg], params[self.name_arg]
        try:
            return Repo.parse(f"{self.repo_type}:{owner}/{name}")
        except ValueError:
            reason = f"{self.access} denied: not a valid {self.repo_type} repository id"
            raise denial(auth.principal, Decision(False, reason, self.needed)) from None

    def check(self, auth: RequestAuth, params: Mapping[str, object]) -> Decision:
        """The decision if ``auth`` may; else raise the 401/403 error. An owner or
        name that is not a valid repository id is denied. Blocking when the hub
        decides (WSGI code); async code uses :meth:`acheck`."""
        return auth.require(self.repo_from(auth, params), self.access)

    async def acheck(self, auth: RequestAuth, params: Mapping[str, object]) -> Decision:
        """:meth:`check` for async code."""
        return await auth.arequire(self.repo_from(auth, params), self.access)
