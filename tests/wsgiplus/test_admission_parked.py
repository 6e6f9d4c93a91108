"""RequestQueueMiddleware in a WSGI+ environ, in process: a waiting request yields a Future for its slot."""

from __future__ import annotations

from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

from werkzeug.test import EnvironBuilder

from flask_queue import RequestQueueMiddleware
from flask_queue._types import StartResponse, WSGIEnvironment
from flask_queue.request_queue.lane import ADMITTED, REJECTED, WAITING, Lane


def _ok(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


class _Parked:
    """A request in a WSGI+ environ, driven one step at a time as a WSGI+ server would."""

    def __init__(self, app: Any) -> None:
        self.status = ""
        environ = EnvironBuilder(path="/").get_environ()
        environ["wsgi_plus.version"] = (1, 0)
        self.iterable = app(environ, self._start_response)
        self.iterator = iter(self.iterable)

    def _start_response(self, status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        self.status = status
        return lambda data: None

    def step(self) -> Any:
        return next(self.iterator)

    def rest(self) -> bytes:
        return b"".join(self.iterator)

    def close(self) -> None:
        self.iterable.close()


def _middleware(**limits: Any) -> RequestQueueMiddleware:
    return RequestQueueMiddleware(_ok, concurrency=1, max_queue_size=5, **limits)


def test_a_waiting_request_yields_a_future_resolved_when_the_slot_is_handed_over() -> None:
    middleware = _middleware()
    holder = _Parked(middleware)
    assert holder.rest() == b"ok"  # admitted at once: the body as usual, slot held until close
    waiter = _Parked(middleware)
    future = waiter.step()
    assert isinstance(future, Future)
    assert not future.done()
    assert middleware.stats()["lanes"]["default"]["waiting"] == 1
    holder.close()
    assert future.result(timeout=5) is None
    assert waiter.rest() == b"ok"
    assert waiter.status == "200 OK"
    waiter.close()
    lane = middleware.stats()["lanes"]["default"]
    assert (lane["running"], lane["waiting"], lane["admitted"]) == (0, 0, 2)


def test_a_parked_waiter_is_rejected_at_its_queue_timeout() -> None:
    middleware = _middleware(queue_timeout=0.05)
    holder = _Parked(middleware)
    holder.rest()
    waiter = _Parked(middleware)
    future = waiter.step()
    future.result(timeout=5)  # resolved by the deadline on the event loop, not by a release
    body = waiter.rest()
    assert waiter.status.startswith("503")
    assert b"timeout" in body
    waiter.close()
    holder.close()
    assert middleware.stats()["lanes"]["default"]["rejected"]["timeout"] == 1


def test_a_parked_waiter_closed_by_the_server_is_withdrawn_as_disconnected() -> None:
    middleware = _middleware()
    holder = _Parked(middleware)
    holder.rest()
    waiter = _Parked(middleware)
    future = waiter.step()
    future.cancel()  # what the server does when the client leaves
    waiter.close()
    lane = middleware.stats()["lanes"]["default"]
    assert (lane["waiting"], lane["rejected"]["disconnected"]) == (0, 1)
    holder.close()
    assert middleware.stats()["lanes"]["default"]["running"] == 0


def test_call_when_decided_runs_once_admitted_or_at_once_when_not_waiting() -> None:
    lane = Lane("l", concurrency=1, max_queue_size=1, queue_timeout=10.0)
    first = lane.arrive()
    calls: list[str] = []
    lane.call_when_decided(first, lambda: calls.append("first"))  # admitted: called at once
    second = lane.arrive()
    assert second.state == WAITING
    seconds, reason = lane.time_left(second)
    assert 0 < seconds <= 10.0
    assert reason == "timeout"
    lane.call_when_decided(second, lambda: calls.append("second"))
    assert calls == ["first"]
    lane.release(first)
    assert calls == ["first", "second"]
    assert second.state == ADMITTED
    lane.release(second)
    assert first.state != REJECTED
