"""``/metrics``: the request queue's counters from its signals, the task queue's figures from the backend, and
both right under gunicorn with two worker processes (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from flask_queue import ConfigurationError, RequestQueue, TaskQueue
from flask_queue.dashboard.metrics import ENDPOINT, Metrics
from tests.servers._live import (
    ServerProcess,
    gunicorn_has_no_control_socket,
    http_get,
    spawn_server,
    start_retrying,
    wait_for,
)

from .conftest import RedisServer

HERE = Path(__file__).resolve().parent
TIMEOUT = 10.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition, by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client: object) -> Samples:
    with client.get("/metrics") as response:  # type: ignore[attr-defined]
        assert response.status_code == 200
        assert response.mimetype == "text/plain"
        return samples(response.get_data(as_text=True))


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = Flask(__name__)
    queue = RequestQueue(app, concurrency=1, max_queue_size=1)
    tasks = TaskQueue(app, backend=f"sqlite:///{tmp_path / 'jobs.sqlite3'}", workers=0)
    Metrics(app)
    queue.exempt(ENDPOINT)
    gate = threading.Event()
    inside = threading.Semaphore(0)

    @tasks.task(name="t.ok")
    def ok() -> None:
        pass

    @tasks.task(name="t.boom", queue="mail")
    def boom() -> None:
        raise RuntimeError("no")

    @app.get("/hold")
    def hold() -> str:
        inside.release()
        assert gate.wait(TIMEOUT)
        return "held"

    @app.get("/quick")
    def quick() -> str:
        return "quick"

    app.extensions["test"] = (tasks, ok, boom, gate, inside)
    yield app
    gate.set()
    tasks.backend().close()


def test_task_figures_come_from_the_backend(app: Flask) -> None:
    tasks, ok, boom, *_ = app.extensions["test"]
    ok.enqueue_many([((), {})] * 3)
    boom.enqueue()
    tasks.drain(queue="mail")
    ok.enqueue_in(600)
    found = scrape(app.test_client())
    assert found["flask_queue_jobs", (("queue", "default"), ("status", "queued"))] == 3
    assert found["flask_queue_jobs", (("queue", "default"), ("status", "scheduled"))] == 1
    assert found["flask_queue_jobs", (("queue", "mail"), ("status", "failed"))] == 1
    assert found["flask_queue_jobs", (("queue", "mail"), ("status", "running"))] == 0
    assert found["flask_queue_workers", ()] == 0
    assert found["flask_queue_backend_up", ()] == 1


def test_request_figures_come_from_the_queue(app: Flask) -> None:
    *_, gate, inside = app.extensions["test"]
    client = app.test_client()
    for _ in range(2):
        client.get("/quick").close()
    results: list[int] = []

    def get(path: str) -> None:
        with app.test_client().get(path) as response:
            results.append(response.status_code)

    threads = [threading.Thread(target=get, args=("/hold",))]
    threads[0].start()
    assert inside.acquire(timeout=TIMEOUT)
    threads.append(threading.Thread(target=get, args=("/quick",)))
    threads[1].start()
    lane = (("lane", "default"),)
    found = wait_for(
        "a request to wait",
        lambda: scrape(client),
        lambda s: s.get(("flask_queue_requests_waiting", lane)) == 1,
    )
    assert found["flask_queue_requests_running", lane] == 1
    with client.get("/quick") as response:
        assert response.status_code == 503  # one runs, one waits: the line is full
    gate.set()
    for thread in threads:
        thread.join(TIMEOUT)
    assert sorted(results) == [200, 200]
    found = scrape(client)
    assert found["flask_queue_requests_admitted_total", lane] == 4
    assert found["flask_queue_requests_rejected_total", (("lane", "default"), ("reason", "full"))] == 1
    assert found["flask_queue_requests_waiting", lane] == 0
    assert found["flask_queue_requests_running", lane] == 0
    assert found["flask_queue_request_wait_seconds_count", lane] == 4


def test_it_is_set_up_once() -> None:
    app = Flask(__name__)
    Metrics(app, path="/m")
    with pytest.raises(RuntimeError, match="already set up"):
        Metrics(app)
    with pytest.raises(ValueError, match="QUEUE_METRICS_PATH"):
        Metrics(Flask(__name__), path="metrics")
    with app.test_client().get("/m") as response:
        assert response.status_code == 200


@pytest.mark.parametrize(
    "path", ["metrics", "", "/m/<name>", "/m etrics", "//metrics", "/m?x", None, 5, b"/m"]
)
def test_a_misused_path_raises_configuration_error(path: object) -> None:
    with pytest.raises(ConfigurationError, match="QUEUE_METRICS_PATH must be a path such as '/metrics'"):
        Metrics(Flask(__name__), path=path)  # type: ignore[arg-type]


@pytest.mark.parametrize("app", ["app", 42, object()])
def test_it_needs_a_flask_app(app: object) -> None:
    with pytest.raises(TypeError, match=r"Metrics\(app\) and Metrics.init_app\(app\) take a Flask app"):
        Metrics(app)  # type: ignore[arg-type]


def test_a_backend_that_does_not_answer_leaves_out_its_families(private_redis: RedisServer) -> None:
    app = Flask(__name__)
    queue = RequestQueue(app, concurrency=1, max_queue_size=1)
    tasks = TaskQueue(app, backend=private_redis.url, workers=0)
    Metrics(app)
    queue.exempt(ENDPOINT)

    @tasks.task(name="t.ok")
    def ok() -> None:
        pass

    @app.get("/quick")
    def quick() -> str:
        return "quick"

    client = app.test_client()
    try:
        ok.enqueue()
        found = scrape(client)
        assert found["flask_queue_jobs", (("queue", "default"), ("status", "queued"))] == 1
        private_redis.stop()
        for _ in range(3):
            client.get("/quick").close()
        found = scrape(client)  # 200, not 500
        assert found["flask_queue_backend_up", ()] == 0
        assert found["flask_queue_requests_admitted_total", (("lane", "default"),)] == 3
        # No task figure rather than wrong ones (zeros would say the queue is empty).
        assert not [name for name, _ in found if name.startswith(("flask_queue_jobs", "flask_queue_worker"))]
        assert scrape(app.test_client())["flask_queue_backend_up", ()] == 0
    finally:
        tasks.backend(app).close()


def test_an_app_without_a_task_queue_has_no_backend_gauge() -> None:
    app = Flask(__name__)
    RequestQueue(app)
    Metrics(app)
    assert not [name for name, _ in scrape(app.test_client()) if name == "flask_queue_backend_up"]


# -- under gunicorn --------------------------------------------------------------------------------------------


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[ServerProcess]:
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = dict(os.environ)
    env.update(
        PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")])),
        PYTHONUNBUFFERED="1",
        PROMETHEUS_MULTIPROC_DIR=str(multiproc),
        FLASK_QUEUE_TEST_DB=str(tmp_path / "jobs.sqlite3"),
    )

    def launch() -> ServerProcess:
        from tests.servers._live import free_port

        port = free_port()
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "--worker-class=gthread",
            "--workers=2",
            "--threads=8",
            f"--bind=127.0.0.1:{port}",
            "--graceful-timeout=5",
            "metrics_app:application",
        ]
        if gunicorn_has_no_control_socket():
            command.insert(3, "--no-control-socket")
        return spawn_server("gunicorn", port, command, tmp_path, HERE, env)

    server = start_retrying("gunicorn", launch)
    yield server
    server.stop()


def test_two_gunicorn_workers_add_up(gunicorn: ServerProcess) -> None:
    base = gunicorn.base_url
    with requests.Session() as session:
        session.trust_env = False
        assert session.post(f"{base}/enqueue/7", timeout=TIMEOUT).status_code == 200
    # Concurrent requests on fresh connections, until both processes have served some.
    pids: list[int] = []
    with ThreadPoolExecutor(8) as pool:
        while len(set(pids)) < 2:
            assert len(pids) < 2000, "one gunicorn worker served every request"
            pids += [r.json()["pid"] for r in pool.map(lambda _: http_get(f"{base}/work"), range(16))]
    lane = (("lane", "work"),)
    # Whichever process answers the scrape, it counts the requests of both, and the jobs of the shared file.
    for _ in range(6):
        found = samples(http_get(f"{base}/metrics").text)
        assert found["flask_queue_requests_admitted_total", lane] == len(pids)
        assert found["flask_queue_request_wait_seconds_count", lane] == len(pids)
        assert found["flask_queue_requests_running", lane] == 0
        assert found["flask_queue_jobs", (("queue", "default"), ("status", "queued"))] == 7
