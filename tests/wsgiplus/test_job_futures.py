"""Meeting point of the task queue and WSGI+: a view yields ``job.future()`` and holds no thread meanwhile."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.servers._live import REQUEST_TIMEOUT, ServerProcess, wait_for

from . import _server
from .conftest import require_gunicorn

#: Requests waiting on jobs at once, on a server of 2 threads.
WAITING = 20


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerProcess]:
    require_gunicorn()
    server = _server.start("wsgiplus", tmp_path, threads=2, app="served_jobs:app")
    try:
        yield server
    finally:
        server.stop()


def test_views_wait_for_jobs_without_holding_threads(server: ServerProcess) -> None:
    url = server.base_url
    with ThreadPoolExecutor(WAITING) as pool:
        replies = [
            pool.submit(requests.get, f"{url}/double/{n}", timeout=REQUEST_TIMEOUT) for n in range(WAITING)
        ]
        # Every request has enqueued its job, and every job is still blocked: 20 requests are waiting at once
        # on a server of 2 threads, so none of them holds a thread.
        wait_for(
            "every request to wait on its job",
            lambda: requests.get(f"{url}/started", timeout=REQUEST_TIMEOUT).json()["started"],
            lambda started: started == WAITING,
        )
        assert not any(reply.done() for reply in replies)
        assert requests.post(f"{url}/release", timeout=REQUEST_TIMEOUT).status_code == 200
        answers = [reply.result(timeout=REQUEST_TIMEOUT) for reply in replies]
    assert [answer.status_code for answer in answers] == [200] * WAITING
    assert [answer.json() for answer in answers] == [{"n": n, "result": n * 2} for n in range(WAITING)]


def test_a_failed_job_is_raised_into_the_view(server: ServerProcess) -> None:
    reply = requests.get(f"{server.base_url}/broken", timeout=REQUEST_TIMEOUT)
    assert reply.json() == {"error": "TaskFailed", "message": reply.json()["message"]}
    assert "ValueError: the job failed" in reply.json()["message"]
