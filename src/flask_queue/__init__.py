"""Flask-Queue: every queue a Flask application needs around a request.

- ``flask_queue.request_queue``: admission control in front of the app (``RequestQueue``,
  ``RequestQueueMiddleware``).
- ``flask_queue.tasks``: background tasks (``TaskQueue``, ``Job``, ``JobStatus``).
- ``flask_queue.commit_hooks``: functions run once the SQLAlchemy transaction commits (``on_commit``).
- ``flask_queue.wsgiplus``: views that wait on a Future without holding a thread; its gunicorn worker is
  ``flask_queue.gunicorn.WSGIPlusWorker``.
- ``flask_queue.dashboard``: the dashboard (``Dashboard``) and ``/metrics``.

The names below are resolved at first use, so ``import flask_queue`` loads no capability, and importing one
capability loads no other.
"""

from __future__ import annotations

import importlib
import typing

from .exceptions import (
    BackendError,
    ConfigurationError,
    ConfigurationWarning,
    DuplicateJob,
    FlaskQueueError,
    JobCancelled,
    JobExpired,
    JobTimeout,
    TaskFailed,
)

if typing.TYPE_CHECKING:
    from .dashboard import Dashboard
    from .request_queue import EXEMPT, RequestQueue, RequestQueueMiddleware
    from .tasks import Job, JobStatus, Task, TaskQueue

__version__ = "0.1.0.dev0"

__all__ = [
    "EXEMPT",
    "BackendError",
    "ConfigurationError",
    "ConfigurationWarning",
    "Dashboard",
    "DuplicateJob",
    "FlaskQueueError",
    "Job",
    "JobCancelled",
    "JobExpired",
    "JobStatus",
    "JobTimeout",
    "RequestQueue",
    "RequestQueueMiddleware",
    "Task",
    "TaskFailed",
    "TaskQueue",
    "__version__",
]

#: Where each lazily resolved name lives.
_LAZY = {
    "EXEMPT": "request_queue",
    "RequestQueue": "request_queue",
    "RequestQueueMiddleware": "request_queue",
    "Job": "tasks",
    "JobStatus": "tasks",
    "Task": "tasks",
    "TaskQueue": "tasks",
    "Dashboard": "dashboard",
}


def __getattr__(name: str) -> object:
    try:
        package = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f".{package}", __name__), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})  # the lazy names too, before their first use
