"""``Job``: a caller's handle on one call of a task, and the ``Watcher`` that turns it into a Future."""

from __future__ import annotations

import json
import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from ..exceptions import JobCancelled, JobExpired, TaskFailed
from .records import FINISHED, JobRecord, JobStatus

if TYPE_CHECKING:
    from .backends.base import Backend

__all__ = ["Job", "Watcher"]


class Job:
    """A handle on a job: its id and a way to ask its backend about it. Cheap; safe to share between threads.

    The handle holds no state of its own beyond the id: ``status`` and ``result`` ask the backend each time,
    so a handle made in one process (``tasks.get_job(id)``) sees what a worker in another process did.
    """

    __slots__ = ("_backend", "_record", "id")

    def __init__(self, job_id: str, backend: Backend, record: JobRecord | None = None) -> None:
        self.id = job_id
        self._backend = backend
        self._record = record

    def __repr__(self) -> str:
        return f"<Job {self.id}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Job) and other.id == self.id and other._backend is self._backend

    def __hash__(self) -> int:
        return hash(self.id)

    def refresh(self) -> JobRecord:
        """The job's record as its backend has it now. Raises ``LookupError`` once it has been deleted."""
        record = self._backend.get(self.id)
        if record is None:
            raise LookupError(f"job {self.id} no longer exists (purged, or its result expired)")
        self._record = record
        return record

    @property
    def record(self) -> JobRecord:
        """The record last read from the backend (read now if it never was)."""
        return self._record if self._record is not None else self.refresh()

    @property
    def status(self) -> JobStatus:
        """The job's status now, read from the backend."""
        return self.refresh().effective_status()

    @property
    def task(self) -> str:
        return self.record.task

    @property
    def queue(self) -> str:
        return self.record.queue

    @property
    def error(self) -> str | None:
        """``"ExceptionType: message"`` of the last failed attempt, if any."""
        return self.refresh().error

    def result(self, timeout: float | None = None) -> Any:
        """Wait until the job is finished and return what the task returned.

        Raises ``TaskFailed`` (with the worker's traceback) if it failed, ``JobCancelled`` if it was
        cancelled (``JobExpired``, a kind of it, if it expired before it started), and ``TimeoutError`` if it has not finished within ``timeout`` seconds (``None`` waits
        for ever). Waiting does not change the job: it may finish later.
        """
        record = self._backend.wait(self.id, timeout)
        if record is None:
            raise LookupError(f"job {self.id} no longer exists (purged, or its result expired)")
        self._record = record
        if record.effective_status() not in FINISHED:
            raise TimeoutError(f"job {self.id} did not finish within {timeout} s (it is {record.status})")
        return outcome(record)

    def future(self) -> Future[Any]:
        """A ``concurrent.futures.Future`` that completes with the job's result (or its exception).

        One thread per backend watches every pending future, so futures are cheap. A WSGI+ view can
        ``yield`` it to wait without holding a thread; cancelling the future does not cancel the job.
        """
        return self._backend.watch(self.id)

    def cancel(self) -> bool:
        """Cancel the job if it has not started; ``True`` if it was cancelled by this call.

        A running job is not interrupted: ``False``, and it finishes as it would have.
        """
        return self._backend.cancel(self.id)


def outcome(record: JobRecord) -> Any:
    """The value a finished job's ``result()`` returns, or the error it raises."""
    status = record.effective_status()
    if status is JobStatus.SUCCEEDED:
        return None if record.result is None else json.loads(record.result)
    if status is JobStatus.CANCELLED:
        raise JobCancelled(record.id)
    if status is JobStatus.EXPIRED:
        raise JobExpired(record.id)
    raise TaskFailed(record.id, record.error or "unknown error", record.traceback or "")


class Watcher:
    """Completes the futures of jobs when they finish: at once for jobs finished in this process, by polling
    the backend (one thread, only while some future is pending) for jobs finished elsewhere."""

    def __init__(self, backend: Backend, interval: float = 0.05) -> None:
        self._backend = backend
        self._interval = interval
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._futures: dict[str, list[Future[Any]]] = {}
        self._thread: threading.Thread | None = None

    def watch(self, job_id: str) -> Future[Any]:
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        record = self._backend.get(job_id)
        if record is not None and record.effective_status() in FINISHED:
            _settle(future, record)
            return future
        if record is None:
            future.set_exception(LookupError(f"job {job_id} no longer exists"))
            return future
        with self._lock:
            self._futures.setdefault(job_id, []).append(future)
            if self._thread is None:
                self._thread = threading.Thread(target=self._poll, name="flask-queue-watcher", daemon=True)
                self._thread.start()
        return future

    def finished(self, record: JobRecord) -> None:
        """A job finished in this process: settle its futures now."""
        if not self._futures:  # unlocked: a future added meanwhile is settled by the polling thread
            return
        with self._lock:
            futures = self._futures.pop(record.id, None)
        for future in futures or ():
            _settle(future, record)

    def _poll(self) -> None:
        while True:
            with self._lock:
                if not self._futures:
                    self._thread = None
                    return
                ids = list(self._futures)
            for job_id in ids:
                try:
                    record = self._backend.get(job_id)
                except Exception as exc:
                    # The backend is closed or unreachable: fail the waiting futures rather than hang them.
                    with self._lock:
                        futures = self._futures.pop(job_id, None)
                    for future in futures or ():
                        future.set_exception(exc)
                    continue
                if record is None or record.effective_status() in FINISHED:
                    with self._lock:
                        futures = self._futures.pop(job_id, None)
                    for future in futures or ():
                        if record is None:
                            future.set_exception(LookupError(f"job {job_id} no longer exists"))
                        else:
                            _settle(future, record)
            with self._lock:
                if self._futures:
                    self._wake.wait(self._interval)


def _settle(future: Future[Any], record: JobRecord) -> None:
    try:
        value = outcome(record)
    except Exception as exc:
        future.set_exception(exc)
    else:
        future.set_result(value)
