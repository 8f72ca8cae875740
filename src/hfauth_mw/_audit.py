"""The audit trail: one event per decision, log-safe.

Events go to the ``hfauth_mw.audit`` logger: allowed (INFO), denied (INFO),
unavailable (WARNING). Fields are in ``extra`` (``hfauth_*``). No token ever:
only its SHA-256 fingerprint; the path and user name have control characters
escaped and token-shaped text masked.
"""

from __future__ import annotations

import logging
import re
import threading
import time

from ._credentials import Credentials
from ._exceptions import AuthenticationError, SourceUnavailable
from ._principal import Principal
from ._validation import TOKEN_SHAPED

__all__ = ["audit_levels", "audit_logger", "loggable", "register_token_shape", "write_event"]

audit_logger = logging.getLogger("hfauth_mw.audit")
_levels_cache = getattr(audit_logger, "_cache", None)
#: What ``audit_logger.isEnabledFor(level)`` last answered, by level: logging's
#: own cache, which it empties on every ``setLevel``, ``logging.disable`` and
#: ``dictConfig``. A ``False`` in it is final, so the pipeline skips the call
#: (a method call per request) while allowed events are off, as they are by
#: default; anything else means "ask isEnabledFor". An empty stand-in where
#: logging keeps no such cache.
audit_levels: dict[int, bool] = _levels_cache if isinstance(_levels_cache, dict) else {}

#: Source name -> the shape of the tokens it accepts besides the Hub's (an IdP's
#: JWTs and opaque tokens), registered by each Authenticator. Bounded by the
#: number of sources a process configures.
_token_shapes: dict[str, re.Pattern[str]] = {}
_shapes_lock = threading.Lock()


def register_token_shape(source: str, shape: re.Pattern[str] | None) -> None:
    """Mask text of ``shape`` in the audit lines of ``source`` too (Hub-shaped
    text is always masked)."""
    if shape is not None:
        with _shapes_lock:
            _token_shapes[source] = shape


#: The most of one client-given text (a path, a reason quoting it) an audit line holds.
MAX_LOGGED_CHARS = 2048


def loggable(text: str, shape: re.Pattern[str] | None = None) -> str:
    """``text`` for one audit line: control characters escaped (a decoded ``%0A``
    in a path would start a forged line of its own) and anything shaped like a
    token masked (a token pasted into a URL by mistake): Hub tokens always,
    and text of ``shape``, the tokens another source accepts."""
    if len(text) > MAX_LOGGED_CHARS:  # a 60 KiB path is not read whole, by a person or a regex
        text = text[:MAX_LOGGED_CHARS] + "..."
    if not text.isprintable():
        text = "".join(
            char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
            for char in text
        )
    if shape is not None:
        text = shape.sub("***", text)
    return TOKEN_SHAPED.sub("hf_***", text) if "hf_" in text or "api_org_" in text else text


def write_event(
    error: AuthenticationError | None,
    *,
    method: str,
    path: str,
    client: str | None,
    credentials: Credentials | None,
    principal: Principal | None,
    source: str,
    started: float,
    decided_by: str | None = None,
) -> None:
    """Write the audit event of one decision (``error`` is ``None`` when allowed)."""
    if error is None:
        event, status, level, reason = "allowed", 200, logging.INFO, "allowed"
    elif isinstance(error, SourceUnavailable):
        event, status, level, reason = "unavailable", 503, logging.WARNING, error.description
        # Which source, and what went wrong on the wire (log-safe, never sent to clients).
        detail = getattr(error, "detail", None)
        reason = f"{reason} [{source}{': ' + detail if detail else ''}]"
    else:
        event, status, level = "denied", error.status_code, logging.INFO
        reason = error.description
    if not audit_logger.isEnabledFor(level):
        return
    fingerprint = credentials.fingerprint if credentials else None
    shape = _token_shapes.get(source)
    name = loggable(principal.name, shape) if principal else None
    method, path = loggable(method, shape), loggable(path, shape)
    # A reason may quote the request (a repository in the path, a model in the
    # body) and a 503's detail the URL it asked: masked as the path is.
    reason = loggable(reason, shape)
    latency_ms = round((time.perf_counter() - started) * 1000, 3)
    audit_logger.log(
        level,
        "%s %s %s: %s (user %s, token %s, %.1f ms)",
        event,
        method,
        path,
        reason,
        name or "-",
        fingerprint or "-",
        latency_ms,
        extra={
            "hfauth_event": event,
            "hfauth_status": status,
            "hfauth_method": method,
            "hfauth_path": path,
            "hfauth_client": client,
            "hfauth_fingerprint": fingerprint,
            "hfauth_principal": name,
            "hfauth_token_role": principal.token_role if principal else None,
            "hfauth_source": source,
            "hfauth_reason": reason,
            "hfauth_latency_ms": latency_ms,
            "hfauth_decided_by": decided_by,
        },
    )
