"""The WSGIPlusWorker against a real gunicorn: raw WSGI+ applications written to the seed's RFC.

Every hole of the proof of concept is a test here: a future already done, one that raises, one cancelled,
one that never completes (suspend timeout), a client that leaves while parked, keep-alive across a park,
Futures after the headers, and something that is neither bytes nor a Future.
"""

from __future__ import annotations

import socket
import time

from tests.servers._live import wait_for

from .conftest import SUSPEND_TIMEOUT, Client, fetch_concurrently


def test_the_seed_rfc_example_parks_and_resumes_with_the_result(live: Client) -> None:
    response = live.get("/raw/rfc?s=0.2")
    assert response.status_code == 200
    assert response.text.startswith("Hi! waited ")  # the future's result was sent into the generator
    assert response.text.rstrip().endswith("(1, 0)")  # environ["wsgi_plus.version"]


def test_a_future_done_before_it_is_yielded_resumes_at_once_without_racing(live: Client) -> None:
    responses = [live.get("/raw/done") for _ in range(5)]
    assert [(r.status_code, r.text) for r in responses] == [(200, str(sum(range(100))))] * 5


def test_a_failing_future_is_thrown_into_the_app_which_may_handle_it(live: Client) -> None:
    response = live.get("/raw/raise?handle=1")
    assert (response.status_code, response.text) == (200, "handled: upstream failed")


def test_a_failing_future_the_app_does_not_handle_is_a_500(live: Client) -> None:
    response = live.get("/raw/raise")
    assert response.status_code == 500
    assert "ValueError: upstream failed" in live.log()


def test_a_cancelled_future_is_thrown_in_as_cancelled_error(live: Client) -> None:
    with live.session() as session:
        pending = _send_raw(live, "/raw/cancelled?name=cancel-handled&handle=1")
        try:
            _wait_gate(live, "cancel-handled")
            session.post(live.url + "/gate/cancel-handled/cancel", timeout=10)
            reply = _read_raw(pending)
            assert reply.startswith(b"HTTP/1.1 200")
            assert b"\r\ncancelled\r\n" in reply
        finally:
            pending.close()


def test_a_cancelled_future_the_app_does_not_handle_is_a_500(live: Client) -> None:
    pending = _send_raw(live, "/raw/cancelled?name=cancel-unhandled")
    try:
        _wait_gate(live, "cancel-unhandled")
        live.post("/gate/cancel-unhandled/cancel")
        assert _read_raw(pending).startswith(b"HTTP/1.1 500")
    finally:
        pending.close()


def test_a_park_longer_than_the_suspend_timeout_is_a_504_and_its_future_is_cancelled(live: Client) -> None:
    started = time.monotonic()
    response = live.get("/raw/gate/never")
    assert response.status_code == 504
    assert time.monotonic() - started >= SUSPEND_TIMEOUT * 0.9
    assert live.get("/gate/never/state").json() == {"done": True, "cancelled": True}
    assert "closed never" in live.get("/events").json()  # the app's generator was closed
    assert "parked longer than WSGI_PLUS_SUSPEND_TIMEOUT" in live.log()


def test_futures_yielded_after_the_headers_park_the_stream(live: Client) -> None:
    response = live.get("/raw/stream")
    assert (response.status_code, response.text) == (200, "abc")


def test_yielding_neither_bytes_nor_a_future_is_a_500_with_a_clear_log_line(live: Client) -> None:
    response = live.get("/raw/bad")
    assert response.status_code == 500
    assert "yielded a int before its headers were sent" in live.log()
    assert "may yield only bytes or a concurrent.futures.Future" in live.log()


def test_a_client_that_leaves_while_parked_cancels_its_future(live: Client) -> None:
    pending = _send_raw(live, "/raw/gate/left")
    _wait_gate(live, "left")
    pending.close()
    wait_for(
        "the future to be cancelled", lambda: live.get("/gate/left/state").json(), lambda s: s["cancelled"]
    )
    wait_for(
        "the app's generator to be closed", lambda: live.get("/events").json(), lambda e: "closed left" in e
    )


def test_keep_alive_holds_across_a_park(live: Client) -> None:
    with live.session() as session:
        first = session.get(live.url + "/raw/rfc?s=0.1", timeout=10)
        second = session.get(live.url + "/raw/rfc?s=0.1", timeout=10)
    assert first.status_code == second.status_code == 200
    assert first.headers.get("Connection", "keep-alive").lower() != "close"
    port_first, port_second = first.text.split()[3], second.text.split()[3]
    assert port_first == port_second  # the same client connection served both


def test_200_parked_requests_on_2_threads_finish_in_about_one_park(live: Client) -> None:
    park = 1.0
    started = time.monotonic()
    results = fetch_concurrently(live.server.port, [f"/raw/rfc?s={park}"] * 200)
    elapsed = time.monotonic() - started
    assert [status for status, _ in results] == [200] * 200
    serial = 200 * park / 2  # two threads, each holding a request for the whole park
    assert elapsed < serial / 5, f"200 parks of {park} s took {elapsed:.1f} s (serial: {serial:.0f} s)"


def test_a_park_that_ended_is_forgotten_at_once_not_kept_for_the_suspend_timeout(live: Client) -> None:
    # Kept for the suspend timeout (a minute by default), the parks of a busy worker held tens of thousands
    # of requests: memory, and full garbage collections of half a second that stalled every request.
    results = fetch_concurrently(live.server.port, ["/flask/tracked"] * 40)
    assert [status for status, _ in results] == [200] * 40
    kept = wait_for(
        "the ended parks to be forgotten",
        lambda: live.get("/kept").json(),
        lambda kept: kept == {"requests": 0, "parks": 0},
        timeout=SUSPEND_TIMEOUT / 2,
    )
    assert kept == {"requests": 0, "parks": 0}


def test_a_long_park_keeps_nothing_of_the_requests_parked_after_it(live: Client) -> None:
    # Behind a park still waiting (a long poll), the ended ones cannot leave the deadline queue from its
    # head: they hold nothing of their requests, and are dropped from the queue now and then.
    pending = _send_raw(live, "/raw/gate/long-park")
    try:
        _wait_gate(live, "long-park")
        results = fetch_concurrently(live.server.port, ["/flask/tracked"] * 200)
        assert [status for status, _ in results] == [200] * 200
        wait_for(
            "the requests parked after the long one to be freed",
            lambda: live.get("/kept").json(),
            lambda kept: kept["requests"] == 0 and kept["parks"] < 100,
            timeout=SUSPEND_TIMEOUT / 2,
        )
        live.post("/gate/long-park/open")
        assert _read_raw(pending).startswith(b"HTTP/1.1 200")
    finally:
        pending.close()


def test_clients_that_hang_up_as_soon_as_answered_after_a_long_park_leave_the_worker_serving(
    live: Client,
) -> None:
    # Parked past WATCH_AFTER, each socket is watched for a client that leaves. A client that closes as soon
    # as it has its response makes the socket readable in the same turn of the main loop that ends the park:
    # that event, read after the park was over, crashed the worker (and dropped every other parked request).
    pid = live.get("/health").json()["pid"]
    results = fetch_concurrently(live.server.port, ["/flask/sleep?s=0.7"] * 100, hang_up=True)
    assert [status for status, _ in results] == [200] * 100
    time.sleep(0.5)  # the main loop's turns after the hang-ups
    assert live.get("/health").json()["pid"] == pid
    assert "Exception in worker process" not in live.log()


# -- helpers -------------------------------------------------------------------------------------------------


def _send_raw(live: Client, path: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", live.server.port), timeout=20)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
    return sock


def _read_raw(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def _wait_gate(live: Client, name: str) -> None:
    """Wait until the request waiting on gate ``name`` has reached it (and is parked, a moment later)."""
    wait_for(f"gate {name!r} to be waited on", lambda: live.get("/gates").json(), lambda names: name in names)
