"""Where a job gets leased and run: ``Worker`` owns threads and leases; ``Executor`` runs one job.

A ``Worker`` runs ``threads`` threads that each take a job from the backend (``dequeue`` leases it), run it
through the ``Executor`` and record the outcome, plus one keeper thread that renews the leases of running
jobs every third of the lease, stops jobs that outlive their ``timeout``, records outcomes that are waiting,
beats the worker's heartbeat (``Backend.beat``: what ``flask queue status`` lists) and deletes expired
results. The same ``Worker`` serves in-process (``TaskQueue(workers=N)``) and in ``flask queue worker``.

``stop(timeout)`` drains: no new job is taken; running jobs get until the deadline to finish; a job still
running then is given back to the backend (``release``) so another worker runs it at once rather than after
its lease lapses; the heartbeat is withdrawn (``forget``).

Outages: a backend call that raises (``BackendError``: Redis or PostgreSQL unreachable, SQLite locked past
its retries) never kills a thread. Each thread, and the keeper, waits before its next call, doubling the
pause from ``OUTAGE_BACKOFF`` up to ``OUTAGE_BACKOFF_MAX`` with jitter; the worker logs one warning when an
outage starts and one line when a call succeeds again. A job's outcome that cannot be recorded stays with
the worker, which keeps trying (and renewing the lease) while it may still hold the lease; after that it
gives up with a warning and the job runs again elsewhere: delivery is at least once, never at most once.
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
from ..exceptions import BackendError, JobTimeout
from .job import Job
from .records import JobRecord, JobStatus, WorkerInfo

if TYPE_CHECKING:
    from flask import Flask

    from .backends.base import Backend
    from .schedule import Scheduler
    from .serializer import Serializer
    from .task import Task

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
#: Seconds between a worker's heartbeats.
HEARTBEAT = 5.0
#: A heartbeat counts for this many intervals, so that a late beat on a busy machine does not make a live
#: worker vanish from ``flask queue status``.
HEARTBEAT_TTL_BEATS = 3
#: The first pause (seconds) after a backend call failed; it doubles at each failure in a row, up to the max.
OUTAGE_BACKOFF = 0.1
OUTAGE_BACKOFF_MAX = 5.0


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
    ) -> None:
        """Run a job ``worker`` has leased and record its outcome now; ``guard`` is entered around the
        task's call. A backend failure while recording raises (the job runs again when its lease lapses)."""
        outcome = self.attempt(record, guard)
        if isinstance(outcome, _Success):
            self.record_successes(worker, [outcome])
        else:
            self.record_failure(worker, outcome)

    def attempt(
        self, record: JobRecord, guard: Callable[[], AbstractContextManager[object]] = nullcontext
    ) -> _Success | _Failure:
        """Run a leased job's task (``guard`` entered around the call: the worker's timeout) and return its
        outcome, recorded nowhere yet. Never raises for what the task does."""
        job = Job(record.id, self.backend, record)
        task = self.tasks.get(record.task)
        if task is None:
            error = (
                f"UnknownTask: no task named {record.task!r} is defined in this process (is this worker running"
                " older or newer code than the process that enqueued it?)"
            )
            log.error("job %s cannot run: %s", record.id, error)
            return _Failure(job, _storable(error), "", None, unrunnable=True)
        try:
            args, kwargs = self.serializer.loads_call(record.payload)
        except ValueError as exc:
            error = f"CorruptPayload: {exc}"
            log.error("job %s cannot run: %s", record.id, error)
            return _Failure(job, _storable(error), "", None, unrunnable=True)
        self._send(signals.task_started, job)
        try:
            with self.app.app_context(), guard():
                value = task.run(args, kwargs)
            result = self.serializer.dumps_result(value)
        except Exception as exc:
            if isinstance(exc, JobTimeout):
                error = f"JobTimeout: the task ran longer than its timeout of {record.timeout} s"
            else:
                error = f"{type(exc).__name__}: {_message(exc)}"
            return _Failure(job, _storable(error), _storable(tb.format_exc()), exc)
        return _Success(job, result, value)

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

    def record_failure(self, worker: str, failure: _Failure) -> None:
        """Record a failed attempt: a retry after its backoff while retries are left, else ``FAILED``."""
        job = failure.job
        record = job.record
        if failure.unrunnable:
            if self.backend.fail_unrunnable(job.id, worker, failure.error):
                self._send(signals.task_failed, job, exception=None)
            return
        failures = record.attempts - record.lost
        task = self.tasks.get(record.task)
        retried = task is None or failure.exc is None or task.retries_on(failure.exc)
        if failures <= record.retries and retried:
            delay = 0.0 if self.immediate_retries else self.backoff(record.task, failures)
            if self.backend.retry_later(job.id, worker, time.time() + delay, failure.error, failure.trace):
                log.info("job %s (%s) failed, retry %d of %d in %.1f s: %s", job.id, record.task, failures,
                         record.retries, delay, failure.error)  # fmt: skip
                self._send(signals.task_retried, job, exception=failure.exc, delay=delay)
            return
        expires = None if self.failed_ttl is None else time.time() + self.failed_ttl
        if self.backend.finish(
            job.id, worker, JobStatus.FAILED, error=failure.error, traceback=failure.trace, expires_at=expires
        ):
            why = "" if retried else " (not retried: retry_on / fail_on)"
            log.error("job %s (%s) failed after %d attempt(s)%s: %s\n%s", job.id, record.task, record.attempts, why,
                      failure.error, failure.trace)  # fmt: skip
            self._send(signals.task_failed, job, exception=failure.exc)

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

    def _send(self, signal: Any, job: Job, **extra: Any) -> None:
        if not signal.receivers:
            return
        try:
            signal.send(self.app, job=job, **extra)
        except Exception:
            log.exception("a receiver of %s raised; the job is not affected", signal.name)


class _Success:
    """A job that succeeded, waiting to be recorded with others."""

    __slots__ = ("job", "result", "value")

    def __init__(self, job: Job, result: str, value: Any) -> None:
        self.job = job
        self.result = result
        self.value = value


class _Failure:
    """A job's attempt that failed (``exc`` raised by the task) or could not run at all (``unrunnable``)."""

    __slots__ = ("error", "exc", "job", "trace", "unrunnable")

    def __init__(
        self, job: Job, error: str, trace: str, exc: Exception | None, *, unrunnable: bool = False
    ) -> None:
        self.job = job
        self.error = error
        self.trace = trace
        self.exc = exc
        self.unrunnable = unrunnable


class _Pending:
    """The outcomes one worker thread has not recorded yet; the thread or the keeper records them."""

    __slots__ = ("lock", "outcomes", "owner", "since")

    def __init__(self, owner: str) -> None:
        self.lock = threading.Lock()
        self.owner = owner
        self.outcomes: list[_Success | _Failure] = []
        self.since = 0.0

    def add(self, outcome: _Success | _Failure) -> None:
        with self.lock:
            if not self.outcomes:
                self.since = time.monotonic()
            self.outcomes.append(outcome)

    def take(self) -> list[_Success | _Failure]:
        with self.lock:
            taken, self.outcomes = self.outcomes, []
            return taken

    def give_back(self, outcomes: list[_Success | _Failure]) -> None:
        """Keep outcomes a write failed to record, ahead of any added meanwhile."""
        with self.lock:
            self.outcomes[:0] = outcomes


@dataclass
class StopReport:
    """What a drain left: jobs still running at the deadline (given back to the backend) and still waiting."""

    released: int = 0
    unfinished: int = 0


class _Running:
    __slots__ = ("deadline", "lease_until", "owner", "record", "thread_id", "timed_out")

    def __init__(self, record: JobRecord, thread_id: int, owner: str, lease: float) -> None:
        self.record = record
        self.thread_id = thread_id
        #: The lease holder: each thread of a worker holds its jobs under a name of its own.
        self.owner = owner
        #: When the lease lapses as far as this process knows (``time.monotonic()``), moved on at each renewal.
        self.lease_until = time.monotonic() + lease
        #: Set while the task's own code runs, if it has a timeout: the keeper may interrupt it until then.
        self.deadline: float | None = None
        self.timed_out = False


class _Backoff:
    """Pauses between calls to a failing backend: ``OUTAGE_BACKOFF`` doubled at each failure in a row, capped
    at ``OUTAGE_BACKOFF_MAX``, each drawn between half and all of it so that the many workers of one backend
    do not all come back at the same instant."""

    __slots__ = ("failures",)

    def __init__(self) -> None:
        self.failures = 0

    def next(self) -> float:
        self.failures += 1
        ceiling = min(OUTAGE_BACKOFF_MAX, OUTAGE_BACKOFF * 2.0 ** min(self.failures - 1, 32))
        return random.uniform(ceiling / 2.0, ceiling)

    def reset(self) -> None:
        self.failures = 0


class _Outage:
    """Whether a worker's backend calls are failing: one warning when they start to, one line when one
    succeeds again, however many threads fail and retry in between."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._lock = threading.Lock()
        self.since: float | None = None

    def failed(self, what: str, exc: Exception) -> None:
        with self._lock:
            if self.since is not None:
                return
            self.since = time.monotonic()
        # A BackendError's message says what failed; anything else is a bug worth its traceback.
        log.warning("task backend %s failed (%s: %s); retrying with backoff until it answers again", self.url,
                    what, exc, exc_info=None if isinstance(exc, BackendError) else exc)  # fmt: skip

    def ok(self) -> None:
        if self.since is None:  # unlocked: the common case costs no lock
            return
        with self._lock:
            since, self.since = self.since, None
        if since is not None:
            # At WARNING, as the line it closes: a log that shows the outage shows its end.
            log.warning("task backend %s answers again after %.1f s", self.url, time.monotonic() - since)


class Worker:
    """Threads that run the jobs of ``queues`` (``None``: all) from ``executor.backend``.

    Thread-safe; ``start`` once, ``stop`` once. Threads are daemons so that they never hold the interpreter
    open by themselves: whoever owns the worker calls ``stop`` (``TaskQueue`` does it at exit). ``id``
    (``host:pid:name-token``) names the worker in its heartbeat and its threads' leases.
    """

    def __init__(
        self,
        executor: Executor,
        *,
        threads: int = 1,
        queues: Collection[str] | None = None,
        lease: float = 30.0,
        name: str = "worker",
        heartbeat: float = HEARTBEAT,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.executor = executor
        self.backend = executor.backend
        self.threads = threads
        self.queues = None if queues is None else frozenset(queues)
        self.lease = lease
        self.heartbeat = heartbeat
        self.host = socket.gethostname()
        self.id = f"{self.host}:{os.getpid()}:{name}-{uuid.uuid4().hex[:8]}"
        self.started_at = time.time()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        self._threads: list[threading.Thread] = []
        self._keeper: threading.Thread | None = None
        self._keeper_stop = threading.Event()
        self._pendings: list[_Pending] = []
        self._outage = _Outage(self.backend.url)
        self.processed = 0
        #: Enqueues the ticks of periodic schedules as they fall (every worker has one; the backend decides
        #: which process stores each tick).
        self.scheduler = scheduler

    @property
    def running(self) -> int:
        with self._lock:
            return len(self._running)

    def info(self) -> WorkerInfo:
        """This worker's heartbeat, as of now."""
        return WorkerInfo(
            name=self.id,
            host=self.host,
            pid=os.getpid(),
            queues=None if self.queues is None else sorted(self.queues),
            threads=self.threads,
            running=self.running,
            processed=self.processed,
            started_at=self.started_at,
            seen_at=time.time(),
            ttl=self.heartbeat * HEARTBEAT_TTL_BEATS,
        )

    def start(self) -> None:
        self.started_at = time.time()
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
        """Stop taking jobs, wait up to ``timeout`` seconds for running ones, give back those still running.

        Never raises for the backend: what cannot be recorded or given back now runs again when its lease
        lapses."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._stopping.set()
        self.backend.interrupt()
        for thread in self._threads:
            thread.join(None if deadline is None else max(deadline - time.monotonic(), 0.0))
        report = StopReport()
        for pending in self._pendings:
            self._try_record(pending)  # jobs that finished are recorded, never given back
        with self._lock:
            stuck = list(self._running.values())
        for running in stuck:
            try:
                released = self.backend.release(running.record.id, running.owner)
            except Exception as exc:
                self._outage.failed("release", exc)
                log.warning("job %s (%s) could not be given back at shutdown: it runs again when its lease"
                            " lapses", running.record.id, running.record.task)  # fmt: skip
                continue
            if released:
                report.released += 1
                log.warning("job %s (%s) still running at shutdown: given back to the queue", running.record.id,
                            running.record.task)  # fmt: skip
        # Leases were renewed while jobs drained; those still running now were given back, so stop renewing.
        self._keeper_stop.set()
        if self._keeper is not None:
            self._keeper.join(5.0)
        try:
            self.backend.forget(self.id)
        except Exception as exc:
            log.warning("could not withdraw the heartbeat of worker %s (%s); it leaves the list of workers"
                        " within %.0f s", self.id, exc, self.heartbeat * HEARTBEAT_TTL_BEATS)  # fmt: skip
        return report

    def _work(self, pending: _Pending) -> None:
        wait = max(min(self.lease / 3.0, 1.0), 0.05)
        owner = pending.owner
        prefetch = 1
        backoff = _Backoff()
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
            except Exception as exc:
                self._outage.failed("dequeue", exc)
                self._stopping.wait(backoff.next())
                continue
            self._outage.ok()
            backoff.reset()
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
                self._running[record.id] = _Running(record, threading.get_ident(), pending.owner, self.lease)
        started = time.monotonic()
        ran = 0
        for record in records:
            if self._stopping.is_set():
                break  # the jobs not started are given back by stop()
            ran += 1
            self.run(record, pending)
        self._try_record(pending)
        fast = ran == len(records) and (time.monotonic() - started) / max(ran, 1) < FAST_JOB
        return min(prefetch * 2, MAX_PREFETCH) if fast and len(records) == prefetch else 1

    def _try_record(self, pending: _Pending) -> None:
        """Record what ``pending`` holds, once; on a backend failure the keeper tries again later."""
        try:
            wrote = self._record(pending)
        except Exception as exc:
            self._outage.failed("record", exc)
            return
        if wrote:
            self._outage.ok()

    def _record(self, pending: _Pending) -> bool:
        """Record the outcomes ``pending`` holds (from the thread that ran them, or the keeper): successes in
        one write, failures one by one; ``False`` if it held none. Raises what the backend raised, with the
        outcomes not recorded given back to ``pending``, except those whose lease has lapsed meanwhile: they
        are dropped with a warning."""
        outcomes = pending.take()
        if not outcomes:
            return False
        recorded: list[_Success | _Failure] = []
        try:
            successes = [outcome for outcome in outcomes if isinstance(outcome, _Success)]
            if successes:
                self.executor.record_successes(pending.owner, successes)
                recorded.extend(successes)
            for outcome in outcomes:
                if isinstance(outcome, _Failure):
                    self.executor.record_failure(pending.owner, outcome)
                    recorded.append(outcome)
        except BaseException:
            pending.give_back(self._unexpired([outcome for outcome in outcomes if outcome not in recorded]))
            raise
        finally:
            with self._lock:
                for outcome in recorded:
                    self._running.pop(outcome.job.id, None)
        return True

    def _unexpired(self, outcomes: list[_Success | _Failure]) -> list[_Success | _Failure]:
        """The outcomes whose lease this worker may still hold; the others are forgotten with a warning."""
        now = time.monotonic()
        kept = []
        with self._lock:
            for outcome in outcomes:
                running = self._running.get(outcome.job.id)
                if running is not None and now < running.lease_until:
                    kept.append(outcome)
                    continue
                self._running.pop(outcome.job.id, None)
                log.warning("job %s (%s) finished but its outcome could not be recorded before its lease lapsed:"
                            " it will run again", outcome.job.id, outcome.job.record.task)  # fmt: skip
        return kept

    def run(self, record: JobRecord, pending: _Pending) -> None:
        """Run one leased job in this thread, with its lease renewed and its timeout enforced; the outcome
        is left in ``pending`` (its lease still renewed) until it is recorded: a failure at once, a success
        with the others of its batch."""
        with self._lock:
            running = self._running.get(record.id)
            if running is None:
                running = self._running[record.id] = _Running(
                    record, threading.get_ident(), pending.owner, self.lease
                )
        outcome = None
        try:
            guard = nullcontext if record.timeout is None else (lambda: self._time_limit(running))
            outcome = self.executor.attempt(record, guard)
        except BaseException:
            log.exception(
                "job %s: unexpected error in the worker itself; the job's lease will lapse", record.id
            )
        finally:
            with self._lock:
                if outcome is None:
                    self._running.pop(record.id, None)
                self.processed += 1
        if outcome is not None:
            pending.add(outcome)
            if isinstance(outcome, _Failure):
                self._try_record(pending)

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
        """Enforce timeouts; record waiting outcomes, renew leases, beat and expire results (backing off
        while the backend fails); until the worker has stopped."""
        renew_every = self.lease / 3.0
        now = time.monotonic()
        next_renew = now + renew_every
        next_beat = next_expire = now
        backoff = _Backoff()
        #: No backend call before this: the last one failed.
        quiet_until = now
        while not self._keeper_stop.is_set():
            now = time.monotonic()
            with self._lock:
                running = list(self._running.values())
                for job in running:
                    if job.deadline is not None and now >= job.deadline and not job.timed_out:
                        job.timed_out = True
                        _raise_in_thread(job.thread_id, JobTimeout)
            #: Whether a backend call was made (and succeeded, if no exception): the backend answers.
            called = False
            try:
                if now >= quiet_until:
                    for pending in self._pendings:
                        if pending.outcomes and now - pending.since >= FLUSH_AFTER:
                            called = self._record(pending) or called
                    if now >= next_renew:
                        called = self._renew(running) or called
                        next_renew = now + renew_every
                    if now >= next_beat:
                        called = True
                        self.backend.beat(self.info())
                        next_beat = now + self.heartbeat
                    if now >= next_expire and not self._stopping.is_set():
                        called = True
                        self.backend.expire()
                        next_expire = now + EXPIRE_INTERVAL
                    scheduler = self.scheduler
                    if (
                        scheduler is not None
                        and not self._stopping.is_set()
                        and scheduler.next_at() <= time.time()
                    ):
                        called = True
                        scheduler.run()
            except Exception as exc:
                self._outage.failed("keeper", exc)
                quiet_until = time.monotonic() + backoff.next()
            else:
                if called:
                    self._outage.ok()
                    backoff.reset()
            pause = min(renew_every, FLUSH_AFTER * 2) if running else min(renew_every, 1.0, self.heartbeat)
            if self.scheduler is not None and time.monotonic() >= quiet_until:
                # Wake at the next tick, not up to a second after it.
                pause = min(pause, max(self.scheduler.next_at() - time.time(), 0.0))
            self._keeper_stop.wait(pause)

    def _renew(self, running: list[_Running]) -> bool:
        """Renew the leases of ``running``; ``False`` if there were none."""
        for job in running:
            asked = time.monotonic()
            if self.backend.renew(job.record.id, job.owner, self.lease):
                job.lease_until = asked + self.lease
            elif job.record.id in self._running:  # not merely finished meanwhile
                log.warning("job %s lost its lease (it ran past it unrenewed); another worker may run it",
                            job.record.id)  # fmt: skip
        return bool(running)


def _raise_in_thread(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in a thread at its next Python instruction (not inside a blocking C call); ``None``
    clears an exception set so but not raised yet."""
    exc = ctypes.py_object(exc_type) if exc_type is not None else None
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), exc)


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # an exception whose __str__ raises is still the task's failure, not the worker's
        return f"<the {type(exc).__name__} could not be printed>"


def _storable(text: str) -> str:
    """``text`` as every backend can store it: a lone surrogate (half of a UTF-16 pair, which no UTF-8 text
    can hold) and a NUL (which PostgreSQL's text refuses) written as escapes, ``\\ud800`` and ``\\x00``.

    An error message or traceback quotes what the task saw, a client's bad input included; one that cannot be
    stored made the worker take its own write for a backend outage and run the job again.
    """
    if text.isascii():
        return text.replace("\x00", "\\x00") if "\x00" in text else text
    return text.encode("utf-8", "backslashreplace").decode("utf-8").replace("\x00", "\\x00")
