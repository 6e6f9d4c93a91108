"""The WSGI+ proxy example (``examples/wsgiplus_proxy``), with the WSGI+ test server as its upstream."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.wsgiplus_proxy import create_app
from tests.servers._live import ServerProcess, free_port

from . import _server
from .conftest import Client, fetch_concurrently, require_gunicorn


@pytest.fixture(scope="module")
def proxy(wsgiplus_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    """The example under gunicorn's WSGIPlusWorker (2 threads), proxying to the WSGI+ test server."""
    require_gunicorn()
    server = _server.start(
        "wsgiplus",
        tmp_path_factory.mktemp("proxy-log"),
        threads=2,
        env={"PROXY_UPSTREAM": wsgiplus_server.base_url},
        app="examples.wsgiplus_proxy:app",
    )
    try:
        yield Client(server)
    finally:
        server.stop()


def test_the_proxy_passes_the_upstream_answer_on(proxy: Client) -> None:
    response = proxy.get("/flask/done?x=1")
    assert (response.status_code, response.json()) == (200, {"value": "ready"})
    assert response.headers["Content-Type"] == "application/json"
    assert proxy.get("/gate/none/nope").status_code == 405  # the upstream's own status


def test_slow_upstream_calls_are_parked_not_waited_for(proxy: Client) -> None:
    started = time.monotonic()
    results = fetch_concurrently(proxy.server.port, ["/flask/sleep?s=1"] * 30)
    elapsed = time.monotonic() - started
    assert [status for status, _ in results] == [200] * 30
    assert elapsed < 8, f"30 proxied calls of 1 s took {elapsed:.1f} s on 2 threads"


def test_an_unreachable_upstream_is_a_502(tmp_path: Path) -> None:
    app = create_app(upstream=f"http://127.0.0.1:{free_port()}")
    response = app.test_client().get("/anything")
    assert response.status_code == 502
    assert "could not be reached" in response.get_json()["error"]


def test_the_same_app_waits_in_place_under_the_test_client(wsgiplus_server: ServerProcess) -> None:
    app = create_app(upstream=wsgiplus_server.base_url)
    response = app.test_client().get("/health")
    assert response.status_code == 200
    assert response.get_json()["wsgi_plus"] is True  # the upstream is the WSGI+ server
