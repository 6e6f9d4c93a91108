"""Regression tests of the request queue: a slot is released exactly once, whatever the body or the server does. Each failed before its fix."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest

from flask_queue import RequestQueueMiddleware, signals
from flask_queue._types import StartResponse, WSGIEnvironment
from tests._wsgi import Call, call_after_waiting, gated_stream, hello, stats_of


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
