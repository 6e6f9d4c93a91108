"""Real servers for the tests: gunicorn (gthread) and waitress in subprocesses on free loopback ports.

``start_server`` launches one serving ``served_app:application`` and returns once it answers;
``ServerProcess.stop`` terminates it, and kills its whole process group after a deadline. ``Client`` is
what a test drives a server with: plain and concurrent requests, gates, stats, and waiting on stats with a
deadline instead of sleeping.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import requests

HERE = Path(__file__).resolve().parent
SERVERS = ("gunicorn", "waitress")
#: Server threads: more than any lane's concurrency plus queue, so requests wait in the request queue and
#: not in the server's backlog, with threads to spare for /stats while a lane is saturated.
THREADS = 16
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: Timeout of every HTTP call; a request held on a gate waits at most until the test releases it.
REQUEST_TIMEOUT = 20.0
#: How long a test waits for the server to reach a state it expects.
WAIT_TIMEOUT = 10.0
POLL_INTERVAL = 0.02
_BIND_FAILURES = ("Address already in use", "Connection in use", "[Errno 98]")
_BIND_ATTEMPTS = 5

T = TypeVar("T")
Stats = dict[str, Any]


@contextlib.contextmanager
def waitress_in_thread(app: Callable[..., Any], *, threads: int = 8, wait: float = 30.0) -> Iterator[str]:
    """Serve ``app`` with waitress on a free loopback port in a thread of this process; yield its base URL;
    stop it and all its threads afterwards."""
    from waitress import wasyncore
    from waitress.server import BaseWSGIServer, create_server

    server = create_server(app, host="127.0.0.1", port=0, threads=threads)
    assert isinstance(server, BaseWSGIServer)
    thread = threading.Thread(target=server.run, name="waitress loop")
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"
    finally:
        # waitress has no public stop: close every socket from its own loop thread, which then returns.
        # (trigger and _map are internals that waitress's type stubs get wrong or leave out.)
        internals = cast(Any, server)
        internals.trigger.pull_trigger(lambda: wasyncore.close_all(internals._map))
        thread.join(wait)
        server.task_dispatcher.shutdown()
        assert not thread.is_alive()


def free_port() -> int:
    """A loopback port that was free a moment ago (the server may still lose it to a race; see start_server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@functools.cache
def gunicorn_has_no_control_socket() -> bool:
    """Whether this gunicorn has ``--no-control-socket`` (25.1 and later open a shared socket in $HOME)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout
    return "--no-control-socket" in help_text


def server_command(kind: str, port: int, workers: int) -> list[str]:
    if kind == "gunicorn":
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class=gthread",
            f"--workers={workers}",
            f"--threads={THREADS}",
            f"--bind=127.0.0.1:{port}",
            "--graceful-timeout=5",
            "--timeout=60",
            "served_app:application",
        ]
        if gunicorn_has_no_control_socket():
            command.insert(3, "--no-control-socket")
        return command
    if kind == "waitress":
        if workers != 1:
            raise ValueError("waitress runs a single process")
        return [
            sys.executable,
            "-m",
            "waitress",
            f"--listen=127.0.0.1:{port}",
            f"--threads={THREADS}",
            # waitress reads a connection while its request is being handled, and so can tell the app that
            # the client left (waitress.client_disconnected), only with a look-ahead of at least one request.
            "--channel-request-lookahead=1",
            "served_app:application",
        ]
    raise ValueError(f"unknown server {kind!r}")


class ServerProcess:
    """A server running in its own process group; its output goes to ``log_path``."""

    def __init__(
        self,
        kind: str,
        port: int,
        proc: subprocess.Popen[bytes],
        log_path: Path,
        log_file: IO[bytes],
    ) -> None:
        self.kind = kind
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self.proc = proc
        self.log_path = log_path
        self._log_file = log_file

    def log_tail(self, chars: int = 6000) -> str:
        self._log_file.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    def wait_ready(self) -> bool:
        """Wait until the server answers ``/health``; ``False`` if it exited or could not bind its port."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            if any(failure in self.log_tail() for failure in _BIND_FAILURES):
                return False  # gunicorn would retry the bind for 5 s: try another port at once instead
            try:
                with requests.Session() as session:
                    session.trust_env = False
                    response = session.get(f"{self.base_url}/health", timeout=5)
                if response.status_code == 200:
                    return True
            except requests.RequestException:
                pass
            time.sleep(POLL_INTERVAL)
        raise RuntimeError(f"{self.kind} did not answer within {START_TIMEOUT} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the server; kill its process group if it has not exited after ``STOP_TIMEOUT``."""
        try:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    # The leader is not reaped yet, so its group id cannot belong to anyone else.
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(STOP_TIMEOUT)
        finally:
            self._log_file.close()


def start_server(kind: str, gate_dir: Path, log_dir: Path, *, workers: int = 1) -> ServerProcess:
    """Start ``kind`` serving the test app on a free loopback port; return once it answers.

    A port can be taken between finding it free and the server binding it, so a bind failure is retried on
    another port. Raises ``RuntimeError`` with the server's output when it does not come up.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env["FLASK_QUEUE_TEST_GATE_DIR"] = str(gate_dir)
    env["PYTHONUNBUFFERED"] = "1"

    def launch() -> ServerProcess:
        port = free_port()
        return spawn_server(kind, port, server_command(kind, port, workers), log_dir, HERE, env)

    return start_retrying(kind, launch)


def spawn_server(
    kind: str, port: int, command: list[str], log_dir: Path, cwd: Path, env: Mapping[str, str]
) -> ServerProcess:
    """Start ``command`` in a process group of its own, its output in ``log_dir``; do not wait for it."""
    log_path = log_dir / f"{kind}-{port}.log"
    log_file = log_path.open("wb")
    proc = subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    return ServerProcess(kind, port, proc, log_path, log_file)


def start_retrying(kind: str, launch: Callable[[], ServerProcess]) -> ServerProcess:
    """``launch`` a server on a free port and return it once it answers; a port lost to a race between
    finding it free and binding it is retried on another. Raises ``RuntimeError`` with the server's output
    when it does not come up."""
    for _ in range(_BIND_ATTEMPTS):
        server = launch()
        try:
            ready = server.wait_ready()
        except BaseException:
            server.stop()
            raise
        if ready:
            return server
        log = server.log_tail()
        server.stop()
        if not any(failure in log for failure in _BIND_FAILURES):
            raise RuntimeError(f"{kind} exited before answering:\n{log}")
    raise RuntimeError(f"{kind} could not bind a free port in {_BIND_ATTEMPTS} attempts")


def wait_for(
    what: str,
    probe: Callable[[], T],
    done: Callable[[T], bool],
    timeout: float = WAIT_TIMEOUT,
) -> T:
    """Call ``probe`` until ``done`` holds for its value, which is returned; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"waited {timeout} s for {what}; last seen: {value!r}")
        time.sleep(POLL_INTERVAL)


def http_get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = REQUEST_TIMEOUT
) -> requests.Response:
    """GET ``url`` on a connection of its own (closed before returning), ignoring proxy settings."""
    with requests.Session() as session:
        session.trust_env = False  # never send loopback requests through an HTTP proxy from the environment
        return session.get(url, headers=dict(headers or {}), timeout=timeout)


class Client:
    """Drives one server for one test; ``close`` releases the test's gates and waits for its clients.

    :param check_idle: at close, wait until every lane is idle again (no request running or waiting), so
        the next test starts from a quiet server. Only meaningful with a single server process.
    """

    def __init__(self, server: ServerProcess, gate_dir: Path, *, check_idle: bool = True) -> None:
        self.server = server
        self.kind = server.kind
        self._gate_dir = gate_dir
        self._gates: list[str] = []
        self._check_idle = check_idle
        self._clients = ThreadPoolExecutor(
            max_workers=2 * THREADS, thread_name_prefix=f"{server.kind}-client"
        )

    def get(
        self,
        path: str,
        headers: Mapping[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> requests.Response:
        return http_get(self.server.base_url + path, headers, timeout)

    def submit(self, path: str, headers: Mapping[str, str] | None = None) -> Future[requests.Response]:
        """GET ``path`` from a client thread; the future holds the response."""
        return self._clients.submit(self.get, path, headers)

    def gate(self) -> str:
        """A new gate, shut until ``release``; views given its name wait on it."""
        gate = uuid.uuid4().hex
        self._gates.append(gate)
        return gate

    def release(self, gate: str) -> None:
        (self._gate_dir / gate).touch()

    def stats(self) -> Stats:
        response = self.get("/stats")
        assert response.status_code == 200, response.text
        stats: Stats = response.json()
        return stats

    def lane(self, name: str, *, raw: bool = False) -> Stats:
        """One lane's figures: a lane of the Flask app, or with ``raw`` of the plain middleware at /raw."""
        lane: Stats = self.stats()["raw" if raw else "lanes"][name]
        return lane

    def wait_lane(self, name: str, done: Callable[[Stats], bool], *, raw: bool = False) -> Stats:
        """Poll the lane's figures until ``done`` holds for them; return them."""
        return wait_for(
            f"lane {name!r} to reach the expected state",
            lambda: self.lane(name, raw=raw),
            done,
        )

    def order(self, gate: str) -> list[str]:
        """Tags of the requests that entered a view waiting on ``gate``, in the order they entered."""
        response = self.get(f"/order/{gate}")
        assert response.status_code == 200, response.text
        tags: list[str] = response.json()
        return tags

    def close(self) -> None:
        try:
            for gate in self._gates:
                self.release(gate)
        finally:
            self._clients.shutdown(wait=True)
        if self._check_idle:
            try:
                wait_for("every lane to be idle after the test", self.stats, _idle)
            except AssertionError as error:
                raise AssertionError(
                    f"{error}\n--- {self.kind} output ---\n{self.server.log_tail()}"
                ) from None


def _idle(stats: Stats) -> bool:
    lanes = [*stats["lanes"].values(), *stats["raw"].values()]
    return all(lane["running"] == 0 and lane["waiting"] == 0 for lane in lanes)
