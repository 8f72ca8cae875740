"""``python -m hfauth_mw``: the same as the ``hfauth-mw`` console script."""

from ._cli import entry

entry()
