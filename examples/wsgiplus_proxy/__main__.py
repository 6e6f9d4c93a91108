"""``python -m examples.wsgiplus_proxy [gunicorn options]``: serve the proxy with gunicorn's WSGIPlusWorker.

Binds 127.0.0.1:8000 with 4 threads unless the options say otherwise; ``PROXY_UPSTREAM`` names the upstream.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    options = sys.argv[1:] or ["--bind", "127.0.0.1:8000", "--threads", "4"]
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "flask_queue.gunicorn.WSGIPlusWorker",
        *options,
        "examples.wsgiplus_proxy:app",
    ]
    os.execv(sys.executable, command)


if __name__ == "__main__":
    main()
