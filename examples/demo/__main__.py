"""Serve the demo with waitress: ``python -m examples.demo [--host H] [--port P] [--threads N] [--tasks URL]``.

The port comes from ``--port``, else the ``PORT`` environment variable, else 5000 (``PORT=5001 make demo``).
waitress runs each request in one of its threads; with more threads than the lanes can hold (running plus
waiting), the waiting happens in the request queue, where it is bounded and visible, rather than in
waitress's own backlog. The task queue is the embedded default, a SQLite file in the instance folder, unless
``--tasks`` names another backend. Ctrl-C stops the server, and the task workers finish their jobs first.

Why waitress and not gunicorn's WSGI+ worker: waitress is pure Python and runs wherever the venv does
(gunicorn does not run on Windows), it is one process, so the page's request-queue figures are the whole
server's, and it can listen on port 0 and say which port it got. The same app runs under WSGI+, where a
waiting request holds no thread::

    gunicorn -k flask_queue.gunicorn.WSGIPlusWorker --workers 1 --threads 32 'examples.demo:create_app()'
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from waitress.server import MultiSocketServer, create_server

from flask_queue import RequestQueue

from . import SELF_URL_KEY, create_app


def _port(value: str) -> int:
    port = int(value)
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number")
    return port


def _url_host(host: str) -> str:
    """The host to reach a server bound to ``host`` from this machine, as it goes in a URL."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m examples.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument(
        "--port",
        type=_port,
        default=os.environ.get("PORT", "5000"),
        help="port to listen on (default $PORT or 5000; 0 picks a free one)",
    )
    parser.add_argument("--threads", type=int, default=32, help="waitress threads (default 32)")
    parser.add_argument(
        "--tasks",
        metavar="URL",
        default=None,
        help="task queue backend (default: SQLite in the instance folder)",
    )
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(task_backend=args.tasks)
    try:
        # Bursts open up to 100 connections at once on top of the page's own; waitress's default limit is 100.
        server = create_server(
            app,
            host=args.host,
            port=args.port,
            threads=args.threads,
            connection_limit=256,
        )
    except OSError as error:
        print(
            f"Cannot listen on {args.host}:{args.port}: {error.strerror or error}.\n"
            f"Is another server using the port? Try another: PORT=5001 make demo",
            file=sys.stderr,
        )
        return 1
    # A name such as "localhost" may resolve to several addresses, each with a socket of its own.
    port = (
        server.effective_listen[0][1]
        if isinstance(server, MultiSocketServer)
        else int(server.getsockname()[1])
    )
    url = f"http://{_url_host(args.host)}:{port}"
    app.config[SELF_URL_KEY] = url

    lanes = RequestQueue.middleware(app).stats()["lanes"].values()
    held = sum(lane["limits"]["concurrency"] + lane["limits"]["max_queue_size"] for lane in lanes)
    print(f"Flask-Queue demo on {url}/")
    print(f"  dashboard on {url}/queue/ (for clients on this machine)")
    print(
        f"  waitress with {args.threads} threads; the lanes hold at most {held} of them (running + waiting)."
    )
    if args.threads <= held:
        print(
            "  Warning: no thread is left for the page and the rest wait in waitress's backlog; use --threads "
            f"{held + 8} or more."
        )
    print("  Ctrl-C stops it.", flush=True)
    server.run()  # returns on Ctrl-C, after waitress has stopped its threads
    print("\nStopped.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
