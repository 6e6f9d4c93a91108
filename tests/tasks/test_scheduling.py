"""Unique keys, expiry and periodic schedules through the public API, on every backend.

Multi-process runs (several ``flask queue worker`` processes and gunicorn workers sharing one schedule) are in
``test_scheduling_processes.py``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import pytest
from flask import Flask

from flask_queue import DuplicateJob, Job, JobExpired, JobStatus, TaskQueue

from .conftest import MakeQueue

WAIT = 30.0


def wait_for(what: Any, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not what():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


# -- keys ------------------------------------------------------------------------------------------------------


def test_a_key_returns_the_unfinished_job(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=0)

    @tasks.task
    def sync(invoice: int) -> int:
        return invoice

    first = sync.options(key="invoice:7").enqueue(7)
    assert sync.options(key="invoice:7").enqueue(8) == first
    assert isinstance(first, Job)
    assert tasks.drain() == 1
    assert first.result(timeout=1) == 7
    second = sync.options(key="invoice:7").enqueue(9)  # the first finished: the key is free
    assert second != first


def test_raise_gives_duplicate_job_with_the_existing_job(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=0)

    @tasks.task
    def sync(invoice: int) -> None: ...

    first = sync.options(key="invoice:7").enqueue(7)
    with pytest.raises(DuplicateJob) as caught:
        sync.options(key="invoice:7", on_conflict="raise").enqueue(7)
    assert caught.value.job == first
    assert caught.value.job.status is JobStatus.QUEUED
    assert "invoice:7" in str(caught.value)


def test_replace_debounces_a_job_not_started(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=0)
    seen: list[int] = []

    @tasks.task
    def reindex(version: int) -> None:
        seen.append(version)

    debounced = reindex.options(key="user:1", on_conflict="replace")
    jobs = {debounced.enqueue_in(60, version) for version in range(5)}
    assert len(jobs) == 1
    job = jobs.pop()
    assert job.status is JobStatus.SCHEDULED
    debounced.enqueue(99)  # now, with the last arguments
    assert tasks.drain() == 1
    assert seen == [99]


def test_replace_while_the_job_runs_waits_for_it(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=1)
    started, release = threading.Event(), threading.Event()
    seen: list[int] = []

    @tasks.task
    def reindex(version: int) -> None:
        started.set()
        release.wait(WAIT)
        seen.append(version)

    debounced = reindex.options(key="user:1", on_conflict="replace")
    running = debounced.enqueue(1)
    assert started.wait(WAIT)
    waiting = debounced.enqueue(2)
    assert debounced.enqueue(3) == waiting
    assert waiting.status is JobStatus.DEFERRED
    release.set()
    assert waiting.result(timeout=WAIT) is None
    assert running.status is JobStatus.SUCCEEDED
    assert seen == [1, 3]


def test_a_key_function_gives_each_call_of_enqueue_many_its_key(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=0)

    @tasks.task
    def sync(invoice: int, reason: str = "") -> None: ...

    keyed = sync.options(key=lambda invoice, reason="": f"invoice:{invoice}")
    jobs = keyed.enqueue_many([((1,), {}), ((2,), {}), ((1,), {"reason": "again"})])
    assert jobs[0] == jobs[2] != jobs[1]
    assert tasks.backend().pending() == 2
    with pytest.raises(ValueError, match="returned 5, not a non-empty string"):
        sync.options(key=lambda invoice: invoice).enqueue(5)
    with pytest.raises(ValueError, match="two calls of one enqueue_many have the key 'invoice:3'"):
        sync.options(key=lambda invoice: f"invoice:{invoice}", on_conflict="raise").enqueue_many(
            [((3,), {}), ((3,), {})]
        )


def test_a_key_works_with_enqueue_on_commit(make_queue: MakeQueue) -> None:
    pytest.importorskip("sqlalchemy")
    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session

    _, tasks = make_queue(workers=0)

    @tasks.task
    def sync(invoice: int) -> None: ...

    engine = create_engine("sqlite://")
    with Session(engine) as session:
        session.connection()  # a transaction is open: the enqueues wait for its commit
        for invoice in (1, 2):
            sync.options(session=session, key="invoice:1").enqueue_on_commit(invoice)
        assert tasks.backend().pending() == 0
        session.commit()
    assert tasks.backend().pending() == 1  # two commits' enqueues, one key: one job
    engine.dispose()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"key": 5}, "key must be a non-empty string"),
        ({"key": ""}, "key must be a non-empty string"),
        ({"key": "x" * 1001}, "at most 1000 characters"),
        ({"key": "k", "on_conflict": "ignore"}, "on_conflict must be one of return, raise, replace"),
        ({"on_conflict": "raise"}, "needs a key="),
        ({"expires_in": 0}, "expires_in must be a number > 0"),
        ({"expires_in": -1}, "expires_in must be a number > 0"),
        ({"expires_in": "5"}, "expires_in must be a number > 0"),
        ({"expires_in": 5, "expires_at": dt.datetime.now(dt.timezone.utc)}, "not both"),
        ({"expires_at": dt.datetime(2030, 1, 1)}, "needs an aware datetime"),
    ],
)
def test_bad_options_raise_value_error_naming_them(
    make_queue: MakeQueue, options: dict[str, Any], message: str
) -> None:
    _, tasks = make_queue(workers=0)

    @tasks.task
    def noop() -> None: ...

    with pytest.raises(ValueError, match=message):
        noop.options(**options)


# -- expiry ----------------------------------------------------------------------------------------------------


def test_a_job_not_started_in_time_expires_and_never_runs(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=0)
    ran: list[int] = []

    @tasks.task
    def digest(n: int) -> None:
        ran.append(n)

    late = digest.options(expires_in=0.05).enqueue(1)
    on_time = digest.options(expires_in=60).enqueue(2)
    time.sleep(0.1)
    assert tasks.drain() == 1
    assert ran == [2]
    assert late.status is JobStatus.EXPIRED
    with pytest.raises(JobExpired):
        late.result(timeout=1)
    assert on_time.status is JobStatus.SUCCEEDED
    counts = tasks.stats()["queues"]["default"]
    assert (counts["expired"], counts["succeeded"]) == (1, 1)


def test_expires_in_counts_from_when_the_job_is_due(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=0)

    @tasks.task
    def noop() -> None: ...

    job = noop.options(expires_in=0.5).enqueue_in(0.2)
    record = job.record
    assert record.start_by == pytest.approx(record.eta + 0.5)
    at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    with pytest.raises(ValueError, match="expires_at is not after the time the job is due"):
        noop.options(expires_at=at).enqueue_in(120)


def test_an_expired_jobs_future_raises(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=0)

    @tasks.task
    def noop() -> None: ...

    future = noop.options(expires_in=0.05).enqueue().future()
    time.sleep(0.1)
    tasks.drain()
    with pytest.raises(JobExpired):
        future.result(timeout=WAIT)


# -- periodic --------------------------------------------------------------------------------------------------


def test_a_periodic_job_runs_once_per_tick_with_its_tick(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=2)
    ticks: list[dt.datetime] = []

    @tasks.periodic(every=0.25)
    def beat(tick: dt.datetime) -> None:
        ticks.append(tick)

    tasks.start()
    wait_for(lambda: len(ticks) >= 4)
    tasks.shutdown(timeout=5)
    seen = [tick.timestamp() for tick in ticks]
    assert len(set(seen)) == len(seen), "a tick ran twice"
    assert all(tick.tzinfo is not None for tick in ticks)
    steps = {
        round(later - earlier, 3) for earlier, later in zip(sorted(seen), sorted(seen)[1:], strict=False)
    }
    assert steps <= {0.25, 0.5, 0.75}  # ticks on the grid, at most a couple skipped ("latest" catch-up)


def test_two_apps_on_one_backend_enqueue_each_tick_once(make_queue: MakeQueue, backend_kind: str) -> None:
    """On a shared backend the two apps' keepers race for each tick and one wins; memory:// belongs to its
    TaskQueue, so there each app keeps its own schedule (each tick once per app)."""
    ran: list[tuple[int, str]] = []
    lock = threading.Lock()
    queues = []
    for index in range(2):
        _, tasks = make_queue(workers=1)

        @tasks.periodic(every=0.2, name="shared")
        def shared(tick: dt.datetime, index: int = index) -> None:
            with lock:
                ran.append((index if backend_kind == "memory" else 0, tick.isoformat()))

        queues.append(tasks)
    for tasks in queues:
        tasks.start()
    wait_for(lambda: len(ran) >= 6)
    assert len(set(ran)) == len(ran), f"ticks ran twice: {sorted(ran)}"


def test_overlap_false_skips_ticks_while_the_last_one_runs(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=2)
    release = threading.Event()
    runs: list[float] = []

    @tasks.periodic(every=0.1, overlap=False)
    def slow(tick: dt.datetime) -> None:
        runs.append(tick.timestamp())
        release.wait(WAIT)

    tasks.start()
    wait_for(lambda: len(runs) == 1)
    state = tasks.backend().schedules()
    wait_for(lambda: (tasks.backend().schedules()[0].last_tick or 0) >= (state[0].last_tick or 0) + 0.3)
    assert len(runs) == 1  # ticks passed, none started while the first ran
    release.set()
    wait_for(lambda: len(runs) >= 2)


def test_pause_resume_and_run_now(make_queue: MakeQueue) -> None:
    _app, tasks = make_queue(workers=0)
    ran: list[dt.datetime] = []

    @tasks.periodic(cron="0 3 * * *", tz="Europe/Paris", name="nightly")
    def nightly(tick: dt.datetime) -> None:
        ran.append(tick)

    [listed] = tasks.schedule_states()
    assert (listed["name"], listed["when"], listed["last_tick"], listed["paused"]) == (
        "nightly",
        'cron "0 3 * * *" Europe/Paris',
        None,
        False,
    )
    assert listed["next_tick"].hour == 3
    assert str(listed["next_tick"].tzinfo) == "Europe/Paris"
    tasks.pause("nightly")
    assert tasks.schedule_states()[0]["paused"]
    job = tasks.run_now("nightly")
    assert tasks.drain() == 1
    assert job.status is JobStatus.SUCCEEDED
    assert ran[0].tzinfo is not None
    tasks.resume("nightly")
    assert not tasks.schedule_states()[0]["paused"]
    with pytest.raises(LookupError, match="no schedule is named 'nope' \\(schedules: nightly\\)"):
        tasks.pause("nope")


def test_a_paused_schedule_enqueues_nothing(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=1)
    ran: list[float] = []

    @tasks.periodic(every=0.1, name="paused")
    def paused() -> None:
        ran.append(time.time())

    tasks.pause("paused")
    tasks.start()
    wait_for(lambda: (tasks.backend().schedules()[0].last_tick or 0) > 0)  # ticks pass...
    time.sleep(0.3)
    assert ran == []  # ...without jobs


def test_schedules_need_a_worker_and_an_app_under_test_has_none(tmp_path: Any) -> None:
    app = Flask(__name__)
    app.config["TESTING"] = True
    tasks = TaskQueue(app)

    @tasks.periodic(every=0.05)
    def often() -> None: ...

    time.sleep(0.2)
    assert tasks.backend().pending() == 0  # no worker: no tick; tests call tasks.run_now(name)
    tasks.run_now(often.name)
    assert tasks.drain() == 1


def test_run_now_of_a_schedule_that_must_not_overlap_returns_the_unfinished_job(
    make_queue: MakeQueue,
) -> None:
    _, tasks = make_queue(workers=0)

    @tasks.periodic(every=3600, overlap=False, name="exclusive")
    def exclusive() -> None: ...

    first = tasks.run_now("exclusive")
    assert tasks.run_now("exclusive") == first
    tasks.drain()
    assert tasks.run_now("exclusive") != first


def test_a_schedule_added_after_the_workers_started_ticks_too(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=1)
    ran: list[str] = []

    @tasks.periodic(every=3600, name="slow")
    def slow() -> None: ...

    tasks.start()
    time.sleep(0.2)  # the keeper has read the schedules and sleeps until the next hour

    @tasks.periodic(every=0.1, name="late")
    def late() -> None:
        ran.append("late")

    wait_for(lambda: len(ran) >= 2, timeout=10)


def test_schedule_actions_take_the_task_itself(make_queue: MakeQueue) -> None:
    _, tasks = make_queue(workers=0)

    @tasks.periodic(cron=" 0  3 * * * ")  # spaces as a crontab may have them
    def nightly() -> None: ...

    @tasks.task
    def unscheduled() -> None: ...

    assert tasks.schedules[nightly.name].cron == "0 3 * * *"
    tasks.pause(nightly)
    assert tasks.schedule_states()[0]["paused"]
    tasks.resume(nightly)
    job = tasks.run_now(nightly)
    assert job.task == nightly.name
    with pytest.raises(LookupError, match="has no schedule"):
        tasks.run_now(unscheduled)
    tasks.periodic(every=60, name="nightly-too")(nightly)
    with pytest.raises(LookupError, match=r"has several schedules: name one \(nightly-too, "):
        tasks.run_now(nightly)
