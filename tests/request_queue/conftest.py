"""Fixtures that run the request queue under real servers: gunicorn (gthread) and waitress."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers._live import SERVERS, Client, ServerProcess, start_server


def _require(kind: str) -> None:
    if importlib.util.find_spec(kind) is None:
        pytest.skip(f"{kind} is not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="session")
def gate_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of gate files shared by the test process and every server it starts."""
    return tmp_path_factory.mktemp("gates")


@pytest.fixture(scope="module", params=SERVERS)
def live_server(
    request: pytest.FixtureRequest,
    gate_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[ServerProcess]:
    """One server process of each kind, shared by the tests of a module (each leaves it idle)."""
    kind: str = request.param
    _require(kind)
    server = start_server(kind, gate_dir, tmp_path_factory.mktemp(f"{kind}-log"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def server(live_server: ServerProcess, gate_dir: Path) -> Iterator[Client]:
    """A client for the shared server; at teardown its gates open and every lane must be idle again."""
    client = Client(live_server, gate_dir)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def gunicorn_two_workers(gate_dir: Path, tmp_path: Path) -> Iterator[Client]:
    """gunicorn with two worker processes, each with its own request queue; stopped after the test."""
    _require("gunicorn")
    process = start_server("gunicorn", gate_dir, tmp_path, workers=2)
    try:
        client = Client(process, gate_dir, check_idle=False)
        try:
            yield client
        finally:
            client.close()
    finally:
        process.stop()
