"""The app factory uvicorn serves in the end-to-end run (``uvicorn --factory``).

The parent process passes the variant and the fixture through the
environment: ``HFAUTH_BENCH_APP`` (a key of :data:`bench.apps.ASGI_APPS`),
``HFAUTH_BENCH_STORE`` (the token store path) and ``HFAUTH_BENCH_TOKEN``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .apps import ASGI_APPS, Fixture, sha256


def create() -> Any:
    token = os.environ["HFAUTH_BENCH_TOKEN"]
    fixture = Fixture(Path(os.environ["HFAUTH_BENCH_STORE"]), token, {sha256(token): "alice"})
    return ASGI_APPS[os.environ["HFAUTH_BENCH_APP"]](fixture)
