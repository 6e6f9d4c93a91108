"""The request queue under real servers: gunicorn (gthread worker) and waitress, each in a subprocess.

Each behaviour runs against both servers (the ``server`` fixture is parametrized). The app they serve is
``served_app.py``: views hold their request until the test opens a gate, so every outcome is decided
by the state the test waits for in ``/stats``, never by a sleep. Lanes there (default 2 running + 2
waiting; ``reports``, ``prio``, ``short``, ``aged``, ``stream``, ``crash``; ``/raw`` with status 429) keep
the tests apart, and each test leaves every lane idle.
"""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from concurrent.futures import Future

import pytest
import requests

from tests.servers._live import REQUEST_TIMEOUT, Client, Stats, wait_for

JSON = {"Accept": "application/json"}
REASONS = ("full", "timeout", "too_old", "shed", "disconnected")


def assert_rejected(response: requests.Response, reason: str, status: int = 503) -> int:
    """Check a rejection: the status, an integer ``Retry-After`` >= 1, the JSON body; return Retry-After."""
    assert response.status_code == status, response.text
    retry_after = response.headers.get("Retry-After", "")
    assert retry_after.isdigit(), f"Retry-After is not a whole number of seconds: {retry_after!r}"
    assert int(retry_after) >= 1
    assert response.headers["Content-Type"] == "application/json"
    message = "Too many requests" if status == 429 else "The server is busy"
    assert response.json() == {
        "error": message,
        "reason": reason,
        "retry_after": int(retry_after),
    }
    return int(retry_after)


def rejected_since(before: Stats, after: Stats) -> dict[str, int]:
    return {reason: after["rejected"][reason] - before["rejected"][reason] for reason in REASONS}


def no_rejections() -> dict[str, int]:
    return dict.fromkeys(REASONS, 0)


def results(futures: list[Future[requests.Response]]) -> list[requests.Response]:
    return [future.result(timeout=REQUEST_TIMEOUT) for future in futures]


def open_stream(client: Client, path: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET ``path`` on a connection of its own and return once the headers are in; the caller closes both."""
    connection = http.client.HTTPConnection("127.0.0.1", client.server.port, timeout=REQUEST_TIMEOUT)
    try:
        connection.request("GET", path)
        return connection, connection.getresponse()
    except BaseException:
        connection.close()
        raise


def test_saturated_lane_rejects_beyond_its_queue_then_serves_the_rest(
    server: Client,
) -> None:
    """With concurrency=2 and max_queue_size=2, of 6 concurrent requests 2 run, 2 wait and 2 are rejected
    503 ``full`` at once with Retry-After and a JSON body; once released, the 4 others complete 200."""
    before = server.lane("default")
    gate = server.gate()
    futures = [server.submit(f"/block/{gate}?tag=r{i}", JSON) for i in range(6)]

    server.wait_lane(
        "default",
        lambda lane: (
            lane["running"] == 2
            and lane["waiting"] == 2
            and lane["rejected"]["full"] - before["rejected"]["full"] == 2
        ),
    )
    done = wait_for(
        "the two rejections to reach their clients",
        lambda: [future for future in futures if future.done()],
        lambda finished: len(finished) == 2,
    )
    for future in done:
        assert_rejected(future.result(), "full")
    held = [future for future in futures if future not in done]
    assert not any(future.done() for future in held)
    assert len(server.order(gate)) == 2  # only the two running ones entered the view

    server.release(gate)
    served = results(held)
    assert [response.status_code for response in served] == [200] * 4
    assert sorted(server.order(gate)) == sorted(response.text.strip() for response in served)

    after = server.wait_lane("default", lambda lane: lane["running"] == 0 and lane["waiting"] == 0)
    assert after["admitted"] - before["admitted"] == 4
    assert rejected_since(before, after) == {**no_rejections(), "full": 2}


def test_exempt_health_check_answers_while_the_lane_is_saturated(
    server: Client,
) -> None:
    """An ``@queue.exempt`` view answers 200 while the default lane runs 2, holds 2 waiting and rejects more."""
    gate = server.gate()
    held = [server.submit(f"/block/{gate}") for _ in range(4)]
    server.wait_lane("default", lambda lane: lane["running"] == 2 and lane["waiting"] == 2)
    assert_rejected(server.get("/fast", JSON), "full")

    health = server.get("/health")
    assert health.status_code == 200
    assert health.text == "ok\n"
    lane = server.lane("default")
    assert (lane["running"], lane["waiting"]) == (2, 2)

    server.release(gate)
    assert [response.status_code for response in results(held)] == [200] * 4


def test_saturated_lane_neither_delays_nor_rejects_the_default_lane(
    server: Client,
) -> None:
    """While the ``reports`` lane (``@queue.limit``) is saturated, default-lane requests are admitted at once:
    they complete while the reports requests are still held."""
    gate = server.gate()
    reports = [server.submit(f"/report/{gate}") for _ in range(2)]
    server.wait_lane("reports", lambda lane: lane["running"] == 1 and lane["waiting"] == 1)
    assert_rejected(server.get(f"/report/{gate}", JSON), "full")

    before = server.lane("default")
    for _ in range(3):
        response = server.get("/fast")
        assert response.status_code == 200
        assert response.text == "fast\n"
    after = server.lane("default")
    assert after["admitted"] - before["admitted"] == 3
    assert rejected_since(before, after) == no_rejections()
    reports_lane = server.lane("reports")
    assert (reports_lane["running"], reports_lane["waiting"]) == (1, 1)
    assert not any(future.done() for future in reports)

    server.release(gate)
    assert [response.status_code for response in results(reports)] == [200, 200]


def test_more_important_class_sheds_the_newest_waiter_and_is_served_first(
    server: Client,
) -> None:
    """With the line full of class-1 waiters, a class-0 request (``@queue.classify`` reads X-Priority) sheds
    the newest class-1 waiter (503 ``shed``) and is admitted before the older class-1 waiter."""
    low = {**JSON, "X-Priority": "1"}
    high = {**JSON, "X-Priority": "0"}
    before = server.lane("prio")
    gate = server.gate()
    holder = server.submit(f"/prio/{gate}?tag=holder", low)
    server.wait_lane("prio", lambda lane: lane["running"] == 1)
    oldest = server.submit(f"/prio/{gate}?tag=oldest", low)
    server.wait_lane("prio", lambda lane: lane["waiting"] == 1)
    newest = server.submit(f"/prio/{gate}?tag=newest", low)
    server.wait_lane("prio", lambda lane: lane["waiting"] == 2)

    urgent = server.submit(f"/prio/{gate}?tag=urgent", high)
    assert_rejected(newest.result(timeout=REQUEST_TIMEOUT), "shed")
    lane = server.lane("prio")
    assert (lane["running"], lane["waiting"]) == (1, 2)
    # The line is now [urgent, oldest]: one more class-1 request has no one less important to shed.
    assert_rejected(server.get(f"/prio/{gate}?tag=late", low), "full")
    assert not oldest.done()
    assert not urgent.done()

    server.release(gate)
    assert [response.text for response in results([holder, urgent, oldest])] == [
        "holder\n",
        "urgent\n",
        "oldest\n",
    ]
    assert server.order(gate) == ["holder", "urgent", "oldest"]
    after = server.wait_lane("prio", lambda lane: lane["running"] == 0)
    assert after["admitted"] - before["admitted"] == 3
    assert rejected_since(before, after) == {**no_rejections(), "shed": 1, "full": 1}


def test_request_waiting_longer_than_queue_timeout_is_rejected(server: Client) -> None:
    """In a lane with queue_timeout=0.3 s whose only slot is held until the test ends, a waiting request is
    rejected 503 ``timeout``."""
    gate = server.gate()
    holder = server.submit(f"/short/{gate}")
    before = server.wait_lane("short", lambda lane: lane["running"] == 1)

    assert_rejected(server.get(f"/short/{gate}", JSON), "timeout")
    after = server.lane("short")
    assert (after["running"], after["waiting"]) == (1, 0)
    assert after["admitted"] == before["admitted"]
    assert rejected_since(before, after) == {**no_rejections(), "timeout": 1}
    assert not holder.done()

    server.release(gate)
    assert holder.result(timeout=REQUEST_TIMEOUT).status_code == 200


def _seconds_ago(seconds: float, unit: float, prefix: str = "") -> Callable[[], str]:
    def value() -> str:
        started = time.time() - seconds
        return f"{prefix}{started:.3f}" if unit == 1 else f"{prefix}{int(started * unit)}"

    return value


@pytest.mark.parametrize(
    ("header", "value"),
    [
        pytest.param("X-Request-Start", _seconds_ago(60, 1, "t="), id="nginx-seconds"),
        pytest.param("X-Request-Start", _seconds_ago(60, 1e3), id="heroku-ms"),
        pytest.param("X-Queue-Start", _seconds_ago(60, 1e6, "t="), id="apache-us"),
        pytest.param("X-Request-Start", _seconds_ago(60, 1e9), id="ns"),
    ],
)
def test_request_older_than_max_age_is_rejected_at_once(
    server: Client, header: str, value: Callable[[], str]
) -> None:
    """A request whose start header says it began 60 s ago, in a lane with max_age=2 s and a free slot, is
    rejected 503 ``too_old`` without running."""
    before = server.lane("aged")
    assert before["running"] == 0  # a slot is free

    assert_rejected(server.get("/aged", {**JSON, header: value()}), "too_old")
    after = server.lane("aged")
    assert after["admitted"] == before["admitted"]
    assert rejected_since(before, after) == {**no_rejections(), "too_old": 1}


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(lambda: "soon", id="word"),
        pytest.param(lambda: "t=-5", id="negative"),
        pytest.param(lambda: "1e12", id="exponent"),
        pytest.param(lambda: "t=", id="empty-t"),
        pytest.param(lambda: "nan", id="nan"),
        pytest.param(lambda: "0x65f1a2b0", id="hex"),
        pytest.param(_seconds_ago(-3600, 1e3), id="future-ms"),
        pytest.param(_seconds_ago(-3600, 1, "t="), id="future-seconds"),
    ],
)
def test_malformed_or_future_request_start_is_served(server: Client, value: Callable[[], str]) -> None:
    """A start header that is not a plain non-negative number, or lies in the future, counts as no upstream
    wait: the request is served normally in the lane with max_age=2 s."""
    before = server.lane("aged")
    response = server.get("/aged", {"X-Request-Start": value()})
    assert response.status_code == 200
    assert response.text == "fresh\n"
    after = server.wait_lane("aged", lambda lane: lane["running"] == 0)
    assert after["admitted"] - before["admitted"] == 1
    assert rejected_since(before, after) == no_rejections()


def test_configured_status_429_carries_retry_after(server: Client) -> None:
    """A ``RequestQueueMiddleware(status=429)`` rejects with 429 and Retry-After: a JSON body when the client
    prefers JSON, a line of text otherwise."""
    before = server.lane("default", raw=True)
    gate = server.gate()
    holder = server.submit(f"/raw/block/{gate}")
    server.wait_lane("default", lambda lane: lane["running"] == 1, raw=True)

    retry_after = assert_rejected(server.get("/raw/other", JSON), "full", status=429)
    plain = server.get("/raw/other")
    assert plain.status_code == 429
    assert plain.headers["Retry-After"].isdigit()
    assert plain.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert plain.text == f"Too many requests (full); retry in {plain.headers['Retry-After']} s.\n"
    assert retry_after >= 1

    server.release(gate)
    assert holder.result(timeout=REQUEST_TIMEOUT).text == "raw\n"
    after = server.wait_lane("default", lambda lane: lane["running"] == 0, raw=True)
    assert rejected_since(before, after) == {**no_rejections(), "full": 2}


def test_streaming_response_keeps_its_slot_until_the_body_is_done(
    server: Client,
) -> None:
    """A streamed response holds its lane slot while it streams (running=1, a second request is rejected)
    and frees it once the body is done."""
    gate = server.gate()
    connection, response = open_stream(server, f"/stream/{gate}")
    try:
        assert response.status == 200
        assert response.read(6) == b"first\n"
        assert server.lane("stream")["running"] == 1
        assert_rejected(server.get(f"/stream/{gate}", JSON), "full")  # max_queue_size=0: the slot is taken

        server.release(gate)
        assert response.read() == b"last\n"
    finally:
        response.close()
        connection.close()

    server.wait_lane("stream", lambda lane: lane["running"] == 0)
    again = server.get(f"/stream/{gate}")
    assert again.status_code == 200
    assert again.text == "first\nlast\n"


def test_client_disconnecting_mid_stream_releases_the_slot(server: Client) -> None:
    """When the client goes away in the middle of an endless stream, the server closes the response and the
    slot is released."""
    before = server.lane("stream")
    gate = server.gate()
    connection, response = open_stream(server, f"/endless/{gate}")
    try:
        assert response.status == 200
        assert response.read(6) == b"first\n"
        assert server.lane("stream")["running"] == 1
    finally:
        response.close()
        connection.close()

    after = server.wait_lane("stream", lambda lane: lane["running"] == 0)
    assert server.order(gate) == ["closed"]  # the server closed the generator; the gate never opened
    assert after["admitted"] - before["admitted"] == 1


@pytest.mark.parametrize(
    "path",
    [
        pytest.param("/boom", id="view-raises"),
        pytest.param("/crash", id="raises-through-the-queue"),
    ],
)
def test_failing_request_answers_500_and_releases_its_slot(server: Client, path: str) -> None:
    """A view that raises (Flask answers 500), or an app that raises out of the WSGI call through the queue
    (the server answers 500), releases the slot of its lane (concurrency=1, no queue): the next request
    of the lane is admitted again."""
    before = server.lane("crash")
    for _ in range(2):
        response = server.get(path)
        assert response.status_code == 500
        server.wait_lane("crash", lambda lane: lane["running"] == 0)
    after = server.lane("crash")
    assert after["admitted"] - before["admitted"] == 2
    assert rejected_since(before, after) == no_rejections()


def test_exception_mid_stream_releases_the_slot(server: Client) -> None:
    """A streamed body that raises after its first chunk is cut short, and its slot is released."""
    before = server.lane("crash")
    connection, response = open_stream(server, "/broken-stream")
    try:
        assert response.status == 200
        assert response.read(6) == b"first\n"
        try:
            rest = response.read()
        except http.client.IncompleteRead as cut:  # the server cut the chunked body short
            rest = cut.partial
        except ConnectionError:
            rest = b""
        assert rest == b""
    finally:
        response.close()
        connection.close()

    after = server.wait_lane("crash", lambda lane: lane["running"] == 0)
    assert after["admitted"] - before["admitted"] == 1
    assert rejected_since(before, after) == no_rejections()


def test_gunicorn_workers_each_have_their_own_queue(
    gunicorn_two_workers: Client,
) -> None:
    """Under gunicorn with 2 workers the limits hold per process: each worker runs at most 2 and holds at most
    2 waiting; every one of 12 concurrent requests is answered, either 200 once released or 503 ``full``
    with Retry-After; and no more than 2 x (2 + 2) are admitted. (How the 12 connections spread over the
    workers is up to the kernel, so the split is not asserted.)"""
    client = gunicorn_two_workers
    total = 12
    gate = client.gate()
    futures = [client.submit(f"/block/{gate}", JSON) for _ in range(total)]
    per_worker: dict[int, Stats] = {}

    def saturated() -> int:
        """Record the lane of whichever worker answers; return the requests answered or accounted for."""
        stats = client.stats()
        lane = stats["lanes"]["default"]
        assert lane["running"] <= 2, lane
        assert lane["waiting"] <= 2, lane
        per_worker[stats["pid"]] = lane
        return held(per_worker) + sum(future.done() for future in futures)

    wait_for(
        f"all {total} requests to be held or answered",
        saturated,
        lambda count: count == total,
        timeout=15,
    )
    admitted = held(per_worker)
    client.release(gate)
    responses = results(futures)

    served = [response for response in responses if response.status_code == 200]
    rejected = [response for response in responses if response.status_code != 200]
    assert len(served) == admitted
    assert 4 <= admitted <= 8
    for response in rejected:
        assert_rejected(response, "full")
    idle = dict.fromkeys(per_worker, False)

    def all_idle() -> dict[int, bool]:
        stats = client.stats()
        idle[stats["pid"]] = stats["lanes"]["default"]["running"] == 0
        return idle

    wait_for("every worker to be idle", all_idle, lambda seen: all(seen.values()))


def held(per_worker: dict[int, Stats]) -> int:
    """Requests running or waiting in the default lane, summed over the workers' last figures."""
    return sum(int(lane["running"]) + int(lane["waiting"]) for lane in per_worker.values())


def test_a_client_that_hangs_up_while_waiting_is_never_run(server: Client) -> None:
    """The slot a waiting request is given goes on to the next one when its client has left: the view
    never runs it, and it counts as rejected ``disconnected``."""
    before = server.lane("gone")
    gate = server.gate()
    holder = server.submit(f"/gone/{gate}?tag=holder")
    server.wait_lane("gone", lambda lane: lane["running"] == 1)
    with socket.create_connection(("127.0.0.1", server.server.port), timeout=REQUEST_TIMEOUT) as leaver:
        leaver.sendall(f"GET /gone/{gate}?tag=leaver HTTP/1.1\r\nHost: test\r\n\r\n".encode())
        server.wait_lane("gone", lambda lane: lane["waiting"] == 1)
    server.release(gate)
    assert holder.result(timeout=REQUEST_TIMEOUT).status_code == 200
    after = server.wait_lane("gone", lambda lane: lane["running"] == 0 and lane["waiting"] == 0)
    assert server.order(gate) == ["holder"]
    assert rejected_since(before, after) == {**no_rejections(), "disconnected": 1}
