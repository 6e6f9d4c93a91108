"""Where a job gets leased and run: ``Worker`` owns threads and leases; ``Executor`` runs one job.

A ``Worker`` runs ``threads`` threads that each take a job from the backend (``dequeue`` leases it), run it
through the ``Executor`` and record the outcome, plus one keeper thread that renews the leases of running
jobs every third of the lease, stops jobs that outlive their ``timeout``, and deletes expired results. The
same ``Worker`` serves in-process (``TaskQueue(workers=N)``) and in ``flask queue worker``.

``stop(timeout)`` drains: no new job is taken; running jobs get until the deadline to finish; a job still
running then is given back to the backend (``release``) so another worker runs it at once rather than after
its lease lapses.
"""

from __future__ import annotations

import ctypes
import logging
import os
import random
import socket
import threading
import time
import traceback as tb
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import signals
from ..exceptions import JobTimeout
from .job import Job, JobRecord, JobStatus

if TYPE_CHECKING:
    from flask import Flask

    from .backends.base import Backend
    from .queue import Task
    from .serializer import Serializer

__all__ = ["Executor", "StopReport", "Worker"]

log = logging.getLogger("flask_queue.tasks")

#: Seconds between deletions of expired results by a worker's keeper.
EXPIRE_INTERVAL = 60.0
#: Most jobs a worker thread leases at once (see ``Worker._run_batch``).
MAX_PREFETCH = 16
#: A job shorter than this (seconds) lets the prefetch grow.
FAST_JOB = 0.002
#: Successes wait at most this long (seconds) to be recorded together.
FLUSH_AFTER = 0.005


@dataclass
class Executor:
    """Runs leased jobs: finds the task, decodes the arguments, calls it in an app context, records the end.

    A job that cannot run (a task this process does not know, arguments that do not decode) fails at once
    with an error that says so and stays inspectable; nothing a job does can kill its worker thread.
    """

    app: Flask
    backend: Backend
    tasks: Mapping[str, Task[..., Any]]
    serializer: Serializer
    result_ttl: float | None
    failed_ttl: float | None
    retry_backoff_max: float
    #: Eager mode and ``drain()``: retries are due at once instead of after their backoff.
    immediate_retries: bool = False

    def run(
        self,
        record: JobRecord,
        worker: str,
        guard: Callable[[], AbstractContextManager[object]] = nullcontext,
        deferred: list[_Success] | None = None,
    ) -> None:
        """Run a job ``worker`` has leased and record its outcome; ``guard`` is entered around the task's call
        (the worker's timeout). With ``deferred``, a success is appended there for ``record_successes`` to
        record with others in one write; failures are always recorded at once."""
        job = Job(record.id, self.backend, record)
        task = self.tasks.get(record.task)
        if task is None:
            self._unrunnable(
                record,
                worker,
                f"UnknownTask: no task named {record.task!r} is defined in this process (is this worker running"
                " older or newer code than the process that enqueued it?)",
            )
            return
        try:
            args, kwargs = self.serializer.loads_call(record.payload)
        except ValueError as exc:
            self._unrunnable(record, worker, f"CorruptPayload: {exc}")
            return
        self._send(signals.task_started, job)
        try:
            with self.app.app_context(), guard():
                value = task.func(*args, **kwargs)
            result = self.serializer.dumps_result(value)
        except Exception as exc:
            self._failed(record, worker, job, exc, tb.format_exc())
        else:
            success = _Success(job, result, value)
            if deferred is not None:
                deferred.append(success)
            else:
                self.record_successes(worker, [success])

    def record_successes(self, worker: str, successes: list[_Success]) -> None:
        """Record jobs that succeeded (one write for all), then send their ``task_succeeded``."""
        expires = None if self.result_ttl is None else time.time() + self.result_ttl
        if len(successes) == 1:
            one = successes[0]
            done = [
                self.backend.finish(
                    one.job.id, worker, JobStatus.SUCCEEDED, result=one.result, expires_at=expires
                )
            ]
        else:
            done = self.backend.finish_batch(worker, [(one.job.id, one.result, expires) for one in successes])
        for success, record in zip(successes, done, strict=True):
            if record is not None:
                self._send(signals.task_succeeded, success.job, result=success.value)
            else:
                log.warning(
                    "job %s finished after its worker lost the lease: outcome dropped", success.job.id
                )

    def _failed(self, record: JobRecord, worker: str, job: Job, exc: Exception, trace: str) -> None:
        if isinstance(exc, JobTimeout):
            error = f"JobTimeout: the task ran longer than its timeout of {record.timeout} s"
        else:
            error = f"{type(exc).__name__}: {exc}"
        failures = record.attempts - record.lost
        if failures <= record.retries:
            delay = 0.0 if self.immediate_retries else self.backoff(record.task, failures)
            if self.backend.retry_later(record.id, worker, time.time() + delay, error, trace):
                log.info("job %s (%s) failed, retry %d of %d in %.1f s: %s", job.id, record.task, failures,
                         record.retries, delay, error)  # fmt: skip
                self._send(signals.task_retried, job, exception=exc, delay=delay)
            return
        expires = None if self.failed_ttl is None else time.time() + self.failed_ttl
        if self.backend.finish(
            record.id, worker, JobStatus.FAILED, error=error, traceback=trace, expires_at=expires
        ):
            log.error("job %s (%s) failed after %d attempt(s): %s\n%s", job.id, record.task, record.attempts,
                      error, trace)  # fmt: skip
            self._send(signals.task_failed, job, exception=exc)

    def backoff(self, task_name: str, failures: int) -> float:
        """Seconds before retry number ``failures``: the task's base doubled each time, full jitter, capped."""
        task = self.tasks.get(task_name)
        base = task.retry_backoff if task is not None else 1.0
        cap = (
            task.retry_backoff_max
            if task is not None and task.retry_backoff_max is not None
            else self.retry_backoff_max
        )
        return random.uniform(0.0, min(cap, base * 2.0 ** (failures - 1)))

    def _unrunnable(self, record: JobRecord, worker: str, error: str) -> None:
        log.error("job %s cannot run: %s", record.id, error)
        if self.backend.fail_unrunnable(record.id, worker, error):
            self._send(signals.task_failed, Job(record.id, self.backend, record), exception=None)

    def _send(self, signal: Any, job: Job, **extra: Any) -> None:
        if not signal.receivers:
            return
        try:
            signal.send(self.app, job=job, **extra)
        except Exception:
            log.exception("a receiver of %s raised; the job is not affected", signal.name)


class _Pending:
    """The successes one worker thread has not recorded yet; the thread or the keeper records them."""

    __slots__ = ("lock", "owner", "since", "successes")

    def __init__(self, owner: str) -> None:
        self.lock = threading.Lock()
        self.owner = owner
        self.successes: list[_Success] = []
        self.since = 0.0

    def take(self) -> list[_Success]:
        with self.lock:
            taken, self.successes = self.successes, []
            return taken


class _Success:
    """A job that succeeded, waiting to be recorded with others."""

    __slots__ = ("job", "result", "value")

    def __init__(self, job: Job, result: str, value: Any) -> None:
        self.job = job
        self.result = result
        self.value = value


@dataclass
class StopReport:
    """What a drain left: jobs still running at the deadline (given back to the backend) and still waiting."""

    released: int = 0
    unfinished: int = 0


class _Running:
    __slots__ = ("deadline", "owner", "record", "thread_id", "timed_out")

    def __init__(self, record: JobRecord, thread_id: int, owner: str) -> None:
        self.record = record
        self.thread_id = thread_id
        #: The lease holder: each thread of a worker holds its jobs under a name of its own.
        self.owner = owner
        #: Set while the task's own code runs, if it has a timeout: the keeper may interrupt it until then.
        self.deadline: float | None = None
        self.timed_out = False


class Worker:
    """Threads that run the jobs of ``queues`` (``None``: all) from ``executor.backend``.

    Thread-safe; ``start`` once, ``stop`` once. Threads are daemons so that they never hold the interpreter
    open by themselves: whoever owns the worker calls ``stop`` (``TaskQueue`` does it at exit).
    """

    def __init__(
        self,
        executor: Executor,
        *,
        threads: int = 1,
        queues: Collection[str] | None = None,
        lease: float = 30.0,
        name: str = "worker",
    ) -> None:
        self.executor = executor
        self.backend = executor.backend
        self.threads = threads
        self.queues = None if queues is None else frozenset(queues)
        self.lease = lease
        self.id = f"{socket.gethostname()}:{os.getpid()}:{name}:{uuid.uuid4().hex[:8]}"
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._threads: list[threading.Thread] = []
        self._keeper: threading.Thread | None = None
        self._keeper_stop = threading.Event()
        self._pendings: list[_Pending] = []
        self.processed = 0

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def start(self) -> None:
        for index in range(self.threads):
            pending = _Pending(f"{self.id}/{index}")
            self._pendings.append(pending)
            thread = threading.Thread(
                target=self._work, args=(pending,), name=f"flask-queue-{index}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        self._keeper = threading.Thread(target=self._keep, name="flask-queue-keeper", daemon=True)
        self._keeper.start()

    def stop(self, timeout: float | None = 10.0) -> StopReport:
        """Stop taking jobs, wait up to ``timeout`` seconds for running ones, give back those still running."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._stopping.set()
        self.backend.interrupt()
        for thread in self._threads:
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        report = StopReport()
        for pending in self._pendings:
            self._record(pending)  # jobs that succeeded are recorded, never given back
        with self._lock:
            stuck = list(self._running.values())
        for running in stuck:
            if self.backend.release(running.record.id, running.owner):
                report.released += 1
                log.warning("job %s (%s) still running at shutdown: given back to the queue", running.record.id,
                            running.record.task)  # fmt: skip
        # Leases were renewed while jobs drained; those still running now were given back, so stop renewing.
        self._keeper_stop.set()
        if self._keeper is not None:
            self._keeper.join(5.0)
        return report

    def _work(self, pending: _Pending) -> None:
        wait = max(min(self.lease / 3.0, 1.0), 0.05)
        owner = pending.owner
        prefetch = 1
        while not self._stopping.is_set():
            try:
                records = (
                    self.backend.dequeue_batch(self.queues, owner, self.lease, prefetch)
                    if prefetch > 1
                    else []
                )
                if not records:
                    record = self.backend.dequeue(self.queues, owner, self.lease, wait)
                    records = [] if record is None else [record]
            except Exception:
                log.exception("the task backend failed to hand out a job; retrying in 1 s")
                self._stopping.wait(1.0)
                continue
            if records:
                prefetch = self._run_batch(records, prefetch, pending)

    def _run_batch(self, records: list[JobRecord], prefetch: int, pending: _Pending) -> int:
        """Run leased jobs one after the other, recording successes together; return the next prefetch.

        A worker takes several jobs at once only while the queue is deep and the jobs are short: the prefetch
        doubles (up to ``MAX_PREFETCH``) after a full batch of jobs that took under ``FAST_JOB`` seconds
        each, and falls back to one job at a time otherwise, so that a slow job never holds others back.
        Successes are recorded in one write at the end of the batch; one that waits ``FLUSH_AFTER`` seconds
        (behind a slower job) is recorded by the keeper meanwhile.
        """
        with self._lock:
            for record in records:
                self._running[record.id] = _Running(record, threading.get_ident(), pending.owner)
        started = time.monotonic()
        ran = 0
        for record in records:
            if self._stopping.is_set():
                break  # the jobs not started are given back by stop()
            ran += 1
            self.run(record, pending)
        self._record(pending)
        fast = ran == len(records) and (time.monotonic() - started) / max(ran, 1) < FAST_JOB
        return min(prefetch * 2, MAX_PREFETCH) if fast and len(records) == prefetch else 1

    def _record(self, pending: _Pending) -> None:
        """Record the successes ``pending`` holds (from the thread that ran them, or the keeper)."""
        successes = pending.take()
        if not successes:
            return
        try:
            self.executor.record_successes(pending.owner, successes)
        except Exception:
            log.exception("could not record %d finished job(s); they will run again when their leases lapse",
                          len(successes))  # fmt: skip
        finally:
            with self._lock:
                for success in successes:
                    self._running.pop(success.job.id, None)

    def run(self, record: JobRecord, pending: _Pending) -> None:
        """Run one leased job in this thread, with its lease renewed and its timeout enforced; a success is
        left in ``pending`` (its lease still renewed) until it is recorded."""
        with self._lock:
            running = self._running.get(record.id)
            if running is None:
                running = self._running[record.id] = _Running(record, threading.get_ident(), pending.owner)
        succeeded: list[_Success] = []
        try:
            guard = nullcontext if record.timeout is None else (lambda: self._time_limit(running))
            self.executor.run(record, pending.owner, guard, succeeded)
        except BaseException:
            log.exception(
                "job %s: unexpected error in the worker itself; the job's lease will lapse", record.id
            )
        finally:
            if succeeded:
                with pending.lock:
                    if not pending.successes:
                        pending.since = time.monotonic()
                    pending.successes.extend(succeeded)
            else:
                with self._lock:
                    self._running.pop(record.id, None)
            self.processed += 1

    @contextmanager
    def _time_limit(self, running: _Running) -> Iterator[None]:
        """Let the keeper interrupt the task's code (and only it) once it runs past its timeout."""
        if running.record.timeout is None:
            yield
            return
        with self._lock:
            running.deadline = time.monotonic() + running.record.timeout
        try:
            yield
        finally:
            with self._lock:
                running.deadline = None
                timed_out = running.timed_out
            if timed_out:
                # The keeper's exception may still be pending (it fires at the thread's next Python
                # instruction): clear it, so that it cannot hit the worker's own bookkeeping.
                _raise_in_thread(running.thread_id, None)
        if timed_out:
            raise JobTimeout()

    def _keep(self) -> None:
        """Renew leases, enforce timeouts, expire results, until the worker has stopped."""
        renew_every = self.lease / 3.0
        next_renew = time.monotonic() + renew_every
        next_expire = time.monotonic()
        while not self._keeper_stop.is_set():
            now = time.monotonic()
            with self._lock:
                running = list(self._running.values())
                for job in running:
                    if job.deadline is not None and now >= job.deadline and not job.timed_out:
                        job.timed_out = True
                        _raise_in_thread(job.thread_id, JobTimeout)
            for pending in self._pendings:
                if pending.successes and now - pending.since >= FLUSH_AFTER:
                    self._record(pending)
            if now >= next_renew:
                next_renew = now + renew_every
                for job in running:
                    try:
                        renewed = self.backend.renew(job.record.id, job.owner, self.lease)
                    except Exception:
                        log.exception("could not renew the lease of job %s", job.record.id)
                        continue
                    if not renewed and job.record.id in self._running:  # not merely finished meanwhile
                        log.warning("job %s lost its lease (it ran past it unrenewed); another worker may run it",
                                    job.record.id)  # fmt: skip
            if now >= next_expire and not self._stopping.is_set():
                next_expire = now + EXPIRE_INTERVAL
                try:
                    self.backend.expire()
                except Exception:
                    log.exception("could not delete expired results")
            pause = min(renew_every, FLUSH_AFTER * 2) if running else min(renew_every, 1.0)
            self._keeper_stop.wait(pause)


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in a thread at its next Python instruction (not inside a blocking C call); ``None``
    clears an exception set so but not raised yet."""
    exc = ctypes.py_object(exc_type) if exc_type is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)
