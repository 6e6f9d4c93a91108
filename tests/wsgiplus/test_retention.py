"""What of a request the WSGI+ worker's process still keeps after the request ended: nothing.

Served app: ``served_retention.py`` (a token per request in its environ and its context; counted weakly).
Counts are read by a monitor thread of the served process, not by a request, so that the request threads
are not disturbed by the question.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.servers._live import ServerProcess, wait_for

from . import _server
from .conftest import Client, fetch_concurrently, require_gunicorn

SUSPEND_TIMEOUT = 3.0


@pytest.fixture
def probe_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "probe"
    directory.mkdir()
    return directory


@pytest.fixture
def retention_server(tmp_path: Path, probe_dir: Path) -> Iterator[ServerProcess]:
    """served_retention:app on a gunicorn of its own (one per test: what one test leaves kept is its own)."""
    require_gunicorn()
    server = _server.start(
        "wsgiplus",
        tmp_path,
        threads=2,
        env={"WSGI_PLUS_SUSPEND_TIMEOUT": str(SUSPEND_TIMEOUT), "RETENTION_PROBE_DIR": str(probe_dir)},
        app="served_retention:app",
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def served(retention_server: ServerProcess) -> Client:
    return Client(retention_server)


def kept(probe_dir: Path) -> int:
    """Requests still in memory in the served process, counted by its monitor thread (no request made)."""
    out = probe_dir / "count"
    out.unlink(missing_ok=True)
    (probe_dir / "probe").write_text("")
    deadline = time.monotonic() + 10
    while not out.exists():
        assert time.monotonic() < deadline, "the monitor thread did not answer"
        time.sleep(0.02)
    return int(out.read_text())


def settle_then_count(probe_dir: Path, seconds: float = 1.0) -> int:
    # Past WATCH_AFTER and a few turns of the main loop: nothing of the worker's own bookkeeping is due.
    time.sleep(seconds)
    return kept(probe_dir)


def test_a_handled_failed_future_does_not_keep_the_request_in_an_idle_request_thread(
    served: Client, probe_dir: Path
) -> None:
    # _Pool._serve keeps `call, fn, args` of its last call while it blocks for the next: for a resumed step
    # that is (park, _resume, value, error), and the error's traceback reaches the request's frames
    # (wsgiplus.views._resume's `ctx`, the view's generator): the whole request, for as long as the thread idles.
    results = fetch_concurrently(served.server.port, ["/tracked/failed"] * 8)
    assert [(status, body) for status, body in results] == [(200, b"handled")] * 8
    assert settle_then_count(probe_dir) == 0


def test_a_request_queue_waiter_leaves_nothing_once_admitted_and_answered(
    served: Client, probe_dir: Path
) -> None:
    # The waiter's queue_timeout timer (wsgiplus.call_later) is made in a copy of the request's context
    # (here: the ContextVar an outer middleware set). Cancelled when the waiter is admitted, the handle keeps
    # its context (asyncio clears only the callback) and stays in the loop's heap until it was due
    # (queue_timeout: 30 s here) whenever a live timer is ahead of it, up to asyncio's purge (> 100
    # scheduled, > 50 % cancelled). Without the app's timer asyncio drops them from the head at once.
    served.post("/arm-timer?s=20")  # an app's timer due before the waiters' (at the head of the loop's heap)
    with ThreadPoolExecutor(max_workers=6) as clients:
        holder = clients.submit(served.get, "/tracked/queued/r1")
        wait_for("the holder to park", lambda: kept(probe_dir), lambda n: n == 1)
        waiters = [clients.submit(served.get, "/tracked/queued/r1") for _ in range(5)]
        wait_for("5 waiters to queue", lambda: kept(probe_dir), lambda n: n == 6)
        time.sleep(0.2)
        served.post("/gate/r1/open")
        responses = [holder.result(), *(waiter.result() for waiter in waiters)]
    assert [r.status_code for r in responses] == [200] * 6
    assert settle_then_count(probe_dir) == 0
