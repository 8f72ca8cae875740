"""Tests of the whoami-v2 parser's issue-17 fields (src/hfauth_mw/_principal.py):
security restrictions, patterns, app principals, unconfirmed roles, and the
whoami-v2 copy of a principal that must keep every fact that refuses access."""

from __future__ import annotations

import copy
import dataclasses
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hfauth_mw._principal import (
    HubAccountFields,
    OrgMembership,
    Principal,
    ResourceGroup,
    ResourcePattern,
    ScopedGrant,
    principal_as_whoami,
    principal_from_whoami,
)


def answer(
    org: dict[str, Any] | None = None, entry: dict[str, Any] | None = None
) -> dict[str, Any]:
    fine: dict[str, Any] = {"scoped": [entry] if entry else []}
    return {
        "name": "alice",
        "orgs": [{"name": "acme", "roleInOrg": "write", **(org or {})}],
        "auth": {
            "type": "access_token",
            "accessToken": {"role": "fineGrained", "fineGrained": fine},
        },
    }


@pytest.mark.parametrize(
    ("fields", "restrictions"),
    [
        pytest.param({}, (), id="absent"),
        pytest.param({"securityRestrictions": None}, (), id="null"),
        pytest.param({"securityRestrictions": []}, (), id="empty"),
        pytest.param({"securityRestrictions": ["mfa", "sso"]}, ("mfa", "sso"), id="listed"),
        pytest.param({"securityRestrictions": "ip"}, ("ip",), id="one-string"),
        pytest.param(
            {"securityRestrictions": [3, ""]}, ("unrecognised", "unrecognised"), id="odd-items"
        ),
        pytest.param({"securityRestrictions": {"mfa": True}}, ("unrecognised",), id="odd-shape"),
        pytest.param({"securityRestrictions": False}, ("unrecognised",), id="false-is-odd"),
        pytest.param({"missingMFA": True}, ("missingMFA",), id="missing-mfa"),
        pytest.param({"pendingSSO": True}, ("pendingSSO",), id="pending-sso"),
        pytest.param({"missingMFA": False, "pendingSSO": None}, (), id="flags-off"),
        pytest.param({"missingMFA": "yes"}, ("missingMFA",), id="odd-flag-refuses"),
        pytest.param(
            {"securityRestrictions": ["token-policy"], "missingMFA": True, "pendingSSO": True},
            ("token-policy", "missingMFA", "pendingSSO"),
            id="all",
        ),
    ],
)
def test_security_restrictions_parse_failing_closed(
    fields: dict[str, Any], restrictions: tuple[str, ...]
) -> None:
    membership = principal_from_whoami(answer(fields)).orgs[0]
    assert membership.restrictions == restrictions


ENTITY = {"_id": "o1", "type": "org", "name": "acme"}
NOTHING = ResourcePattern("", ())


@pytest.mark.parametrize(
    ("patterns", "expected"),
    [
        pytest.param(None, (), id="null"),
        pytest.param([], (), id="empty-list-narrows-nothing"),
        pytest.param(
            [{"resourceType": "inference-endpoint", "wildcardPatterns": ["prod-*", "x"]}],
            (ResourcePattern("inference-endpoint", ("prod-*", "x")),),
            id="endpoint",
        ),
        pytest.param("prod-*", (NOTHING,), id="not-a-list"),
        pytest.param([{"resourceType": "inference-endpoint"}], (NOTHING,), id="no-wildcards"),
        pytest.param([{"wildcardPatterns": ["*"]}], (NOTHING,), id="no-type"),
        pytest.param(
            [{"resourceType": "x", "wildcardPatterns": [1]}], (NOTHING,), id="odd-wildcard"
        ),
        pytest.param(["*"], (NOTHING,), id="odd-item"),
    ],
)
def test_patterns_parse_and_odd_ones_match_nothing(
    patterns: Any, expected: tuple[ResourcePattern, ...]
) -> None:
    entry: dict[str, Any] = {"entity": ENTITY, "permissions": ["repo.content.read"]}
    if patterns is not None:
        entry["patterns"] = patterns
    grant = principal_from_whoami(answer(entry=entry)).scoped[0]
    assert grant.patterns == expected


def test_an_app_principal_parses_and_is_an_app() -> None:
    principal = principal_from_whoami(
        {
            "type": "app",
            "id": "a1",
            "name": "my-app",
            "scope": {"role": "write", "entities": ["acme"]},
            "auth": {"type": "app_token"},
        }
    )
    assert (principal.type, principal.auth_type, principal.token_role) == ("app", "app_token", None)
    assert principal.is_app
    assert principal.to_dict()["type"] == "app"


@pytest.mark.parametrize("auth_type", ["app_token", "app_token_as_user"])
def test_app_authentication_types_are_apps(auth_type: str) -> None:
    assert Principal(name="alice", auth_type=auth_type, token_role="write").is_app
    assert not Principal(name="alice", token_role="write").is_app


def test_a_god_role_anywhere_parses_without_error() -> None:
    principal = principal_from_whoami(
        {
            "name": "alice",
            "orgs": [
                {
                    "name": "acme",
                    "roleInOrg": "god",
                    "resourceGroups": [{"id": "rg", "role": "god"}],
                }
            ],
            "auth": {"type": "access_token", "accessToken": {"role": "god"}},
        }
    )
    assert principal.token_role == "god"
    assert principal.orgs[0].role == "god"
    assert principal.orgs[0].resource_groups[0].role == "god"
    assert principal.to_dict()["token_role"] == "god"


def test_to_dict_shows_restrictions_and_patterns() -> None:
    data = principal_from_whoami(
        answer(
            {"securityRestrictions": ["mfa"], "pendingSSO": True},
            {
                "entity": ENTITY,
                "permissions": ["x"],
                "patterns": [{"resourceType": "inference-endpoint", "wildcardPatterns": ["p*"]}],
            },
        )
    ).to_dict()
    assert data["orgs"][0]["security_restrictions"] == ["mfa", "pendingSSO"]
    assert data["scoped"][0]["patterns"] == [
        {"resource_type": "inference-endpoint", "wildcards": ["p*"]}
    ]
    plain = principal_from_whoami(answer(entry={"entity": ENTITY, "permissions": ["x"]}))
    assert "security_restrictions" not in plain.to_dict()["orgs"][0]
    assert "patterns" not in plain.to_dict()["scoped"][0]


_names = st.text(alphabet="abcdefghij-_0123", min_size=1, max_size=8)
_roles = st.sampled_from(["read", "write", "admin", "contributor", "no_access", "god"])
_orgs = st.builds(
    OrgMembership,
    name=_names,
    role=_roles,
    id=st.none() | _names,
    plan=st.none() | _names,
    is_enterprise=st.booleans(),
    resource_groups=st.lists(
        st.builds(ResourceGroup, id=_names, name=st.none() | _names, role=_roles), max_size=2
    ).map(tuple),
    security_restrictions=st.lists(_names, max_size=3).map(tuple),
    missing_mfa=st.booleans(),
    pending_sso=st.booleans(),
)
_grants = st.builds(
    ScopedGrant,
    entity_type=st.sampled_from(["model", "org", "user", "resource-group", "bucket"]),
    entity_name=st.none() | _names,
    permissions=st.frozensets(_names, max_size=3),
    entity_id=st.none() | _names,
    patterns=st.lists(
        st.builds(
            ResourcePattern, resource_type=_names, wildcards=st.lists(_names, max_size=2).map(tuple)
        ),
        max_size=2,
    ).map(tuple),
)
_principals = st.builds(
    Principal,
    name=_names,
    type=st.sampled_from(["user", "app", "org"]),
    id=st.none() | _names,
    fullname=st.none() | _names,
    email=st.none() | _names,
    auth_type=st.sampled_from(["access_token", "oauth", "app_token"]),
    token_role=st.none() | _roles | st.just("fineGrained"),
    token_name=st.none() | _names,
    orgs=st.lists(_orgs, max_size=3, unique_by=lambda membership: membership.name).map(tuple),
    scoped=st.lists(_grants, max_size=3).map(tuple),
    global_permissions=st.frozensets(_names, max_size=3),
    can_read_gated_repos=st.booleans(),
    expires_at=st.none() | st.just(datetime(2030, 1, 1, tzinfo=UTC)),
    bound_resource=st.none() | st.just("") | _names,
)


@pytest.mark.parametrize(
    ("auth", "bound"),
    [
        pytest.param({"type": "access_token"}, None, id="not-bound"),
        pytest.param(
            {"resource": {"sub": "model:alice/only-this"}}, "model:alice/only-this", id="sub"
        ),
        pytest.param({"resource": {}}, "", id="no-sub"),
        pytest.param({"resource": "model:alice/x"}, "", id="odd-shape-still-bound"),
        pytest.param({"resource": {"sub": 7}}, "", id="sub-not-text"),
    ],
)
def test_a_token_bound_to_a_resource_is_marked_whatever_the_shape(auth, bound) -> None:
    principal = principal_from_whoami({"name": "alice", "auth": auth})
    assert principal.bound_resource == bound
    assert ("bound_resource" in principal.to_dict()) is (bound is not None)


@given(_principals)
def test_the_whoami_copy_of_a_principal_reads_back_equal(principal: Principal) -> None:
    """A copy that dropped a restriction or a pattern would grant more (the shared
    cache stores principals this way)."""
    # Patterns that read back as "matches nothing" are the parser's fail-closed form.
    answer = copy.deepcopy(principal_as_whoami(principal))
    assert principal_from_whoami(answer) == principal


@given(_principals, st.datetimes(timezones=st.just(UTC)))
def test_the_hub_dialect_of_a_principal_reads_back_equal(
    principal: Principal, created_at: datetime
) -> None:
    """A local hub writes what a principal holds the way the Hub does (the same
    writer, with the account fields): nothing that grants or refuses is lost,
    except what only a fine-grained token carries on the Hub."""
    if principal.token_role != "fineGrained":
        principal = dataclasses.replace(
            principal, scoped=(), global_permissions=frozenset(), can_read_gated_repos=False
        )
    answer = principal_as_whoami(principal, HubAccountFields(created_at, "/avatars/x.svg"))
    assert answer["auth"]["accessToken"]["createdAt"].endswith("Z")
    assert ("fineGrained" in answer["auth"]["accessToken"]) is (
        principal.token_role == "fineGrained"
    )
    assert principal_from_whoami(copy.deepcopy(answer)) == principal


@pytest.mark.parametrize(
    "orgs",
    [
        pytest.param(
            [
                {"name": "acme", "roleInOrg": "admin"},
                {"name": "acme", "roleInOrg": "admin", "securityRestrictions": ["mfa"]},
            ],
            id="restricted-second",
        ),
        pytest.param(
            [{"name": "acme", "roleInOrg": "admin"}, {"name": "acme", "roleInOrg": "read"}],
            id="two-roles",
        ),
    ],
)
def test_an_org_listed_twice_is_malformed(orgs: list[dict[str, Any]]) -> None:
    """Which entry held would depend on the order: refused (503), never the first."""
    from hfauth_mw import MalformedAnswer

    with pytest.raises(MalformedAnswer, match="lists the same organization twice"):
        principal_from_whoami({**answer(), "orgs": orgs})
