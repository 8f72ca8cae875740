"""Django integration: a middleware for ``settings.MIDDLEWARE`` and view decorators.

::

    # settings.py
    MIDDLEWARE = [..., "hfauth_mw.django.HFAuthMiddleware"]
    HFAUTH = {
        "HUB_URL": "https://huggingface.co",
        "PUBLIC_PATHS": ["/health"],
    }

    # views.py
    from hfauth_mw.django import require_repo

    @require_repo("write")
    def upload(request, owner, name):
        return JsonResponse({"caller": request.principal.name})

``settings.HFAUTH`` holds the keyword options of
:class:`~hfauth_mw.HFAuthWSGIMiddleware` upper-cased (``HUB_URL``, ``SOURCE``,
``AUTHENTICATOR``, ``CACHE``, ``REALM``, ``PUBLIC_PATHS``, ``OPTIONAL_PATHS``,
``PROTECTED_PATHS``, ``ALLOW_ANONYMOUS``, ``ALLOW_BASIC``, ``QUERY_PARAM``,
``MAX_HEADER_BYTES``, ``RULES``, ``METHOD_POLICY``, ``POLICY``, ``LIMITER``,
``ERROR_FORMAT``, ``MAX_BODY_BYTES``, ``AUTHORITY``, ``PRIVATE_RESPONSES``)
plus ``SET_USER``; an unknown key is an error when the middleware loads. The
options are read once per process (again when ``override_settings`` changes
``HFAUTH``), so one token cache serves every request.

On success, ``request.hfauth`` is the :class:`~hfauth_mw.RequestAuth` and
``request.principal`` the :class:`~hfauth_mw.Principal`. ``request.user`` is
left to Django's own authentication unless ``HFAUTH["SET_USER"]`` is true; then
it becomes a :class:`HubUser` (put this middleware *after*
``AuthenticationMiddleware``, which would otherwise replace it: the wrong
order is a :class:`~hfauth_mw.ConfigurationError` when the middleware loads).

Security caveats, plainly:

* Everything not in ``PUBLIC_PATHS`` needs a valid token (default deny); paths
  are ``request.path_info``, the path inside the project (without
  ``SCRIPT_NAME``/``FORCE_SCRIPT_NAME``).
* A token source that cannot answer gives 503 with ``Retry-After``, never 401.
* Denials are answered with the same RFC 6750 JSON as the other adapters. A
  Django response holds one header per name, so the 401 challenges are sent
  as one ``WWW-Authenticate`` field listing both (``Bearer realm=..., Basic
  realm=...``), which RFC 9110 section 11.6.1 allows.
* The decorators check on top of the middleware; on a public path (or without
  the middleware) they authenticate the request themselves, once, and mark
  the answer private.
* CSRF: requests authenticated with a Bearer token skip Django's CSRF check
  (a browser never sends that header by itself, so it cannot be forged
  cross-site); requests with the token as the Basic password keep it, since
  browsers replay Basic credentials like cookies: a Basic client (git,
  ``curl -u``) reads, but its POST and PUT get Django's CSRF 403. Do not
  ``@csrf_exempt`` token views unless you mean to let Basic clients write.
  The exemption is set by the middleware once it has validated the Bearer
  token, before Django's CSRF check runs; on a path the middleware does not
  check, a decorator comes too late for it, so a Bearer POST there meets
  Django's CSRF check (keep token views on checked paths). An unvalidated
  Bearer header never lifts the check: a session view would lose it.
* Under ASGI the middleware runs async and checks tokens without blocking the
  event loop; under WSGI it blocks the serving thread, for at most the
  source's timeout.
* ``HubUser`` is not a database user: it has no permissions, is never staff
  or superuser, and Django's ``login()``/sessions do not apply to it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from ._validation import missing_extra

try:
    from asgiref.sync import iscoroutinefunction, markcoroutinefunction
    from django.conf import settings  # type: ignore[import-untyped]
    from django.core.exceptions import RequestDataTooBig  # type: ignore[import-untyped]
    from django.core.signals import setting_changed  # type: ignore[import-untyped]
    from django.http import HttpResponse  # type: ignore[import-untyped]
    from django.utils.cache import patch_vary_headers  # type: ignore[import-untyped]
    from django.utils.module_loading import import_string  # type: ignore[import-untyped]
except ImportError as exc:  # pragma: no cover - depends on the install
    raise missing_extra("django", "django") from exc

from ._adapters import (
    PrincipalUser,
    mark_private,
    needs_private_marks,
    read_environ,
    settle,
    settle_async,
    take_body,
)
from ._exceptions import AuthenticationError, BodyTooLarge, ConfigurationError, InvalidBody
from ._options import AdapterOptions, build_guard, options_from_config
from ._pipeline import Guard
from ._request import RequestContext
from ._request_auth import RequestAuth
from ._routes import RepoRequirement
from ._rules import Access
from ._validation import require_bool

__all__ = ["HFAuthMiddleware", "HubUser", "require_permission", "require_repo"]

F = TypeVar("F", bound=Callable[..., Any])
Request = Any  # django.http.HttpRequest (Django ships no type hints)
GetResponse = Callable[[Request], Any]


@dataclass(frozen=True, slots=True)
class _Setup:
    guard: Guard
    private_responses: bool
    set_user: bool


@functools.cache
def _setup() -> _Setup:
    """The options of ``settings.HFAUTH``, validated, once per process."""
    raw = getattr(settings, "HFAUTH", None) or {}
    if not isinstance(raw, Mapping):
        raise ConfigurationError("settings.HFAUTH must be a dict of hfauth-mw options")
    options = options_from_config(raw, "", extra=("set_user",))
    private_responses = require_bool(
        "HFAUTH['PRIVATE_RESPONSES']", options.pop("private_responses", True)
    )
    set_user = require_bool("HFAUTH['SET_USER']", options.pop("set_user", False))
    return _Setup(build_guard(cast(AdapterOptions, options)), private_responses, set_user)


def _settings_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == "HFAUTH":
        _setup.cache_clear()


setting_changed.connect(_settings_changed, dispatch_uid="hfauth_mw.django")


def guard() -> Guard:
    """The :class:`~hfauth_mw.Guard` built from ``settings.HFAUTH``."""
    return _setup().guard


class HubUser(PrincipalUser):
    """``request.user`` when ``HFAUTH["SET_USER"]`` is on: the principal behind the
    attributes Django code reads from a user. Not a model; never staff; no perms.

    One per request, not shared as the Starlette one is: Django code may set
    attributes on it.
    """

    is_active = True
    is_staff = False
    is_superuser = False
    pk = None

    @property
    def is_anonymous(self) -> bool:
        return self.principal.is_anonymous

    @property
    def username(self) -> str:
        return self.principal.name

    def get_username(self) -> str:
        return self.principal.name

    def has_perm(self, perm: str, obj: object = None) -> bool:
        return False

    def has_perms(self, perm_list: object, obj: object = None) -> bool:
        return False

    def has_module_perms(self, app_label: str) -> bool:
        return False

    def __str__(self) -> str:
        return self.principal.name


def render(guard: Guard, error: AuthenticationError) -> HttpResponse:
    """The guard's RFC 6750 answer as a Django response."""
    rendered = guard.error_response(error)
    response = HttpResponse(rendered.body, status=rendered.status, content_type="application/json")
    for name, value in rendered.headers:
        if name == "content-type":
            continue
        response[name] = f"{response[name]}, {value}" if response.has_header(name) else value
    return response


def _attach(request: Request, auth: RequestAuth) -> RequestAuth:
    request.hfauth = auth
    request.principal = auth.principal
    if auth.scheme == "bearer":
        # A browser never adds a Bearer header on its own, so such a request
        # cannot be forged cross-site. Basic credentials it does replay, like
        # cookies: those requests keep Django's CSRF check.
        request._dont_enforce_csrf_checks = True
    # Without a token (an optional path, allow_anonymous) Django's own user stays:
    # its AnonymousUser, or the session's user on a site that also logs people in.
    if _setup().set_user and (auth.scheme is not None or not hasattr(request, "user")):
        user = HubUser(auth.principal)

        async def auser() -> HubUser:
            return user

        # Both: async views and the async login_required read request.auser().
        request.user = user
        request.auser = auser
    return auth


def _finish(request: Request, response: Any) -> Any:
    if needs_private_marks(getattr(request, "hfauth", None)) and _setup().private_responses:
        mark_response_private(response)
    return response


def mark_response_private(response: Any) -> None:
    """Mark a Django response private, through Django's own header API."""
    mark_private(
        response.has_header,
        response.__setitem__,
        lambda value: patch_vary_headers(response, (value,)),
    )


def _facts(guard: Guard, request: Request, *, with_body: bool = True) -> RequestContext:
    """The request facts; with ``with_body``, the body too where a rule reads it
    (:func:`_take_body`, which may refuse it: BodyTooLarge)."""
    facts = read_environ(request.META, guard.query_param, request.path_info)
    if with_body:
        _take_body(guard, facts, request)
    return facts


def _take_body(guard: Guard, facts: RequestContext, request: Request) -> None:
    take_body(guard, facts, lambda: _body(request))  # a rule that reads the body


def _body(request: Request) -> bytes:
    """``request.body``, with Django's own refusals as the library's: a body over
    ``DATA_UPLOAD_MAX_MEMORY_SIZE`` is a 413, not Django's 400 page and a
    traceback; a chunked body under WSGI, which Django reads as empty, a 400
    that says so."""
    meta = request.META
    if (
        "wsgi.input" in meta  # WSGI: Django reads CONTENT_LENGTH bytes, none without it
        and not meta.get("CONTENT_LENGTH")
        and "chunked" in str(meta.get("HTTP_TRANSFER_ENCODING", "")).lower()
    ):
        # The server took the chunked body (wsgi.input_terminated), but Django
        # ignores it: the rule would see an empty body ("not valid JSON").
        raise InvalidBody("Send Content-Length: Django reads no chunked request body")
    try:
        return bytes(request.body)
    except RequestDataTooBig:
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        raise BodyTooLarge(f"The request body is larger than {limit} bytes") from None


_AUTHENTICATION_MIDDLEWARE = "django.contrib.auth.middleware.AuthenticationMiddleware"


def _check_order(middleware: type) -> None:
    """With ``SET_USER``, this middleware must come after Django's
    ``AuthenticationMiddleware`` in ``settings.MIDDLEWARE``: placed before it,
    its ``request.user`` is replaced by Django's (``AnonymousUser``), silently."""
    listed = getattr(settings, "MIDDLEWARE", None) or ()
    entries = [entry for entry in listed if isinstance(entry, str)]
    name = f"{middleware.__module__}.{middleware.__qualname__}"
    if name not in entries:  # made outside settings.MIDDLEWARE (a test, a wrapper)
        return
    ours = entries.index(name)
    for entry in entries[ours + 1 :]:
        loaded = _loads(entry)
        if isinstance(loaded, type) and any(
            f"{cls.__module__}.{cls.__qualname__}" == _AUTHENTICATION_MIDDLEWARE
            for cls in loaded.__mro__
        ):
            raise ConfigurationError(
                f"HFAUTH['SET_USER'] is on, but {entries[ours]!r} comes before {entry!r} in "
                f"settings.MIDDLEWARE, which would replace request.user with Django's own: "
                f"move the line {entries[ours]!r} after {entry!r}"
            )


def _loads(entry: str) -> object:
    """What a ``settings.MIDDLEWARE`` entry after this middleware's names (Django
    imported it already: it loads the list from the end); ``None`` if it does not import."""
    try:
        return import_string(entry)
    except (ImportError, RuntimeError):
        return None


class HFAuthMiddleware:
    """Django middleware accepting Hugging Face access tokens (sync and async)."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.is_async = iscoroutinefunction(get_response)
        if self.is_async:
            markcoroutinefunction(self)
        # Bad settings fail when Django loads the middleware.
        if _setup().set_user:
            _check_order(type(self))

    def __call__(self, request: Request) -> Any:
        if self.is_async:
            return self.__acall__(request)
        guard = _setup().guard
        request.hfauth = request.principal = None
        try:
            auth = settle(guard, _facts(guard, request))
        except AuthenticationError as error:
            return render(guard, error)
        if auth is not None:
            _attach(request, auth)
        return _finish(request, self.get_response(request))

    async def __acall__(self, request: Request) -> Any:
        guard = _setup().guard
        request.hfauth = request.principal = None
        try:
            auth = await settle_async(guard, _facts(guard, request))
        except AuthenticationError as error:
            return render(guard, error)
        if auth is not None:
            _attach(request, auth)
        return _finish(request, await self.get_response(request))

    def process_exception(self, request: Request, exception: Exception) -> HttpResponse | None:
        """Render :class:`~hfauth_mw.AuthenticationError` raised in views
        (``request.hfauth.require(repo, "write")``) as RFC 6750 answers."""
        if isinstance(exception, AuthenticationError):
            return render(_setup().guard, exception)
        return None


def _request_auth(request: Request) -> RequestAuth:
    auth = getattr(request, "hfauth", None)
    if isinstance(auth, RequestAuth):
        return auth
    guard = _setup().guard
    checked = settle(guard, _facts(guard, request), lazy=True)
    assert checked is not None  # a lazy check never skips the path
    return _attach(request, checked)


async def _request_auth_async(request: Request) -> RequestAuth:
    auth = getattr(request, "hfauth", None)
    if isinstance(auth, RequestAuth):
        return auth
    guard = _setup().guard
    checked = await settle_async(guard, _facts(guard, request), lazy=True)
    assert checked is not None  # a lazy check never skips the path
    return _attach(request, checked)


def require_repo(
    access: Access, *, repo_type: str = "model", owner_arg: str = "owner", name_arg: str = "name"
) -> Callable[[F], F]:
    """The view needs ``access`` ("read" or "write") on the repo built from its
    ``owner_arg`` and ``name_arg`` URL arguments; 401/403 otherwise."""
    requirement = RepoRequirement(access, repo_type, owner_arg, name_arg)
    return _guarded(requirement.check, requirement.acheck)


def require_permission(permission: str) -> Callable[[F], F]:
    """The view needs the token permission ``permission`` (e.g.
    ``"inference.serverless.write"``); 401/403 otherwise."""

    def check(auth: RequestAuth, kwargs: Mapping[str, object]) -> None:
        auth.require_permission(permission)

    return _guarded(check)


def _guarded(
    check: Callable[[RequestAuth, Mapping[str, object]], object],
    acheck: Callable[[RequestAuth, Mapping[str, object]], Awaitable[object]] | None = None,
) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        if isinstance(view, type):
            return cast(F, _guard_class(view, decorator))
        if iscoroutinefunction(view):
            async_view = cast(Callable[..., Awaitable[Any]], view)

            @functools.wraps(view)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                request = _request_of(args)
                try:
                    auth = await _request_auth_async(request)
                    if acheck is not None:  # may ask the hub: without blocking the loop
                        await acheck(auth, kwargs)
                    else:
                        check(auth, kwargs)
                    response = await async_view(*args, **kwargs)
                except AuthenticationError as error:
                    return render(guard(), error)
                return _finish(request, response)

            return cast(F, async_wrapper)

        # Without the middleware (or on a public path) the decorator is all
        # there is: it also renders denials raised in the view and marks the
        # answer private, as the middleware would (both are idempotent).
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = _request_of(args)
            try:
                check(_request_auth(request), kwargs)
                response = view(*args, **kwargs)
            except AuthenticationError as error:
                return render(guard(), error)
            return _finish(request, response)

        return cast(F, wrapper)

    return decorator


def _request_of(args: tuple[Any, ...]) -> Request:
    """The request among a view's positional arguments: the first for a view
    function, the second for a method of a class-based view (after ``self``)."""
    for arg in args[:2]:
        if hasattr(arg, "META"):  # an HttpRequest, or DRF's Request over one
            return arg
    raise TypeError(
        "hfauth-mw: the decorated view was not called with a request as its first "
        "argument (a view function) or second (a method of a class-based view)"
    )


def _guard_class(view_class: type, decorator: Callable[[F], F]) -> type:
    """A class-based view (Django's ``View``, DRF's ``APIView``): its ``dispatch``
    runs the check first, so every method of the class needs it."""
    dispatch = getattr(view_class, "dispatch", None)
    if dispatch is None:
        raise ConfigurationError(
            f"{view_class.__name__} has no dispatch(): decorate a view function, a method "
            "of a class-based view, or a class-based view"
        )
    if getattr(view_class, "view_is_async", False):
        # Async class-based views: dispatch returns the handler's coroutine.
        @functools.wraps(dispatch)
        async def async_dispatch(self: Any, request: Request, *args: Any, **kwargs: Any) -> Any:
            response = dispatch(self, request, *args, **kwargs)
            return await response if inspect.isawaitable(response) else response

        setattr(view_class, "dispatch", decorator(cast(F, async_dispatch)))  # noqa: B010
    else:
        setattr(view_class, "dispatch", decorator(cast(F, dispatch)))  # noqa: B010
    return view_class
