"""``python -m hfauth_mw._cli``: the same as the ``hfauth-mw`` console script."""

from . import entry

entry()
