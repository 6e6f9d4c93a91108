"""The same WSGI+ views without a WSGI+ server: each future is waited for in place.

With Flask's test client (in this process), and with waitress and plain gunicorn gthread (real servers).
Also the parking path driven by a minimal WSGI+ server written here, as docs/wsgi-plus.md describes one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Iterable
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, g, request

from flask_queue import wsgiplus
from flask_queue.wsgiplus import in_thread, run_async, suspendable
from flask_queue.wsgiplus.protocol import outcome

from . import _server
from .conftest import Client, require_gunicorn


async def _double(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


async def _fail() -> None:
    await asyncio.sleep(0.01)
    raise ValueError("nope")


@pytest.fixture
def views(app: Flask) -> Flask:
    @app.get("/ctx")
    @suspendable
    def ctx() -> Generator[Future[Any], Any, Any]:
        g.tag = request.args["tag"]
        doubled = yield run_async(_double(21))
        echoed = yield in_thread(lambda: request.args["tag"])
        return {"doubled": doubled, "echoed": echoed, "g": g.tag}

    @app.get("/raise")
    @suspendable
    def raising() -> Generator[Future[Any], Any, Any]:
        try:
            yield run_async(_fail())
        except ValueError as error:
            return {"caught": str(error)}
        return {}

    @app.get("/cancelled")
    @suspendable
    def cancelled() -> Generator[Future[Any], Any, Any]:
        future: Future[None] = Future()
        future.cancel()
        try:
            yield future
        except CancelledError:
            return "cancelled"
        return "not cancelled"

    @app.get("/not-a-future")
    @suspendable
    def not_a_future() -> Generator[Any, Any, Any]:
        yield 42
        return "unreachable"

    @app.get("/async")
    async def async_view() -> Any:
        return {"doubled": await _double(int(request.args["x"]))}

    return app


def test_a_suspendable_view_waits_in_place_under_the_test_client(views: Flask) -> None:
    response = views.test_client().get("/ctx?tag=abc")
    assert response.json == {"doubled": 42, "echoed": "abc", "g": "abc"}


def test_a_failing_future_raises_at_the_yield(views: Flask) -> None:
    assert views.test_client().get("/raise").json == {"caught": "nope"}


def test_a_cancelled_future_raises_cancelled_error_at_the_yield(views: Flask) -> None:
    assert views.test_client().get("/cancelled").text == "cancelled"


def test_yielding_something_else_than_a_future_raises_type_error(views: Flask) -> None:
    with pytest.raises(TypeError, match=r"must yield concurrent\.futures\.Future objects, got int"):
        views.test_client().get("/not-a-future")


def test_async_views_run_without_asgiref(views: Flask) -> None:
    wsgiplus.init_app(views)
    assert views.test_client().get("/async?x=4").json == {"doubled": 8}


def test_init_app_changes_nothing_for_other_servers(views: Flask) -> None:
    wsgiplus.init_app(views)
    wsgiplus.init_app(views)  # twice is harmless
    assert views.test_client().get("/ctx?tag=x").json == {"doubled": 42, "echoed": "x", "g": "x"}


def test_a_view_yielding_futures_without_suspendable_raises_naming_it_under_any_server(app: Flask) -> None:
    """With init_app (the WSGI+ worker calls it; an app may call it in its factory), a generator view that
    yields a Future raises at its first Future, naming the fix, instead of streaming a wrong body."""

    @app.get("/missing")  # type: ignore[type-var]  # the mistake under test
    def missing() -> Generator[Future[Any], Any, Any]:
        value = yield in_thread(lambda: 1)
        return value

    @suspendable  # type: ignore[type-var]  # the mistake under test
    @app.get("/above")
    def above() -> Generator[Future[Any], Any, Any]:
        value = yield in_thread(lambda: 1)
        return value

    @app.get("/stream")
    def stream() -> Generator[str, None, None]:
        yield "a"
        yield "b"

    wsgiplus.init_app(app)
    client = app.test_client()
    with pytest.raises(
        TypeError, match=r"view .*missing yielded a concurrent\.futures\.Future: .* needs @suspendable"
    ):
        client.get("/missing")
    with pytest.raises(TypeError, match="@suspendable is above the route decorator"):
        client.get("/above")
    assert client.get("/stream").data == b"ab"  # a streamed body still streams


def test_init_app_refuses_a_flask_without_the_dispatch_it_parks(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Flask 3.2 merges the request context into the app context: refused at start, naming the range."""
    from flask_queue.wsgiplus import views

    monkeypatch.setattr(views, "_cv_request", None)
    with pytest.raises(RuntimeError, match=r"Flask >= 3\.0, < 3\.2.*pip install 'flask<3\.2'"):
        wsgiplus.init_app(app)


def test_suspendable_needs_a_generator_function() -> None:
    with pytest.raises(TypeError, match="needs a generator function"):
        suspendable(lambda: None)  # type: ignore[arg-type,return-value]


def test_run_async_needs_a_coroutine() -> None:
    with pytest.raises(TypeError, match="call the async function"):
        run_async(_double)  # type: ignore[arg-type]


# -- the parking path, driven by a minimal WSGI+ server -------------------------------------------------------


def _serve_wsgi_plus(app: Any, path: str) -> tuple[str, bytes, int]:
    """Serve one request the WSGI+ way; returns the status, the body and how many times it parked.

    Parks by waiting for the future here, after the generator has given the thread back, which is what a
    real server does on another thread.
    """
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path.split("?")[0],
        "QUERY_STRING": path.partition("?")[2],
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": None,
        "wsgi.errors": None,
        "wsgi_plus.version": (1, 0),
    }
    status: list[str] = []

    def start_response(s: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        status.append(s)
        return lambda data: None

    iterable: Iterable[Any] = app(environ, start_response)
    iterator: Any = iter(iterable)
    body, parks = b"", 0
    value: Any = None
    error: BaseException | None = None
    try:
        while True:
            try:
                if error is not None:
                    item = iterator.throw(error)
                else:
                    item = iterator.send(value) if value is not None else next(iterator)
            except StopIteration:
                break
            value = error = None
            if isinstance(item, Future):
                parks += 1
                item.exception() if not item.cancelled() else None
                value, error = outcome(item)
            else:
                body += item
    finally:
        getattr(iterable, "close", lambda: None)()
    return status[-1], body, parks


def test_a_parked_view_resumes_with_its_context_under_a_minimal_wsgi_plus_server(views: Flask) -> None:
    wsgiplus.init_app(views)
    status, body, parks = _serve_wsgi_plus(views, "/ctx?tag=parked")
    assert status == "200 OK"
    assert parks >= 1
    assert b'"echoed":"parked"' in body.replace(b" ", b"")


def test_an_async_view_parks_once_under_a_minimal_wsgi_plus_server(views: Flask) -> None:
    wsgiplus.init_app(views)
    status, body, parks = _serve_wsgi_plus(views, "/async?x=5")
    assert (status, parks) == ("200 OK", 1)
    assert b"10" in body


def test_a_view_error_after_a_park_goes_to_flask_s_error_handling(views: Flask) -> None:
    wsgiplus.init_app(views)
    views.config["TESTING"] = False
    views.config["PROPAGATE_EXCEPTIONS"] = False

    @views.errorhandler(TypeError)
    def type_error(error: TypeError) -> tuple[str, int]:
        return f"handled {type(error).__name__}", 418

    @views.get("/later-not-a-future")
    @suspendable
    def later_not_a_future() -> Generator[Any, Any, Any]:
        yield run_async(_double(1))
        yield "oops"
        return "unreachable"

    status, body, _ = _serve_wsgi_plus(views, "/later-not-a-future")
    assert (status, body) == ("418 I'M A TEAPOT", b"handled TypeError")


# -- real servers that do not speak WSGI+ ----------------------------------------------------------------------


@pytest.fixture(scope="module", params=["waitress", "gthread"])
def other_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, event_loop_kind: str
) -> Any:
    if request.param == "gthread":
        require_gunicorn()
    server = _server.start(request.param, tmp_path_factory.mktemp(f"{request.param}-log"), threads=4)
    try:
        yield Client(server)
    finally:
        server.stop()


def test_the_same_app_runs_unchanged_elsewhere(other_server: Client, tmp_path: Path) -> None:
    assert other_server.get("/health").json()["wsgi_plus"] is False
    body = other_server.get("/flask/context?tag=w").json()
    assert (body["tag"], body["g"], body["values"]) == ("w", "w", ["first", "second for w"])
    assert other_server.get("/flask/raise?handle=1").json() == {"handled": "upstream failed"}
    assert other_server.get("/flask/raise").status_code == 500
    assert other_server.get("/flask/done").json() == {"value": "ready"}
