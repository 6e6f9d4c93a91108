"""The worker: jobs that cannot run, leases, drain at shutdown, lazy start."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path

import click
import pytest
from flask import Flask

from flask_queue import JobStatus, TaskFailed, TaskQueue
from flask_queue.tasks.job import JobRecord

from .conftest import MakeQueue


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
    assert tasks.stats()["workers"]["threads"] == 0
    app.test_client().get("/")
    assert tasks.stats()["workers"]["threads"] == 1


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
        assert tasks.stats()["workers"]["threads"] == 0
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
    assert tasks.stats()["workers"]["threads"] == 0
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
        print("threads", tasks.stats()["workers"]["threads"])

    result = CliRunner().invoke(FlaskGroup(create_app=lambda: app), ["enqueue-nightly"])
    assert result.exit_code == 0, result.output
    assert "threads 0" in result.output
    tasks.shutdown(app=app)
