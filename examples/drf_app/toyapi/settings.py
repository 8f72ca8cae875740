"""Settings of the toy model API: Django REST framework with Hugging Face tokens.

Tokens are checked against ``$HFAUTH_STORE`` (a local token store) or
``$HFAUTH_HUB_URL`` (default ``https://huggingface.co``). Only the API's views
ask for a token (through DRF's classes); the site's own pages are left alone.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from hfauth_mw import AccessPolicy, LocalStoreSource, LocalTokenStore

from .catalog import visibility

DEBUG = False
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY") or secrets.token_urlsafe(32)
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "toyapi.urls"
INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "rest_framework",
]
# Sessions and Django users are not used here; DRF's session and Basic classes
# would need them (and a real database) for a site that logs people in.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
USE_TZ = True
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]

HFAUTH = {
    "POLICY": AccessPolicy(visibility=visibility),
    "METHOD_POLICY": False,  # each view says what it needs with a permission class
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

REST_FRAMEWORK = {
    # hfauth-mw's class first: DRF answers a 401 with the first class's challenge.
    "DEFAULT_AUTHENTICATION_CLASSES": ["hfauth_mw.drf.HubTokenAuthentication"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    # {"detail": ...} errors with the X-Error-Code / X-Error-Message headers the Hub sends.
    "EXCEPTION_HANDLER": "hfauth_mw.drf.exception_handler",
}
