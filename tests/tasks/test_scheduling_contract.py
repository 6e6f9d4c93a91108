"""The backend contract's keys, expiry and schedule ticks (``backends/base.py``), checked on every backend."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from flask_queue import DuplicateJob, JobStatus
from flask_queue.tasks import JobRecord
from flask_queue.tasks.backends.base import MAX_LOST, Backend
from tests.tasks._records import record

LEASE = 30.0


def put(backend: Backend, on_conflict: str = "return", **fields: Any) -> str:
    [job_id] = backend.enqueue([record(**fields)], on_conflict=on_conflict)
    return job_id


def take(backend: Backend, worker: str = "w1", lease: float = LEASE) -> JobRecord | None:
    return backend.dequeue(None, worker, lease, 0.0)


def status(backend: Backend, job_id: str) -> JobStatus:
    found = backend.get(job_id)
    assert found is not None
    return found.effective_status()


# -- keys ------------------------------------------------------------------------------------------------------


def test_a_key_admits_one_unfinished_job_and_returns_it_to_the_next(backend: Backend) -> None:
    first = put(backend, key="invoice:1", payload='{"args":[1],"kwargs":{}}')
    again = put(backend, key="invoice:1", payload='{"args":[2],"kwargs":{}}')
    assert again == first
    stored = backend.get(first)
    assert stored is not None
    assert stored.key == "invoice:1"
    assert stored.payload == '{"args":[1],"kwargs":{}}'  # "return" changes nothing
    assert backend.pending() == 1


def test_keys_are_per_task_and_per_key(backend: Backend) -> None:
    a = put(backend, key="k")
    b = put(backend, key="k", task="tests.other")
    c = put(backend, key="k2")
    d = put(backend)  # no key: never a conflict
    e = put(backend)
    assert len({a, b, c, d, e}) == 5


def test_raise_stores_nothing_and_names_the_holder(backend: Backend) -> None:
    first = put(backend, key="k")
    with pytest.raises(DuplicateJob) as caught:
        backend.enqueue([record(key="fresh"), record(key="k")], on_conflict="raise")
    assert caught.value.job_id == first
    assert caught.value.key == "k"
    assert caught.value.task == "tests.noop"
    assert backend.pending() == 1  # the batch is all or none: "fresh" was not stored either


def test_records_of_one_batch_that_share_a_key_make_one_job(backend: Backend) -> None:
    ids = backend.enqueue([record(key="same"), record(key="same"), record(key="other")])
    assert ids[0] == ids[1] != ids[2]
    assert backend.pending() == 2


def test_a_running_job_keeps_its_key(backend: Backend) -> None:
    first = put(backend, key="k")
    assert take(backend) is not None
    assert put(backend, key="k") == first
    with pytest.raises(DuplicateJob):
        put(backend, "raise", key="k")


@pytest.mark.parametrize("end", ["succeeded", "failed", "cancelled"])
def test_a_final_job_frees_its_key(backend: Backend, end: str) -> None:
    first = put(backend, key="k")
    if end == "cancelled":
        assert backend.cancel(first)
    else:
        leased = take(backend)
        assert leased is not None
        assert backend.finish(first, "w1", JobStatus(end), error="E" if end == "failed" else None)
    second = put(backend, key="k")
    assert second != first
    assert status(backend, second) is JobStatus.QUEUED


def test_a_retry_keeps_the_key(backend: Backend) -> None:
    first = put(backend, key="k", retries=1)
    assert take(backend) is not None
    assert backend.retry_later(first, "w1", time.time() + 60, "E: boom", "")
    assert put(backend, key="k") == first


def test_a_job_failed_for_lost_leases_frees_its_key(backend: Backend) -> None:
    first = put(backend, key="k")
    for _ in range(MAX_LOST):
        leased = backend.dequeue(None, "w1", 0.01, 0.0)
        assert leased is not None
        time.sleep(0.03)
    take(backend)  # finds the lapsed lease past MAX_LOST: the job fails
    deadline = time.monotonic() + 3
    while status(backend, first) is not JobStatus.FAILED:
        assert time.monotonic() < deadline, "the job was not failed for its lost leases"
        time.sleep(0.05)
        take(backend)
    assert put(backend, key="k") != first


def test_replace_changes_a_job_that_has_not_started(backend: Backend) -> None:
    later = time.time() + 60
    first = put(backend, key="k", payload='{"args":[1],"kwargs":{}}', eta=later)
    sooner = time.time() + 30
    again = put(backend, "replace", key="k", payload='{"args":[2],"kwargs":{}}', eta=sooner, priority=-3)
    assert again == first
    stored = backend.get(first)
    assert stored is not None
    assert stored.payload == '{"args":[2],"kwargs":{}}'
    assert stored.eta == pytest.approx(sooner)
    assert stored.priority == -3
    assert backend.pending() == 1


def test_replace_while_the_key_runs_defers_one_job_behind_it(backend: Backend) -> None:
    first = put(backend, key="k", payload='{"args":[1],"kwargs":{}}')
    assert take(backend) is not None
    deferred = put(backend, "replace", key="k", payload='{"args":[2],"kwargs":{}}')
    assert deferred != first
    assert status(backend, deferred) is JobStatus.DEFERRED
    # A second replace changes the deferred job rather than adding one.
    assert put(backend, "replace", key="k", payload='{"args":[3],"kwargs":{}}') == deferred
    assert put(backend, key="k") == first  # "return" names the holder
    assert take(backend, "w2") is None  # a deferred job is not handed out
    assert backend.counts()["default"]["deferred"] == 1
    assert backend.finish(first, "w1", JobStatus.SUCCEEDED)
    stored = backend.get(deferred)
    assert stored is not None
    assert stored.effective_status() is JobStatus.QUEUED
    assert stored.payload == '{"args":[3],"kwargs":{}}'
    leased = take(backend, "w2")
    assert leased is not None
    assert leased.id == deferred
    assert put(backend, key="k") == deferred  # it holds the key now


def test_a_deferred_job_is_queued_when_the_running_one_is_lost_for_good(backend: Backend) -> None:
    first = put(backend, key="k")
    assert backend.dequeue(None, "w1", 0.01, 0.0) is not None
    deferred = put(backend, "replace", key="k")
    for _ in range(MAX_LOST - 1):
        time.sleep(0.03)
        leased = backend.dequeue(None, "w1", 0.01, 0.0)
        assert leased is not None
        assert leased.id == first
    time.sleep(0.03)
    deadline = time.monotonic() + 3
    while status(backend, first) is not JobStatus.FAILED:
        assert time.monotonic() < deadline
        leased = take(backend)
        assert leased is None or leased.id == deferred
        time.sleep(0.05)
    assert status(backend, deferred) in (JobStatus.QUEUED, JobStatus.RUNNING)


def test_a_deferred_job_can_be_cancelled(backend: Backend) -> None:
    put(backend, key="k")
    take(backend)
    deferred = put(backend, "replace", key="k")
    assert backend.cancel(deferred)
    assert status(backend, deferred) is JobStatus.CANCELLED


def test_requeue_refuses_a_job_whose_key_another_holds(backend: Backend) -> None:
    first = put(backend, key="k")
    assert backend.cancel(first)
    second = put(backend, key="k")
    assert not backend.requeue(first)
    assert backend.cancel(second)
    assert backend.requeue(first)
    assert put(backend, key="k") == first


def test_purge_of_a_queued_holder_queues_its_deferred_job(backend: Backend) -> None:
    first = put(backend, key="k")
    assert backend.dequeue(None, "w1", 0.01, 0.0) is not None
    deferred = put(backend, "replace", key="k")
    time.sleep(0.03)  # the lease lapses: the holder is queued again, and can be purged
    assert backend.purge(None, [JobStatus.QUEUED]) == 1
    assert backend.get(first) is None
    assert status(backend, deferred) is JobStatus.QUEUED


def test_two_threads_enqueueing_one_key_leave_one_job(backend: Backend) -> None:
    barrier = threading.Barrier(2)

    def race() -> set[str]:
        barrier.wait()
        return {put(backend, key="race") for _ in range(100)}

    with ThreadPoolExecutor(2) as pool:
        ids = set().union(*pool.map(lambda _: race(), range(2)))
    assert len(ids) == 1
    assert backend.pending() == 1


# -- expiry ----------------------------------------------------------------------------------------------------


def test_a_job_not_started_in_time_expires_and_is_never_handed_out(backend: Backend) -> None:
    late = put(backend, start_by=time.time() + 0.05)
    fresh = put(backend, start_by=time.time() + 60)
    time.sleep(0.1)
    leased = take(backend)
    assert leased is not None
    assert leased.id == fresh
    assert take(backend) is None
    assert status(backend, late) is JobStatus.EXPIRED
    assert backend.counts()["default"]["expired"] == 1
    assert backend.size() == 0


def test_the_dequeue_that_skips_an_expired_job_stores_its_status(backend: Backend) -> None:
    late = put(backend, start_by=time.time() + 0.05)
    time.sleep(0.1)
    deadline = time.monotonic() + 3
    while True:
        assert take(backend) is None
        found = backend.get(late)
        assert found is not None
        if found.status is JobStatus.EXPIRED:  # the stored status, not only the effective one
            break
        assert time.monotonic() < deadline, "no dequeue stored the job as expired"
        time.sleep(0.1)
    assert found.finished_at is not None
    assert backend.jobs(status=JobStatus.EXPIRED)[0].id == late
    assert backend.purge(None, [JobStatus.EXPIRED]) == 1


def test_a_started_job_does_not_expire(backend: Backend) -> None:
    job_id = put(backend, start_by=time.time() + 0.2, retries=1)
    assert take(backend) is not None
    assert backend.retry_later(job_id, "w1", time.time(), "E: boom", "")
    time.sleep(0.3)
    leased = take(backend)
    assert leased is not None
    assert leased.id == job_id


def test_an_expired_job_frees_its_key(backend: Backend) -> None:
    first = put(backend, key="k", start_by=time.time() + 0.05)
    time.sleep(0.1)
    second = put(backend, key="k")
    assert second != first
    assert status(backend, first) is JobStatus.EXPIRED


def test_an_expired_job_can_be_requeued(backend: Backend) -> None:
    job_id = put(backend, start_by=time.time() + 0.05)
    time.sleep(0.1)
    take(backend)
    assert backend.requeue(job_id)
    leased = take(backend)
    assert leased is not None
    assert leased.id == job_id


# -- schedule ticks --------------------------------------------------------------------------------------------


def test_a_tick_is_stored_once(backend: Backend) -> None:
    first = backend.enqueue_tick("nightly", 1000.0, [record()])
    assert first is not None
    assert len(first) == 1
    assert backend.enqueue_tick("nightly", 1000.0, [record()]) is None
    assert backend.enqueue_tick("nightly", 999.0, [record()]) is None  # an older tick, too late
    assert backend.pending() == 1
    later = backend.enqueue_tick("nightly", 1060.0, [record()])
    assert later is not None
    assert backend.pending() == 2
    [state] = backend.schedules()
    assert (state.name, state.last_tick, state.paused) == ("nightly", 1060.0, False)


def test_schedules_are_independent(backend: Backend) -> None:
    assert backend.enqueue_tick("a", 1000.0, [record()]) is not None
    assert backend.enqueue_tick("b", 1000.0, [record()]) is not None
    assert [state.name for state in backend.schedules()] == ["a", "b"]


def test_a_paused_schedule_lets_ticks_pass_without_jobs(backend: Backend) -> None:
    backend.pause_schedule("nightly", True)
    assert backend.schedules()[0].paused
    assert backend.enqueue_tick("nightly", 1000.0, [record()]) is None
    assert backend.pending() == 0
    assert backend.schedules()[0].last_tick == 1000.0
    backend.pause_schedule("nightly", False)
    assert backend.enqueue_tick("nightly", 1000.0, [record()]) is None  # passed already
    assert backend.enqueue_tick("nightly", 1060.0, [record()]) is not None


def test_a_tick_whose_key_is_held_passes_without_a_job(backend: Backend) -> None:
    """``overlap=False``: the tick's job carries the schedule's key; the tick is used up all the same."""
    first = backend.enqueue_tick("s", 1000.0, [record(key="s")])
    assert first is not None
    assert backend.enqueue_tick("s", 1060.0, [record(key="s")]) == first
    assert backend.pending() == 1
    assert backend.schedules()[0].last_tick == 1060.0


def test_concurrent_ticks_store_one_job_each(backend: Backend) -> None:
    barrier = threading.Barrier(4)

    def race(_: int) -> int:
        barrier.wait()
        won = 0
        for tick in range(30):
            if backend.enqueue_tick("race", 1000.0 + tick, [record()]) is not None:
                won += 1
        return won

    with ThreadPoolExecutor(4) as pool:
        assert sum(pool.map(race, range(4))) == 30
    assert backend.pending() == 30


def test_a_deferred_job_past_its_start_by_can_still_be_cancelled(backend: Backend) -> None:
    put(backend, key="k")
    take(backend)
    deferred = put(backend, "replace", key="k", start_by=time.time() + 0.05)
    time.sleep(0.1)
    assert status(backend, deferred) is JobStatus.DEFERRED
    assert backend.cancel(deferred)
