"""The temporary Prefect server's process: uvicorn, stopped when its command goes away.

Its standard input is a pipe from the command that started it. The kernel closes that pipe
when the command exits for any reason, SIGKILL included; reading EOF, this process stops
itself, so a killed command never leaves a server behind (nor holds its output open).

Run as ``python -m prefect_pipeline.pipeline.server_child UVICORN-ARGS...``.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def _stop_when_parent_goes() -> None:
    sys.stdin.buffer.read()
    os.kill(os.getpid(), signal.SIGTERM)


def main() -> None:
    threading.Thread(target=_stop_when_parent_goes, daemon=True).start()
    from uvicorn.main import main as uvicorn_main

    sys.argv[0] = "uvicorn"
    uvicorn_main()


if __name__ == "__main__":
    main()
