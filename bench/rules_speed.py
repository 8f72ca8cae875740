"""How long one local access-rule decision takes (µs per call, best of 5 timeit runs).

Run: ``.venv/bin/python -m bench.rules_speed``. Not part of ``make bench``: it
measures the pure rules of :mod:`hfauth_mw._rules`, no I/O.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

from hfauth_mw._principal import OrgMembership, Principal, ResourcePattern, ScopedGrant
from hfauth_mw._rules import AccessPolicy, Entity, Repo, _line

REPO = Repo.parse("model:acme/bench-model")
POLICY = AccessPolicy()
CLASSIC = Principal(
    name="alice",
    token_role="read",
    orgs=(OrgMembership(name="acme", role="read"),),
    fingerprint="0f1e2d3c4b5a",
)
FINE_GRAINED = Principal(
    name="alice",
    token_role="fineGrained",
    orgs=(OrgMembership(name="other", role="admin"), OrgMembership(name="acme", role="write")),
    scoped=(
        ScopedGrant("user", "alice", frozenset({"repo.content.read", "repo.write"})),
        ScopedGrant("org", "acme", frozenset({"repo.content.read", "repo.write"})),
    ),
    global_permissions=frozenset({"discussion.write"}),
    fingerprint="0f1e2d3c4b5a",
)
ORG = Entity("org", "acme")
PATTERNED = Principal(
    name="alice",
    token_role="fineGrained",
    orgs=(OrgMembership(name="acme", role="write"),),
    scoped=(
        ScopedGrant(
            "org",
            "acme",
            frozenset({"repo.content.read"}),
            patterns=(ResourcePattern("model", ("bench-*", "other")),),
        ),
    ),
)
REASON = "read allowed: model acme/bench-model, role read in org acme"

CASES: dict[str, Callable[[], object]] = {
    "_line(reason)": lambda: _line(REASON),
    "classic can_read (allowed)": lambda: POLICY.can_read(CLASSIC, REPO),
    "classic check write (denied)": lambda: POLICY.check(CLASSIC, REPO, "write"),
    "fine-grained can_read (allowed)": lambda: POLICY.can_read(FINE_GRAINED, REPO),
    "fine-grained can_write (allowed)": lambda: POLICY.can_write(FINE_GRAINED, REPO),
    "fine-grained has_permission (global)": lambda: POLICY.has_permission(
        FINE_GRAINED, "discussion.write", REPO
    ),
    "fine-grained can_read, entry with patterns": lambda: POLICY.can_read(PATTERNED, REPO),
    "classic has_permission on repo": lambda: POLICY.has_permission(
        CLASSIC, "repo.content.read", REPO
    ),
    "classic has_permission on org": lambda: POLICY.has_permission(CLASSIC, "org.read", ORG),
    "fine-grained has_permission on repo": lambda: POLICY.has_permission(
        FINE_GRAINED, "repo.write", REPO
    ),
}


def main() -> None:
    for name, call in CASES.items():
        number = 20_000
        best = min(timeit.repeat(call, number=number, repeat=5)) / number
        print(f"{name:44} {best * 1e6:7.2f} µs")


if __name__ == "__main__":
    main()
