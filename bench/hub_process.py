"""The hub emulator in a process of its own, like the real Hub: its request handling
must not compete with the event loop under test for the GIL.

:func:`hub_in_process` starts ``python -m bench.hub_process STORE DELAY`` and hands
back a small remote control over its stdin/stdout: ``url``, ``whoami_calls()``,
``reset_counters()``. The child stops when its stdin closes (or after a minute of
silence), so it never outlives the benchmark.
"""

from __future__ import annotations

import contextlib
import os
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

#: Seconds to wait for the child to start or to answer a command.
TIMEOUT = 15.0
ROOT = Path(__file__).resolve().parent.parent


def _no_nagle() -> bool:
    """Turn TCP_NODELAY on for the emulator's request handler; True if it was off.

    As shipped, the emulator writes an answer's status line and headers, then its
    body, in two sends on a Nagle socket: on a kept-alive connection every answer
    then waits for the client's delayed ACK (about 40 ms on Linux). That is the
    emulator's latency, not the middleware's, so the benchmark removes it.
    """
    from hfauth_mw import testing

    handler: Any = getattr(testing, "_Handler", None)
    if handler is None or getattr(handler, "disable_nagle_algorithm", True):
        return False
    handler.disable_nagle_algorithm = True
    return True


def serve(store_path: str, delay: float) -> None:
    from hfauth_mw import LocalTokenStore
    from hfauth_mw.testing import HubEmulator

    patched = _no_nagle()
    with LocalTokenStore(store_path) as store, HubEmulator(store) as hub:
        hub.delay = delay
        hub.auth_check_delay = delay  # one upstream round trip, whichever endpoint
        print(hub.url, int(patched), flush=True)
        while True:
            ready, _, _ = select.select([sys.stdin], [], [], 60.0)
            line = sys.stdin.readline() if ready else ""
            command = line.strip()
            if command == "calls":
                print(hub.whoami_calls, flush=True)
            elif command == "checks":
                print(hub.auth_check_calls, flush=True)
            elif command == "reset":
                hub.reset_counters()
                print("ok", flush=True)
            else:
                return  # EOF, "stop", or a minute of silence


class RemoteHub:
    def __init__(self, process: subprocess.Popen[str], url: str, patched: bool) -> None:
        self._process = process
        self.url = url
        self.nagle_patched = patched

    def _ask(self, command: str) -> str:
        stdin, stdout = self._process.stdin, self._process.stdout
        assert stdin is not None
        assert stdout is not None
        stdin.write(command + "\n")
        stdin.flush()
        return _readline(stdout, f"the hub emulator process did not answer {command!r}")

    def whoami_calls(self) -> int:
        return int(self._ask("calls"))

    def auth_check_calls(self) -> int:
        return int(self._ask("checks"))

    def reset_counters(self) -> None:
        self._ask("reset")


def _readline(stream: IO[str], error: str) -> str:
    ready, _, _ = select.select([stream], [], [], TIMEOUT)
    line = stream.readline() if ready else ""
    if not line:
        raise RuntimeError(error)
    return line.strip()


@contextlib.contextmanager
def hub_in_process(store_path: str, *, delay: float) -> Iterator[RemoteHub]:
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "bench.hub_process", store_path, repr(delay)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=env,
    )
    try:
        assert process.stdout is not None
        url, patched = _readline(process.stdout, "the hub emulator process did not start").split()
        yield RemoteHub(process, url, patched == "1")
    finally:
        if process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait(timeout=5)
        if process.stdout is not None:
            process.stdout.close()


if __name__ == "__main__":
    serve(sys.argv[1], float(sys.argv[2]))
