"""Option checks shared by every constructor: a wrong type fails at start-up,
with a message that says what to pass, never on the first request.

Settings often come from environment variables or YAML as text, and in Python
the string ``"false"`` is true: a flag such as ``allow_anonymous`` must be a
real ``bool``, or it could open a server its operator meant to close.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any, TypeVar

from ._exceptions import ConfigurationError

__all__ = [
    "LIKELY_TOKEN",
    "TOKEN_SHAPED",
    "missing_extra",
    "require_bool",
    "require_instance",
    "require_int",
    "require_items",
    "shown",
]

T = TypeVar("T")

# Anything that might be an access token: masked in every message (masking too much is
# harmless). hf_ covers user, OAuth (hf_oauth_) and trusted-publisher (hf_jwt_) tokens.
TOKEN_SHAPED = re.compile(r"(?:hf_|api_org_)[A-Za-z0-9_.\-]*")
# What is almost surely a pasted token (hf_ + 34 letters/digits, org, OAuth and
# trusted-publisher JWT tokens), and never a name: refused where a name is expected.
# Narrower than TOKEN_SHAPED so that names such as "acme/my_hf_tools" stay usable.
LIKELY_TOKEN = re.compile(
    r"(?<![A-Za-z0-9])(?:hf_|api_org_)(?:oauth_+(?:refresh_)?|jwt_)?[A-Za-z0-9]{20,}"
)


def shown(value: object, limit: int = 60) -> str:
    """``repr(value)`` for an error message: token-shaped text masked, long text cut."""
    text = TOKEN_SHAPED.sub("hf_***", repr(value))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def require_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ConfigurationError(
            f"{name} must be True or False, not {type(value).__name__} {shown(value)}"
            + (
                " (text such as 'false' is true in Python: convert settings read as text)"
                if isinstance(value, str)
                else ""
            )
        )
    return value


def require_int(name: str, value: object, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise ConfigurationError(
            f"{name} must be a whole number from {low} to {high}, not {shown(value)}"
        )
    return value


def require_instance(name: str, value: object, kind: type[T], how: str) -> T:
    """``value`` when it is a ``kind``; else a ConfigurationError saying ``how`` to make one."""
    if not isinstance(value, kind):
        raise ConfigurationError(f"{name} must be {how}, not {type(value).__name__} {shown(value)}")
    return value


def require_items(name: str, value: Any, example: str) -> tuple[Any, ...]:
    """The items of a list-like option; one string or one object is refused, not iterated."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ConfigurationError(
            f"{name} must be a list, such as {name}={example}, not {shown(value)}"
        )
    return tuple(value)


def missing_extra(module: str, extra: str) -> ImportError:
    """The error for an adapter imported without its framework: what to install."""
    return ImportError(f"hfauth_mw.{module} needs {extra}: pip install 'hfauth-mw[{extra}]'")
