"""What every adapter (WSGI, Flask, Django, FastAPI) must answer, as shared table rows.

Each row: caller (a key of the ``tokens`` fixture), method, path, status, and
the RFC 6750 error code expected in the body (None when allowed). The test
apps of those adapters all serve these routes with these rules.
"""

import pytest

ADAPTER_ACCESS_ROWS = [
    pytest.param("reader", "POST", "/v1/models/acme/sentiment/infer", 200, None, id="read"),
    pytest.param(
        "reader", "PUT", "/v1/models/acme/sentiment", 403, "insufficient_scope", id="read-put"
    ),
    pytest.param("writer", "PUT", "/v1/models/acme/sentiment", 200, None, id="write-put"),
    pytest.param(
        "writer", "PUT", "/v1/models/other/x", 403, "insufficient_scope", id="write-foreign"
    ),
]


#: A lazy check of a body rule (``from_body("model")``, max_body_bytes 1024) on a
#: path the middleware let through: (who, model in the body, status). Each
#: adapter adds what a request without a token gets there.
BODY_RULE_ROWS = [
    pytest.param("reader", "acme/sentiment", 200, id="allowed"),
    pytest.param("reader", "other/private", 403, id="denied"),
    pytest.param("reader", "acme/" + "x" * 2000, 413, id="body-over-the-cap"),
]
