"""What a refused request is answered (``_answers``): a 503 tells the client
its token could not be checked, in every body format."""

import json

import pytest

from hfauth_mw import InvalidToken, SourceUnavailable
from hfauth_mw._answers import Answers

CANNOT_CHECK = "The access token cannot be checked right now: "


def _message(body: bytes, error_format: str) -> str:
    data = json.loads(body)
    if error_format == "openai":
        return data["error"]["message"]
    if error_format == "hub":
        return data["error"]
    return data["error_description"]


@pytest.mark.parametrize("error_format", ["rfc6750", "openai", "hub"])
@pytest.mark.parametrize(
    ("error", "message"),
    [
        pytest.param(
            SourceUnavailable("The token source cannot be reached", retry_after=5),
            CANNOT_CHECK + "the token source cannot be reached",
            id="unavailable",
        ),
        pytest.param(InvalidToken(), InvalidToken().description, id="invalid-token-unchanged"),
    ],
)
def test_a_503_says_the_token_could_not_be_checked(error, message, error_format):
    response = Answers("hfauth-mw", True, error_format).render(error)
    assert _message(response.body, error_format) == message
    assert dict(response.headers)["x-error-message"] == message


def test_a_reason_quoting_a_token_of_the_source_is_masked_in_every_part() -> None:
    """A token of another source (an IdP's) pasted into a repository name must not
    come back in a header a proxy logs, nor in the body."""
    from hfauth_mw import InsufficientScope, OAuthIntrospectionSource

    opaque = "Zx81kq0Pmw3Lr7Tn2Vb6Yc9Hd4Gf5Js1"
    answers = Answers("hfauth-mw", True, "rfc6750", OAuthIntrospectionSource.token_shape)
    error = InsufficientScope(f"write denied: not a member of {opaque}", scope="repo.write")
    response = answers.render(error)
    assert opaque not in response.body.decode()
    assert not any(opaque in value for _, value in response.headers)
    assert answers.message(error) == "write denied: not a member of ***"
