"""The request queue under the WSGIPlusWorker: requests waiting for a slot are parked, holding no thread.

The server has 2 threads. Lane ``one`` admits 1 request at a time; its views park on a gate until the test
opens it. Were waiting requests blocked on the lane, two of them would take both threads and ``/stats``
could not answer.
"""

from __future__ import annotations

import socket
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from tests.servers._live import wait_for

from .conftest import Client


def _lane(live: Client, name: str) -> dict[str, Any]:
    lane: dict[str, Any] = live.get("/stats").json()["lanes"][name]
    return lane


def test_waiting_requests_hold_no_thread_and_are_admitted_in_turn(live: Client) -> None:
    with ThreadPoolExecutor(max_workers=11) as clients:
        holder = clients.submit(live.get, "/queued/q1?n=0")
        wait_for(
            "the first request to hold the slot", lambda: _lane(live, "one"), lambda s: s["running"] == 1
        )
        waiters = [clients.submit(live.get, f"/queued/q1?n={n}") for n in range(1, 11)]
        lane = wait_for("10 requests to wait", lambda: _lane(live, "one"), lambda s: s["waiting"] == 10)
        assert lane["running"] == 1
        assert live.get("/health").status_code == 200  # both threads are free: nobody waits in one
        live.post("/gate/q1/open?value=go")
        responses = [holder.result(), *(waiter.result() for waiter in waiters)]
    assert [r.status_code for r in responses] == [200] * 11
    assert {r.json()["value"] for r in responses} == {"go"}
    lane = wait_for("the lane to be idle", lambda: _lane(live, "one"), lambda s: s["running"] == 0)
    assert lane["waiting"] == 0


def test_queue_timeout_still_rejects_a_parked_waiter(live: Client) -> None:
    with ThreadPoolExecutor(max_workers=1) as clients:
        holder = clients.submit(live.get, "/short/q2")
        wait_for("the slot to be taken", lambda: _lane(live, "short"), lambda s: s["running"] == 1)
        rejected_before = _lane(live, "short")["rejected"]["timeout"]
        started = time.monotonic()
        waiter = live.get("/short/q2")  # queue_timeout is 0.5 s; the holder waits for the gate
        waited = time.monotonic() - started
        assert waiter.status_code == 503
        assert waiter.headers["Retry-After"].isdigit()
        assert 0.4 < waited < 5
        assert _lane(live, "short")["rejected"]["timeout"] == rejected_before + 1
        live.post("/gate/q2/open")
        assert holder.result().status_code == 200


def test_a_parked_waiter_whose_client_leaves_is_withdrawn(live: Client) -> None:
    with ThreadPoolExecutor(max_workers=1) as clients:
        holder = clients.submit(live.get, "/queued/q3")
        wait_for("the slot to be taken", lambda: _lane(live, "one"), lambda s: s["running"] == 1)
        before = _lane(live, "one")["rejected"]["disconnected"]
        sock = socket.create_connection(("127.0.0.1", live.server.port), timeout=10)
        try:
            sock.sendall(b"GET /queued/q3 HTTP/1.1\r\nHost: test\r\n\r\n")
            wait_for("the request to wait", lambda: _lane(live, "one"), lambda s: s["waiting"] == 1)
        finally:
            sock.close()
        lane = wait_for(
            "the waiter to be withdrawn",
            lambda: _lane(live, "one"),
            lambda s: s["waiting"] == 0 and s["rejected"]["disconnected"] == before + 1,
        )
        assert lane["running"] == 1  # the holder still has its slot
        live.post("/gate/q3/open")
        assert holder.result().status_code == 200
