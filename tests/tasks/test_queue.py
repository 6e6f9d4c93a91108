"""``TaskQueue`` and ``@tasks.task`` through the public API, on every backend."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, current_app

from flask_queue import ConfigurationError, JobCancelled, JobStatus, TaskFailed, TaskQueue, signals
from flask_queue.tasks.backends.memory import MemoryBackend

from .conftest import MakeQueue


def test_a_job_runs_in_a_worker_inside_an_app_context(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=1)

    @tasks.task
    def where() -> list[Any]:
        return [current_app.name, threading.current_thread().name]

    with app.app_context():
        job = where.enqueue()
        assert job.result(timeout=30) == [app.name, "flask-queue-0"]
        assert job.status is JobStatus.SUCCEEDED


def test_enqueue_outside_an_app_context_uses_the_only_app(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=1)

    @tasks.task
    def add(x: int, y: int) -> int:
        return x + y

    assert add.enqueue(2, y=3).result(timeout=30) == 5
    assert add(2, 3) == 5  # calling the task runs it here


def test_a_failure_reaches_the_caller_with_the_workers_traceback(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=1)

    @tasks.task
    def broken() -> None:
        raise LookupError("the widget is missing")

    job = broken.enqueue()
    with pytest.raises(TaskFailed, match="LookupError: the widget is missing") as failed:
        job.result(timeout=30)
    assert "raise LookupError" in failed.value.traceback
    assert job.status is JobStatus.FAILED
    assert job.error == "LookupError: the widget is missing"


def test_retries_run_the_job_again_until_it_succeeds(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=1)
    attempts: list[int] = []

    @tasks.task(retries=2, retry_backoff=0)
    def flaky() -> int:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("try again")
        return len(attempts)

    retried: list[Any] = []
    with signals.task_retried.connected_to(lambda sender, **kw: retried.append(kw["delay"])):
        job = flaky.enqueue()
        assert job.result(timeout=30) == 3
    assert job.record.attempts == 3
    assert retried == [0.0, 0.0]


def test_retries_exhausted_fail_the_job(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=1)

    @tasks.task(retries=1, retry_backoff=0)
    def hopeless() -> None:
        raise ValueError("never")

    job = hopeless.enqueue()
    with pytest.raises(TaskFailed):
        job.result(timeout=30)
    assert job.record.attempts == 2


def test_retry_backoff_doubles_with_full_jitter_and_a_cap(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0, retry_backoff_max=5.0)

    @tasks.task(retries=10, retry_backoff=1.0)
    def task() -> None: ...

    executor = app.extensions["flask-queue.tasks"].executor
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 5.0), (9, 5.0)]:
        delays = [executor.backoff(task.name, failures) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling / 2  # jittered over the whole range, not a fixed delay


def test_a_job_past_its_timeout_fails_with_job_timeout(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=1)
    stop = threading.Event()

    @tasks.task(timeout=0.2)
    def spins() -> None:
        while not stop.is_set():
            stop.wait(0.01)

    job = spins.enqueue()
    try:
        with pytest.raises(TaskFailed, match=r"JobTimeout: the task ran longer than its timeout of 0\.2 s"):
            job.result(timeout=30)
    finally:
        stop.set()


def test_enqueue_in_and_enqueue_at_schedule_the_job(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task
    def later() -> None: ...

    with app.app_context():
        inline = later.enqueue_in(3600)
        at = later.enqueue_at(dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1))
        assert inline.status is JobStatus.SCHEDULED
        assert at.status is JobStatus.SCHEDULED
        assert tasks.size() == 0
        with pytest.raises(ValueError, match="aware datetime"):
            later.enqueue_at(dt.datetime.now() + dt.timedelta(hours=1))
        with pytest.raises(TypeError, match="delay in seconds"):
            later.enqueue_in("soon")  # type: ignore[arg-type]


def test_a_delayed_job_runs_when_due(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=1)

    @tasks.task
    def soon() -> str:
        return "ran"

    job = soon.enqueue_in(0.1)
    assert job.result(timeout=30) == "ran"
    assert job.record.started_at is not None
    assert job.record.started_at >= job.record.enqueued_at + 0.1


def test_enqueue_many_returns_a_job_per_call(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=2)

    @tasks.task
    def square(x: int) -> int:
        return x * x

    jobs = square.enqueue_many([((n,), {}) for n in range(20)])
    assert [job.result(timeout=30) for job in jobs] == [n * n for n in range(20)]
    assert square.enqueue_many([]) == []
    with pytest.raises(TypeError, match="call 0 must be an"):
        square.enqueue_many([(1,)])  # type: ignore[list-item]


def test_options_change_queue_priority_and_retries_per_call(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task(queue="mail", priority=5)
    def send(to: str, queue: str = "") -> None: ...

    with app.app_context():
        plain = send.enqueue("a")
        urgent = send.options(queue="urgent", priority=-1, retries=4).enqueue("b", queue="kwarg, not option")
        assert (plain.record.queue, plain.record.priority) == ("mail", 5)
        assert (urgent.record.queue, urgent.record.priority, urgent.record.retries) == ("urgent", -1, 4)
        assert tasks.size("urgent") == 1
        with pytest.raises(ValueError, match="retries"):
            send.options(retries=-1)


def test_lower_priority_runs_first(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)
    ran: list[str] = []

    @tasks.task
    def note(name: str) -> None:
        ran.append(name)

    with app.app_context():
        note.enqueue("normal")
        note.options(priority=-10).enqueue("urgent")
        note.options(priority=10).enqueue("whenever")
        assert tasks.drain() == 3
    assert ran == ["urgent", "normal", "whenever"]


def test_arguments_json_cannot_carry_raise_in_the_caller_naming_them(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task
    def store(data: Any, when: Any = None) -> None: ...

    with app.app_context():
        with pytest.raises(TypeError, match=r"positional argument 0 \(set\)"):
            store.enqueue({1, 2})
        with pytest.raises(TypeError, match=r"argument 'when' \(datetime\)"):
            store.enqueue(1, when=dt.datetime.now())
        assert tasks.size() == 0


def test_a_result_json_cannot_carry_fails_the_job(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=1)

    @tasks.task
    def returns_a_set() -> set[int]:
        return {1}

    with pytest.raises(TaskFailed, match="JSON cannot carry"):
        returns_a_set.enqueue().result(timeout=30)


def test_cancel_a_job_before_it_runs(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task
    def never() -> None:
        raise AssertionError("a cancelled job ran")

    with app.app_context():
        job = never.enqueue()
        assert job.cancel()
        assert job.status is JobStatus.CANCELLED
        assert tasks.drain() == 0
        with pytest.raises(JobCancelled):
            job.result(timeout=1)


def test_result_timeout_raises_timeout_error(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task
    def idle() -> None: ...

    with app.app_context():
        job = idle.enqueue()
        with pytest.raises(TimeoutError, match="did not finish"):
            job.result(timeout=0.05)


def test_get_job_size_and_stats(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task
    def noop() -> None: ...

    with app.app_context():
        job = noop.enqueue()
        noop.options(queue="other").enqueue()
        found = tasks.get_job(job.id)
        assert found == job
        assert tasks.get_job("missing") is None
        assert tasks.size() == 2
        assert tasks.size("other") == 1
        stats = tasks.stats()
        assert stats["queues"]["default"]["queued"] == 1
        assert stats["workers"] == {"threads": 0, "running": 0, "processed": 0}


def test_signals_tell_the_life_of_a_job(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)
    seen: list[tuple[str, str]] = []

    @tasks.task
    def ok() -> int:
        return 1

    @tasks.task
    def bad() -> None:
        raise RuntimeError("x")

    receivers = {
        name: (lambda sender, job, _name=name, **extra: seen.append((_name, job.id)))
        for name in ("task_enqueued", "task_started", "task_succeeded", "task_failed")
    }
    for name, receiver in receivers.items():
        getattr(signals, name).connect(receiver, weak=False)
    try:
        with app.app_context():
            good, wrong = ok.enqueue(), bad.enqueue()
            tasks.drain()
    finally:
        for name, receiver in receivers.items():
            getattr(signals, name).disconnect(receiver)
    assert seen == [
        ("task_enqueued", good.id),
        ("task_enqueued", wrong.id),
        ("task_started", good.id),
        ("task_succeeded", good.id),
        ("task_started", wrong.id),
        ("task_failed", wrong.id),
    ]


def test_eager_mode_runs_each_job_at_enqueue(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(eager=True)

    @tasks.task(retries=2)
    def twice(n: int) -> int:
        return n * 2

    with app.app_context():
        job = twice.enqueue(21)
        assert job.status is JobStatus.SUCCEEDED
        assert job.result(timeout=0) == 42
        assert twice.enqueue_in(3600, 1).result(timeout=0) == 2  # delays are ignored in eager mode
    assert tasks.stats()["workers"]["threads"] == 0


def test_drain_runs_jobs_enqueued_by_jobs(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)
    ran: list[int] = []

    @tasks.task
    def count(n: int) -> None:
        ran.append(n)
        if n:
            count.enqueue(n - 1)

    with app.app_context():
        count.enqueue(3)
        assert tasks.drain() == 4
    assert ran == [3, 2, 1, 0]


def test_a_job_future_completes_with_the_result(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=1)

    @tasks.task
    def value() -> dict[str, int]:
        return {"a": 1}

    assert value.enqueue().future().result(timeout=30) == {"a": 1}


def test_config_keys_override_the_constructor(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config.update(TASK_QUEUE_BACKEND="memory://", TASK_QUEUE_WORKERS=0, TASK_QUEUE_QUEUES="a, b")
    tasks = TaskQueue(app, workers=3, backend="sqlite:///x.sqlite3")
    assert isinstance(tasks.backend(app), MemoryBackend)
    assert app.extensions["flask-queue.tasks"].settings["queues"] == ["a", "b"]
    assert app.config["TASK_QUEUE_LEASE"] == 30.0
    assert not (tmp_path / "x.sqlite3").exists()


def test_the_default_backend_is_sqlite_in_the_instance_folder(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path / "instance"))
    tasks = TaskQueue(app, workers=0)
    try:
        assert tasks.backend(app).url == f"sqlite:///{tmp_path / 'instance' / 'flask_queue.sqlite3'}"
        assert (tmp_path / "instance" / "flask_queue.sqlite3").exists()
    finally:
        tasks.backend(app).close()


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("workers", -1, "TASK_QUEUE_WORKERS must be an integer >= 0"),
        ("workers", 1.5, "TASK_QUEUE_WORKERS"),
        ("lease", 0, "TASK_QUEUE_LEASE must be a number > 0"),
        ("result_ttl", -5, "TASK_QUEUE_RESULT_TTL"),
        ("queues", [], "TASK_QUEUE_QUEUES"),
        (
            "backend",
            "amqp://broker",
            r"unknown scheme 'amqp'; use one of: memory://, sqlite://, redis:// \(pip install 'flask-queue\[redis\]'\)",
        ),
        ("backend", "sqlite:///:memory:", "names no file"),
        ("backend", "jobs.db", "is not a URL"),
        ("backend", "", "must be a backend URL or None"),
        ("eager", "no", "TASK_QUEUE_EAGER must be True or False"),
    ],
)
def test_bad_settings_raise_at_set_up(tmp_path: Path, setting: str, value: Any, message: str) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    with pytest.raises(ConfigurationError, match=message):
        TaskQueue(app, **{setting: value})


def test_a_backend_url_password_is_hidden_in_errors(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    with pytest.raises(ConfigurationError) as error:
        TaskQueue(app, backend="amqp://user:s3cret@host/vhost")
    assert "s3cret" not in str(error.value)
    assert "user:***@host" in str(error.value)


def test_a_backend_url_password_given_as_a_parameter_is_hidden_in_errors(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    with pytest.raises(ConfigurationError) as error:
        TaskQueue(app, backend="amqp://host/vhost?user=ada&password=s3cret&sslpassword=k3y")
    assert "s3cret" not in str(error.value)
    assert "k3y" not in str(error.value)
    assert "amqp://host/vhost?user=ada&password=***&sslpassword=***" in str(error.value)


def test_set_up_twice_raises(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend="memory://")
    with pytest.raises(RuntimeError, match="already set up"):
        TaskQueue(app, backend="memory://")
    with pytest.raises(RuntimeError, match="already set up"):
        tasks.init_app(app)
    # The settings are typed keyword arguments: mypy catches the misspelling, Python refuses it at run time.
    with pytest.raises(TypeError, match="unexpected keyword argument 'worker'"):
        TaskQueue(worker=2)  # type: ignore[call-arg]


def test_enqueue_without_an_app_names_the_fix() -> None:
    tasks = TaskQueue(backend="memory://")

    @tasks.task
    def orphan() -> None: ...

    with pytest.raises(RuntimeError, match=r"tasks.init_app\(app\)"):
        orphan.enqueue()


def test_with_several_apps_enqueue_needs_an_app_context(tmp_path: Path) -> None:
    tasks = TaskQueue(backend="memory://", workers=0)
    first, second = Flask("first", instance_path=str(tmp_path)), Flask("second", instance_path=str(tmp_path))
    tasks.init_app(first)
    tasks.init_app(second)

    @tasks.task
    def noop() -> None: ...

    with pytest.raises(RuntimeError, match="several apps"):
        noop.enqueue()
    with second.app_context():
        noop.enqueue()
    assert tasks.backend(first).size() == 0
    assert tasks.backend(second).size() == 1


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"retries": True}, "retries must be an integer"),
        ({"timeout": 0}, "timeout must be a number > 0"),
        ({"timeout": -2.5}, "timeout must be a number > 0"),
        ({"retry_backoff": -1}, "retry_backoff must be a number >= 0"),
        ({"queue": ""}, "queue must be a non-empty string"),
        ({"priority": 1.5}, r"priority must be an integer from -2\*\*53 to 2\*\*53"),
        ({"priority": 2**53 + 1}, "priority must be an integer"),
        ({"priority": -(2**53) - 1}, "priority must be an integer"),
        ({"retries": 2**63}, "retries must be an integer"),
        ({"name": ""}, "task name must be a non-empty string"),
    ],
)
def test_bad_task_options_raise_at_decoration(options: dict[str, Any], message: str) -> None:
    tasks = TaskQueue(backend="memory://")
    with pytest.raises(ValueError, match=message):
        tasks.task(**options)(lambda: None)


def test_two_tasks_with_one_name_raise() -> None:
    tasks = TaskQueue(backend="memory://")
    tasks.task(name="same")(lambda: 1)
    with pytest.raises(ValueError, match="two tasks are named 'same'"):
        tasks.task(name="same")(lambda: 2)


def test_results_are_kept_for_result_ttl_and_failures_for_failed_ttl(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0, result_ttl=0, failed_ttl=3600)

    @tasks.task
    def ok() -> int:
        return 1

    @tasks.task
    def bad() -> None:
        raise ValueError("kept")

    with app.app_context():
        done, failed = ok.enqueue(), bad.enqueue()
        tasks.drain()
        assert done.refresh().expires_at is not None
        assert tasks.backend().expire() == 1
        assert tasks.get_job(done.id) is None
        assert failed.status is JobStatus.FAILED
        assert failed.error == "ValueError: kept"


def test_keyword_names_that_are_not_strings_raise(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task
    def store(**fields: object) -> None: ...

    with app.app_context(), pytest.raises(TypeError, match="keyword argument names must be strings"):
        store.enqueue_many([((), {1: "a"})])  # type: ignore[dict-item]
