"""The toy models and their visibility (no DRF import here: settings.py reads this,
and DRF must not be imported before the settings are)."""

from __future__ import annotations

from hfauth_mw import Repo, Visibility

#: The toy models: id -> visibility. Replace with your own registry.
MODELS = {
    "acme/sentiment": Visibility.PRIVATE,
    "alice/tiny-lm": Visibility.PRIVATE,
    "acme/public-demo": Visibility.PUBLIC,
}


def visibility(repo: Repo) -> Visibility:
    return MODELS.get(repo.id, Visibility.PRIVATE) if repo.type == "model" else Visibility.PRIVATE
