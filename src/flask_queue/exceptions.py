"""The errors Flask-Queue raises.

::

    FlaskQueueError
     +-- ConfigurationError (also a ValueError): a setting is invalid; raised at set-up, naming the setting
     +-- BackendError: a task backend cannot be reached or used; the message names it (password hidden)
     +-- TaskFailed: ``job.result()`` of a job that failed; carries the worker's error and traceback
     +-- JobCancelled: ``job.result()`` of a job that was cancelled before it ran
     +-- JobTimeout (also a TimeoutError): raised inside a task that ran past its ``timeout``

    ConfigurationWarning (a UserWarning): a config key that looks like a setting but is none (a
    misspelling), or a setting changed after ``init_app`` read it
"""

from __future__ import annotations


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


class JobTimeout(FlaskQueueError, TimeoutError):
    """Raised inside a task that ran longer than its ``timeout``; the job fails (or retries) with it."""


class ConfigurationWarning(UserWarning):
    """A config key is ignored: it looks like a Flask-Queue setting but is none (a misspelling, named with the
    nearest real key), or it changed after ``init_app`` read it. Shown once per key and app; turn it into an
    error with ``warnings.simplefilter("error", ConfigurationWarning)``."""
