"""The demo app (``examples.demo``): its page, its exempt endpoints, its lanes under a burst.

Requests are held inside the views by a ``Gate`` passed as the demo's ``work`` function, and the tests wait
on the queue's own signals, so nothing here depends on timing. Every response is closed (``with``), because
a request's slot is released when its response closes.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from examples.demo import SELF_URL_KEY, WORK_BATCH, bursts_of, classify, create_app
from flask_queue import signals
from tests.servers._live import wait_for, waitress_in_thread

TIMEOUT = 10.0


class Gate:
    """The demo's ``work``: holds each request of ``endpoints`` in its view until opened."""

    def __init__(self, *endpoints: str) -> None:
        self.endpoints = endpoints or ("slow", "report")
        self._inside = threading.Semaphore(0)
        self._open = threading.Event()

    def __call__(self, endpoint: str) -> None:
        if endpoint not in self.endpoints:
            return
        self._inside.release()
        if not self._open.wait(TIMEOUT):
            raise RuntimeError("the test never opened the gate")

    def wait_inside(self, count: int = 1) -> None:
        """Return once ``count`` more requests are inside a view."""
        for _ in range(count):
            assert self._inside.acquire(timeout=TIMEOUT), "no request reached the view"

    def open(self) -> None:
        self._open.set()


class Tally:
    """A signal receiver that counts what it receives, and lets a test wait for a count."""

    def __init__(self) -> None:
        self._received = threading.Semaphore(0)
        self.reasons: list[str] = []

    def __call__(self, sender: object, **extra: Any) -> None:
        if "reason" in extra:
            self.reasons.append(extra["reason"])
        self._received.release()

    def wait(self, count: int = 1) -> None:
        for _ in range(count):
            assert self._received.acquire(timeout=TIMEOUT), "the signal never came"


class Get:
    """A GET in its own thread, through its own test client; the response is closed in that thread."""

    def __init__(self, app: Flask, path: str, headers: dict[str, str] | None = None) -> None:
        self.status = 0
        self.headers: dict[str, str] = {}
        self.body = b""
        self._thread = threading.Thread(target=self._run, args=(app, path, headers or {}), name=f"GET {path}")
        self._thread.start()

    def _run(self, app: Flask, path: str, headers: dict[str, str]) -> None:
        with app.test_client().get(path, headers=headers) as response:
            self.status = response.status_code
            self.headers = dict(response.headers)
            self.body = response.get_data()

    def join(self) -> Get:
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the request never finished"
        return self


MakeApp = Callable[..., Flask]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[MakeApp]:
    """``create_app`` with its task queue in a file of the test's own and no worker threads unless asked;
    teardown stops the workers and closes the file."""
    apps: list[Flask] = []

    def make(**kwargs: Any) -> Flask:
        kwargs.setdefault("task_backend", f"sqlite:///{tmp_path / f'jobs-{len(apps)}.sqlite3'}")
        kwargs.setdefault("task_workers", 0)
        app = create_app(**kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        tasks = app.extensions["flask-queue.tasks"].extension
        tasks.shutdown(app=app)
        tasks.backend(app).close()


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.open()  # a failed test must not leave its requests waiting


@pytest.fixture
def spawn(gate: Gate) -> Iterator[Callable[..., Get]]:
    """``spawn(app, path, headers)`` starts a ``Get``; teardown opens the gate and joins them all."""
    started: list[Get] = []

    def start(app: Flask, path: str, headers: dict[str, str] | None = None) -> Get:
        get = Get(app, path, headers)
        started.append(get)
        return get

    yield start
    gate.open()
    for get in started:
        get.join()


def lane_stats(app: Flask, lane: str = "default") -> dict[str, Any]:
    with app.test_client().get("/api/stats") as response:
        stats: dict[str, Any] = response.get_json()["lanes"][lane]
    return stats


# -- the page and the exempt endpoints ------------------------------------------------------------------


def test_the_page_renders_its_controls_and_assets(make_app: MakeApp) -> None:
    app = make_app()
    client = app.test_client()
    with client.get("/") as response:
        assert response.status_code == 200
        assert response.mimetype == "text/html"
        assert "default-src 'self'" in response.headers["Content-Security-Policy"]
        page = response.get_data(as_text=True)
    assert "Fire a burst" in page
    assert "GET /slow" in page
    assert "GET /report" in page
    for target in ("slow", "report"):
        for size in (5, 20, 50):
            assert f'data-target="{target}" data-size="{size}"' in page
    assert 'id="important"' in page
    assert 'id="add-work"' in page
    assert 'href="/queue/"' in page
    # No inline script or style, nothing from elsewhere: the CSP above would block it anyway.
    assert not re.search(r"<script>|<style|style=|https?://", page)
    for asset in ("demo.css", "demo.js", "favicon.svg"):
        assert f"/static/{asset}" in page
        with client.get(f"/static/{asset}") as response:
            assert response.status_code == 200


def test_health(make_app: MakeApp) -> None:
    with make_app().test_client().get("/health") as response:
        assert response.status_code == 200
        assert response.get_json() == {"status": "ok"}


def test_the_stats_json_is_the_queues_stats(make_app: MakeApp) -> None:
    app = make_app(
        concurrency=3,
        max_queue_size=7,
        queue_timeout=4.0,
        report_concurrency=1,
        report_max_queue_size=2,
        report_queue_timeout=6.0,
        work=Gate("none"),
    )
    client = app.test_client()
    with client.get("/slow") as response:
        assert response.status_code == 200
        assert response.get_json()["lane"] == "default"
    with client.get("/api/stats") as response:
        assert response.status_code == 200
        assert response.headers["Cache-Control"] == "no-store"
        stats = response.get_json()
    assert set(stats) == {"lanes"}
    assert set(stats["lanes"]) == {"default", "reports"}
    for lane in stats["lanes"].values():
        assert {
            "running",
            "waiting",
            "admitted",
            "rejected",
            "wait_ms",
            "service_ms",
            "limits",
        } <= set(lane)
        assert {"full", "timeout", "too_old", "shed"} <= set(lane["rejected"])
        assert set(lane["wait_ms"]) == set(lane["service_ms"]) == {"p50", "p95", "p99"}
    default, reports = stats["lanes"]["default"], stats["lanes"]["reports"]
    assert (default["running"], default["waiting"], default["admitted"]) == (0, 0, 1)
    assert default["wait_ms"]["p50"] is not None
    assert default["limits"] == {
        "concurrency": 3,
        "max_queue_size": 7,
        "queue_timeout": 4.0,
        "max_age": None,
    }
    assert reports["limits"] == {
        "concurrency": 1,
        "max_queue_size": 2,
        "queue_timeout": 6.0,
        "max_age": None,
    }
    assert reports["admitted"] == 0  # the stats endpoint itself is exempt


# -- lanes under a burst --------------------------------------------------------------------------------


def test_a_full_lane_answers_503_with_retry_after(
    gate: Gate, spawn: Callable[..., Get], make_app: MakeApp
) -> None:
    app = make_app(concurrency=1, max_queue_size=1, work=gate)
    queued = Tally()
    with signals.request_queued.connected_to(queued, sender=app):
        running = spawn(app, "/slow")
        gate.wait_inside()
        waiting = spawn(app, "/slow")
        queued.wait()

    with app.test_client().get("/slow", headers={"Accept": "application/json"}) as response:
        assert response.status_code == 503
        assert re.fullmatch(r"[1-9][0-9]*", response.headers["Retry-After"])
        assert response.get_json()["reason"] == "full"
    stats = lane_stats(app)
    assert (stats["running"], stats["waiting"], stats["rejected"]["full"]) == (1, 1, 1)

    gate.open()
    assert running.join().status == 200
    assert waiting.join().status == 200
    stats = lane_stats(app)
    assert (stats["running"], stats["waiting"], stats["admitted"]) == (0, 0, 2)


def test_the_reports_lane_fills_on_its_own(spawn: Callable[..., Get], make_app: MakeApp) -> None:
    gate = Gate("report")
    app = make_app(report_concurrency=1, report_max_queue_size=0, work=gate)
    report = spawn(app, "/report")
    gate.wait_inside()
    client = app.test_client()
    with client.get("/report") as response:
        assert response.status_code == 503
        assert "Retry-After" in response.headers
        assert "full" in response.get_data(as_text=True)  # a text body for a client that did not ask JSON
    with client.get("/slow") as response:
        assert response.status_code == 200, "the default lane has its own slots"
    assert lane_stats(app, "reports")["rejected"]["full"] == 1
    assert lane_stats(app, "default")["rejected"]["full"] == 0
    gate.open()
    assert report.join().status == 200


def test_exempt_endpoints_answer_while_every_lane_is_full(
    gate: Gate, spawn: Callable[..., Get], make_app: MakeApp
) -> None:
    app = make_app(concurrency=1, max_queue_size=0, report_max_queue_size=0, work=gate)
    spawn(app, "/slow")
    spawn(app, "/report")
    gate.wait_inside(2)
    client = app.test_client()
    for path in ("/slow", "/report"):
        with client.get(path) as response:
            assert response.status_code == 503
    for path in (
        "/health",
        "/api/stats",
        "/api/bursts",
        "/api/tasks",
        "/",
        "/static/demo.js",
        "/queue/api/stats",
        "/metrics",
    ):
        with client.get(path) as response:
            assert response.status_code == 200, path


@pytest.mark.parametrize(
    ("headers", "query"),
    [({"X-Priority": "high"}, ""), ({}, "?priority=high")],
    ids=["header", "query"],
)
def test_an_important_request_takes_the_place_of_an_ordinary_waiter(
    gate: Gate, spawn: Callable[..., Get], headers: dict[str, str], query: str, make_app: MakeApp
) -> None:
    app = make_app(concurrency=1, max_queue_size=1, work=gate)
    queued, rejected = Tally(), Tally()
    with (
        signals.request_queued.connected_to(queued, sender=app),
        signals.request_rejected.connected_to(rejected, sender=app),
    ):
        running = spawn(app, "/slow")
        gate.wait_inside()
        ordinary = spawn(app, "/slow", {"Accept": "application/json"})
        queued.wait()
        important = spawn(app, "/slow" + query, headers)
        rejected.wait()
    assert rejected.reasons == ["shed"]
    assert ordinary.join().status == 503
    assert json.loads(ordinary.body)["reason"] == "shed"
    assert "Retry-After" in ordinary.headers

    gate.open()
    assert running.join().status == 200
    assert important.join().status == 200
    assert json.loads(important.body)["priority"] == 0
    assert lane_stats(app)["rejected"]["shed"] == 1


@pytest.mark.parametrize(
    ("environ", "priority"),
    [
        ({}, 1),
        ({"HTTP_X_PRIORITY": "high"}, 0),
        ({"HTTP_X_PRIORITY": " HIGH "}, 0),
        ({"HTTP_X_PRIORITY": "low"}, 2),
        ({"HTTP_X_PRIORITY": "urgent!!"}, 1),
        ({"QUERY_STRING": "a=1&priority=high"}, 0),
        ({"QUERY_STRING": "priority=low"}, 2),
        ({"QUERY_STRING": "priority"}, 1),
        ({"HTTP_X_PRIORITY": "normal", "QUERY_STRING": "priority=high"}, 1),
    ],
)
def test_classify(environ: dict[str, str], priority: int) -> None:
    assert classify(environ) == priority


# -- bursts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"target": "nowhere", "size": 5}, 400),
        ({"target": "slow", "size": 0}, 400),
        ({"target": "slow", "size": 51}, 400),
        ({"target": "slow", "size": True}, 400),
        ({"target": "slow", "size": "5"}, 400),
        ({"target": "slow", "size": 5, "important": "yes"}, 400),
        (["slow", 5], 400),
    ],
)
def test_a_burst_needs_a_known_target_and_a_size(body: object, status: int, make_app: MakeApp) -> None:
    with make_app().test_client().post("/api/bursts", json=body) as response:
        assert response.status_code == status
        assert "error" in response.get_json()


def test_a_burst_must_be_posted_as_json(make_app: MakeApp) -> None:
    client = make_app().test_client()
    with client.post("/api/bursts", data={"target": "slow", "size": "5"}) as response:
        assert response.status_code == 415
    with client.get("/api/bursts") as response:
        assert response.get_json() == {"bursts": []}


def test_a_burst_through_a_live_server_tallies_200s_and_503s(gate: Gate, make_app: MakeApp) -> None:
    app = make_app(concurrency=1, max_queue_size=1, work=gate)
    queued, rejected = Tally(), Tally()
    with (
        waitress_in_thread(app, wait=TIMEOUT) as url,
        signals.request_queued.connected_to(queued, sender=app),
        signals.request_rejected.connected_to(rejected, sender=app),
    ):
        app.config[SELF_URL_KEY] = url
        client = app.test_client()
        with client.post("/api/bursts", json={"target": "slow", "size": 4}) as response:
            assert response.status_code == 202
            burst_id = response.get_json()["id"]
        burst = bursts_of(app).get(burst_id)
        assert burst is not None
        try:
            # Whatever order they arrive in: one runs, one waits, two find the line full.
            gate.wait_inside()
            queued.wait()
            rejected.wait(2)
            with client.get("/api/bursts") as response:
                (shown,) = response.get_json()["bursts"]
            # The rejected two may not have read their answers yet; the other two cannot have one.
            assert shown["done"] is False
            assert shown["answered"] <= 2
        finally:
            gate.open()
            assert burst.join(TIMEOUT)
    with client.get("/api/bursts") as response:
        (shown,) = response.get_json()["bursts"]
    assert shown["done"] is True
    assert (shown["size"], shown["answered"], shown["ok"], shown["errors"]) == (
        4,
        4,
        2,
        0,
    )
    (full,) = shown["rejected"]
    assert (full["status"], full["reason"], full["count"]) == (503, "full", 2)
    assert full["retry_after_min"] >= 1


# -- add work: the task queue ----------------------------------------------------------------------------------


def task_counts(app: Flask) -> dict[str, int]:
    with app.test_client().get("/api/tasks") as response:
        assert response.status_code == 200
        counts: dict[str, int] = response.get_json()
    return counts


def test_add_work_enqueues_a_batch_and_the_workers_burn_it_down(make_app: MakeApp) -> None:
    started = threading.Semaphore(0)
    go_on = threading.Event()

    def hold(number: int) -> None:
        started.release()
        assert go_on.wait(TIMEOUT)

    app = make_app(task_workers=1, task_work=hold)
    client = app.test_client()
    for _ in range(2):
        with client.post("/api/work", json={}) as response:
            assert response.status_code == 202
            assert len(response.get_json()["jobs"]) == WORK_BATCH
    assert started.acquire(timeout=TIMEOUT)
    counts = task_counts(app)
    assert (counts["queued"], counts["running"]) == (2 * WORK_BATCH - 1, 1)
    go_on.set()
    wait_for("the queue to burn down", lambda: task_counts(app), lambda c: c["succeeded"] == 2 * WORK_BATCH)
    assert task_counts(app)["queued"] == 0


def test_a_failing_job_fails_and_shows_in_the_dashboard(make_app: MakeApp) -> None:
    app = make_app()
    client = app.test_client()
    with client.post("/api/work", json={"fail": True}) as response:
        assert response.status_code == 202
    tasks = app.extensions["flask-queue.tasks"].extension
    assert tasks.drain(app) == 1
    assert task_counts(app)["failed"] == 1
    with client.get("/queue/") as response:
        assert response.status_code == 200
        page = response.get_data(as_text=True)
    assert "this job always fails (&lt;b&gt;not bold&lt;/b&gt;)" in page


@pytest.mark.parametrize(
    ("kwargs", "status"),
    [({"data": "fail"}, 415), ({"json": {"fail": "yes"}}, 400), ({"json": [True]}, 400)],
)
def test_add_work_takes_json(make_app: MakeApp, kwargs: dict[str, Any], status: int) -> None:
    app = make_app()
    with app.test_client().post("/api/work", **kwargs) as response:
        assert response.status_code == status
        assert "error" in response.get_json()
    assert sum(task_counts(app).values()) == 0


def test_the_dashboard_is_for_this_machine_only(make_app: MakeApp) -> None:
    client = make_app().test_client()
    with client.get("/queue/", environ_base={"REMOTE_ADDR": "127.0.0.1"}) as response:
        assert response.status_code == 200
    with client.get("/queue/", environ_base={"REMOTE_ADDR": "192.0.2.9"}) as response:
        assert response.status_code == 403


# -- python -m examples.demo (what make demo runs) ---------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent


def demo(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "examples.demo", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_the_demo_serves_until_ctrl_c(tmp_path: Path) -> None:
    process = demo("--port", "0", "--tasks", f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        match = re.fullmatch(r"Flask-Queue demo on (http://127\.0\.0\.1:[0-9]+/)\n", first)
        assert match, first
        url = match[1]
        with urllib.request.urlopen(url + "health", timeout=TIMEOUT) as response:
            assert json.load(response) == {"status": "ok"}
        with urllib.request.urlopen(url + "queue/", timeout=TIMEOUT) as response:
            assert response.status == 200
        add = urllib.request.Request(
            url + "api/work", data=b"{}", headers={"Content-Type": "application/json"}, method="POST"
        )
        with urllib.request.urlopen(add, timeout=TIMEOUT) as response:
            assert response.status == 202

        def counts() -> dict[str, int]:
            with urllib.request.urlopen(url + "api/tasks", timeout=TIMEOUT) as response:
                found: dict[str, int] = json.load(response)
            return found

        wait_for(
            "the demo's workers to run the work", counts, lambda c: c["succeeded"] == WORK_BATCH, timeout=60
        )
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, err
    assert out.endswith("Stopped.\n")


def test_the_demo_says_so_when_its_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        process = demo("--port", str(taken.getsockname()[1]))
        _, err = process.communicate(timeout=TIMEOUT * 3)
    assert process.returncode == 1
    assert "PORT=5001 make demo" in err
