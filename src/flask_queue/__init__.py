"""Flask-Queue: every queue a Flask application needs around a request.

Admission control in front of the app (``RequestQueue``) and background tasks (``TaskQueue``); commit hooks
live in ``flask_queue.sqlalchemy``, WSGI+ in ``flask_queue.wsgiplus`` and ``flask_queue.gunicorn``.
"""

from __future__ import annotations

from .admission import EXEMPT, RequestQueue, RequestQueueMiddleware
from .dashboard import Dashboard
from .exceptions import (
    BackendError,
    ConfigurationError,
    FlaskQueueError,
    JobCancelled,
    JobTimeout,
    TaskFailed,
)
from .tasks import Job, JobStatus, Task, TaskQueue

__version__ = "0.1.0.dev0"

__all__ = [
    "EXEMPT",
    "BackendError",
    "ConfigurationError",
    "Dashboard",
    "FlaskQueueError",
    "Job",
    "JobCancelled",
    "JobStatus",
    "JobTimeout",
    "RequestQueue",
    "RequestQueueMiddleware",
    "Task",
    "TaskFailed",
    "TaskQueue",
    "__version__",
]
