"""The worker: jobs that cannot run, leases, drain at shutdown, lazy start, heartbeats, outages."""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from flask import Flask

from flask_queue import JobStatus, TaskFailed, TaskQueue
from flask_queue.exceptions import BackendError
from flask_queue.tasks import JobRecord
from flask_queue.tasks.backends.sqlite import SQLiteBackend

from .conftest import MakeQueue, in_process_threads


def _raw_job(task: str, payload: str) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=uuid.uuid4().hex, task=task, queue="default", payload=payload, eta=now, enqueued_at=now
    )


def test_a_job_naming_an_unknown_task_fails_and_the_worker_goes_on(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=1)

    @tasks.task
    def known() -> str:
        return "still working"

    backend = tasks.backend(app)
    stranger = _raw_job("deploy.skew.task", '{"args":[],"kwargs":{}}')
    [stranger.id] = backend.enqueue([stranger])
    with app.app_context():
        after = known.enqueue()
    with pytest.raises(TaskFailed, match=r"UnknownTask: no task named 'deploy\.skew\.task'") as failed:
        tasks.get_job(stranger.id).result(timeout=30)  # type: ignore[union-attr]
    assert "older or newer code" in failed.value.error
    assert after.result(timeout=30) == "still working"
    assert tasks.get_job(stranger.id).status is JobStatus.FAILED  # type: ignore[union-attr]


@pytest.mark.parametrize("payload", ["{not json", '["a list"]', '{"args": 1, "kwargs": {}}'])
def test_a_corrupt_payload_fails_the_job_with_a_clear_error(make_queue: MakeQueue, payload: str) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task(retries=3)
    def target() -> None: ...

    corrupt = _raw_job(target.name, payload)
    [corrupt.id] = tasks.backend(app).enqueue([corrupt])
    with app.app_context():
        assert tasks.drain() == 1
        job = tasks.get_job(corrupt.id)
    assert job is not None
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.startswith("CorruptPayload: the job's arguments")
    assert job.record.attempts == 1  # not retried: it can never succeed


def test_a_running_jobs_lease_is_renewed(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=1, lease=0.3)
    started, release = threading.Event(), threading.Event()

    @tasks.task
    def long() -> str:
        started.set()
        release.wait(30)
        return "done"

    with app.app_context():
        job = long.enqueue()
    assert started.wait(30)
    first = job.refresh().lease_until
    assert first is not None
    deadline = time.monotonic() + 30
    while (job.refresh().lease_until or 0) <= first:
        assert time.monotonic() < deadline, "the lease was never renewed"
        time.sleep(0.02)
    release.set()
    assert job.result(timeout=30) == "done"
    assert (job.record.attempts, job.record.lost) == (1, 0)


def test_shutdown_gives_back_a_job_still_running_at_the_deadline(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=1)
    started, release = threading.Event(), threading.Event()

    @tasks.task
    def stuck() -> None:
        started.set()
        release.wait(30)

    with app.app_context():
        job = stuck.enqueue()
    assert started.wait(30)
    report = tasks.shutdown(timeout=0.05, app=app)
    release.set()
    assert report.released == 1
    record = job.refresh()
    assert record.status is JobStatus.QUEUED
    assert record.attempts == 0


def test_shutdown_waits_for_running_jobs_to_finish(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=2)
    started = threading.Barrier(3)

    @tasks.task
    def short(n: int) -> int:
        started.wait(30)
        time.sleep(0.05)
        return n

    with app.app_context():
        jobs = [short.enqueue(n) for n in range(2)]
    started.wait(30)
    report = tasks.shutdown(timeout=30, app=app)
    assert report.released == 0
    assert [job.result(timeout=0) for job in jobs] == [0, 1]


def test_memory_jobs_left_at_shutdown_are_reported(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend="memory://", workers=0)

    @tasks.task
    def pending() -> None: ...

    with app.app_context():
        pending.enqueue()
        pending.enqueue_in(60)
    with caplog.at_level(logging.WARNING, logger="flask_queue.tasks"):
        report = tasks.shutdown(app=app)
    assert report.unfinished == 2
    assert "2 job(s) of memory:// were not run" in caplog.text


def test_workers_start_at_the_first_request(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=1)
    app.add_url_rule("/", "index", lambda: "ok")
    assert in_process_threads(tasks) == 0
    app.test_client().get("/")
    assert in_process_threads(tasks) == 1


def test_workers_do_not_start_in_the_reloaders_watching_process(
    make_queue: MakeQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, tasks = make_queue(workers=1)

    @tasks.task
    def noop() -> None: ...

    monkeypatch.delenv("WERKZEUG_RUN_MAIN", raising=False)
    run = click.Command("run", params=[click.Option(["--reload/--no-reload"])])
    with click.Context(run, info_name="run") as ctx:
        ctx.params["reload"] = True
        with app.app_context():
            job = noop.enqueue()
        assert in_process_threads(tasks) == 0
        monkeypatch.setenv("WERKZEUG_RUN_MAIN", "true")  # the reloader's child serves: it runs jobs
        app.test_client().get("/")
        assert job.result(timeout=30) is None


def test_workers_zero_runs_nothing_in_process(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task
    def noop() -> None: ...

    with app.app_context():
        job = noop.enqueue()
        tasks.start()
    assert in_process_threads(tasks) == 0
    assert job.status is JobStatus.QUEUED


def test_a_raising_signal_receiver_does_not_affect_the_job(
    make_queue: MakeQueue, caplog: pytest.LogCaptureFixture
) -> None:
    from flask_queue import signals

    app, tasks = make_queue(workers=0)

    @tasks.task
    def fine() -> int:
        return 7

    def broken_receiver(sender: object, **extra: object) -> None:
        raise RuntimeError("metrics are down")

    with (
        signals.task_started.connected_to(broken_receiver),
        caplog.at_level(logging.ERROR),
        app.app_context(),
    ):
        job = fine.enqueue()
        tasks.drain()
    assert job.result(timeout=0) == 7
    assert "a receiver of task-started raised" in caplog.text


def test_a_success_is_recorded_while_a_slower_job_of_its_batch_runs(make_queue: MakeQueue) -> None:
    from flask_queue.tasks.worker import Worker, _Pending

    app, tasks = make_queue(workers=0)
    release = threading.Event()

    @tasks.task
    def quick() -> str:
        return "done"

    @tasks.task
    def slow() -> None:
        release.wait(30)

    with app.app_context():
        first, second = quick.enqueue(), slow.enqueue()
    state = app.extensions["flask-queue.tasks"]
    worker = Worker(state.executor, threads=0, lease=30.0)  # the keeper only: this test runs the batch
    pending = _Pending(f"{worker.id}/test")
    worker._pendings.append(pending)
    worker.start()
    batch = tasks.backend(app).dequeue_batch(None, pending.owner, 30.0, 2)
    runner = threading.Thread(target=worker._run_batch, args=(batch, 2, pending))
    runner.start()
    try:
        assert first.result(timeout=30) == "done"  # recorded by the keeper, not after the slow job
        assert second.status is JobStatus.RUNNING
    finally:
        release.set()
        runner.join(30)
        worker.stop(10)
    assert second.refresh().status is JobStatus.SUCCEEDED


def test_each_thread_of_a_worker_holds_its_jobs_under_its_own_name(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=2)
    both = threading.Barrier(3)
    release = threading.Event()

    @tasks.task
    def hold() -> None:
        both.wait(30)
        release.wait(30)

    with app.app_context():
        jobs = [hold.enqueue(), hold.enqueue()]
    both.wait(30)
    try:
        holders = {job.refresh().worker for job in jobs}
        assert len(holders) == 2
    finally:
        release.set()
    for job in jobs:
        job.result(timeout=30)


def test_the_timeout_does_not_reach_the_app_contexts_teardown(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=1)
    torn_down = threading.Event()

    @app.teardown_appcontext
    def slow_teardown(error: BaseException | None) -> None:
        if threading.current_thread().name.startswith("flask-queue"):
            time.sleep(0.6)  # longer than the task's timeout, after the task returned
            torn_down.set()

    @tasks.task(timeout=0.3)
    def fast() -> str:
        return "in time"

    with app.app_context():
        job = fast.enqueue()
    assert job.result(timeout=30) == "in time"
    assert torn_down.wait(30)


def test_other_flask_commands_do_not_start_workers(tmp_path: Path) -> None:
    from click.testing import CliRunner
    from flask.cli import FlaskGroup

    app = Flask(__name__, instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend="memory://", workers=1)

    @tasks.task
    def nightly() -> None: ...

    @app.cli.command("enqueue-nightly")
    def enqueue_nightly() -> None:
        nightly.enqueue()
        print("threads", in_process_threads(tasks))

    result = CliRunner().invoke(FlaskGroup(create_app=lambda: app), ["enqueue-nightly"])
    assert result.exit_code == 0, result.output
    assert "threads 0" in result.output
    tasks.shutdown(app=app)


# -- heartbeats -------------------------------------------------------------------------------------------


def _wait_until(what: str, check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
    return value


def test_a_worker_beats_while_it_runs_and_is_forgotten_when_it_stops(make_queue: MakeQueue) -> None:
    from flask_queue.tasks.worker import Worker

    app, tasks = make_queue(workers=0)

    @tasks.task(queue="mail")
    def send(n: int) -> int:
        return n

    state = app.extensions["flask-queue.tasks"]
    backend = tasks.backend(app)
    worker = Worker(state.executor, threads=2, queues=["mail"], name="test", heartbeat=0.05)
    worker.start()
    try:
        mine = _wait_until("the first beat", lambda: [w for w in backend.workers() if w.name == worker.id])
        assert (mine[0].threads, mine[0].queues, mine[0].pid) == (2, ["mail"], os.getpid())
        assert mine[0].ttl == pytest.approx(0.15)
        with app.app_context():
            jobs = send.enqueue_many([((n,), {}) for n in range(3)])
        assert [job.result(timeout=30) for job in jobs] == [0, 1, 2]
        _wait_until("a beat counting the jobs", lambda: [w.processed for w in backend.workers()] == [3])
    finally:
        worker.stop(10)
    assert backend.workers() == []


def test_in_process_workers_beat_too(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=1)
    tasks.start(app)
    beats = _wait_until("the web worker's beat", tasks.backend(app).workers)
    assert ":web-" in beats[0].name
    assert beats[0].threads == 1
    tasks.shutdown(app=app)
    assert tasks.backend(app).workers() == []


# -- outages ----------------------------------------------------------------------------------------------


class _FlakySQLite(SQLiteBackend):
    """A SQLite backend whose calls raise ``BackendError`` while ``down`` is set: an outage, as a worker sees
    a Redis or PostgreSQL that stopped answering. ``failed`` counts the calls refused, by method."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.down = threading.Event()
        self.failed: collections.Counter[str] = collections.Counter()


def _refused_while_down(name: str) -> Callable[..., Any]:
    method = getattr(SQLiteBackend, name)

    def call(self: _FlakySQLite, *args: Any, **kwargs: Any) -> Any:
        if not self.down.is_set():
            result = method(self, *args, **kwargs)
            if not self.down.is_set():
                return result
            # Down during the call (a dequeue waits up to a second): its answer is lost, as a connection's.
        self.failed[name] += 1
        raise BackendError(f"{self.url}: connection refused (a test outage)")

    return call


for _name in (
    "dequeue",
    "dequeue_batch",
    "renew",
    "finish",
    "finish_batch",
    "retry_later",
    "release",
    "fail_unrunnable",
    "expire",
    "beat",
    "forget",
):
    setattr(_FlakySQLite, _name, _refused_while_down(_name))


@pytest.fixture
def outage(tmp_path: Path) -> Iterator[tuple[Flask, TaskQueue, _FlakySQLite]]:
    """An app whose jobs live in a SQLite file, and a flaky backend on that file for a worker to use."""
    app = Flask("outage", instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend=f"sqlite:///{tmp_path / 'jobs.sqlite3'}", workers=0)
    flaky = _FlakySQLite(tmp_path / "jobs.sqlite3")
    yield app, tasks, flaky
    flaky.close()
    tasks.backend(app).close()


def _flaky_worker(app: Flask, flaky: _FlakySQLite, **options: Any) -> Any:
    from flask_queue.tasks.worker import Executor, Worker

    executor = Executor(**{**app.extensions["flask-queue.tasks"].executor.__dict__, "backend": flaky})
    return Worker(executor, **options)


def test_an_outage_is_ridden_out_with_backoff_and_logged_once(
    outage: tuple[Flask, TaskQueue, _FlakySQLite], caplog: pytest.LogCaptureFixture
) -> None:
    app, tasks, flaky = outage

    @tasks.task
    def add(x: int, y: int) -> int:
        return x + y

    worker = _flaky_worker(app, flaky, threads=1, lease=5.0, heartbeat=0.05)
    caplog.set_level(logging.INFO, logger="flask_queue.tasks")
    worker.start()
    try:
        _wait_until("the first beat", flaky.workers)
        flaky.down.set()
        refused = lambda: flaky.failed["dequeue"] + flaky.failed["dequeue_batch"]  # noqa: E731
        _wait_until("a refused dequeue", lambda: refused() >= 1)
        first_refused = time.monotonic()
        with app.app_context():
            job = add.enqueue(1, 2)  # through the app's own connection: the job waits in the file
        _wait_until("five refused dequeues", lambda: refused() >= 5)
        # Four pauses of at least half of 0.1, 0.2, 0.4 and 0.8 s: a worker that spun would be far quicker.
        assert time.monotonic() - first_refused >= 0.75
        assert flaky.failed["beat"] >= 1
        flaky.down.clear()
        assert job.result(timeout=30) == 3
        _wait_until("a beat after the outage", flaky.workers)
        assert worker._keeper.is_alive()
    finally:
        worker.stop(10)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2, warnings
    assert warnings[0].startswith(f"task backend {flaky.url} failed (")
    assert "connection refused (a test outage)" in warnings[0]
    assert warnings[1].startswith(f"task backend {flaky.url} answers again after ")


def test_an_outcome_that_could_not_be_recorded_is_recorded_when_the_backend_is_back(
    outage: tuple[Flask, TaskQueue, _FlakySQLite],
) -> None:
    app, tasks, flaky = outage
    runs: list[int] = []

    @tasks.task
    def pull_the_plug() -> str:
        runs.append(1)
        flaky.down.set()  # the backend goes away while the job runs: its success cannot be recorded
        return "done"

    worker = _flaky_worker(app, flaky, threads=1, lease=30.0)
    worker.start()
    try:
        with app.app_context():
            job = pull_the_plug.enqueue()
        _wait_until("two refused records", lambda: flaky.failed["finish"] >= 2)
        assert job.refresh().status is JobStatus.RUNNING
        flaky.down.clear()
        assert job.result(timeout=30) == "done"
    finally:
        worker.stop(10)
    assert (job.record.attempts, job.record.lost, len(runs)) == (1, 0, 1)


def test_an_outcome_unrecorded_when_its_lease_lapses_runs_again(
    outage: tuple[Flask, TaskQueue, _FlakySQLite], caplog: pytest.LogCaptureFixture
) -> None:
    app, tasks, flaky = outage
    runs: list[int] = []

    @tasks.task
    def once_offline() -> int:
        runs.append(1)
        if len(runs) == 1:
            flaky.down.set()
        return len(runs)

    worker = _flaky_worker(app, flaky, threads=1, lease=1.0)
    worker.start()
    try:
        with app.app_context():
            job = once_offline.enqueue()
        _wait_until("the outcome to be given up", lambda: "before its lease lapsed" in caplog.text)
        flaky.down.clear()
        assert job.result(timeout=30) == 2  # at least once: the second run's outcome is the one kept
    finally:
        worker.stop(10)
    assert (job.record.attempts, job.record.lost) == (2, 1)
    assert "it will run again" in caplog.text


def test_shutdown_during_an_outage_does_not_raise(outage: tuple[Flask, TaskQueue, _FlakySQLite]) -> None:
    app, tasks, flaky = outage
    started = threading.Event()

    @tasks.task
    def slow() -> None:
        started.set()
        flaky.down.set()
        time.sleep(0.2)

    worker = _flaky_worker(app, flaky, threads=1, lease=30.0)
    worker.start()
    with app.app_context():
        job = slow.enqueue()
    assert started.wait(30)
    report = worker.stop(0.0)
    assert report.released == 0  # it could not be given back: it runs again when its lease lapses
    assert job.refresh().status is JobStatus.RUNNING
