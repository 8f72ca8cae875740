"""Flask integration: an extension over the WSGI middleware, view decorators, proxies.

::

    from hfauth_mw.flask import HFAuth, current_principal

    app = Flask(__name__)
    app.config["HFAUTH_HUB_URL"] = "https://huggingface.co"
    app.config["HFAUTH_PUBLIC_PATHS"] = ["/health"]
    hfauth = HFAuth(app)              # or HFAuth() then hfauth.init_app(app)

    @app.post("/v1/models/<owner>/<name>/infer")
    @hfauth.require_repo("read")
    def infer(owner: str, name: str):
        return {"caller": current_principal.name}

Settings are the keyword options of :class:`~hfauth_mw.HFAuthWSGIMiddleware`
upper-cased with an ``HFAUTH_`` prefix (``HFAUTH_HUB_URL``, ``HFAUTH_SOURCE``,
``HFAUTH_AUTHENTICATOR``, ``HFAUTH_CACHE``, ``HFAUTH_REALM``,
``HFAUTH_PUBLIC_PATHS``, ``HFAUTH_OPTIONAL_PATHS``,
``HFAUTH_PROTECTED_PATHS``, ``HFAUTH_ALLOW_ANONYMOUS``,
``HFAUTH_ALLOW_BASIC``, ``HFAUTH_QUERY_PARAM``, ``HFAUTH_MAX_HEADER_BYTES``,
``HFAUTH_RULES``, ``HFAUTH_METHOD_POLICY``, ``HFAUTH_POLICY``,
``HFAUTH_LIMITER``, ``HFAUTH_ERROR_FORMAT``, ``HFAUTH_MAX_BODY_BYTES``,
``HFAUTH_AUTHORITY``, ``HFAUTH_PRIVATE_RESPONSES``).
``app.config`` wins over options given to :class:`HFAuth` (a source named
there replaces the one given to :class:`HFAuth`); an unknown
``HFAUTH_*`` key is an error at ``init_app``.

Security caveats, plainly:

* ``init_app`` wraps ``app.wsgi_app`` with the WSGI middleware, so there is one
  enforcement path: every request is checked before Flask routes it, and only
  ``public_paths`` are let through without a token. The decorators add
  per-view checks on top; they never loosen the middleware's.
* Middleware that other code installs *outside* ``app.wsgi_app`` afterwards
  (``app.wsgi_app = Other(app.wsgi_app)``) runs before the check.
* On a public path, reading :data:`current_auth` / :data:`current_principal`
  or a decorated view authenticates the request then and there (one
  introspection, blocking): without a token that is a 401. Inside a streamed
  body, after the response started, it raises ``RuntimeError`` instead.
* A blueprint's ``errorhandler(Exception)`` is asked before the app's
  handlers: it sees denials raised by your own ``current_auth.require(...)``
  (answer an :class:`~hfauth_mw.AuthenticationError` with
  :meth:`HFAuth.error_response`); the decorators render theirs themselves.
* Browsers' CORS preflights carry no token: answer them outside
  ``app.wsgi_app`` (flask-cors runs inside, after the check).
* Async views run through Flask's ``ensure_sync`` (needs ``asgiref``, the
  ``flask[async]`` extra); the token check itself is blocking either way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, Unpack, cast

from werkzeug.local import LocalProxy

from ._validation import missing_extra

try:
    from flask import Flask, Response, current_app, request
except ImportError as exc:  # pragma: no cover - depends on the install
    raise missing_extra("flask", "flask") from exc

from ._exceptions import AuthenticationError, ConfigurationError
from ._options import MiddlewareOptions, options_from_config, overridden
from ._principal import Principal
from ._request_auth import RequestAuth
from ._routes import RepoRequirement
from ._rules import Access
from ._wsgi import HFAuthWSGIMiddleware, authenticate_lazily

__all__ = ["HFAuth", "current_auth", "current_principal"]

F = TypeVar("F", bound=Callable[..., Any])
_EXTENSION = "hfauth"


def _middleware(app: Flask) -> HFAuthWSGIMiddleware:
    middleware = app.extensions.get(_EXTENSION)
    if not isinstance(middleware, HFAuthWSGIMiddleware):
        raise RuntimeError("hfauth-mw is not set up on this app: call HFAuth(app) or init_app(app)")
    return middleware


def _current_auth() -> RequestAuth:
    # On a public path the middleware let the request through unchecked: then
    # it is checked now, and the middleware marks the response private.
    return authenticate_lazily(
        _middleware(current_app).guard, request.environ, lambda: request.get_data(cache=True)
    )


#: The request's :class:`~hfauth_mw.RequestAuth` (``.principal``, ``.can_read(repo)``,
#: ``.require(repo, "write")``, ...).
current_auth = cast(RequestAuth, LocalProxy(_current_auth))
#: The request's :class:`~hfauth_mw.Principal` (``.name``, ``.token_role``, ...).
current_principal = cast(Principal, LocalProxy(lambda: _current_auth().principal))


def _render(error: AuthenticationError) -> Response:
    rendered = _middleware(current_app).guard.error_response(error)
    return current_app.response_class(
        rendered.body, status=rendered.status, headers=rendered.headers
    )


class HFAuth:
    """The Flask extension. ``HFAuth(app, **options)`` or ``HFAuth(**options)``
    then ``init_app(app)``; ``options`` are defaults that ``app.config`` overrides."""

    def __init__(self, app: Flask | None = None, **options: Unpack[MiddlewareOptions]) -> None:
        self._defaults: dict[str, Any] = dict(options)
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Wrap ``app.wsgi_app`` with the middleware and render auth errors as RFC 6750."""
        if _EXTENSION in app.extensions:
            raise ConfigurationError("hfauth-mw is already set up on this app")
        options = overridden(self._defaults, options_from_config(app.config, "HFAUTH_"))
        middleware = HFAuthWSGIMiddleware(app.wsgi_app, **options)
        app.wsgi_app = middleware  # type: ignore[method-assign]
        app.extensions[_EXTENSION] = middleware
        app.register_error_handler(AuthenticationError, _render)

    @staticmethod
    def error_response(error: AuthenticationError) -> Response:
        """The RFC 6750 answer to ``error``, for an error handler of your own that
        would otherwise catch it (a blueprint's ``errorhandler(Exception)``)."""
        return _render(error)

    def middleware(self, app: Flask | None = None) -> HFAuthWSGIMiddleware:
        """The middleware of ``app`` (default: the current app); ``.guard``, ``.authenticator``."""
        return _middleware(app if app is not None else current_app)

    @staticmethod
    def require_repo(
        access: Access,
        *,
        repo_type: str = "model",
        owner_arg: str = "owner",
        name_arg: str = "name",
    ) -> Callable[[F], F]:
        """The view needs ``access`` ("read" or "write") on the repo built from its
        ``owner_arg`` and ``name_arg`` view arguments; 401/403 otherwise."""
        requirement = RepoRequirement(access, repo_type, owner_arg, name_arg)

        def check(kwargs: dict[str, Any]) -> None:
            requirement.check(_current_auth(), kwargs)

        return _guarded(check)

    @staticmethod
    def require_permission(permission: str) -> Callable[[F], F]:
        """The view needs the token permission ``permission`` (e.g.
        ``"inference.serverless.write"``); 401/403 otherwise."""

        def check(kwargs: dict[str, Any]) -> None:
            _current_auth().require_permission(permission)

        return _guarded(check)


def _guarded(check: Callable[[dict[str, Any]], None]) -> Callable[[F], F]:
    def decorator(view: F) -> F:
        if isinstance(view, type):
            # A class-based view (View, MethodView): every method needs the check.
            dispatch = getattr(view, "dispatch_request", None)
            if dispatch is None:
                raise ConfigurationError(
                    f"{view.__name__} has no dispatch_request(): decorate a view function, "
                    "a method of a MethodView, or a flask.views.View class"
                )
            setattr(view, "dispatch_request", decorator(dispatch))  # noqa: B010
            return view

        # A view function, or a method of a class-based view (self comes first in
        # args; the check reads the URL's keyword arguments only).
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                check(kwargs)
            except AuthenticationError as error:
                # Rendered here, not raised: a blueprint's errorhandler(Exception)
                # is asked before the app's handler and would turn it into a 500.
                return _render(error)
            return current_app.ensure_sync(view)(*args, **kwargs)

        return cast(F, wrapper)

    return decorator
