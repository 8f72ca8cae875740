"""The audit line (issue 18, item 8): a 503 names the source and what went wrong
on the wire, and text shaped like a token of any configured source is masked
(an IdP's JWT or opaque token pasted into a URL, not only ``hf_`` tokens).

Before: "unavailable ...: The token source cannot be reached" with no source and
no error class, and an IdP's token in a path was written out as it was.

Both adapters, with an RFC 7662 source whose endpoint refuses connections (a
real bound, not listening, port).
"""

from __future__ import annotations

import logging
from typing import Any

import pytest

from adapters_support import ADAPTERS, AppClient
from faults import REFUSED, FaultServer
from hfauth_mw import (
    Authenticator,
    HubWhoamiSource,
    InsufficientScope,
    OAuthIntrospectionSource,
    TransportFailure,
)
from hfauth_mw._audit import MAX_LOGGED_CHARS, loggable, register_token_shape, write_event

pytestmark = pytest.mark.anyio

JWT = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ.eyJzdWIiOiJhbGljZSIsImF1ZCI6ImJpbGxpbmcifQ"
    ".c2lnbmF0dXJlLXNpZ25hdHVyZQ"
)
OPAQUE = "Zx81kq0Pmw3Lr7Tn2Vb6Yc9Hd4Gf5Js1"


def audit_messages(records: list[logging.LogRecord]) -> list[str]:
    return [record.getMessage() for record in records if record.name == "hfauth_mw.audit"]


@pytest.mark.parametrize("adapter", ADAPTERS)
async def test_unavailable_names_the_source_and_masks_idp_tokens(
    adapter: AppClient, no_token_in_logs: list[logging.LogRecord]
) -> None:
    with FaultServer(REFUSED) as endpoint:
        source = OAuthIntrospectionSource(
            f"{endpoint.url}/introspect", client_id="mw", client_secret="s3cret-value"
        )
        async with adapter(Authenticator(source), None) as client:
            response = await client.get(
                f"/files/{JWT}/{OPAQUE}", headers={"Authorization": f"Bearer {JWT}"}
            )
    assert response.status_code == 503
    assert "127.0.0.1" not in response.text  # the client is told nothing of our network
    [line] = [m for m in audit_messages(no_token_in_logs) if m.startswith("unavailable")]
    assert line.startswith("unavailable GET /files/***/***: The token source cannot be reached [")
    assert f"POST {endpoint.url}/introspect: ConnectError (connection refused)]" in line
    assert source.name in line
    # Ours only: the test client and werkzeug log the request line they were given.
    everything = "\n".join(
        repr(vars(record)) for record in no_token_in_logs if record.name.startswith("hfauth_mw")
    )
    assert JWT not in everything
    assert OPAQUE not in everything
    assert "s3cret-value" not in everything


@pytest.mark.parametrize(
    ("text", "shape_of", "expected"),
    [
        pytest.param("/x/hf_" + "a" * 34, "hub", "/x/hf_***", id="hub-token-always"),
        pytest.param(f"/x/{JWT}", "hub", f"/x/{JWT}", id="jwt-kept-for-a-hub-source"),
        pytest.param(f"/x/{JWT}", "idp", "/x/***", id="jwt-masked-for-an-idp"),
        pytest.param(f"/x?t={OPAQUE}", "idp", "/x?t=***", id="opaque-masked-for-an-idp"),
        pytest.param("/models/acme/sentiment", "idp", "/models/acme/sentiment", id="names-kept"),
    ],
)
def test_loggable_masks_the_shapes_a_source_accepts(
    text: str, shape_of: str, expected: str
) -> None:
    source: Any = (
        HubWhoamiSource()
        if shape_of == "hub"
        else OAuthIntrospectionSource("https://idp.example/i", client_id="a", client_secret="b")
    )
    assert loggable(text, source.token_shape) == expected


def test_write_event_uses_the_registered_shape(no_token_in_logs: list[logging.LogRecord]) -> None:
    register_token_shape("test-idp-source", OAuthIntrospectionSource.token_shape)
    write_event(
        None,
        method="GET",
        path=f"/x/{JWT}",
        client=None,
        credentials=None,
        principal=None,
        source="test-idp-source",
        started=0.0,
    )
    assert audit_messages(no_token_in_logs)[-1].startswith("allowed GET /x/***:")


@pytest.mark.parametrize(
    ("error", "shown"),
    [
        pytest.param(
            InsufficientScope(f"write denied: not a member of {OPAQUE}", scope="repo.write"),
            "denied GET /x: write denied: not a member of ***",
            id="a-reason-quoting-the-path",
        ),
        pytest.param(
            TransportFailure("The token source timed out", f"GET /api/{JWT}: timeout"),
            "unavailable GET /x: The token source timed out [test-idp-source: GET /api/***",
            id="a-503-detail-naming-the-url",
        ),
        pytest.param(
            InsufficientScope("write denied: " + "hf_" + "b" * 34, scope="repo.write"),
            "denied GET /x: write denied: hf_***",
            id="a-hub-token-in-a-reason",
        ),
    ],
)
def test_reasons_and_details_are_masked_as_the_path_is(
    error: Any, shown: str, no_token_in_logs: list[logging.LogRecord]
) -> None:
    register_token_shape("test-idp-source", OAuthIntrospectionSource.token_shape)
    write_event(
        error,
        method="GET",
        path="/x",
        client=None,
        credentials=None,
        principal=None,
        source="test-idp-source",
        started=0.0,
    )
    line = audit_messages(no_token_in_logs)[-1]
    assert line.startswith(shown)
    assert OPAQUE not in line
    assert JWT not in line


def test_a_long_text_is_cut_before_it_is_scanned() -> None:
    """A 60 KiB path costs one audit line of bounded size (and a bounded regex scan)."""
    text = loggable("/a" * 30_000, OAuthIntrospectionSource.token_shape)
    assert text == "/a" * (MAX_LOGGED_CHARS // 2) + "..."


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        pytest.param(f"/files/{JWT}", True, id="a-jwt-segment"),
        # Glued to a word, "eyJ..." does not begin a JWT: not matched from inside a run.
        pytest.param("/files/xxeyJabc.def", False, id="eyJ-inside-a-word"),
    ],
)
def test_the_jwt_shape_begins_at_a_word_boundary(text: str, masked: bool) -> None:
    assert ("***" in loggable(text, OAuthIntrospectionSource.token_shape)) is masked
