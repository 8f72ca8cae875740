"""Who the caller is: an immutable record of what the introspection source said.

The whoami-v2 parser lives here too, because the local token store keeps the
same shape and the hub emulator serves it: one parser for every source.
"""

from __future__ import annotations

import hashlib
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from ._exceptions import MalformedAnswer

__all__ = [
    "ANONYMOUS",
    "HubAccountFields",
    "OrgMembership",
    "Principal",
    "ResourceGroup",
    "ResourcePattern",
    "ScopedGrant",
    "fingerprint_of",
    "hub_timestamp",
    "is_app",
    "org_restrictions_as_whoami",
    "principal_as_whoami",
    "principal_from_whoami",
    "token_digest",
]

#: Length of the hex fingerprint shown in logs, reprs and answers: 48 bits is
#: enough to tell tokens apart in a log, and far too little to recover one.
FINGERPRINT_LENGTH = 12

ORG_ROLES = ("no_access", "read", "contributor", "write", "admin")
TOKEN_ROLES = ("read", "write", "fineGrained")


class _Hash(Protocol):
    def digest(self) -> bytes: ...


def _quickest_sha256() -> Callable[[bytes], _Hash]:
    # CPython's own SHA-256 (hashlib's fallback; "_sha2" from 3.12) is about
    # 100 ns quicker than OpenSSL's for a token-sized input, as OpenSSL sets
    # up a context per call; every cached request hashes one token.
    for module in ("_sha2", "_sha256"):
        try:
            builtin: Callable[[bytes], _Hash] = importlib.import_module(module).sha256
        except (ImportError, AttributeError):
            continue
        return builtin
    return hashlib.sha256


#: SHA-256, from the quickest implementation this Python has.
sha256 = _quickest_sha256()


def token_digest(token: str) -> bytes:
    """The SHA-256 digest of a token: the only form in which a token is kept."""
    return sha256(token.encode("utf-8")).digest()


def fingerprint_of(digest: bytes) -> str:
    """A short, log-safe fingerprint of a token, from its SHA-256 digest."""
    return digest.hex()[:FINGERPRINT_LENGTH]


@dataclass(frozen=True, slots=True)
class ResourceGroup:
    """A resource group of an organization and the user's role in it."""

    id: str
    name: str | None
    role: str


@dataclass(frozen=True, slots=True)
class OrgMembership:
    """An organization the user belongs to and their ``roleInOrg``.

    ``security_restrictions`` (the Hub's ``securityRestrictions``: ``mfa``,
    ``token-policy``, ``sso``, ``ip``, ...), ``missing_mfa`` and ``pending_sso``
    say the org refuses this token on its resources: the membership then gives
    nothing (see :attr:`restrictions`).
    """

    name: str
    role: str
    id: str | None = None
    plan: str | None = None
    is_enterprise: bool = False
    resource_groups: tuple[ResourceGroup, ...] = ()
    security_restrictions: tuple[str, ...] = ()
    missing_mfa: bool = False
    pending_sso: bool = False

    @property
    def restrictions(self) -> tuple[str, ...]:
        """Why the org refuses this token (empty when it does not): the security
        restrictions, then ``missingMFA`` and ``pendingSSO`` when set."""
        if not self.missing_mfa and not self.pending_sso:  # asked on every decision
            return self.security_restrictions
        return (
            self.security_restrictions
            + (("missingMFA",) if self.missing_mfa else ())
            + (("pendingSSO",) if self.pending_sso else ())
        )


@dataclass(frozen=True, slots=True)
class ResourcePattern:
    """One ``patterns`` item of a fine-grained entry: the entry applies only to
    resources of ``resource_type`` (e.g. ``inference-endpoint``) whose name
    matches one of ``wildcards`` (``*`` is the only wildcard)."""

    resource_type: str
    wildcards: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ScopedGrant:
    """One fine-grained ``scoped`` entry: permissions on one entity.

    ``entity_type`` is one of ``model``, ``dataset``, ``space``, ``user``,
    ``org``, ``collection``, ``resource-group``, ... (kept as the Hub sent it);
    repository names are ``owner/name``.
    """

    entity_type: str
    entity_name: str | None
    permissions: frozenset[str]
    entity_id: str | None = None
    #: When not empty, the entry applies only to resources these patterns match.
    patterns: tuple[ResourcePattern, ...] = ()


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller, as the introspection source described them.

    Immutable and safe to log: it holds a short token fingerprint, never the
    token. ``token_role`` is ``read``, ``write``, ``fineGrained``, or ``None``
    when the source does not say (OAuth tokens through whoami-v2).
    """

    name: str
    type: str = "user"
    id: str | None = None
    fullname: str | None = None
    email: str | None = None
    auth_type: str = "access_token"
    token_role: str | None = None
    token_name: str | None = None
    orgs: tuple[OrgMembership, ...] = ()
    scoped: tuple[ScopedGrant, ...] = ()
    global_permissions: frozenset[str] = frozenset()
    can_read_gated_repos: bool = False
    expires_at: datetime | None = None
    oauth_scopes: frozenset[str] = frozenset()
    fingerprint: str = ""
    source: str = ""
    is_anonymous: bool = field(default=False, compare=False)
    #: The resource the token is bound to (whoami-v2 ``auth.resource.sub``;
    #: ``""`` when the answer names none it can read), or ``None``. What such a
    #: token grants is not confirmed: the local rules give it public
    #: repositories only, and the hub's auth-check decides the others.
    bound_resource: str | None = None

    @property
    def is_authenticated(self) -> bool:
        return not self.is_anonymous

    @property
    def is_app(self) -> bool:
        """An app principal (``type: app``, or an ``app_token``/``app_token_as_user``
        authentication): what an app's scope grants is not confirmed."""
        return is_app(self)

    def org(self, name: str) -> OrgMembership | None:
        """The user's membership of organization ``name``, if any."""
        for membership in self.orgs:
            if membership.name == name:
                return membership
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready mapping of the principal (no token, no secret). An org's
        ``security_restrictions`` (``missingMFA``/``pendingSSO`` included) and an
        entry's ``patterns`` appear only when set."""
        return {
            "name": self.name,
            "type": self.type,
            "id": self.id,
            "fullname": self.fullname,
            "email": self.email,
            "auth_type": self.auth_type,
            "token_role": self.token_role,
            "token_name": self.token_name,
            "token_fingerprint": self.fingerprint or None,
            "orgs": [
                {
                    "name": org.name,
                    "role": org.role,
                    "id": org.id,
                    "plan": org.plan,
                    "is_enterprise": org.is_enterprise,
                    "resource_groups": [
                        {"id": group.id, "name": group.name, "role": group.role}
                        for group in org.resource_groups
                    ],
                    # Only when set, so that the mapping of an unrestricted
                    # membership keeps the shape it always had.
                    **(
                        {"security_restrictions": list(org.restrictions)}
                        if org.restrictions
                        else {}
                    ),
                }
                for org in self.orgs
            ],
            "scoped": [
                {
                    "entity": {
                        "type": grant.entity_type,
                        "name": grant.entity_name,
                        "id": grant.entity_id,
                    },
                    "permissions": sorted(grant.permissions),
                    **(
                        {
                            "patterns": [
                                {
                                    "resource_type": pattern.resource_type,
                                    "wildcards": list(pattern.wildcards),
                                }
                                for pattern in grant.patterns
                            ]
                        }
                        if grant.patterns
                        else {}
                    ),
                }
                for grant in self.scoped
            ],
            "global": sorted(self.global_permissions),
            "can_read_gated_repos": self.can_read_gated_repos,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "oauth_scopes": sorted(self.oauth_scopes),
            "source": self.source,
            "is_anonymous": self.is_anonymous,
            # Only when set, as an org's restrictions.
            **({"bound_resource": self.bound_resource} if self.bound_resource is not None else {}),
        }


ANONYMOUS = Principal(name="anonymous", type="anonymous", auth_type="none", is_anonymous=True)

#: ``auth.type`` values of app tokens; ``type: app`` marks an app principal too.
APP_AUTH_TYPES = frozenset({"app_token", "app_token_as_user"})


def is_app(principal: Principal) -> bool:
    """Whether ``principal`` is an app (or an app acting as a user): the Hub's
    app scopes are not confirmed, so the local rules grant such principals
    public repositories only."""
    return principal.type == "app" or principal.auth_type in APP_AUTH_TYPES


# --- the whoami-v2 parser -------------------------------------------------------------
# Liberal in what it accepts (unknown fields ignored, optional fields may be
# missing), strict where a wrong type could turn into a grant: such answers
# raise MalformedAnswer, which sources report as "unavailable", never "valid".


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise MalformedAnswer(f"{where} is not an object")
    return value


_NO_STRINGS: frozenset[str] = frozenset()


def _label(value: str | None) -> str | None:
    """Enum-like fields (types, roles, plans) repeat in every cached principal:
    intern them so they are stored once."""
    return sys.intern(value) if value is not None else None


def _optional_mapping(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    # Absent or null is "not there"; any other non-object (even a falsy one) is malformed.
    value = data.get(key)
    return {} if value is None else _mapping(value, f"{where}.{key}")


def _optional_str(data: Mapping[str, Any], key: str, where: str) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise MalformedAnswer(f"{where}.{key} is not a string")
    return value


def _required_str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = _optional_str(data, key, where)
    if not value:
        raise MalformedAnswer(f"{where}.{key} is missing")
    return value


def _list(data: Mapping[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedAnswer(f"{where}.{key} is not a list")
    return value


def _strings(data: Mapping[str, Any], key: str, where: str) -> frozenset[str]:
    items = _list(data, key, where)
    if not all(isinstance(item, str) for item in items):
        raise MalformedAnswer(f"{where}.{key} holds a non-string")
    # Most answers list no permissions: share one empty set instead of one per principal.
    return frozenset(items) if items else _NO_STRINGS


def _bool(data: Mapping[str, Any], key: str, where: str) -> bool:
    value = data.get(key, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise MalformedAnswer(f"{where}.{key} is not a boolean")
    return value


def _informational_str(data: Mapping[str, Any], key: str) -> str | None:
    """A field that grants nothing (an id, a plan): a number becomes text, and any
    other odd value is dropped, so that it never turns a valid token into a 503."""
    value = data.get(key)
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _informational_bool(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key)
    return value if isinstance(value, bool) else False


# Epoch numbers above this are milliseconds (in seconds it is the year 5138).
_EPOCH_MILLISECONDS = 10**11


def parse_timestamp(value: object, where: str) -> datetime | None:
    """Parse an ISO 8601 timestamp (``Z`` allowed; naive values are taken as UTC),
    or an epoch time in seconds or milliseconds."""
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            seconds = value / 1000 if abs(value) >= _EPOCH_MILLISECONDS else value
            return datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, ValueError, OSError):
            raise MalformedAnswer(f"{where} is out of range") from None
    if not isinstance(value, str):
        raise MalformedAnswer(f"{where} is not a timestamp")
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise MalformedAnswer(f"{where} is not an ISO 8601 timestamp") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


#: A restriction of a shape we do not know: the org's repositories are refused, not opened.
UNRECOGNISED_RESTRICTION = "unrecognised"


def _restrictions(data: Mapping[str, Any]) -> tuple[str, ...]:
    """``securityRestrictions``, strict the other way round from the rest of the
    parser: a value of an odd shape refuses the org's repositories (a 403 the
    Hub would give) instead of being dropped, which would grant them."""
    value = data.get("securityRestrictions")
    if value is None or value == []:
        return ()
    if isinstance(value, str):
        return (sys.intern(value),) if value else ()
    if isinstance(value, list):
        return tuple(
            sys.intern(item) if isinstance(item, str) and item else UNRECOGNISED_RESTRICTION
            for item in value
        )
    return (UNRECOGNISED_RESTRICTION,)


def _refusal_flag(data: Mapping[str, Any], key: str) -> bool:
    # missingMFA/pendingSSO: anything but absent, null or false refuses (fail closed).
    value = data.get(key)
    return value is not None and value is not False


def _org(value: object, index: int) -> OrgMembership:
    where = f"orgs[{index}]"
    data = _mapping(value, where)
    groups = []
    # Resource groups grant nothing here (fine-grained tokens must list what they
    # use): an entry of an odd shape is skipped, not a reason to refuse the token.
    raw_groups = data.get("resourceGroups")
    for group in raw_groups if isinstance(raw_groups, list) else ():
        group_id = _informational_str(group, "id") if isinstance(group, Mapping) else None
        if group_id:
            groups.append(
                ResourceGroup(
                    id=group_id,
                    name=_informational_str(group, "name"),
                    role=_label(_informational_str(group, "role")) or "no_access",
                )
            )
    return OrgMembership(
        name=_required_str(data, "name", where),
        # A membership without a role grants nothing rather than something.
        role=_label(_optional_str(data, "roleInOrg", where)) or "no_access",
        id=_informational_str(data, "id"),
        plan=_label(_informational_str(data, "plan")),
        is_enterprise=_informational_bool(data, "isEnterprise"),
        resource_groups=tuple(groups),
        security_restrictions=_restrictions(data),
        missing_mfa=_refusal_flag(data, "missingMFA"),
        pending_sso=_refusal_flag(data, "pendingSSO"),
    )


#: What an unreadable ``patterns`` item becomes: a pattern that matches nothing,
#: so the entry it narrows grants nothing (rather than everything).
_MATCHES_NOTHING = ResourcePattern("", ())


def _pattern(value: object) -> ResourcePattern:
    if not isinstance(value, Mapping):
        return _MATCHES_NOTHING
    kind = value.get("resourceType")
    wildcards = value.get("wildcardPatterns")
    if not isinstance(kind, str) or not kind or not isinstance(wildcards, list):
        return _MATCHES_NOTHING
    if not all(isinstance(item, str) and item for item in wildcards):
        return _MATCHES_NOTHING
    return ResourcePattern(sys.intern(kind), tuple(wildcards))


def _patterns(data: Mapping[str, Any]) -> tuple[ResourcePattern, ...]:
    """``patterns`` narrow an entry. Absent, null or an empty list narrow nothing
    (the Hub may send an empty list on every entry); a value of another shape
    narrows the entry to nothing."""
    value = data.get("patterns")
    if value is None or value == []:
        return ()
    if not isinstance(value, list):
        return (_MATCHES_NOTHING,)
    return tuple(_pattern(item) for item in value)


def _grant(value: object, index: int) -> ScopedGrant:
    where = f"fineGrained.scoped[{index}]"
    data = _mapping(value, where)
    entity = _mapping(data.get("entity"), f"{where}.entity")
    return ScopedGrant(
        entity_type=sys.intern(_required_str(entity, "type", f"{where}.entity")),
        entity_name=_optional_str(entity, "name", f"{where}.entity"),
        entity_id=_optional_str(entity, "_id", f"{where}.entity"),
        permissions=_strings(data, "permissions", where),
        patterns=_patterns(data),
    )


def principal_from_whoami(data: object, *, fingerprint: str = "", source: str = "") -> Principal:
    """Build a :class:`Principal` from a whoami-v2 answer.

    Raises :class:`MalformedAnswer` when the answer is not the documented shape.
    """
    root = _mapping(data, "answer")
    auth = _optional_mapping(root, "auth", "answer")
    access_token = _optional_mapping(auth, "accessToken", "auth")
    fine_grained = _optional_mapping(access_token, "fineGrained", "auth.accessToken")
    return Principal(
        name=_required_str(root, "name", "answer"),
        type=_label(_optional_str(root, "type", "answer")) or "user",
        id=_informational_str(root, "id"),
        fullname=_optional_str(root, "fullname", "answer"),
        email=_optional_str(root, "email", "answer"),
        auth_type=_label(_optional_str(auth, "type", "auth")) or "access_token",
        token_role=_label(_optional_str(access_token, "role", "auth.accessToken")),
        token_name=_optional_str(access_token, "displayName", "auth.accessToken"),
        orgs=_orgs(root),
        scoped=tuple(
            _grant(grant, index)
            for index, grant in enumerate(_list(fine_grained, "scoped", "fineGrained"))
        ),
        global_permissions=_strings(fine_grained, "global", "fineGrained"),
        can_read_gated_repos=_bool(fine_grained, "canReadGatedRepos", "fineGrained"),
        expires_at=parse_timestamp(auth.get("expiresAt"), "auth.expiresAt"),
        fingerprint=fingerprint,
        source=source,
        bound_resource=_bound_resource(auth),
    )


def _orgs(root: Mapping[str, Any]) -> tuple[OrgMembership, ...]:
    """``orgs``; one organization listed twice is malformed: which entry holds
    (a role, security restrictions) would depend on the order."""
    orgs = tuple(_org(org, index) for index, org in enumerate(_list(root, "orgs", "answer")))
    if len({membership.name for membership in orgs}) != len(orgs):
        raise MalformedAnswer("answer.orgs lists the same organization twice")
    return orgs


def _bound_resource(auth: Mapping[str, Any]) -> str | None:
    """``auth.resource.sub``: any ``resource`` at all marks the token bound
    (strict in what it grants), named by its ``sub`` where that is text."""
    resource = auth.get("resource")
    if resource is None:
        return None
    sub = resource.get("sub") if isinstance(resource, Mapping) else None
    return sub if isinstance(sub, str) else ""


@dataclass(frozen=True, slots=True)
class HubAccountFields:
    """What a Hub's whoami-v2 answer carries beyond a :class:`Principal`: facts
    this library never reads, written so that clients that do (huggingface_hub)
    see a Hub-shaped answer from a local hub."""

    token_created_at: datetime
    avatar_url: str | None = None


def hub_timestamp(value: datetime) -> str:
    """The Hub's timestamp format: UTC, milliseconds, ``Z``."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def principal_as_whoami(
    principal: Principal, hub: HubAccountFields | None = None
) -> dict[str, Any]:
    """``principal`` as a whoami-v2 answer that :func:`principal_from_whoami`
    reads back into an equal principal (fingerprint and source aside, which
    are arguments of the parser; ``oauth_scopes`` is not a whoami-v2 field
    and is left to the caller). Every fact that can refuse access (security
    restrictions, ``missingMFA``, ``pendingSSO``, ``patterns``) is kept: a copy
    that dropped one would grant more than the original.

    With ``hub``, the answer is written as the Hub writes it (a local hub's,
    :class:`~hfauth_mw.LocalTokenStore`): its account fields, a token's
    ``createdAt``, ``fineGrained`` only on a fine-grained token, and no key
    for a fact that is not set (``email``, ``expiresAt``, an org's ``plan``).
    """
    access_token: dict[str, Any] = {
        "displayName": principal.token_name,
        "role": principal.token_role,
    }
    if hub is not None:
        access_token["createdAt"] = hub_timestamp(hub.token_created_at)
    if hub is None or principal.token_role == "fineGrained":
        access_token["fineGrained"] = {
            "canReadGatedRepos": principal.can_read_gated_repos,
            "global": sorted(principal.global_permissions),
            "scoped": [_grant_as_whoami(grant) for grant in principal.scoped],
        }
    auth: dict[str, Any] = {"type": principal.auth_type, "accessToken": access_token}
    if principal.expires_at is not None:
        expires_at = principal.expires_at
        # The round trip keeps microseconds; the Hub writes milliseconds.
        auth["expiresAt"] = hub_timestamp(expires_at) if hub else expires_at.isoformat()
    elif hub is None:
        auth["expiresAt"] = None
    if principal.bound_resource is not None:
        auth["resource"] = {"sub": principal.bound_resource}
    answer: dict[str, Any] = {
        "type": principal.type,
        "id": principal.id,
        "name": principal.name,
        "fullname": principal.fullname,
    }
    if hub is None:
        answer["email"] = principal.email
    else:
        if principal.email:
            answer["email"] = principal.email
            answer["emailVerified"] = True
        answer.update(isPro=False, canPay=False, periodEnd=None, avatarUrl=hub.avatar_url)
    answer["orgs"] = [_org_as_whoami(org, hub is not None) for org in principal.orgs]
    answer["auth"] = auth
    return answer


def _grant_as_whoami(grant: ScopedGrant) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "entity": {"_id": grant.entity_id, "type": grant.entity_type, "name": grant.entity_name},
        "permissions": sorted(grant.permissions),
    }
    if grant.patterns:
        entry["patterns"] = [
            {"resourceType": pattern.resource_type, "wildcardPatterns": list(pattern.wildcards)}
            for pattern in grant.patterns
        ]
    return entry


def _org_as_whoami(org: OrgMembership, hub: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "org", "id": org.id, "name": org.name}
    if hub:
        entry["fullname"] = org.name
    entry["roleInOrg"] = org.role
    if not hub or org.plan is not None:
        entry["plan"] = org.plan
    if not hub or org.is_enterprise:
        entry["isEnterprise"] = org.is_enterprise
    entry["resourceGroups"] = [
        {"id": group.id, "name": group.name, "role": group.role} for group in org.resource_groups
    ]
    entry.update(
        org_restrictions_as_whoami(org.security_restrictions, org.missing_mfa, org.pending_sso)
    )
    return entry


def org_restrictions_as_whoami(
    security_restrictions: Sequence[str], missing_mfa: bool, pending_sso: bool
) -> dict[str, Any]:
    """The fields of an org entry that say the org refuses this token (only
    those that are set), as :func:`principal_from_whoami` reads them."""
    fields: dict[str, Any] = {}
    if security_restrictions:
        fields["securityRestrictions"] = list(security_restrictions)
    if missing_mfa:
        fields["missingMFA"] = True
    if pending_sso:
        fields["pendingSSO"] = True
    return fields
