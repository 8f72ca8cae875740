"""Adapter options (``_options``): every place that lists them lists them all."""

from pathlib import Path

import pytest

import hfauth_mw.django
import hfauth_mw.flask
from hfauth_mw._options import MiddlewareOptions

ROOT = Path(__file__).resolve().parent.parent
OPTIONS = sorted(MiddlewareOptions.__optional_keys__)


def _frameworks_list() -> str:
    text = (ROOT / "docs" / "frameworks.md").read_text()
    start = text.index("Options (all adapters")
    return text[start : text.index("\n\n", start)]


def _readme_table() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("| option | default | meaning |")
    return text[start : text.index("\n\n", start)]


@pytest.mark.parametrize(
    ("listing", "spelled"),
    [
        pytest.param(lambda: hfauth_mw.flask.__doc__, "``HFAUTH_{upper}``", id="flask-settings"),
        pytest.param(lambda: hfauth_mw.django.__doc__, "``{upper}``", id="django-settings"),
        pytest.param(_frameworks_list, "`{name}`", id="docs-frameworks"),
        pytest.param(_readme_table, "| `{name}` |", id="readme-table"),
    ],
)
def test_every_option_is_listed(listing, spelled):
    text = listing()
    missing = [
        name for name in OPTIONS if spelled.format(name=name, upper=name.upper()) not in text
    ]
    assert missing == []
