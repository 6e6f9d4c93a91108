"""Regression tests for defects found in review of the request queue; each failed before its fix."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from flask import Blueprint, Flask, g
from flask.views import MethodView

from flask_queue import ConfigurationError, RequestQueue, RequestQueueMiddleware, signals
from flask_queue._types import StartResponse, WSGIEnvironment
from tests._wsgi import Call, call_after_waiting, gated_stream, hello, hold, stats_of


def ignore_start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return lambda data: None


class Interrupt(BaseException):
    """Stands for KeyboardInterrupt, SystemExit or gevent.Timeout raised in the middle of a request."""


# -- finalisers and exceptions ---------------------------------------------------------------------------


def test_a_response_finalised_while_its_lane_lock_is_held_does_not_deadlock() -> None:
    """The cyclic GC can finalise a dropped response in a thread that holds the lane's lock (inside
    ``arrive``); the finaliser must not block on that lock. Simulated by holding the lock and dropping it."""
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=0)
    lane = middleware.lanes["default"]

    def drop_while_locked() -> None:
        call = Call(middleware)
        with lane._lock:  # white box: the state the garbage collector may find this thread in
            del call

    thread = threading.Thread(target=drop_while_locked, daemon=True)
    thread.start()
    thread.join(5)
    assert not thread.is_alive(), "the finaliser deadlocked on the lane's lock"
    again = Call(middleware)  # the next arrival releases the finalised slot first
    assert again.code == 200
    again.close()
    assert stats_of(middleware)["running"] == 0


def test_a_queue_timeout_beyond_what_locks_accept_waits_normally() -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=1, queue_timeout=1e12)
    call = call_after_waiting(middleware)
    assert call.code == 200
    call.close()


@pytest.mark.parametrize("signal", [signals.request_queued, signals.request_admitted])
def test_a_base_exception_between_arrival_and_the_app_gives_the_ticket_up(signal: Any) -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=1, queue_timeout=30.0)
    held = Call(middleware)
    holder_released = signal is signals.request_admitted
    if holder_released:
        held.close()  # the interrupted request is admitted at once, then interrupted

    def interrupt(sender: object, **extra: Any) -> None:
        raise Interrupt

    with signal.connected_to(interrupt), pytest.raises(Interrupt):
        Call(middleware)
    if not holder_released:
        assert stats_of(middleware)["waiting"] == 0
        held.close()
    stats = stats_of(middleware)
    assert (stats["running"], stats["waiting"]) == (0, 0)
    after = Call(middleware)
    assert after.code == 200
    after.close()


def test_iterating_without_keeping_the_response_keeps_the_slot_until_the_body_is_done() -> None:
    gate = threading.Event()
    middleware = RequestQueueMiddleware(gated_stream(gate), concurrency=1, max_queue_size=0)
    chunks = iter(middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, ignore_start))
    assert next(chunks) == b"first"
    assert stats_of(middleware)["running"] == 1
    gate.set()
    assert list(chunks) == [b"last"]


# -- what servers look for in the body --------------------------------------------------------------------


class FileWrapper:
    """A server's wsgi.file_wrapper, as gunicorn's: a body it recognises and sends with sendfile()."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return iter([self.data])

    def close(self) -> None:
        self.closed = True


def test_a_body_from_the_servers_file_wrapper_reaches_it_unwrapped_and_still_releases() -> None:
    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        wrapper: Iterable[bytes] = environ["wsgi.file_wrapper"](b"file")
        return wrapper

    middleware = RequestQueueMiddleware(app, concurrency=1, max_queue_size=0)
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "wsgi.file_wrapper": FileWrapper}
    body = middleware(environ, ignore_start)
    assert isinstance(body, FileWrapper)
    assert stats_of(middleware)["running"] == 1
    body.close()
    assert body.closed
    assert stats_of(middleware)["running"] == 0


def test_a_body_with_a_length_keeps_it() -> None:
    middleware = RequestQueueMiddleware(hello)
    body = middleware({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, ignore_start)
    assert len(body) == 1  # type: ignore[arg-type]
    body.close()  # type: ignore[attr-defined]


# -- rejections --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "json"),
    [
        ("application/json, text/plain, */*", True),  # axios
        ("application/problem+json", True),
        ("application/json;q=0.5, text/plain", False),
        ("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8", False),
        ("*/*", False),
        ("", False),
        ("application/json;q=0", False),
    ],
)
def test_json_rejections_go_to_clients_that_name_json(accept: str, json: bool) -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=0)
    held = Call(middleware)
    rejected = Call(middleware, headers={"Accept": accept})
    assert (rejected.headers["Content-Type"] == "application/json") is json
    held.close()


def test_a_reject_hook_that_raises_falls_back_to_the_default_rejection(app: Flask) -> None:
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)
    app.add_url_rule("/", "index", lambda: "index")

    @queue.reject_response
    def busy(reason: str, retry_after: int) -> Any:
        raise RuntimeError("template missing")

    held = hold(app, "/")
    rejected = Call(app.wsgi_app, "/")
    assert rejected.code == 503
    assert b"full" in rejected.body
    held.close()


def test_a_teardown_that_expects_before_request_does_not_break_rejections(app: Flask) -> None:
    queue = RequestQueue(app, concurrency=1, max_queue_size=0)
    app.add_url_rule("/", "index", lambda: "index")
    app.before_request(lambda: setattr(g, "db", object()))

    @app.teardown_request
    def close_db(exc: BaseException | None) -> None:
        g.db  # noqa: B018  # the usual pattern: teardown closes what before_request opened

    @queue.reject_response
    def busy(reason: str, retry_after: int) -> Any:
        return "busy", 503

    held = hold(app, "/")
    rejected = Call(app.wsgi_app, "/")
    assert rejected.code == 503
    held.close()


# -- routing to lanes ---------------------------------------------------------------------------------------


def test_automatic_options_requests_do_not_wait_in_the_views_lane(app: Flask) -> None:
    queue = RequestQueue(app)
    queue.lane("reports", concurrency=1, max_queue_size=0)

    @app.get("/report")
    @queue.limit("reports")
    def report() -> str:
        return "report"

    held = hold(app, "/report")
    preflight = Call(app.wsgi_app, "/report", method="OPTIONS")
    assert preflight.code == 200
    preflight.close()
    held.close()


def test_a_nested_blueprint_can_be_marked_itself_and_under_another_name(app: Flask) -> None:
    queue = RequestQueue(app)
    queue.lane("admin", concurrency=1, max_queue_size=0)
    parent = Blueprint("parent", __name__, url_prefix="/p")
    child = Blueprint("child", __name__, url_prefix="/c")
    child.add_url_rule("/x", "x", lambda: "x")
    parent.register_blueprint(child)
    queue.limit("admin")(child)
    app.register_blueprint(parent)
    app.register_blueprint(parent, name="v2", url_prefix="/v2")
    for path in ("/p/c/x", "/v2/c/x"):
        held = hold(app, path)
        assert Call(app.wsgi_app, path).code == 503
        held.close()
    assert queue.stats(app)["lanes"]["admin"]["admitted"] == 2


def test_a_class_based_view_can_be_limited(app: Flask) -> None:
    queue = RequestQueue(app)
    queue.lane("reports", concurrency=1, max_queue_size=0)

    @queue.limit("reports")
    class Report(MethodView):
        def get(self) -> str:
            return "report"

    app.add_url_rule("/report", view_func=Report.as_view("report"))
    held = hold(app, "/report")
    assert Call(app.wsgi_app, "/report").code == 503
    held.close()


def test_the_route_cache_tells_schemes_apart(app: Flask) -> None:
    """With host matching, ``Host: api.example.com:443`` is that host for https only; a 404 routed for http
    must not be reused for https."""
    app.url_map.host_matching = True
    queue = RequestQueue(app)
    queue.lane("api", concurrency=1, max_queue_size=0)
    app.add_url_rule("/", "api", queue.limit("api")(lambda: "api"), host="api.example.com")
    headers = {"Host": "api.example.com:443"}
    http = Call(app.wsgi_app, "/", headers=headers)
    assert http.code == 404
    http.close()
    https = Call(app.wsgi_app, "/", headers=headers, base_url="https://api.example.com:443")
    assert https.code == 200
    assert queue.stats(app)["lanes"]["api"]["running"] == 1
    https.close()


# -- set-up errors ------------------------------------------------------------------------------------------


def test_a_classify_from_config_that_is_not_callable_raises_at_set_up(app: Flask) -> None:
    app.config["REQUEST_QUEUE_CLASSIFY"] = "myapp.queueing:classify"
    with pytest.raises(ConfigurationError, match="classify must be a callable"):
        RequestQueue(app)


def test_a_typo_in_a_lanes_limits_names_the_lane_and_the_limit() -> None:
    with pytest.raises(ConfigurationError, match=r"lane 'slow': unknown limit 'concurency'"):
        RequestQueueMiddleware(hello, lanes={"slow": {"concurency": 1}})


def test_an_invalid_lane_limit_names_the_lane(app: Flask) -> None:
    with pytest.raises(ConfigurationError, match=r"lane 'slow': concurrency"):
        RequestQueueMiddleware(hello, lanes={"slow": {"concurrency": 0}})
    with pytest.raises(ConfigurationError, match=r"lane 'reports': queue_timeout"):
        RequestQueue(app).lane("reports", queue_timeout=0)
