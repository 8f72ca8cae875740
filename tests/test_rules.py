"""Tests of the access rules (src/hfauth_mw/_rules.py): one table row per rule."""

from __future__ import annotations

import dataclasses
import re
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfauth_mw import ConfigurationError, RequestAuth, SourceUnavailable, _rules
from hfauth_mw._principal import (
    ANONYMOUS,
    OrgMembership,
    Principal,
    ResourceGroup,
    ResourcePattern,
    ScopedGrant,
    principal_from_whoami,
)
from hfauth_mw._rules import (
    AccessPolicy,
    Decision,
    Entity,
    Repo,
    Visibility,
    can_read,
    can_write,
    has_permission,
)

FINGERPRINT = "0f1e2d3c4b5a"
EMAIL = "alice@example.org"
TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWxYz01234567"
OAUTH_TOKEN = "hf_oauth_eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"
ORG_TOKEN = "api_org_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123"

PUBLIC = Visibility.PUBLIC
GATED = Visibility.GATED
#: What an OAuth token reads by default: whoami-v2 does not report its scopes.
OAUTH_PUBLIC_ONLY = "OAuth token, scopes not reported: public repositories only"
PRIVATE = Visibility.PRIVATE

OWN = Repo("model", "alice", "m")
ACME = Repo("model", "acme", "x")
ACME_DS = Repo("dataset", "acme", "d")
BOB = Repo("model", "bob", "y")
OTHER = Repo("space", "other", "s")


def org(name: str, role: str, *groups: ResourceGroup) -> OrgMembership:
    return OrgMembership(name=name, role=role, resource_groups=tuple(groups))


def grant(entity_type: str, entity_name: str | None, *permissions: str) -> ScopedGrant:
    return ScopedGrant(entity_type, entity_name, frozenset(permissions))


def user(
    role: str | None = "write",
    *orgs: OrgMembership,
    scoped: tuple[ScopedGrant, ...] = (),
    global_: tuple[str, ...] = (),
    gated: bool = False,
    auth_type: str = "access_token",
) -> Principal:
    return Principal(
        name="alice",
        email=EMAIL,
        auth_type=auth_type,
        token_role=role,
        token_name="prod-inference",
        orgs=orgs,
        scoped=scoped,
        global_permissions=frozenset(global_),
        can_read_gated_repos=gated,
        fingerprint=FINGERPRINT,
        source="test",
    )


def fine(
    *orgs: OrgMembership,
    scoped: tuple[ScopedGrant, ...] = (),
    global_: tuple[str, ...] = (),
    gated: bool = False,
) -> Principal:
    return user("fineGrained", *orgs, scoped=scoped, global_=global_, gated=gated)


READ = user("read")
WRITE = user("write")
OAUTH = user(None, auth_type="oauth")
UNKNOWN = user("admin")
FINE = fine()

# --- whoami-v2 shaped answers: the parser + rules path ---------------------------------

WHOAMI_FINE: dict[str, Any] = {
    "type": "user",
    "id": "u1",
    "name": "alice",
    "fullname": "Alice",
    "orgs": [
        {
            "type": "org",
            "id": "o1",
            "name": "acme",
            "fullname": "Acme",
            "roleInOrg": "write",
            "plan": "team",
            "resourceGroups": [{"id": "rg1", "name": "research", "role": "read"}],
        }
    ],
    "auth": {
        "type": "access_token",
        "accessToken": {
            "displayName": "prod-inference",
            "role": "fineGrained",
            "createdAt": "2025-01-01T00:00:00.000Z",
            "fineGrained": {
                "canReadGatedRepos": True,
                "global": ["inference.serverless.write", "discussion.write"],
                "scoped": [
                    {
                        "entity": {"_id": "m1", "type": "model", "name": "acme/sentiment"},
                        "permissions": ["repo.content.read"],
                    },
                    {
                        "entity": {"_id": "u1", "type": "user", "name": "alice"},
                        "permissions": ["repo.content.read", "repo.write"],
                    },
                ],
            },
        },
    },
}
WHOAMI_WRITE: dict[str, Any] = {
    "type": "user",
    "id": "62f264b9f3c90f4b6514a269",
    "name": "hub.js",
    "email": "ci@example.org",
    "orgs": [],
    "auth": {
        "type": "access_token",
        "accessToken": {"displayName": "ci-hub.js", "role": "write"},
    },
}
WHOAMI_OAUTH: dict[str, Any] = {
    "type": "user",
    "name": "alice",
    "orgs": [{"name": "acme", "roleInOrg": "admin"}],
    "auth": {"type": "oauth", "expiresAt": "2030-01-01T00:00:00Z"},
}
WHOAMI_ROLELESS_ORG: dict[str, Any] = {
    "name": "alice",
    "orgs": [{"name": "acme"}],  # no roleInOrg: the parser says no_access
    "auth": {"type": "access_token", "accessToken": {"role": "write"}},
}

P_FINE = principal_from_whoami(WHOAMI_FINE, fingerprint=FINGERPRINT)
P_WRITE = principal_from_whoami(WHOAMI_WRITE, fingerprint=FINGERPRINT)
P_OAUTH = principal_from_whoami(WHOAMI_OAUTH, fingerprint=FINGERPRINT)
P_ROLELESS_ORG = principal_from_whoami(WHOAMI_ROLELESS_ORG, fingerprint=FINGERPRINT)
SENTIMENT = Repo("model", "acme", "sentiment")

# --- read -------------------------------------------------------------------------------

READ_ROWS = [
    # anonymous
    pytest.param(
        ANONYMOUS, ACME, PUBLIC, True, "read allowed: public repository", id="anon-public"
    ),
    pytest.param(
        ANONYMOUS, ACME, GATED, False, "read denied: authentication required", id="anon-gated"
    ),
    pytest.param(
        ANONYMOUS, ACME, PRIVATE, False, "read denied: authentication required", id="anon-private"
    ),
    # public: every authenticated principal
    pytest.param(READ, BOB, PUBLIC, True, "read allowed: public repository", id="read-public"),
    pytest.param(
        FINE, BOB, PUBLIC, True, "read allowed: public repository", id="fine-no-entry-public"
    ),
    pytest.param(
        UNKNOWN, BOB, PUBLIC, True, "read allowed: public repository", id="unknown-role-public"
    ),
    pytest.param(
        user("read", org("acme", "no_access")),
        ACME,
        PUBLIC,
        True,
        "read allowed: public repository",
        id="no-access-org-public",
    ),
    # gated
    pytest.param(
        READ, BOB, GATED, True, "read allowed: gated repository, classic token", id="read-gated"
    ),
    pytest.param(
        WRITE, BOB, GATED, True, "read allowed: gated repository, classic token", id="write-gated"
    ),
    pytest.param(
        OAUTH,
        BOB,
        GATED,
        False,
        f"read denied: {OAUTH_PUBLIC_ONLY}",
        id="oauth-gated",
    ),
    pytest.param(
        fine(scoped=(grant("model", "acme/other", "repo.content.read"),)),
        ACME,
        GATED,
        False,
        "read denied: gated repository, fine-grained token lacks canReadGatedRepos",
        id="fine-gated-without-canReadGatedRepos",
    ),
    pytest.param(
        fine(
            org("acme", "read"), scoped=(grant("model", "acme/x", "repo.content.read"),), gated=True
        ),
        ACME,
        GATED,
        True,
        "read allowed: gated repository, token has canReadGatedRepos",
        id="fine-gated-with-canReadGatedRepos-and-entry",
    ),
    pytest.param(
        fine(gated=True),
        ACME,
        GATED,
        True,
        "read allowed: gated repository, token has canReadGatedRepos",
        id="fine-gated-with-canReadGatedRepos-no-entry",
    ),
    pytest.param(
        UNKNOWN,
        BOB,
        GATED,
        False,
        "read denied: token role 'admin' is not recognised",
        id="unknown-role-gated",
    ),
    # unknown roles are strict
    pytest.param(
        UNKNOWN,
        OWN,
        PRIVATE,
        False,
        "read denied: token role 'admin' is not recognised",
        id="unknown-role-admin-own-private",
    ),
    pytest.param(
        user("contributor", org("acme", "admin")),
        ACME,
        PRIVATE,
        False,
        "read denied: token role 'contributor' is not recognised",
        id="unknown-role-contributor",
    ),
    pytest.param(
        user(None),
        OWN,
        PRIVATE,
        False,
        "read denied: token role is missing",
        id="missing-role-non-oauth",
    ),
    # private, classic
    pytest.param(
        READ, OWN, PRIVATE, True, "read allowed: model alice/m, own namespace", id="read-own"
    ),
    pytest.param(
        WRITE, OWN, PRIVATE, True, "read allowed: model alice/m, own namespace", id="write-own"
    ),
    pytest.param(
        user("read", org("acme", "read")),
        ACME,
        PRIVATE,
        True,
        "read allowed: model acme/x, role read in org acme",
        id="read-token-org-read",
    ),
    pytest.param(
        user("read", org("acme", "admin")),
        ACME_DS,
        PRIVATE,
        True,
        "read allowed: dataset acme/d, role admin in org acme",
        id="read-token-org-admin",
    ),
    pytest.param(
        user("write", org("acme", "contributor")),
        ACME,
        PRIVATE,
        True,
        "read allowed: model acme/x, role contributor in org acme",
        id="write-token-org-contributor",
    ),
    pytest.param(
        user("write", org("acme", "write")),
        ACME,
        PRIVATE,
        True,
        "read allowed: model acme/x, role write in org acme",
        id="write-token-org-write",
    ),
    pytest.param(
        user("read", org("acme", "no_access")),
        ACME,
        PRIVATE,
        False,
        "read denied: role no_access in org acme",
        id="read-token-org-no-access",
    ),
    pytest.param(
        user("write", org("acme", "owner")),
        ACME,
        PRIVATE,
        False,
        "read denied: role owner in org acme is not recognised",
        id="org-role-unknown",
    ),
    pytest.param(
        READ,
        BOB,
        PRIVATE,
        False,
        "read denied: model bob/y is private and outside the user's namespace and orgs",
        id="read-outside",
    ),
    pytest.param(
        user("write", org("acme", "admin")),
        OTHER,
        PRIVATE,
        False,
        "read denied: space other/s is private and outside the user's namespace and orgs",
        id="write-outside",
    ),
    pytest.param(
        user("read", org("acme", "no_access", ResourceGroup("rg1", "research", "admin"))),
        ACME,
        PRIVATE,
        False,
        "read denied: role no_access in org acme",
        id="classic-resource-group-not-applied",
    ),
    pytest.param(
        OAUTH,
        OWN,
        PRIVATE,
        False,
        f"read denied: {OAUTH_PUBLIC_ONLY}",
        id="oauth-own",
    ),
    pytest.param(
        OAUTH,
        BOB,
        PRIVATE,
        False,
        f"read denied: {OAUTH_PUBLIC_ONLY}",
        id="oauth-outside",
    ),
    pytest.param(OAUTH, BOB, PUBLIC, True, "read allowed: public repository", id="oauth-public"),
    # private, fine-grained
    pytest.param(
        fine(scoped=(grant("model", "alice/m", "repo.content.read"),)),
        OWN,
        PRIVATE,
        True,
        "read allowed: fine-grained token lists repo.content.read on model alice/m, own namespace",
        id="fine-repo-entry-read",
    ),
    pytest.param(
        fine(scoped=(grant("model", "alice/m", "repo.write"),)),
        OWN,
        PRIVATE,
        True,
        "read allowed: fine-grained token lists repo.write on model alice/m",
        id="fine-repo-entry-write-reads",
    ),
    pytest.param(
        FINE,
        OWN,
        PRIVATE,
        False,
        "read denied: fine-grained token lists no repo.content.read on model alice/m",
        id="fine-own-namespace-not-implied",
    ),
    pytest.param(
        fine(scoped=(grant("model", "alice/m", "discussion.write", "repo.access.read"),)),
        OWN,
        PRIVATE,
        False,
        "lists no repo.content.read",
        id="fine-entry-other-permissions",
    ),
    pytest.param(
        fine(org("acme", "write"), scoped=(grant("dataset", "acme/x", "repo.content.read"),)),
        ACME,
        PRIVATE,
        False,
        "lists no repo.content.read on model acme/x",
        id="fine-entry-type-must-match",
    ),
    pytest.param(
        fine(scoped=(grant("user", "alice", "repo.content.read"),)),
        OWN,
        PRIVATE,
        True,
        "read allowed: fine-grained token lists repo.content.read on user alice, own namespace",
        id="fine-user-entry-own",
    ),
    pytest.param(
        fine(scoped=(grant("user", "bob", "repo.content.read"),)),
        BOB,
        PRIVATE,
        False,
        "read denied: fine-grained token lists no repo.content.read on model bob/y",
        id="fine-user-entry-other-user",
    ),
    pytest.param(
        fine(org("acme", "read"), scoped=(grant("org", "acme", "repo.content.read"),)),
        ACME,
        PRIVATE,
        True,
        (
            "read allowed: fine-grained token lists repo.content.read on org acme, "
            "role read in org acme"
        ),
        id="fine-org-entry-member",
    ),
    pytest.param(
        fine(org("acme", "no_access"), scoped=(grant("org", "acme", "repo.content.read"),)),
        ACME,
        PRIVATE,
        False,
        "read denied: role no_access in org acme",
        id="fine-org-entry-capped-no-access",
    ),
    pytest.param(
        fine(org("acme", "superuser"), scoped=(grant("org", "acme", "repo.write"),)),
        ACME,
        PRIVATE,
        False,
        "read denied: role superuser in org acme is not recognised",
        id="fine-org-entry-capped-unknown-role",
    ),
    pytest.param(
        fine(scoped=(grant("org", "acme", "repo.content.read"),)),
        ACME,
        PRIVATE,
        False,
        "read denied: model acme/x is outside the user's namespace and orgs",
        id="fine-org-entry-not-member",
    ),
    pytest.param(
        fine(org("acme", "no_access"), scoped=(grant("model", "acme/x", "repo.content.read"),)),
        ACME,
        PRIVATE,
        False,
        "read denied: role no_access in org acme",
        id="fine-repo-entry-org-cap",
    ),
    pytest.param(
        fine(scoped=(grant("model", "bob/y", "repo.content.read"),)),
        BOB,
        PRIVATE,
        True,
        (
            "read allowed: fine-grained token lists repo.content.read on model bob/y, "
            "outside the user's namespace and orgs"
        ),
        id="fine-repo-entry-collaborator",
    ),
    pytest.param(
        fine(org("acme", "no_access", ResourceGroup("rg1", "research", "admin"))),
        ACME,
        PRIVATE,
        False,
        "lists no repo.content.read",
        id="fine-resource-group-role-not-inherited",
    ),
    pytest.param(
        fine(org("acme", "read"), scoped=(grant("resource-group", None, "repo.write"),)),
        ACME,
        PRIVATE,
        False,
        "lists no repo.content.read",
        id="fine-resource-group-entry-not-inherited",
    ),
    # through the whoami-v2 parser
    pytest.param(
        P_FINE,
        SENTIMENT,
        PRIVATE,
        True,
        (
            "read allowed: fine-grained token lists repo.content.read on model acme/sentiment, "
            "role write in org acme"
        ),
        id="whoami-fine-repo-entry",
    ),
    pytest.param(
        P_FINE,
        ACME,
        PRIVATE,
        False,
        "lists no repo.content.read on model acme/x",
        id="whoami-fine-org-repo-not-listed",
    ),
    pytest.param(
        P_FINE,
        ACME,
        GATED,
        True,
        "read allowed: gated repository, token has canReadGatedRepos",
        id="whoami-fine-gated-flag-is-enough",
    ),
    pytest.param(
        P_FINE,
        Repo("dataset", "alice", "d"),
        PRIVATE,
        True,
        "on user alice, own namespace",
        id="whoami-fine-user-entry",
    ),
    pytest.param(
        P_WRITE, Repo("model", "hub.js", "x"), PRIVATE, True, "own namespace", id="whoami-write-own"
    ),
    pytest.param(
        P_OAUTH,
        ACME,
        PRIVATE,
        False,
        OAUTH_PUBLIC_ONLY,
        id="whoami-oauth-org",
    ),
    pytest.param(
        P_ROLELESS_ORG,
        ACME,
        PRIVATE,
        False,
        "read denied: role no_access in org acme",
        id="whoami-org-without-role",
    ),
]


@pytest.mark.parametrize(("principal", "repo", "visibility", "allowed", "reason"), READ_ROWS)
def test_can_read(
    principal: Principal, repo: Repo, visibility: Visibility, allowed: bool, reason: str
) -> None:
    # The rows are the token's rules: a gated repository's gate is taken as passed
    # (test_a_gate_not_passed_is_read_by_the_owner_alone is the gate).
    decision = can_read(principal, repo, visibility=visibility, gate_passed=True)
    assert decision.allowed is allowed
    assert bool(decision) is allowed
    assert reason in decision.reason
    assert decision.reason.startswith("read allowed:" if allowed else "read denied:")
    assert decision.needed == "repo.content.read"


NOT_ADMITTED = "read denied: gated: {} has not been granted access to {}"


@pytest.mark.parametrize(
    ("principal", "repo", "allowed", "reason"),
    [
        pytest.param(READ, BOB, False, NOT_ADMITTED.format("alice", "bob/y"), id="classic-read"),
        pytest.param(WRITE, BOB, False, NOT_ADMITTED.format("alice", "bob/y"), id="classic-write"),
        pytest.param(
            fine(gated=True), BOB, False, NOT_ADMITTED.format("alice", "bob/y"), id="canReadGated"
        ),
        pytest.param(
            fine(scoped=(grant("model", "bob/y", "repo.content.read"),)),
            BOB,
            False,
            NOT_ADMITTED.format("alice", "bob/y"),
            id="entry-on-the-repo",
        ),
        pytest.param(
            READ,
            Repo("model", "alice", "mine"),
            True,
            "read allowed: gated repository, classic token",
            id="owner-needs-no-gate",
        ),
        pytest.param(ANONYMOUS, BOB, False, "read denied: authentication required", id="anonymous"),
    ],
)
def test_a_gate_not_passed_is_read_by_the_owner_alone(
    principal: Principal, repo: Repo, allowed: bool, reason: str
) -> None:
    decision = can_read(principal, repo, visibility=GATED)
    assert decision.allowed is allowed
    assert decision.reason == reason


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: AccessPolicy(oauth_reads=True), id="policy"),
        pytest.param(lambda: can_read(OAUTH, OWN, oauth_reads=True), id="can_read"),
        pytest.param(
            lambda: has_permission(OAUTH, "user.webhooks.read", oauth_reads=True),
            id="has_permission",
        ),
    ],
)
def test_oauth_reads_is_refused_naming_its_replacement(make: Any) -> None:
    """oauth_reads=True read an OAuth token as a read token over every org; the Hub's
    read-repos covers only the orgs the user selected. It cannot keep working."""
    with pytest.raises(ConfigurationError, match=r"oauth_access"):
        make()


def test_oauth_reads_false_is_still_accepted_and_grants_nothing() -> None:
    policy = AccessPolicy(oauth_reads=False)
    assert policy.oauth_reads is False
    assert not policy.can_read(OAUTH, OWN)
    assert not can_read(OAUTH, OWN, oauth_reads=False)


def test_oauth_reads_must_be_a_real_boolean():
    with pytest.raises(ConfigurationError):
        AccessPolicy(oauth_reads="false")  # type: ignore[arg-type]


# --- write ------------------------------------------------------------------------------

WRITE_ROWS = [
    pytest.param(ANONYMOUS, ACME, False, False, "write denied: authentication required", id="anon"),
    pytest.param(READ, OWN, False, False, "write denied: token role read", id="read-token-own"),
    pytest.param(
        user("read", org("acme", "admin")),
        ACME,
        True,
        False,
        "write denied: token role read",
        id="read-token-org-admin",
    ),
    pytest.param(
        OAUTH,
        OWN,
        False,
        False,
        "write denied: OAuth token, scopes not reported: writes only where",
        id="oauth-never-writes",
    ),
    pytest.param(
        UNKNOWN,
        OWN,
        False,
        False,
        "write denied: token role 'admin' is not recognised",
        id="unknown-role-admin",
    ),
    pytest.param(
        user(None), OWN, False, False, "write denied: token role is missing", id="missing-role"
    ),
    pytest.param(
        WRITE, OWN, False, True, "write allowed: model alice/m, own namespace", id="write-own"
    ),
    pytest.param(
        user("write", org("acme", "write")),
        ACME,
        False,
        True,
        "write allowed: model acme/x, role write in org acme",
        id="write-org-write",
    ),
    pytest.param(
        user("write", org("acme", "admin")),
        ACME_DS,
        False,
        True,
        "write allowed: dataset acme/d, role admin in org acme",
        id="write-org-admin",
    ),
    pytest.param(
        user("write", org("acme", "contributor")),
        ACME,
        False,
        False,
        "write denied: role contributor in org acme allows writing only repos the user created",
        id="write-org-contributor-not-creator",
    ),
    pytest.param(
        user("write", org("acme", "contributor")),
        ACME,
        True,
        True,
        "write allowed: model acme/x, role contributor in org acme, repository created by the user",
        id="write-org-contributor-creator",
    ),
    pytest.param(
        user("write", org("acme", "read")),
        ACME,
        False,
        False,
        "write denied: role read in org acme caps the token",
        id="write-token-org-read",
    ),
    pytest.param(
        user("write", org("acme", "read")),
        ACME,
        True,
        False,
        "write denied: role read in org acme caps the token",
        id="write-token-org-read-creator",
    ),
    pytest.param(
        user("write", org("acme", "no_access")),
        ACME,
        True,
        False,
        "write denied: role no_access in org acme",
        id="write-org-no-access",
    ),
    pytest.param(
        user("write", org("acme", "owner")),
        ACME,
        True,
        False,
        "write denied: role owner in org acme is not recognised",
        id="write-org-unknown-role",
    ),
    pytest.param(
        user("write", org("acme", "admin")),
        OTHER,
        False,
        False,
        "write denied: not a member of other",
        id="write-not-member",
    ),
    pytest.param(
        user("write", org("acme", "no_access", ResourceGroup("rg1", None, "write"))),
        ACME,
        True,
        False,
        "write denied: role no_access in org acme",
        id="write-resource-group-not-applied",
    ),
    # fine-grained
    pytest.param(
        fine(scoped=(grant("model", "alice/m", "repo.write"),)),
        OWN,
        False,
        True,
        "write allowed: fine-grained token lists repo.write on model alice/m, own namespace",
        id="fine-repo-entry-own",
    ),
    pytest.param(
        fine(scoped=(grant("model", "alice/m", "repo.content.read"),)),
        OWN,
        False,
        False,
        "write denied: fine-grained token lists no repo.write on model alice/m",
        id="fine-read-entry-does-not-write",
    ),
    pytest.param(
        fine(scoped=(grant("user", "alice", "repo.write"),)),
        OWN,
        False,
        True,
        "write allowed: fine-grained token lists repo.write on user alice, own namespace",
        id="fine-user-entry-own",
    ),
    pytest.param(
        fine(org("acme", "write"), scoped=(grant("org", "acme", "repo.write"),)),
        ACME,
        False,
        True,
        "on org acme, role write in org acme",
        id="fine-org-entry-org-write",
    ),
    pytest.param(
        fine(org("acme", "admin"), scoped=(grant("model", "acme/x", "repo.write"),)),
        ACME,
        False,
        True,
        "on model acme/x, role admin in org acme",
        id="fine-repo-entry-org-admin",
    ),
    pytest.param(
        fine(org("acme", "read"), scoped=(grant("org", "acme", "repo.write"),)),
        ACME,
        True,
        False,
        "write denied: role read in org acme caps the token",
        id="fine-org-entry-capped-read",
    ),
    pytest.param(
        fine(org("acme", "contributor"), scoped=(grant("org", "acme", "repo.write"),)),
        ACME,
        False,
        False,
        "write denied: role contributor in org acme allows writing only repos the user created",
        id="fine-org-entry-contributor-not-creator",
    ),
    pytest.param(
        fine(org("acme", "contributor"), scoped=(grant("org", "acme", "repo.write"),)),
        ACME,
        True,
        True,
        "repository created by the user",
        id="fine-org-entry-contributor-creator",
    ),
    pytest.param(
        fine(org("acme", "no_access"), scoped=(grant("model", "acme/x", "repo.write"),)),
        ACME,
        False,
        False,
        "write denied: role no_access in org acme",
        id="fine-repo-entry-org-no-access",
    ),
    pytest.param(
        fine(scoped=(grant("model", "bob/y", "repo.write"),)),
        BOB,
        False,
        False,
        "write denied: model bob/y is outside the user's namespace and orgs",
        id="fine-repo-entry-outside-strict",
    ),
    pytest.param(
        fine(scoped=(grant("org", "acme", "repo.write"),)),
        ACME,
        False,
        False,
        "write denied: model acme/x is outside the user's namespace and orgs",
        id="fine-org-entry-not-member",
    ),
    pytest.param(
        fine(org("acme", "write"), scoped=(grant("resource-group", "research", "repo.write"),)),
        ACME,
        False,
        False,
        "write denied: fine-grained token lists no repo.write on model acme/x",
        id="fine-resource-group-not-inherited",
    ),
    pytest.param(
        fine(org("acme", "write", ResourceGroup("rg1", "research", "admin"))),
        ACME,
        False,
        False,
        "lists no repo.write",
        id="fine-resource-group-role-not-inherited",
    ),
    # through the whoami-v2 parser
    pytest.param(
        P_FINE,
        SENTIMENT,
        False,
        False,
        "lists no repo.write on model acme/sentiment",
        id="whoami-fine-read-entry-only",
    ),
    pytest.param(
        P_FINE,
        Repo("space", "alice", "demo"),
        False,
        True,
        "on user alice, own namespace",
        id="whoami-fine-user-entry",
    ),
    pytest.param(
        P_WRITE, Repo("model", "hub.js", "x"), False, True, "own namespace", id="whoami-write-own"
    ),
    pytest.param(
        P_WRITE,
        ACME,
        False,
        False,
        "write denied: not a member of acme",
        id="whoami-write-not-member",
    ),
    pytest.param(P_OAUTH, ACME, True, False, "write denied: OAuth token", id="whoami-oauth"),
]


@pytest.mark.parametrize(("principal", "repo", "created", "allowed", "reason"), WRITE_ROWS)
def test_can_write(
    principal: Principal, repo: Repo, created: bool, allowed: bool, reason: str
) -> None:
    decision = can_write(principal, repo, caller_created=created)
    assert decision.allowed is allowed
    assert bool(decision) is allowed
    assert reason in decision.reason
    assert decision.reason.startswith("write allowed:" if allowed else "write denied:")
    assert decision.needed == "repo.write"


# --- permissions ------------------------------------------------------------------------

ORG_ACME = Entity("org", "acme")

PERMISSION_ROWS = [
    pytest.param(
        ANONYMOUS,
        "repo.content.read",
        None,
        False,
        "permission denied: authentication required",
        id="anon",
    ),
    pytest.param(
        UNKNOWN,
        "repo.content.read",
        None,
        False,
        "token role 'admin' is not recognised",
        id="unknown-role",
    ),
    # classic write: the user's full rights, capped by the org role
    pytest.param(
        WRITE,
        "inference.serverless.write",
        None,
        True,
        "permission allowed: inference.serverless.write, classic write token",
        id="write-any",
    ),
    pytest.param(
        WRITE, "made.up.permission", None, True, "made.up.permission", id="write-unknown-name"
    ),
    pytest.param(
        user("write", org("acme", "read")),
        "org.read",
        ORG_ACME,
        True,
        "permission allowed: org.read on org acme, classic write token, role read in org acme",
        id="write-org-read-member-read-perm",
    ),
    pytest.param(
        user("write", org("acme", "read")),
        "repo.write",
        ORG_ACME,
        False,
        "permission denied: repo.write on org acme: role read in org acme caps the token",
        id="write-org-read-member-capped",
    ),
    pytest.param(
        user("write", org("acme", "admin")),
        "repo.write",
        ORG_ACME,
        True,
        "role admin in org acme",
        id="write-org-admin",
    ),
    pytest.param(
        WRITE,
        "org.read",
        ORG_ACME,
        False,
        "permission denied: org.read on org acme: not a member of acme",
        id="write-org-not-member",
    ),
    pytest.param(
        user("write", org("acme", "no_access")),
        "org.read",
        ORG_ACME,
        False,
        "role no_access in org acme",
        id="write-org-no-access",
    ),
    pytest.param(
        WRITE,
        "repo.write",
        OWN,
        True,
        "on model alice/m, classic write token, own namespace",
        id="write-repo-object-own",
    ),
    pytest.param(WRITE, "repo.write", BOB, False, "not a member of bob", id="write-repo-outside"),
    pytest.param(
        WRITE,
        "user.webhooks.write",
        Entity("user", "alice"),
        True,
        "own namespace",
        id="write-user-self",
    ),
    pytest.param(
        WRITE,
        "user.webhooks.read",
        Entity("user", "bob"),
        False,
        "permission denied:",
        id="write-user-other",
    ),
    pytest.param(
        WRITE,
        "collection.write",
        Entity("collection", "alice/faves-123"),
        True,
        "own namespace",
        id="write-collection-own",
    ),
    pytest.param(
        WRITE,
        "collection.write",
        Entity("collection", "65f0c0ffee"),
        False,
        "whose namespace is unknown",
        id="write-entity-without-namespace",
    ),
    # classic read and OAuth-as-read: *.read only
    pytest.param(
        READ,
        "collection.read",
        None,
        True,
        "permission allowed: collection.read, classic read token",
        id="read-read-perm",
    ),
    pytest.param(
        READ,
        "repo.write",
        None,
        False,
        (
            "permission denied: token role read grants only *.read and "
            "inference.serverless.write, not repo.write"
        ),
        id="read-write-perm",
    ),
    pytest.param(
        user("read", org("acme", "admin")),
        "org.write",
        ORG_ACME,
        False,
        "token role read grants only *.read",
        id="read-token-org-admin-write-perm",
    ),
    pytest.param(
        user("read", org("acme", "admin")),
        "org.read",
        ORG_ACME,
        True,
        "role admin in org acme",
        id="read-token-org-admin-read-perm",
    ),
    pytest.param(
        user("read", org("acme", "no_access")),
        "org.read",
        ORG_ACME,
        False,
        "role no_access in org acme",
        id="read-token-org-no-access",
    ),
    pytest.param(
        OAUTH,
        "user.webhooks.read",
        None,
        False,
        OAUTH_PUBLIC_ONLY,
        id="oauth-read-perm",
    ),
    pytest.param(
        OAUTH,
        "discussion.write",
        None,
        False,
        OAUTH_PUBLIC_ONLY,
        id="oauth-write-perm",
    ),
    # fine-grained
    pytest.param(
        fine(global_=("inference.serverless.write",)),
        "inference.serverless.write",
        None,
        True,
        "permission allowed: inference.serverless.write is a global permission of the token",
        id="fine-global",
    ),
    pytest.param(
        fine(scoped=(grant("user", "alice", "repo.write"),)),
        "repo.write",
        None,
        False,
        "permission denied: fine-grained token lists no global repo.write",
        id="fine-not-global",
    ),
    pytest.param(
        fine(org("acme", "write"), global_=("discussion.write",)),
        "discussion.write",
        ACME,
        True,
        "global discussion.write on model acme/x, it is a global permission of the token, "
        "role write in org acme",
        id="fine-global-with-entity",
    ),
    # A global permission on an entity stops where a classic token's rights stop.
    pytest.param(
        fine(global_=("discussion.write",)),
        "discussion.write",
        ACME,
        False,
        "permission denied: global discussion.write on model acme/x: not a member of acme",
        id="fine-global-outside-the-orgs",
    ),
    pytest.param(
        fine(org("acme", "read"), global_=("inference.endpoints.write",)),
        "inference.endpoints.write",
        Entity("org", "acme"),
        False,
        "role read in org acme caps the token",
        id="fine-global-capped-by-the-org-role",
    ),
    pytest.param(
        fine(global_=("user.webhooks.write",)),
        "user.webhooks.write",
        Entity("user", "bob"),
        False,
        "permission denied: global user.webhooks.write on user bob",
        id="fine-global-on-another-user",
    ),
    pytest.param(
        fine(global_=("user.webhooks.write",)),
        "user.webhooks.write",
        Entity("user", "alice"),
        True,
        "own namespace",
        id="fine-global-on-the-user-self",
    ),
    # repo.write reads too, as can_read has it.
    pytest.param(
        fine(global_=("repo.write",)),
        "repo.content.read",
        None,
        True,
        "repo.content.read (through repo.write) is a global permission of the token",
        id="fine-global-repo-write-reads",
    ),
    pytest.param(
        fine(scoped=(grant("model", "alice/m", "repo.write"),)),
        "repo.content.read",
        Repo("model", "alice", "m"),
        True,
        "fine-grained token lists repo.write on model alice/m",
        id="fine-entry-repo-write-reads",
    ),
    # A repo.* permission listed as global is still capped by the org role.
    pytest.param(
        fine(org("acme", "read"), global_=("repo.write",)),
        "repo.write",
        ACME,
        False,
        "permission denied: global repo.write on model acme/x",
        id="fine-global-repo-write-read-member",
    ),
    pytest.param(
        fine(org("acme", "no_access"), global_=("repo.content.read",)),
        "repo.content.read",
        ACME,
        False,
        "permission denied: global repo.content.read",
        id="fine-global-repo-read-no-access-member",
    ),
    pytest.param(
        fine(global_=("repo.content.read",)),
        "repo.content.read",
        Repo("model", "bob", "y"),
        False,
        "permission denied: global repo.content.read",
        id="fine-global-repo-read-other-user",
    ),
    pytest.param(
        fine(org("acme", "write"), global_=("repo.write",)),
        "repo.write",
        ACME,
        True,
        "is a global permission of the token",
        id="fine-global-repo-write-write-member",
    ),
    pytest.param(
        fine(global_=("repo.write",)),
        "repo.write",
        None,
        True,
        "is a global permission",
        id="fine-global-repo-write-no-entity",
    ),
    pytest.param(
        fine(org("acme", "read"), scoped=(grant("org", "acme", "org.read"),)),
        "org.read",
        ORG_ACME,
        True,
        "permission allowed: fine-grained token lists org.read on org acme",
        id="fine-org-entry",
    ),
    pytest.param(
        fine(org("acme", "read"), scoped=(grant("org", "acme", "repo.write"),)),
        "repo.write",
        ORG_ACME,
        False,
        "permission denied: role read in org acme caps the token",
        id="fine-org-entry-capped",
    ),
    pytest.param(
        fine(org("acme", "admin"), scoped=(grant("org", "acme", "repo.write"),)),
        "repo.write",
        ORG_ACME,
        True,
        "role admin in org acme",
        id="fine-org-entry-admin",
    ),
    pytest.param(
        fine(scoped=(grant("org", "acme", "org.read"),)),
        "org.read",
        ORG_ACME,
        False,
        "permission denied: org acme is outside the user's namespace and orgs",
        id="fine-org-entry-not-member",
    ),
    pytest.param(
        fine(org("acme", "write"), scoped=(grant("org", "acme", "discussion.write"),)),
        "discussion.write",
        ACME,
        True,
        "lists discussion.write on org acme, role write in org acme",
        id="fine-namespace-entry-covers-repo",
    ),
    pytest.param(
        fine(org("acme", "read"), scoped=(grant("org", "acme", "discussion.write"),)),
        "discussion.write",
        ACME,
        False,
        "role read in org acme caps the token",
        id="fine-namespace-entry-capped-on-repo",
    ),
    pytest.param(
        fine(scoped=(grant("model", "bob/y", "repo.access.read"),)),
        "repo.access.read",
        BOB,
        True,
        "outside the user's namespace and orgs",
        id="fine-repo-entry-collaborator-read",
    ),
    pytest.param(
        fine(scoped=(grant("model", "bob/y", "discussion.write"),)),
        "discussion.write",
        BOB,
        False,
        "permission denied: model bob/y is outside",
        id="fine-repo-entry-outside-write",
    ),
    pytest.param(
        fine(scoped=(grant("collection", "65f0c0ffee", "collection.write"),)),
        "collection.write",
        Entity("collection", "65f0c0ffee"),
        True,
        "lists collection.write on collection 65f0c0ffee",
        id="fine-exact-entry-opaque-entity",
    ),
    pytest.param(
        fine(scoped=(grant("collection", "65f0c0ffee", "collection.read"),)),
        "collection.write",
        Entity("collection", "65f0c0ffee"),
        False,
        "lists no collection.write",
        id="fine-entry-lacks-perm",
    ),
    pytest.param(
        fine(scoped=(grant("user", "alice", "user.webhooks.read"),)),
        "user.webhooks.read",
        Entity("user", "alice"),
        True,
        "own namespace",
        id="fine-user-entry-self",
    ),
    pytest.param(
        fine(scoped=(grant("user", "bob", "user.webhooks.read"),)),
        "user.webhooks.read",
        Entity("user", "bob"),
        False,
        "permission denied:",
        id="fine-user-entry-other",
    ),
    pytest.param(
        fine(scoped=(grant("model", "alice/m", "repo.write"),)),
        "something.new",
        OWN,
        False,
        "lists no something.new",
        id="fine-unknown-permission-no-crash",
    ),
    pytest.param(
        P_FINE,
        "inference.serverless.write",
        None,
        True,
        "global permission",
        id="whoami-fine-global",
    ),
    pytest.param(
        P_FINE,
        "repo.write",
        Repo("dataset", "alice", "d"),
        True,
        "on user alice, own namespace",
        id="whoami-fine-user-entry",
    ),
    pytest.param(
        P_FINE, "repo.write", SENTIMENT, False, "lists no repo.write", id="whoami-fine-no-write"
    ),
]


SETTINGS = "changes the org's settings, which needs role admin in org acme"


@pytest.mark.parametrize(
    ("principal", "permission", "allowed", "reason"),
    [
        pytest.param(
            user("write", org("acme", "admin")), "org.write", True, "role admin", id="admin"
        ),
        pytest.param(
            user("write", org("acme", "write")),
            "org.write",
            False,
            f"{SETTINGS} (role write)",
            id="write-member",
        ),
        pytest.param(
            fine(org("acme", "write"), scoped=(grant("org", "acme", "org.write"),)),
            "org.write",
            False,
            f"{SETTINGS} (role write)",
            id="fine-grained-entry-write-member",
        ),
        pytest.param(
            fine(org("acme", "admin"), scoped=(grant("org", "acme", "org.write"),)),
            "org.write",
            True,
            "role admin",
            id="fine-grained-entry-admin",
        ),
        pytest.param(
            fine(org("acme", "write"), global_=("org.write",)),
            "org.write",
            False,
            f"{SETTINGS} (role write)",
            id="global-write-member",
        ),
        pytest.param(
            fine(global_=("org.write",)),
            "org.write",
            False,
            "permission denied: global org.write on org acme: not a member of acme",
            id="global-not-a-member",
        ),
        pytest.param(
            user("read", org("acme", "read")), "org.read", True, "role read", id="reading-settings"
        ),
    ],
)
def test_org_settings_need_the_admin_role(principal, permission, allowed, reason):
    """hub-tokens.md: admin is write plus org settings, whatever grants the permission."""
    decision = has_permission(principal, permission, ORG_ACME)
    assert decision.allowed is allowed
    assert reason in decision.reason


@pytest.mark.parametrize(
    ("principal", "permission", "entity", "allowed", "reason"), PERMISSION_ROWS
)
def test_has_permission(
    principal: Principal,
    permission: str,
    entity: Entity | Repo | None,
    allowed: bool,
    reason: str,
) -> None:
    decision = has_permission(principal, permission, entity)
    assert decision.allowed is allowed
    assert bool(decision) is allowed
    assert reason in decision.reason
    assert decision.reason.startswith("permission allowed:" if allowed else "permission denied:")
    assert decision.needed == permission


def test_has_permission_rejects_a_non_string_permission() -> None:
    with pytest.raises(TypeError):
        has_permission(WRITE, None)  # type: ignore[arg-type]


def test_repo_and_entity_give_the_same_answer() -> None:
    principal = fine(org("acme", "write"), scoped=(grant("org", "acme", "repo.write"),))
    by_repo = has_permission(principal, "repo.write", ACME)
    by_entity = has_permission(principal, "repo.write", Entity("model", "acme/x"))
    assert by_repo == by_entity
    assert by_repo.allowed


# --- Repo.parse -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("model:acme/x", Repo("model", "acme", "x"), id="model"),
        pytest.param("dataset:acme/d", Repo("dataset", "acme", "d"), id="dataset"),
        pytest.param("space:acme/s-1.v2", Repo("space", "acme", "s-1.v2"), id="space"),
        pytest.param("acme/x", Repo("model", "acme", "x"), id="bare-is-model"),
        pytest.param("hub.js/My_Model", Repo("model", "hub.js", "My_Model"), id="case-kept"),
        pytest.param("bob/" + "x" * 96, Repo("model", "bob", "x" * 96), id="96-chars"),
        pytest.param("a/_x_", Repo("model", "a", "_x_"), id="underscores-at-ends"),
    ],
)
def test_repo_parse_valid(text: str, expected: Repo) -> None:
    repo = Repo.parse(text)
    assert repo == expected
    assert repo.id == f"{expected.owner}/{expected.name}"
    assert Repo.parse(str(repo)) == repo


def test_repo_str_and_id() -> None:
    repo = Repo("dataset", "acme", "d")
    assert str(repo) == "dataset:acme/d"
    assert repo.id == "acme/d"


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("acme", id="no-slash"),
        pytest.param("acme/", id="empty-name"),
        pytest.param("/x", id="empty-owner"),
        pytest.param("acme/x/y", id="extra-slash"),
        pytest.param("models:acme/x", id="plural-type"),
        pytest.param("Model:acme/x", id="type-case"),
        pytest.param(":acme/x", id="empty-type"),
        pytest.param("dataset:", id="type-only"),
        pytest.param("collection:acme/x", id="not-a-repo-type"),
        pytest.param("acme co/x", id="space-in-owner"),
        pytest.param("acme/x\n", id="newline"),
        pytest.param("acme/\tx", id="tab"),
        pytest.param("acme/x\x00", id="nul"),
        pytest.param("acme/x\u200b", id="zero-width"),
        pytest.param(" acme/x", id="leading-space"),
        pytest.param("bob/..", id="dot-dot-name"),
        pytest.param("../x", id="dot-dot-owner"),
        pytest.param("bob/.", id="dot-name"),
        pytest.param("bob/a..b", id="double-dot-inside"),
        pytest.param("bob/a--b", id="double-dash"),
        pytest.param("bob/-x", id="leading-dash"),
        pytest.param("bob/x.", id="trailing-dot"),
        pytest.param("bob/" + "x" * 97, id="97-chars"),
        pytest.param("bob/a\\b", id="backslash"),
        pytest.param("bob/a?b", id="question-mark"),
        pytest.param("bob/a#b", id="hash"),
        pytest.param("bob/\u4e2d", id="non-ascii"),
    ],
)
def test_repo_parse_invalid(text: str) -> None:
    with pytest.raises(ValueError, match="repository"):
        Repo.parse(text)


def test_repo_parse_rejects_non_text() -> None:
    with pytest.raises(ValueError, match="text"):
        Repo.parse(42)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "owner", "name"),
    [
        pytest.param("widget", "acme", "x", id="bad-type"),
        pytest.param("model", "", "x", id="empty-owner"),
        pytest.param("model", "a/b", "x", id="slash-owner"),
        pytest.param("model", "acme", "x y", id="space-name"),
    ],
)
def test_repo_constructor_validates(kind: str, owner: str, name: str) -> None:
    with pytest.raises(ValueError, match="repository"):
        Repo(kind, owner, name)  # type: ignore[arg-type]


def test_repo_parse_error_does_not_echo_a_token() -> None:
    with pytest.raises(ValueError, match="expected 'owner/name'") as info:
        Repo.parse(TOKEN)
    assert TOKEN not in str(info.value)


# --- reasons hold no secret -------------------------------------------------------------

SECRET_LIKE = re.compile(r"hf_[A-Za-z0-9]{6,}|api_org_|eyJ")


def _all_decisions() -> list[Decision]:
    decisions = []
    for row in READ_ROWS:
        principal, repo, visibility, *_ = row.values
        decisions.append(can_read(principal, repo, visibility=visibility))
    for row in WRITE_ROWS:
        principal, repo, created, *_ = row.values
        decisions.append(can_write(principal, repo, caller_created=created))
    for row in PERMISSION_ROWS:
        principal, permission, entity, *_ = row.values
        decisions.append(has_permission(principal, permission, entity))
    return decisions


def test_no_reason_holds_a_secret_and_every_reason_is_one_line() -> None:
    decisions = _all_decisions()
    assert len(decisions) == len(READ_ROWS) + len(WRITE_ROWS) + len(PERMISSION_ROWS)
    for decision in decisions:
        assert FINGERPRINT not in decision.reason
        assert EMAIL not in decision.reason
        assert "prod-inference" not in decision.reason  # the token's display name
        assert not SECRET_LIKE.search(decision.reason)
        assert "\n" not in decision.reason
        assert "\r" not in decision.reason
        assert decision.reason.split(":")[0] in {
            "read allowed",
            "read denied",
            "write allowed",
            "write denied",
            "permission allowed",
            "permission denied",
        }


@pytest.mark.parametrize(
    "decide",
    [
        pytest.param(lambda: can_read(user(TOKEN), OWN), id="token-as-role-read"),
        pytest.param(lambda: can_write(user(TOKEN), OWN), id="token-as-role-write"),
        pytest.param(lambda: has_permission(READ, TOKEN), id="token-as-permission"),
        pytest.param(lambda: has_permission(READ, OAUTH_TOKEN + ".write"), id="oauth-token"),
        pytest.param(lambda: has_permission(READ, ORG_TOKEN), id="legacy-org-token"),
        pytest.param(
            lambda: has_permission(WRITE, "x.read", Entity("org", TOKEN)), id="token-as-org"
        ),
        pytest.param(
            lambda: has_permission(FINE, "x.write", Entity("collection", TOKEN)), id="fine"
        ),
        pytest.param(
            lambda: can_read(user("write", org(TOKEN, "no_access")), Repo("model", TOKEN, "x")),
            id="token-as-org-name",
        ),
        pytest.param(
            lambda: can_read(user("ad\nmin\x1b[31m"), OWN), id="control-characters-in-role"
        ),
    ],
)
def test_hostile_values_are_redacted_and_kept_on_one_line(decide: Any) -> None:
    decision = decide()
    assert not decision.allowed
    for secret in (TOKEN, OAUTH_TOKEN, ORG_TOKEN):
        assert secret not in decision.reason
        assert secret not in decision.needed
    assert not SECRET_LIKE.search(decision.reason)
    assert decision.reason.isprintable()


def test_permission_names_that_merely_start_with_hf_are_kept() -> None:
    decision = has_permission(WRITE, "hf_inference.write")
    assert decision.needed == "hf_inference.write"
    assert "hf_inference.write" in decision.reason


def test_long_values_are_shortened() -> None:
    decision = can_read(user("r" * 5000), OWN)
    assert not decision.allowed
    assert len(decision.reason) < 200


# --- Decision ---------------------------------------------------------------------------


def test_decision_is_frozen_and_truthy_when_allowed() -> None:
    allowed = Decision(True, "read allowed: public repository", "repo.content.read")
    denied = Decision(False, "read denied: authentication required", "repo.content.read")
    assert allowed
    assert not denied
    with pytest.raises(dataclasses.FrozenInstanceError):
        allowed.allowed = False  # type: ignore[misc]


def test_visibility_accepts_its_string_value() -> None:
    assert can_read(ANONYMOUS, ACME, visibility="public").allowed  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="visible"):
        can_read(ANONYMOUS, ACME, visibility="visible")  # type: ignore[arg-type]


def test_module_exports() -> None:
    assert set(_rules.__all__) >= {
        "AccessPolicy",
        "Decision",
        "Entity",
        "Repo",
        "RepoType",
        "Visibility",
        "can_read",
        "can_write",
        "has_permission",
    }
    for name in _rules.__all__:
        assert hasattr(_rules, name), name


# --- AccessPolicy -----------------------------------------------------------------------


def _fail(*_args: object) -> bool:
    raise AssertionError("callback must not be called")


def test_policy_defaults_every_repo_private_and_caller_never_creator() -> None:
    policy = AccessPolicy()
    assert not policy.can_read(ANONYMOUS, ACME)
    assert policy.can_read(READ, OWN)
    assert not policy.can_read(READ, BOB)
    contributor = user("write", org("acme", "contributor"))
    decision = policy.can_write(contributor, ACME)
    assert not decision
    assert "only repos the user created" in decision.reason


def test_policy_uses_the_visibility_callback() -> None:
    seen: list[Repo] = []

    def visibility(repo: Repo) -> Visibility:
        seen.append(repo)
        return {"x": PUBLIC, "y": GATED}.get(repo.name, PRIVATE)

    admitted: list[tuple[str, Repo]] = []

    def gate_passed(principal: Principal, repo: Repo) -> bool:
        admitted.append((principal.name, repo))
        return True

    policy = AccessPolicy(visibility=visibility, gate_passed=gate_passed)
    assert policy.can_read(ANONYMOUS, ACME).reason == "read allowed: public repository"
    assert not policy.can_read(ANONYMOUS, BOB)
    assert policy.can_read(READ, BOB).reason == "read allowed: gated repository, classic token"
    assert not policy.can_read(FINE, BOB)
    assert seen == [ACME, BOB, BOB, BOB]
    assert admitted == [("alice", BOB), ("alice", BOB)]  # gated repos only, callers known


@pytest.mark.parametrize(
    ("gate_passed", "allowed"),
    [
        pytest.param(None, False, id="no-callback-nobody-admitted"),
        pytest.param(lambda principal, repo: True, True, id="admitted"),
        pytest.param(lambda principal, repo: False, False, id="not-admitted"),
        pytest.param(lambda principal, repo: "yes", False, id="only-True-counts"),
    ],
)
def test_policy_asks_gate_passed_for_gated_repos(gate_passed: Any, allowed: bool) -> None:
    policy = AccessPolicy(visibility=lambda repo: GATED, gate_passed=gate_passed)
    assert policy.can_read(READ, BOB).allowed is allowed


def test_a_failing_gate_passed_callback_is_unavailable_not_allowed() -> None:
    def gate_passed(principal: Principal, repo: Repo) -> bool:
        raise RuntimeError("gate service down")

    policy = AccessPolicy(visibility=lambda repo: GATED, gate_passed=gate_passed)
    with pytest.raises(SourceUnavailable):
        policy.can_read(READ, BOB)


def test_policy_visibility_callback_may_return_the_string_value() -> None:
    policy = AccessPolicy(visibility=lambda repo: "public")  # type: ignore[arg-type,return-value]
    assert policy.can_read(ANONYMOUS, ACME)


def test_policy_uses_the_caller_created_callback() -> None:
    contributor = user("write", org("acme", "contributor"))
    calls: list[tuple[str, str]] = []

    def created(principal: Principal, repo: Repo) -> bool:
        calls.append((principal.name, repo.id))
        return repo.name == "x"

    policy = AccessPolicy(caller_created=created)
    assert policy.can_write(contributor, ACME)
    assert not policy.can_write(contributor, Repo("model", "acme", "other"))
    assert calls == [("alice", "acme/x"), ("alice", "acme/other")]


def test_policy_grants_only_on_a_true_creator_answer() -> None:
    contributor = user("write", org("acme", "contributor"))
    policy = AccessPolicy(caller_created=lambda principal, repo: "yes")  # type: ignore[arg-type,return-value]
    assert not policy.can_write(contributor, ACME)


def test_policy_does_not_ask_about_anonymous_callers() -> None:
    policy = AccessPolicy(caller_created=_fail)
    assert not policy.can_write(ANONYMOUS, ACME)


@pytest.mark.parametrize(
    ("check", "callback"),
    [
        pytest.param(lambda policy: policy.can_read(READ, ACME), "visibility", id="visibility"),
        pytest.param(
            lambda policy: policy.can_write(WRITE, ACME), "caller_created", id="caller-created"
        ),
    ],
)
def test_a_failing_policy_callback_is_a_503_with_its_cause(check, callback) -> None:
    """The server cannot tell: never allowed, never a 500. The callback's own
    error stays as the cause, for the log and for code of your own."""

    def broken(*args: object) -> Visibility:
        raise RuntimeError("metadata store down")

    policy = AccessPolicy(**{callback: broken})
    with pytest.raises(SourceUnavailable) as caught:
        check(policy)
    assert caught.value.status_code == 503
    assert isinstance(caught.value.__cause__, RuntimeError)


def test_a_policy_given_a_wrong_permission_type_says_so() -> None:
    """Only the callbacks' failures become 503s: a programming error stays one."""
    with pytest.raises(TypeError, match="a permission is a string"):
        RequestAuth(READ, AccessPolicy()).has_permission(["org.read"])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("access", "principal", "allowed", "prefix"),
    [
        pytest.param("read", READ, True, "read allowed:", id="read"),
        pytest.param("write", READ, False, "write denied:", id="write-read-token"),
        pytest.param("write", WRITE, True, "write allowed:", id="write"),
    ],
)
def test_policy_check_dispatches(
    access: str, principal: Principal, allowed: bool, prefix: str
) -> None:
    decision = AccessPolicy().check(principal, OWN, access)  # type: ignore[arg-type]
    assert decision.allowed is allowed
    assert decision.reason.startswith(prefix)


def test_policy_check_rejects_other_access() -> None:
    with pytest.raises(ValueError, match="access"):
        AccessPolicy().check(READ, OWN, "admin")  # type: ignore[arg-type]


def test_policy_has_permission() -> None:
    policy = AccessPolicy(visibility=_fail, caller_created=_fail)
    assert policy.has_permission(WRITE, "repo.write", OWN)
    assert not policy.has_permission(READ, "repo.write")
    assert policy.has_permission(fine(global_=("post.write",)), "post.write").allowed


# --- issue 17: rules that granted too much or too little ----------------------------------
# Every row below fails on the rules before issue 17 (the guard rows say so in their id).


def restricted(name: str, role: str, *restrictions: str, mfa: bool = False, sso: bool = False):
    return dataclasses.replace(
        org(name, role),
        security_restrictions=tuple(restrictions),
        missing_mfa=mfa,
        pending_sso=sso,
    )


REFUSED = "org acme refuses this token (security restrictions:"
ACME_REPO_ENTRY = grant("model", "acme/x", "repo.content.read", "repo.write")


@pytest.mark.parametrize(
    ("check", "allowed", "reason"),
    [
        pytest.param(
            lambda: can_read(user("read", restricted("acme", "admin", "mfa")), ACME),
            False,
            f"read denied: {REFUSED} mfa)",
            id="classic-read-private-mfa",
        ),
        pytest.param(
            lambda: can_write(user("write", restricted("acme", "write", "token-policy")), ACME),
            False,
            f"write denied: {REFUSED} token-policy)",
            id="classic-write-token-policy",
        ),
        pytest.param(
            lambda: can_read(
                user("write", restricted("acme", "write", "sso", "ip")), ACME, visibility=GATED
            ),
            False,
            f"read denied: {REFUSED} sso, ip)",
            id="classic-gated-sso-ip",
        ),
        pytest.param(
            lambda: can_read(user("read", restricted("acme", "read", mfa=True)), ACME),
            False,
            f"{REFUSED} missingMFA)",
            id="missing-mfa",
        ),
        pytest.param(
            lambda: can_write(user("write", restricted("acme", "admin", sso=True)), ACME),
            False,
            f"{REFUSED} pendingSSO)",
            id="pending-sso",
        ),
        pytest.param(
            lambda: can_read(
                fine(
                    restricted("acme", "write", "mfa"), scoped=(grant("org", "acme", "repo.write"),)
                ),
                ACME,
            ),
            False,
            f"read denied: {REFUSED} mfa)",
            id="fine-org-entry",
        ),
        pytest.param(
            lambda: can_read(
                fine(restricted("acme", "write", "mfa"), scoped=(ACME_REPO_ENTRY,)), ACME
            ),
            False,
            f"read denied: {REFUSED} mfa)",
            id="fine-repo-entry",
        ),
        pytest.param(
            lambda: can_read(
                fine(restricted("acme", "write", "mfa"), scoped=(ACME_REPO_ENTRY,)),
                ACME,
                visibility=GATED,
            ),
            False,
            f"read denied: {REFUSED} mfa)",
            id="fine-gated-repo-entry",
        ),
        pytest.param(
            lambda: has_permission(
                fine(restricted("acme", "admin", "ip"), global_=("discussion.write",)),
                "discussion.write",
                ACME,
            ),
            False,
            f"permission denied: discussion.write on model acme/x: {REFUSED} ip)",
            id="global-permission-on-org-repo",
        ),
        pytest.param(
            lambda: has_permission(
                user("write", restricted("acme", "admin", "mfa")), "repo.write", ORG_ACME
            ),
            False,
            REFUSED,
            id="classic-permission-on-org",
        ),
        pytest.param(
            lambda: can_read(
                user("read", restricted("acme", "admin", "mfa")), ACME, visibility=PUBLIC
            ),
            True,
            "read allowed: public repository",
            id="guard-public-still-readable",
        ),
        pytest.param(
            lambda: can_read(
                user("read", restricted("other", "admin", "mfa"), org("acme", "read")), ACME
            ),
            True,
            "role read in org acme",
            id="guard-other-org-unaffected",
        ),
        pytest.param(
            lambda: can_write(user("write", restricted("acme", "admin", "mfa")), OWN),
            True,
            "own namespace",
            id="guard-own-namespace-unaffected",
        ),
    ],
)
def test_security_restrictions_refuse_the_orgs_repositories(check, allowed, reason):
    """hub-tokens.md: a non-empty securityRestrictions (or missingMFA, pendingSSO)
    means the Hub refuses this token on that org's resources."""
    decision = check()
    assert decision.allowed is allowed
    assert reason in decision.reason


def test_an_odd_security_restrictions_value_refuses_the_org() -> None:
    answer = {
        "name": "alice",
        "orgs": [{"name": "acme", "roleInOrg": "admin", "securityRestrictions": {"mfa": True}}],
        "auth": {"type": "access_token", "accessToken": {"role": "write"}},
    }
    decision = can_read(principal_from_whoami(answer), ACME)
    assert not decision
    assert "security restrictions: unrecognised" in decision.reason


GROUPED = Repo("model", "acme", "grouped")


def in_group(repo: Repo) -> str | None:
    return "rg1" if repo == GROUPED else None


def group_policy(visibility: Visibility = PRIVATE) -> AccessPolicy:
    return AccessPolicy(visibility=lambda repo: visibility, resource_group=in_group)


RESEARCH_READ = ResourceGroup("rg1", "research", "read")
RESEARCH_WRITE = ResourceGroup("rg1", "research", "write")
OTHER_GROUP = ResourceGroup("rg2", "ops", "admin")


@pytest.mark.parametrize(
    ("check", "allowed", "reason"),
    [
        pytest.param(
            lambda: group_policy().can_read(user("read", org("acme", "write")), GROUPED),
            False,
            "in resource group rg1 of org acme, which the user is not a member of",
            id="org-member-not-in-group-private",
        ),
        pytest.param(
            lambda: group_policy().can_read(
                user("read", org("acme", "admin", OTHER_GROUP)), GROUPED
            ),
            False,
            "which the user is not a member of",
            id="member-of-another-group",
        ),
        pytest.param(
            lambda: group_policy().can_write(
                user("write", org("acme", "read", RESEARCH_WRITE)), GROUPED
            ),
            True,
            "write allowed: model acme/grouped, role write in resource group research of org acme",
            id="group-role-replaces-lower-org-role",
        ),
        pytest.param(
            lambda: group_policy().can_write(
                user("write", org("acme", "admin", RESEARCH_READ)), GROUPED
            ),
            False,
            "write denied: role read in resource group research of org acme caps the token",
            id="group-role-replaces-higher-org-role",
        ),
        pytest.param(
            lambda: group_policy().can_read(
                user("read", org("acme", "no_access", RESEARCH_READ)), GROUPED
            ),
            True,
            "role read in resource group research of org acme",
            id="group-member-without-org-role-reads",
        ),
        pytest.param(
            lambda: group_policy(PUBLIC).can_write(user("write", org("acme", "write")), GROUPED),
            False,
            "which the user is not a member of",
            id="public-group-repo-write-needs-the-group",
        ),
        pytest.param(
            lambda: group_policy(PUBLIC).can_read(user("read"), GROUPED),
            True,
            "read allowed: public repository",
            id="guard-public-group-repo-readable",
        ),
        pytest.param(
            lambda: group_policy().can_read(user("read", org("acme", "read")), ACME),
            True,
            "role read in org acme",
            id="guard-repo-outside-groups",
        ),
        pytest.param(
            lambda: group_policy().can_read(
                fine(
                    org("acme", "write", RESEARCH_READ),
                    scoped=(grant("org", "acme", "repo.content.read"),),
                ),
                GROUPED,
            ),
            False,
            "lists no repo.content.read on model acme/grouped",
            id="fine-org-entry-does-not-reach-group",
        ),
        pytest.param(
            lambda: group_policy().can_read(
                fine(
                    org("acme", "no_access", RESEARCH_READ),
                    scoped=(
                        ScopedGrant(
                            "resource-group", None, frozenset({"repo.content.read"}), "rg1"
                        ),
                    ),
                ),
                GROUPED,
            ),
            True,
            "lists repo.content.read on resource-group rg1, role read in resource group research",
            id="fine-group-entry-reaches-group",
        ),
        pytest.param(
            lambda: group_policy().can_read(
                fine(
                    org("acme", "write"),
                    scoped=(
                        ScopedGrant(
                            "resource-group", None, frozenset({"repo.content.read"}), "rg1"
                        ),
                    ),
                ),
                GROUPED,
            ),
            False,
            "which the user is not a member of",
            id="fine-group-entry-needs-membership",
        ),
        pytest.param(
            lambda: group_policy().has_permission(
                fine(org("acme", "admin"), global_=("repo.content.read",)),
                "repo.content.read",
                GROUPED,
            ),
            False,
            "which the user is not a member of",
            id="global-repo-permission-capped-by-group",
        ),
    ],
)
def test_resource_groups_through_the_policy(check, allowed, reason):
    """A private repo in a resource group is visible only to its members; their
    group role replaces the org role there (hub-tokens.md, Resource groups)."""
    decision = check()
    assert decision.allowed is allowed
    assert reason in decision.reason


def test_resource_group_callback_failure_is_a_503() -> None:
    def broken(repo: Repo) -> str | None:
        raise OSError("catalogue down")

    policy = AccessPolicy(resource_group=broken)
    with pytest.raises(SourceUnavailable):
        policy.can_read(READ, ACME)


def test_resource_group_callback_is_not_asked_for_public_reads_or_anonymous() -> None:
    policy = AccessPolicy(visibility=lambda repo: PUBLIC, resource_group=_fail)  # type: ignore[arg-type]
    assert policy.can_read(READ, ACME)
    assert not AccessPolicy(resource_group=_fail).can_read(ANONYMOUS, ACME)  # type: ignore[arg-type]


def endpoint_grant(
    *wildcards: str, permissions: tuple[str, ...] = ("inference.endpoints.infer.write",)
):
    return ScopedGrant(
        "org",
        "acme",
        frozenset(permissions),
        patterns=(ResourcePattern("inference-endpoint", wildcards),),
    )


PROD_ENDPOINT = Entity("inference-endpoint", "acme/prod-llama")
DEV_ENDPOINT = Entity("inference-endpoint", "acme/dev-llama")


@pytest.mark.parametrize(
    ("check", "allowed", "reason"),
    [
        pytest.param(
            lambda: has_permission(
                fine(org("acme", "write"), scoped=(endpoint_grant("prod-*"),)),
                "inference.endpoints.infer.write",
                ORG_ACME,
            ),
            False,
            "lists no inference.endpoints.infer.write on org acme",
            id="patterned-org-entry-not-the-whole-org",
        ),
        pytest.param(
            lambda: has_permission(
                fine(org("acme", "write"), scoped=(endpoint_grant("prod-*"),)),
                "inference.endpoints.infer.write",
                DEV_ENDPOINT,
            ),
            False,
            "lists no inference.endpoints.infer.write",
            id="endpoint-outside-patterns",
        ),
        pytest.param(
            lambda: has_permission(
                fine(org("acme", "write"), scoped=(endpoint_grant("prod-*"),)),
                "inference.endpoints.infer.write",
                PROD_ENDPOINT,
            ),
            True,
            "lists inference.endpoints.infer.write on org acme, role write in org acme",
            id="endpoint-inside-patterns",
        ),
        pytest.param(
            lambda: has_permission(
                fine(org("acme", "write"), scoped=(endpoint_grant("acme/prod-*"),)),
                "inference.endpoints.infer.write",
                PROD_ENDPOINT,
            ),
            True,
            "on org acme",
            id="pattern-with-namespace",
        ),
        pytest.param(
            lambda: can_read(
                fine(
                    org("acme", "write"),
                    scoped=(endpoint_grant("*", permissions=("repo.content.read",)),),
                ),
                ACME,
            ),
            False,
            "lists no repo.content.read on model acme/x",
            id="endpoint-patterns-grant-no-repo",
        ),
        pytest.param(
            lambda: can_write(
                fine(
                    org("acme", "write"),
                    scoped=(
                        ScopedGrant(
                            "model",
                            "acme/x",
                            frozenset({"repo.write"}),
                            patterns=(ResourcePattern("inference-endpoint", ("*",)),),
                        ),
                    ),
                ),
                ACME,
            ),
            False,
            "lists no repo.write on model acme/x",
            id="patterned-repo-entry-not-the-repo",
        ),
        pytest.param(
            lambda: has_permission(
                fine(org("acme", "write"), scoped=(endpoint_grant("prod-?"),)),
                "inference.endpoints.infer.write",
                Entity("inference-endpoint", "acme/prod-x"),
            ),
            False,
            "lists no",
            id="only-star-is-a-wildcard",
        ),
    ],
)
def test_patterns_narrow_their_entry(check, allowed, reason):
    """hub-tokens.md: an entry with patterns grants nothing outside them."""
    decision = check()
    assert decision.allowed is allowed
    assert reason in decision.reason


def grants_acme_reads(principal: Principal, repo: Repo) -> str | None:
    return "read" if repo.owner in ("alice", "acme") else None


def grants_own_writes(principal: Principal, repo: Repo) -> str | None:
    return "write" if repo.owner == principal.name else None


@pytest.mark.parametrize(
    ("check", "allowed", "reason"),
    [
        pytest.param(
            lambda: AccessPolicy(oauth_access=grants_acme_reads).can_read(P_OAUTH, ACME),
            True,
            "read allowed: model acme/x, role admin in org acme",
            id="mapped-org-reads",
        ),
        pytest.param(
            lambda: AccessPolicy(oauth_access=grants_acme_reads).can_read(
                dataclasses.replace(P_OAUTH, orgs=(org("acme", "no_access"),)), ACME
            ),
            False,
            "read denied: role no_access in org acme",
            id="mapping-capped-by-org-role",
        ),
        pytest.param(
            lambda: AccessPolicy(oauth_access=grants_acme_reads).can_read(
                dataclasses.replace(P_OAUTH, orgs=(org("acme", "admin"), org("beta", "admin"))),
                Repo("model", "beta", "x"),
            ),
            False,
            OAUTH_PUBLIC_ONLY,
            id="unmapped-org-denied",
        ),
        pytest.param(
            lambda: AccessPolicy(oauth_access=grants_acme_reads).can_write(P_OAUTH, ACME),
            False,
            "writes only where AccessPolicy(oauth_access=...) grants write",
            id="read-mapping-never-writes",
        ),
        pytest.param(
            lambda: AccessPolicy(oauth_access=grants_own_writes).can_write(OAUTH, OWN),
            True,
            "write allowed: model alice/m, own namespace",
            id="write-mapping-writes",
        ),
        pytest.param(
            lambda: AccessPolicy(oauth_access=lambda p, r: True).can_read(OAUTH, OWN),  # type: ignore[arg-type,return-value]
            False,
            OAUTH_PUBLIC_ONLY,
            id="truthy-non-grant-grants-nothing",
        ),
        pytest.param(
            lambda: AccessPolicy(oauth_access=grants_acme_reads).has_permission(
                P_OAUTH, "user.webhooks.read"
            ),
            False,
            OAUTH_PUBLIC_ONLY,
            id="no-permission-without-a-repo",
        ),
        pytest.param(
            lambda: AccessPolicy(oauth_access=grants_acme_reads).can_read(OAUTH, BOB),
            False,
            OAUTH_PUBLIC_ONLY,
            id="unmapped-user-denied",
        ),
        pytest.param(
            lambda: AccessPolicy(visibility=lambda repo: PUBLIC, oauth_access=_fail).can_read(
                OAUTH, BOB
            ),  # type: ignore[arg-type]
            True,
            "read allowed: public repository",
            id="guard-public-without-asking",
        ),
    ],
)
def test_oauth_tokens_get_public_repos_plus_the_operators_mapping(check, allowed, reason):
    """OAuth read-repos covers personal repos plus only the orgs the user selected:
    the operator says what it knows, the org role still caps it."""
    decision = check()
    assert decision.allowed is allowed
    assert reason in decision.reason


def test_oauth_access_is_not_asked_for_tokens_with_a_role() -> None:
    assert AccessPolicy(oauth_access=_fail).can_read(READ, OWN)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("principal", "allowed", "reason"),
    [
        pytest.param(
            fine(scoped=(grant("model", "acme/x", "repo.content.read"),)),
            True,
            (
                "read allowed: gated repository, fine-grained token lists "
                "repo.content.read on model acme/x"
            ),
            id="entry-on-the-gated-repo",
        ),
        pytest.param(
            fine(scoped=(grant("model", "acme/x", "repo.write"),)),
            True,
            "lists repo.write on model acme/x",
            id="write-entry-on-the-gated-repo",
        ),
        pytest.param(
            fine(scoped=(grant("dataset", "acme/x", "repo.content.read"),)),
            False,
            "lacks canReadGatedRepos and lists no entry on model acme/x",
            id="guard-entry-on-another-type",
        ),
        pytest.param(
            fine(scoped=(grant("model", "acme/x", "discussion.write"),)),
            False,
            "lacks canReadGatedRepos",
            id="guard-entry-without-read",
        ),
    ],
)
def test_a_fine_grained_entry_naming_a_gated_repo_reads_it(principal, allowed, reason):
    decision = can_read(principal, ACME, visibility=GATED, gate_passed=True)
    assert decision.allowed is allowed
    assert reason in decision.reason


@pytest.mark.parametrize("kind", ["bucket", "kernel"])
def test_bucket_and_kernel_repositories_parse_and_are_checked(kind: str) -> None:
    repo = Repo.parse(f"{kind}:acme/x")
    assert (repo.type, repo.id, str(repo)) == (kind, "acme/x", f"{kind}:acme/x")
    assert kind in _rules.REPO_TYPES
    member = user("write", org("acme", "write"))
    assert can_write(member, repo).reason == f"write allowed: {kind} acme/x, role write in org acme"
    entry = fine(org("acme", "read"), scoped=(grant(kind, "acme/x", "repo.content.read"),))
    assert can_read(entry, repo)
    assert not can_read(entry, Repo.parse("model:acme/x"))


def test_repo_types_is_the_public_set_of_hub_repository_types() -> None:
    assert _rules.REPO_TYPES == ("model", "dataset", "space", "bucket", "kernel")
    assert "REPO_TYPES" in _rules.__all__
    with pytest.raises(ValueError, match="expected model, dataset, space, bucket, kernel"):
        Repo.parse("widget:acme/x")


WHOAMI_APP: dict[str, Any] = {
    "type": "app",
    "id": "a1",
    "name": "my-app",
    "scope": {"role": "write", "entities": ["acme"]},
    "auth": {"type": "app_token"},
}
P_APP = principal_from_whoami(WHOAMI_APP)
APP_AS_USER = dataclasses.replace(
    user("write", org("acme", "admin")), auth_type="app_token_as_user"
)
GOD = user("god", org("acme", "god"))
APP_ONLY_PUBLIC = "app token: what an app's scope grants is not confirmed"


@pytest.mark.parametrize(
    ("principal", "can_write"),
    [
        pytest.param(user("write"), True, id="classic-write"),
        pytest.param(user("read"), False, id="classic-read"),
        pytest.param(P_APP, False, id="app-token-with-role-write"),
        pytest.param(APP_AS_USER, False, id="app-token-as-user"),
        pytest.param(fine(scoped=(grant("org", "acme", "repo.write"),)), True, id="fine-entry"),
    ],
)
def test_can_write_somewhere(principal: Principal, can_write: bool) -> None:
    """The method map's "a token that can write": an app's scope is not confirmed."""
    assert _rules.can_write_somewhere(principal) is can_write


BOUND = Principal(name="alice", token_role="write", bound_resource="model:alice/only-this")


@pytest.mark.parametrize(
    ("check", "allowed"),
    [
        pytest.param(lambda: can_write(BOUND, Repo.parse("model:alice/other")), False, id="own-ns"),
        pytest.param(lambda: can_write(BOUND, Repo.parse("model:alice/only-this")), False, id="it"),
        pytest.param(lambda: can_read(BOUND, Repo.parse("model:alice/x")), False, id="private"),
        pytest.param(
            lambda: can_read(BOUND, Repo.parse("model:zoe/x"), visibility=PUBLIC), True, id="public"
        ),
        # It may write its own resource: the hub's auth-check decides, never refused unasked.
        pytest.param(
            lambda: Decision(_rules.can_write_somewhere(BOUND), "", ""), True, id="hub-asked"
        ),
    ],
)
def test_a_token_bound_to_a_resource_gets_public_repositories_only(check, allowed):
    """What a bound token grants is not confirmed: the local rules give it what
    an app gets, and leave the rest to the hub's auth-check."""
    assert check().allowed is allowed


@pytest.mark.parametrize(
    ("check", "allowed", "reason"),
    [
        pytest.param(
            lambda: can_read(P_APP, Repo("model", "my-app", "x")),
            False,
            APP_ONLY_PUBLIC,
            id="app-own-name",
        ),
        pytest.param(lambda: can_read(P_APP, ACME), False, APP_ONLY_PUBLIC, id="app-scope-org"),
        pytest.param(
            lambda: can_read(P_APP, ACME, visibility=GATED), False, APP_ONLY_PUBLIC, id="app-gated"
        ),
        pytest.param(lambda: can_write(P_APP, ACME), False, APP_ONLY_PUBLIC, id="app-write"),
        pytest.param(
            lambda: has_permission(P_APP, "repo.content.read"),
            False,
            APP_ONLY_PUBLIC,
            id="app-permission",
        ),
        pytest.param(
            lambda: can_read(P_APP, ACME, visibility=PUBLIC),
            True,
            "public repository",
            id="app-public",
        ),
        pytest.param(
            lambda: can_write(APP_AS_USER, ACME), False, APP_ONLY_PUBLIC, id="app-as-user-write"
        ),
        pytest.param(
            lambda: can_read(APP_AS_USER, OWN), False, APP_ONLY_PUBLIC, id="app-as-user-own"
        ),
        pytest.param(
            lambda: can_read(GOD, OWN),
            False,
            "token role 'god' is not recognised",
            id="god-token-own",
        ),
        pytest.param(
            lambda: can_write(GOD, ACME),
            False,
            "token role 'god' is not recognised",
            id="god-token-write",
        ),
        pytest.param(
            lambda: has_permission(GOD, "org.write", ORG_ACME),
            False,
            "'god' is not recognised",
            id="god-permission",
        ),
        pytest.param(
            lambda: can_read(user("read", org("acme", "god")), ACME),
            False,
            "role god in org acme is not recognised",
            id="guard-god-org-role",
        ),
        pytest.param(
            lambda: can_read(
                user("read", org("acme", "no_access", ResourceGroup("rg1", "r", "god"))),
                GROUPED,
                resource_group="rg1",
            ),
            False,
            "role god in resource group r of org acme is not recognised",
            id="god-group-role",
        ),
        pytest.param(
            lambda: can_read(GOD, ACME, visibility=PUBLIC),
            True,
            "public repository",
            id="guard-god-public",
        ),
    ],
)
def test_apps_and_the_god_role_get_public_repositories_only(check, allowed, reason):
    """Unconfirmed facts grant the smaller right: an app's scope, app_token_as_user
    and a 'god' role (seen nowhere confirmed) reach public repositories only."""
    decision = check()
    assert decision.allowed is allowed
    assert reason in decision.reason


@pytest.mark.parametrize(
    ("check", "allowed", "reason"),
    [
        pytest.param(
            lambda: has_permission(READ, "inference.serverless.write"),
            True,
            "permission allowed: inference.serverless.write, classic read token",
            id="read-token",
        ),
        pytest.param(
            lambda: has_permission(
                user("read", org("acme", "read")), "inference.serverless.write", ACME
            ),
            True,
            "role read in org acme",
            id="read-token-on-org-model",
        ),
        pytest.param(
            lambda: has_permission(
                fine(
                    org("acme", "read"),
                    scoped=(grant("org", "acme", "inference.serverless.write"),),
                ),
                "inference.serverless.write",
                ACME,
            ),
            True,
            "role read in org acme",
            id="fine-entry-read-member",
        ),
        pytest.param(
            lambda: has_permission(READ, "inference.endpoints.infer.write"),
            False,
            "grants only *.read and inference.serverless.write",
            id="guard-other-inference-still-write",
        ),
        pytest.param(
            lambda: has_permission(FINE, "inference.serverless.write"),
            False,
            "lists no global inference.serverless.write",
            id="guard-fine-grained-must-list-it",
        ),
    ],
)
def test_a_read_token_may_do_serverless_inference(check, allowed, reason):
    """hub-tokens.md: the Hub documents read tokens for "doing inference"."""
    decision = check()
    assert decision.allowed is allowed
    assert reason in decision.reason


JWT_TOKEN = "hf_jwt_eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJyZXBvOmFjbWUveCJ9.c2ln"


def test_trusted_publisher_tokens_are_masked_in_reasons_and_messages() -> None:
    from hfauth_mw._validation import LIKELY_TOKEN, shown

    decision = has_permission(READ, JWT_TOKEN)
    assert "hf_jwt_" not in decision.reason
    assert "<redacted>" in decision.reason
    assert "eyJ" not in shown(JWT_TOKEN)
    assert LIKELY_TOKEN.search(f"name {JWT_TOKEN}")
    assert not LIKELY_TOKEN.search("acme/my_hf_jwt_tools")


def test_decisions_say_who_decided_and_stay_backwards_compatible() -> None:
    legacy = Decision(True, "read allowed: public repository", "repo.content.read")
    assert legacy.decided_by == "local"
    assert can_read(READ, OWN).decided_by == "local"
    hub = Decision(False, "read denied: x", "repo.content.read", "hub")
    assert hub.decided_by == "hub"
    assert hub != Decision(False, "read denied: x", "repo.content.read")
    assert "DecidedBy" in _rules.__all__


# --- reasons: log-safe, and the quick cleaning changes none of them ----------------------
# _line skips its regex and per-character pass for text that cannot need them, and
# the reason texts are memoised: the reference below is _line as it was before,
# every decision is compared with one computed from scratch with it, and the
# table gives exact reasons as the rules gave them before (each value cleaned,
# cut to 96 characters, tokens redacted).


def _line_before(text: str) -> str:
    return "".join(
        char if char.isprintable() else "?" for char in _rules._SECRET_LIKE.sub("<redacted>", text)
    )


_MEMOS = (
    _rules._decision,
    _rules._entity_text,
    _rules._repo_entity,
    _rules._role_in_org,
    _rules._listed,
    _rules._permission_facts,
)


def _forget_memos() -> None:
    for memo in _MEMOS:
        memo.cache_clear()


def test_long_text_is_not_memoised_and_gives_the_reason_it_always_gave() -> None:
    """A server may name an entity or a permission after a client's text: the
    memos (bounded in count) keep none of it, so that they stay small."""
    permission = "p" * 10_000 + ".read"
    entity = Entity("collection", "acme/" + "n" * 10_000)
    _forget_memos()
    try:
        decision = has_permission(READ, permission, entity)
        assert [memo.cache_info().currsize for memo in _MEMOS] == [0] * len(_MEMOS)
    finally:
        _forget_memos()
    assert decision == Decision(
        False,
        f"permission denied: {'p' * 93}... on collection acme/{'n' * 88}...: not a member of acme",
        permission,
    )


_TEXT = st.one_of(
    st.text(max_size=40),
    st.text(alphabet="hf_api_org_Ab0.-\n\x1b\u2028 ", max_size=60),
    st.from_regex(_rules._SECRET_LIKE),
    st.sampled_from([TOKEN, OAUTH_TOKEN, ORG_TOKEN, JWT_TOKEN, "a" * 300]),
)


@given(_TEXT)
def test_the_quick_cleaning_gives_what_the_per_character_one_gave(text: str) -> None:
    assert _rules._line(text) == _line_before(text)
    assert _rules._safe(text) == _rules._safe(_line_before(text))


TOKEN_SHAPED_NAME = "hf_" + "AbCdEfGhIjKlMnOpQrSt"  # a valid repository name, and token-shaped
LONG_OWNER = "o" * 96
LONG_NAME = "n" * 96
LONG_PERMISSION = "p" * 120 + ".write"
NUL_RIDDEN_NAME = "g\x00" * 40
HOSTILE_GRANT = (
    ScopedGrant("collection", "alice/c\n", frozenset({"x\u2028.write", TOKEN + ".write"})),
)


@pytest.mark.parametrize(
    ("decide", "allowed", "reason"),
    [
        pytest.param(
            lambda: can_read(
                user("read", org(LONG_OWNER, "read")), Repo("model", LONG_OWNER, LONG_NAME)
            ),
            True,
            f"read allowed: model {'o' * 93}..., role read in org {LONG_OWNER}",
            id="long-repo-id-and-org",
        ),
        pytest.param(
            lambda: can_write(user("write", org("acme", "r" * 200)), ACME),
            False,
            f"write denied: role {'r' * 93}... in org acme is not recognised",
            id="long-org-role",
        ),
        pytest.param(
            lambda: can_read(user("read", org("acme", "ad\nmin\x1b[31m")), ACME),
            False,
            "read denied: role ad?min?[31m in org acme is not recognised",
            id="hostile-org-role",
        ),
        pytest.param(
            lambda: can_read(
                user(
                    "fineGrained",
                    org("acme", "write"),
                    scoped=(grant("org", "acme", "repo.content.read"),),
                ),
                Repo("model", "acme", TOKEN_SHAPED_NAME),
            ),
            True,
            "read allowed: fine-grained token lists repo.content.read on org acme, "
            "role write in org acme",
            id="namespace-grant-on-token-shaped-repo",
        ),
        pytest.param(
            lambda: can_read(
                user(
                    "fineGrained",
                    scoped=(grant("model", f"bob/{TOKEN_SHAPED_NAME}", "repo.content.read"),),
                ),
                Repo("model", "bob", TOKEN_SHAPED_NAME),
            ),
            True,
            "read allowed: fine-grained token lists repo.content.read on model bob/<redacted>, "
            "outside the user's namespace and orgs",
            id="exact-grant-on-token-shaped-repo",
        ),
        pytest.param(
            lambda: can_write(
                user("write", org("acme", "admin")), Repo("dataset", "acme", TOKEN_SHAPED_NAME)
            ),
            True,
            "write allowed: dataset acme/<redacted>, role admin in org acme",
            id="token-shaped-repo-classic",
        ),
        pytest.param(
            lambda: has_permission(
                user("fineGrained", scoped=HOSTILE_GRANT),
                "x\u2028.write",
                Entity("collection", "alice/c\n"),
            ),
            True,
            "permission allowed: fine-grained token lists x?.write on collection alice/c?, "
            "own namespace",
            id="hostile-listed-permission",
        ),
        pytest.param(
            lambda: has_permission(
                user("fineGrained", scoped=(grant("collection", "alice/c", LONG_PERMISSION),)),
                LONG_PERMISSION,
                Entity("collection", "alice/c"),
            ),
            True,
            f"permission allowed: fine-grained token lists {'p' * 93}... on collection alice/c, "
            "own namespace",
            id="long-listed-permission",
        ),
        pytest.param(
            lambda: can_read(
                user("read", org("acme", "read", ResourceGroup("g1", f"team\n{TOKEN}", "write"))),
                ACME,
                resource_group="g1",
            ),
            True,
            "read allowed: model acme/x, role write in resource group team?<redacted> of org acme",
            id="hostile-group-name",
        ),
        pytest.param(
            lambda: can_write(
                user(
                    "fineGrained",
                    org("acme", "write", ResourceGroup("g1", None, "write")),
                    scoped=(
                        ScopedGrant(
                            "resource-group", NUL_RIDDEN_NAME, frozenset({"repo.write"}), "g1"
                        ),
                    ),
                ),
                ACME,
                resource_group="g1",
            ),
            True,
            f"write allowed: fine-grained token lists repo.write on resource-group {'g?' * 40}, "
            "role write in resource group g1 of org acme",
            id="hostile-group-grant",
        ),
        pytest.param(
            lambda: has_permission(
                user(
                    "write", OrgMembership("acme", "admin", security_restrictions=(TOKEN, "sso\n"))
                ),
                "repo.write",
                ACME,
            ),
            False,
            "permission denied: repo.write on model acme/x: org acme refuses this token "
            "(security restrictions: <redacted>, sso?)",
            id="restricted-org",
        ),
    ],
)
def test_hostile_values_give_the_reasons_they_always_gave(
    decide: Any, allowed: bool, reason: str
) -> None:
    """Exact reasons, as the rules gave them before the texts were memoised: every
    value cleaned and cut to 96 characters where it is named, tokens redacted."""
    for _ in range(2):  # from scratch, then from the memos
        decision = decide()
        assert (decision.allowed, decision.reason) == (allowed, reason)
    _forget_memos()


_HOSTILE = [TOKEN, OAUTH_TOKEN, ORG_TOKEN, "ad\nmin\x1b[31m", "\u2028x", "r" * 200]
_NAMES = st.sampled_from(["alice", "acme", "bob", TOKEN_SHAPED_NAME, "a" * 96])
_WORDS = st.one_of(_NAMES, st.sampled_from(_HOSTILE))
_ROLES = st.sampled_from([None, "read", "write", "fineGrained", "admin", *_HOSTILE])
_ORG_ROLES = st.sampled_from(["no_access", "read", "contributor", "write", "admin", *_HOSTILE])
_PERMISSIONS = st.sampled_from(
    [
        "repo.content.read",
        "repo.write",
        "discussion.write",
        "org.write",
        "org.read",
        "inference.serverless.write",
        *_HOSTILE,
    ]
)
_REPOS = st.builds(Repo, st.sampled_from(_rules.REPO_TYPES), _NAMES, _NAMES)
_ORGS = st.builds(
    OrgMembership,
    name=_NAMES,
    role=_ORG_ROLES,
    resource_groups=st.tuples(st.builds(ResourceGroup, st.just("g1"), _WORDS, _ORG_ROLES))
    | st.just(()),
    security_restrictions=st.sampled_from([(), ("mfa",), (TOKEN, "sso\n")]),
    missing_mfa=st.booleans(),
    pending_sso=st.booleans(),
)
_GRANTS = st.builds(
    ScopedGrant,
    entity_type=st.sampled_from(["model", "dataset", "user", "org", "resource-group", TOKEN]),
    entity_name=st.one_of(_WORDS, _REPOS.map(lambda repo: repo.id), st.none()),
    permissions=st.frozensets(_PERMISSIONS, max_size=3),
    entity_id=st.sampled_from([None, "g1"]),
    patterns=st.sampled_from(
        [
            (),
            (ResourcePattern("model", ("a*", "acme/b*")),),
            (ResourcePattern("dataset", ("*",)), ResourcePattern("model", ("hf_*",))),
            (ResourcePattern("", ()),),
        ]
    ),
)
_PRINCIPALS = st.builds(
    Principal,
    name=_NAMES,
    type=st.sampled_from(["user", "app"]),
    auth_type=st.sampled_from(["access_token", "oauth", "app_token"]),
    token_role=_ROLES,
    orgs=st.lists(_ORGS, max_size=3).map(tuple),
    scoped=st.lists(_GRANTS, max_size=3).map(tuple),
    global_permissions=st.frozensets(_PERMISSIONS, max_size=2),
    can_read_gated_repos=st.booleans(),
    fingerprint=st.just(FINGERPRINT),
)
_ENTITIES = st.one_of(
    st.none(),
    _REPOS,
    st.builds(Entity, st.sampled_from(["org", "user", "collection", TOKEN]), _WORDS),
)


def _decisions(
    principal: Principal, repo: Repo, permission: str, entity: Entity | Repo | None, extra: Any
) -> list[Decision]:
    visibility, grant, group, created = extra
    return [
        can_read(principal, repo, visibility=visibility, oauth_grant=grant, resource_group=group),
        can_write(principal, repo, caller_created=created, oauth_grant=grant, resource_group=group),
        has_permission(principal, permission, entity, oauth_grant=grant, resource_group=group),
    ]


@given(
    _PRINCIPALS,
    _REPOS,
    _PERMISSIONS,
    _ENTITIES,
    st.tuples(
        st.sampled_from(list(Visibility)),
        st.sampled_from([None, "read", "write"]),
        st.sampled_from([None, "g1", "g2"]),
        st.booleans(),
    ),
)
@settings(max_examples=300, deadline=None)
def test_reasons_are_log_safe_and_as_before(
    principal: Principal, repo: Repo, permission: str, entity: Entity | Repo | None, extra: Any
) -> None:
    quick = _decisions(principal, repo, permission, entity, extra)
    assert quick == _decisions(principal, repo, permission, entity, extra)  # from the memos
    _forget_memos()
    try:
        with mock.patch.object(_rules, "_line", _line_before):
            before = _decisions(principal, repo, permission, entity, extra)
    finally:
        _forget_memos()
    assert quick == before
    for decision in quick:
        for text in (decision.reason, decision.needed):
            assert text.isprintable()
            assert not _rules._SECRET_LIKE.search(text)
            for secret in (TOKEN, OAUTH_TOKEN, ORG_TOKEN):
                assert secret not in text
        assert FINGERPRINT not in decision.reason
        assert decision.reason.split(":")[0] in {
            "read allowed",
            "read denied",
            "write allowed",
            "write denied",
            "permission allowed",
            "permission denied",
        }
