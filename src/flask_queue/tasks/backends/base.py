"""The backend contract: what a task backend stores and the state changes it must make atomically.

A backend keeps ``JobRecord``s and moves them between statuses. Every method is safe to call from any
thread; a durable backend is also safe to share between processes (and machines, for the networked ones).
The worker, the ``TaskQueue`` and the CLI only ever talk to a backend through these methods, so one test
suite (``tests/tasks/test_backend_contract.py``) checks every backend against this page.

The life of a job::

    enqueue ──> QUEUED (eta in the future: reported as SCHEDULED)
                  │  dequeue (lowest priority first, then oldest; leased to one worker until lease_until)
                  v
                RUNNING ──renew──> RUNNING           a running job's lease is renewed every third of it
                  │ │ │
                  │ │ └─ lease lapses (worker died) ──> QUEUED again, ``lost`` + 1; past MAX_LOST: FAILED
                  │ └─── retry_later ──> QUEUED with a later eta
                  └───── finish ──> SUCCEEDED | FAILED      (kept until ``expires_at``, None = for ever)
    QUEUED ──cancel──> CANCELLED;   FAILED | CANCELLED | EXPIRED ──requeue──> QUEUED
    QUEUED, never started, past ``start_by`` ──> EXPIRED (no worker takes it; a dequeue stores the status)
    DEFERRED (waits for its key) ──the key's running job ends──> QUEUED

Delivery is at-least-once: a job is RUNNING under one worker's lease, and only the holder of the lease can
finish it (``finish`` and ``retry_later`` return ``None``/``False`` to a worker that lost it). A worker that
dies stops renewing, its lease lapses, and the next ``dequeue`` hands the job out again.

Keys: among the unfinished jobs of one task (queued, scheduled, running) at most one holds a given ``key``,
and at most one more waits for it (``DEFERRED``). The backend enforces it in the write that stores the job,
never by a read before it, so that threads, processes and machines that enqueue one key at once leave one
job. A job frees its key when it becomes final (finished, cancelled, expired, failed after lost leases);
the job ``DEFERRED`` behind it, if any, is queued in that same write. ``on_conflict`` says what an enqueue
that meets the key's job does:

- ``"return"``: store nothing for that record; its id is the holder's;
- ``"raise"``: store nothing at all (the whole batch) and raise ``DuplicateJob`` with the holder's id;
- ``"replace"``: a holder that has not started takes the new record's payload, priority, retries, timeout,
  eta and ``start_by`` (its id is kept); a running holder keeps running, and the record is stored
  ``DEFERRED`` behind it (or replaces the one deferred there already).

Schedules: ``enqueue_tick`` stores a periodic schedule's jobs for one tick if and only if that tick is later
than the schedule's last one, and makes it the last, in one write: of many processes that enqueue one tick,
exactly one stores its job. A schedule's state is one record (``ScheduleState``) whatever its ticks.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Collection, Sequence
from concurrent.futures import Future
from typing import Any
from urllib.parse import unquote, unquote_plus, urlsplit, urlunsplit

from ...exceptions import ConfigurationError, DuplicateJob
from ..job import Watcher
from ..records import FINISHED, JobRecord, JobStatus, ScheduleState, WorkerInfo

__all__ = [
    "MAX_LOST",
    "ON_CONFLICT",
    "Backend",
    "cut_payload",
    "duplicate",
    "hide_query_secrets",
    "hide_secrets",
    "scrub",
]

#: What an enqueue that meets an unfinished job of the same task and key may do (see the module's text).
ON_CONFLICT = ("return", "raise", "replace")

#: Leases a job may lose (its worker died or hung past the lease) before it is failed instead of handed out
#: again: a job that kills its worker every time must not take down every worker in turn for ever.
MAX_LOST = 3

#: Error recorded on a job failed for losing too many leases.
LOST_ERROR = (
    f"WorkerLost: the job was handed to a worker {MAX_LOST} times and each time its worker stopped renewing"
    " the lease (it died, was killed, or hung)"
)


#: Query parameters of a backend URL that carry a secret: libpq and redis-py both take ``password=`` there, and
#: libpq ``sslpassword=`` (the client key's).
SECRET_PARAMETERS = frozenset({"password", "sslpassword"})


def hide_query_secrets(url: str) -> tuple[str, list[str]]:
    """The URL with the values of its ``SECRET_PARAMETERS`` replaced by ``***``, and those values (as written
    and decoded), so that error messages can be scrubbed of them too. The rest of the URL is left as written."""
    base, sep, query = url.partition("?")
    if not sep:
        return url, []
    shown: list[str] = []
    secrets: list[str] = []
    for pair in query.split("&"):
        name, equals, value = pair.partition("=")
        if equals and value and unquote_plus(name) in SECRET_PARAMETERS:
            secrets += {value, unquote_plus(value)}
            pair = f"{name}=***"
        shown.append(pair)
    return f"{base}?{'&'.join(shown)}", secrets


def hide_secrets(url: str) -> tuple[str, list[str]]:
    """The URL with every password in it replaced by ``***`` (the one before the ``@`` and the
    ``SECRET_PARAMETERS``), for messages and pages, and those passwords, for ``scrub``; a URL that cannot be
    parsed is shown as ``<unparsable URL>``."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>", []
    secrets: list[str] = []
    if parts.password:
        secrets += {parts.password, unquote(parts.password)}
        netloc = parts.netloc.rsplit("@", 1)[1]
        url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{netloc}"))
    url, query_secrets = hide_query_secrets(url)
    return url, secrets + query_secrets


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with each of ``secrets`` replaced by ``***`` (a driver's error message may quote them)."""
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class Backend(abc.ABC):
    """Base class of the backends. Subclasses implement the abstract methods and keep the others."""

    #: The backend's URL with any password hidden: what messages and the dashboard show.
    url: str = ""
    #: Whether other processes see its jobs (a file or a server), so that ``flask queue worker`` processes can
    #: run them and they outlive this process. ``memory://`` is not shared: its jobs die with the process.
    shared: bool = True

    def __init__(self) -> None:
        self._finished_lock = threading.Lock()
        self._finished_here = threading.Condition(self._finished_lock)
        #: Threads waiting in ``wait`` (changed under ``_finished_here``'s lock).
        self._waiting = 0
        self._watcher = Watcher(self)

    # -- what subclasses implement ---------------------------------------------------------------------------

    @abc.abstractmethod
    def enqueue(self, records: Sequence[JobRecord], *, on_conflict: str = "return") -> list[str]:
        """Store new jobs, all or none, as ``QUEUED``; return the ids the backend gave them, in order.

        The ids are the backend's to choose (the records' own ``id`` is ignored): opaque strings, never
        reused for another job of this backend. A record with a ``key`` that an unfinished job of its task
        holds is handled as ``on_conflict`` says (see the module's text): its id in the list is then the
        holder's (or, deferred, the new job's), and with ``"raise"`` nothing is stored and
        ``DuplicateJob`` raised. Records of one call that share a key meet each other the same way.
        """

    @abc.abstractmethod
    def enqueue_tick(self, schedule: str, tick: float, records: Sequence[JobRecord]) -> list[str] | None:
        """Store ``records`` (as ``enqueue`` does, ``on_conflict="return"``) if and only if ``tick`` is later
        than the last tick of ``schedule``, and make ``tick`` its last, in one write; return their ids.

        ``None`` when the tick is not later (another process stored it first, or a later one) and when the
        schedule is paused: a paused schedule's ticks pass without jobs.
        """

    @abc.abstractmethod
    def schedules(self) -> list[ScheduleState]:
        """The state of every schedule this backend has a record of, by name."""

    @abc.abstractmethod
    def pause_schedule(self, schedule: str, paused: bool) -> None:
        """Pause a schedule (its ticks pass without jobs) or resume it, in every process; a schedule with no
        record yet gets one."""

    @abc.abstractmethod
    def dequeue(
        self, queues: Collection[str] | None, worker: str, lease: float, timeout: float
    ) -> JobRecord | None:
        """Lease the most urgent ready job of ``queues`` (``None``: every queue) to ``worker``.

        Ready means ``QUEUED`` with ``eta`` now or past. Most urgent: lowest ``priority``, then first
        enqueued. The job becomes ``RUNNING`` with ``attempts`` + 1, ``started_at`` now and ``lease_until``
        ``lease`` seconds from now; the record returned is the updated one. When none is ready, wait up to
        ``timeout`` seconds for one (woken early by an enqueue, at least in this process) and return ``None``
        if none came. Jobs whose lease lapsed are ready again (see ``MAX_LOST``).
        """

    @abc.abstractmethod
    def renew(self, job_id: str, worker: str, lease: float) -> bool:
        """Extend the lease of a job ``worker`` runs to ``lease`` seconds from now; ``False`` if it lost it."""

    @abc.abstractmethod
    def finish(
        self,
        job_id: str,
        worker: str,
        status: JobStatus,
        *,
        result: str | None = None,
        error: str | None = None,
        traceback: str | None = None,
        expires_at: float | None = None,
    ) -> JobRecord | None:
        """Record the end of a job ``worker`` holds (``SUCCEEDED`` or ``FAILED``) and return its record.

        ``None`` if ``worker`` no longer holds its lease: the job was handed to another worker, whose
        outcome is the one that counts.
        """

    @abc.abstractmethod
    def retry_later(self, job_id: str, worker: str, eta: float, error: str, traceback: str) -> bool:
        """Put a failed attempt's job back as ``QUEUED`` at ``eta``, keeping its error; ``False`` if ``worker``
        lost its lease."""

    @abc.abstractmethod
    def release(self, job_id: str, worker: str) -> bool:
        """Give a job back unfinished (a worker shutting down): ``QUEUED`` again at once, its attempt not
        counted. ``False`` if ``worker`` lost its lease."""

    @abc.abstractmethod
    def fail_unrunnable(self, job_id: str, worker: str, error: str) -> JobRecord | None:
        """Fail a leased job that cannot run at all (unknown task, corrupt payload), whatever its retries."""

    @abc.abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The job's record, or ``None`` if there is no such job (any more)."""

    @abc.abstractmethod
    def cancel(self, job_id: str) -> bool:
        """``QUEUED`` (or scheduled, or deferred) becomes ``CANCELLED``; ``True`` if this call changed it."""

    @abc.abstractmethod
    def requeue(self, job_id: str) -> bool:
        """``FAILED``, ``CANCELLED`` or ``EXPIRED`` becomes ``QUEUED`` to run now, with its attempts and lost
        leases reset and no ``start_by``; ``True`` if this call changed it. ``False`` also when the job has a
        key that another unfinished job of its task holds now."""

    @abc.abstractmethod
    def purge(self, queue: str | None, statuses: Collection[JobStatus]) -> int:
        """Delete the jobs of ``queue`` (``None``: every queue) whose stored status is one of ``statuses``
        (``SCHEDULED`` means queued with a future eta); return how many. Running jobs are never deleted."""

    @abc.abstractmethod
    def size(self, queue: str | None = None) -> int:
        """Jobs ready to run now in ``queue`` (``None``: in every queue)."""

    @abc.abstractmethod
    def counts(self) -> dict[str, dict[str, int]]:
        """``{queue: {status: count}}`` for every status of ``JobStatus``, scheduled apart from queued."""

    def pending(self) -> int:
        """Jobs not finished (queued, scheduled or running): what is still to do, in every queue."""
        return sum(
            count
            for statuses in self.counts().values()
            for status, count in statuses.items()
            if JobStatus(status) not in FINISHED
        )

    @abc.abstractmethod
    def jobs(
        self,
        *,
        status: JobStatus | None = None,
        queue: str | None = None,
        limit: int = 50,
        offset: int = 0,
        preview: int | None = None,
    ) -> list[JobRecord]:
        """Jobs, most recently enqueued first, optionally of one status and one queue.

        With ``preview``, a payload longer than ``preview`` characters comes cut to its first ``preview``
        (the backend reads or sends no more of it than it must), with ``payload_size`` its whole length: a
        list that shows the start of each call costs the same whatever the arguments' size.
        """

    @abc.abstractmethod
    def expire(self) -> int:
        """Delete finished jobs whose ``expires_at`` has passed; return how many."""

    @abc.abstractmethod
    def beat(self, info: WorkerInfo) -> None:
        """Record a worker's heartbeat (``info.seen_at`` is now), replacing its last one."""

    @abc.abstractmethod
    def workers(self) -> list[WorkerInfo]:
        """The workers alive now (a beat within its ``ttl``), ordered by name. Stale beats may be deleted."""

    @abc.abstractmethod
    def forget(self, name: str) -> None:
        """Drop a worker's heartbeat: it stopped cleanly."""

    def dequeue_batch(
        self, queues: Collection[str] | None, worker: str, lease: float, limit: int
    ) -> list[JobRecord]:
        """Lease up to ``limit`` ready jobs at once, most urgent first, without waiting (a worker's prefetch).

        The same as ``limit`` calls of ``dequeue(..., timeout=0)``; backends that can do it in one write do.
        """
        records = []
        for _ in range(limit):
            record = self.dequeue(queues, worker, lease, 0.0)
            if record is None:
                break
            records.append(record)
        return records

    def finish_batch(
        self, worker: str, succeeded: Sequence[tuple[str, str | None, float | None]]
    ) -> list[JobRecord | None]:
        """Record several successes at once: ``(job_id, result, expires_at)`` each; the same as a ``finish`` of
        each (``None`` where ``worker`` lost the lease), in one write where the backend can."""
        return [
            self.finish(job_id, worker, JobStatus.SUCCEEDED, result=result, expires_at=expires)
            for job_id, result, expires in succeeded
        ]

    def enqueue_in_transaction(
        self, connection: Any, records: Sequence[JobRecord], *, on_conflict: str = "return"
    ) -> list[str]:
        """Store new jobs through ``connection``, the SQLAlchemy ``Connection`` of the caller's open transaction
        (the outbox): they exist if and only if that transaction commits, and this backend's workers are woken
        after the commit. Return their ids at once, as ``enqueue`` does (keys and ``on_conflict`` included).

        Only a backend whose tables live in that connection's own database can; the others (this default)
        raise ``ConfigurationError`` naming the alternatives.
        """
        raise ConfigurationError(
            "task.options(session=...).enqueue() stores the job inside the session's transaction (the outbox),"
            f" which needs the task queue in the session's own database, and TASK_QUEUE_BACKEND is {self.url}:"
            " use task.enqueue_on_commit(...) to enqueue once the transaction commits, or point"
            " TASK_QUEUE_BACKEND at the app's database (postgresql://..., or sqlite:/// with the app's own file)"
        )

    def interrupt(self) -> None:  # noqa: B027 - optional: a backend with nothing to do here keeps it
        """Make every ``dequeue`` waiting in this process return (``None``) now: its workers are stopping."""

    def close(self) -> None:  # noqa: B027 - optional: a backend with nothing to do here keeps it
        """Release connections and files. The backend is not used afterwards."""

    def after_fork(self) -> None:  # noqa: B027 - optional: a backend with nothing to do here keeps it
        """Called in a child process after a fork: drop connections inherited from the parent."""

    # -- given to every backend ------------------------------------------------------------------------------

    def wait(self, job_id: str, timeout: float | None) -> JobRecord | None:
        """Wait until the job is finished or ``timeout`` seconds passed; return its record then.

        Woken at once by a job finished in this process; jobs finished elsewhere are seen by polling, every
        millisecond at first and every 50 ms at most.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while True:
            record = self.get(job_id)
            if record is None or record.effective_status() in FINISHED:
                return record
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return record
            with self._finished_here:
                self._waiting += 1
                try:
                    self._finished_here.wait(pause if remaining is None else min(pause, remaining))
                finally:
                    self._waiting -= 1
            pause = min(pause * 2, 0.05)

    def watch(self, job_id: str) -> Future[Any]:
        """A future settled when the job finishes (see ``Job.future``)."""
        return self._watcher.watch(job_id)

    def finished_here(self, record: JobRecord) -> None:
        """Tell waiters in this process that a job finished. Backends call it after ``finish``."""
        # Unlocked reads: a waiter or future that arrives meanwhile is not lost, it polls the backend too.
        if self._waiting:
            with self._finished_here:
                self._finished_here.notify_all()
        self._watcher.finished(record)


def duplicate(record: JobRecord, holder: str) -> DuplicateJob:
    """The error of an ``on_conflict="raise"`` enqueue of ``record`` whose key job ``holder`` holds."""
    return DuplicateJob(record.task, record.key or "", holder)


def cut_payload(record: JobRecord, preview: int | None) -> JobRecord:
    """``record`` with its payload cut to ``preview`` characters, as ``Backend.jobs(preview=...)`` returns it
    (for a backend that holds the payload in memory anyway)."""
    if preview is not None and len(record.payload) > preview:
        record.payload_size = len(record.payload)
        record.payload = record.payload[:preview]
    return record
