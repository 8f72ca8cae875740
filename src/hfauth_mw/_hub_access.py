"""The Hub's own per-repository check, as a sans-IO flow.

``GET {hub}/api/{type}s/{owner}/{name}/auth-check`` (read) and
``.../auth-check/write`` (write) answer, with the caller's token, whether the
Hub lets that token read or write that repository. Only the Hub knows gate
grants, org token policies, security restrictions and resource groups, so
its answer is the authority; :mod:`hfauth_mw._rules` is the fallback.

Like the introspection sources (:mod:`hfauth_mw._sources`), the flow is a
generator: it yields :class:`httpx.Request` objects, each with an explicit
timeout, and receives :class:`httpx.Response` objects; the driver does the
I/O, and must not follow redirects itself (the flow decides about a 307).
It returns a :class:`HubAnswer`, or raises
:class:`~hfauth_mw.SourceUnavailable` when the Hub's answer says nothing
about the token or the repository.

The answers map as the Hub documents them (hub-tokens.md):

* 200: allowed.
* 401: the token is invalid (``HubAnswer.token_invalid``; the caller drops it
  from the token cache). Without a token: "authentication required".
* 403: denied; with ``X-Error-Code: GatedRepo``, "gated: <user> has not been
  granted access to <repo> on the Hub".
* 404: denied, without saying whether the repository exists.
* 307: the repository was renamed. The new id in ``Location`` is checked once
  more, at the same hub only (never another host or path prefix, never a
  second rename).
* 429, 5xx, any other status, a 307 without a usable ``Location``:
  :class:`~hfauth_mw.SourceUnavailable` with ``Retry-After``: never "allowed",
  never "invalid token", and nothing to cache.

Security caveats: the token travels to the hub in the ``Authorization``
header of every request built here; nothing else (reasons, exceptions,
reprs) ever holds it. A 404 and a 403 are told apart in ``HubAnswer.status``
for logs and metrics, but their reasons never say whether a repository exists.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, urljoin, urlsplit

import httpx

from ._credentials import Credentials
from ._exceptions import ConfigurationError, SourceUnavailable
from ._rules import (
    NEEDED_PERMISSION,
    REPO_TYPES,
    Access,
    Decision,
    Repo,
    RepoType,
    _line,
    _safe,
)
from ._sources import (
    _USER_AGENT,
    _WHOAMI_PATH,
    DEFAULT_HUB_URL,
    DEFAULT_RETRY_AFTER,
    DEFAULT_TIMEOUT,
    HubWhoamiSource,
    _timeout_extension,
    _wait_timeout,
    check_url,
    foreign_401,
    request_timeout,
    unavailable_for,
)
from ._validation import require_bool

__all__ = [
    "GATED_REPO",
    "HubAccessCheck",
    "HubAnswer",
    "auth_check_flow",
    "auth_check_path",
]

AuthCheckFlow = Generator[httpx.Request, httpx.Response, "HubAnswer"]

#: ``X-Error-Code`` of a gated repository whose gate the caller has not passed.
GATED_REPO = "GatedRepo"

#: The path segment of each repository type in the Hub's API: ``/api/models/...``.
_SEGMENTS: dict[RepoType, str] = {kind: f"{kind}s" for kind in REPO_TYPES}
_TYPES_BY_SEGMENT: dict[str, RepoType] = {segment: kind for kind, segment in _SEGMENTS.items()}
_CHECK_PATH = re.compile(
    r"/api/(?P<segment>[a-z]+)/(?P<owner>[^/]+)/(?P<name>[^/]+)/auth-check(?P<write>/write)?/?"
)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _origin(parts: SplitResult) -> tuple[str, str | None, int | None]:
    """Scheme, host and port, with the scheme's default port spelled out."""
    try:
        port = parts.port
    except ValueError:  # a port that is not a number: no origin of ours
        return ("", None, None)
    return (parts.scheme, parts.hostname, port or _DEFAULT_PORTS.get(parts.scheme))


def auth_check_path(repo: Repo, access: Access) -> str:
    """``/api/{type}s/{owner}/{name}/auth-check`` (read) or ``.../auth-check/write``."""
    if access not in ("read", "write"):
        raise ValueError(f"access must be 'read' or 'write', not {_safe(access)!r}")
    path = (
        f"/api/{_SEGMENTS[repo.type]}/{quote(repo.owner, safe='')}/"
        f"{quote(repo.name, safe='')}/auth-check"
    )
    return path + "/write" if access == "write" else path


@dataclass(frozen=True, slots=True)
class HubAnswer:
    """What the Hub's auth-check said.

    ``decision`` always has ``decided_by="hub"``. ``token_invalid`` is True on a
    401 to a token: the decision is a denial, and the caller must also drop the
    token from its token cache (the Hub no longer accepts it). ``repo`` is the
    repository the Hub decided on: the new id after a rename (``renamed_from``
    then holds the one asked about). ``status`` is the Hub's final HTTP status,
    for logs and metrics only (it may tell a 403 from a 404: never show it to
    the caller).
    """

    decision: Decision
    repo: Repo
    status: int
    token_invalid: bool = False
    renamed_from: Repo | None = None

    @property
    def allowed(self) -> bool:
        return self.decision.allowed


def _hub_decision(allowed: bool, reason: str, access: Access) -> Decision:
    return Decision(allowed, _line(reason), NEEDED_PERMISSION[access], "hub")


class HubAccessCheck:
    """Builds auth-check flows for one hub (the same base URL as its
    :class:`~hfauth_mw.HubWhoamiSource`).

    ``hub_url`` follows :class:`~hfauth_mw.HubWhoamiSource`'s rules: https, or
    plain http on loopback or with ``allow_insecure_http``, no credentials,
    query or fragment. ``timeout`` bounds every request (seconds or an
    :class:`httpx.Timeout` bounding every phase).
    """

    def __init__(
        self,
        hub_url: str = DEFAULT_HUB_URL,
        *,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        allow_insecure_http: bool = False,
        name: str | None = None,
    ) -> None:
        require_bool("allow_insecure_http", allow_insecure_http)
        self.hub_url = check_url(
            hub_url, allow_insecure_http=allow_insecure_http, what="hub_url"
        ).rstrip("/")
        endpoint = _WHOAMI_PATH.search(self.hub_url)
        if endpoint is not None:
            raise ConfigurationError(
                "hub_url is the hub's base URL, without the endpoint's path: "
                f"{self.hub_url[: endpoint.start()] or '/'!r}, not {self.hub_url!r}"
            )
        self.timeout = request_timeout(timeout)
        self.name = name or f"hub:{self.hub_url}"
        parts = urlsplit(self.hub_url)
        self._origin = _origin(parts)
        self._prefix = parts.path.rstrip("/")

    @classmethod
    def for_source(cls, source: HubWhoamiSource) -> HubAccessCheck:
        """The check for the hub of a :class:`~hfauth_mw.HubWhoamiSource`: same
        base URL, timeout and name, so upstream trouble is reported alike."""
        if not isinstance(source, HubWhoamiSource):
            raise ConfigurationError(
                f"the Hub's auth-check needs a HubWhoamiSource, not {type(source).__name__}"
            )
        # The source already refused plain http where it was not allowed.
        return cls(
            source.hub_url, timeout=source.timeout, allow_insecure_http=True, name=source.name
        )

    @property
    def wait_timeout(self) -> float:
        """How long a request may wait for another's check: the redirect included."""
        return 2 * _wait_timeout(self.timeout)

    def __repr__(self) -> str:
        return f"HubAccessCheck({self.hub_url!r})"

    def url_for(self, repo: Repo, access: Access) -> str:
        return self.hub_url + auth_check_path(repo, access)

    def _request(
        self, credentials: Credentials | None, repo: Repo, access: Access
    ) -> httpx.Request:
        headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
        if credentials is not None:
            headers["Authorization"] = f"Bearer {credentials.token}"
        return httpx.Request(
            "GET",
            self.url_for(repo, access),
            headers=headers,
            extensions=_timeout_extension(self.timeout),
        )

    def _renamed_to(self, response: httpx.Response, access: Access) -> Repo:
        """The repository a 307 points to, if it is an auth-check of the same kind
        at the same hub; anything else is upstream trouble."""
        location = response.headers.get("location", "")
        target = urlsplit(urljoin(str(response.request.url), location)) if location else None
        if target is None or _origin(target) != self._origin:
            raise SourceUnavailable("The hub redirected the repository check elsewhere")
        path = target.path
        if not path.startswith(self._prefix + "/"):
            raise SourceUnavailable("The hub redirected the repository check elsewhere")
        match = _CHECK_PATH.fullmatch(path[len(self._prefix) :])
        kind = _TYPES_BY_SEGMENT.get(match["segment"]) if match else None
        if match is None or kind is None or bool(match["write"]) != (access == "write"):
            raise SourceUnavailable("The hub redirected the repository check elsewhere")
        try:
            return Repo(kind, match["owner"], match["name"])
        except ValueError:
            raise SourceUnavailable(
                "The hub redirected the repository check to an invalid repository"
            ) from None

    def flow(
        self,
        credentials: Credentials | None,
        repo: Repo,
        access: Access,
        *,
        user: str | None = None,
    ) -> AuthCheckFlow:
        """Ask the hub whether ``credentials`` (``None``: anonymous) may ``access``
        ``repo``. ``user`` names the caller in a gated denial's reason."""
        if access not in ("read", "write"):
            raise ValueError(f"access must be 'read' or 'write', not {_safe(access)!r}")
        asked = repo
        response = yield self._request(credentials, repo, access)
        renamed_from: Repo | None = None
        if response.status_code == 307:
            renamed_from, repo = repo, self._renamed_to(response, access)
            response = yield self._request(credentials, repo, access)
            if response.status_code == 307:
                # Renamed twice (or a loop): an answer about the repository, not
                # trouble; the caller should use the current id.
                return HubAnswer(
                    _hub_decision(
                        False,
                        f"{access} denied: {asked} was renamed more than once on the Hub; "
                        "use its current id",
                        access,
                    ),
                    repo,
                    307,
                    renamed_from=renamed_from,
                )
        _check_answer_is_the_hubs(response)
        return HubAnswer(
            self._decision(response, credentials, repo, access, user, renamed_from),
            repo,
            response.status_code,
            token_invalid=response.status_code == 401 and credentials is not None,
            renamed_from=renamed_from,
        )

    def _decision(
        self,
        response: httpx.Response,
        credentials: Credentials | None,
        repo: Repo,
        access: Access,
        user: str | None,
        renamed_from: Repo | None,
    ) -> Decision:
        status = response.status_code
        renamed = f" (renamed from {renamed_from.id})" if renamed_from is not None else ""
        if status == 200:
            return _hub_decision(True, f"{access} allowed: the Hub allows {repo}{renamed}", access)
        if status == 401:
            if credentials is None:
                return _hub_decision(False, f"{access} denied: authentication required", access)
            return _hub_decision(
                False, f"{access} denied: the Hub does not accept this token", access
            )
        if status == 403:
            if response.headers.get("x-error-code") == GATED_REPO:
                who = _safe(user) if user else "the caller"
                return _hub_decision(
                    False,
                    f"{access} denied: gated: {who} has not been granted access to "
                    f"{repo.id} on the Hub",
                    access,
                )
            return _hub_decision(
                False,
                f"{access} denied: the Hub refuses this token {access} access to {repo}",
                access,
            )
        if status == 404:
            # The Hub answers 404 for missing repositories and for ones this token
            # may not see: say neither.
            return _hub_decision(
                False,
                f"{access} denied: {repo} is not found or not visible to this token on the Hub",
                access,
            )
        # 429, 5xx, and any status the Hub does not document for auth-check: they
        # say nothing about the token or the repository.
        raise unavailable_for(response, self.name)


def _check_answer_is_the_hubs(response: httpx.Response) -> None:
    """Raise SourceUnavailable (503) for an answer the hub did not give: a 401
    from an SSO or auth proxy in front of it (which says nothing about the
    token, as for whoami-v2), or a web page with 200 (a fallback page for
    unknown paths in front of a private hub), which must never grant."""
    status = response.status_code
    if status == 401:
        foreign = foreign_401(response)
        if foreign is not None:
            raise SourceUnavailable(
                f"The hub's repository check answered HTTP 401 that is not the hub's "
                f"({foreign}); is an SSO or auth proxy in front of it?",
                retry_after=DEFAULT_RETRY_AFTER,
            )
    elif status == 200 and "html" in response.headers.get("content-type", "").lower():
        raise SourceUnavailable(
            "The hub's repository check answered a web page, not the hub's answer; "
            "is hub_url the hub's own address?",
            retry_after=DEFAULT_RETRY_AFTER,
        )


def auth_check_flow(
    hub_url: str,
    credentials: Credentials | None,
    repo: Repo,
    access: Access,
    timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
    *,
    user: str | None = None,
    allow_insecure_http: bool = False,
) -> AuthCheckFlow:
    """One auth-check of ``repo`` at ``hub_url`` (see :class:`HubAccessCheck`)."""
    check = HubAccessCheck(hub_url, timeout=timeout, allow_insecure_http=allow_insecure_http)
    return check.flow(credentials, repo, access, user=user)
