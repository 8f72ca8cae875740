"""What the source checkout itself promises, for the tests that check it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

CHECKOUT = Path(__file__).resolve().parents[1]


def git_ignores(names: list[str]) -> dict[str, bool]:
    """Whether the checkout's .gitignore ignores each of ``names``, anywhere in the tree."""
    if shutil.which("git") is None or not (CHECKOUT / ".gitignore").is_file():
        pytest.skip("needs git and the source checkout's .gitignore")
    paths = [where + name for name in names for where in ("", "examples/")]
    result = subprocess.run(
        ["git", "-C", str(CHECKOUT), "check-ignore", "--no-index", "--stdin"],
        input="\n".join(paths) + "\n", capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if result.returncode not in (0, 1):  # 1: none ignored
        pytest.skip(f"not a git checkout: {result.stderr.strip()}")
    ignored = set(result.stdout.splitlines())
    return {path: path in ignored for path in paths}
