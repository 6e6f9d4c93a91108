"""The backend contract (``flask_queue/tasks/backends/base.py``), checked against every backend."""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from flask_queue import BackendError, JobCancelled, JobStatus, TaskFailed
from flask_queue.tasks import JobRecord, WorkerInfo
from flask_queue.tasks.backends.base import LOST_ERROR, MAX_LOST, Backend
from flask_queue.tasks.backends.sqlite import SQLiteBackend
from tests.tasks._records import record

LEASE = 30.0


def put(backend: Backend, **fields: Any) -> JobRecord:
    job = record(**fields)
    [job.id] = backend.enqueue([job])
    return job


def take(
    backend: Backend, worker: str = "w1", *, queues: Any = None, lease: float = LEASE, timeout: float = 0.0
) -> JobRecord | None:
    return backend.dequeue(queues, worker, lease, timeout)


def test_an_enqueued_job_can_be_read_back(backend: Backend) -> None:
    job = put(backend, priority=3, retries=2, timeout=5.0, queue="mail")
    stored = backend.get(job.id)
    assert stored is not None
    assert (stored.task, stored.queue, stored.priority, stored.retries, stored.timeout) == (
        "tests.noop",
        "mail",
        3,
        2,
        5.0,
    )
    assert stored.status is JobStatus.QUEUED
    assert stored.attempts == 0
    assert backend.get("no-such-job") is None


def test_dequeue_leases_the_job_to_one_worker(backend: Backend) -> None:
    job = put(backend)
    before = time.time()
    leased = take(backend, "w1", lease=10.0)
    assert leased is not None
    assert leased.id == job.id
    assert leased.status is JobStatus.RUNNING
    assert leased.attempts == 1
    assert leased.worker == "w1"
    assert leased.lease_until is not None
    assert before + 10.0 <= leased.lease_until <= time.time() + 10.0
    assert take(backend, "w2") is None


def test_lower_priority_first_then_first_enqueued(backend: Backend) -> None:
    a = put(backend, priority=5)
    b = put(backend, priority=0)
    c = put(backend, priority=5)
    d = put(backend, priority=-1)
    order = [take(backend) for _ in range(4)]
    assert [r.id for r in order if r] == [d.id, b.id, a.id, c.id]


def test_dequeue_takes_only_the_queues_named(backend: Backend) -> None:
    put(backend, queue="mail")
    report = put(backend, queue="reports")
    leased = take(backend, queues={"reports", "other"})
    assert leased is not None
    assert leased.id == report.id
    assert take(backend, queues={"reports"}) is None


def test_a_delayed_job_is_scheduled_until_its_time(backend: Backend) -> None:
    job = put(backend, eta=time.time() + 3600)
    stored = backend.get(job.id)
    assert stored is not None
    assert stored.effective_status() is JobStatus.SCHEDULED
    assert take(backend) is None
    assert backend.size() == 0
    assert backend.counts()["default"]["scheduled"] == 1


def test_dequeue_waits_for_a_delayed_job_to_fall_due(backend: Backend) -> None:
    job = put(backend, eta=time.time() + 0.2)
    leased = take(backend, timeout=10.0)
    assert leased is not None
    assert leased.id == job.id
    assert time.time() >= job.eta


def test_a_waiting_dequeue_is_woken_by_an_enqueue(backend: Backend) -> None:
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(take, backend, timeout=30.0)
        job = put(backend)
        leased = waiting.result(timeout=30.0)
    assert leased is not None
    assert leased.id == job.id


def test_interrupt_makes_a_waiting_dequeue_return(backend: Backend) -> None:
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(take, backend, timeout=60.0)
        deadline = time.monotonic() + 10
        while not waiting.done() and time.monotonic() < deadline:
            backend.interrupt()
            time.sleep(0.01)
        assert waiting.result(timeout=1.0) is None


def test_only_the_lease_holder_renews_and_finishes(backend: Backend) -> None:
    job = put(backend)
    take(backend, "w1")
    assert backend.renew(job.id, "w1", LEASE)
    assert not backend.renew(job.id, "w2", LEASE)
    assert backend.finish(job.id, "w2", JobStatus.SUCCEEDED, result="1") is None
    done = backend.finish(job.id, "w1", JobStatus.SUCCEEDED, result="42", expires_at=None)
    assert done is not None
    assert done.status is JobStatus.SUCCEEDED
    assert done.result == "42"
    assert done.finished_at is not None
    assert not backend.renew(job.id, "w1", LEASE)


def test_a_failure_is_kept_with_its_traceback(backend: Backend) -> None:
    job = put(backend)
    take(backend)
    backend.finish(job.id, "w1", JobStatus.FAILED, error="ValueError: bad", traceback="Traceback ...")
    stored = backend.get(job.id)
    assert stored is not None
    assert (stored.status, stored.error, stored.traceback) == (
        JobStatus.FAILED,
        "ValueError: bad",
        "Traceback ...",
    )


def test_retry_later_puts_the_job_back_for_later(backend: Backend) -> None:
    job = put(backend)
    take(backend)
    assert backend.retry_later(job.id, "w1", time.time() + 3600, "KeyError: 'x'", "tb")
    stored = backend.get(job.id)
    assert stored is not None
    assert stored.effective_status() is JobStatus.SCHEDULED
    assert (stored.error, stored.attempts) == ("KeyError: 'x'", 1)
    assert take(backend) is None
    assert not backend.retry_later(job.id, "w1", time.time(), "again", "tb")


def test_release_gives_the_job_back_without_counting_the_attempt(backend: Backend) -> None:
    job = put(backend)
    take(backend)
    assert backend.release(job.id, "w1")
    again = take(backend, "w2")
    assert again is not None
    assert (again.id, again.attempts) == (job.id, 1)


def test_a_lapsed_lease_hands_the_job_out_again(backend: Backend) -> None:
    job = put(backend)
    take(backend, "dead", lease=0.05)
    again = take(backend, "alive", timeout=10.0)
    assert again is not None
    assert (again.id, again.worker, again.attempts, again.lost) == (job.id, "alive", 2, 1)
    # The dead worker's outcome no longer counts.
    assert backend.finish(job.id, "dead", JobStatus.SUCCEEDED, result="1") is None
    assert backend.finish(job.id, "alive", JobStatus.SUCCEEDED, result="2") is not None


def test_a_job_that_loses_every_lease_fails(backend: Backend) -> None:
    job = put(backend)
    for n in range(MAX_LOST):
        leased = take(backend, f"dies-{n}", lease=0.05, timeout=10.0)
        assert leased is not None
    deadline = time.monotonic() + 10
    # The job is failed by the next dequeue (or, for SQLite, within its recovery interval), never handed out.
    while (stored := backend.get(job.id)) is not None and stored.status is not JobStatus.FAILED:
        assert time.monotonic() < deadline
        assert take(backend, "probe", timeout=0.1) is None
    assert stored is not None
    assert stored.status is JobStatus.FAILED
    assert stored.error == LOST_ERROR


def test_cancel_only_a_job_that_has_not_started(backend: Backend) -> None:
    waiting = put(backend)
    running = put(backend, priority=-1)
    take(backend)
    assert not backend.cancel(running.id)
    assert backend.cancel(waiting.id)
    assert not backend.cancel(waiting.id)
    stored = backend.get(waiting.id)
    assert stored is not None
    assert stored.status is JobStatus.CANCELLED
    assert take(backend) is None
    assert not backend.cancel("no-such-job")


def test_requeue_runs_a_failed_or_cancelled_job_again(backend: Backend) -> None:
    failed = put(backend)
    take(backend)
    backend.finish(failed.id, "w1", JobStatus.FAILED, error="E: x", traceback="")
    cancelled = put(backend)
    backend.cancel(cancelled.id)
    succeeded = put(backend)
    take(backend)
    backend.finish(succeeded.id, "w1", JobStatus.SUCCEEDED, result="1")
    assert backend.requeue(failed.id)
    assert backend.requeue(cancelled.id)
    assert not backend.requeue(succeeded.id)
    assert not backend.requeue("no-such-job")
    taken = {r.id: r for r in (take(backend), take(backend)) if r}
    assert set(taken) == {failed.id, cancelled.id}
    assert taken[failed.id].attempts == 1


def test_purge_deletes_the_chosen_statuses_but_never_running_jobs(backend: Backend) -> None:
    running = put(backend, priority=-1)
    take(backend)
    ready = put(backend)
    later = put(backend, eta=time.time() + 3600)
    other = put(backend, queue="other")
    assert backend.purge("default", {JobStatus.QUEUED}) == 1
    assert backend.get(ready.id) is None
    assert backend.get(later.id) is not None
    assert backend.purge("default", {JobStatus.SCHEDULED, JobStatus.RUNNING}) == 1
    assert backend.get(running.id) is not None
    assert backend.get(other.id) is not None
    assert backend.purge(None, set(JobStatus)) == 1
    assert backend.get(running.id) is not None


def test_size_counts_ready_jobs(backend: Backend) -> None:
    put(backend)
    put(backend, queue="mail")
    put(backend, queue="mail")
    put(backend, eta=time.time() + 3600)
    assert backend.size() == 3
    assert backend.size("mail") == 2
    assert backend.size("none") == 0


def test_counts_by_queue_and_status(backend: Backend) -> None:
    put(backend)
    put(backend, eta=time.time() + 3600)
    job = put(backend, queue="mail")
    take(backend, queues={"mail"})
    counts = backend.counts()
    assert counts["default"] == {
        "queued": 1,
        "scheduled": 1,
        "running": 0,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 0,
        "expired": 0,
        "deferred": 0,
    }
    assert counts["mail"]["running"] == 1
    backend.finish(job.id, "w1", JobStatus.SUCCEEDED)
    assert backend.counts()["mail"]["succeeded"] == 1


def test_jobs_lists_the_newest_first_with_filters(backend: Backend) -> None:
    made = [put(backend, queue="a" if n % 2 else "b") for n in range(5)]
    assert [r.id for r in backend.jobs()] == [r.id for r in reversed(made)]
    assert [r.id for r in backend.jobs(queue="a")] == [made[3].id, made[1].id]
    assert [r.id for r in backend.jobs(limit=2, offset=1)] == [made[3].id, made[2].id]
    backend.cancel(made[0].id)
    assert [r.id for r in backend.jobs(status=JobStatus.CANCELLED)] == [made[0].id]
    assert len(backend.jobs(status=JobStatus.QUEUED)) == 4


def test_jobs_with_a_preview_cut_long_payloads_and_tell_their_size(backend: Backend) -> None:
    """A list of jobs must not carry their whole arguments: ten of 10 MB made the dashboard's JSON cost 0.68 s
    a poll. Every way ``jobs`` finds its records (all, by queue, by a finished status) cuts them alike."""
    long_payload = '{"args":["' + "x" * 10_000 + '"],"kwargs":{}}'
    big = put(backend, payload=long_payload, queue="big")
    small = put(backend, queue="big")
    backend.cancel(big.id)
    for listing in (
        backend.jobs(preview=100),
        backend.jobs(queue="big", preview=100),
        backend.jobs(status=JobStatus.CANCELLED, preview=100),
    ):
        found = {record.id: record for record in listing}
        assert found[big.id].payload == long_payload[:100]
        assert found[big.id].payload_size == len(long_payload)
        if small.id in found:
            assert (found[small.id].payload, found[small.id].payload_size) == (small.payload, None)
    whole = backend.get(big.id)
    assert whole is not None
    assert (whole.payload, whole.payload_size) == (long_payload, None)
    assert [r.payload for r in backend.jobs(status=JobStatus.CANCELLED)] == [long_payload]


def test_expire_deletes_finished_jobs_past_their_time(backend: Backend) -> None:
    old = put(backend)
    take(backend)
    backend.finish(old.id, "w1", JobStatus.SUCCEEDED, expires_at=time.time() - 1)
    kept = put(backend)
    take(backend)
    backend.finish(kept.id, "w1", JobStatus.FAILED, error="E", expires_at=None)
    young = put(backend)
    take(backend)
    backend.finish(young.id, "w1", JobStatus.SUCCEEDED, expires_at=time.time() + 3600)
    assert backend.expire() == 1
    assert backend.get(old.id) is None
    assert backend.get(kept.id) is not None
    assert backend.get(young.id) is not None


def test_enqueue_many_stores_them_all_with_new_ids(backend: Backend) -> None:
    ids = backend.enqueue([record() for _ in range(50)])
    assert len(set(ids)) == 50
    assert backend.size() == 50
    assert [r.id for r in backend.jobs(limit=100)] == list(reversed(ids))


def test_an_id_of_a_deleted_job_never_names_another(backend: Backend) -> None:
    gone = put(backend)
    backend.purge(None, {JobStatus.QUEUED})
    fresh = put(backend)
    assert fresh.id != gone.id
    assert backend.get(gone.id) is None
    assert backend.get("not-an-id") is None
    assert backend.get("") is None
    first, _, token = fresh.id.partition("-")
    for other_spelling in (f"0{first}-{token}", f"{first}-0x{token}", f" {fresh.id}", fresh.id.upper()):
        assert backend.get(other_spelling) is None or other_spelling == fresh.id
    assert backend.get("99999999999999999999999-00000001") is None
    assert backend.get(5) is None  # type: ignore[arg-type]
    assert not backend.requeue("1-ffffffffffffffffffff")


def test_wait_returns_when_another_thread_finishes_the_job(backend: Backend) -> None:
    job = put(backend)
    take(backend)
    unfinished = backend.wait(job.id, 0.01)
    assert unfinished is not None
    assert unfinished.status is JobStatus.RUNNING
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(backend.wait, job.id, 30.0)
        backend.finish(job.id, "w1", JobStatus.SUCCEEDED, result='"done"')
        finished = waiting.result(30.0)
    assert finished is not None
    assert finished.status is JobStatus.SUCCEEDED


def test_watch_settles_futures_with_the_outcome(backend: Backend) -> None:
    ok, bad, gone = put(backend), put(backend), put(backend)
    futures = [backend.watch(job.id) for job in (ok, bad, gone)]
    take(backend)
    backend.finish(ok.id, "w1", JobStatus.SUCCEEDED, result='{"n": 1}')
    take(backend)
    backend.finish(bad.id, "w1", JobStatus.FAILED, error="ValueError: no", traceback="tb")
    backend.cancel(gone.id)
    assert futures[0].result(10) == {"n": 1}
    with pytest.raises(TaskFailed, match="ValueError: no") as failed:
        futures[1].result(10)
    assert failed.value.traceback == "tb"
    with pytest.raises(JobCancelled):
        futures[2].result(10)


def test_each_job_is_handed_out_once_to_concurrent_workers(backend: Backend) -> None:
    backend.enqueue([record() for _ in range(200)])
    taken: list[str] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        while (leased := take(backend, name)) is not None:
            with lock:
                taken.append(leased.id)
            backend.finish(leased.id, name, JobStatus.SUCCEEDED)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, ["a", "b", "c", "d"]))
    assert len(taken) == 200
    assert len(set(taken)) == 200


# -- SQLite only ------------------------------------------------------------------------------------------


def test_two_sqlite_backends_on_one_file_never_take_the_same_job(tmp_path: Path) -> None:
    first = SQLiteBackend(tmp_path / "q.sqlite3")
    second = SQLiteBackend(tmp_path / "q.sqlite3")
    try:
        first.enqueue([record() for _ in range(300)])
        taken: list[str] = []
        lock = threading.Lock()

        def work(backend: Backend, name: str) -> None:
            while (leased := take(backend, name)) is not None:
                with lock:
                    taken.append(leased.id)

        with ThreadPoolExecutor(4) as pool:
            for n, backend in enumerate((first, second, first, second)):
                pool.submit(work, backend, f"w{n}")
        assert sorted(taken) == sorted(set(taken))
        assert len(taken) == 300
    finally:
        first.close()
        second.close()


def test_a_sqlite_dequeue_sees_an_enqueue_made_through_another_connection(tmp_path: Path) -> None:
    waiter = SQLiteBackend(tmp_path / "q.sqlite3")
    writer = SQLiteBackend(tmp_path / "q.sqlite3")
    try:
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(take, waiter, timeout=30.0)
            job = put(writer)
            leased = waiting.result(30.0)
        assert leased is not None
        assert leased.id == job.id
    finally:
        waiter.close()
        writer.close()


def test_a_sqlite_path_that_cannot_be_written_raises_at_set_up(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(BackendError, match=str(blocker / "jobs.sqlite3")):
        SQLiteBackend(blocker / "jobs.sqlite3")


def test_dequeue_batch_leases_the_most_urgent_jobs(backend: Backend) -> None:
    low = put(backend, priority=5)
    urgent = [put(backend, priority=0) for _ in range(3)]
    put(backend, queue="other")
    batch = backend.dequeue_batch({"default"}, "w1", LEASE, 3)
    assert [r.id for r in batch] == [j.id for j in urgent]
    assert all(r.status is JobStatus.RUNNING and r.worker == "w1" for r in batch)
    rest = backend.dequeue_batch({"default"}, "w2", LEASE, 10)
    assert [r.id for r in rest] == [low.id]
    assert backend.dequeue_batch({"default"}, "w2", LEASE, 10) == []


def test_finish_batch_records_successes_of_the_lease_holder_only(backend: Backend) -> None:
    mine, theirs = put(backend), put(backend)
    take(backend, "w1")
    take(backend, "w2")
    done = backend.finish_batch("w1", [(mine.id, '"a"', None), (theirs.id, '"b"', None)])
    assert done[0] is not None
    assert (done[0].status, done[0].result) == (JobStatus.SUCCEEDED, '"a"')
    assert done[1] is None
    stored = backend.get(theirs.id)
    assert stored is not None
    assert stored.status is JobStatus.RUNNING


def test_a_sqlite_backend_works_in_a_child_forked_while_its_lock_was_held(tmp_path: Path) -> None:
    import os

    backend = SQLiteBackend(tmp_path / "q.sqlite3")
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with backend._lock:
            held.set()
            release.wait(30)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        pid = os.fork()
        if pid == 0:  # the child: the parent's holder thread does not exist here
            code = 1
            try:
                backend.after_fork()
                put(backend)
                code = 0 if backend.size() == 1 else 2
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        while (status := os.waitpid(pid, os.WNOHANG))[0] == 0:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise AssertionError("the child hung on the lock it inherited")
            time.sleep(0.02)
        assert os.waitstatus_to_exitcode(status[1]) == 0
    finally:
        release.set()
        holder.join()
        backend.close()


def test_purge_never_deletes_running_jobs_named_by_string(backend: Backend) -> None:
    running = put(backend)
    take(backend)
    assert backend.purge(None, ["running", "queued"]) == 0  # type: ignore[list-item]
    assert backend.get(running.id) is not None


def test_a_forked_memory_backend_starts_empty() -> None:
    from flask_queue.tasks.backends.memory import MemoryBackend

    backend = MemoryBackend()
    put(backend)
    backend.after_fork()
    assert backend.size() == 0
    assert backend.jobs() == []


def test_an_idle_sqlite_dequeue_does_not_spin_on_a_job_at_its_last_lost_lease(tmp_path: Path) -> None:
    backend = SQLiteBackend(tmp_path / "q.sqlite3")
    try:
        put(backend)
        for n in range(MAX_LOST - 1):
            assert take(backend, f"dies-{n}", lease=0.01, timeout=10.0) is not None
        assert take(backend, "dies-last", lease=0.01, timeout=10.0) is not None
        time.sleep(0.05)  # the last lease lapses: the job is neither ready nor failed until the recovery runs
        statements = 0

        def count(_: str) -> None:
            nonlocal statements
            statements += 1

        backend._db().set_trace_callback(count)
        backend._next_recover = time.time() + 3600  # keep the recovery away for the whole wait
        assert take(backend, "idle", timeout=0.3) is None
        # Polling every 10 ms costs a few statements a poll; the busy loop ran thousands.
        assert statements < 500
    finally:
        backend.close()


def _worker_info(
    name: str, *, seen_at: float | None = None, ttl: float = 30.0, running: int = 0
) -> WorkerInfo:
    now = time.time() if seen_at is None else seen_at
    return WorkerInfo(
        name=name,
        host="host",
        pid=123,
        queues=["default", "mail"],
        threads=4,
        running=running,
        processed=7,
        started_at=now - 5,
        seen_at=now,
        ttl=ttl,
    )


def test_a_worker_beat_is_listed_until_it_is_forgotten(backend: Backend) -> None:
    assert backend.workers() == []
    backend.beat(_worker_info("b:2"))
    backend.beat(_worker_info("a:1"))
    backend.beat(_worker_info("a:1", running=3))
    workers = backend.workers()
    assert [info.name for info in workers] == ["a:1", "b:2"]
    assert workers[0].running == 3
    assert workers[0].queues == ["default", "mail"]
    assert (workers[0].threads, workers[0].processed, workers[0].pid) == (4, 7, 123)
    backend.forget("a:1")
    backend.forget("no-such-worker")
    assert [info.name for info in backend.workers()] == ["b:2"]


def test_a_worker_that_stopped_beating_is_not_listed(backend: Backend) -> None:
    backend.beat(_worker_info("stale", seen_at=time.time() - 60, ttl=10))
    backend.beat(_worker_info("alive", ttl=10))
    assert [info.name for info in backend.workers()] == ["alive"]


def test_priorities_at_the_ends_of_their_range_keep_their_order(backend: Backend) -> None:
    top = put(backend, priority=2**53)
    below_top = put(backend, priority=2**53 - 1)
    bottom = put(backend, priority=-(2**53))
    taken = [take(backend) for _ in range(3)]
    assert [job.id if job else None for job in taken] == [bottom.id, below_top.id, top.id]
