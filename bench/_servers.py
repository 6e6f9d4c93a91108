"""Start a benchmark server (gunicorn gthread or waitress) in its own process on a free loopback port.

Each server is a context manager: it waits until ``/ping`` (or ``/``) answers, and in its ``finally`` stops
the whole process group it started (SIGTERM, then SIGKILL), so no server outlives a run, even a failed one.

Run as ``python -m bench._servers waitress PORT THREADS FACTORY KWARGS_JSON`` it is the waitress launcher.
"""

from __future__ import annotations

import functools
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
_START_TIMEOUT = 30.0
_STOP_GRACE = 5.0


@dataclass(frozen=True)
class Server:
    """A running server: what it is and where it listens."""

    label: str
    port: int
    pid: int

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


def free_port() -> int:
    """A loopback port nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


@functools.cache
def gunicorn_has_no_control_socket() -> bool:
    """Whether the installed gunicorn knows ``--no-control-socket`` (25.1 and later).

    Without it, gunicorns started side by side collide on one control socket path in the home directory.
    """
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    return "--no-control-socket" in result.stdout


def app_spec(factory: str, kwargs: dict[str, Any]) -> str:
    """The gunicorn application argument that calls ``bench.apps.<factory>(**kwargs)``."""
    arguments = ", ".join(f"{key}={value!r}" for key, value in kwargs.items())
    return f"bench.apps:{factory}({arguments})"


@contextmanager
def gunicorn(label: str, factory: str, kwargs: dict[str, Any], *, threads: int) -> Iterator[Server]:
    """gunicorn with one gthread worker of ``threads`` threads, serving ``bench.apps.<factory>(**kwargs)``."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{HOST}:{port}",
        "--workers",
        "1",
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        # A stopped run must not keep serving the backlog a bare server built up under overload.
        "--graceful-timeout",
        "1",
        "--log-level",
        "warning",
        "--chdir",
        str(ROOT),
    ]
    if gunicorn_has_no_control_socket():
        command.append("--no-control-socket")
    command.append(app_spec(factory, kwargs))
    with _process(label, command, port) as server:
        yield server


@contextmanager
def waitress(label: str, factory: str, kwargs: dict[str, Any], *, threads: int) -> Iterator[Server]:
    """waitress with ``threads`` threads (its other settings default), serving the same factory."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "bench._servers",
        "waitress",
        str(port),
        str(threads),
        factory,
        json.dumps(kwargs),
    ]
    with _process(label, command, port) as server:
        yield server


@contextmanager
def _process(label: str, command: list[str], port: int) -> Iterator[Server]:
    with tempfile.TemporaryFile(mode="w+") as log:
        # A session of its own, so the stop below reaches gunicorn's worker too and nothing else.
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(process, port, log)
            yield Server(label, port, process.pid)
        finally:
            _stop(process)


def _wait_ready(process: subprocess.Popen[bytes], port: int, log: Any) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited with {process.returncode}:\n{log.read()[-3000:]}")
        try:
            connection = http.client.HTTPConnection(HOST, port, timeout=2.0)
            connection.request("GET", "/ping")
            status = connection.getresponse().status
            connection.close()
            if status < 500:  # the hello app has no /ping: its 404 means it serves
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} not ready after {_START_TIMEOUT} s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    for sig, wait in ((signal.SIGTERM, _STOP_GRACE), (signal.SIGKILL, _STOP_GRACE)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=wait)
            # The master is gone; a worker that ignored it must not linger either.
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            continue
        break


def _serve_waitress(port: int, threads: int, factory: str, kwargs_json: str) -> None:
    import waitress

    from bench import apps

    app = getattr(apps, factory)(**json.loads(kwargs_json))
    waitress.serve(app, host=HOST, port=port, threads=threads, _quiet=True)


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "waitress":
        sys.exit("usage: python -m bench._servers waitress PORT THREADS FACTORY KWARGS_JSON")
    _serve_waitress(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5])
