"""The errors Flask-Queue raises.

::

    FlaskQueueError
     +-- ConfigurationError (also a ValueError): a setting is invalid; raised at set-up, naming the setting
     +-- BackendError: a task backend cannot be reached or used; the message names it (password hidden)
     +-- TaskFailed: ``job.result()`` of a job that failed; carries the worker's error and traceback
     +-- JobCancelled: ``job.result()`` of a job that was cancelled before it ran
     |    +-- JobExpired: ... or that expired (``expires_in``) before a worker started it
     +-- DuplicateJob: ``task.options(key=..., on_conflict="raise")`` met an unfinished job with the key
     +-- JobTimeout (also a TimeoutError): raised inside a task that ran past its ``timeout``

    ConfigurationWarning (a UserWarning): a config key that looks like a setting but is none (a
    misspelling), or a setting changed after ``init_app`` read it
"""

from __future__ import annotations

from typing import Any


class FlaskQueueError(Exception):
    """Base class of every error Flask-Queue raises on its own account."""


class ConfigurationError(FlaskQueueError, ValueError):
    """A setting is invalid. Raised at set-up time; the message names the setting and the value."""


class BackendError(FlaskQueueError):
    """A task backend cannot be reached or used. The message names the backend, never its password."""


class TaskFailed(FlaskQueueError):
    """The job failed: it raised on its last attempt, or could not run at all (unknown task, bad payload).

    ``error`` is ``"ExceptionType: message"`` as the worker saw it, ``traceback`` the worker's formatted
    traceback (empty when the job never ran), ``job_id`` the job's id.
    """

    def __init__(self, job_id: str, error: str, traceback: str = "") -> None:
        super().__init__(f"job {job_id} failed: {error}")
        self.job_id = job_id
        self.error = error
        self.traceback = traceback

    def __reduce__(self) -> tuple[type[TaskFailed], tuple[str, str, str]]:
        return type(self), (self.job_id, self.error, self.traceback)


class JobCancelled(FlaskQueueError):
    """The job was cancelled before it ran, so it has no result."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} was cancelled")
        self.job_id = job_id


class JobExpired(JobCancelled):
    """The job was not started by its ``expires_in`` / ``expires_at``, so it never ran and has no result."""

    def __init__(self, job_id: str) -> None:
        FlaskQueueError.__init__(self, f"job {job_id} expired before a worker started it")
        self.job_id = job_id


class DuplicateJob(FlaskQueueError):
    """An enqueue with ``key=..., on_conflict="raise"`` met an unfinished job of the task with that key.

    ``job`` is the handle of the job that holds the key (``None`` when a backend is called directly),
    ``job_id`` its id; nothing was stored (in ``enqueue_many``: none of the calls).
    """

    def __init__(self, task: str, key: str, job_id: str, job: Any = None) -> None:
        super().__init__(f"task {task!r} has an unfinished job with key {key!r} already: job {job_id}")
        self.task = task
        self.key = key
        self.job_id = job_id
        self.job = job

    def __reduce__(self) -> tuple[type[DuplicateJob], tuple[str, str, str]]:
        return type(self), (self.task, self.key, self.job_id)


class JobTimeout(FlaskQueueError, TimeoutError):
    """Raised inside a task that ran longer than its ``timeout``; the job fails (or retries) with it."""


class ConfigurationWarning(UserWarning):
    """A config key is ignored: it looks like a Flask-Queue setting but is none (a misspelling, named with the
    nearest real key), or it changed after ``init_app`` read it. Shown once per key and app; turn it into an
    error with ``warnings.simplefilter("error", ConfigurationWarning)``."""
