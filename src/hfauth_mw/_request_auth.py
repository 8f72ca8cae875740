"""What the middleware attaches to a request: :class:`RequestAuth`.

One per cached principal and scheme, built once (:class:`PrincipalMemo`):
immutable, so every request with that token can share it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from ._answers import denial
from ._principal import Principal
from ._rules import Access, AccessPolicy, Decision, Entity, Repo

__all__ = ["PrincipalMemo", "RequestAuth", "as_repo"]

V = TypeVar("V")


def as_repo(repo: Repo | str) -> Repo:
    return repo if isinstance(repo, Repo) else Repo.parse(repo)


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
        return self.policy.can_read(self.principal, as_repo(repo))

    def can_write(self, repo: Repo | str) -> Decision:
        return self.policy.can_write(self.principal, as_repo(repo))

    def has_permission(self, permission: str, entity: Entity | Repo | None = None) -> Decision:
        return self.policy.has_permission(self.principal, permission, entity)

    def require(self, repo: Repo | str, access: Access = "read") -> Decision:
        """Return the decision if allowed; raise the matching 401/403 error if not
        (503 when the policy's callbacks fail)."""
        decision = self.policy.check(self.principal, as_repo(repo), access)
        if not decision:
            raise denial(self.principal, decision)
        return decision

    def readable(self, repos: Iterable[Repo | str]) -> list[Repo]:
        """The repositories of ``repos`` the caller may read, in order: what
        ``GET /v1/models`` lists. A policy callback that fails raises
        :class:`~hfauth_mw.SourceUnavailable` (503), never lists more."""
        wanted = [as_repo(repo) for repo in repos]
        return [repo for repo in wanted if self.policy.can_read(self.principal, repo)]

    def require_permission(self, permission: str, entity: Entity | Repo | None = None) -> Decision:
        decision = self.has_permission(permission, entity)
        if not decision:
            raise denial(self.principal, decision)
        return decision


class PrincipalMemo(Generic[V]):
    """Values built once per cached principal (a RequestAuth, a Starlette user).

    A cached token yields the same :class:`~hfauth_mw.Principal` object on
    every request, so what is derived from it can be built once. Keyed by
    ``id()``: each entry holds its principal, so no other object can have
    that id while the entry lives. Bounded: at ``maxsize`` entries the table
    starts again empty, so make it at least the token cache's size, or busy
    principals are rebuilt over and over.

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
