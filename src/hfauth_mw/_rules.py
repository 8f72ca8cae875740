"""Access rules: may this principal read or write this repository, or use this permission?

Pure functions, no I/O: every answer is a :class:`Decision` whose ``reason`` is
one line, starts with ``read``/``write``/``permission`` ``allowed:``/``denied:``
and never holds a token or anything shaped like one. Where the Hub's behaviour
is not confirmed, these rules accept any input and grant the smaller right.

The rules follow the Hub's documented combination (see docs/access-rules.md):
the token role says what the *token* may do, the org role caps what it may do
in that org, fine-grained tokens reach only what they list; an org whose
security restrictions refuse the token gives nothing. The server knows what we
cannot see (visibility, gate acceptance, resource groups, who created a
repository, an OAuth token's consent) and passes it in, through
:class:`AccessPolicy` callbacks or keyword arguments. Where a hub is the token
source, its per-repository auth-check (:mod:`hfauth_mw._hub_access`) is the
authority and these rules the fallback: their decisions say ``decided_by="local"``.

Differences from HF's own dataset-viewer admin check, which accepts an org
action for a fine-grained token with a ``scoped`` entry on the org holding
``repo.write``, or for a classic ``write`` token whose user has ``roleInOrg``
``read``, ``write`` or ``admin``:

* a classic write token writes to an org only with org role ``write`` or
  ``admin`` (``contributor``: only repositories the user created), never with
  ``read``, because the Hub caps read members at read;
* a fine-grained org entry holding ``repo.write`` is capped by the same org
  role: it writes nothing while the user is a ``read`` member of that org.
"""

from __future__ import annotations

import enum
import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeVar

from ._exceptions import ConfigurationError, SourceUnavailable
from ._principal import OrgMembership, Principal, ResourcePattern, ScopedGrant, is_app
from ._validation import require_bool

logger = logging.getLogger("hfauth_mw")
_T = TypeVar("_T")

__all__ = [
    "READ_PERMISSION",
    "REPO_TYPES",
    "SERVERLESS_INFERENCE_PERMISSION",
    "WRITE_PERMISSION",
    "AccessPolicy",
    "DecidedBy",
    "Decision",
    "Entity",
    "OAuthAccess",
    "OAuthGrant",
    "Repo",
    "RepoType",
    "Visibility",
    "can_read",
    "can_write",
    "can_write_somewhere",
    "has_permission",
]

RepoType = Literal["model", "dataset", "space", "bucket", "kernel"]
Access = Literal["read", "write"]
#: Who decided: the Hub's own auth-check, or these local rules.
DecidedBy = Literal["hub", "local"]
#: What an operator's OAuth mapping grants an OAuth token on a repository.
OAuthGrant = Literal["read", "write"]
#: ``(principal, repo) -> "read" | "write" | None``: see :class:`AccessPolicy`.
OAuthAccess = Callable[[Principal, "Repo"], "OAuthGrant | None"]

#: The Hub's repository types, as ``Repo.type`` and ``Repo.parse`` prefixes take them.
REPO_TYPES: tuple[RepoType, ...] = ("model", "dataset", "space", "bucket", "kernel")
READ_PERMISSION = "repo.content.read"
WRITE_PERMISSION = "repo.write"
#: Serverless inference: the Hub documents read tokens for "doing inference",
#: so this permission is read-level although its name ends in ``.write``.
SERVERLESS_INFERENCE_PERMISSION = "inference.serverless.write"
_READ_LEVEL_PERMISSIONS = frozenset({SERVERLESS_INFERENCE_PERMISSION})

_TOKEN_ROLES = frozenset({"read", "write", "fineGrained"})
_ORG_ROLES = frozenset({"no_access", "read", "contributor", "write", "admin"})
_ORG_READ_ROLES = frozenset({"read", "contributor", "write", "admin"})
_ORG_WRITE_ROLES = frozenset({"write", "admin"})
#: The permission a read or a write of a repository needs (a Decision's ``needed``).
NEEDED_PERMISSION: dict[Access, str] = {"read": READ_PERMISSION, "write": WRITE_PERMISSION}
_WANTED: dict[Access, frozenset[str]] = {
    "read": frozenset({READ_PERMISSION, WRITE_PERMISSION}),
    "write": frozenset({WRITE_PERMISSION}),
}
_RESOURCE_GROUP = "resource-group"

# Anything shaped like a Hub token (user, OAuth, trusted-publisher JWT, legacy org)
# is cut out of reasons.
_SECRET_LIKE = re.compile(
    r"\b(?:hf_(?:oauth|jwt)_[A-Za-z0-9_.\-]{8,}|hf_[A-Za-z0-9]{16,}|api_org_[A-Za-z0-9]{8,})"
)
_REPO_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.\-]{0,94}[A-Za-z0-9_])?")
_MAX_VALUE = 96
_TYPES_TEXT = ", ".join(REPO_TYPES)

_OAUTH_READS_REFUSED = (
    "oauth_reads=True is no longer supported: it read every OAuth token as a classic read "
    "token over all the user's orgs, but an OAuth read-repos scope covers only the orgs the "
    "user selected at consent. Pass AccessPolicy(oauth_access=...), a callback "
    "(principal, repo) -> 'read' | 'write' | None saying what you know the token's consent "
    "covers (for example 'read' for repo.owner == principal.name), or let the Hub's "
    "auth-check decide"
)


class Visibility(enum.Enum):
    """What the server says about a repository. ``GATED`` is public but gated."""

    PRIVATE = "private"
    PUBLIC = "public"
    GATED = "gated"


def _line(text: str) -> str:
    """One printable line with anything shaped like a token cut out."""
    # Every reason goes through here, allowed ones included: the common text is
    # printable and holds neither prefix every token shape starts with, and is
    # then its own answer (two substring scans and one isprintable, no regex).
    if "hf_" not in text and "api_org_" not in text and text.isprintable():
        return text
    text = _SECRET_LIKE.sub("<redacted>", text)
    if text.isprintable():
        return text
    return "".join([char if char.isprintable() else "?" for char in text])


def _safe(value: object) -> str:
    """A value made fit for a one-line reason: printable, short, no token."""
    text = _line(str(value))
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def _check_name(value: object, what: str, text: str) -> str:
    # The Hub's repo-id rule (huggingface_hub's validate_repo_id): letters,
    # digits, '-', '_' and '.', at most 96, starting and ending with a letter,
    # digit or '_', and no '--' or '..'. Anything else is not a Hub repository,
    # and could make a path or URL built from it mean something else.
    if (
        not isinstance(value, str)
        or not _REPO_NAME.fullmatch(value)
        or "--" in value
        or ".." in value
    ):
        raise ValueError(
            f"invalid repository {_safe(text)!r}: the {what} must be 1 to 96 letters, "
            "digits, '-', '_' or '.', start and end with a letter, digit or '_', "
            "and hold no '--' or '..'"
        )
    return value


def _refuse_oauth_reads(value: object) -> None:
    if require_bool("oauth_reads", value):
        raise ConfigurationError(_OAUTH_READS_REFUSED)


@dataclass(frozen=True, slots=True)
class Repo:
    """A Hub repository: type, owner (user or org) and name."""

    type: RepoType
    owner: str
    name: str

    def __post_init__(self) -> None:
        if self.type not in REPO_TYPES:
            raise ValueError(
                f"unknown repository type {_safe(self.type)!r}: expected {_TYPES_TEXT}"
            )
        _check_name(self.owner, "owner", f"{self.owner}/{self.name}")
        _check_name(self.name, "name", f"{self.owner}/{self.name}")

    @property
    def id(self) -> str:
        return f"{self.owner}/{self.name}"

    @classmethod
    def parse(cls, text: str) -> Repo:
        """Parse ``"type:owner/name"`` (a type of :data:`REPO_TYPES`) or ``"owner/name"``.

        A bare ``owner/name`` is a model, as on the Hub. Raises :class:`ValueError`.
        """
        if not isinstance(text, str):
            raise ValueError(f"a repository must be given as text, not {type(text).__name__}")
        kind, colon, rest = text.partition(":")
        if not colon:
            kind, rest = "model", text
        if kind not in REPO_TYPES:
            raise ValueError(
                f"invalid repository {_safe(text)!r}: unknown type {_safe(kind)!r}, "
                f"expected {_TYPES_TEXT}"
            )
        owner, slash, name = rest.partition("/")
        if not slash:
            raise ValueError(f"invalid repository {_safe(text)!r}: expected 'owner/name'")
        return cls(kind, _check_name(owner, "owner", text), _check_name(name, "name", text))

    def __str__(self) -> str:
        return f"{self.type}:{self.id}"


@dataclass(frozen=True, slots=True)
class Entity:
    """What a permission applies to: ``org acme``, ``model acme/x``, ``collection ...``."""

    type: str
    name: str

    def __str__(self) -> str:
        # str() first: _safe(value) is _safe(str(value)), and the memo needs strings.
        kind, name = str(self.type), str(self.name)
        if len(kind) + len(name) > _MEMO_TEXT:
            return _entity_text.__wrapped__(kind, name)
        return _entity_text(kind, name)


# The texts and entities below recur in every decision for the same repository
# or org: they are memoised (bounded, keyed by the strings they are made of, so
# callers pass str()) so that an allowed decision costs a few lookups, not a
# cleaning of every character. Nothing secret goes in: these are reason texts.
_MEMO_SIZE = 4096
#: Longer text (a server may name an entity or a permission after a client's
#: text) is not memoised, so that every memo stays a few MB at most.
_MEMO_TEXT = 512


def _entity_of(repo: Repo) -> Entity:
    """The entity of a repository, as the fine-grained rules and reasons name it."""
    return _repo_entity(repo.type, repo.owner, repo.name)


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _repo_entity(kind: str, owner: str, name: str) -> Entity:
    # Shared: an Entity is immutable, and building a frozen dataclass is slow.
    return Entity(kind, f"{owner}/{name}")


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _entity_text(kind: str, name: str) -> str:
    """``str(Entity(kind, name))``, without building the entity (reasons name one often)."""
    return f"{_safe(kind)} {_safe(name)}"


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _role_in_org(role: str, owner: str) -> str:
    """How a reason names the user's org role."""
    return f"role {_safe(role)} in org {_safe(owner)}"


@dataclass(frozen=True, slots=True)
class Decision:
    """The answer of a rule, with a one-line reason that holds no secret.

    ``decided_by`` is ``"local"`` for these rules and ``"hub"`` for an answer
    of the Hub's auth-check (:mod:`hfauth_mw._hub_access`).
    """

    allowed: bool
    reason: str
    needed: str
    decided_by: DecidedBy = "local"

    def __bool__(self) -> bool:
        return self.allowed


def _decide(allowed: bool, reason: str, needed: str) -> Decision:
    # Memoised (bounded): a Decision is immutable, the same few reasons come back
    # on every request, and building a frozen dataclass costs more than the lookup.
    if len(reason) + len(needed) > _MEMO_TEXT:
        return _decision.__wrapped__(allowed, reason, needed)
    return _decision(allowed, reason, needed)


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _decision(allowed: bool, reason: str, needed: str) -> Decision:
    return Decision(allowed, _line(reason), _line(needed))


# --- who the token speaks for ------------------------------------------------------------


def _unscoped_oauth(principal: Principal) -> bool:
    # whoami-v2 reports neither a role nor the scopes of OAuth tokens: one asked
    # for "openid profile" alone must not read what a read token reads.
    return principal.token_role is None and principal.auth_type == "oauth"


def _token_role(principal: Principal, oauth_grant: OAuthGrant | None = None) -> str | None:
    """``read``, ``write`` or ``fineGrained``; ``None`` when the role grants nothing.

    An app never gets a role here (its scope is not confirmed); an OAuth token
    without one gets the operator's grant for this repository, if any.
    """
    if is_app(principal) or principal.bound_resource is not None:
        return None
    role = principal.token_role
    if role in _TOKEN_ROLES:
        return role
    if _unscoped_oauth(principal) and oauth_grant in ("read", "write"):
        return oauth_grant
    return None


def _role_text(principal: Principal) -> str:
    if principal.bound_resource is not None:
        return (
            "token bound to a resource: what it grants is not confirmed, public "
            "repositories only (the Hub's auth-check decides the others)"
        )
    if is_app(principal):
        return (
            "app token: what an app's scope grants is not confirmed, public repositories "
            "only (the Hub's auth-check decides the others)"
        )
    if _unscoped_oauth(principal):
        return (
            "OAuth token, scopes not reported: public repositories only, and what "
            "AccessPolicy(oauth_access=...) grants"
        )
    if principal.token_role is None:
        return "token role is missing"
    if principal.token_role in _TOKEN_ROLES:
        return f"token role {principal.token_role}"
    return f"token role {_safe(principal.token_role)!r} is not recognised"


@dataclass(slots=True)
class _Reach:
    """How far the user's own rights go in one namespace (the org cap).

    Not frozen only because a frozen dataclass is slower to build, and one is
    built for nearly every decision; nothing changes one once built.
    """

    allowed: bool
    member: bool  # the namespace is the user's own or one of their orgs
    detail: str


def _refusal(principal: Principal, owner: str) -> str | None:
    """Why the org ``owner`` refuses this token (security restrictions), if it does."""
    return _refusal_of(principal.org(owner), owner)


def _refusal_of(membership: OrgMembership | None, owner: str) -> str | None:
    if membership is None or not membership.restrictions:
        return None
    named = ", ".join(_safe(item) for item in membership.restrictions)
    return f"org {_safe(owner)} refuses this token (security restrictions: {named})"


def _reach(
    principal: Principal,
    owner: str,
    access: Access,
    *,
    caller_created: bool = False,
    user: bool = True,
    org: bool = True,
    group: str | None = None,
) -> _Reach:
    if user and owner == principal.name:
        return _Reach(True, True, "own namespace")
    membership = principal.org(owner) if org else None
    if membership is None:
        return _Reach(False, False, f"not a member of {_safe(owner)}")
    refused = _refusal_of(membership, owner)
    if refused is not None:
        return _Reach(False, True, refused)
    role = membership.role
    where = _role_in_org(str(role), str(owner))
    if group is not None:
        # "A private repository that is part of a Resource Group will only be
        # visible to members of that Resource Group"; their group role applies
        # there instead of the org role.
        found = next((item for item in membership.resource_groups if item.id == group), None)
        if found is None:
            return _Reach(
                False,
                True,
                f"the repository is in resource group {_safe(group)} of org {_safe(owner)}, "
                "which the user is not a member of",
            )
        role = found.role
        where = (
            f"role {_safe(role)} in resource group {_safe(found.name or found.id)} "
            f"of org {_safe(owner)}"
        )
    if role in _ORG_WRITE_ROLES or (access == "read" and role in _ORG_READ_ROLES):
        return _Reach(True, True, where)
    if access == "write" and role == "contributor":
        if caller_created:
            return _Reach(True, True, f"{where}, repository created by the user")
        return _Reach(False, True, f"{where} allows writing only repos the user created")
    if access == "write" and role == "read":
        return _Reach(False, True, f"{where} caps the token")
    suffix = "" if role in _ORG_ROLES else " is not recognised"
    return _Reach(False, True, f"{where}{suffix}")


def _namespace_of(entity: Entity) -> str | None:
    if entity.type in ("org", "user"):
        return entity.name
    owner, slash, _ = entity.name.partition("/")
    return owner if slash and owner else None


def _entity_reach(
    principal: Principal,
    entity: Entity,
    access: Access,
    caller_created: bool = False,
    group: str | None = None,
) -> _Reach | None:
    """The reach in the entity's namespace; ``None`` when the name tells no namespace."""
    if entity.type == "org":
        return _reach(principal, entity.name, access, user=False)
    if entity.type == "user":
        return _reach(principal, entity.name, access, org=False)
    owner, slash, _ = entity.name.partition("/")
    if slash and owner:
        return _reach(principal, owner, access, caller_created=caller_created, group=group)
    return None


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _wildcard(pattern: str) -> re.Pattern[str]:
    # '*' is the only wildcard; everything else is literal. Memoised: a pattern
    # is asked on every decision of the token that carries it.
    return re.compile(".*".join(re.escape(part) for part in pattern.split("*")), re.DOTALL)


def _pattern_matches(pattern: ResourcePattern, entity: Entity) -> bool:
    if not pattern.resource_type or pattern.resource_type != entity.type:
        return False
    _, slash, short = entity.name.partition("/")
    for wildcard in pattern.wildcards:
        # A pattern without '/' names the resource inside its namespace.
        subject = entity.name if "/" in wildcard or not slash else short
        if _wildcard(wildcard).fullmatch(subject):
            return True
    return False


def _narrowed_to(grant: ScopedGrant, entity: Entity) -> bool:
    """Whether ``grant`` may apply to ``entity`` at all: an entry with ``patterns``
    grants nothing outside them."""
    return not grant.patterns or any(
        _pattern_matches(pattern, entity) for pattern in grant.patterns
    )


def _covers_namespace(principal: Principal, grant: ScopedGrant, owner: str) -> bool:
    """A ``user``/``org`` entry that applies to the resources of ``owner``."""
    if grant.entity_type == "user":
        return grant.entity_name == principal.name == owner
    return grant.entity_type == "org" and grant.entity_name == owner


def _grants(
    principal: Principal, entity: Entity, wanted: frozenset[str], group: str | None = None
) -> tuple[ScopedGrant | None, ScopedGrant | None]:
    """The first entry on ``entity`` itself and the first entry covering it through
    its namespace (or, for a repository in a resource group, through that group)."""
    is_repo = entity.type in REPO_TYPES
    owner = _namespace_of(entity) if entity.type not in ("org", "user") else None
    exact: ScopedGrant | None = None
    namespace: ScopedGrant | None = None
    for grant in principal.scoped:
        if grant.permissions.isdisjoint(wanted) or not _narrowed_to(grant, entity):
            continue
        if grant.entity_type == entity.type and grant.entity_name == entity.name:
            exact = exact or grant
        elif group is not None and is_repo:
            # Fine-grained tokens do not inherit resource-group rights they do not
            # list: only an entry on the group itself covers its repositories.
            if grant.entity_type == _RESOURCE_GROUP and grant.entity_id == group:
                namespace = namespace or grant
        elif (
            owner is not None
            # A namespace entry covers the namespace's repositories, and other
            # resources (inference endpoints, ...) only where its patterns name them.
            and (is_repo or grant.patterns)
            and _covers_namespace(principal, grant, owner)
        ):
            namespace = namespace or grant
    return exact, namespace


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _listed(permissions: frozenset[str], wanted: frozenset[str]) -> str:
    """The permission a reason names as granted: the least wanted one the entry lists.

    Memoised like the texts above (a frozenset keeps its hash once computed;
    callers pass frozenset() so that a set built by hand works too).
    """
    return _safe(min(permissions & wanted))


def _grant_text(grant: ScopedGrant) -> str:
    if grant.entity_type == _RESOURCE_GROUP:
        return f"resource-group {_safe(grant.entity_name or grant.entity_id)}"
    return _entity_text(str(grant.entity_type), str(grant.entity_name))


def _fine_grained(
    principal: Principal,
    entity: Entity,
    *,
    verb: str,
    needed: str,
    wanted: frozenset[str],
    access: Access,
    caller_created: bool = False,
    group: str | None = None,
) -> Decision:
    """A fine-grained token: only what it lists, capped by the org role."""
    exact, namespace = _grants(principal, entity, wanted, group)
    grant = exact or namespace
    if grant is None:
        return _decide(
            False, f"{verb} denied: fine-grained token lists no {_safe(needed)} on {entity}", needed
        )
    listed = _listed(frozenset(grant.permissions), wanted)
    on = entity if grant is exact else _grant_text(grant)
    granted = f"{verb} allowed: fine-grained token lists {listed} on {on}"
    reach = _entity_reach(principal, entity, access, caller_created, group)
    if reach is None:  # an entity of no known namespace: the entry is all we have
        return _decide(True, granted, needed)
    if reach.allowed:
        return _decide(True, f"{granted}, {reach.detail}", needed)
    if reach.member:
        return _decide(False, f"{verb} denied: {reach.detail}", needed)
    if exact is not None and access == "read" and entity.type in REPO_TYPES:
        # The Hub issued an entry on someone else's repository (a collaborator).
        return _decide(True, f"{granted}, outside the user's namespace and orgs", needed)
    return _decide(
        False, f"{verb} denied: {entity} is outside the user's namespace and orgs", needed
    )


# --- the public rules --------------------------------------------------------------------


def can_read(
    principal: Principal,
    repo: Repo,
    *,
    visibility: Visibility = Visibility.PRIVATE,
    oauth_reads: bool = False,
    oauth_grant: OAuthGrant | None = None,
    resource_group: str | None = None,
    gate_passed: bool = False,
) -> Decision:
    """May ``principal`` read the contents of ``repo``? Needs ``repo.content.read``.

    ``gate_passed``: for a gated repository, whether the user was granted
    access through its gate (what only the Hub, or the server, knows). Without
    it, a gated repository is read by its owner alone, as on the Hub.

    ``resource_group``: the id (as whoami-v2 reports it) of the resource group
    holding ``repo``, if any: its members' group role replaces their org role
    there, and a private one is invisible to everyone else.
    ``oauth_grant``: what the operator knows an OAuth token's consent covers on
    this repository (see :class:`AccessPolicy`); without it an OAuth token reads
    public repositories only. ``oauth_reads=True`` is refused
    (:class:`~hfauth_mw.ConfigurationError`): it granted more than the Hub does.
    """
    if type(visibility) is not Visibility:  # a value such as "public" (the enum call is slow)
        visibility = Visibility(visibility)
    if oauth_reads is not False:
        _refuse_oauth_reads(oauth_reads)
    needed = READ_PERMISSION
    if visibility is Visibility.PUBLIC:
        return _decide(True, "read allowed: public repository", needed)
    if principal.is_anonymous:
        return _decide(False, "read denied: authentication required", needed)
    role = _token_role(principal, oauth_grant)
    entity = _entity_of(repo)
    if role is None:
        return _decide(False, f"read denied: {_role_text(principal)}", needed)
    if visibility is Visibility.GATED:
        # A gated repository is public: resource groups hide private ones only.
        # The org's own security restrictions still refuse the token.
        refused = _refusal(principal, repo.owner)
        if refused is not None:
            return _decide(False, f"read denied: {refused}", needed)
        if not gate_passed and principal.name != repo.owner:
            return _decide(
                False,
                f"read denied: gated: {_safe(principal.name)} has not been granted access "
                f"to {repo.id}",
                needed,
            )
        if role != "fineGrained":
            return _decide(True, "read allowed: gated repository, classic token", needed)
        # The Hub's checkbox: "read access to contents of all public gated repos
        # you can access". The flag alone reaches them; the server's visibility
        # callback says the repo is gated (and, by calling it so, reachable).
        if principal.can_read_gated_repos:
            return _decide(
                True, "read allowed: gated repository, token has canReadGatedRepos", needed
            )
        exact, _ = _grants(principal, entity, _WANTED["read"])
        if exact is not None:
            # The Hub documents an entry on the gated repo itself as the way to
            # reach one gated model without the flag.
            listed = _listed(frozenset(exact.permissions), _WANTED["read"])
            return _decide(
                True,
                f"read allowed: gated repository, fine-grained token lists {listed} on {entity}",
                needed,
            )
        return _decide(
            False,
            "read denied: gated repository, fine-grained token lacks canReadGatedRepos "
            f"and lists no entry on {entity}",
            needed,
        )
    if role == "fineGrained":
        return _fine_grained(
            principal,
            entity,
            verb="read",
            needed=needed,
            wanted=_WANTED["read"],
            access="read",
            group=resource_group,
        )
    reach = _reach(principal, repo.owner, "read", group=resource_group)
    if reach.allowed:
        return _decide(True, f"read allowed: {entity}, {reach.detail}", needed)
    if reach.member:
        return _decide(False, f"read denied: {reach.detail}", needed)
    return _decide(
        False, f"read denied: {entity} is private and outside the user's namespace and orgs", needed
    )


def can_write(
    principal: Principal,
    repo: Repo,
    *,
    caller_created: bool = False,
    oauth_grant: OAuthGrant | None = None,
    resource_group: str | None = None,
) -> Decision:
    """May ``principal`` write to ``repo``? Needs ``repo.write``.

    ``caller_created`` matters only for org ``contributor`` members, who may
    write only repositories they created; only the server can tell.
    ``oauth_grant`` and ``resource_group`` are :func:`can_read`'s; an OAuth
    token writes only where the operator's grant is ``"write"``.
    """
    needed = WRITE_PERMISSION
    if principal.is_anonymous:
        return _decide(False, "write denied: authentication required", needed)
    if _unscoped_oauth(principal) and not is_app(principal) and oauth_grant != "write":
        return _decide(
            False,
            "write denied: OAuth token, scopes not reported: writes only where "
            "AccessPolicy(oauth_access=...) grants write",
            needed,
        )
    role = _token_role(principal, oauth_grant)
    entity = _entity_of(repo)
    if role is None or role == "read":
        return _decide(False, f"write denied: {_role_text(principal)}", needed)
    if role == "fineGrained":
        return _fine_grained(
            principal,
            entity,
            verb="write",
            needed=needed,
            wanted=_WANTED["write"],
            access="write",
            caller_created=caller_created is True,
            group=resource_group,
        )
    reach = _reach(
        principal,
        repo.owner,
        "write",
        caller_created=caller_created is True,
        group=resource_group,
    )
    if reach.allowed:
        return _decide(True, f"write allowed: {entity}, {reach.detail}", needed)
    return _decide(False, f"write denied: {reach.detail}", needed)


def _holds(listed: frozenset[str], permission: str) -> bool:
    """Whether ``listed`` grants ``permission``: ``repo.write`` reads too, as the Hub has it."""
    if permission == READ_PERMISSION:
        return not listed.isdisjoint(_WANTED["read"])
    return permission in listed


def _access_of(permission: str) -> Access:
    """``read`` for ``*.read`` names and serverless inference, ``write`` otherwise."""
    if permission.endswith(".read") or permission in _READ_LEVEL_PERMISSIONS:
        return "read"
    return "write"


@functools.lru_cache(maxsize=_MEMO_SIZE)
def _permission_facts(permission: str) -> tuple[str, Access]:
    """How a reason names ``permission``, and the access it needs (memoised)."""
    return _safe(permission), _access_of(permission)


def has_permission(
    principal: Principal,
    permission: str,
    entity: Entity | Repo | None = None,
    *,
    oauth_reads: bool = False,
    oauth_grant: OAuthGrant | None = None,
    resource_group: str | None = None,
) -> Decision:
    """Does ``principal`` hold ``permission`` (an opaque name), on ``entity`` if given?

    Permissions ending in ``.read`` (and ``inference.serverless.write``, which
    the Hub grants read tokens) need read rights in the entity's namespace,
    every other permission needs write rights there (the org cap). A
    fine-grained token's global permission holds without an entity; on one,
    only as far as the user's own rights reach there (their namespace, their
    orgs, capped by the org role), as a classic token's do. ``repo.write``
    grants ``repo.content.read`` too. An ``org.*`` permission that is not a read, on
    an organization, changes its settings: it needs the org role ``admin``
    (the Hub's rule), whatever grants it. An org whose security restrictions
    refuse the token grants nothing on its entities. ``oauth_grant`` and
    ``resource_group`` are :func:`can_read`'s, for a repository entity.
    """
    if not isinstance(permission, str):
        raise TypeError(f"a permission is a string, not {type(permission).__name__}")
    if oauth_reads is not False:
        _refuse_oauth_reads(oauth_reads)
    target = _entity_of(entity) if isinstance(entity, Repo) else entity
    decision = _permission(principal, permission, target, oauth_grant, resource_group)
    if (
        decision.allowed
        and target is not None
        and target.type == "org"
        and permission.startswith(_ORG_PERMISSION_PREFIX)
        and not permission.endswith(".read")
    ):
        membership = principal.org(target.name)
        role = membership.role if membership is not None else None
        if role != "admin":
            held = f"role {_safe(role)}" if role is not None else "not a member"
            return _decide(
                False,
                f"permission denied: {_safe(permission)} on {target} changes the org's "
                f"settings, which needs role admin in org {_safe(target.name)} ({held})",
                permission,
            )
    return decision


#: Permissions on an organization's settings, beyond reading them: admins only.
_ORG_PERMISSION_PREFIX = "org."


def _permission(
    principal: Principal,
    permission: str,
    target: Entity | None,
    oauth_grant: OAuthGrant | None,
    group: str | None,
) -> Decision:
    needed = permission
    if len(permission) > _MEMO_TEXT:
        name, access = _permission_facts.__wrapped__(permission)
    else:
        name, access = _permission_facts(permission)
    if principal.is_anonymous:
        return _decide(False, "permission denied: authentication required", needed)
    role = _token_role(principal, oauth_grant if target is not None else None)
    if role is None:
        return _decide(False, f"permission denied: {_role_text(principal)}", needed)
    if target is not None:
        namespace = _namespace_of(target)
        refused = _refusal(principal, namespace) if namespace is not None else None
        if refused is not None:
            return _decide(False, f"permission denied: {name} on {target}: {refused}", needed)
    if role == "fineGrained":
        if _holds(principal.global_permissions, permission):
            if permission not in principal.global_permissions:
                name = f"{name} (through repo.write)"
            if target is None:
                return _decide(
                    True,
                    f"permission allowed: {name} is a global permission of the token",
                    needed,
                )
            # A global permission on an entity still stops where the user's own
            # rights stop (the namespace, the org role), as a classic token's does.
            return _within_reach(
                principal,
                target,
                access,
                f"global {name}",
                "it is a global permission of the token",
                needed,
                group,
            )
        if target is None:
            return _decide(
                False, f"permission denied: fine-grained token lists no global {name}", needed
            )
        return _fine_grained(
            principal,
            target,
            verb="permission",
            needed=needed,
            wanted=_WANTED["read"] if permission == READ_PERMISSION else frozenset({permission}),
            access=access,
            group=group,
        )
    if role == "read" and access == "write":
        return _decide(
            False,
            f"permission denied: token role read grants only *.read and "
            f"{SERVERLESS_INFERENCE_PERMISSION}, not {name}",
            needed,
        )
    if target is None:
        return _decide(True, f"permission allowed: {name}, classic {role} token", needed)
    return _within_reach(principal, target, access, name, f"classic {role} token", needed, group)


def _within_reach(
    principal: Principal,
    target: Entity,
    access: Access,
    name: str,
    granted_by: str,
    needed: str,
    group: str | None = None,
) -> Decision:
    """``name`` on ``target`` as far as the caller's rights in its namespace reach."""
    reach = _entity_reach(
        principal, target, access, group=group if target.type in REPO_TYPES else None
    )
    if reach is None:
        return _decide(
            False, f"permission denied: {name} on {target}, whose namespace is unknown", needed
        )
    if reach.allowed:
        return _decide(
            True, f"permission allowed: {name} on {target}, {granted_by}, {reach.detail}", needed
        )
    return _decide(False, f"permission denied: {name} on {target}: {reach.detail}", needed)


def _answer_of(name: str, callback: Callable[..., _T], *args: object) -> _T:
    """A server callback's answer; when it fails, the server cannot tell: a 503
    (logged), never "allowed" and never a 500."""
    try:
        return callback(*args)
    except Exception as failure:
        logger.exception("hfauth-mw: the access policy's %s callback failed", name)
        raise SourceUnavailable(
            "Access to this repository cannot be checked right now"
        ) from failure


def _repo_of(entity: Entity | Repo | None) -> Repo | None:
    """The repository an entity names, if it names one."""
    if entity is None or isinstance(entity, Repo):
        return entity
    if entity.type not in REPO_TYPES:
        return None
    try:
        return Repo.parse(f"{entity.type}:{entity.name}")
    except ValueError:
        return None


class AccessPolicy:
    """Binds the server's knowledge about repos to the pure rules.

    ``visibility(repo)`` says whether a repository is private, public or gated
    (default: every repository is private); ``caller_created(principal, repo)``
    says whether the caller created it (default: never; it is asked only for
    authenticated principals); ``resource_group(repo)`` names the resource
    group holding a repository (the group's ``id`` as whoami-v2 reports it in
    ``orgs[].resourceGroups``), or ``None`` (default: none is in a group; the
    rules cannot know otherwise). Exceptions raised by the callbacks propagate
    as :class:`~hfauth_mw.SourceUnavailable`: a server that cannot tell must
    not be answered "allowed".

    ``oauth_access(principal, repo)``: whoami-v2 reports no scopes for Hub
    OAuth tokens, and ``read-repos`` covers the user's own repositories plus
    only the orgs the user selected at consent. By default an OAuth token reads
    public repositories only and never writes. The callback says what the
    operator knows the token's consent covers on ``repo``: ``"read"`` (read it
    as a classic read token would), ``"write"`` (as a classic write token), or
    ``None``; the org role still caps it, and any other answer grants nothing.
    It is asked only for OAuth principals without a token role.

    ``gate_passed(principal, repo)``: for a repository ``visibility`` calls
    gated, whether the caller was granted access through its gate (default:
    nobody was, so a gated repository is read by its owner alone). Only
    ``True`` counts; it is asked only for authenticated principals.

    ``oauth_reads`` is gone: ``True`` raises :class:`~hfauth_mw.ConfigurationError`
    naming ``oauth_access`` (it granted more than the Hub does); ``False`` is
    accepted and changes nothing.
    """

    __slots__ = (
        "_caller_created",
        "_gate_passed",
        "_oauth_access",
        "_resource_group",
        "_visibility",
    )

    #: Always False: kept so that code reading it keeps working.
    oauth_reads = False

    def __init__(
        self,
        *,
        visibility: Callable[[Repo], Visibility] | None = None,
        caller_created: Callable[[Principal, Repo], bool] | None = None,
        resource_group: Callable[[Repo], str | None] | None = None,
        oauth_access: OAuthAccess | None = None,
        oauth_reads: bool = False,
        gate_passed: Callable[[Principal, Repo], bool] | None = None,
    ) -> None:
        _refuse_oauth_reads(oauth_reads)
        self._visibility = visibility
        self._caller_created = caller_created
        self._resource_group = resource_group
        self._oauth_access = oauth_access
        self._gate_passed = gate_passed

    def _visibility_of(self, repo: Repo) -> Visibility:
        if self._visibility is None:
            return Visibility.PRIVATE
        return Visibility(_answer_of("visibility", self._visibility, repo))

    def _created_by(self, principal: Principal, repo: Repo) -> bool:
        if self._caller_created is None or principal.is_anonymous:
            return False
        return _answer_of("caller_created", self._caller_created, principal, repo) is True

    def _passed_gate(self, principal: Principal, repo: Repo) -> bool:
        if self._gate_passed is None:
            return False
        return _answer_of("gate_passed", self._gate_passed, principal, repo) is True

    def _group_of(self, principal: Principal, repo: Repo) -> str | None:
        if self._resource_group is None or principal.is_anonymous:
            return None
        group = _answer_of("resource_group", self._resource_group, repo)
        if group is not None and (not isinstance(group, str) or not group):
            raise SourceUnavailable("Access to this repository cannot be checked right now")
        return group

    def _oauth_grant(self, principal: Principal, repo: Repo | None) -> OAuthGrant | None:
        if self._oauth_access is None or repo is None or not _unscoped_oauth(principal):
            return None
        grant = _answer_of("oauth_access", self._oauth_access, principal, repo)
        return grant if grant in ("read", "write") else None

    def can_read(self, principal: Principal, repo: Repo) -> Decision:
        visibility = self._visibility_of(repo)
        if visibility is Visibility.PUBLIC or principal.is_anonymous:
            return can_read(principal, repo, visibility=visibility)
        return can_read(
            principal,
            repo,
            visibility=visibility,
            oauth_grant=self._oauth_grant(principal, repo),
            resource_group=self._group_of(principal, repo),
            gate_passed=visibility is Visibility.GATED and self._passed_gate(principal, repo),
        )

    def can_write(self, principal: Principal, repo: Repo) -> Decision:
        return can_write(
            principal,
            repo,
            caller_created=self._created_by(principal, repo),
            oauth_grant=self._oauth_grant(principal, repo),
            resource_group=self._group_of(principal, repo),
        )

    def has_permission(
        self, principal: Principal, permission: str, entity: Entity | Repo | None = None
    ) -> Decision:
        repo = _repo_of(entity)
        return has_permission(
            principal,
            permission,
            entity,
            oauth_grant=self._oauth_grant(principal, repo),
            resource_group=self._group_of(principal, repo) if repo is not None else None,
        )

    def check(self, principal: Principal, repo: Repo, access: Access) -> Decision:
        if access == "read":
            return self.can_read(principal, repo)
        if access == "write":
            return self.can_write(principal, repo)
        raise ValueError(f"access must be 'read' or 'write', not {_safe(access)!r}")


def can_write_somewhere(principal: Principal) -> bool:
    """Whether the token can write any repository at all: a write token, or a
    fine-grained one with ``repo.write`` on some entry (one bound to a
    resource too: it may write that one, which the hub's auth-check decides)."""
    if is_app(principal):
        return False  # what an app's scope grants is not confirmed: strict
    if principal.token_role == "write":
        return True
    if principal.token_role == "fineGrained":
        return any(WRITE_PERMISSION in grant.permissions for grant in principal.scoped)
    return False
