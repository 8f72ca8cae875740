"""hfauth-mw: accept Hugging Face access tokens in any ASGI or WSGI service.

Everything public is importable from here; the ``_``-prefixed modules are
private and may change.
"""

from ._answers import ErrorResponse
from ._asgi import HFAuthMiddleware, HubAuthCredentials, HubUser, get_request_auth
from ._authenticator import Authenticator
from ._breaker_limiter import FailureLimiter, UpstreamBreaker
from ._cache import TokenCache
from ._credentials import Credentials, parse_credentials
from ._exceptions import (
    AuthenticationError,
    BodyTooLarge,
    ConfigurationError,
    HFAuthError,
    InsufficientScope,
    InvalidBody,
    InvalidRequest,
    InvalidToken,
    MalformedAnswer,
    MissingCredentials,
    SourceUnavailable,
    TokenRefusedUpstream,
    TokenStoreError,
    TooManyFailures,
    TransportFailure,
    UnknownModel,
)
from ._metrics import register_prometheus
from ._pipeline import Guard
from ._principal import (
    ANONYMOUS,
    OrgMembership,
    Principal,
    ResourceGroup,
    ScopedGrant,
    principal_from_whoami,
)
from ._request_auth import RequestAuth
from ._routes import (
    RepoFrom,
    RepoRule,
    from_body,
    from_header,
    openai_rules,
    require_read,
    require_write,
    tgi_rules,
)
from ._rules import (
    AccessPolicy,
    Decision,
    Entity,
    Repo,
    Visibility,
    can_read,
    can_write,
    has_permission,
)
from ._shared_tier import SharedCache, SharedCacheUnavailable, SharedFailureLimiter
from ._source_protocol import IntrospectionSource, Invalid, Valid
from ._sources import ChainSource, HubWhoamiSource, LocalStoreSource, OAuthIntrospectionSource
from ._store import FineGrainedEntry, IssuedToken, LocalTokenStore, OrgGrant, TokenRecord
from ._wsgi import HFAuthWSGIMiddleware

__version__ = "0.2.0"

__all__ = [
    "ANONYMOUS",
    "AccessPolicy",
    "AuthenticationError",
    "Authenticator",
    "BodyTooLarge",
    "ChainSource",
    "ConfigurationError",
    "Credentials",
    "Decision",
    "Entity",
    "ErrorResponse",
    "FailureLimiter",
    "FineGrainedEntry",
    "Guard",
    "HFAuthError",
    "HFAuthMiddleware",
    "HFAuthWSGIMiddleware",
    "HubAuthCredentials",
    "HubUser",
    "HubWhoamiSource",
    "InsufficientScope",
    "IntrospectionSource",
    "Invalid",
    "InvalidBody",
    "InvalidRequest",
    "InvalidToken",
    "IssuedToken",
    "LocalStoreSource",
    "LocalTokenStore",
    "MalformedAnswer",
    "MissingCredentials",
    "OAuthIntrospectionSource",
    "OrgGrant",
    "OrgMembership",
    "Principal",
    "Repo",
    "RepoFrom",
    "RepoRule",
    "RequestAuth",
    "ResourceGroup",
    "ScopedGrant",
    "SharedCache",
    "SharedCacheUnavailable",
    "SharedFailureLimiter",
    "SourceUnavailable",
    "TokenCache",
    "TokenRecord",
    "TokenRefusedUpstream",
    "TokenStoreError",
    "TooManyFailures",
    "TransportFailure",
    "UnknownModel",
    "UpstreamBreaker",
    "Valid",
    "Visibility",
    "__version__",
    "can_read",
    "can_write",
    "from_body",
    "from_header",
    "get_request_auth",
    "has_permission",
    "openai_rules",
    "parse_credentials",
    "principal_from_whoami",
    "register_prometheus",
    "require_read",
    "require_write",
    "tgi_rules",
]
