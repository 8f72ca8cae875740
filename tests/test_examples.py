"""The example servers of ``examples/``, as a new user starts them: a mistyped
``--store`` is refused, never made into a new, empty store that knows no token.

Each runs as its own process (``python examples/...``). The host given is an
address no machine here owns, so an example that failed to refuse would stop
at binding instead of serving forever: the test fails quickly either way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
NOT_HERE = "192.0.2.1"  # TEST-NET-1 (RFC 5737): binding to it fails at once

SERVERS = [
    pytest.param("inference_server.py", id="starlette"),
    pytest.param("fastapi_app.py", id="fastapi"),
    pytest.param("flask_app.py", id="flask"),
]


def run(argv: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("HFAUTH_")}
    return subprocess.run(
        [sys.executable, *argv], capture_output=True, text=True, timeout=60, check=False,
        env={**environment, **env},
    )  # fmt: skip


@pytest.mark.parametrize("example", SERVERS)
def test_a_missing_store_is_refused(tmp_path: Path, example: str) -> None:
    missing = tmp_path / "tokns.sqlite3"  # a typo
    result = run([str(EXAMPLES / example), "--store", str(missing), "--host", NOT_HERE])
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"no token store at {missing}" in result.stderr
    assert "hfauth-mw token create" in result.stderr
    assert not missing.exists()


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        pytest.param(["--store", "{missing}", "check"], {}, id="manage-py-store"),
        pytest.param(["check"], {"HFAUTH_STORE": "{missing}"}, id="settings-env"),
    ],
)
def test_the_django_example_refuses_a_missing_store(
    tmp_path: Path, argv: list[str], env: dict[str, str]
) -> None:
    missing = tmp_path / "tokns.sqlite3"
    manage = EXAMPLES / "django_app" / "manage.py"
    result = run(
        [str(manage), *(arg.format(missing=missing) for arg in argv)],
        **{name: value.format(missing=missing) for name, value in env.items()},
    )
    assert result.returncode != 0
    assert f"no token store at {missing}" in result.stderr
    assert not missing.exists()


def test_the_django_example_runs_on_a_store_that_exists(tmp_path: Path) -> None:
    """The refusal is for missing stores only: ``check`` passes on a real one."""
    from hfauth_mw import LocalTokenStore

    store = tmp_path / "tokens.sqlite3"
    LocalTokenStore(store).close()
    result = run([str(EXAMPLES / "django_app" / "manage.py"), "--store", str(store), "check"])
    assert result.returncode == 0, result.stderr[-2000:]
