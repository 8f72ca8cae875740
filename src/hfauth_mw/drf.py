"""Django REST framework integration: an authentication class and permission classes.

::

    # settings.py
    INSTALLED_APPS = [..., "rest_framework"]
    HFAUTH = {"HUB_URL": "https://huggingface.co"}
    REST_FRAMEWORK = {
        "DEFAULT_AUTHENTICATION_CLASSES": [
            "hfauth_mw.drf.HubTokenAuthentication",   # first: its challenge answers 401s
            "rest_framework.authentication.SessionAuthentication",
            "rest_framework.authentication.BasicAuthentication",
        ],
        "EXCEPTION_HANDLER": "hfauth_mw.drf.exception_handler",  # X-Error-* headers
    }

    # views.py
    from hfauth_mw.drf import HasRepoAccess

    class Infer(APIView):
        permission_classes = [HasRepoAccess("read")]   # repo from the URL's owner/name

        def post(self, request, owner, name):
            return Response({"by": request.user.username})

:class:`HubTokenAuthentication` sets ``request.user`` to a
:class:`~hfauth_mw.django.HubUser` and ``request.auth`` to the
:class:`~hfauth_mw.RequestAuth`, so DRF's own ``IsAuthenticated`` works too.
Options come from ``settings.HFAUTH``, as for :mod:`hfauth_mw.django` (one
token cache per process, shared with the Django middleware). It works with or
without that middleware: when the middleware checked the request, its answer
is reused (never two checks for one request).

Errors keep DRF's shape, ``{"detail": "..."}``, with the reasons, status codes
and ``WWW-Authenticate``/``Retry-After`` headers of the other adapters (401
``Authentication required``, 401 invalid token, 400 malformed credentials, 403
``write denied: token role read``, 429, 503). ``EXCEPTION_HANDLER =
"hfauth_mw.drf.exception_handler"`` adds the ``X-Error-Code`` and
``X-Error-Message`` headers the Hub sends (and the RFC 6750 challenge on 400
and 403, ``Cache-Control: no-store`` on every one of these errors); it answers
every other exception as DRF's default handler does.

Security caveats, plainly:

* Order matters. Put :class:`HubTokenAuthentication` first: DRF answers a 401
  with the challenge of the *first* class only (and turns it into a 403 when
  that class has none, as ``SessionAuthentication``).
* Basic credentials: this class takes them only when the password looks like
  a Hub token (``hf_...``, :meth:`HubTokenAuthentication.claims_basic`);
  others are left to DRF's ``BasicAuthentication`` (a Django user's password).
  Bearer tokens are always this class's: an invalid one is refused, never
  passed on to the next class.
* CSRF: requests with a Bearer token need no CSRF token (a browser never adds
  that header by itself); requests with the token as the Basic password get
  Django's CSRF check, as DRF's ``SessionAuthentication`` does, since browsers
  replay Basic credentials like cookies.
* With ``HFAUTH["PROTECTED_PATHS"]`` or ``PUBLIC_PATHS`` and the Django
  middleware, paths the middleware lets through are checked here, when a view
  asks for ``request.user`` (DRF does that before every view).
* Without the middleware, answers to token-authenticated requests are still
  marked private (``Vary: Authorization``, ``Cache-Control: private`` unless
  the view set one), through the view's ``finalize_response``.
* :class:`~hfauth_mw.django.HubUser` is not a database user: no permissions,
  never staff, and Django's ``login()`` and sessions do not apply to it.
* Throttling: DRF's ``UserRateThrottle`` and ``ScopedRateThrottle`` key on
  ``request.user.pk``, which a ``HubUser`` does not have (``None``): every Hub
  user would share one bucket. Use :class:`HubUserRateThrottle` and
  :class:`HubScopedRateThrottle`, keyed on the Hub account.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ._validation import missing_extra

try:
    from django.http import HttpResponseBase  # type: ignore[import-untyped]
    from rest_framework import exceptions  # type: ignore[import-untyped]
    from rest_framework.authentication import (  # type: ignore[import-untyped]
        BaseAuthentication,
        CSRFCheck,
    )
    from rest_framework.permissions import (  # type: ignore[import-untyped]
        BasePermission,
        OperationHolderMixin,
    )
    from rest_framework.throttling import (  # type: ignore[import-untyped]
        ScopedRateThrottle,
        UserRateThrottle,
    )
except ImportError as exc:  # pragma: no cover - depends on the install
    raise missing_extra("drf", "drf") from exc

from ._adapters import MALFORMED, carried_credentials, settle
from ._answers import ErrorResponse
from ._exceptions import (
    AuthenticationError,
    ConfigurationError,
    InsufficientScope,
    InvalidRequest,
    InvalidToken,
    MissingCredentials,
    SourceUnavailable,
    TooManyFailures,
)
from ._pipeline import Guard
from ._principal import ANONYMOUS
from ._request_auth import RequestAuth, as_repo
from ._routes import RepoRequirement
from ._rules import Access, Repo
from .django import HubUser, _facts, _setup, _take_body, mark_response_private
from .django import guard as django_guard

__all__ = [
    "HasRepoAccess",
    "HasTokenPermission",
    "HubScopedRateThrottle",
    "HubTokenAuthentication",
    "HubUserRateThrottle",
    "IsHubAuthenticated",
    "api_exception",
    "exception_handler",
]

Request = Any  # rest_framework.request.Request (DRF ships no type hints)
View = Any
RepoSource = Callable[[Request, View], "Repo | str"]

# On the Django request: the challenge a refused request is answered with
# (authenticate_header reads it).
_CHALLENGE = "_hfauth_challenge"


# --- errors in DRF's shape ------------------------------------------------------------


class _HubError:
    """What every hfauth-mw error in DRF carries: the core's error and its answer."""

    hfauth_error: AuthenticationError
    hfauth_response: ErrorResponse


class HubNotAuthenticated(_HubError, exceptions.NotAuthenticated):  # type: ignore[misc]
    """401 without credentials (DRF adds the challenge of the first authenticator)."""


class HubAuthenticationFailed(_HubError, exceptions.AuthenticationFailed):  # type: ignore[misc]
    """401 for an invalid, revoked or expired token."""


class HubPermissionDenied(_HubError, exceptions.PermissionDenied):  # type: ignore[misc]
    """403: a valid token without the access the request needs."""


class HubBadRequest(_HubError, exceptions.APIException):  # type: ignore[misc]
    """400: malformed credentials."""

    status_code = 400
    default_code = "invalid_request"


class HubThrottled(_HubError, exceptions.Throttled):  # type: ignore[misc]
    """429: too many failed attempts from this client (``Retry-After``)."""

    def __init__(self, wait: int, detail: str, code: str | None) -> None:
        # Not Throttled.__init__: it appends its own sentence to the reason.
        exceptions.APIException.__init__(self, detail, code)
        self.wait = wait


class HubUnavailable(_HubError, exceptions.APIException):  # type: ignore[misc]
    """503: the token source cannot answer (``Retry-After``); never a 401."""

    status_code = 503
    default_code = "temporarily_unavailable"


def api_exception(guard: Guard, error: AuthenticationError) -> exceptions.APIException:
    """The DRF exception for a core error: the same status, reason and headers."""
    rendered = guard.error_response(error)
    detail = guard.answers.message(error)  # what the other adapters' answers say
    code = error.error or ("unauthorized" if error.status_code == 401 else None)
    drf_error: exceptions.APIException
    if isinstance(error, TooManyFailures):
        drf_error = HubThrottled(wait=error.retry_after, detail=detail, code=code)
    elif isinstance(error, SourceUnavailable):
        drf_error = HubUnavailable(detail=detail, code=code)
        drf_error.wait = error.retry_after
    elif isinstance(error, InsufficientScope):
        drf_error = HubPermissionDenied(detail=detail, code=code)
    elif isinstance(error, InvalidRequest):
        drf_error = HubBadRequest(detail=detail, code=code)
    elif isinstance(error, InvalidToken):
        drf_error = HubAuthenticationFailed(detail=detail, code=code)
    elif error.status_code == 401:
        drf_error = HubNotAuthenticated(detail=detail, code=code)
    else:  # pragma: no cover - every AuthenticationError is one of the above
        drf_error = exceptions.APIException(detail=detail, code=code)
        drf_error.status_code = error.status_code
    drf_error.hfauth_error = error
    drf_error.hfauth_response = rendered
    return drf_error


def _challenge(rendered: ErrorResponse) -> str | None:
    """The answer's challenges as one ``WWW-Authenticate`` value (a Django response
    holds one header per name; RFC 9110 11.6.1 allows a list)."""
    values = [value for name, value in rendered.headers if name == "www-authenticate"]
    return ", ".join(values) or None


def _refuse(request: Request, error: AuthenticationError) -> exceptions.APIException:
    """The DRF exception to raise for ``error``, noting its challenge for
    :meth:`HubTokenAuthentication.authenticate_header`."""
    drf_error = api_exception(django_guard(), error)
    setattr(request._request, _CHALLENGE, _challenge(drf_error.hfauth_response))
    return drf_error


def exception_handler(exc: Exception, context: Mapping[str, Any]) -> Any:
    """DRF's exception handler, plus the headers hfauth-mw answers carry: the
    RFC 6750 ``WWW-Authenticate`` on 400 and 403 (DRF sets it on 401 only),
    ``X-Error-Code`` and ``X-Error-Message``, ``Cache-Control: no-store``.
    A core :class:`~hfauth_mw.AuthenticationError` raised in a view
    (``request.auth.require(repo, "write")``) is answered as the permission
    classes answer it, in DRF's shape.
    Set ``REST_FRAMEWORK["EXCEPTION_HANDLER"] = "hfauth_mw.drf.exception_handler"``."""
    # Imported here: rest_framework.views loads the authentication classes named in
    # the settings (this module), so importing it at the top would be circular.
    from rest_framework.views import (  # type: ignore[import-untyped]
        exception_handler as drf_exception_handler,
    )

    if isinstance(exc, AuthenticationError):
        # Raised by the view itself (request.auth.require(...)): the core's error,
        # which DRF's handler knows nothing of (a 500). DRF's own exception, with
        # the challenge a 401 is answered with.
        drf_error = api_exception(django_guard(), exc)
        if drf_error.status_code == 401:
            drf_error.auth_header = _challenge(drf_error.hfauth_response)
        exc = drf_error
    response = drf_exception_handler(exc, context)
    rendered = getattr(exc, "hfauth_response", None)
    if response is None or not isinstance(rendered, ErrorResponse):
        return response
    for name, value in rendered.headers:
        if name in ("x-error-code", "x-error-message", "cache-control"):
            response[name] = value
    if not response.has_header("WWW-Authenticate"):
        challenge = _challenge(rendered)
        if challenge is not None and response.status_code != 401:
            response["WWW-Authenticate"] = challenge
    return response


# --- authentication -------------------------------------------------------------------


class HubTokenAuthentication(BaseAuthentication):  # type: ignore[misc]
    """DRF authentication with Hugging Face tokens (Bearer, or the Basic password).

    A valid token: ``request.user`` is a :class:`~hfauth_mw.django.HubUser`,
    ``request.auth`` the :class:`~hfauth_mw.RequestAuth`. No token: ``None``,
    as DRF expects, so the next class may try (and ``request.user`` ends up
    anonymous). A bad token: refused with the RFC 6750 reason (401, 400, 429
    or 503), never passed on.
    """

    def authenticate(self, request: Request) -> tuple[HubUser, RequestAuth] | None:
        django_request = request._request
        known = getattr(django_request, "hfauth", None)
        if isinstance(known, RequestAuth):
            # The Django middleware checked this request already.
            if known.principal.is_anonymous:
                return None
            if known.scheme == "basic":
                self.enforce_csrf(request)  # DRF views are csrf_exempt for Django's check
            return HubUser(known.principal), known
        guard = django_guard()
        # The body only once there are credentials to check: a request without
        # any is the next class's (or anonymous), whatever its size.
        context = _facts(guard, django_request, with_body=False)
        credentials = carried_credentials(guard, context)
        if credentials is None:
            return None
        if (
            credentials is not MALFORMED
            and credentials.scheme == "basic"
            and not self.claims_basic(credentials.username or "", credentials.token)
        ):
            return None  # a Django user's password: DRF's BasicAuthentication's
        try:
            _take_body(guard, context, django_request)
            auth = settle(guard, context, lazy=True)
        except AuthenticationError as error:  # BodyTooLarge (413) included
            raise _refuse(request, error) from None
        assert auth is not None  # a lazy check never skips the path
        django_request.hfauth = auth
        django_request.principal = auth.principal
        if auth.scheme == "basic":
            # Browsers replay Basic credentials cross-site, as they do cookies.
            self.enforce_csrf(request)
        _mark_private_later(request)
        return HubUser(auth.principal), auth

    def claims_basic(self, username: str, password: str) -> bool:
        """Whether Basic credentials are a Hub token (this class's) rather than a
        Django user's password (``BasicAuthentication``'s): by default, when the
        password starts with ``hf_``. Override for tokens of another shape."""
        return password.startswith("hf_")

    def authenticate_header(self, request: Request) -> str:
        """The challenge of a 401: the refused token's (``error="invalid_token"``),
        else ``Bearer realm=...`` (and ``Basic realm=...`` when Basic is on)."""
        noted = getattr(request._request, _CHALLENGE, None)
        if isinstance(noted, str):
            return noted
        challenge = _challenge(django_guard().error_response(MissingCredentials()))
        assert challenge is not None  # a 401 without an error code carries challenges
        return challenge

    def enforce_csrf(self, request: Request) -> None:
        """Django's CSRF check, as DRF's ``SessionAuthentication`` runs it."""

        def no_response(request: Any) -> None:  # pragma: no cover - never called
            return None

        check = CSRFCheck(no_response)
        check.process_request(request)
        reason = check.process_view(request, None, (), {})
        if reason:
            raise exceptions.PermissionDenied(f"CSRF Failed: {reason}")


def _mark_private_later(request: Request) -> None:
    """Mark the view's answer private once it is made: DRF gives authentication
    classes no response, so the view's ``finalize_response`` does it (a view
    instance serves one request)."""
    view = (getattr(request, "parser_context", None) or {}).get("view")
    if view is None or not _setup().private_responses:
        return
    finalize = view.finalize_response

    def finalize_private(request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = finalize(request, response, *args, **kwargs)
        if isinstance(response, HttpResponseBase) and not getattr(response, "exception", False):
            mark_response_private(response)
        return response

    view.finalize_response = finalize_private


# --- permissions ----------------------------------------------------------------------


def _request_auth(request: Request) -> RequestAuth:
    """The request's RequestAuth, or the anonymous one (a session user, or nobody)."""
    auth = request.auth
    if isinstance(auth, RequestAuth):
        return auth
    return RequestAuth(ANONYMOUS, django_guard().policy)


class _HubPermission(OperationHolderMixin, BasePermission):  # type: ignore[misc]
    """A permission given as an instance (``HasRepoAccess("read")``) in
    ``permission_classes``: DRF calls it to get the permission, and it
    composes with ``&``, ``|`` and ``~`` as DRF's classes do."""

    def __call__(self) -> _HubPermission:
        return self

    def has_permission(self, request: Request, view: View) -> bool:
        try:
            self.check(_request_auth(request), request, view)
        except AuthenticationError as error:
            raise _refuse(request, error) from None
        return True

    def check(self, auth: RequestAuth, request: Request, view: View) -> None:
        """Raise the core's 401/403 when ``auth`` may not."""
        raise NotImplementedError


class IsHubAuthenticated(BasePermission):  # type: ignore[misc]
    """A valid Hugging Face token is needed (a session login is not enough):
    401 ``Authentication required`` otherwise, with the Bearer challenge."""

    def has_permission(self, request: Request, view: View) -> bool:
        auth = request.auth
        if isinstance(auth, RequestAuth) and not auth.principal.is_anonymous:
            return True
        raise _refuse(request, MissingCredentials())


class HasRepoAccess(_HubPermission):
    """``access`` (``"read"`` or ``"write"``) on a repository, from the view's URL
    keyword arguments (``owner_kwarg``/``name_kwarg``, default ``owner``/``name``)
    or from ``repo``, a callable ``(request, view) -> Repo | "type:owner/name"``.

    Without a token the request is the anonymous caller: it reads public repos
    (per the ``POLICY`` of ``settings.HFAUTH``), else 401; a token without the
    access gets 403 with the reason (``write denied: token role read``).
    """

    def __init__(
        self,
        access: Access,
        repo: RepoSource | None = None,
        *,
        repo_type: str = "model",
        owner_kwarg: str = "owner",
        name_kwarg: str = "name",
    ) -> None:
        self.requirement = RepoRequirement(access, repo_type, owner_kwarg, name_kwarg)
        if repo is not None and not callable(repo):
            raise ConfigurationError(
                "HasRepoAccess(repo=...) takes a callable (request, view) -> Repo or "
                "'type:owner/name'; for a fixed repository use lambda request, view: 'model:a/b'"
            )
        self.repo = repo

    def check(self, auth: RequestAuth, request: Request, view: View) -> None:
        if self.repo is None:
            self.requirement.check(auth, getattr(view, "kwargs", {}) or {})
            return
        try:
            repo = as_repo(self.repo(request, view))
        except ValueError:
            raise _invalid_repo(auth, self.requirement) from None
        auth.require(repo, self.requirement.access)

    def __repr__(self) -> str:
        return (
            f"HasRepoAccess({self.requirement.access!r}, repo_type={self.requirement.repo_type!r})"
        )


class HasTokenPermission(_HubPermission):
    """A token permission such as ``"inference.endpoints.infer.write"``: 401 without
    a token, 403 with the reason otherwise."""

    def __init__(self, permission: str) -> None:
        self.permission = permission

    def check(self, auth: RequestAuth, request: Request, view: View) -> None:
        auth.require_permission(self.permission)

    def __repr__(self) -> str:
        return f"HasTokenPermission({self.permission!r})"


def _invalid_repo(auth: RequestAuth, requirement: RepoRequirement) -> AuthenticationError:
    reason = f"{requirement.access} denied: not a valid repository id"
    if auth.principal.is_anonymous:
        return MissingCredentials(reason)
    return InsufficientScope(reason, scope=requirement.needed)


# --- throttling -----------------------------------------------------------------------


class _HubAccountKey:
    """The cache key of DRF's user throttles, per Hub account for a token
    (``HubUser.pk`` is ``None``: DRF would put every Hub user in one bucket)
    and as DRF keys it otherwise (a Django user's ``pk``, else the address)."""

    cache_format: str
    scope: str

    def get_cache_key(self, request: Request, view: View) -> str | None:
        user = getattr(request, "user", None)
        if isinstance(user, HubUser) and user.is_authenticated:
            # "hub:" keeps a Hub account apart from a Django user's numeric pk.
            ident = f"hub:{user.identity}"
            return self.cache_format % {"scope": self.scope, "ident": ident}
        key: str | None = super().get_cache_key(request, view)  # type: ignore[misc]
        return key


class HubUserRateThrottle(_HubAccountKey, UserRateThrottle):  # type: ignore[misc]
    """DRF's ``UserRateThrottle`` (rate ``DEFAULT_THROTTLE_RATES["user"]``), one
    bucket per Hub account; a Django user's or an anonymous caller's as DRF's."""


class HubScopedRateThrottle(_HubAccountKey, ScopedRateThrottle):  # type: ignore[misc]
    """DRF's ``ScopedRateThrottle`` (the view's ``throttle_scope``), one bucket per
    Hub account and scope; a Django user's or an anonymous caller's as DRF's."""
