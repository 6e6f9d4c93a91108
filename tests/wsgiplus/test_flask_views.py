"""Suspendable and ``async def`` Flask views under the WSGIPlusWorker (a real gunicorn, 2 threads).

The Flask app sits behind a RequestQueue and a plain middleware, as real apps do, so the futures travel
through both on their way to the server.
"""

from __future__ import annotations

import time

import pytest

from tests.servers._live import wait_for

from .conftest import SUSPEND_TIMEOUT, Client, fetch_concurrently


def test_request_and_app_context_survive_resumes_on_other_threads(live: Client) -> None:
    response = live.get("/flask/context?tag=t1")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["tag"] == "t1"  # request, after two parks
    assert body["g"] == "t1"  # g, set before the first park
    assert body["marked"] == "/flask/context"  # set by before_request
    assert body["values"] == ["first", "second for t1"]  # results sent in; in_thread saw the request
    assert response.headers["X-After"] == "/flask/context yes"  # after_request ran after the view
    assert "teardown /flask/context" in live.get("/events").json()


def test_concurrent_parked_views_keep_their_own_request(live: Client) -> None:
    tags = [f"t{i}" for i in range(40)]
    results = fetch_concurrently(live.server.port, [f"/flask/context?tag={tag}" for tag in tags])
    assert [status for status, _ in results] == [200] * len(tags)
    for tag, (_, body) in zip(tags, results, strict=True):
        assert f'"tag":"{tag}"'.encode() in body.replace(b" ", b"")


def test_a_done_future_is_resumed_in_place(live: Client) -> None:
    assert live.get("/flask/done").json() == {"value": "ready"}


def test_try_except_around_yield_catches_a_failing_future(live: Client) -> None:
    assert live.get("/flask/raise?handle=1").json() == {"handled": "upstream failed"}


def test_an_unhandled_failing_future_is_flask_s_500(live: Client) -> None:
    response = live.get("/flask/raise")
    assert response.status_code == 500
    assert "Internal Server Error" in response.text
    assert "teardown /flask/raise" in live.get("/events").json()


@pytest.mark.parametrize(
    ("path", "hint"),
    [
        ("/flask/undecorated", "needs @suspendable"),
        ("/flask/decorator-above", "@suspendable is above the route decorator"),
    ],
)
def test_a_view_that_yields_a_future_without_suspendable_is_a_500_that_names_the_fix(
    live: Client, path: str, hint: str
) -> None:
    """It answered 200 with the Future's result sent into a streamed body (an empty one, or None)."""
    response = live.get(path)
    assert response.status_code == 500
    wait_for("the error in the log", live.log, lambda log: hint in log)


def test_a_cancelled_future_raises_cancelled_error_in_the_view(live: Client) -> None:
    with live.session() as session:
        reply = _Background(live, "/flask/cancelled/fc")
        wait_for("the view to wait", lambda: live.get("/gates").json(), lambda names: "fc" in names)
        session.post(live.url + "/gate/fc/cancel", timeout=10)
        assert reply.result() == (200, {"cancelled": True})


def test_a_parked_view_past_the_suspend_timeout_is_a_504_and_its_context_torn_down(live: Client) -> None:
    response = live.get("/flask/gate/flask-never")
    assert response.status_code == 504
    assert live.get("/gate/flask-never/state").json() == {"done": True, "cancelled": True}
    assert "teardown /flask/gate/flask-never" in live.get("/events").json()
    assert SUSPEND_TIMEOUT > 0


def test_async_views_are_parked_on_the_event_loop_not_a_thread(live: Client) -> None:
    started = time.monotonic()
    results = fetch_concurrently(live.server.port, [f"/flask/async?s=1&tag=a{i}" for i in range(40)])
    elapsed = time.monotonic() - started
    assert [status for status, _ in results] == [200] * 40
    assert b'"marked":"/flask/async"' in results[0][1].replace(b" ", b"")
    # Holding one of the 2 threads for each 1 s wait would take 20 s.
    assert elapsed < 10, f"40 async views of 1 s took {elapsed:.1f} s on 2 threads"


def test_keep_alive_holds_across_a_parked_view(live: Client) -> None:
    with live.session() as session:
        first = session.get(live.url + "/flask/context?tag=k1", timeout=10)
        second = session.get(live.url + "/flask/context?tag=k2", timeout=10)
    assert (first.json()["tag"], second.json()["tag"]) == ("k1", "k2")


class _Background:
    """One request sent from a thread of its own (joined by ``result``)."""

    def __init__(self, live: Client, path: str) -> None:
        import threading

        self._result: tuple[int, object] | None = None

        def run() -> None:
            response = live.get(path)
            self._result = (response.status_code, response.json())

        self._thread = threading.Thread(target=run)
        self._thread.start()

    def result(self, timeout: float = 20.0) -> tuple[int, object] | None:
        self._thread.join(timeout)
        assert not self._thread.is_alive()
        return self._result


def test_suspendable_views_hold_no_thread_while_parked(live: Client) -> None:
    started = time.monotonic()
    results = fetch_concurrently(live.server.port, ["/flask/sleep?s=1"] * 40)
    elapsed = time.monotonic() - started
    assert [status for status, _ in results] == [200] * 40
    assert elapsed < 10, f"40 suspendable views of 1 s took {elapsed:.1f} s on 2 threads"
    assert "waited in place" not in live.log()  # the worker set the Flask app up for parking
