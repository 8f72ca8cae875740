"""Benchmarks for hfauth-mw (issues 5, 16, 17, 20): ``python -m bench`` or ``make bench``.

Sections: in-process ASGI and WSGI overhead per request next to the
authentication people use today, a breakdown of the cached path, uvicorn end
to end under wrk, a cold stampede against the hub emulator, and the scale of
the token cache. The run prints a table with PASS/FAIL targets and rewrites
``docs/benchmarks.md`` (and ``docs/benchmarks.png``).

Bench-only dependencies: Flask-HTTPAuth (WSGI comparator), matplotlib (plot),
and the ``wrk`` binary (end to end). Without them the matching part is skipped
with a message naming what is missing.
"""

from .run import main

__all__ = ["main"]
