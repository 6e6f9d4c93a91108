"""``RequestQueueMiddleware``: admission, waiting, rejection and release for any WSGI app; and the
property that slots never leak.

A slot is held by calling the WSGI app and not closing its response yet, which is exactly what a server does
while it sends a response: nothing here depends on timing.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import socket
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.test import EnvironBuilder

from flask_queue import (
    EXEMPT,
    ConfigurationError,
    RequestQueueMiddleware,
    signals,
)
from flask_queue._types import StartResponse, WSGIApplication, WSGIEnvironment
from tests._wsgi import Call, call_after_waiting, gated_stream, hello, stats_of

# -- RequestQueueMiddleware ----------------------------------------------------------------------------


def test_the_seeds_shape_works_with_documented_defaults() -> None:
    middleware = RequestQueueMiddleware(hello, max_queue_size=10)
    call = Call(middleware)
    assert (call.code, call.body) == (200, b"hello")
    call.close()
    assert stats_of(middleware)["limits"] == {
        "concurrency": 4,
        "max_queue_size": 10,
        "queue_timeout": 5.0,
        "max_age": None,
    }


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("concurrency", 0),
        ("concurrency", -3),
        ("max_queue_size", -1),
        ("queue_timeout", 0),
        ("queue_timeout", -2.5),
        ("max_age", 0.0),
        ("status", 200),
        ("status", 600),
        ("status", "503"),
    ],
)
def test_invalid_settings_raise_value_error_naming_them(setting: str, value: Any) -> None:
    settings: dict[str, Any] = {setting: value}
    with pytest.raises(ValueError, match=setting):
        RequestQueueMiddleware(hello, **settings)


def test_a_lane_name_cannot_be_defined_twice() -> None:
    middleware = RequestQueueMiddleware(hello, lanes={"slow": {"concurrency": 1}})
    with pytest.raises(ConfigurationError, match="'slow' is already defined"):
        middleware.add_lane("slow")


def test_a_full_lane_rejects_with_503_retry_after_and_a_text_body() -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=0)
    held = Call(middleware)
    rejected = Call(middleware)
    assert rejected.code == 503
    assert rejected.status == "503 Service Unavailable"
    assert int(rejected.headers["Retry-After"]) >= 1
    assert rejected.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert rejected.headers["Content-Length"] == str(len(rejected.body))
    assert rejected.headers["Cache-Control"] == "no-store"
    assert b"full" in rejected.body
    held.close()
    assert Call(middleware).code == 200


def test_a_client_accepting_json_gets_a_json_rejection() -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=0)
    held = Call(middleware)
    rejected = Call(middleware, headers={"Accept": "application/json"})
    assert rejected.headers["Content-Type"] == "application/json"
    body = rejected.json()
    assert body["reason"] == "full"
    assert body["retry_after"] == int(rejected.headers["Retry-After"])
    held.close()


def test_a_browser_accept_header_gets_text() -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=0)
    held = Call(middleware)
    rejected = Call(middleware, headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"})
    assert rejected.headers["Content-Type"].startswith("text/plain")
    held.close()


def test_status_429_is_configurable() -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=0, status=429)
    held = Call(middleware)
    rejected = Call(middleware)
    assert rejected.status == "429 Too Many Requests"
    assert "Retry-After" in rejected.headers
    held.close()


def test_a_custom_rejection_gets_retry_after_added_unless_it_sets_one() -> None:
    seen: list[tuple[str, int]] = []

    def reject(environ: WSGIEnvironment, reason: str, retry_after: int) -> WSGIApplication:
        seen.append((reason, retry_after))

        def respond(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            headers = [("Content-Type", "text/plain")]
            if environ["PATH_INFO"] == "/own":
                headers.append(("retry-after", "99"))
            start_response("503 Go Away", headers)
            return [b"custom"]

        return respond

    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=0, reject_response=reject)
    held = Call(middleware)
    custom = Call(middleware)
    own = Call(middleware, "/own")
    assert (custom.status, custom.body) == ("503 Go Away", b"custom")
    assert custom.headers["Retry-After"] == str(seen[0][1])
    assert own.headers == {"Content-Type": "text/plain", "retry-after": "99"}
    assert [reason for reason, _ in seen] == ["full", "full"]
    held.close()


def test_the_slot_is_held_until_the_response_is_closed() -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=0)
    call = Call(middleware)
    assert call.body == b"hello"  # fully read, but not closed: a server may still be sending it
    assert stats_of(middleware)["running"] == 1
    call.close()
    assert stats_of(middleware)["running"] == 0


def test_a_streaming_response_keeps_its_slot_until_done() -> None:
    gate = threading.Event()
    middleware = RequestQueueMiddleware(gated_stream(gate), concurrency=1, max_queue_size=0)
    call = Call(middleware)
    chunks = iter(call.iterable)
    assert next(chunks) == b"first"
    assert Call(middleware).code == 503
    gate.set()
    assert list(chunks) == [b"last"]
    call.close()
    assert stats_of(middleware)["running"] == 0


def test_the_slot_is_released_when_the_app_raises() -> None:
    def broken(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        raise RuntimeError("boom")

    middleware = RequestQueueMiddleware(broken, concurrency=1, max_queue_size=0)
    for _ in range(3):
        with pytest.raises(RuntimeError, match="boom"):
            Call(middleware)
    assert stats_of(middleware)["running"] == 0


def test_the_slot_is_released_when_the_body_raises_midway() -> None:
    def broken(environ: WSGIEnvironment, start_response: StartResponse) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"partial"
        raise RuntimeError("boom")

    middleware = RequestQueueMiddleware(broken, concurrency=1, max_queue_size=0)
    call = Call(middleware)
    with pytest.raises(RuntimeError, match="boom"):
        call.body  # noqa: B018
    call.close()  # a server closes the iterable whatever happened
    assert stats_of(middleware)["running"] == 0


def test_the_slot_is_released_even_when_close_raises() -> None:
    class BadClose:
        def __iter__(self) -> Iterator[bytes]:
            return iter([b"x"])

        def close(self) -> None:
            raise OSError("close failed")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        start_response("200 OK", [])
        return BadClose()

    middleware = RequestQueueMiddleware(app, concurrency=1, max_queue_size=0)
    call = Call(middleware)
    with pytest.raises(OSError, match="close failed"):
        call.close()
    assert stats_of(middleware)["running"] == 0


def test_a_response_dropped_without_close_releases_its_slot() -> None:
    """Werkzeug's test client leaves close() to the caller; forgetting it must not leak the slot."""
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=0)
    call = Call(middleware)
    del call
    gc.collect()
    assert stats_of(middleware)["running"] == 0


def test_closing_twice_releases_once() -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=2, max_queue_size=0)
    first, second = Call(middleware), Call(middleware)
    first.close()
    first.close()
    assert stats_of(middleware)["running"] == 1
    second.close()
    assert stats_of(middleware)["running"] == 0


def test_a_waiting_request_runs_when_a_slot_frees() -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=1, queue_timeout=30.0)
    call = call_after_waiting(middleware)  # fails unless the request really queued
    assert call.code == 200
    call.close()
    stats = stats_of(middleware)
    assert (stats["admitted"], stats["running"], stats["waiting"]) == (2, 0, 0)


def test_a_request_that_waits_too_long_is_rejected_timeout() -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=1, queue_timeout=0.05)
    held = Call(middleware)
    rejected = Call(middleware)
    assert rejected.code == 503
    assert b"timeout" in rejected.body
    assert stats_of(middleware)["rejected"]["timeout"] == 1
    held.close()


def test_x_request_start_older_than_max_age_is_rejected_without_running() -> None:
    ran: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        ran.append(environ["PATH_INFO"])
        return hello(environ, start_response)

    middleware = RequestQueueMiddleware(app, max_age=10.0)
    old = Call(middleware, "/old", headers={"X-Request-Start": "t=1000000000.000"})
    assert old.code == 503
    assert b"too_old" in old.body
    assert ran == []
    assert stats_of(middleware)["upstream_ms"]["p50"] > 10_000


@pytest.mark.parametrize("value", ["garbage", "t=", "-5", "99999999999999", "t=4102444800.000"])
def test_a_malformed_or_future_x_request_start_is_served(value: str) -> None:
    middleware = RequestQueueMiddleware(hello, max_age=1.0)
    call = Call(middleware, headers={"X-Request-Start": value})
    assert call.code == 200
    call.close()


def test_priority_classes_are_served_in_order_and_shed_the_least_important() -> None:
    served: list[str] = []
    released = threading.Semaphore(0)

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        served.append(environ["PATH_INFO"])
        return hello(environ, start_response)

    middleware = RequestQueueMiddleware(
        app,
        concurrency=1,
        max_queue_size=2,
        queue_timeout=30.0,
        classify=lambda environ: int(environ.get("HTTP_X_CLASS", "1")),
    )
    waiting = threading.Semaphore(0)
    outcomes: dict[str, int] = {}

    def client(path: str, klass: str) -> None:
        call = Call(middleware, path, headers={"X-Class": klass})
        outcomes[path] = call.code
        call.close()
        released.release()

    with signals.request_queued.connected_to(lambda sender, **kw: waiting.release(), sender=middleware):
        held = Call(middleware, "/held")
        threads = []
        for path, klass in [("/low-old", "1"), ("/low-new", "1"), ("/high", "0")]:
            thread = threading.Thread(target=client, args=(path, klass))
            thread.start()
            threads.append(thread)
            assert waiting.acquire(timeout=5)
        assert released.acquire(timeout=5)  # /low-new was shed and has answered
        assert outcomes == {"/low-new": 503}
        held.close()
        for thread in threads:
            thread.join(5)
        assert served == ["/held", "/high", "/low-old"]
        assert stats_of(middleware)["rejected"]["shed"] == 1


@pytest.mark.parametrize(
    "classify",
    [
        pytest.param(lambda environ: 1 // 0, id="raises"),
        pytest.param(lambda environ: "high", id="not-an-int"),
    ],
)
def test_a_broken_classify_puts_requests_in_class_0_and_logs_once(
    classify: Any, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = RequestQueueMiddleware(hello, classify=classify)
    with caplog.at_level(logging.ERROR, logger="flask_queue.request_queue"):
        for _ in range(3):
            call = Call(middleware)
            assert call.code == 200
            call.close()
    assert len([r for r in caplog.records if "classify failed" in r.getMessage()]) == 1


def test_a_broken_lane_selector_uses_the_default_lane_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    middleware = RequestQueueMiddleware(hello, select_lane=lambda environ: "no-such-lane")
    with caplog.at_level(logging.ERROR, logger="flask_queue.request_queue"):
        for _ in range(2):
            call = Call(middleware)
            assert call.code == 200
            call.close()
    assert stats_of(middleware)["admitted"] == 2
    assert len([r for r in caplog.records if "select_lane failed" in r.getMessage()]) == 1


def test_lanes_are_independent_and_exempt_requests_are_never_queued() -> None:
    def select(environ: WSGIEnvironment) -> Any:
        path = environ["PATH_INFO"]
        return {"/report": "reports", "/health": EXEMPT}.get(path)

    middleware = RequestQueueMiddleware(
        hello,
        concurrency=1,
        max_queue_size=0,
        lanes={"reports": {"concurrency": 1}},
        select_lane=select,
    )
    held_default, held_report = Call(middleware, "/"), Call(middleware, "/report")
    assert Call(middleware, "/").code == 503
    assert Call(middleware, "/report").code == 503
    health = Call(middleware, "/health")
    assert health.code == 200
    health.close()
    stats = middleware.stats()["lanes"]
    assert stats["reports"]["limits"]["max_queue_size"] == 0  # inherited from the default lane
    assert (stats["default"]["admitted"], stats["reports"]["admitted"]) == (1, 1)
    held_default.close()
    held_report.close()


def test_a_waiter_whose_client_left_is_not_run(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ran: list[str] = []

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        ran.append(environ["PATH_INFO"])
        return hello(environ, start_response)

    middleware = RequestQueueMiddleware(app, concurrency=1, max_queue_size=1, queue_timeout=30.0)
    ours, theirs = socket.socketpair()
    theirs.close()  # the client hung up while its request waited
    try:
        with caplog.at_level(logging.INFO, logger="flask_queue.request_queue"):
            call = call_after_waiting(middleware, {"gunicorn.socket": ours})
    finally:
        ours.close()
    assert call.code == 503
    assert b"disconnected" in call.body
    assert ran == ["/held"]
    stats = stats_of(middleware)
    assert (stats["admitted"], stats["rejected"]["disconnected"], stats["running"]) == (
        1,
        1,
        0,
    )
    assert any("disconnected" in record.getMessage() for record in caplog.records)


def test_a_waiter_whose_client_is_still_there_runs() -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=1, queue_timeout=30.0)
    ours, theirs = socket.socketpair()
    unconnected = socket.socket()
    try:
        theirs.sendall(b"pipelined bytes count as a live client")
        call = call_after_waiting(middleware, {"gunicorn.socket": ours})
        assert call.code == 200
        call.close()
        idle = call_after_waiting(middleware, {"gunicorn.socket": unconnected})
        assert idle.code == 200  # an unusable socket is no proof the client left
        idle.close()
    finally:
        for each in (ours, theirs, unconnected):
            each.close()


@pytest.mark.parametrize(("gone", "code"), [(True, 503), (False, 200)])
def test_waitress_tells_whether_the_client_left(gone: bool, code: int) -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=1, queue_timeout=30.0)
    call = call_after_waiting(middleware, {"waitress.client_disconnected": lambda: gone})
    assert call.code == code
    call.close()


def test_a_rejection_is_logged_with_its_reason(
    caplog: pytest.LogCaptureFixture,
) -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=0)
    held = Call(middleware)
    with caplog.at_level(logging.INFO, logger="flask_queue.request_queue"):
        Call(middleware, "/busy")
    assert any("/busy" in r.getMessage() and "full" in r.getMessage() for r in caplog.records)
    held.close()


def test_signals_carry_lane_reason_and_wait() -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=0)
    events: list[tuple[str, object, dict[str, Any]]] = []

    def on(name: str) -> Any:
        def receiver(sender: object, **extra: Any) -> None:
            events.append((name, sender, extra))

        return receiver

    admitted, rejected = on("admitted"), on("rejected")
    signals.request_admitted.connect(admitted)
    signals.request_rejected.connect(rejected)
    try:
        held = Call(middleware)
        Call(middleware)
        held.close()
    finally:
        signals.request_admitted.disconnect(admitted)
        signals.request_rejected.disconnect(rejected)
    assert [(name, sender) for name, sender, _ in events] == [
        ("admitted", middleware),
        ("rejected", middleware),
    ]
    assert events[0][2]["lane"] == "default"
    assert events[0][2]["wait"] >= 0.0
    assert events[1][2]["reason"] == "full"
    assert events[1][2]["retry_after"] >= 1


# -- property: slots never leak ------------------------------------------------------------------------

_BEHAVIOURS = ("ok", "raise_on_call", "raise_midway", "stream", "close_raises")


def _app_behaving(behaviour: str) -> WSGIApplication:
    class BadClose(list[bytes]):
        def close(self) -> None:
            raise OSError("close failed")

    def app(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if behaviour == "raise_on_call":
            raise RuntimeError("view failed")
        start_response("200 OK", [])
        if behaviour == "close_raises":
            return BadClose([b"x"])
        if behaviour in ("raise_midway", "stream"):

            def body() -> Iterator[bytes]:
                yield b"a"
                if behaviour == "raise_midway":
                    raise RuntimeError("body failed")
                yield b"b"

            return body()
        return [b"ok"]

    return app


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.sampled_from(_BEHAVIOURS), st.integers(0, 2), st.booleans()),
        min_size=1,
        max_size=12,
    ),
    concurrency=st.integers(1, 3),
)
def test_slots_never_leak_whatever_the_app_or_the_client_does(
    steps: list[tuple[str, int, bool]], concurrency: int
) -> None:
    """Open requests in any mix of behaviours; read each fully or stop after the first chunk; close all."""
    apps = {behaviour: _app_behaving(behaviour) for behaviour in _BEHAVIOURS}
    current = ["ok"]
    middleware = RequestQueueMiddleware(
        lambda environ, start_response: apps[current[0]](environ, start_response),
        concurrency=concurrency,
        max_queue_size=0,
    )
    open_responses: list[Iterable[bytes]] = []
    admitted = 0
    for behaviour, _, stop_early in steps:
        current[0] = behaviour
        status: list[str] = []

        def start_response(s: str, h: Any, e: Any = None, status: list[str] = status) -> Any:
            status.append(s)
            return lambda data: None

        try:
            iterable = middleware(EnvironBuilder().get_environ(), start_response)
        except RuntimeError:
            admitted += 1  # admitted, then the view raised: its slot is already back
            continue
        with contextlib.suppress(RuntimeError):
            chunks = iter(iterable)
            next(chunks, None)
            if not stop_early:
                for _ in chunks:
                    pass
        if status and status[0].startswith("200"):
            admitted += 1
        open_responses.append(iterable)
        assert stats_of(middleware)["running"] <= concurrency
    for iterable in open_responses:  # the server closes every response, read to the end or not
        close = getattr(iterable, "close", None)
        if close is not None:
            with contextlib.suppress(OSError):
                close()
    stats = stats_of(middleware)
    assert stats["running"] == 0
    assert stats["admitted"] == admitted
    assert stats["admitted"] + stats["rejected"]["full"] == len(steps)


@pytest.mark.parametrize(
    "signal", [signals.request_queued, signals.request_admitted, signals.request_rejected]
)
def test_a_raising_signal_receiver_neither_leaks_a_slot_nor_fails_the_request(
    signal: Any, caplog: pytest.LogCaptureFixture
) -> None:
    middleware = RequestQueueMiddleware(hello, concurrency=1, max_queue_size=1, queue_timeout=0.05)

    def broken(sender: object, **extra: Any) -> None:
        raise RuntimeError("receiver failed")

    with caplog.at_level(logging.ERROR, logger="flask_queue.request_queue"), signal.connected_to(broken):
        held = Call(middleware)
        waited = Call(middleware)  # queued, then times out: the slot is held
        held.close()
        after = Call(middleware)
        codes = (held.code, waited.code, after.code)
        after.close()
    assert codes == (200, 503, 200)
    stats = stats_of(middleware)
    assert (stats["running"], stats["waiting"]) == (0, 0)
    assert any("receiver" in record.getMessage() for record in caplog.records)


def test_a_middleware_around_something_that_is_not_an_app_raises_at_once() -> None:
    with pytest.raises(TypeError, match="RequestQueueMiddleware wraps a WSGI application"):
        RequestQueueMiddleware("app:app")  # type: ignore[arg-type]
