"""``flask queue ...`` through Flask's CLI runner."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Flask

from flask_queue import BackendError, JobStatus, TaskQueue

from .conftest import MakeQueue


def _failed_job(app: Flask, tasks: object) -> str:
    with app.app_context():
        job = app.extensions["flask-queue.tasks"].executor.tasks["fails"].enqueue()
        tasks.drain()  # type: ignore[attr-defined]
        return str(job.id)


def test_status_prints_the_counts(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task
    def noop() -> None: ...

    with app.app_context():
        noop.enqueue()
        noop.options(queue="mail").enqueue_in(60)
    result = app.test_cli_runner().invoke(args=["queue", "status"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[1].split() == [
        "queue", "queued", "scheduled", "running", "succeeded", "failed", "cancelled", "expired", "deferred"
    ]  # fmt: skip
    assert lines[2].split() == ["default", "1", "0", "0", "0", "0", "0", "0", "0"]
    assert lines[3].split() == ["mail", "0", "1", "0", "0", "0", "0", "0", "0"]
    as_json = json.loads(app.test_cli_runner().invoke(args=["queue", "status", "--json"]).output)
    assert as_json["queues"]["mail"]["scheduled"] == 1


def test_retry_runs_failed_jobs_again(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task(name="fails")
    def fails() -> None:
        raise RuntimeError("down")

    first, second = _failed_job(app, tasks), _failed_job(app, tasks)
    runner = app.test_cli_runner()
    result = runner.invoke(args=["queue", "retry", first])
    assert result.exit_code == 0, result.output
    assert "1 job(s) queued again" in result.output
    with app.app_context():
        assert tasks.get_job(first).status is JobStatus.QUEUED  # type: ignore[union-attr]
        assert tasks.get_job(second).status is JobStatus.FAILED  # type: ignore[union-attr]
    result = runner.invoke(args=["queue", "retry", "--failed"])
    assert "1 job(s) queued again" in result.output
    missing = runner.invoke(args=["queue", "retry", "nope", first])
    assert missing.exit_code == 1
    assert "nope: not retried: no such job" in missing.output
    assert f"{first}: not retried: it is queued" in missing.output
    assert runner.invoke(args=["queue", "retry"]).exit_code == 2


def test_purge_deletes_waiting_jobs_of_a_queue(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task
    def noop() -> None: ...

    with app.app_context():
        noop.enqueue()
        noop.enqueue_in(60)
        noop.options(queue="kept").enqueue()
    runner = app.test_cli_runner()
    refused = runner.invoke(args=["queue", "purge", "default"], input="n\n")
    assert refused.exit_code == 1
    result = runner.invoke(args=["queue", "purge", "default", "--yes"])
    assert "2 job(s) deleted from 'default'" in result.output
    with app.app_context():
        assert tasks.size() == 1


def test_worker_burst_runs_the_ready_jobs_and_exits(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)
    ran: list[int] = []

    @tasks.task
    def note(n: int) -> None:
        ran.append(n)

    with app.app_context():
        note.enqueue_many([((n,), {}) for n in range(5)])
        note.options(queue="elsewhere").enqueue(99)
    result = app.test_cli_runner().invoke(
        args=["queue", "worker", "--burst", "--threads", "2", "-q", "default"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(ran) == [0, 1, 2, 3, 4]
    assert "stopped after 5 job(s)" in result.output


def test_worker_burst_rides_out_an_outage_of_its_idle_check(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)
    ran: list[int] = []

    @tasks.task
    def note(n: int) -> None:
        ran.append(n)

    backend = tasks.backend(app)
    real_size = backend.size
    refused = 0

    def size(queue: str | None = None) -> int:
        # The backend's answers to the idle check are lost for a while, as in an outage of Redis or PostgreSQL.
        nonlocal refused
        if refused < 5:
            refused += 1
            raise BackendError(f"{backend.url}: connection refused (a test outage)")
        return real_size(queue)

    with app.app_context():
        note.enqueue_many([((n,), {}) for n in range(3)])
    backend.size = size  # type: ignore[method-assign]
    try:
        result = app.test_cli_runner().invoke(args=["queue", "worker", "--burst"])
    finally:
        del backend.size
    assert result.exit_code == 0, result.output
    assert refused == 5
    assert sorted(ran) == [0, 1, 2]


def test_commands_without_a_task_queue_say_so() -> None:
    from flask_queue.tasks.cli import queue_command

    app = Flask(__name__)
    app.cli.add_command(queue_command)
    result = app.test_cli_runner().invoke(args=["queue", "status"])
    assert result.exit_code == 1
    assert "this app has no TaskQueue" in result.output


def test_worker_names_the_queues_it_takes(make_queue: MakeQueue) -> None:
    app, _ = make_queue(workers=0, queues=["mail", "reports"])
    result = app.test_cli_runner().invoke(args=["queue", "worker", "--burst"])
    assert result.exit_code == 0, result.output
    assert "queues: mail, reports" in result.output
    everything = app.test_cli_runner().invoke(args=["queue", "worker", "--burst", "-q", "default"])
    assert "queues: default" in everything.output


def test_status_lists_the_live_workers(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=2, queues=["mail", "default"])
    runner = app.test_cli_runner()
    tasks.start(app)  # first: a command run on the app keeps it from starting in-process workers
    try:
        deadline = time.monotonic() + 30
        while not tasks.backend(app).workers():  # the first beat comes from the keeper thread
            assert time.monotonic() < deadline, "the worker never beat"
            time.sleep(0.01)
        result = runner.invoke(args=["queue", "status"])
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        header = lines.index(next(line for line in lines if line.startswith("worker ")))
        assert lines[header].split() == [
            "worker",
            "queues",
            "threads",
            "running",
            "processed",
            "last",
            "seen",
        ]
        row = lines[header + 1].split()
        assert row[0].startswith(f"{socket.gethostname()}:{os.getpid()}:web-")
        assert row[1:] == ["default,", "mail", "2", "0", "0", "0", "s", "ago"]
        as_json = json.loads(runner.invoke(args=["queue", "status", "--json"]).output)
        [worker] = as_json["workers"]
        assert (worker["name"], worker["threads"], worker["queues"]) == (row[0], 2, ["default", "mail"])
    finally:
        tasks.shutdown(app=app)
    assert "workers: none alive" in runner.invoke(args=["queue", "status"]).output
    assert json.loads(runner.invoke(args=["queue", "status", "--json"]).output)["workers"] == []


def test_worker_processes_need_a_shared_backend(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    TaskQueue(app, backend="memory://", workers=0)
    result = app.test_cli_runner().invoke(args=["queue", "worker", "--processes", "2"])
    assert result.exit_code == 2
    assert "--processes needs a backend the processes share" in result.output


def _locks_of(obj: object) -> list[Any]:
    """Every lock held by the attributes of ``obj`` (an Event's included): what a signal handler might take."""
    lock_types = (type(threading.Lock()), type(threading.RLock()))
    found: list[Any] = []
    for value in vars(obj).values():
        if isinstance(value, threading.Event):
            found.append(value._cond)  # type: ignore[attr-defined]
        elif isinstance(value, (threading.Condition, *lock_types)):
            found.append(value)
    return found


def _returns_while_locks_are_held(handler: Callable[[], object], owner: object) -> bool:
    """Run ``handler`` in a thread while another holds every lock of ``owner``: does it return?"""
    locks = _locks_of(owner)
    for lock in locks:
        lock.acquire()
    try:
        thread = threading.Thread(target=handler, daemon=True)
        thread.start()
        thread.join(2.0)
        return not thread.is_alive()
    finally:
        for lock in locks:
            lock.release()
        thread.join(5.0)


def test_the_supervisors_signal_handler_takes_no_lock(make_queue: MakeQueue) -> None:
    """A handler that takes a lock deadlocks when a second signal comes while the first holds it (seen: the
    SIGCHLD handler's ``Event.set`` interrupted by another SIGCHLD hung ``--processes`` for good)."""
    from flask_queue.tasks.cli import _Supervisor, _WorkerOptions

    app, _ = make_queue(workers=0)
    state = app.extensions["flask-queue.tasks"]
    options = _WorkerOptions(threads=1, queues=None, lease=30.0, burst=False)
    supervisor = _Supervisor(state, options, processes=2)
    try:
        assert _returns_while_locks_are_held(lambda: supervisor._on_signal(signal.SIGCHLD, None), supervisor)
        assert _returns_while_locks_are_held(lambda: supervisor._on_signal(signal.SIGTERM, None), supervisor)
        assert supervisor._stopping
    finally:
        supervisor._alarm.close()


def test_a_worker_processs_stop_handler_takes_no_lock() -> None:
    from flask_queue.tasks.cli import _stop_on, _StopFlag

    stop = _StopFlag()
    with _stop_on(stop):
        handler = signal.getsignal(signal.SIGTERM)
        assert callable(handler)
        assert _returns_while_locks_are_held(lambda: handler(signal.SIGTERM, None), stop)
    assert stop.is_set()
    assert stop.wait(0)


def test_flask_queue_without_an_app_or_a_task_queue_says_what_is_missing(tmp_path: Path) -> None:
    """``flask queue worker`` said only "No such command 'queue'" without --app, or on an app without a
    TaskQueue: the command exists now whatever the app (an entry point), and says what it needs."""
    import subprocess
    import sys

    (tmp_path / "plain.py").write_text("from flask import Flask\napp = Flask(__name__)\n")
    env = {**os.environ, "PYTHONPATH": "", "FLASK_APP": ""}
    env.pop("FLASK_APP")

    def flask(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "flask", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    no_app = flask("queue", "worker")
    assert no_app.returncode != 0
    assert "No such command" not in no_app.stderr
    assert "Could not locate a Flask application" in no_app.stderr
    no_tasks = flask("--app", "plain", "queue", "status")
    assert no_tasks.returncode != 0
    assert "this app has no TaskQueue: set one up with TaskQueue(app)" in no_tasks.stderr


def test_schedules_lists_pauses_resumes_and_runs(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.periodic(cron="*/5 * * * *", tz="Europe/Paris", name="purge")
    def purge_sessions() -> None: ...

    @tasks.periodic(every=30, name="beat")
    def beat() -> None: ...

    runner = app.test_cli_runner()
    lines = runner.invoke(args=["queue", "schedules"]).output.splitlines()
    assert lines[0].split() == ["schedule", "when", "last", "tick", "next", "tick"]
    assert lines[1].startswith("beat ")
    assert "every 30 s" in lines[1]
    assert lines[2].startswith("purge ")
    assert 'cron "*/5 * * * *" Europe/Paris' in lines[2]
    assert runner.invoke(args=["queue", "schedules", "pause", "purge"]).output == "schedule 'purge' paused\n"
    listed = json.loads(runner.invoke(args=["queue", "schedules", "--json"]).output)
    assert [(item["name"], item["paused"]) for item in listed] == [("beat", False), ("purge", True)]
    assert listed[1]["next_tick"].endswith(("+01:00", "+02:00"))
    assert "paused" in runner.invoke(args=["queue", "schedules"]).output.splitlines()[2]
    runner.invoke(args=["queue", "schedules", "resume", "purge"])
    assert not tasks.schedule_states(app)[1]["paused"]
    result = runner.invoke(args=["queue", "schedules", "run", "beat"])
    assert result.exit_code == 0
    assert "enqueued for schedule 'beat'" in result.output
    assert tasks.drain(app) == 1
    wrong = runner.invoke(args=["queue", "schedules", "pause", "nope"])
    assert wrong.exit_code == 2
    assert "no schedule is named 'nope' (schedules: beat, purge)" in wrong.output


def test_schedules_of_an_app_without_any(make_queue: MakeQueue) -> None:
    app, _ = make_queue(workers=0)
    assert app.test_cli_runner().invoke(args=["queue", "schedules"]).output == (
        "no schedules (@tasks.periodic) in this app\n"
    )
