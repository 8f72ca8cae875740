"""FastAPI integration: security dependencies that OpenAPI and Swagger understand.

::

    from fastapi import FastAPI, Security
    from hfauth_mw import RequestAuth
    from hfauth_mw.fastapi import RequirePermission, RequireRepo, install

    app = FastAPI()
    install(app, hub_url="https://huggingface.co")

    @app.post("/v1/models/{owner}/{name}/infer")
    async def infer(owner: str, name: str, auth: RequestAuth = Security(RequireRepo("read"))):
        return {"caller": auth.principal.name}

    serverless = Security(RequirePermission("inference.serverless.write"))

    @app.post("/v1/serverless", dependencies=[serverless])
    async def run_serverless(): ...

Each dependency declares two OpenAPI security schemes, ``HuggingFaceToken``
(HTTP Bearer) and ``HuggingFaceBasic`` (HTTP Basic, the token as password), as
alternatives, with what it needs as the requirement's scopes
(``repo.content.read``, ``repo.write`` or the permission), so ``/docs`` shows
the lock on each route and Swagger's "Authorize" button works.

The dependencies reuse what :class:`~hfauth_mw.HFAuthMiddleware` found
(``request.scope["hfauth"]``) when it is installed; without it (or on its
public paths) the first dependency of a request checks the token itself,
asynchronously, and later dependencies of the same request reuse that answer:
never two introspections for one request.

:func:`install` is required, on every FastAPI app whose routes use these
dependencies (a mounted sub-app is an app of its own): it holds the options
used when the middleware did not run, and the exception handler that renders
every :class:`~hfauth_mw.AuthenticationError` as the RFC 6750 answer
(``{"error", "error_description"}``, not FastAPI's ``{"detail": ...}``). With
``allow_basic=False`` it also leaves the Basic scheme out of OpenAPI. Routes
using them on an app without it stop the app's start-up (its lifespan) with a
:class:`~hfauth_mw.ConfigurationError` naming them; the middleware alone does
not count, since the dependencies take their options from :func:`install`.
FastAPI has no start-up hook for dependencies: the check is added to the
router a route is created on, when FastAPI reads the dependency's signature
inside ``APIRouter.add_api_route``. What that cannot see (a router given
routes after it was included, ``include_router(..., dependencies=...)`` on
FastAPI 0.16x, a mounted sub-app, a server not running the lifespan) is the
same error at the route's first request. With :func:`install`, a
``RequireRepo`` naming a path parameter its route lacks stops start-up.

FastAPI's own pages (``/docs``, ``/redoc``, ``/openapi.json``, the OAuth2
redirect: :func:`docs_paths`) stay public: :func:`install` adds them to the
``public_paths`` of the :class:`~hfauth_mw.HFAuthMiddleware` the app adds
with ``add_middleware`` (``install(..., docs_public=False)`` to keep them
guarded); a middleware wrapping the app from outside needs
``public_paths=[..., *docs_paths(app)]``.

:class:`OptionalToken` is for optional authentication: a valid token's
``RequestAuth``, the anonymous one without credentials, a bad token refused.

Security caveats, plainly:

* A route is protected only if it has one of these dependencies (or the
  middleware guards it): FastAPI has no default deny. Install the ASGI
  middleware too for that.
* ``install`` defaults ``method_policy`` to False: each route says what it
  needs. Pass ``method_policy=True`` to also require a write-capable token for
  unsafe methods on every guarded route.
* The two scheme objects only describe the schemes to OpenAPI: they always
  return None, so no token travels in dependency values; hfauth-mw parses the
  ``Authorization`` header itself, with the same rules as everywhere.
* Without the middleware, ``Vary: Authorization`` / ``Cache-Control: private``
  are added only when the route returns data rather than a ``Response``
  object (FastAPI drops dependency headers then): install the middleware to
  have them always.
* Without the middleware, FastAPI reads and validates the request body
  before any dependency runs: a caller without a token is answered 422 for a
  malformed body, and the body is read before anyone is authenticated.
  Install the middleware in front of routes that take a body.
* The dependencies are for HTTP routes; guard WebSocket routes with the
  middleware (it refuses the handshake with the same answers).
* When both run, give ``install`` the same options (realm, source) as the
  middleware, best the same ``authenticator``, so errors and the cache agree.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, Unpack

from starlette.requests import HTTPConnection
from starlette.routing import BaseRoute

from ._validation import missing_extra, require_bool

try:
    import fastapi.routing
    from fastapi import FastAPI, Request, Response, Security
    from fastapi.dependencies.models import Dependant
    from fastapi.routing import APIRouter
    from fastapi.security import HTTPBasic, HTTPBearer
    from starlette.middleware import Middleware
except ImportError as exc:  # pragma: no cover - depends on the install
    raise missing_extra("fastapi", "fastapi") from exc

from ._adapters import (
    AsgiRequest,
    carried_credentials,
    mark_private,
    needs_private_marks,
    settle_async,
    take_body_async,
)
from ._asgi import HFAuthMiddleware, answer_denial, render
from ._audit import loggable
from ._exceptions import AuthenticationError, ConfigurationError, MissingCredentials
from ._options import AdapterOptions, build_guard
from ._pipeline import Guard
from ._principal import ANONYMOUS
from ._request_auth import RequestAuth
from ._routes import RepoRequirement
from ._rules import Access

__all__ = [
    "OptionalToken",
    "RequirePermission",
    "RequireRepo",
    "RequireToken",
    "basic_scheme",
    "bearer_scheme",
    "docs_paths",
    "install",
    "render",
    "request_auth",
]

_STATE = "hfauth"


class _BearerScheme(HTTPBearer):
    """The HTTP Bearer scheme, for OpenAPI only (the token is parsed by hfauth-mw)."""

    async def __call__(self, request: HTTPConnection) -> None:
        return None


class _BasicScheme(HTTPBasic):
    """The HTTP Basic scheme, for OpenAPI only (the token is parsed by hfauth-mw)."""

    async def __call__(self, request: HTTPConnection) -> None:
        return None


bearer_scheme = _BearerScheme(
    scheme_name="HuggingFaceToken",
    bearerFormat="Hugging Face access token (hf_...)",
    description="A Hugging Face access token: `Authorization: Bearer hf_...`",
    auto_error=False,
)
basic_scheme = _BasicScheme(
    scheme_name="HuggingFaceBasic",
    description="Any user name, and a Hugging Face access token as the password",
    auto_error=False,
)


@dataclass(frozen=True, slots=True)
class _State:
    guard: Guard
    private_responses: bool


def install(
    app: FastAPI,
    *,
    private_responses: bool = True,
    docs_public: bool = True,
    **options: Unpack[AdapterOptions],
) -> Guard:
    """Set up hfauth-mw on ``app``: the options for requests the middleware did not
    check, and the RFC 6750 exception handler. Returns the :class:`Guard`.

    With ``docs_public`` (the default), FastAPI's own pages (:func:`docs_paths`:
    ``docs_url``, ``redoc_url``, ``openapi_url`` and the OAuth2 redirect) are
    public for an :class:`~hfauth_mw.HFAuthMiddleware` added to this app with
    ``add_middleware`` (or ``FastAPI(middleware=[...])``), before or after this
    call: they are added to its ``public_paths`` when the app builds its
    middleware (one with ``protected_paths`` needs nothing: paths it does not
    list are not checked). ``docs_public=False`` leaves them as the middleware's
    options say.
    """
    options.setdefault("method_policy", False)
    require_bool("docs_public", docs_public)
    if docs_public and options.get("protected_paths") is None:
        options["public_paths"] = [*options.get("public_paths", ()), *docs_paths(app)]
    guard = build_guard(options)
    setattr(
        app.state,
        _STATE,
        _State(guard, require_bool("private_responses", private_responses)),
    )
    # One handler for HTTP and WebSocket routes alike; Starlette's types name one or the other.
    app.add_exception_handler(AuthenticationError, _handle)  # type: ignore[arg-type]
    if not guard.allow_basic:
        _hide_basic_scheme(app)
    if docs_public:
        _docs_public_for_the_middleware(app)
    _check_routes_at_startup(app)
    return guard


def docs_paths(app: FastAPI) -> list[str]:
    """FastAPI's own pages on ``app``: ``docs_url``, its OAuth2 redirect,
    ``redoc_url`` and ``openapi_url`` (those switched off are left out). For an
    :class:`~hfauth_mw.HFAuthMiddleware` that wraps the app from outside
    (``HFAuthMiddleware(app, public_paths=["/health", *docs_paths(app)])``),
    which :func:`install` cannot reach."""
    paths = [app.docs_url, app.redoc_url, app.openapi_url]
    if app.docs_url:
        paths.append(app.swagger_ui_oauth2_redirect_url)
    return [path for path in paths if path]


def _docs_public_for_the_middleware(app: FastAPI) -> None:
    """Add :func:`docs_paths` to the ``public_paths`` of every HFAuthMiddleware in
    ``app.user_middleware`` when the app builds its middleware stack (its first
    request or lifespan event): middleware added after ``install()`` counts too."""
    build = app.build_middleware_stack

    def build_with_public_docs() -> Any:
        app.user_middleware = [_with_public_docs(app, entry) for entry in app.user_middleware]
        return build()

    app.build_middleware_stack = build_with_public_docs  # type: ignore[method-assign]


def _with_public_docs(app: FastAPI, entry: Middleware) -> Middleware:
    cls, args, kwargs = entry
    if not (isinstance(cls, type) and issubclass(cls, HFAuthMiddleware)):
        return entry
    if kwargs.get("protected_paths") is not None:
        return entry  # only the listed paths are checked; the user chose them
    public = list(kwargs.get("public_paths", ()))
    added = [path for path in docs_paths(app) if path not in public]
    return Middleware(cls, *args, **{**kwargs, "public_paths": [*public, *added]})


def _check_routes_at_startup(app: FastAPI) -> None:
    """Before the app serves (its lifespan's start-up): a ``RequireRepo`` naming
    a path parameter its route lacks is a ConfigurationError, not a 500 on
    every request. Routes are checked then, so that those declared after
    ``install()`` count too."""
    _before_startup(app.router, lambda _: _check_repo_params(app))


def _before_startup(router: APIRouter, check: Callable[[Any], None]) -> None:
    """Run ``check(app)`` when ``router``'s lifespan starts, before the lifespan
    it had (the app's own ``lifespan=`` included). FastAPI merges an included
    router's lifespan into the including router's, so a check on an
    ``APIRouter`` runs when the app that includes it starts."""
    lifespan = router.lifespan_context

    @asynccontextmanager
    async def checked(application: Any) -> AsyncIterator[Any]:
        check(application)
        context: AbstractAsyncContextManager[Any] = lifespan(application)
        async with context as state:
            yield state

    router.lifespan_context = checked


def _check_repo_params(app: FastAPI) -> None:
    for path, dependant, params in _api_routes(app.routes):
        for requirement in _repo_requirements(dependant):
            for arg in (requirement.owner_arg, requirement.name_arg):
                if arg not in params:
                    raise ConfigurationError(
                        f"route {path}: RequireRepo reads the path parameter {arg!r}, "
                        "which the route does not have; name it in the path or pass "
                        "owner_param=/name_param="
                    )


def _api_routes(routes: list[BaseRoute]) -> Iterator[tuple[str, Dependant, Iterable[str]]]:
    """Each API route as served: its full path, its dependencies (those of the
    routers including it too) and its path parameters. FastAPI 0.16x keeps an
    included router as one entry of ``app.routes`` and lists its routes through
    ``iter_route_contexts``; older versions copy them into ``app.routes``."""
    iterate = getattr(fastapi.routing, "iter_route_contexts", None)
    for route in iterate(routes) if iterate is not None else routes:
        dependant = getattr(route, "dependant", None)
        path = getattr(route, "path", None)
        if isinstance(dependant, Dependant) and isinstance(path, str):
            yield path, dependant, getattr(route, "param_convertors", None) or {}


def _repo_requirements(dependant: Dependant) -> Iterator[RepoRequirement]:
    for call in _hfauth_dependencies(dependant):
        if isinstance(call, RequireRepo):
            yield call.requirement


def _hfauth_dependencies(dependant: Dependant) -> Iterator[RequireToken]:
    for sub in dependant.dependencies:
        if isinstance(sub.call, RequireToken):
            yield sub.call
        yield from _hfauth_dependencies(sub)


# --- start-up without install() ---------------------------------------------------------
#
# FastAPI has no start-up hook for dependencies, and an app without install()
# has nothing of hfauth-mw's in it. The one moment hfauth-mw code runs while
# such an app is being built is FastAPI reading each dependency's signature
# when a route is created (APIRoute -> get_dependant -> inspect.signature,
# which reads __signature__). RequireToken.__signature__ then looks a few
# frames up for APIRouter.add_api_route, the one place routes are created,
# and adds a check to that router's lifespan. Each failure to find it (another
# FastAPI, a route built by hand, an included router's own dependencies when
# FastAPI reads them lazily, routes added to a router after it was included)
# only loses the early check: the first request still raises the same error.

_ADD_API_ROUTE = getattr(APIRouter.add_api_route, "__code__", None)
_FRAMES_TO_ROUTER = 32  # FastAPI 0.165 needs 10; a bound, never a scan of the stack
_WATCHED = "_hfauth_mw_startup_check"


def _watch_the_router_being_built() -> None:
    """Called while FastAPI reads a dependency's signature: if that happens inside
    ``APIRouter.add_api_route``, check at that router's start-up that the app
    it serves in has :func:`install` (once per router)."""
    frame = inspect.currentframe()
    for _ in range(_FRAMES_TO_ROUTER):
        if frame is None:
            return
        if frame.f_code is _ADD_API_ROUTE:
            router = frame.f_locals.get("self")
            if isinstance(router, APIRouter) and not getattr(router, _WATCHED, False):
                _watch(router)
            return
        frame = frame.f_back


def _watch(router: APIRouter) -> None:
    setattr(router, _WATCHED, True)  # one check per router, however many routes
    _before_startup(router, lambda app: _require_install(app, router))


def _require_install(app: Any, router: APIRouter) -> None:
    if not isinstance(app, FastAPI) or isinstance(getattr(app.state, _STATE, None), _State):
        return  # not a FastAPI app (the first request will tell), or set up
    uses = _uses(app.routes) or _uses(router.routes)  # the app's paths say more
    if not uses:
        return  # nothing here needs it (the routes were removed)
    shown = ", ".join(uses[:5]) + (f" and {len(uses) - 5} more" if len(uses) > 5 else "")
    routes = "the route" if len(uses) == 1 else "the routes"
    verb = "uses" if len(uses) == 1 else "use"
    raise ConfigurationError(
        f"hfauth-mw is not set up on this app: {routes} {shown} {verb} its dependencies, but {_FIX}"
    )


def _uses(routes: list[BaseRoute]) -> list[str]:
    """Each route using these dependencies, with their names: ``/x (RequireRepo)``."""
    named: dict[str, dict[str, None]] = {}
    for path, dependant, _ in _api_routes(routes):
        for call in _hfauth_dependencies(dependant):
            named.setdefault(path, {})[type(call).__name__] = None
    return [f"{path} ({', '.join(names)})" for path, names in named.items()]


_FIX = (
    "hfauth_mw.fastapi.install(app, ...) was not called; call it on every FastAPI app "
    "with these dependencies, mounted sub-apps included "
    "(HFAuthMiddleware alone is not enough: the dependencies take their options from install())"
)


def _hide_basic_scheme(app: FastAPI) -> None:
    """Leave the Basic scheme out of the OpenAPI document: with ``allow_basic``
    off, Swagger's "Authorize" must not offer what the server refuses."""
    build = app.openapi
    name = basic_scheme.scheme_name

    def openapi() -> dict[str, Any]:
        schema = build()  # FastAPI builds it once and keeps it; dropping twice is harmless
        schema.get("components", {}).get("securitySchemes", {}).pop(name, None)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                if isinstance(operation, dict) and "security" in operation:
                    operation["security"] = [
                        requirement
                        for requirement in operation["security"]
                        if name not in requirement
                    ]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _state(request: HTTPConnection) -> _State:
    state = getattr(request.app.state, _STATE, None)
    if not isinstance(state, _State):
        # Start-up normally caught it (see _watch_the_router_being_built); this
        # is for the routes it could not see.
        # The path goes to the server's logs: masked, as the audit masks it (a
        # client may have pasted a token there).
        raise ConfigurationError(
            f"hfauth-mw is not set up on this app: the route {loggable(request.url.path)} uses "
            f"RequireToken, RequireRepo, RequirePermission or OptionalToken, but {_FIX}"
        )
    return state


async def _handle(conn: HTTPConnection, error: Exception) -> Response | None:
    if not isinstance(error, AuthenticationError):  # pragma: no cover - registered for it only
        raise error
    return await answer_denial(_state(conn).guard, conn, error)


async def request_auth(request: Request, response: Response | None = None) -> RequestAuth:
    """The request's :class:`~hfauth_mw.RequestAuth`: the middleware's, an earlier
    dependency's, or checked now (once). Raises AuthenticationError."""
    state = _state(request)
    guard = state.guard
    known = request.scope.get("hfauth")
    if isinstance(known, RequestAuth):
        if known.principal.is_anonymous and not guard.allow_anonymous:
            # The middleware admits anonymous callers; these routes do not.
            raise MissingCredentials()
        return known
    context = AsgiRequest(request.scope, guard.query_param)
    await take_body_async(guard, context, request.body)  # a rule that reads the body
    auth = await settle_async(guard, context, lazy=True)
    assert auth is not None  # a lazy check never skips the path
    request.scope["hfauth"] = auth
    if response is not None and state.private_responses and needs_private_marks(auth):
        headers = response.headers
        mark_private(
            lambda name: name in headers,
            headers.__setitem__,
            lambda value: headers.append("vary", value),
        )
    return auth


class RequireToken:
    """Dependency: any valid token (or the anonymous principal with
    ``allow_anonymous``); returns the :class:`~hfauth_mw.RequestAuth`."""

    def __init__(self, *, scopes: tuple[str, ...] = ()) -> None:
        # FastAPI reads the parameters from this signature: the two schemes, with
        # this requirement's scopes, make the route's OpenAPI security requirement.
        keyword = inspect.Parameter.KEYWORD_ONLY
        self._signature = inspect.Signature(
            [
                inspect.Parameter("request", keyword, annotation=Request),
                inspect.Parameter("response", keyword, annotation=Response),
                inspect.Parameter(
                    "bearer", keyword, default=Security(bearer_scheme, scopes=list(scopes))
                ),
                inspect.Parameter(
                    "basic", keyword, default=Security(basic_scheme, scopes=list(scopes))
                ),
            ]
        )

    @property
    def __signature__(self) -> inspect.Signature:
        """What FastAPI reads when it creates a route: the moment to make sure
        the app will be checked for :func:`install` at its start-up."""
        _watch_the_router_being_built()
        return self._signature

    async def __call__(
        self, *, request: Request, response: Response, bearer: None = None, basic: None = None
    ) -> RequestAuth:
        auth = await request_auth(request, response)
        await self.acheck(auth, request)
        return auth

    def check(self, auth: RequestAuth, request: Request) -> None:
        """Raise the 401/403 error when ``auth`` does not meet the requirement."""

    async def acheck(self, auth: RequestAuth, request: Request) -> None:
        """:meth:`check`, for requirements that may ask the hub (without blocking)."""
        self.check(auth, request)


class OptionalToken(RequireToken):
    """Dependency for optional authentication: the :class:`~hfauth_mw.RequestAuth`
    of a valid token, the anonymous one (``auth.principal.is_anonymous``) for a
    request without credentials; a bad token is refused (401/400), as everywhere."""

    async def __call__(
        self, *, request: Request, response: Response, bearer: None = None, basic: None = None
    ) -> RequestAuth:
        known = request.scope.get("hfauth")
        if isinstance(known, RequestAuth):
            return known  # the middleware's answer, anonymous ones included
        guard = _state(request).guard
        context = AsgiRequest(request.scope, guard.query_param)
        if carried_credentials(guard, context) is None:
            anonymous = RequestAuth(ANONYMOUS, guard.policy)
            request.scope["hfauth"] = anonymous
            return anonymous
        return await request_auth(request, response)


class RequireRepo(RequireToken):
    """Dependency: ``access`` ("read" or "write") on the repository built from the
    ``owner_param`` and ``name_param`` path parameters; 401/403 otherwise."""

    def __init__(
        self,
        access: Access,
        *,
        repo_type: str = "model",
        owner_param: str = "owner",
        name_param: str = "name",
    ) -> None:
        self.requirement = RepoRequirement(access, repo_type, owner_param, name_param)
        super().__init__(scopes=(self.requirement.needed,))

    def check(self, auth: RequestAuth, request: Request) -> None:
        self.requirement.check(auth, request.path_params)

    async def acheck(self, auth: RequestAuth, request: Request) -> None:
        await self.requirement.acheck(auth, request.path_params)

    def __repr__(self) -> str:
        return f"RequireRepo({self.requirement.access!r}, repo_type={self.requirement.repo_type!r})"


class RequirePermission(RequireToken):
    """Dependency: the token permission ``permission`` (e.g.
    ``"inference.serverless.write"``); 401/403 otherwise."""

    def __init__(self, permission: str) -> None:
        self.permission = permission
        super().__init__(scopes=(permission,))

    def check(self, auth: RequestAuth, request: Request) -> None:
        auth.require_permission(self.permission)

    def __repr__(self) -> str:
        return f"RequirePermission({self.permission!r})"
