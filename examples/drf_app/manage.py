"""A toy model API as a minimal Django REST framework project that accepts Hugging Face tokens.

Run it against a local token store (no network)::

    TOKEN=$(.venv/bin/hfauth-mw token create --store tokens.sqlite3 --user alice \\
        --role write --org acme:write)
    .venv/bin/python examples/drf_app/manage.py --store tokens.sqlite3
    curl -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
        -d '{"inputs": "hello there"}' http://127.0.0.1:8004/api/v1/models/acme/sentiment/infer

or against the real Hub::

    .venv/bin/python examples/drf_app/manage.py --hub-url https://huggingface.co

``--store``/``--hub-url`` set ``HFAUTH_STORE``/``HFAUTH_HUB_URL`` for
``toyapi/settings.py``; with no Django command, ``runserver 127.0.0.1:8004``
runs. Any other Django command works as usual (``manage.py check``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--store", metavar="PATH")
    parser.add_argument("--hub-url", metavar="URL")
    args, rest = parser.parse_known_args()
    if args.store:
        if not Path(args.store).is_file():  # else a new, empty store: every token a 401
            parser.error(f"no token store at {args.store} (create one: hfauth-mw token create ...)")
        os.environ["HFAUTH_STORE"] = str(Path(args.store).resolve())
    if args.hub_url:
        os.environ["HFAUTH_HUB_URL"] = args.hub_url
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "toyapi.settings")

    from django.core.management import execute_from_command_line

    execute_from_command_line([sys.argv[0], *(rest or ["runserver", "127.0.0.1:8004"])])


if __name__ == "__main__":
    main()
