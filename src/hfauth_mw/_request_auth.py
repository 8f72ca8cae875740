"""What the middleware attaches to a request: :class:`RequestAuth`.

With the local rules, one per cached principal and scheme, built once
(:class:`PrincipalMemo`): immutable, so every request with that token can
share it. With the hub as the authority, one per request: it carries the
request's credentials, which the hub's auth-check needs.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ._answers import denial
from ._credentials import Credentials
from ._drivers import Together, Work
from ._principal import Principal
from ._rules import Access, AccessPolicy, Decision, Entity, Repo

if TYPE_CHECKING:
    from ._authority import HubAuthority

__all__ = ["PrincipalMemo", "RequestAuth", "as_repo"]

V = TypeVar("V")


def as_repo(repo: Repo | str) -> Repo:
    return repo if isinstance(repo, Repo) else Repo.parse(repo)


@dataclass(frozen=True, slots=True)
class RequestAuth:
    """What the middleware attached to a request: the caller and the rules.

    Route code uses it to check access on repositories it picks itself::

        auth.require(Repo.parse("model:acme/sentiment"), "write")

    With the hub as the authority (``authority="hub"``, the default with a
    hub source), ``require``, ``can_read``, ``can_write`` and ``readable`` ask
    the hub's auth-check (cached per token, repository and access; a read
    token never writes, without a call): in async code use ``arequire``,
    ``acan_read``, ``acan_write`` and ``areadable``, which do not block the
    event loop while the hub answers. The blocking ones suit WSGI code.
    """

    principal: Principal
    policy: AccessPolicy
    scheme: str | None = None
    #: The hub that decides repository access, and this request's credentials
    #: for its auth-check (``None`` with the local rules). Never shown.
    hub: HubAuthority | None = field(default=None, repr=False, compare=False)
    credentials: Credentials | None = field(default=None, repr=False, compare=False)

    def decision_flow(self, repo: Repo | str, access: Access) -> Generator[Work, Any, Decision]:
        """The decision on ``access`` to ``repo``, as a flow for a driver."""
        wanted = as_repo(repo)
        hub = self.hub
        if hub is None:
            return self.policy.check(self.principal, wanted, access)
        cached = hub.cached(self.credentials, self.principal, wanted, access)
        if cached is not None:
            return cached
        return (yield from hub.flow(self.credentials, self.principal, wanted, access))

    def _decide(self, repo: Repo | str, access: Access) -> Decision:
        if self.hub is None:
            return self.policy.check(self.principal, as_repo(repo), access)
        return self.hub.sync_driver.run(self.decision_flow(repo, access))

    async def _adecide(self, repo: Repo | str, access: Access) -> Decision:
        if self.hub is None:
            return self.policy.check(self.principal, as_repo(repo), access)
        return await self.hub.async_driver.run(self.decision_flow(repo, access))

    def can_read(self, repo: Repo | str) -> Decision:
        return self._decide(repo, "read")

    def can_write(self, repo: Repo | str) -> Decision:
        return self._decide(repo, "write")

    async def acan_read(self, repo: Repo | str) -> Decision:
        return await self._adecide(repo, "read")

    async def acan_write(self, repo: Repo | str) -> Decision:
        return await self._adecide(repo, "write")

    def has_permission(self, permission: str, entity: Entity | Repo | None = None) -> Decision:
        return self.policy.has_permission(self.principal, permission, entity)

    def require(self, repo: Repo | str, access: Access = "read") -> Decision:
        """Return the decision if allowed; raise the matching 401/403 error if not
        (503 when the policy's callbacks or the hub fail)."""
        decision = self._decide(repo, access)
        if not decision:
            raise denial(self.principal, decision)
        return decision

    async def arequire(self, repo: Repo | str, access: Access = "read") -> Decision:
        """:meth:`require` for async code."""
        decision = await self._adecide(repo, access)
        if not decision:
            raise denial(self.principal, decision)
        return decision

    def readable(self, repos: Iterable[Repo | str]) -> list[Repo]:
        """The repositories of ``repos`` the caller may read, in order: what
        ``GET /v1/models`` lists. Trouble (a policy callback, the hub) raises
        :class:`~hfauth_mw.SourceUnavailable` (503), never lists more."""
        wanted = [as_repo(repo) for repo in repos]
        if self.hub is None:
            return self._locally_readable(wanted)
        return self.hub.sync_driver.run(self._readable_flow(wanted))

    async def areadable(self, repos: Iterable[Repo | str]) -> list[Repo]:
        """:meth:`readable` for async code: the hub's cold decisions are asked
        all at once (one round trip), the cached ones answer at once."""
        wanted = [as_repo(repo) for repo in repos]
        if self.hub is None:
            return self._locally_readable(wanted)
        return await self.hub.async_driver.run(self._readable_flow(wanted))

    def _locally_readable(self, wanted: list[Repo]) -> list[Repo]:
        return [repo for repo in wanted if self.policy.can_read(self.principal, repo)]

    def _readable_flow(self, wanted: list[Repo]) -> Generator[Work, Any, list[Repo]]:
        results = yield Together(tuple(self.decision_flow(repo, "read") for repo in wanted))
        for result in results:
            if isinstance(result, BaseException):
                raise result  # never list more than the hub said
        return [repo for repo, decision in zip(wanted, results, strict=True) if decision]

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
