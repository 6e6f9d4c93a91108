"""Fixtures of the WSGI+ tests: a gunicorn running the WSGIPlusWorker, and a client for it."""

from __future__ import annotations

import asyncio
import functools
import importlib.util
import re
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import requests

from flask_queue import wsgiplus
from flask_queue.wsgiplus import EVENT_LOOP_ENV
from tests.servers._live import REQUEST_TIMEOUT, ServerProcess

from . import _server

#: The suspend timeout of the shared server: longer than any park of the tests but the ones that time out.
SUSPEND_TIMEOUT = 3.0


@functools.cache
def worker_unavailable() -> str | None:
    """Why the WSGI+ worker cannot run here, naming what it needs; ``None`` when it can."""
    if importlib.util.find_spec("gunicorn") is None:
        return "gunicorn is not installed (pip install -e '.[dev]')"
    try:
        from flask_queue.wsgiplus import gunicorn
    except ImportError as error:  # a gunicorn older than 24
        return str(error)
    return gunicorn._unsupported_gunicorn()


def require_gunicorn() -> None:
    """Skip a test that starts the WSGI+ worker where it cannot run (no gunicorn, or one below its floor)."""
    reason = worker_unavailable()
    if reason is not None:
        pytest.skip(reason)


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    """A test module that imports the worker cannot be imported where the worker cannot (a gunicorn older
    than 24): report it skipped with that reason, as the tests that start a server are, not as an error."""
    report = yield
    if report.failed and isinstance(collector, pytest.Module):
        reason = worker_unavailable()
        if reason is not None and reason in str(report.longrepr):
            report.outcome = "skipped"
            report.longrepr = (str(collector.path), 1, f"Skipped: {reason}")  # at the module
    return report


@pytest.fixture(scope="module", autouse=True, params=["uvloop", "asyncio"])
def event_loop_kind(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every WSGI+ test runs on both event loops: asyncio's, and uvloop's (what ``auto`` picks when it is
    installed), in this process and in the servers it starts."""
    kind: str = request.param
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(EVENT_LOOP_ENV, kind)
        yield kind


@pytest.fixture(autouse=True)
def _stop_wsgiplus_runtime() -> Iterator[None]:
    """Tests that run views in this process start its event loop and pool: stop them after each test."""
    yield
    wsgiplus.shutdown()


@pytest.fixture(scope="module")
def wsgiplus_server(
    tmp_path_factory: pytest.TempPathFactory, event_loop_kind: str
) -> Iterator[ServerProcess]:
    """gunicorn with one WSGIPlusWorker of 2 threads, shared by the tests of a module (on one event loop)."""
    require_gunicorn()
    server = _server.start(
        "wsgiplus",
        tmp_path_factory.mktemp("wsgiplus-log"),
        threads=2,
        env={"WSGI_PLUS_SUSPEND_TIMEOUT": str(SUSPEND_TIMEOUT), EVENT_LOOP_ENV: event_loop_kind},
    )
    try:
        yield server
    finally:
        server.stop()


class Client:
    """Requests to one server on connections of their own (a ``session()`` keeps one alive)."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.url = server.base_url

    def session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False  # never through a proxy from the environment
        return session

    def get(self, path: str, timeout: float = REQUEST_TIMEOUT) -> requests.Response:
        with self.session() as session:
            return session.get(self.url + path, timeout=timeout)

    def post(self, path: str) -> requests.Response:
        with self.session() as session:
            response = session.post(self.url + path, timeout=REQUEST_TIMEOUT)
        assert response.status_code == 200, response.text
        return response

    def log(self) -> str:
        return self.server.log_tail(100_000)


@pytest.fixture
def live(wsgiplus_server: ServerProcess) -> Client:
    return Client(wsgiplus_server)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path


def fetch_concurrently(
    port: int, paths: list[str], timeout: float = 60.0, *, hang_up: bool = False
) -> list[tuple[int, bytes]]:
    """GET every path at once, each on a connection of its own; ``(status, body)`` per path, in order.

    Plain asyncio sockets: hundreds of requests in flight from one thread, and nothing left running after.
    Each client reads until the server closes, or with ``hang_up`` closes as soon as it has the body its
    ``Content-Length`` announced (as HTTP clients do), before the server does.
    """

    async def one(path: str) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            if hang_up:
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
                assert length is not None, head
                data = head + await reader.readexactly(int(length.group(1)))
            else:
                data = await reader.read()
        finally:
            writer.close()
        head, _, body = data.partition(b"\r\n\r\n")
        return int(head[9:12]), body

    async def everything() -> list[tuple[int, bytes]]:
        return await asyncio.wait_for(asyncio.gather(*(one(path) for path in paths)), timeout)

    return asyncio.run(everything())
