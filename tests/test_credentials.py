import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hfauth_mw import Credentials, InvalidRequest, parse_credentials
from hfauth_mw._credentials import bearer_token, read_credentials
from hfauth_mw._principal import sha256, token_digest

TOKEN = "hf_" + "a" * 34


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("headers", "scheme", "token", "username"),
    [
        pytest.param([f"Bearer {TOKEN}"], "bearer", TOKEN, None, id="bearer"),
        pytest.param([f"bearer {TOKEN}"], "bearer", TOKEN, None, id="bearer-lowercase-scheme"),
        pytest.param([f"BEARER {TOKEN}"], "bearer", TOKEN, None, id="bearer-uppercase-scheme"),
        pytest.param([f"Bearer   {TOKEN}"], "bearer", TOKEN, None, id="bearer-several-spaces"),
        pytest.param(["Bearer hf_AbC"], "bearer", "hf_AbC", None, id="case-kept"),
        pytest.param(["Bearer a.b-c_d~e+f/g=="], "bearer", "a.b-c_d~e+f/g==", None, id="b64token"),
        pytest.param([basic("hf_user", TOKEN)], "basic", TOKEN, "hf_user", id="basic"),
        pytest.param([basic("", TOKEN)], "basic", TOKEN, "", id="basic-empty-user"),
        pytest.param(
            [basic("\u00e9l\u00e8ve", TOKEN)],
            "basic",
            TOKEN,
            "\u00e9l\u00e8ve",
            id="basic-utf8-user",
        ),
        pytest.param([f"Bearer {TOKEN}".encode()], "bearer", TOKEN, None, id="bytes"),
        # Around the field value, not part of it (RFC 9110 5.5); werkzeug's server keeps it.
        pytest.param([f"Bearer {TOKEN} "], "bearer", TOKEN, None, id="trailing-space"),
        pytest.param([f"Bearer {TOKEN}\t".encode()], "bearer", TOKEN, None, id="trailing-tab"),
        pytest.param([f" {basic('u', TOKEN)} "], "basic", TOKEN, "u", id="basic-spaces-around"),
    ],
)
def test_valid_credentials(headers, scheme, token, username):
    credentials = parse_credentials(headers)
    assert credentials is not None
    assert credentials.scheme == scheme
    assert credentials.token == token
    assert credentials.username == username
    assert credentials.digest == token_digest(token)


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        pytest.param([f"Bearer {TOKEN}", f"Bearer {TOKEN}"], "more than one", id="two-headers"),
        pytest.param([f"Token {TOKEN}"], "Unsupported", id="unknown-scheme"),
        pytest.param([f"Digest {TOKEN}"], "Unsupported", id="digest-scheme"),
        pytest.param(["Bearer"], "empty", id="bearer-no-token"),
        pytest.param(["Bearer "], "empty", id="bearer-space-only"),
        pytest.param([basic("a:b", TOKEN)], "well-formed", id="basic-split-at-first-colon"),
        pytest.param([f"Bearer {TOKEN} x"], "not well formed", id="bearer-two-words"),
        pytest.param([f"Bearer\t{TOKEN}"], "malformed", id="bearer-tab"),
        pytest.param(["Bearer hf_a,b"], "comma", id="bearer-comma"),
        # WSGI servers join a repeated header with a comma.
        pytest.param([f"Bearer {TOKEN}, Bearer {TOKEN}"], "sent it twice", id="two-joined"),
        pytest.param([f"Bearer {TOKEN},Bearer {TOKEN}"], "sent it twice", id="two-joined-tight"),
        pytest.param([f"{basic('u', TOKEN)}, Bearer {TOKEN}"], "sent it twice", id="basic-joined"),
        pytest.param(["Bearer =abc"], "not well formed", id="bearer-leading-equals"),
        pytest.param(["Basic !!!"], "base64", id="basic-bad-base64"),
        pytest.param(
            ["Basic " + base64.b64encode(b"notoken").decode()], "':'", id="basic-no-colon"
        ),
        pytest.param([basic("user", "")], "empty", id="basic-empty-token"),
        pytest.param([basic("user", "a b")], "well-formed", id="basic-token-with-space"),
        pytest.param(
            ["Basic " + base64.b64encode(b"user:\xff\xfe").decode()], "UTF-8", id="basic-not-utf8"
        ),
        pytest.param(["Bearer " + "a" * 9000], "longer than", id="oversized"),
        pytest.param(["Bearer h\u00e9".encode()], "not ASCII", id="non-ascii"),
        pytest.param([""], "malformed", id="empty-header"),
    ],
)
def test_invalid_credentials(headers, message):
    with pytest.raises(InvalidRequest, match=message) as caught:
        parse_credentials(headers)
    assert caught.value.status_code == 400
    assert caught.value.error == "invalid_request"


@pytest.mark.parametrize(
    ("user", "says"),
    [
        pytest.param(TOKEN, "password is empty (the user name is not)", id="curl-u-TOKEN-colon"),
        pytest.param("alice", "password is empty (the user name is not)", id="user-no-password"),
        pytest.param("", "user name and password are both empty", id="curl-u-colon"),
    ],
)
def test_an_empty_basic_password_says_which_half_and_where_the_token_goes(user, says):
    """`curl -u TOKEN:` is a common slip: the answer says so, never echoing the token."""
    with pytest.raises(InvalidRequest) as caught:
        parse_credentials([basic(user, "")])
    description = caught.value.description
    assert says in description
    assert "the token goes in the password" in description
    assert "curl -u user:TOKEN or curl -u :TOKEN" in description
    for shown in (description, str(caught.value), repr(caught.value)):
        assert TOKEN not in shown
        assert user == "" or user not in shown


def test_basic_refused_when_not_allowed():
    with pytest.raises(InvalidRequest, match="use Bearer"):
        parse_credentials([basic("u", TOKEN)], allow_basic=False)


@pytest.mark.parametrize(
    ("headers", "query", "expected"),
    [
        pytest.param([], [], None, id="nothing"),
        pytest.param([], [TOKEN], TOKEN, id="query-only"),
    ],
)
def test_query_tokens(headers, query, expected):
    credentials = parse_credentials(headers, query_tokens=query)
    assert (credentials.token if credentials else None) == expected
    if credentials:
        assert credentials.scheme == "query"


@pytest.mark.parametrize(
    ("headers", "query"),
    [
        pytest.param([f"Bearer {TOKEN}"], [TOKEN], id="header-and-query"),
        pytest.param([], [TOKEN, TOKEN], id="query-twice"),
        pytest.param([], ["a b"], id="query-malformed"),
    ],
)
def test_query_token_errors(headers, query):
    with pytest.raises(InvalidRequest):
        parse_credentials(headers, query_tokens=query)


def test_repr_and_str_hide_the_token():
    credentials = Credentials.from_token(TOKEN)
    for text in (repr(credentials), str(credentials), f"{credentials}"):
        assert TOKEN not in text
        assert credentials.fingerprint in text


_TOKEN_ALPHABET = st.sampled_from("ABCabc0189-._~+/")
b64tokens = st.builds(
    lambda body, pad: body + "=" * pad,
    st.text(_TOKEN_ALPHABET, min_size=1, max_size=200),
    st.integers(0, 2),
)


@given(user=st.text(max_size=50).filter(lambda u: ":" not in u), token=b64tokens)
def test_basic_round_trips(user, token):
    credentials = parse_credentials([basic(user, token)])
    assert credentials is not None
    assert (credentials.username, credentials.token) == (user, token)


@given(token=b64tokens, scheme=st.sampled_from(["Bearer", "bearer", "BeArEr"]))
def test_bearer_round_trips(token, scheme):
    credentials = parse_credentials([f"{scheme} {token}"])
    assert credentials is not None
    assert credentials.token == token


@given(header=st.one_of(st.text(max_size=300), st.binary(max_size=300)))
def test_any_header_gives_credentials_or_invalid_request(header):
    try:
        credentials = parse_credentials([header])
    except InvalidRequest as error:
        description = error.description
        credentials = None
    if credentials is None:
        assert description
        return
    # Whatever was accepted is exactly what the header carried: never normalised.
    text = header.decode("ascii") if isinstance(header, bytes) else header
    assert credentials.token in text or credentials.scheme == "basic"


@given(st.binary(max_size=300))
def test_quickest_sha256_is_sha256(data):
    assert sha256(data).digest() == hashlib.sha256(data).digest()


_HEADERS = st.one_of(
    st.binary(max_size=300),
    st.builds(lambda token: b"Bearer " + token.encode(), b64tokens),
    st.builds(
        lambda body: b"Bearer hf_" + body,
        st.binary(max_size=60) | st.text("aZ09\u00e9_ -=", max_size=60).map(str.encode),
    ),
)


def _whole_grammar(header: bytes | str) -> Credentials | str:
    """What the whole grammar makes of one header: the credentials, or the refusal."""
    try:
        credentials = read_credentials([header], (), True, 8192)
    except InvalidRequest as error:
        return error.description
    assert credentials is not None
    return credentials


@given(_HEADERS)
@settings(max_examples=500)
def test_short_path_bearer_reading_agrees_with_the_parser(header):
    """The credentials step reads a Bearer header without the whole grammar: it
    may decline a header (then the grammar decides), never read one differently
    or accept what the grammar refuses."""
    token = bearer_token(header)
    if token is None:
        return
    whole = _whole_grammar(header)
    assert isinstance(whole, Credentials), whole
    assert (whole.scheme, whole.token) == ("bearer", token.decode("ascii"))


@given(st.one_of(_HEADERS, _HEADERS.map(lambda header: header.decode("latin-1"))))
@settings(max_examples=500)
def test_the_credentials_step_agrees_with_the_whole_grammar(header):
    """parse_credentials (the pipeline's step, quick reading first) and the
    whole grammar alone give the same credentials, or both refuse."""
    whole = _whole_grammar(header)
    if not isinstance(whole, Credentials):
        with pytest.raises(InvalidRequest) as refused:
            parse_credentials([header])
        assert refused.value.description == whole
        return
    step = parse_credentials([header])
    assert step == whole
    assert step.token == whole.token
