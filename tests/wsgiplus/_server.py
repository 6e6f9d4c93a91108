"""Servers for the WSGI+ tests: gunicorn with the WSGIPlusWorker (or plain gthread) and waitress.

Each runs ``served_wsgiplus:app`` in a subprocess of its own on a free loopback port; ``start`` returns once
``/health`` answers, ``ServerProcess.stop`` ends it (see ``tests/servers/_live.py``, whose process handling
this reuses).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from tests.servers._live import (
    START_TIMEOUT,
    ServerProcess,
    free_port,
    gunicorn_has_no_control_socket,
    spawn_server,
    start_retrying,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
WORKER = "flask_queue.gunicorn.WSGIPlusWorker"


def command(
    kind: str, port: int, *, threads: int = 2, extra: Sequence[str] = (), app: str = "served_wsgiplus:app"
) -> list[str]:
    """The command line of a server: ``wsgiplus`` (our worker), ``gthread`` (plain gunicorn), ``waitress``."""
    if kind in ("wsgiplus", "gthread"):
        cmd = [
            sys.executable,
            "-m",
            "gunicorn",
            f"--worker-class={WORKER if kind == 'wsgiplus' else 'gthread'}",
            "--workers=1",
            f"--threads={threads}",
            f"--bind=127.0.0.1:{port}",
            "--graceful-timeout=10",
            "--timeout=60",
            *extra,
            app,
        ]
        if gunicorn_has_no_control_socket():
            cmd.insert(3, "--no-control-socket")
        return cmd
    if kind == "waitress":
        return [
            sys.executable,
            "-m",
            "waitress",
            f"--listen=127.0.0.1:{port}",
            f"--threads={threads}",
            *extra,
            app,
        ]
    raise ValueError(f"unknown server {kind!r}")


def spawn(
    kind: str,
    log_dir: Path,
    *,
    threads: int = 2,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    app: str = "served_wsgiplus:app",
) -> ServerProcess:
    """Start a server without waiting for it (for servers expected to fail at start)."""
    port = free_port()
    environ = {**os.environ, **(env or {})}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), str(ROOT), environ.get("PYTHONPATH")]))
    environ["PYTHONUNBUFFERED"] = "1"
    return spawn_server(
        kind, port, command(kind, port, threads=threads, extra=extra, app=app), log_dir, HERE, environ
    )


def start(
    kind: str,
    log_dir: Path,
    *,
    threads: int = 2,
    extra: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    app: str = "served_wsgiplus:app",
) -> ServerProcess:
    """Start a server and return once it answers; a port lost to a race is retried on another."""
    return start_retrying(kind, lambda: spawn(kind, log_dir, threads=threads, extra=extra, env=env, app=app))


def wait_exit(server: ServerProcess, timeout: float = START_TIMEOUT) -> int:
    """Wait for a server that should stop by itself; its exit status (fails the test after ``timeout``)."""
    try:
        return server.proc.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"{server.kind} still running after {timeout} s:\n{server.log_tail()}") from None
