"""Settings of the toy model server: no database, no sessions, hfauth-mw only.

Tokens are checked against ``$HFAUTH_STORE`` (a local token store) or
``$HFAUTH_HUB_URL`` (default ``https://huggingface.co``).
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from hfauth_mw import AccessPolicy, LocalStoreSource, LocalTokenStore

from .views import visibility

DEBUG = False
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(32)
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "toyhub.urls"
INSTALLED_APPS: list[str] = []
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

MIDDLEWARE = [
    "django.middleware.common.CommonMiddleware",
    # Bearer-token requests skip the CSRF check; Basic ones keep it (browsers replay Basic).
    "django.middleware.csrf.CsrfViewMiddleware",
    "hfauth_mw.django.HFAuthMiddleware",
]

HFAUTH = {
    "PUBLIC_PATHS": ["/health"],  # everything else needs a valid token
    "POLICY": AccessPolicy(visibility=visibility),
    "METHOD_POLICY": False,  # each view says what it needs with a decorator
}
if os.environ.get("HFAUTH_STORE"):
    if not Path(os.environ["HFAUTH_STORE"]).is_file():  # else a new, empty store: all 401
        raise ImproperlyConfigured(
            f"no token store at {os.environ['HFAUTH_STORE']} ($HFAUTH_STORE; create one: "
            "hfauth-mw token create ...)"
        )
    HFAUTH["SOURCE"] = LocalStoreSource(LocalTokenStore(os.environ["HFAUTH_STORE"]))
else:
    HFAUTH["HUB_URL"] = os.environ.get("HFAUTH_HUB_URL", "https://huggingface.co")
