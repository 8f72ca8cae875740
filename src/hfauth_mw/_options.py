"""Adapter options: one definition of every option, and how adapters build a
:class:`~hfauth_mw.Guard` from them (keywords or framework settings)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, cast

from ._authenticator import Authenticator
from ._cache import TokenCache
from ._exceptions import ConfigurationError
from ._pipeline import Guard, GuardOptions
from ._source_protocol import IntrospectionSource
from ._sources import HubWhoamiSource

__all__ = [
    "AdapterOptions",
    "MiddlewareOptions",
    "build_authenticator",
    "build_guard",
    "options_from_config",
    "overridden",
]


class AdapterOptions(GuardOptions, total=False):
    """Every adapter's options: where tokens are checked, then :class:`Guard`'s options.

    Give at most one of ``hub_url`` (default ``https://huggingface.co``),
    ``source`` and ``authenticator`` (to share one cache between adapters).
    """

    hub_url: str | None
    source: IntrospectionSource | None
    authenticator: Authenticator | None
    cache: TokenCache | None


class MiddlewareOptions(AdapterOptions, total=False):
    """:class:`AdapterOptions` plus ``private_responses`` (default True): add
    ``Vary: Authorization`` and ``Cache-Control: private`` to authenticated answers."""

    private_responses: bool


_SOURCE_KEYS = frozenset({"hub_url", "source", "authenticator", "cache"})


def build_guard(options: AdapterOptions) -> Guard:
    """The :class:`Guard` for an adapter's options (validated; raises ConfigurationError)."""
    unknown = sorted(set(options) - AdapterOptions.__optional_keys__)
    if unknown:
        # A typo such as public_path= must not leave the server guarding nothing.
        known = sorted(MiddlewareOptions.__optional_keys__)
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigurationError(
            f"unknown hfauth-mw option {unknown[0]!r}{hint}; known: {', '.join(known)}"
        )
    guard_options = {k: v for k, v in options.items() if k not in _SOURCE_KEYS}
    authenticator = build_authenticator(
        options.get("hub_url"),
        options.get("source"),
        options.get("authenticator"),
        options.get("cache"),
    )
    return Guard(authenticator, **cast(GuardOptions, guard_options))


def overridden(defaults: Mapping[str, Any], settings: Mapping[str, Any]) -> dict[str, Any]:
    """``defaults`` overridden by ``settings``, where naming the source (``hub_url``,
    ``source`` or ``authenticator``) in the settings replaces the defaults' one
    instead of conflicting with it."""
    sources = ("hub_url", "source", "authenticator")
    # A source setting left None (os.environ.get of an unset variable) names
    # nothing: it must not swap the constructor's source for the public Hub.
    settings = {k: v for k, v in settings.items() if v is not None or k not in sources}
    kept = dict(defaults)
    if settings.keys() & set(sources):
        for key in sources:
            kept.pop(key, None)
        if "authenticator" in settings:
            kept.pop("cache", None)  # the settings' authenticator brings its own
    return {**kept, **settings}


def options_from_config(
    config: Mapping[str, Any], prefix: str, extra: Iterable[str] = ()
) -> dict[str, Any]:
    """Options from framework settings: ``{prefix}HUB_URL`` becomes ``hub_url``.

    Every key starting with ``prefix`` must name an option (a typo such as
    ``HFAUTH_PUBLIC_PATH`` fails at start-up instead of silently guarding
    nothing); ``extra`` names the adapter's own settings.
    """
    known = MiddlewareOptions.__optional_keys__ | set(extra)
    options: dict[str, Any] = {}
    for key, value in config.items():
        if not isinstance(key, str) or not key.startswith(prefix):
            continue
        name = key[len(prefix) :].lower()
        if name not in known:
            raise ConfigurationError(
                f"unknown hfauth-mw setting {key!r}; known: "
                + ", ".join(sorted(prefix + k.upper() for k in known))
            )
        options[name] = value
    return options


def build_authenticator(
    hub_url: str | None,
    source: IntrospectionSource | None,
    authenticator: Authenticator | None,
    cache: TokenCache | None,
) -> Authenticator:
    """Resolve the ``hub_url`` / ``source`` / ``authenticator`` options of an adapter."""
    given = [
        name
        for name, value in (
            ("hub_url", hub_url),
            ("source", source),
            ("authenticator", authenticator),
        )
        if value is not None
    ]
    if len(given) > 1:
        raise ConfigurationError(
            f"give only one of hub_url, source and authenticator (got {', '.join(given)})"
        )
    if authenticator is not None:
        if cache is not None:
            raise ConfigurationError(
                "cache belongs to the authenticator: pass it to Authenticator()"
            )
        return authenticator
    if source is None:
        source = HubWhoamiSource(hub_url) if hub_url is not None else HubWhoamiSource()
    return Authenticator(source, cache=cache)
