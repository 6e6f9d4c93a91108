"""``TaskQueue`` and ``@tasks.task`` through the public API, on every backend."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask, current_app

from flask_queue import (
    ConfigurationError,
    ConfigurationWarning,
    JobCancelled,
    JobStatus,
    TaskFailed,
    TaskQueue,
    signals,
)
from flask_queue.tasks.backends.memory import MemoryBackend

from .conftest import MakeQueue, in_process_threads


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
        assert stats["workers"] == []  # no worker is running anywhere on this backend


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
    assert in_process_threads(tasks) == 0


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


# -- a newcomer's mistakes ------------------------------------------------------------------------------------


def test_an_app_under_test_with_no_backend_set_gets_its_own_queue_in_memory(tmp_path: Path) -> None:
    """The default SQLite file in instance/ was shared by an app's test suite and its dev server: each ran the
    other's jobs against the wrong database."""
    dev = Flask("dev", instance_path=str(tmp_path))
    test = Flask("test", instance_path=str(tmp_path))
    test.config["TESTING"] = True
    dev_tasks, test_tasks = TaskQueue(dev, workers=0), TaskQueue(test)
    assert test_tasks.state(test).settings["workers"] == 0
    try:
        assert dev_tasks.backend(dev).url.startswith("sqlite:")
        assert test_tasks.backend(test).url == "memory://"
        # The threads' default for an app under test with a backend of its own, and for any other app.
        other = Flask("other", instance_path=str(tmp_path))
        other.config["TESTING"] = True
        assert TaskQueue(other, backend="memory://").state(other).settings["workers"] == 2
        assert not (tmp_path / "flask_queue.sqlite3").exists() or dev_tasks.backend(dev).size() == 0
    finally:
        dev_tasks.backend(dev).close()


def test_a_misspelt_setting_is_warned_about_once_naming_the_real_one(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    app.config.update(TASK_QUEUE_WORKER=4, TASK_QUEUE_BACKNED="memory://", TASK_QUEUE_XYZZY=1)
    with pytest.warns(ConfigurationWarning) as caught:
        TaskQueue(app, backend="memory://", workers=0)
    messages = sorted(str(warning.message) for warning in caught)
    assert len(messages) == 3
    assert (
        "TASK_QUEUE_BACKNED is not a Flask-Queue setting, so it is ignored: did you mean TASK_QUEUE_BACKEND?"
        in messages
    )
    assert any(
        m.startswith("TASK_QUEUE_WORKER is not") and "did you mean TASK_QUEUE_WORKERS?" in m for m in messages
    )
    assert any(m.startswith("TASK_QUEUE_XYZZY is not") and "TASK_QUEUE_LEASE" in m for m in messages)


def test_a_setting_changed_after_init_app_is_warned_about_at_the_first_request(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend="memory://", workers=0)
    app.config["TASK_QUEUE_LEASE"] = 5.0

    @app.get("/")
    def index() -> str:
        return "ok"

    client = app.test_client()
    with pytest.warns(
        ConfigurationWarning,
        match=r"TASK_QUEUE_LEASE was changed after TaskQueue.init_app read it \(30.0 -> 5.0\)",
    ):
        client.get("/")
    client.get("/")  # once is enough: no second warning (filterwarnings=error would raise it)
    assert tasks.state(app).settings["lease"] == 30.0


def test_an_async_task_is_refused_at_decoration() -> None:
    tasks = TaskQueue(backend="memory://")

    async def fetch() -> None: ...

    with pytest.raises(TypeError, match=r"async def tasks are not supported yet.*asyncio\.run"):
        tasks.task(fetch)
    with pytest.raises(TypeError, match="async def tasks"):
        tasks.task(name="fetch")(fetch)


def test_stats_list_the_workers_as_flask_queue_status_does_and_work_from_a_plain_thread(
    make_queue: MakeQueue,
) -> None:
    app, tasks = make_queue(workers=1)
    tasks.start(app)
    seen: list[dict[str, Any]] = []

    def read() -> None:
        deadline = threading.Event()
        for _ in range(200):  # the worker's first heartbeat is written as it starts
            stats = tasks.stats()
            if stats["workers"]:
                seen.append(stats)
                return
            deadline.wait(0.05)

    thread = threading.Thread(target=read)
    thread.start()
    thread.join()
    (stats,) = seen
    (worker,) = stats["workers"]
    assert worker["threads"] == 1
    assert worker["pid"] == os.getpid()
    status = json.loads(app.test_cli_runner().invoke(args=["queue", "status", "--json"]).output)
    assert [w["name"] for w in status["workers"]] == [worker["name"]]


# -- values a backend or JSON cannot hold as they are ------------------------------------------------------


@pytest.mark.parametrize("text", ["bad \ud800 input", "nul \x00 inside", "both \udfff\x00"])
def test_an_error_text_no_backend_can_hold_is_stored_escaped_and_the_job_fails_once(
    make_queue: MakeQueue, text: str
) -> None:
    """It made the write of the failure fail: the worker took that for an outage, ran the job three more
    times and recorded WorkerLost; drain() raised and left the job running."""
    app, tasks = make_queue(workers=0)

    @tasks.task
    def echo_input() -> None:
        raise ValueError(text)

    with app.app_context():
        job = echo_input.enqueue()
        assert tasks.drain() == 1
        record = job.refresh()
    assert record.status is JobStatus.FAILED
    assert record.attempts == 1
    expected = "ValueError: " + text.replace("\x00", "\\x00").encode("utf-8", "backslashreplace").decode()
    assert record.error == expected
    assert expected in (record.traceback or "")


def test_an_exception_that_cannot_be_printed_still_fails_the_job(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    @tasks.task
    def broken() -> None:
        raise Unprintable

    with app.app_context():
        job = broken.enqueue()
        tasks.drain()
        assert job.refresh().error == "Unprintable: <the Unprintable could not be printed>"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"queue": "a\x00b"}, "queue must be a name without control characters"),
        ({"name": "task\x00"}, "task name must be a name without control characters"),
        ({"queue": "half \ud800"}, "queue must be a name without control characters or lone surrogates"),
    ],
)
def test_a_name_a_backend_cannot_store_is_refused_at_decoration(
    options: dict[str, Any], message: str
) -> None:
    """A NUL in a queue or task name was accepted by SQLite and Redis and refused by PostgreSQL."""
    tasks = TaskQueue(backend="memory://")
    with pytest.raises(ConfigurationError, match=message):
        tasks.task(**options)(lambda: None)
    task = tasks.task(name="fine")(lambda: None)
    with pytest.raises(ConfigurationError, match="queue must be a name"):
        task.options(queue="\x01")


def test_arguments_nested_deeper_than_json_goes_raise_type_error_naming_them(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task
    def deep(value: Any) -> None: ...

    nested: list[Any] = []
    inner = nested
    for _ in range(100_000):  # deeper than json goes on any Python (3.13's goes past 5,000)
        inner.append([])
        inner = inner[0]
    with (
        app.app_context(),
        pytest.raises(TypeError, match=r"positional argument 0 \(list\).*nested too deeply"),
    ):
        deep.enqueue(nested)


@pytest.mark.parametrize("value", [{1: "one"}, [{"ok": {None: 1}}], {"a": [{2.5: "x"}]}])
def test_a_dict_key_json_would_turn_into_a_string_raises_type_error_at_enqueue(
    make_queue: MakeQueue, value: Any
) -> None:
    """JSON turns {1: "one"} into {"1": "one"}: the task would get other keys than the caller passed."""
    app, tasks = make_queue(workers=0)

    @tasks.task
    def takes(value: Any) -> None: ...

    with app.app_context():
        with pytest.raises(TypeError, match=r"argument 'value' \(.*\) has the dict key .* use string keys"):
            takes.enqueue(value=value)
        with pytest.raises(TypeError, match=r"positional argument 0"):
            takes.enqueue(value)


def test_a_result_with_a_non_string_key_fails_the_job_saying_so(make_queue: MakeQueue) -> None:
    app, tasks = make_queue(workers=0)

    @tasks.task
    def counts() -> dict[int, int]:
        return {1: 2}

    with app.app_context():
        job = counts.enqueue()
        tasks.drain()
        assert "dict key 1, which JSON turns into '1'" in (job.refresh().error or "")


def test_wrong_objects_where_an_app_or_a_function_is_expected_raise_type_error_naming_the_fix() -> None:
    with pytest.raises(
        TypeError,
        match=r"TaskQueue\(app\) and TaskQueue.init_app\(app\) take a Flask app, not str 'sqlite:///jobs.db'.*backend=URL",
    ):
        TaskQueue("sqlite:///jobs.db")  # type: ignore[arg-type]
    tasks = TaskQueue(backend="memory://")

    @tasks.task
    def once() -> None: ...

    with pytest.raises(TypeError, match="is a task already"):
        tasks.task(once)
    with pytest.raises(TypeError, match="@task decorates a function, not type"):
        tasks.task(dict)


def test_a_backend_scheme_is_case_insensitive(tmp_path: Path) -> None:
    app = Flask(__name__, instance_path=str(tmp_path))
    tasks = TaskQueue(app, backend="SQLite:///jobs.sqlite3", workers=0)
    assert tasks.backend(app).url == f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    tasks.backend(app).close()


# -- retry control ---------------------------------------------------------------------------------------------


def test_retry_on_retries_only_the_exceptions_named(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=0)
    attempts: list[str] = []

    @tasks.task(retries=3, retry_on=(ConnectionError, TimeoutError))
    def call_partner(error: str) -> None:
        attempts.append(error)
        raise {"connection": ConnectionError, "bad input": KeyError}[error](error)

    flaky = call_partner.enqueue("connection")
    tasks.drain()
    assert attempts.count("connection") == 4  # the first attempt and its 3 retries
    assert flaky.status is JobStatus.FAILED
    wrong = call_partner.enqueue("bad input")
    tasks.drain()
    assert attempts.count("bad input") == 1  # not named in retry_on: failed at once
    assert wrong.status is JobStatus.FAILED
    assert "KeyError" in (wrong.error or "")


def test_fail_on_fails_at_once_whatever_retry_on_says(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=0)
    attempts: list[type[BaseException]] = []

    @tasks.task(retries=3, fail_on=ValueError)
    def parse(kind: str) -> None:
        exc: type[Exception] = ValueError if kind == "value" else OSError
        attempts.append(exc)
        raise exc(kind)

    parse.enqueue("value")
    parse.enqueue("os")
    tasks.drain()
    assert attempts.count(ValueError) == 1
    assert attempts.count(OSError) == 4

    @tasks.task(retries=2, retry_on=LookupError, fail_on=KeyError)  # KeyError is a LookupError: fail_on wins
    def lookup() -> None:
        attempts.append(KeyError)
        raise KeyError("missing")

    attempts.clear()
    lookup.enqueue()
    tasks.drain()
    assert attempts == [KeyError]


@pytest.mark.parametrize("value", ["ValueError", ValueError("x"), (ValueError, "x"), (), int, [ValueError]])
def test_retry_on_and_fail_on_take_exception_classes(make_queue: MakeQueue, value: object) -> None:
    _, tasks = make_queue(workers=0)
    options: dict[str, Any] = {}
    for option in ("retry_on", "fail_on"):
        options = {option: value}  # of no type mypy would let through: the point of the test
        with pytest.raises(ValueError, match=f"{option} must be an exception class or a tuple of them"):
            tasks.task(name=f"bad-{option}", **options)(lambda: None)
